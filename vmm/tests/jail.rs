//! Wall 1: `palisade-vmm` jails itself. These tests start real (tiny) VMs with the binary,
//! look at the jailed VMM from the outside while it runs, and check that nothing is left
//! behind afterwards — also when the supervisor was killed with SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::tiny_guest::{write_guest, Code};

const VMM: &str = env!("CARGO_BIN_EXE_palisade-vmm");

fn can_jail() -> bool {
    if !common::have_kvm() {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the jail needs root");
        return false;
    }
    true
}

/// A VM whose guest prints `ready` and then halts with interrupts off: it stays up
/// (without using the CPU) until it is killed.
struct RunningVm {
    /// `None` once waited for.
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl RunningVm {
    fn start(dir: &Path, extra: &[&str]) -> RunningVm {
        let guest = write_guest(dir, "idle", &Code::new().print("ready\n").halt());
        let mut child = Command::new(VMM)
            .args(["--kernel", guest.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting palisade-vmm");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if line != "ready\n" {
            let out = child.wait_with_output().unwrap();
            panic!("the guest did not come up: stdout {line:?}, stderr {}", String::from_utf8_lossy(&out.stderr));
        }
        RunningVm { child: Some(child), stdout: Some(stdout) }
    }

    /// The supervisor's pid (what a caller like vmrun sees).
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The jailed VMM: the supervisor's only child.
    fn vmm_pid(&self) -> u32 {
        children_of(self.pid()).into_iter().next().expect("the supervisor has a child")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        self.stdout = None;
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for RunningVm {
    /// A failed test must not leave its VM running.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(candidate) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{candidate}/stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            children.push(candidate);
        }
    }
    children
}

fn status_fields(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The directory of `pid`'s cgroup for `controller`, from /proc/<pid>/cgroup and our
/// mount table (v1 hierarchy carrying it, else the v2 one).
fn cgroup_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let memberships = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v2 = None;
    for line in mountinfo.lines() {
        let (before, after) = line.split_once(" - ").unwrap();
        let mount_point = before.split(' ').nth(4).unwrap();
        let mut after = after.split(' ');
        let (fstype, options) = (after.next().unwrap(), after.nth(1).unwrap_or(""));
        if fstype == "cgroup" && options.split(',').any(|o| o == controller) {
            let path = memberships.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == controller).then(|| path.to_string())
            })?;
            return Some(Path::new(mount_point).join(path.trim_start_matches('/')));
        }
        if fstype == "cgroup2" {
            v2 = Some(mount_point.to_string());
        }
    }
    let path = memberships.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(&v2?).join(path.trim_start_matches('/')))
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // (Its parent is dead: init reaps it.)
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} is still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a runtime does for a Kubernetes pod: the VM's cgroup goes under the pod's cgroup
/// (`--jail-cgroup-parent`), in every hierarchy the VMM is limited in, so that the pod's
/// cgroup counts the VM and holds it to the pod's limits; nothing of the VM is left in it
/// afterwards, so that kubelet can remove it. A parent that does not exist is refused.
#[test]
fn the_vms_cgroup_goes_under_the_parent_it_is_given() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let parent = format!("/palisade-test-pod-{}", std::process::id());
    let hierarchies = palisade_vmm::jail::cgroup::detect();
    assert!(!hierarchies.is_empty(), "no cgroup hierarchy with the memory, pids or cpu controller");
    let pod_dirs: Vec<PathBuf> = hierarchies.iter().map(|h| h.mount.join(parent.trim_start_matches('/'))).collect();

    // Not made yet: refused, and the message names it.
    let guest = write_guest(dir.path(), "noop", &Code::new().reset());
    let out = Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--jail-cgroup-parent", &parent]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("cgroup parent {parent}")), "{:?}: {stderr}", out.status);

    for pod in &pod_dirs {
        std::fs::create_dir(pod).unwrap();
    }
    let vm = RunningVm::start(dir.path(), &["--memory", "64", "--jail-cgroup-parent", &parent]);
    let pid = vm.vmm_pid();
    for controller in ["memory", "pids", "cpu"] {
        let Some(cgroup) = cgroup_dir(pid, controller) else { continue };
        let in_pod = pod_dirs.iter().any(|pod| cgroup.parent().and_then(Path::parent) == Some(pod.as_path()));
        assert!(in_pod, "the VMM's {controller} cgroup {} is not under the pod's ({pod_dirs:?})", cgroup.display());
        assert_eq!(cgroup.parent().and_then(Path::file_name).and_then(|n| n.to_str()), Some("palisade"));
    }
    let memory = cgroup_dir(pid, "memory").expect("a memory cgroup");
    let memory_limit =
        ["memory.limit_in_bytes", "memory.max"].iter().map(|f| memory.join(f)).find(|p| p.exists()).map(|p| read_trimmed(&p)).unwrap();
    assert_eq!(memory_limit, ((64u64 + 128) << 20).to_string(), "guest RAM + the default overhead");
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait();
    assert!(status.code().is_some(), "{status:?}: {stderr}");
    wait_until_gone(pid);
    // Empty again, as kubelet needs it to remove the pod's cgroup.
    for pod in &pod_dirs {
        let left: Vec<String> = listing(pod).into_iter().filter(|n| std::fs::metadata(pod.join(n)).is_ok_and(|m| m.is_dir())).collect();
        assert!(left.is_empty(), "left in the pod's cgroup {}: {left:?}", pod.display());
        std::fs::remove_dir(pod).unwrap();
    }
}

