//! The container's init between clone and exec: a list of [`Action`]s, every byte of
//! which is prepared before the clone, run in order with async-signal-safe system
//! calls only (the agent is multithreaded, and the init is a raw clone that must not
//! allocate or take locks). A failing action reports its index and errno on the report
//! pipe, and the parent turns that into "mount proc on /proc: EPERM" with the
//! description it kept of the same action.

use std::ffi::CString;
use std::os::fd::RawFd;

use nix::errno::Errno;

use super::rlimits::Rlimit;
use super::seccomp::Program;

/// Records on the report pipe: 12 bytes, `[kind, step, value]` as native u32/i32.
pub const REPORT_ERROR: u32 = 1;
pub const REPORT_READY: u32 = 2;
pub const REPORT_PID: u32 = 3;
/// The init begins step `step` (so a stuck init can be told where it is).
pub const REPORT_STEP: u32 = 4;
pub const REPORT_SIZE: usize = 12;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A path inside the container's root, resolved at run time with openat2
/// (RESOLVE_IN_ROOT), so symlinks in the image cannot point a mount outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRoot {
    /// The path as the spec gave it, for messages.
    pub display: String,
    /// Relative paths of each ancestor directory, shortest first (`a`, `a/b`).
    pub parents: Vec<CString>,
    /// Each ancestor's last component (`a`, `b`).
    pub parent_names: Vec<CString>,
    /// The relative path of the leaf itself (`a/b/c`), and its last component (`c`).
    pub full: CString,
    pub leaf: CString,
}

impl InRoot {
    /// Splits an absolute container path; `None` for `/` itself or `..` components.
    pub fn new(path: &str) -> Option<InRoot> {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        if components.is_empty() || components.contains(&"..") || path.contains('\0') {
            return None;
        }
        let c = |s: &str| CString::new(s).ok();
        let mut parents = Vec::new();
        let mut parent_names = Vec::new();
        for i in 0..components.len() - 1 {
            parents.push(c(&components[..=i].join("/"))?);
            parent_names.push(c(components[i])?);
        }
        Some(InRoot {
            display: format!("/{}", components.join("/")),
            parents,
            parent_names,
            full: c(&components.join("/"))?,
            leaf: c(components[components.len() - 1])?,
        })
    }
}

/// What a mount target must be when it does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

/// A mount whose target is inside the (not yet pivoted) root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStep {
    pub source: Option<CString>,
    pub target: InRoot,
    pub leaf: Leaf,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    /// For binds: the remount that applies ro/nosuid/… (a bind ignores them).
    pub remount: Option<libc::c_ulong>,
    /// MS_SHARED/MS_SLAVE/MS_PRIVATE/MS_UNBINDABLE (with MS_REC) applied afterwards.
    pub propagation: Option<libc::c_ulong>,
}

/// A device node inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStep {
    pub path: InRoot,
    /// S_IFCHR, S_IFBLK or S_IFIFO, with the permission bits.
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: u32,
    pub gid: u32,
    /// Bind-mount this existing node instead of mknod (in a user namespace, where
    /// mknod is not allowed).
    pub bind_from: Option<CString>,
}

