//! Containers created by the agent's container library on this host, checked from
//! inside the container with busybox: capabilities, no_new_privs, seccomp, PID 1,
//! hostname, masked and read-only paths, /dev, the read-only root, user namespaces
//! and the create → start barrier. Needs root and Debian's busybox-static
//! (/bin/busybox); cgroup limits need cgroup v2 with controllers at /sys/fs/cgroup
//! (the KVM test host has it) and print a SKIP line elsewhere.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use palisade_agent::container::{self, CreateOptions, Status};
use serde_json::{json, Value};

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "hostname", "mkdir", "uname", "unshare", "ls", "wc", "id", "touch", "head", "tail", "seq", "sleep", "grep",
    "true", "sync", "mknod",
];

fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/bin/busybox").exists() {
        println!("SKIP: container tests need root and /bin/busybox (Debian busybox-static)");
        return false;
    }
    true
}

/// Held while a busybox copy is being written and while a container's init lives
/// between clone and exec: an init cloned by another test thread meanwhile would
/// inherit the copy's write descriptor and make exec of that busybox fail ETXTBSY.
static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A busybox root filesystem in a temporary directory.
fn busybox_rootfs() -> tempfile::TempDir {
    let _forks = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new().prefix("palisade-ct-").tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    dir
}

/// A Docker-like spec running `sh -c script`.
fn spec(script: &str) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "hostname": "palisade-test",
        "process": {
            "cwd": "/", "args": ["sh", "-c", script], "env": ["PATH=/bin", "HOME=/"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/acpi", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 123},
                    {"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"},
                    {"names": ["unshare"], "action": "SCMP_ACT_ERRNO"}
                ]
            }
        }
    })
}

#[derive(Debug)]
struct Run {
    output: String,
    /// Shell exit code (128 + signal when killed).
    code: i32,
}

fn wait(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child into a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// Creates, starts and waits for a container; output is stdout and stderr.
fn run_with(
    spec: &Value,
    rootfs: &Path,
    cgroup_root: Option<&Path>,
    between: impl FnOnce(&container::Container),
) -> Result<Run, container::ContainerError> {
    let spec: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).unwrap();
    let (out_r, out_w) = pipe();
    let null = std::fs::File::open("/dev/null").unwrap();
    let opts =
        CreateOptions { id: "test", rootfs, bundle: None, stdio: [null.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()], cgroup_root };
    let forks = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = container::create(&spec, &opts)?;
    drop(out_w);
    assert_eq!(c.status(), Status::Created);
    between(&c);
    if let Err(e) = c.start() {
        wait(c.pid);
        return Err(e);
    }
    drop(forks);
    assert_eq!(c.status(), Status::Running);
    let mut output = String::new();
    std::fs::File::from(out_r).read_to_string(&mut output).unwrap();
    let code = wait(c.pid);
    Ok(Run { output, code })
}

fn run(spec: &Value) -> Run {
    let root = busybox_rootfs();
    let r = run_with(spec, root.path(), None, |_| {}).unwrap_or_else(|e| panic!("container failed: {e}"));
    println!("--- container output (exit {}) ---\n{}", r.code, r.output);
    r
}

/// Whether this process runs in a chroot (its root differs from PID 1's).
fn chrooted() -> bool {
    use std::os::unix::fs::MetadataExt;
    // Where PID 1's root cannot be inspected (a sandbox), assume no chroot.
    match (std::fs::metadata("/"), std::fs::metadata("/proc/1/root")) {
        (Ok(ours), Ok(init)) => (ours.dev(), ours.ino()) != (init.dev(), init.ino()),
        _ => false,
    }
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(str::trim).unwrap_or_else(|| panic!("{name} not in:\n{status}"))
}

