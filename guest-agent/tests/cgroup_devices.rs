//! The eBPF device allowlist enforced by the kernel: a process in a cgroup v2 child
//! with the program attached can open what the rules allow and gets EPERM for the
//! rest. Needs root and a cgroup v2 hierarchy (at /sys/fs/cgroup or, on cgroup v1
//! hosts, /sys/fs/cgroup/unified); prints a SKIP line elsewhere.

use std::path::{Path, PathBuf};

use palisade_agent::container::cgroup::is_v2;
use palisade_agent::container::cgroup_devices::{attach, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_CHAR};

fn v2_root() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: the device allowlist test needs root");
        return None;
    }
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].into_iter().map(PathBuf::from).find(|p| is_v2(p));
    if root.is_none() {
        println!("SKIP: no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
    }
    root
}

/// In a forked child moved into `cgroup`: opens each path read-write and reports
/// the errno (0 for success) as one byte per path.
fn open_in(cgroup: &Path, paths: &[&std::ffi::CStr]) -> Vec<i32> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: the child only makes async-signal-safe calls (read, open, write, _exit)
    // on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: see above; every buffer is a live local or a prepared CStr.
        unsafe {
            libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            for p in paths {
                let fd = libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                let code = if fd < 0 { *libc::__errno_location() as u8 } else { 0 };
                libc::write(w.as_raw_fd(), (&code as *const u8).cast(), 1);
            }
            libc::_exit(0);
        }
    }
    drop(w);
    drop(go_r);
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
    nix::unistd::write(&go_w, &[1]).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut out).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child into a live local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    out.into_iter().map(i32::from).collect()
}

#[test]
fn the_kernel_enforces_the_device_program() {
    let Some(root) = v2_root() else { return };
    let cg = root.join(format!("palisade-devices-test-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap();
    // Allow /dev/null read-write, deny /dev/zero explicitly (and the rest by default).
    let rules = [
        Rule { allow: true, kind: Some(DEV_CHAR), major: Some(1), minor: Some(3), access: ACC_READ | ACC_WRITE },
        Rule { allow: false, kind: Some(DEV_CHAR), major: Some(1), minor: Some(5), access: ACC_READ | ACC_WRITE | ACC_MKNOD },
    ];
    let attached = attach(&cg, &rules);
    let results = attached.as_ref().ok().map(|()| open_in(&cg, &[c"/dev/null", c"/dev/zero", c"/dev/full"]));
    // A sibling cgroup without the program: the cgroup alone changes nothing.
    let other = root.join(format!("palisade-devices-test-{}-open", std::process::id()));
    std::fs::create_dir(&other).unwrap();
    let unrestricted = open_in(&other, &[c"/dev/zero"]);
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir(&other);
    attached.unwrap();
    assert_eq!(results.unwrap(), [0, libc::EPERM, libc::EPERM], "/dev/null opens, /dev/zero and /dev/full are refused");
    assert_eq!(unrestricted, [0]);
}