/// One step of the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Block until the parent has written the id maps and joined the cgroup.
    WaitParent,
    /// In a new user namespace: become its root (uid and gid 0).
    BecomeNamespaceRoot,
    SetNs {
        fd: RawFd,
        nstype: libc::c_int,
    },
    Unshare {
        flags: libc::c_int,
    },
    /// In a new network namespace: bring its loopback interface up, as runc and crun do
    /// (a new namespace's `lo` is down, and 127.0.0.1 unreachable, until then).
    LoopbackUp,
    /// Write `content` to `path` (time namespace offsets, sysctls).
    WriteFile {
        path: CString,
        content: Vec<u8>,
    },
    /// Fork once more, as a sibling (CLONE_PARENT); the child goes on, this process reports
    /// its pid and exits.
    ForkAgain,
    /// Stdio onto 0, 1, 2; a new session; the terminal as controlling terminal.
    Stdio {
        fds: [RawFd; 3],
        controlling_tty: bool,
    },
    Umask(libc::mode_t),
    /// mount(NULL, target, NULL, flags): propagation changes.
    Propagation {
        target: CString,
        flags: libc::c_ulong,
    },
    /// Bind the root onto itself (pivot_root needs a mount point) and open it.
    PrepareRoot {
        root: CString,
    },
    Mount(MountStep),
    Device(DeviceStep),
    Symlink {
        target: CString,
        link: InRoot,
    },
    /// pivot_root into the root and detach the old one.
    PivotRoot {
        root: CString,
    },
    /// After the pivot: hide a path (tmpfs over a directory, /dev/null over a file).
    Mask {
        path: CString,
    },
    /// After the pivot: make a path read-only (bind onto itself, remount ro).
    ReadOnly {
        path: CString,
    },
    /// After the pivot: remount `/` read-only.
    ReadOnlyRoot,
    Hostname {
        name: CString,
    },
    Domainname {
        name: CString,
    },
    Rlimit(Rlimit),
    /// Install the seccomp program (index into the plan's programs).
    Seccomp(Program),
    DropBounding {
        caps: Vec<u32>,
    },
    KeepCaps(bool),
    SetUser {
        uid: u32,
        gid: u32,
        groups: Vec<libc::gid_t>,
    },
    Capset {
        effective: u64,
        permitted: u64,
        inheritable: u64,
    },
    Ambient {
        caps: Vec<u32>,
    },
    Chdir {
        path: CString,
    },
    /// Report "ready" and wait for start.
    Barrier,
    NoNewPrivs,
    /// Mark every descriptor above 2 close-on-exec.
    CloseOnExec,
    Exec {
        candidates: Vec<CString>,
        argv: Vec<CString>,
        envp: Vec<CString>,
    },
}

impl Action {
    /// What the action does, for error messages.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Action::WaitParent => "waiting for the agent".into(),
            Action::BecomeNamespaceRoot => "becoming root of the new user namespace".into(),
            Action::SetNs { nstype, .. } => format!("joining namespace (type {nstype:#x})"),
            Action::Unshare { flags } => format!("creating namespaces (flags {flags:#x})"),
            Action::LoopbackUp => "bringing the loopback interface lo up".into(),
            Action::WriteFile { path, .. } => format!("writing {}", s(path)),
            Action::ForkAgain => "forking into the new namespaces".into(),
            Action::Stdio { controlling_tty: true, .. } => "setting up the terminal".into(),
            Action::Stdio { .. } => "setting up stdio".into(),
            Action::Umask(m) => format!("umask {m:04o}"),
            Action::Propagation { target, flags } => format!("mount propagation {flags:#x} of {}", s(target)),
            Action::PrepareRoot { root } => format!("bind-mounting the root {} onto itself", s(root)),
            Action::Mount(m) => format!(
                "mount {} on {}",
                m.fstype.as_ref().map(s).unwrap_or_else(|| m.source.as_ref().map(s).unwrap_or_default()),
                m.target.display
            ),
            Action::Device(d) => format!("creating device {}", d.path.display),
            Action::Symlink { target, link } => format!("symlink {} -> {}", link.display, s(target)),
            Action::PivotRoot { root } => format!("pivot_root into {}", s(root)),
            Action::Mask { path } => format!("masking {}", s(path)),
            Action::ReadOnly { path } => format!("making {} read-only", s(path)),
            Action::ReadOnlyRoot => "remounting / read-only".into(),
            Action::Hostname { name } => format!("sethostname {}", s(name)),
            Action::Domainname { name } => format!("setdomainname {}", s(name)),
            Action::Rlimit(r) => format!("setrlimit {} {}/{}", r.name, r.soft, r.hard),
            Action::Seccomp(_) => "installing the seccomp filter".into(),
            Action::DropBounding { .. } => "dropping capabilities from the bounding set".into(),
            Action::KeepCaps(_) => "prctl PR_SET_KEEPCAPS".into(),
            Action::SetUser { uid, gid, groups } => format!("switching to uid {uid} gid {gid} groups {groups:?}"),
            Action::Capset { .. } => "setting capabilities".into(),
            Action::Ambient { .. } => "raising ambient capabilities".into(),
            Action::Chdir { path } => format!("working directory {}", s(path)),
            Action::Barrier => "waiting for start".into(),
            Action::NoNewPrivs => "prctl PR_SET_NO_NEW_PRIVS".into(),
            Action::CloseOnExec => "closing inherited descriptors".into(),
            Action::Exec { argv, .. } => format!("exec {}", argv.first().map(s).unwrap_or_default()),
        }
    }
}

