//! `vmrun` runs the command as an OCI container: Docker's defaults, the docker-run
//! options that change them, bundles, and how the container's end is reported.
//! Each VM boot is slow under emulation, so one VM checks many things at once: the
//! command prints one `name=value` line per check and the host asserts on them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use palisade_e2e::{boot_retrying, run_vmrun, vm_timeout, vmrun, Output, VmOutcome};
use palisade_runtime::vmrun::timings::rss_split;

use crate::vmrun::shared;
use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("container::docker_defaults_inside_one_vm", docker_defaults),
        trial("container::read_only_root", read_only_root),
        trial("container::userns_maps_root_to_an_unprivileged_guest_uid", userns),
        trial("container::memory_limit_oom_kill_is_137_and_said", memory_oom),
        trial("container::pids_limit_stops_a_fork_loop", pids_limit),
        trial("container::privileged_has_every_capability_and_device", privileged),
        trial("container::privileged_reboot_is_reported", privileged_reboot),
        trial("container::seccomp_profile_kill_and_user", seccomp_profile_and_user),
        trial("container::bundle_runs_as_is", bundle_runs),
        trial("container::unconfined_and_privileged_containers_cannot_reach_the_agent", cannot_reach_the_agent),
        trial("container::a_flooding_privileged_container_cannot_stall_or_swell_the_host", flooding_container),
        trial("container::errors::broken_bundles", broken_bundles),
        trial("container::errors::bad_options", bad_options),
    ]
}

fn vm(args: &[&str]) -> Result<Output, String> {
    let _g = shared();
    run_vmrun(args, None).map_err(|e| e.to_string())
}