#[test]
fn a_companion_joins_the_vms_cgroup_with_its_children_before_the_guest_runs() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for virtiofsd: a process with a child of its own.
    let mut companion = Command::new("sh").args(["-c", "sleep 60 & wait"]).spawn().unwrap();
    let companion_pid = companion.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let grandchild = loop {
        if let Some(&child) = children_of(companion_pid).first() {
            break child;
        }
        assert!(std::time::Instant::now() < deadline, "the companion's child did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let before = cgroup_dir(companion_pid, "memory");
    let vm = RunningVm::start(dir.path(), &["--memory", "64", "--jail-cgroup-companion", &companion_pid.to_string()]);
    let vmm = vm.vmm_pid();
    let mut checked = 0;
    for controller in ["memory", "pids", "cpu"] {
        let Some(cgroup) = cgroup_dir(vmm, controller) else { continue };
        assert_eq!(cgroup.parent().and_then(Path::file_name).and_then(|n| n.to_str()), Some("palisade"));
        assert_eq!(cgroup_dir(companion_pid, controller).as_ref(), Some(&cgroup), "the companion's {controller} cgroup");
        assert_eq!(cgroup_dir(grandchild, controller).as_ref(), Some(&cgroup), "its child's {controller} cgroup");
        if controller == "pids" {
            // One vCPU, the VMM's own allowance, and the companion's.
            assert_eq!(read_trimmed(&cgroup.join("pids.max")), (1 + 8 + 128).to_string());
        }
        checked += 1;
    }
    assert!(checked > 0, "no memory, pids or cpu cgroup to check");
    assert_ne!(before, cgroup_dir(companion_pid, "memory"), "the companion moved");
    // The companion ends with its VM, as virtiofsd does; then nothing is left.
    let vm_cgroup = cgroup_dir(vmm, "memory").or_else(|| cgroup_dir(vmm, "pids")).unwrap();
    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(grandchild as i32, libc::SIGKILL);
        libc::kill(companion_pid as i32, libc::SIGKILL);
    }
    companion.wait().unwrap();
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait();
    assert!(status.code().is_some(), "{status:?}: {stderr}");
    wait_until_gone(vmm);
    assert!(!vm_cgroup.exists(), "{} is left", vm_cgroup.display());

    // A companion that is not there is refused, by its pid.
    let out = Command::new(VMM)
        .args(["--kernel", write_guest(dir.path(), "noop", &Code::new().reset()).to_str().unwrap(), "--jail-cgroup-companion"])
        .arg(companion_pid.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("cgroup companion {companion_pid}")), "{:?}: {stderr}", out.status);
}