#[test]
fn security_settings_are_visible_from_inside() {
    if !need_root() {
        return;
    }
    let r = run(&spec(
        "cat /proc/self/status; echo PID=$$; echo HOST=$(hostname); \
         mkdir /tmp/x; echo mkdir=$?; \
         unshare -u true; echo unshare=$?; \
         echo KCORE=$(cat /proc/kcore | wc -c); \
         echo 1 > /proc/sys/kernel/domainname; echo sysctl_write=$?; \
         echo x > /proc/sysrq-trigger; echo sysrq_write=$?; \
         echo DEV=$(ls /dev); \
         (sync); echo sync=$?",
    ));
    let o = &r.output;
    // Docker's 14 capabilities: chown, dac_override, fowner, fsetid, kill, setgid,
    // setuid, setpcap, net_bind_service, net_raw, sys_chroot, mknod, audit_write, setfcap.
    let expected = "00000000a80425fb";
    assert_eq!(field(o, "CapEff"), expected);
    assert_eq!(field(o, "CapPrm"), expected);
    assert_eq!(field(o, "CapBnd"), expected);
    assert_eq!(field(o, "CapInh"), "0000000000000000");
    assert_eq!(field(o, "CapAmb"), "0000000000000000");
    assert_eq!(field(o, "NoNewPrivs"), "1");
    assert_eq!(field(o, "Seccomp"), "2");
    assert!(o.contains("PID=1\n"), "the shell is PID 1 of its pid namespace");
    assert!(o.contains("HOST=palisade-test\n"));
    // ERRNO with errnoRet 123 (ENOMEDIUM) and with the default (EPERM).
    assert!(o.contains("No medium found") && o.contains("mkdir=1\n"), "mkdir fails with the configured errno");
    assert!(o.contains("unshare=1\n") && o.contains("Operation not permitted"));
    assert!(o.contains("KCORE=0\n"), "masked /proc/kcore reads empty");
    assert!(o.contains("sh: can't create /proc/sys/kernel/domainname: Read-only file system\nsysctl_write=1\n"), "/proc/sys is read-only");
    if Path::new("/proc/sysrq-trigger").exists() {
        assert!(
            o.contains("sh: can't create /proc/sysrq-trigger: Read-only file system\nsysrq_write=1\n"),
            "/proc/sysrq-trigger is read-only"
        );
    } else {
        println!("note: this kernel has no /proc/sysrq-trigger; its read-only check is not exercised here");
    }
    assert!(o.contains("DEV=fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero\n"), "a minimal /dev");
    // SCMP_ACT_KILL_PROCESS: SIGSYS, 128 + 31.
    assert!(o.contains("sync=159\n"), "sync is killed with SIGSYS");
    assert_eq!(r.code, 0);
}

#[test]
fn read_only_root_gives_erofs() {
    if !need_root() {
        return;
    }
    let mut s = spec("touch /newfile; echo touch=$?; touch /tmp/ok && echo tmp_ok");
    s["root"]["readonly"] = json!(true);
    let r = run(&s);
    assert!(r.output.contains("Read-only file system") && r.output.contains("touch=1\n"), "{}", r.output);
    assert!(r.output.contains("tmp_ok"), "a tmpfs mount stays writable");
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_uid() {
    if !need_root() {
        return;
    }
    if chrooted() {
        println!("SKIP: this process is chrooted (as in scripts/testhost), where the kernel refuses new user namespaces");
        return;
    }
    let mut s = spec("cat /proc/self/uid_map /proc/self/gid_map; echo ID=$(id -u):$(id -g); grep CapEff /proc/self/status");
    s["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // sysfs needs a network namespace owned by the user namespace; drop it here.
    s["mounts"].as_array_mut().unwrap().retain(|m| m["type"] != "sysfs");
    let r = run(&s);
    let maps: Vec<Vec<&str>> = r.output.lines().take(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(maps, [["0", "100000", "65536"], ["0", "100000", "65536"]], "{}", r.output);
    assert!(r.output.contains("ID=0:0\n"));
    assert!(r.output.contains("CapEff:\t00000000a80425fb"));
}

#[test]
fn start_releases_the_exec_barrier() {
    if !need_root() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let mut s = spec("echo ran > /shared/marker");
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/shared", "type": "bind", "source": shared.path(), "options": ["rbind", "rw", "nosuid"]
    }));
    let root = busybox_rootfs();
    let marker = shared.path().join("marker");
    let r = run_with(&s, root.path(), None, |c| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!marker.exists(), "the program must not run before start");
        // The init is alive and waiting, as PID 1 of its namespace.
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();
        assert!(status.contains("NSpid:") && field(&status, "NSpid").ends_with("\t1"), "{status}");
    })
    .unwrap();
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
}

#[test]
fn failures_name_what_failed() {
    if !need_root() {
        return;
    }
    let root = busybox_rootfs();
    let mut s = spec("true");
    s["process"]["args"] = json!(["no-such-program"]);
    let e = run_with(&s, root.path(), None, |_| {}).unwrap_err();
    assert_eq!(e.to_string(), "no-such-program: command not found");

    let mut s = spec("true");
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/bad", "type": "proc", "source": "proc", "options": ["nosuchoption=1"]}));
    let e = run_with(&s, root.path(), None, |_| {}).unwrap_err().to_string();
    assert!(e.starts_with("mount proc on /bad: EINVAL"), "{e}");

    let mut s = spec("true");
    s["process"]["cwd"] = json!("/does/not/exist");
    let e = run_with(&s, root.path(), None, |_| {}).unwrap_err().to_string();
    assert!(e.starts_with("working directory /does/not/exist: ENOENT"), "{e}");
}