/// `key=value` lines of the output (the last one wins).
fn checks(out: &Output) -> HashMap<String, String> {
    out.stdout_str().lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

fn expect(c: &HashMap<String, String>, key: &str, want: &str, out: &Output) -> TestResult {
    let got = c.get(key).map(String::as_str);
    ensure!(got == Some(want), "{key}: expected {want:?}, got {got:?}\n{}", out.describe());
    Ok(())
}

fn expect_contains(c: &HashMap<String, String>, key: &str, want: &str, out: &Output) -> TestResult {
    let got = c.get(key).map(String::as_str).unwrap_or_default();
    ensure!(got.contains(want), "{key}: expected it to contain {want:?}, got {got:?}\n{}", out.describe());
    Ok(())
}

/// Prints `Name=value` for the capability and security lines of /proc/self/status.
const STATUS: &str = "for f in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp; do \
                      echo \"$f=$(grep \"^$f:\" /proc/self/status | cut -f2)\"; done";

fn docker_defaults() -> TestResult {
    let script = format!(
        "{STATUS}; echo pid=$$; echo hostname=$(hostname); \
         echo kcore=$(cat /proc/kcore 2>/dev/null | wc -c); echo keys=$(stat -c %F /proc/keys); \
         echo interrupts=$(stat -c %F /proc/interrupts); echo interrupts_bytes=$(cat /proc/interrupts | wc -c); \
         echo firmware=$(ls -A /sys/firmware | wc -l); \
         echo sysctl=$(sh -c 'echo hacked > /proc/sys/kernel/hostname' 2>&1); \
         echo sysrq=$(sh -c 'echo h > /proc/sysrq-trigger' 2>&1); \
         echo sys=$(awk '$2 == \"/sys\" {{ print $4 }}' /proc/mounts | cut -d, -f1); \
         unshare -U true 2>/dev/null; echo unshare=$?; \
         mount -t tmpfs t /mnt 2>/dev/null; echo mount=$?; \
         echo root=$(touch /written && echo writable); \
         echo lo=$(cat /sys/class/net/lo/flags); \
         echo done=yes"
    );
    let out = vm(&["--hostname", "boxy", "--security-opt", "no-new-privileges", "--", "sh", "-c", &script])?;
    ensure!(out.code() == 0, "{}", out.describe());
    let c = checks(&out);
    // Docker's 14 capabilities, nothing inheritable or ambient.
    for cap in ["CapPrm", "CapEff", "CapBnd"] {
        expect(&c, cap, "00000000a80425fb", &out)?;
    }
    expect(&c, "CapAmb", "0000000000000000", &out)?;
    expect(&c, "NoNewPrivs", "1", &out)?;
    expect(&c, "Seccomp", "2", &out)?;
    expect(&c, "pid", "1", &out)?;
    expect(&c, "hostname", "boxy", &out)?;
    // Masked: /dev/null over files (the guest kernel has no /proc/kcore at all).
    expect(&c, "kcore", "0", &out)?;
    expect(&c, "keys", "character special file", &out)?;
    expect(&c, "interrupts", "character special file", &out)?;
    expect(&c, "interrupts_bytes", "0", &out)?;
    expect(&c, "firmware", "0", &out)?;
    expect_contains(&c, "sysctl", "Read-only file system", &out)?;
    expect_contains(&c, "sysrq", "Read-only file system", &out)?;
    expect(&c, "sys", "ro", &out)?;
    ensure!(c.get("unshare").is_some_and(|v| v != "0"), "unshare must be denied: {}", out.describe());
    ensure!(c.get("mount").is_some_and(|v| v != "0"), "mount must be denied: {}", out.describe());
    expect(&c, "root", "writable", &out)?;
    // Its loopback is up (IFF_UP | IFF_LOOPBACK), as runc and crun leave it.
    expect(&c, "lo", "0x9", &out)?;
    expect(&c, "done", "yes", &out)
}

fn read_only_root() -> TestResult {
    let out = vm(&["--read-only", "--", "sh", "-c", "echo touch=$(touch /x 2>&1); echo tmp=$(touch /tmp/x 2>&1); echo done=yes"])?;
    ensure!(out.code() == 0, "{}", out.describe());
    let c = checks(&out);
    expect_contains(&c, "touch", "Read-only file system", &out)?;
    expect_contains(&c, "tmp", "Read-only file system", &out)?;
    expect(&c, "done", "yes", &out)
}

fn userns() -> TestResult {
    let script = "echo uid_map=$(cat /proc/self/uid_map); echo gid_map=$(cat /proc/self/gid_map); echo id=$(id -u):$(id -g); \
                  echo ls=$(ls / | wc -l); echo done=yes";
    let out = vm(&["--userns", "--", "sh", "-c", script])?;
    ensure!(out.code() == 0, "{}", out.describe());
    let c = checks(&out);
    // Container root is guest uid 100000 (`$(…)` squeezes the columns to one space).
    expect(&c, "uid_map", "0 100000 65536", &out)?;
    expect(&c, "gid_map", "0 100000 65536", &out)?;
    expect(&c, "id", "0:0", &out)?;
    ensure!(c.get("ls").is_some_and(|v| v != "0"), "the root must be readable: {}", out.describe());
    expect(&c, "done", "yes", &out)
}

fn memory_oom() -> TestResult {
    // `tail` keeps everything it reads while no newline comes, so it grows until the OOM
    // killer ends it (against 64 MiB). It is exec'ed: the container's init itself is
    // killed, as a process allocating in `docker run --memory 64` would be.
    let script = "echo max=$(cat /sys/fs/cgroup/memory.max); exec tail /dev/zero";
    let out = vm(&["--memory", "64", "--", "sh", "-c", script])?;
    let c = checks(&out);
    expect(&c, "max", &(64u64 << 20).to_string(), &out)?;
    ensure!(out.code() == 137, "an OOM kill must give 137: {}", out.describe());
    ensure!(
        out.stderr.contains("vmrun: the container was killed by the OOM killer (memory limit 64 MiB)"),
        "stderr must say the OOM killer ended it: {}",
        out.describe()
    );
    Ok(())
}

fn pids_limit() -> TestResult {
    // The fork loop runs in a shell of its own (ash gives up on the first failed
    // fork); after it the outer shell uses builtins only, as the killed sleeps stay
    // zombies (counted in pids.current) until someone reaps them.
    let script = "echo max=$(cat /sys/fs/cgroup/pids.max); \
                  sh -c 'i=0; while [ $i -lt 40 ]; do sleep 300 & i=$((i+1)); done; echo forked=all' 2>/tmp/err; echo loop=$?; \
                  kill -9 -1; read -r err </tmp/err; echo err=$err; echo done=yes";
    let out = vm(&["--pids-limit", "20", "--", "sh", "-c", script])?;
    ensure!(out.code() == 0, "the command must end normally: {}", out.describe());
    let c = checks(&out);
    expect(&c, "max", "20", &out)?;
    ensure!(!c.contains_key("forked"), "40 forks must not all succeed under --pids-limit 20: {}", out.describe());
    ensure!(c.get("loop").is_some_and(|v| v != "0"), "the fork loop must fail: {}", out.describe());
    expect_contains(&c, "err", "fork", &out)?;
    expect(&c, "done", "yes", &out)
}

fn privileged() -> TestResult {
    let script = format!(
        "{STATUS}; mount -t tmpfs t /mnt && echo mount=ok; \
         echo sys=$(awk '$2 == \"/sys\" {{ print $4 }}' /proc/mounts | cut -d, -f1); \
         test -b /dev/vda && echo vda=block; echo interrupts_bytes=$(cat /proc/interrupts | wc -c); echo done=yes"
    );
    let out = vm(&["--privileged", "--", "sh", "-c", &script])?;
    ensure!(out.code() == 0, "{}", out.describe());
    let c = checks(&out);
    // All 41 capabilities (0..=40).
    expect(&c, "CapEff", "000001ffffffffff", &out)?;
    expect(&c, "CapBnd", "000001ffffffffff", &out)?;
    expect(&c, "Seccomp", "0", &out)?;
    expect(&c, "mount", "ok", &out)?;
    expect(&c, "sys", "rw", &out)?;
    expect(&c, "vda", "block", &out)?;
    ensure!(c.get("interrupts_bytes").is_some_and(|v| v != "0"), "nothing is masked when privileged: {}", out.describe());
    expect(&c, "done", "yes", &out)
}

fn privileged_reboot() -> TestResult {
    let out = vm(&["--privileged", "--", "sh", "-c", "echo b > /proc/sysrq-trigger; sleep 600"])?;
    ensure!(out.code() != 0, "a guest reboot must fail vmrun: {}", out.describe());
    ensure!(out.stderr.contains("the guest rebooted"), "stderr must say the guest rebooted: {}", out.describe());
    Ok(())
}

fn seccomp_profile_and_user() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let profile = dir.path().join("kill-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let opt = format!("seccomp={}", profile.display());
    // mkdir is exec'ed so the container's init itself makes the forbidden call.
    let out = vm(&["--security-opt", &opt, "--user", "1000:1000", "--", "sh", "-c", "echo id=$(id -u):$(id -g); exec mkdir /tmp/x"])?;
    let c = checks(&out);
    expect(&c, "id", "1000:1000", &out)?;
    ensure!(out.code() == 159, "SIGSYS must give 159 (128 + 31): {}", out.describe());
    Ok(())
}

/// A bundle directory with a busybox rootfs and `config` as config.json.
fn bundle(config: &str) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| format!("/bin/busybox: {e}"))?;
    for applet in ["sh", "echo", "hostname", "touch", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).map_err(|e| e.to_string())?;
    }
    std::fs::write(dir.path().join("config.json"), config).map_err(|e| e.to_string())?;
    Ok(dir)
}