/// State of the running init.
struct State {
    root_fd: RawFd,
    report_fd: RawFd,
    go_fd: RawFd,
}

/// Writes one report record. Async-signal-safe.
fn report(fd: RawFd, kind: u32, step: u32, value: i32) {
    let mut rec = [0u8; REPORT_SIZE];
    rec[..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&step.to_ne_bytes());
    rec[8..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: writing a live local buffer; 12 bytes is below PIPE_BUF, so atomic.
    unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

// Credentials change through the raw system calls, never glibc's wrappers: in a
// multi-threaded program (the agent) glibc's setresuid/setresgid/setgroups broadcast the
// change to every thread it knows (its "setxid" signal protocol) and wait for them. The
// cloned init has one thread but a copy of the agent's thread list, and glibc would wait
// for threads that are not there: the init spun in setresgid for ever in the guest.

/// setresgid(gid, gid, gid) for this thread (the init's only one).
///
/// # Safety
/// Only in the cloned init (see above).
unsafe fn raw_setresgid(gid: libc::gid_t) -> libc::c_long {
    libc::syscall(libc::SYS_setresgid, gid, gid, gid)
}

/// setresuid(uid, uid, uid) for this thread (the init's only one).
///
/// # Safety
/// Only in the cloned init (see above).
unsafe fn raw_setresuid(uid: libc::uid_t) -> libc::c_long {
    libc::syscall(libc::SYS_setresuid, uid, uid, uid)
}

fn check(r: libc::c_long) -> Result<libc::c_long, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// "/proc/self/fd/N" in a stack buffer, NUL-terminated.
fn fd_path(fd: RawFd, buf: &mut [u8; 32]) -> *const libc::c_char {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    buf.as_ptr().cast()
}

/// openat2(root, path, O_PATH, RESOLVE_IN_ROOT).
fn open_in_root(root: RawFd, path: &CString, flags: u64) -> Result<RawFd, Errno> {
    let how = OpenHow { flags: flags | libc::O_CLOEXEC as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    // SAFETY: a valid NUL-terminated path and a live open_how of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_openat2, root, path.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
    check(r).map(|fd| fd as RawFd)
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this init opened and no longer uses.
    unsafe { libc::close(fd) };
}

/// Opens the parent directory of `p` inside the root, creating missing ancestors.
fn parent_dir(root: RawFd, p: &InRoot) -> Result<RawFd, Errno> {
    // SAFETY: dup of the root descriptor we hold.
    let mut dir = check(unsafe { libc::fcntl(root, libc::F_DUPFD_CLOEXEC, 3) } as libc::c_long)? as RawFd;
    for (path, name) in p.parents.iter().zip(&p.parent_names) {
        let next = match open_in_root(root, path, (libc::O_PATH | libc::O_DIRECTORY) as u64) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                // SAFETY: mkdirat relative to a directory descriptor we hold.
                let r = unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) };
                if r < 0 && Errno::last() != Errno::EEXIST {
                    let e = Errno::last();
                    close(dir);
                    return Err(e);
                }
                match open_in_root(root, path, (libc::O_PATH | libc::O_DIRECTORY) as u64) {
                    Ok(fd) => fd,
                    Err(e) => {
                        close(dir);
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                close(dir);
                return Err(e);
            }
        };
        close(dir);
        dir = next;
    }
    Ok(dir)
}

/// Opens (creating when missing) the target of a mount inside the root.
fn target(root: RawFd, p: &InRoot, leaf: Leaf) -> Result<RawFd, Errno> {
    if let Ok(fd) = open_in_root(root, &p.full, libc::O_PATH as u64) {
        return Ok(fd);
    }
    let dir = parent_dir(root, p)?;
    // SAFETY: mkdirat/openat relative to a directory descriptor we hold, with a valid name.
    let r = unsafe {
        match leaf {
            Leaf::Dir => libc::mkdirat(dir, p.leaf.as_ptr(), 0o755),
            Leaf::File => {
                let fd = libc::openat(dir, p.leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            }
        }
    };
    let created = if r < 0 { Err(Errno::last()) } else { Ok(()) };
    close(dir);
    match created {
        Ok(()) | Err(Errno::EEXIST) => open_in_root(root, &p.full, libc::O_PATH as u64),
        Err(e) => Err(e),
    }
}

fn mount_raw(
    source: *const libc::c_char,
    target: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> Result<(), Errno> {
    // SAFETY: each pointer is null or a valid NUL-terminated string alive for the call.
    check(unsafe { libc::mount(source, target, fstype, flags, data.cast()) } as libc::c_long).map(drop)
}

fn ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map(|c| c.as_ptr()).unwrap_or(std::ptr::null())
}

/// Flags of the mount at `fd` that a remount in a user namespace must keep
/// (the kernel locks them).
fn locked_flags(path: *const libc::c_char) -> libc::c_ulong {
    // SAFETY: statvfs is plain old data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the local above; `path` is a valid C string of the caller's.
    if unsafe { libc::statvfs(path, &mut st) } < 0 {
        return 0;
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}

/// A bind remount, retried with the locked flags on EPERM.
fn remount(path: *const libc::c_char, flags: libc::c_ulong) -> Result<(), Errno> {
    let null = std::ptr::null();
    match mount_raw(null, path, null, flags, null) {
        Err(Errno::EPERM) => mount_raw(null, path, null, flags | locked_flags(path), null),
        other => other,
    }
}

fn do_mount(st: &State, m: &MountStep) -> Result<(), Errno> {
    let fd = target(st.root_fd, &m.target, m.leaf)?;
    let mut buf = [0u8; 32];
    let path = fd_path(fd, &mut buf);
    let result = (|| {
        mount_raw(ptr(&m.source), path, ptr(&m.fstype), m.flags, ptr(&m.data))?;
        // The new mount is on top of the O_PATH descriptor's mount: reopen it.
        let top = open_in_root(st.root_fd, &m.target.full, libc::O_PATH as u64)?;
        let mut tbuf = [0u8; 32];
        let tpath = fd_path(top, &mut tbuf);
        let r = (|| {
            if let Some(flags) = m.remount {
                remount(tpath, flags)?;
            }
            if let Some(flags) = m.propagation {
                mount_raw(std::ptr::null(), tpath, std::ptr::null(), flags, std::ptr::null())?;
            }
            Ok(())
        })();
        close(top);
        r
    })();
    close(fd);
    result
}

fn do_device(st: &State, d: &DeviceStep) -> Result<(), Errno> {
    let dir = parent_dir(st.root_fd, &d.path)?;
    let result = (|| {
        if let Some(from) = &d.bind_from {
            // SAFETY: openat relative to a directory descriptor we hold, valid name.
            let fd = unsafe { libc::openat(dir, d.path.leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o600) };
            if fd < 0 {
                return Err(Errno::last());
            }
            close(fd);
            // A descriptor's magic link names a mount of the agent's mount namespace, which
            // bind mounts refuse (EINVAL) in this new one: bind its path instead (the
            // terminal's /dev/pts/N, resolved here before the pivot, is our copy of it).
            let mut link = [0u8; 256];
            // SAFETY: readlink into a live local buffer, one byte kept for the NUL.
            let n = unsafe { libc::readlink(from.as_ptr(), link.as_mut_ptr().cast(), link.len() - 1) };
            let source = if n > 0 && link[0] == b'/' {
                link[n as usize] = 0;
                link.as_ptr().cast()
            } else {
                from.as_ptr()
            };
            let target = open_in_root(st.root_fd, &d.path.full, libc::O_PATH as u64)?;
            let mut buf = [0u8; 32];
            let r = mount_raw(source, fd_path(target, &mut buf), std::ptr::null(), libc::MS_BIND, std::ptr::null());
            close(target);
            return r;
        }
        // SAFETY: unlinkat/mknodat/fchownat relative to a directory descriptor we hold.
        unsafe {
            libc::unlinkat(dir, d.path.leaf.as_ptr(), 0);
            check(libc::mknodat(dir, d.path.leaf.as_ptr(), d.mode, d.dev) as libc::c_long)?;
            check(libc::fchownat(dir, d.path.leaf.as_ptr(), d.uid, d.gid, libc::AT_SYMLINK_NOFOLLOW) as libc::c_long)?;
        }
        Ok(())
    })();
    close(dir);
    result
}

fn do_symlink(st: &State, target: &CString, link: &InRoot) -> Result<(), Errno> {
    let dir = parent_dir(st.root_fd, link)?;
    // SAFETY: unlinkat/symlinkat relative to a directory descriptor we hold.
    let r = unsafe {
        libc::unlinkat(dir, link.leaf.as_ptr(), 0);
        libc::symlinkat(target.as_ptr(), dir, link.leaf.as_ptr())
    };
    let r = if r < 0 { Err(Errno::last()) } else { Ok(()) };
    close(dir);
    r
}

fn pivot_root(root: &CString) -> Result<(), Errno> {
    // SAFETY: chdir/pivot_root/umount2/chroot/mount with valid NUL-terminated paths.
    unsafe {
        check(libc::chdir(root.as_ptr()) as libc::c_long)?;
        let dot = c".".as_ptr();
        // No MS_MOVE + chroot fallback: the agent leaves the initramfs at boot
        // (system::switch_root), so pivot_root works in the guest as on any host.
        check(libc::syscall(libc::SYS_pivot_root, dot, dot))?;
        // The old root is now stacked under "/": detach it.
        check(libc::umount2(dot, libc::MNT_DETACH) as libc::c_long)?;
        check(libc::chdir(c"/".as_ptr()) as libc::c_long).map(drop)
    }
}

fn is_dir(path: &CString) -> Result<bool, Errno> {
    // SAFETY: stat is plain old data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: stat writes into the local above; `path` is a valid C string.
    check(unsafe { libc::stat(path.as_ptr(), &mut st) } as libc::c_long)?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn do_mask(path: &CString) -> Result<(), Errno> {
    let null = std::ptr::null();
    match is_dir(path) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(true) => mount_raw(c"tmpfs".as_ptr(), path.as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY, c"size=0k".as_ptr()),
        Ok(false) => match mount_raw(c"/dev/null".as_ptr(), path.as_ptr(), null, libc::MS_BIND, null) {
            Err(Errno::ENOENT) => Ok(()),
            r => r,
        },
    }
}

fn do_read_only(path: &CString) -> Result<(), Errno> {
    match mount_raw(path.as_ptr(), path.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r?,
    }
    remount(path.as_ptr(), libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY)
}

/// SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP, on `lo` of this process's network
/// namespace (the ifreq on the stack: nothing allocated).
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: a datagram socket used only for two interface ioctls on a zeroed ifreq whose
    // name fits IFNAMSIZ with its NUL; the socket is closed on every path.
    unsafe {
        let sock = check(libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as libc::c_long)? as RawFd;
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if r >= 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let e = Errno::last();
        libc::close(sock);
        if r < 0 {
            return Err(e);
        }
    }
    Ok(())
}

fn write_file(path: &CString, content: &[u8]) -> Result<(), Errno> {
    // SAFETY: open/write/close with a valid path and a live buffer.
    unsafe {
        let fd = check(libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) as libc::c_long)? as RawFd;
        let n = libc::write(fd, content.as_ptr().cast(), content.len());
        let e = Errno::last();
        libc::close(fd);
        if n < 0 {
            return Err(e);
        }
        if n as usize != content.len() {
            return Err(Errno::EIO);
        }
    }
    Ok(())
}

/// Reads the go byte; EOF means the agent gave the container up.
fn wait_go(fd: RawFd) -> Result<(), Errno> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading one byte into a live local.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        match n {
            1 => return Ok(()),
            0 => {
                // SAFETY: leaving quietly: nobody waits for this init any more.
                unsafe { libc::_exit(1) }
            }
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err(Errno::last()),
        }
    }
}

