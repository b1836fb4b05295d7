//! The spec `vmrun` writes by default, run as a real container by the agent's
//! container library on this host (as root, with Debian's /bin/busybox): Docker's
//! capabilities, the default seccomp allowlist refusing what it does not list.

use std::io::Read;
use std::os::fd::AsRawFd;

use palisade_agent::container::{self, spec, CreateOptions};
use palisade_runtime::oci::defaults::{default_spec, SpecOptions};

#[test]
fn busybox_runs_under_the_default_spec_and_profile() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/bin/busybox").exists() {
        println!("SKIP: needs root and /bin/busybox (Debian busybox-static)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).unwrap();
    for a in ["sh", "cat", "grep", "unshare", "hostname", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(a)).unwrap();
    }
    let script = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                  unshare -n true; echo unshare=$?; echo HOST=$(hostname); ls /sys/firmware | wc -l; echo done";
    let s = default_spec(&SpecOptions {
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        hostname: Some("defaults".into()),
        no_new_privileges: true,
        ..Default::default()
    })
    .unwrap();
    // Raising a hard limit needs CAP_SYS_RESOURCE, which the agent has in a guest but
    // a sandboxed test runner may lack: stay within this process's own limit here.
    let mut s = s;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit into a live local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    s["process"]["rlimits"][0]["hard"] = serde_json::json!(lim.rlim_max.min(524288));
    let spec = spec::parse(&s.to_string()).unwrap();
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let opts = CreateOptions {
        id: "defaults",
        rootfs: root.path(),
        bundle: None,
        stdio: [null.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()],
        cgroup_root: None,
    };
    let mut c = container::create(&spec, &opts).unwrap_or_else(|e| panic!("create: {e}"));
    drop(out_w);
    c.start().unwrap_or_else(|e| panic!("start: {e}"));
    let mut out = String::new();
    std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child into a live local.
    unsafe { libc::waitpid(c.pid, &mut status, 0) };
    println!("{out}");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    assert!(out.contains("CapEff:\t00000000a80425fb\n") && out.contains("CapBnd:\t00000000a80425fb\n"), "Docker's 14 capabilities");
    assert!(out.contains("NoNewPrivs:\t1\n") && out.contains("Seccomp:\t2\n"));
    assert!(out.contains("Operation not permitted") && out.contains("unshare=1\n"), "unshare is outside the default profile");
    assert!(out.contains("HOST=defaults\n"));
    assert!(out.contains("done"));
}
