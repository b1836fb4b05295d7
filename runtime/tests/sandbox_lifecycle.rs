//! A detached sandbox's life on the host, with the real supervisor (`palisade-sandbox
//! supervise`, started detached by `control::start`), the real virtiofsd, and a stand-in
//! for the VMM (a process that runs until it is killed): what a later command finds by the
//! ID, how it stops it, and what is left when any process of it was SIGKILLed.
//! Booting a real VM in a sandbox is the end-to-end tests' part.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_runtime::sandbox::control::Attachment;
use palisade_runtime::sandbox::{control, ProcessRef, SandboxId, SandboxSpec, SharedPath, Status};
use palisade_runtime::virtiofsd::{Cache, Tuning};
use palisade_vmm::{Ending, VmConfig};

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_palisade-sandbox");

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A VMM stand-in: runs until killed, like a VM that never ends on its own, and leaves its
/// arguments in `fake-vmm.args` beside it.
fn fake_vmm(dir: &Path) -> PathBuf {
    let path = dir.join("fake-vmm");
    std::fs::write(&path, format!("#!/bin/sh\necho \"$*\" > {}.args\nexec sleep 600\n", path.display())).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn spec(dir: &Path, shared: Vec<SharedPath>) -> SandboxSpec {
    SandboxSpec {
        vmm_binary: fake_vmm(dir),
        virtiofsd_binary: Some(palisade_vmm::testing::virtiofsd::path()),
        vm: VmConfig::new("/nonexistent/vmlinux"),
        shared,
        virtiofsd: Tuning::default(),
        ephemeral: false,
        remove_empty_root: false,
        console: false,
        cgroup_parent: None,
    }
}

fn id(s: &str) -> SandboxId {
    SandboxId::parse(s).unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(3)?.parse().ok()
}

/// Live processes whose command line mentions `needle` (a sandbox's directory: its
/// supervisor, virtiofsd and the process virtiofsd serves from all name it).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().next()).is_none_or(|s| s == "Z") {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

/// As root only: a temporary directory with the sandboxes' root (`root`) and a host
/// directory to share (`rootfs`, holding `keep`).
fn setup() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    if !root() {
        eprintln!("sandboxes need root (virtiofsd, mount namespaces); skipping");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sandboxes = dir.path().join("root");
    let host = dir.path().join("rootfs");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("keep"), "precious").unwrap();
    Some((dir, sandboxes, host))
}

fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}