const GOOD_BUNDLE: &str = r#"{
  "ociVersion": "1.0.2",
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bundled",
  "process": {
    "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"],
    "args": ["sh", "-c", "echo from=bundle; echo hostname=$(hostname); echo touch=$(touch /x 2>&1); echo pid=$$"]
  },
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
}"#;

fn bundle_runs() -> TestResult {
    let dir = bundle(GOOD_BUNDLE)?;
    let out = vm(&["--bundle", &dir.path().display().to_string()])?;
    ensure!(out.code() == 0, "{}", out.describe());
    let c = checks(&out);
    expect(&c, "from", "bundle", &out)?;
    expect(&c, "hostname", "bundled", &out)?;
    expect_contains(&c, "touch", "Read-only file system", &out)?;
    expect(&c, "pid", "1", &out)
}

fn expect_one_line_125(out: &Output, needles: &[&str]) -> TestResult {
    ensure!(out.code() == 125, "expected exit 125: {}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected a one-line error, got {} lines: {}", lines.len(), out.describe());
    for n in needles {
        ensure!(lines[0].contains(n), "the error does not say {n:?}: {}", out.describe());
    }
    Ok(())
}

fn broken_bundles() -> TestResult {
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(GOOD_BUNDLE).expect("GOOD_BUNDLE is JSON");
        f(&mut v);
        v.to_string()
    };
    let cases: [(&str, String, &[&str]); 5] = [
        ("bad JSON", GOOD_BUNDLE.replacen("\"bundled\",", "\"bundled\"", 1), &["config.json: not valid JSON", "line 5 column"]),
        ("unknown namespace", edit(&|v| v["linux"]["namespaces"][3]["type"] = "bogus".into()), &["linux.namespaces[3].type", "\"bogus\""]),
        ("missing rootfs", edit(&|v| v["root"]["path"] = "no-such-rootfs".into()), &["root.path", "no-such-rootfs: no such directory"]),
        ("empty args", edit(&|v| v["process"]["args"] = serde_json::json!([])), &["process.args: empty"]),
        ("missing process", edit(&|v| drop(v.as_object_mut().map(|o| o.remove("process")))), &["process: missing"]),
    ];
    for (what, config, needles) in cases {
        let dir = bundle(&config)?;
        let out = run_vmrun(&["--bundle", &dir.path().display().to_string()], None).map_err(|e| e.to_string())?;
        expect_one_line_125(&out, needles).map_err(|e| format!("{what}: {}", e.message().unwrap_or_default()))?;
    }
    Ok(())
}