fn exec(candidates: &[CString], argv: &[CString], envp: &[CString]) -> Errno {
    // Pointer arrays on the stack: no allocation after the clone.
    const MAX: usize = 512;
    if argv.len() >= MAX || envp.len() >= MAX {
        return Errno::E2BIG;
    }
    let mut argv_ptrs = [std::ptr::null::<libc::c_char>(); MAX];
    let mut envp_ptrs = [std::ptr::null::<libc::c_char>(); MAX];
    for (i, a) in argv.iter().enumerate() {
        argv_ptrs[i] = a.as_ptr();
    }
    for (i, e) in envp.iter().enumerate() {
        envp_ptrs[i] = e.as_ptr();
    }
    let mut denied = false;
    for c in candidates {
        // SAFETY: NUL-terminated argv/envp arrays of valid strings.
        unsafe { libc::execve(c.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        match Errno::last() {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => denied = true,
            e => return e,
        }
    }
    if denied {
        Errno::EACCES
    } else {
        Errno::ENOENT
    }
}

fn run_one(st: &mut State, action: &Action) -> Result<(), Errno> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: (for the whole match) every call is a raw system call on data prepared
    // before the clone and alive for the call; see each helper.
    unsafe {
        match action {
            Action::WaitParent => wait_go(st.go_fd),
            Action::BecomeNamespaceRoot => {
                check(raw_setresgid(0))?;
                check(raw_setresuid(0)).map(drop)
            }
            Action::SetNs { fd, nstype } => check(libc::setns(*fd, *nstype) as libc::c_long).map(drop),
            Action::Unshare { flags } => check(libc::unshare(*flags) as libc::c_long).map(drop),
            Action::LoopbackUp => loopback_up(),
            Action::WriteFile { path, content } => write_file(path, content),
            Action::ForkAgain => {
                // CLONE_PARENT: the new process is the agent's child, not ours, so the agent
                // reaps it (and learns its status) after we exit; orphaned, it would go to
                // the init of the pid namespace it is in.
                // The new process waits until this one has reported its pid (and exited,
                // closing the pipe): a report of its own (ready, a failed step) read before
                // the pid would leave the agent holding the wrong process.
                let mut reported = [-1 as RawFd; 2];
                check(libc::pipe2(reported.as_mut_ptr(), libc::O_CLOEXEC) as libc::c_long)?;
                let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
                let pid = match check(libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize)) {
                    Ok(pid) => pid,
                    Err(e) => {
                        libc::close(reported[0]);
                        libc::close(reported[1]);
                        return Err(e);
                    }
                };
                if pid > 0 {
                    report(st.report_fd, REPORT_PID, 0, pid as i32);
                    libc::_exit(0);
                }
                libc::close(reported[1]);
                let mut byte = 0u8;
                while libc::read(reported[0], (&mut byte as *mut u8).cast(), 1) < 0 && Errno::last() == Errno::EINTR {}
                libc::close(reported[0]);
                Ok(())
            }
            Action::Stdio { fds, controlling_tty } => {
                check(libc::setsid() as libc::c_long)?;
                let mut high = [-1; 3];
                for (i, fd) in fds.iter().enumerate() {
                    high[i] = check(libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) as libc::c_long)? as RawFd;
                }
                for (target, fd) in high.iter().enumerate() {
                    check(libc::dup2(*fd, target as libc::c_int) as libc::c_long)?;
                    libc::close(*fd);
                }
                if *controlling_tty {
                    check(libc::ioctl(0, libc::TIOCSCTTY as _, 0) as libc::c_long)?;
                }
                Ok(())
            }
            Action::Umask(m) => {
                libc::umask(*m);
                Ok(())
            }
            Action::Propagation { target, flags } => mount_raw(null, target.as_ptr(), null, *flags, null),
            Action::PrepareRoot { root } => {
                mount_raw(root.as_ptr(), root.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null)?;
                st.root_fd = check(libc::open(root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as libc::c_long)? as RawFd;
                Ok(())
            }
            Action::Mount(m) => do_mount(st, m),
            Action::Device(d) => do_device(st, d),
            Action::Symlink { target, link } => do_symlink(st, target, link),
            Action::PivotRoot { root } => {
                pivot_root(root)?;
                close(st.root_fd);
                st.root_fd = -1;
                Ok(())
            }
            Action::Mask { path } => do_mask(path),
            Action::ReadOnly { path } => do_read_only(path),
            Action::ReadOnlyRoot => remount(c"/".as_ptr(), libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY),
            Action::Hostname { name } => check(libc::sethostname(name.as_ptr(), name.as_bytes().len()) as libc::c_long).map(drop),
            Action::Domainname { name } => check(libc::setdomainname(name.as_ptr(), name.as_bytes().len()) as libc::c_long).map(drop),
            Action::Rlimit(r) => {
                let lim = libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard };
                check(libc::setrlimit(r.resource as _, &lim) as libc::c_long).map(drop)
            }
            Action::Seccomp(p) => p.install(),
            Action::DropBounding { caps } => {
                for c in caps {
                    if libc::prctl(libc::PR_CAPBSET_DROP, *c as libc::c_ulong, 0, 0, 0) < 0 && Errno::last() != Errno::EINVAL {
                        return Err(Errno::last());
                    }
                }
                Ok(())
            }
            Action::KeepCaps(on) => check(libc::prctl(libc::PR_SET_KEEPCAPS, *on as libc::c_ulong, 0, 0, 0) as libc::c_long).map(drop),
            Action::SetUser { uid, gid, groups } => {
                check(libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()))?;
                check(raw_setresgid(*gid))?;
                check(raw_setresuid(*uid)).map(drop)
            }
            Action::Capset { effective, permitted, inheritable } => super::capabilities::capset(*effective, *permitted, *inheritable),
            Action::Ambient { caps } => {
                check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) as libc::c_long)?;
                for c in caps {
                    check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, *c as libc::c_ulong, 0, 0)
                        as libc::c_long)?;
                }
                Ok(())
            }
            Action::Chdir { path } => check(libc::chdir(path.as_ptr()) as libc::c_long).map(drop),
            Action::Barrier => {
                report(st.report_fd, REPORT_READY, 0, 0);
                wait_go(st.go_fd)
            }
            Action::NoNewPrivs => check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long).map(drop),
            Action::CloseOnExec => {
                // close_range(3, ~0, CLOSE_RANGE_CLOEXEC)
                check(libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32)).map(drop)
            }
            Action::Exec { candidates, argv, envp } => Err(exec(candidates, argv, envp)),
        }
    }
}

