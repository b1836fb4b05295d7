//! `process.rlimits`: names to resource numbers, checked before the container starts.

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

/// One resource limit as setrlimit(2) takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub name: &'static str,
    pub soft: u64,
    pub hard: u64,
}

fn resource(typ: PosixRlimitType) -> (u32, &'static str) {
    use PosixRlimitType::*;
    match typ {
        RlimitCpu => (libc::RLIMIT_CPU, "RLIMIT_CPU"),
        RlimitFsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        RlimitData => (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        RlimitStack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
        RlimitCore => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        RlimitRss => (libc::RLIMIT_RSS, "RLIMIT_RSS"),
        RlimitNproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        RlimitNofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        RlimitMemlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        RlimitAs => (libc::RLIMIT_AS, "RLIMIT_AS"),
        RlimitLocks => (libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        RlimitSigpending => (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        RlimitNice => (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        RlimitRtprio => (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        RlimitRttime => (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    }
}

/// Converts and checks the limits; `Err` names the bad entry.
pub fn from_spec(limits: &[PosixRlimit]) -> Result<Vec<Rlimit>, String> {
    let mut out: Vec<Rlimit> = Vec::new();
    for (i, l) in limits.iter().enumerate() {
        let (resource, name) = resource(l.typ());
        if l.soft() > l.hard() {
            return Err(format!("process.rlimits[{i}] ({name}): soft limit {} exceeds hard limit {}", l.soft(), l.hard()));
        }
        if out.iter().any(|r| r.resource == resource) {
            return Err(format!("process.rlimits[{i}]: {name} is given twice"));
        }
        out.push(Rlimit { resource, name, soft: l.soft(), hard: l.hard() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_rejects_bad_limits() {
        let ok: Vec<PosixRlimit> = serde_json::from_str(r#"[{"type":"RLIMIT_NOFILE","soft":1024,"hard":4096}]"#).unwrap();
        assert_eq!(from_spec(&ok).unwrap(), [Rlimit { resource: libc::RLIMIT_NOFILE, name: "RLIMIT_NOFILE", soft: 1024, hard: 4096 }]);
        let bad: Vec<PosixRlimit> = serde_json::from_str(r#"[{"type":"RLIMIT_NPROC","soft":10,"hard":5}]"#).unwrap();
        assert!(from_spec(&bad).unwrap_err().contains("RLIMIT_NPROC"));
        let twice: Vec<PosixRlimit> =
            serde_json::from_str(r#"[{"type":"RLIMIT_CORE","soft":0,"hard":0},{"type":"RLIMIT_CORE","soft":1,"hard":1}]"#).unwrap();
        assert!(from_spec(&twice).unwrap_err().contains("twice"));
    }
}