fn bad_options() -> TestResult {
    let out = run_vmrun(&["--security-opt", "seccomp=/nonexistent/profile.json", "--", "true"], None).map_err(|e| e.to_string())?;
    expect_one_line_125(&out, &["--security-opt seccomp=/nonexistent/profile.json"])?;
    let out = run_vmrun(&["--cap-add", "CAP_NOPE", "--", "true"], None).map_err(|e| e.to_string())?;
    expect_one_line_125(&out, &["CAP_NOPE"])?;
    let out = run_vmrun(&["--privileged", "--cap-drop", "ALL", "--", "true"], None).map_err(|e| e.to_string())?;
    expect_one_line_125(&out, &["--privileged"])
}

/// A root directory with busybox and the vsock probe (tests/probes/vsock_probe.c).
fn probe_rootfs() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path();
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| format!("/bin/busybox: {e}"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
    let probe = concat!(env!("OUT_DIR"), "/vsock_probe");
    std::fs::copy(probe, root.join("bin/vsock-probe")).map_err(|e| format!("{probe}: {e}"))?;
    Ok(dir)
}

/// What the host saw of a flooding run (see [`flooding_container`]).
#[derive(Debug, Default)]
struct FloodRun {
    code: i32,
    stdout: String,
    stderr: String,
    /// When each `tick` line reached the host.
    ticks: Vec<Instant>,
    run_dir_max_bytes: u64,
    vmrun_max_rss_kib: u64,
    /// The VMM's (and its jail supervisor's) largest RSS outside guest RAM.
    vmm_max_rss_kib: u64,
}

impl VmOutcome for FloodRun {
    fn exit_code(&self) -> i32 {
        self.code
    }
    fn diagnostics(&self) -> String {
        self.stderr.clone()
    }
    fn set_boots(&mut self, _boots: u32) {}
}

fn tree_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => tree_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `pid`'s descendants (children first), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut all = Vec::new();
    for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
        all.push(child);
        all.extend(descendants(child));
    }
    all
}