/// Runs the init's actions; never returns.
///
/// # Safety
/// Must only be called in a freshly cloned child of the agent (a raw clone: no atfork
/// handlers ran, so nothing here may allocate or take a lock).
pub unsafe fn run(actions: &[Action], report_fd: RawFd, go_fd: RawFd) -> ! {
    // Signals: nothing blocked, default dispositions (the agent ignores SIGPIPE).
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut st = State { root_fd: -1, report_fd, go_fd };
    for (i, action) in actions.iter().enumerate() {
        report(report_fd, REPORT_STEP, i as u32, 0);
        if let Err(e) = run_one(&mut st, action) {
            report(report_fd, REPORT_ERROR, i as u32, e as i32);
            libc::_exit(127);
        }
    }
    // The last action is Exec, which only returns on failure.
    report(report_fd, REPORT_ERROR, actions.len() as u32, Errno::ENOEXEC as i32);
    libc::_exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_root_paths_split_into_ancestors() {
        let p = InRoot::new("/dev//pts/./ptmx").unwrap();
        assert_eq!(p.display, "/dev/pts/ptmx");
        assert_eq!(p.parents, [c"dev".to_owned(), c"dev/pts".to_owned()]);
        assert_eq!(p.parent_names, [c"dev".to_owned(), c"pts".to_owned()]);
        assert_eq!(p.full, c"dev/pts/ptmx".to_owned());
        assert_eq!(p.leaf, c"ptmx".to_owned());
        assert!(InRoot::new("/").is_none());
        assert!(InRoot::new("/a/../b").is_none());
    }

    #[test]
    fn fd_paths_are_formatted_without_allocation() {
        let mut buf = [0u8; 32];
        let p = fd_path(1234, &mut buf);
        // SAFETY: fd_path NUL-terminates inside `buf`.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(p) }, c"/proc/self/fd/1234");
        // SAFETY: as above.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(fd_path(0, &mut buf)) }, c"/proc/self/fd/0");
    }
}