#[test]
fn the_running_vmm_is_confined() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.path().join("vsock.sock");
    let vm = RunningVm::start(
        dir.path(),
        &["--cpus", "2", "--memory", "64", "--rng", "--disk", &format!("{},ro", disk.display()), "--vsock-uds", socket.to_str().unwrap()],
    );
    let pid = vm.vmm_pid();

    // Privileges: none.
    let status = status_fields(pid);
    for field in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(status[field], "0000000000000000", "{field}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    let uids: Vec<u32> = status["Uid"].split_whitespace().map(|u| u.parse().unwrap()).collect();
    let gids: Vec<u32> = status["Gid"].split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(uids.iter().all(|&u| u == uids[0] && u != 0), "Uid: {uids:?}");
    assert!(gids.iter().all(|&g| g == gids[0] && g != 0), "Gid: {gids:?}");
    assert_eq!(status["Groups"], "");
    // Every vCPU thread is filtered too (the filter is per thread).
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let task_status = std::fs::read_to_string(task.path().join("status")).unwrap();
        assert!(task_status.contains("\nSeccomp:\t2\n"), "task {:?} is not filtered: {task_status}", task.file_name());
    }

    // No environment, not even the one it started with.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.iter().all(|&b| b == 0), "environment: {:?}", String::from_utf8_lossy(&environ));
    // Only stdio and what the VM needs: no inherited descriptor.
    let mut pipes = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(fd.path()).unwrap().to_string_lossy().into_owned();
        let n: u32 = fd.file_name().to_str().unwrap().parse().unwrap();
        if n > 2 && target.starts_with("pipe:") {
            // The write end of its exit-record pipe to the supervisor, and nothing else.
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            assert_eq!(u32::from_str_radix(flags, 8).unwrap() & libc::O_ACCMODE as u32, libc::O_WRONLY as u32, "fd {n}: {info}");
            pipes += 1;
            continue;
        }
        assert!(
            // (Seen from outside the jail, a jail path may carry the prefix of where the
            // jail's root is attached: in a chroot, say.)
            n <= 2
                || target.starts_with("anon_inode:")
                || target.starts_with("socket:")
                || target.ends_with("/dev/kvm")
                || target.ends_with("/dev/urandom")
                || target.contains("/vm/"),
            "fd {n} -> {target}"
        );
    }
    assert!(pipes <= 1, "{pipes} pipes");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| limits.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().rev().nth(1).unwrap().to_string();
    assert_eq!(limit("Max core file size"), "0");
    assert_eq!(limit("Max open files"), "4096");
    assert_eq!(limit("Max processes"), "10");
    assert_eq!(limit("Max file size"), (1u64 << 30).to_string());

    // Namespaces: its own.
    for ns in ["mnt", "pid", "ipc", "uts", "net", "cgroup"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    let nspid = status["NSpid"].split_whitespace().last().unwrap().to_string();
    assert_eq!(nspid, "1", "the VMM is PID 1 of its pid namespace");

    // Its root holds only what it needs.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert_eq!(listing(&root), ["dev", "vm"]);
    assert_eq!(listing(&root.join("dev")), ["kvm", "urandom"]);
    assert_eq!(listing(&root.join("vm")), ["disk0", "kernel"]);
    let kvm = std::fs::metadata(root.join("dev/kvm")).unwrap();
    assert_eq!((kvm.uid(), kvm.gid(), kvm.mode() & 0o777), (uids[0], gids[0], 0o600), "/dev/kvm belongs to the VMM");
    // The vsock socket is where the caller asked for it.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());

    // Its cgroups, with the limits.
    let memory = cgroup_dir(pid, "memory").expect("a memory cgroup");
    assert!(memory.to_string_lossy().contains("/palisade/"), "{}", memory.display());
    let memory_limit =
        ["memory.limit_in_bytes", "memory.max"].iter().map(|f| memory.join(f)).find(|p| p.exists()).map(|p| read_trimmed(&p)).unwrap();
    assert_eq!(memory_limit, ((64u64 + 128) << 20).to_string(), "guest RAM + the default overhead");
    let pids = cgroup_dir(pid, "pids").unwrap();
    assert_eq!(read_trimmed(&pids.join("pids.max")), "10");
    let cpu = cgroup_dir(pid, "cpu").unwrap();
    if cpu.join("cpu.cfs_quota_us").exists() {
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "300000");
    } else {
        assert_eq!(read_trimmed(&cpu.join("cpu.max")), "300000 100000");
    }
    let jail_dirs: Vec<String> = listing(Path::new(palisade_vmm::jail::DEFAULT_BASE_DIR));
    let id = memory.file_name().unwrap().to_string_lossy().into_owned();
    assert!(jail_dirs.contains(&id), "jail dir {id} in {jail_dirs:?}");

    // Asked to end, the supervisor ends the VM and removes everything.
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
    for dir in [&memory, &pids, &cpu] {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    assert!(!Path::new(palisade_vmm::jail::DEFAULT_BASE_DIR).join(&id).exists(), "jail dir left behind");
    assert!(!socket.exists(), "vsock socket left behind");
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || children_of(pid).is_empty());
}