/// Runs vmrun `args` with its run directory under `runtime_dir`, sampling twice a second
/// the run directory's size and the RSS of vmrun and of the processes under it.
fn run_flood(args: &[&str], runtime_dir: &Path) -> Result<FloodRun, String> {
    let mut child = vmrun(args)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("vmrun: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.push((line, Instant::now()));
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut run = FloodRun::default();
    let deadline = Instant::now() + vm_timeout() * 4;
    let vmrun_pid = child.id();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("vmrun did not end within {:?}", vm_timeout() * 4));
        }
        run.run_dir_max_bytes = run.run_dir_max_bytes.max(tree_size(runtime_dir));
        let smaps = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok().map(|s| rss_split(&s));
        if let Some((total, _)) = smaps(vmrun_pid) {
            run.vmrun_max_rss_kib = run.vmrun_max_rss_kib.max(total);
        }
        for pid in descendants(vmrun_pid) {
            if let Some((_, outside_guest_ram)) = smaps(pid) {
                run.vmm_max_rss_kib = run.vmm_max_rss_kib.max(outside_guest_ram);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    run.code = status.code().unwrap_or(-1);
    let lines = out_reader.join().map_err(|_| "stdout reader panicked")?;
    run.ticks = lines.iter().filter(|(l, _)| l.starts_with("tick ")).map(|(_, at)| *at).collect();
    run.stdout = lines.into_iter().map(|(l, _)| l + "\n").collect();
    run.stderr = err_reader.join().map_err(|_| "stderr reader panicked")?;
    Ok(run)
}

/// Wall 2 under a hostile guest: a `--privileged` container floods the console for 30 s
/// and opens 2,000 vsock connections to host ports nobody listens on. Meanwhile a second
/// process's output keeps flowing, the run directory stays under 16 MiB, vmrun's RSS and
/// the VMM's outside guest RAM under 64 MiB, and vmrun ends with the command's status.
fn flooding_container() -> TestResult {
    let dir = probe_rootfs()?;
    let root = dir.path();
    let flood = concat!(env!("OUT_DIR"), "/vsock_flood");
    std::fs::copy(flood, root.join("bin/vsock-flood")).map_err(|e| format!("{flood}: {e}"))?;
    let root = root.display().to_string();
    let script = "(timeout 30 yes 'flood: a guest writing this to its console as fast as it can' > /dev/ttyS0) & \
                  /bin/vsock-flood 2000 20000 > /tmp/flood.out & \
                  for i in $(seq 1 30); do echo tick $i; sleep 1; done; wait; cat /tmp/flood.out; exit 3";
    let runtime_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let run = {
        let _g = shared();
        boot_retrying("flooding container", || {
            run_flood(&["--privileged", "--rootfs", &root, "--", "/bin/sh", "-c", script], runtime_dir.path())
        })?
    };
    let said = format!(
        "exit {}, run dir up to {} KiB, vmrun RSS up to {} KiB, VMM RSS outside guest RAM up to {} KiB, {} ticks; stdout: {}; stderr: {}",
        run.code,
        run.run_dir_max_bytes >> 10,
        run.vmrun_max_rss_kib,
        run.vmm_max_rss_kib,
        run.ticks.len(),
        run.stdout.trim(),
        run.stderr.trim()
    );
    ensure!(run.code == 3, "vmrun must end with the command's status 3: {said}");
    ensure!(run.ticks.len() == 30, "every tick must arrive: {said}");
    let longest_gap = run.ticks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    ensure!(longest_gap < Duration::from_secs(15), "output stalled for {longest_gap:?} during the flood: {said}");
    ensure!(run.stdout.contains("vsock-flood attempted=2000 connected=0 refused=2000"), "every connection refused: {said}");
    ensure!(run.run_dir_max_bytes < 16 << 20, "the run directory must stay under 16 MiB: {said}");
    ensure!(run.vmrun_max_rss_kib > 0 && run.vmm_max_rss_kib > 0, "RSS must have been sampled: {said}");
    ensure!(run.vmrun_max_rss_kib < 64 << 10 && run.vmm_max_rss_kib < 64 << 10, "RSS must stay under 64 MiB: {said}");
    eprintln!("[e2e] flooding container: {}", said.split("; stdout").next().unwrap_or_default());
    Ok(())
}

fn cannot_reach_the_agent() -> TestResult {
    // vsock ignores network namespaces: without the agent's own check, a container whose
    // seccomp profile allows AF_VSOCK reached the agent on CID 1 and 3 (4 of these 9).
    let dir = probe_rootfs()?;
    let root = dir.path().display().to_string();
    for mode in [&["--security-opt", "seccomp=unconfined"][..], &["--privileged"][..]] {
        let mut args = vec!["--rootfs", root.as_str()];
        args.extend_from_slice(mode);
        args.extend_from_slice(&["--", "/bin/vsock-probe"]);
        let out = vm(&args)?;
        ensure!(out.code() == 0, "{mode:?}: {}", out.describe());
        let stdout = out.stdout_str();
        let lines: Vec<&str> = stdout.lines().collect();
        // The host reached the agent: the probe ran and its output came back.
        ensure!(lines.len() == 9, "{mode:?}: the probe did not try all 9 CID/port pairs: {}", out.describe());
        let reached: Vec<&&str> = lines.iter().filter(|l| l.starts_with("reached")).collect();
        ensure!(reached.is_empty(), "{mode:?}: the container reached the agent: {reached:?}\n{}", out.describe());
        ensure!(
            lines.iter().all(|l| l.starts_with("closed ") || l.starts_with("refused ")),
            "{mode:?}: unexpected probe output: {}",
            out.describe()
        );
    }
    Ok(())
}