#[test]
fn a_detached_sandbox_is_found_by_its_id_and_stopped_and_leaves_nothing() {
    let Some((dir, sandboxes, host)) = setup() else { return };
    let shared = vec![SharedPath { host: host.clone(), path: "root".into(), read_only: false }];
    let s1 = id("s1");
    let tuned = SandboxSpec { virtiofsd: Tuning { cache: Cache::Never, thread_pool_size: 2 }, ..spec(dir.path(), shared) };
    let running = control::start(&sandboxes, &s1, &tuned, Path::new(SUPERVISOR), Attachment::Detached, Duration::from_secs(30)).unwrap();
    assert_eq!(running.status, Status::Running);
    let (supervisor, vmm, virtiofsd) = (running.supervisor.unwrap(), running.vmm.unwrap(), running.virtiofsd.unwrap());
    // Detached: a session of its own, not ours.
    assert_eq!(session_of(supervisor.pid), Some(supervisor.pid));
    assert!(vmm.is_alive() && virtiofsd.is_alive());
    // Its virtiofsd serves as the spec says.
    let argv = std::fs::read(format!("/proc/{}/cmdline", virtiofsd.pid)).unwrap();
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(argv.contains(" --cache never --thread-pool-size 2 "), "{argv}");
    // The VMM is told to take virtiofsd into the VM's cgroup.
    let vmm_args = std::fs::read_to_string(dir.path().join("fake-vmm.args")).unwrap();
    assert!(vmm_args.contains(&format!("--jail-cgroup-companion {}", virtiofsd.pid)), "{vmm_args}");

    // Another command finds it by its ID.
    let found = control::state(&sandboxes, &s1).unwrap();
    assert_eq!((found.status, found.supervisor), (Status::Running, Some(supervisor)));
    let listed = control::list(&sandboxes).unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s1"]);
    let e = control::delete(&sandboxes, &s1, false, Duration::from_secs(5)).unwrap_err().to_string();
    assert_eq!(e, "sandbox s1 is still running: stop it first");

    // It has no agent here: stop falls back to asking the supervisor to end the VM.
    let stopped = control::stop(&sandboxes, &s1, Duration::from_secs(20)).unwrap();
    assert_eq!(stopped.status, Status::Stopped);
    let exit = stopped.exit.unwrap();
    assert_eq!((exit.ending, exit.signal), (Ending::Stopped, Some(libc::SIGTERM)), "{exit:?}");
    for (what, p) in [("supervisor", supervisor), ("VMM", vmm), ("virtiofsd", virtiofsd)] {
        wait_until(&format!("the {what} is gone"), || !p.is_alive());
    }
    assert!(mounts_mentioning(dir.path().to_str().unwrap()).is_empty());
    let left = processes_mentioning(sandboxes.to_str().unwrap());
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(!sandboxes.join("s1/share").exists(), "the shared directory's placeholders were not removed");
    control::delete(&sandboxes, &s1, false, Duration::from_secs(5)).unwrap();
    assert!(!sandboxes.join("s1").exists());
    assert_eq!(std::fs::read_to_string(host.join("keep")).unwrap(), "precious");
    let e = control::state(&sandboxes, &s1).unwrap_err().to_string();
    assert_eq!(e, "sandbox s1 does not exist");
}

#[test]
fn a_sigkilled_vmm_or_supervisor_leaves_a_stopped_sandbox_and_no_process() {
    let Some((dir, sandboxes, host)) = setup() else { return };
    let kill = |p: ProcessRef| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();

    // The VMM is SIGKILLed: its supervisor says so and ends what else runs.
    let shared = vec![SharedPath { host: host.clone(), path: "root".into(), read_only: true }];
    let a = id("vmm-killed");
    let running =
        control::start(&sandboxes, &a, &spec(dir.path(), shared), Path::new(SUPERVISOR), Attachment::Detached, Duration::from_secs(30))
            .unwrap();
    kill(running.vmm.unwrap());
    wait_until("the state says stopped", || control::state(&sandboxes, &a).unwrap().status == Status::Stopped);
    let exit = control::state(&sandboxes, &a).unwrap().exit.unwrap();
    assert_eq!((exit.ending, exit.signal), (Ending::Killed, Some(libc::SIGKILL)), "{exit:?}");
    wait_until("virtiofsd and the supervisor are gone", || {
        !running.virtiofsd.unwrap().is_alive() && !running.supervisor.unwrap().is_alive()
    });

    // The supervisor is SIGKILLed: its VMM goes with it, and the next reader of the state
    // finds it stopped.
    let b = id("supervisor-killed");
    let shared = vec![SharedPath { host: host.clone(), path: "root".into(), read_only: false }];
    let running =
        control::start(&sandboxes, &b, &spec(dir.path(), shared), Path::new(SUPERVISOR), Attachment::Detached, Duration::from_secs(30))
            .unwrap();
    kill(running.supervisor.unwrap());
    wait_until("the VMM is gone", || !running.vmm.unwrap().is_alive());
    // The next command that reads its state finds it stopped and ends what is left (the
    // process virtiofsd serves from ignores its parent-death signal).
    let state = control::state(&sandboxes, &b).unwrap();
    let b_dir = format!("{}/", sandboxes.join("supervisor-killed").display());
    wait_until("its virtiofsd is gone", || processes_mentioning(&b_dir).is_empty());
    assert_eq!(state.status, Status::Stopped);
    assert_eq!(state.exit.map(|e| e.ending), Some(Ending::Killed));
    // On disk too, for the next command.
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sandboxes.join("supervisor-killed/state.json")).unwrap()).unwrap();
    assert_eq!(on_disk["status"], "stopped");

    for s in [&a, &b] {
        control::delete(&sandboxes, s, false, Duration::from_secs(5)).unwrap();
    }
    assert!(mounts_mentioning(dir.path().to_str().unwrap()).is_empty());
    wait_until("no process of the sandboxes is left", || processes_mentioning(sandboxes.to_str().unwrap()).is_empty());
}

