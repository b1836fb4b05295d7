//! `linux.namespaces`: which namespaces are new, which are joined by path, and the
//! user namespace's id mappings.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespace, LinuxNamespaceType};

/// A namespace kind with its clone flag and /proc/PID/ns name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    User,
    Pid,
    Mount,
    Network,
    Ipc,
    Uts,
    Cgroup,
    Time,
}

impl Kind {
    pub fn flag(self) -> libc::c_int {
        match self {
            Kind::User => libc::CLONE_NEWUSER,
            Kind::Pid => libc::CLONE_NEWPID,
            Kind::Mount => libc::CLONE_NEWNS,
            Kind::Network => libc::CLONE_NEWNET,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
            Kind::Time => 0x80, // CLONE_NEWTIME
        }
    }

    /// The spec's name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Pid => "pid",
            Kind::Mount => "mount",
            Kind::Network => "network",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
            Kind::Cgroup => "cgroup",
            Kind::Time => "time",
        }
    }

    fn from_spec(t: LinuxNamespaceType) -> Kind {
        match t {
            LinuxNamespaceType::User => Kind::User,
            LinuxNamespaceType::Pid => Kind::Pid,
            LinuxNamespaceType::Mount => Kind::Mount,
            LinuxNamespaceType::Network => Kind::Network,
            LinuxNamespaceType::Ipc => Kind::Ipc,
            LinuxNamespaceType::Uts => Kind::Uts,
            LinuxNamespaceType::Cgroup => Kind::Cgroup,
            LinuxNamespaceType::Time => Kind::Time,
        }
    }
}

/// The namespaces of a container, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// Kinds to create.
    pub new: Vec<Kind>,
    /// Kinds to join, by path (e.g. `/proc/1234/ns/net`).
    pub join: Vec<(Kind, PathBuf)>,
}

impl Namespaces {
    pub fn from_spec(list: &[LinuxNamespace]) -> Result<Namespaces, String> {
        let mut ns = Namespaces::default();
        for (i, n) in list.iter().enumerate() {
            let kind = Kind::from_spec(n.typ());
            if ns.has(kind) {
                return Err(format!("linux.namespaces[{i}]: the {} namespace is listed twice", kind.name()));
            }
            match n.path() {
                Some(p) if p.as_os_str().is_empty() => ns.new.push(kind),
                Some(p) if !p.is_absolute() => return Err(format!("linux.namespaces[{i}].path: {} is not an absolute path", p.display())),
                Some(p) => ns.join.push((kind, p.clone())),
                None => ns.new.push(kind),
            }
        }
        Ok(ns)
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.new.contains(&kind) || self.join.iter().any(|(k, _)| *k == kind)
    }

    pub fn is_new(&self, kind: Kind) -> bool {
        self.new.contains(&kind)
    }

    /// Flags of the new namespaces made with unshare(2) inside the init (all but
    /// user and pid, which come from clone, and time, which needs its own step).
    pub fn unshare_flags(&self) -> libc::c_int {
        self.new.iter().filter(|k| !matches!(k, Kind::User | Kind::Pid | Kind::Time)).fold(0, |f, k| f | k.flag())
    }

    /// Whether the init must fork once more after entering its namespaces: a joined
    /// pid namespace and a new time namespace only apply to children.
    pub fn needs_second_fork(&self) -> bool {
        self.join.iter().any(|(k, _)| *k == Kind::Pid) || self.is_new(Kind::Time)
    }
}

/// A namespace file opened before fork, for setns(2) in the init.
#[derive(Debug)]
pub struct JoinFd {
    pub kind: Kind,
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// Opens every namespace to join, so a missing one fails before anything starts.
pub fn open_joined(ns: &Namespaces) -> Result<Vec<JoinFd>, (PathBuf, std::io::Error)> {
    let mut out = Vec::new();
    // User first: joining it changes which other namespaces we may enter.
    let mut order = ns.join.clone();
    order.sort_by_key(|(k, _)| *k != Kind::User);
    for (kind, path) in order {
        let file = std::fs::File::open(&path).map_err(|e| (path.clone(), e))?;
        out.push(JoinFd { kind, path, fd: file.into() });
    }
    Ok(out)
}

/// The text of /proc/PID/uid_map (or gid_map) for `mappings`.
pub fn map_text(mappings: &[LinuxIdMapping]) -> String {
    mappings.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
}

/// Checks mappings: non-empty sizes, no overflow, at most 340 lines (the kernel's limit).
pub fn check_mappings(field: &str, mappings: &[LinuxIdMapping]) -> Result<(), String> {
    if mappings.len() > 340 {
        return Err(format!("{field}: {} mappings, the kernel takes at most 340", mappings.len()));
    }
    for (i, m) in mappings.iter().enumerate() {
        if m.size() == 0 {
            return Err(format!("{field}[{i}]: size is 0"));
        }
        if m.container_id().checked_add(m.size()).is_none() || m.host_id().checked_add(m.size()).is_none() {
            return Err(format!("{field}[{i}]: the range overflows 32 bits"));
        }
    }
    Ok(())
}

/// Maps a container id to the id outside the user namespace.
pub fn map_id(mappings: &[LinuxIdMapping], id: u32) -> Option<u32> {
    mappings.iter().find(|m| id >= m.container_id() && id - m.container_id() < m.size()).map(|m| m.host_id() + (id - m.container_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str) -> Vec<LinuxNamespace> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn new_and_joined_namespaces() {
        let ns = Namespaces::from_spec(&list(
            r#"[{"type":"pid"},{"type":"mount"},{"type":"network","path":"/proc/7/ns/net"},{"type":"uts"},{"type":"user"},{"type":"time"}]"#,
        ))
        .unwrap();
        assert_eq!(ns.new, [Kind::Pid, Kind::Mount, Kind::Uts, Kind::User, Kind::Time]);
        assert_eq!(ns.join, [(Kind::Network, PathBuf::from("/proc/7/ns/net"))]);
        assert_eq!(ns.unshare_flags(), libc::CLONE_NEWNS | libc::CLONE_NEWUTS);
        assert!(ns.needs_second_fork(), "a new time namespace applies to children only");
        let plain = Namespaces::from_spec(&list(r#"[{"type":"pid"},{"type":"ipc"}]"#)).unwrap();
        assert!(!plain.needs_second_fork());
    }

    #[test]
    fn duplicates_and_relative_paths_are_refused() {
        let e = Namespaces::from_spec(&list(r#"[{"type":"pid"},{"type":"pid"}]"#)).unwrap_err();
        assert!(e.contains("linux.namespaces[1]") && e.contains("twice"), "{e}");
        let e = Namespaces::from_spec(&list(r#"[{"type":"network","path":"ns/net"}]"#)).unwrap_err();
        assert!(e.contains("linux.namespaces[0].path"), "{e}");
    }

    #[test]
    fn id_maps() {
        let m: Vec<LinuxIdMapping> = serde_json::from_str(r#"[{"containerID":0,"hostID":100000,"size":65536}]"#).unwrap();
        assert_eq!(map_text(&m), "0 100000 65536\n");
        assert_eq!(map_id(&m, 0), Some(100000));
        assert_eq!(map_id(&m, 65535), Some(165535));
        assert_eq!(map_id(&m, 65536), None);
        assert!(check_mappings("linux.uidMappings", &m).is_ok());
        let bad: Vec<LinuxIdMapping> = serde_json::from_str(r#"[{"containerID":0,"hostID":4294967295,"size":2}]"#).unwrap();
        assert!(check_mappings("linux.uidMappings", &bad).unwrap_err().contains("overflows"));
    }
}