#[test]
fn mount_targets_cannot_escape_the_root_through_symlinks() {
    if !need_root() {
        return;
    }
    let root = busybox_rootfs();
    // An absolute symlink in the image: it must resolve inside the root, not to the
    // agent's /etc.
    std::os::unix::fs::symlink("/etc", root.path().join("escape")).unwrap();
    let name = format!("palisade-escape-{}", std::process::id());
    let mut s = spec("ls -d /etc/*escape* && echo inside");
    s["mounts"].as_array_mut().unwrap().push(json!({"destination": format!("/escape/{name}"), "type": "tmpfs", "source": "tmpfs"}));
    let r = run_with(&s, root.path(), None, |_| {}).unwrap();
    assert!(r.output.contains("inside"), "{}", r.output);
    assert!(!Path::new("/etc").join(&name).exists(), "the mount point was created outside the root");
    assert!(root.path().join("etc").join(&name).is_dir(), "the symlink resolved inside the root");
}

fn cgroup_root() -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    if container::cgroup::available(&root) {
        Some(root)
    } else {
        println!("SKIP: cgroup v2 with controllers is not mounted at /sys/fs/cgroup (run inside scripts/testhost)");
        None
    }
}

#[test]
fn cgroup_limits_memory_and_pids() {
    if !need_root() {
        return;
    }
    let Some(cg) = cgroup_root() else { return };
    let root = busybox_rootfs();
    let mut s = spec("head -c 200m /dev/zero | tail > /dev/null; echo survived");
    s["linux"]["resources"] = json!({"memory": {"limit": 64 << 20, "swap": 64 << 20}});
    s["linux"]["cgroupsPath"] = json!("/palisade-test/mem");
    let r = run_with(&s, root.path(), Some(&cg), |c| {
        let max = std::fs::read_to_string(c.cgroup.as_ref().unwrap().path.join("memory.max")).unwrap();
        assert_eq!(max.trim(), (64u64 << 20).to_string());
    })
    .unwrap();
    let events = std::fs::read_to_string(cg.join("palisade-test/mem/memory.events")).unwrap();
    assert!(events.lines().any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"), "{events}\n{}", r.output);
    let _ = std::fs::remove_dir(cg.join("palisade-test/mem"));

    let mut s = spec("for i in $(seq 1 40); do sleep 3 & done; echo forked; wait");
    s["linux"]["resources"] = json!({"pids": {"limit": 20}});
    s["linux"]["cgroupsPath"] = json!("/palisade-test/pids");
    let r = run_with(&s, root.path(), Some(&cg), |_| {}).unwrap();
    assert!(r.output.contains("can't fork") || r.output.contains("Resource temporarily unavailable"), "{}", r.output);
    let _ = std::fs::remove_dir(cg.join("palisade-test/pids"));
}

#[test]
fn device_allowlist_is_enforced_in_the_container() {
    if !need_root() {
        return;
    }
    // The allowlist is a BPF program, not a controller: any cgroup v2 tree will do.
    let Some(cg) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].into_iter().map(PathBuf::from).find(|p| container::cgroup::is_v2(p)) else {
        println!("SKIP: no cgroup v2 hierarchy");
        return;
    };
    let root = busybox_rootfs();
    let script = "echo hi > /dev/null && echo null-ok; head -c 1 /dev/zero > /dev/null && echo zero-ok; \
                  mknod /dev/tun c 10 200 && echo mknod-ok; head -c 0 /dev/tun && echo tun-ok";
    let mut s = spec(script);
    let cgroups_path = format!("/palisade-test-devices-{}", std::process::id());
    s["linux"]["cgroupsPath"] = json!(cgroups_path);
    // runc's default: deny all; the standard /dev nodes stay usable.
    s["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let denied = run_with(&s, root.path(), Some(&cg), |_| {}).unwrap();
    let _ = std::fs::remove_dir(cg.join(cgroups_path.trim_start_matches('/')));
    println!("--- deny all ---\n{}", denied.output);
    assert!(denied.output.contains("null-ok") && denied.output.contains("zero-ok"), "{}", denied.output);
    assert!(!denied.output.contains("mknod-ok") && denied.output.contains("Operation not permitted"), "{}", denied.output);

    // A rule for /dev/net/tun (10:200) after the deny lets the container make and open it.
    s["linux"]["resources"]["devices"] =
        json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]);
    let allowed = run_with(&s, root.path(), Some(&cg), |_| {}).unwrap();
    let _ = std::fs::remove_dir(cg.join(cgroups_path.trim_start_matches('/')));
    println!("--- allow 10:200 ---\n{}", allowed.output);
    assert!(allowed.output.contains("mknod-ok") && allowed.output.contains("tun-ok"), "{}", allowed.output);
}