#[test]
fn a_sigkilled_supervisor_leaves_nothing_the_next_run_does_not_remove() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let jail_dir = dir.path().join("jails");
    let vm = RunningVm::start(dir.path(), &["--jail-dir", jail_dir.to_str().unwrap()]);
    let pid = vm.vmm_pid();
    let cgroups: Vec<PathBuf> = ["memory", "pids", "cpu"].iter().filter_map(|c| cgroup_dir(pid, c)).collect();
    assert!(!cgroups.is_empty());
    let ids = listing(&jail_dir);
    assert_eq!(ids.len(), 1, "{ids:?}");

    vm.signal(libc::SIGKILL);
    let (status, _) = vm.wait();
    assert_eq!(status.code(), None, "killed");
    wait_until_gone(pid);
    assert!(jail_dir.join(&ids[0]).exists(), "nobody cleaned up yet");

    // The next run sweeps the leftovers of the dead one, and leaves nothing of its own.
    let guest = write_guest(dir.path(), "quick", &Code::new().print("hi\n").reset().halt());
    let out = Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--jail-dir", jail_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    for cg in &cgroups {
        assert!(!cg.exists(), "cgroup {} of the killed VMM left behind", cg.display());
    }
    assert!(!jail_dir.exists() || listing(&jail_dir).is_empty(), "{:?}", listing(&jail_dir));
}

#[test]
fn whoever_started_a_sigkilled_supervisor_sweeps_its_jail_at_once() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let jail_dir = dir.path().join("jails");
    let vm = RunningVm::start(dir.path(), &["--jail-dir", jail_dir.to_str().unwrap()]);
    let (supervisor, pid) = (vm.pid(), vm.vmm_pid());
    let cgroups: Vec<PathBuf> = ["memory", "pids", "cpu"].iter().filter_map(|c| cgroup_dir(pid, c)).collect();
    assert!(!cgroups.is_empty());
    vm.signal(libc::SIGKILL);
    let (status, _) = vm.wait();
    assert_eq!(status.code(), None, "killed");
    // Right after reaping it (its jailed VMM may still be dying), as vmrun and a sandbox do.
    assert!(palisade_vmm::jail::sweep_killed(&jail_dir, supervisor, Duration::from_secs(30)), "not swept");
    for cg in &cgroups {
        assert!(!cg.exists(), "cgroup {} of the killed VMM left behind", cg.display());
    }
    assert!(!jail_dir.exists(), "the empty jails' directory is removed too: {:?}", listing(&jail_dir));
}

#[test]
fn a_forbidden_system_call_kills_the_vmm_with_sigsys_and_is_reported() {
    if !can_jail() {
        return;
    }
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the seccomp self-test exists only in debug builds");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "idle", &Code::new().print("never printed\n").halt());
    let started = Instant::now();
    let record = dir.path().join("exit.json");
    let out = Command::new(VMM)
        .args(["--kernel", guest.to_str().unwrap(), "--exit-record", record.to_str().unwrap()])
        .env("PALISADE_VMM_SECCOMP_SELFTEST", "1")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGSYS), "stderr: {stderr}");
    assert!(stderr.lines().last().unwrap_or("").starts_with("palisade-vmm: killed by seccomp (SIGSYS)"), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "the guest never ran");
    // The same end as data, from the supervisor.
    let record = palisade_vmm::ExitRecord::read_from(&record).unwrap();
    assert_eq!((record.ending, record.signal, record.exit_status), (palisade_vmm::Ending::Killed, Some(libc::SIGSYS), 159));
    assert!(!record.clean && record.message.starts_with("killed by seccomp (SIGSYS)"), "{record:?}");
}

#[test]
fn a_vmm_asked_to_stop_records_that_it_was_stopped() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("exit.json");
    let vm = RunningVm::start(dir.path(), &["--exit-record", record.to_str().unwrap()]);
    assert!(!record.exists(), "no record while the VM runs");
    vm.signal(libc::SIGTERM);
    let (status, _) = vm.wait();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let record = palisade_vmm::ExitRecord::read_from(&record).unwrap();
    assert_eq!(
        (record.ending, record.signal, record.exit_status, record.clean),
        (palisade_vmm::Ending::Stopped, Some(libc::SIGTERM), 143, false)
    );
}

#[test]
fn no_jail_runs_unconfined_and_warns() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "marker", &Code::new().print("unjailed\n").reset().halt());
    let out = Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--no-jail"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unjailed\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("palisade-vmm: warning: --no-jail"), "{stderr}");
}

#[test]
fn jailed_files_keep_their_callers_names_and_the_serial_log_works() {
    if !can_jail() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "marker", &Code::new().print("logged\n").reset().halt());
    let log = dir.path().join("serial.log");
    let out =
        Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--serial", &format!("file:{}", log.display())]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "logged\n");
    // A device as the log is used as it is, never handed to the VMM's uid.
    let out = Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--serial", "file:/dev/null"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata("/dev/null").unwrap().uid(), 0);

    // A writable disk the VMM's uid cannot write: the error names the caller's path.
    let disk = dir.path().join("private.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--disk", disk.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("palisade-vmm: disk {}: ", disk.display())), "{stderr}");
    assert!(stderr.contains("Permission denied") && stderr.contains("--jail-uid"), "{stderr}");
}