#[test]
fn a_sandbox_that_cannot_start_says_why_and_its_id_stays_taken_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let sandboxes = dir.path().join("root");
    let mut broken = spec(dir.path(), vec![]);
    broken.vmm_binary = dir.path().join("no-such-vmm");
    let s = id("broken");
    let e = control::start(&sandboxes, &s, &broken, Path::new(SUPERVISOR), Attachment::Detached, Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("sandbox broken did not start: ") && e.contains("no-such-vmm"), "{e}");
    let e = control::start(&sandboxes, &s, &broken, Path::new(SUPERVISOR), Attachment::Detached, Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "sandbox broken already exists");
    control::delete(&sandboxes, &s, false, Duration::from_secs(5)).unwrap();
}

/// A child process killed when dropped (a failed assertion must not leave it running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Set in the environment of the starter process of the tied-sandbox test: `ROOT:HOST_DIR`.
const STARTER_ENV: &str = "PALISADE_TEST_TIED_STARTER";

/// Run only as the child of `a_tied_ephemeral_sandbox_goes_with_its_sigkilled_starter`: starts a
/// tied, ephemeral sandbox (as vmrun does), says so, and waits to be killed.
#[test]
#[ignore = "the starter process of another test"]
fn tied_starter() {
    let Some(value) = std::env::var_os(STARTER_ENV) else { return };
    let value = value.into_string().unwrap();
    let (root, host) = value.split_once(':').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), vec![SharedPath { host: host.into(), path: "root".into(), read_only: false }]);
    spec.ephemeral = true;
    let s = control::start(
        Path::new(root),
        &id("tied"),
        &spec,
        Path::new(SUPERVISOR),
        Attachment::Tied { inherit_stderr: false },
        Duration::from_secs(30),
    )
    .unwrap();
    let pid = |p: Option<ProcessRef>| p.unwrap().pid;
    println!("sandbox-started {} {} {}", pid(s.supervisor), pid(s.vmm), pid(s.virtiofsd));
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_tied_ephemeral_sandbox_goes_with_its_sigkilled_starter() {
    use std::io::BufRead;
    let Some((dir, sandboxes, host)) = setup() else { return };
    let mut starter = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tied_starter", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(STARTER_ENV, format!("{}:{}", sandboxes.display(), host.display()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let mut out = std::io::BufReader::new(starter.0.stdout.take().unwrap());
    // libtest prints `test tied_starter ... ` before the test's own output, on the same line.
    while !line.contains("sandbox-started ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the starter ended without starting its sandbox");
    }
    let marked = &line[line.find("sandbox-started ").unwrap()..];
    let pids: Vec<u32> = marked.split_whitespace().skip(1).map(|p| p.parse().unwrap()).collect();
    let refs: Vec<ProcessRef> = pids.iter().map(|&p| ProcessRef::of(p).unwrap()).collect();
    let supervisor = refs[0];
    assert!(sandboxes.join("tied").is_dir());
    // Tied: the same session as its starter, a process group of its own.
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(supervisor.pid as i32))).unwrap();
    assert_eq!(pgid.as_raw() as u32, supervisor.pid);
    assert_ne!(session_of(supervisor.pid), Some(supervisor.pid));

    starter.0.kill().unwrap();
    starter.0.wait().unwrap();
    for p in &refs {
        wait_until(&format!("process {} is gone", p.pid), || !p.is_alive());
    }
    wait_until("the sandbox's directory is removed", || !sandboxes.join("tied").exists());
    assert!(mounts_mentioning(dir.path().to_str().unwrap()).is_empty());
    assert_eq!(std::fs::read_to_string(host.join("keep")).unwrap(), "precious");
}