#[test]
fn exec_joins_the_containers_namespaces_and_seccomp_with_its_own_user_and_capabilities() {
    if !need_root() {
        return;
    }
    let root = busybox_rootfs();
    let spec: oci_spec::runtime::Spec = serde_json::from_value(spec("echo init-ran; exec sleep 600")).unwrap();
    let (out_r, out_w) = pipe();
    let null = std::fs::File::open("/dev/null").unwrap();
    let opts = CreateOptions {
        id: "exec-test",
        rootfs: root.path(),
        bundle: None,
        stdio: [null.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()],
        cgroup_root: None,
    };
    let forks = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = container::create(&spec, &opts).unwrap();
    c.start().unwrap();
    drop(out_w);
    let mut line = [0u8; 9];
    std::fs::File::from(out_r).read_exact(&mut line).unwrap();
    assert_eq!(&line, b"init-ran\n");

    // A process of its own: uid 1000, one capability, no_new_privileges off, another cwd.
    let process: oci_spec::runtime::Process = serde_json::from_value(json!({
        "cwd": "/tmp", "env": ["PATH=/bin", "WHO=exec"],
        "args": ["sh", "-c", "cat /proc/self/status; echo PID=$$ HOST=$(hostname) CWD=$(pwd) WHO=$WHO; \
                 echo INIT=$(cat /proc/1/cmdline | tr '\\0' ' '); mkdir /tmp/x; echo mkdir=$?"],
        "user": {"uid": 1000, "gid": 1000},
        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
    }))
    .unwrap();
    let (exec_r, exec_w) = pipe();
    let launched = container::exec::exec(&c.exec_target(), "exec-1", &process, [null.as_raw_fd(), exec_w.as_raw_fd(), exec_w.as_raw_fd()])
        .unwrap_or_else(|(_, e)| panic!("exec failed: {e}"));
    drop(exec_w);
    drop(forks);
    let mut o = String::new();
    std::fs::File::from(exec_r).read_to_string(&mut o).unwrap();
    let code = wait(launched.pid);
    println!("--- exec output (exit {code}) ---\n{o}");
    assert_eq!(code, 0, "{o}");
    assert!(o.contains("HOST=palisade-test CWD=/tmp WHO=exec\n"), "the container's uts namespace, the exec's cwd and env: {o}");
    assert!(o.contains("INIT=sleep 600\n"), "the container's pid namespace, whose PID 1 is its init: {o}");
    // The container's /proc counts in its pid namespace: the exec'd shell is not its PID 1.
    assert!(o.contains("PID=") && !o.contains("PID=1 "), "a process of the container's pid namespace, not its init: {o}");
    assert_eq!(field(&o, "Uid"), "1000\t1000\t1000\t1000");
    // A non-root program keeps no effective capability without ambient ones (as with runc).
    assert_eq!(field(&o, "CapEff"), "0000000000000000");
    assert_eq!(field(&o, "CapBnd"), "0000000000000020", "the exec's own bounding set: CAP_KILL only");
    assert_eq!(field(&o, "Seccomp"), "2", "the container's seccomp profile");
    assert!(o.contains("mkdir=1\n") && o.contains("No medium found"), "the container's seccomp rule (ENOMEDIUM): {o}");

    // A program that does not exist is an error of the exec, not of the container.
    let mut missing = process.clone();
    missing.set_args(Some(vec!["no-such-program".into()]));
    let forks = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match container::exec::exec(&c.exec_target(), "exec-2", &missing, [null.as_raw_fd(); 3]) {
        Ok(p) => panic!("exec of a missing program started pid {}", p.pid),
        Err((pid, e)) => {
            assert!(e.to_string().contains("no-such-program: command not found"), "{e}");
            if let Some(pid) = pid {
                wait(pid);
            }
        }
    }
    drop(forks);
    // SAFETY: killing our own child, the container's init, not yet reaped.
    unsafe { libc::kill(c.pid, libc::SIGKILL) };
    assert_eq!(wait(c.pid), 128 + libc::SIGKILL);
}
