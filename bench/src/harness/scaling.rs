//! Many sandboxes at once: N started together (the time until every one has printed
//! `ready`), and N idle ones's host memory (the PSS, from `/proc/PID/smaps_rollup`, of every
//! host process a sandbox owns, per sandbox). A sandbox is a bare `palisade-workload idle`
//! process, a crun container running it (`crun run -d`), or a Palisade micro-VM container
//! running it (`palisade run -d`: its monitor, supervisor, VMM and virtiofsd; or a `vmrun`
//! in the foreground: it, its supervisor, VMM and virtiofsd).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::modes::{Mode, Setup};

/// Sandboxes running `idle`.
pub struct Sandboxes {
    mode: Mode,
    /// The runtime and its root, to delete the containers with.
    runtime: PathBuf,
    root: PathBuf,
    /// Bare metal's processes, and vmrun's.
    children: Vec<Child>,
    /// The containers' IDs.
    ids: Vec<String>,
}

/// At most this many containers are started at once when only their footprint matters (a
/// boot storm in the emulated test host loses VMs).
const START_BATCH: usize = 5;
/// How many batches of idle micro-VMs may fail to start inside the emulated test host, which
/// now and then loses a VM, and be started again: of 30 VMs, one is often lost.
const LOST_BATCHES: usize = 4;

/// Starts `n` sandboxes, `batch` at a time, and returns once every one has printed `ready`,
/// with how long that took.
pub fn start(setup: &Setup, mode: Mode, n: usize, batch: usize, timeout: Duration) -> Result<(Duration, Sandboxes)> {
    let mut sandboxes = Sandboxes::new(setup, mode);
    let began = Instant::now();
    let mut started = 0;
    while started < n {
        let now = batch.min(n - started);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut launchers = Vec::new();
        for _ in 0..now {
            let (mut cmd, id) = setup.detached(mode, &["idle".to_string()])?;
            let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting a sandbox")?;
            let stdout = child.stdout.take().context("stdout")?;
            let tx = ready_tx.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                if lines.any(|l| l.is_ok_and(|l| l.trim() == "ready")) {
                    let _ = tx.send(());
                }
            });
            match id {
                Some(id) => {
                    sandboxes.ids.push(id);
                    launchers.push(child);
                }
                None => sandboxes.children.push(child),
            }
        }
        for mut launcher in launchers {
            // `run -d` returns once the container runs; its stdout stays with the container.
            let status = wait_until(&mut launcher, timeout)?;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = launcher.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                sandboxes.stop();
                bail!("{} run -d exited with {status}: {}", mode.name(), err.trim());
            }
        }
        // Every reader holds a sender: when all have ended, a sandbox's output ended unready.
        drop(ready_tx);
        for _ in 0..now {
            let left = timeout.saturating_sub(began.elapsed());
            if let Err(e) = ready_rx.recv_timeout(left) {
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => format!("were not all ready within {timeout:?}"),
                    mpsc::RecvTimeoutError::Disconnected => "ended before every one was ready".to_string(),
                };
                let said = sandboxes.exited_children_stderr();
                sandboxes.stop();
                bail!("{} sandboxes {why}{said}", mode.name());
            }
        }
        started += now;
    }
    Ok((began.elapsed(), sandboxes))
}

/// Starts `n` idle sandboxes at most [`START_BATCH`] at a time. Inside the emulated test host,
/// a batch of micro-VMs that fails to start is started again (at most [`LOST_BATCHES`] times):
/// only their number matters here, and one lost VM should not cost the 29 others.
pub fn start_idle(setup: &Setup, mode: Mode, n: usize, timeout: Duration) -> Result<Sandboxes> {
    let mut all = Sandboxes::new(setup, mode);
    let mut lost = 0;
    while all.len() < n {
        let now = START_BATCH.min(n - all.len());
        match start(setup, mode, now, now, timeout) {
            Ok((_, mut batch)) => {
                all.children.append(&mut batch.children);
                all.ids.append(&mut batch.ids);
            }
            Err(e) if mode.is_vm() && palisade_e2e::inside_testhost() && lost < LOST_BATCHES => {
                lost += 1;
                eprintln!("[bench] {e:#} ({lost} of at most {LOST_BATCHES}): VMs are now and then lost under emulation; starting that batch again");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

fn wait_until(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting")? {
            return Ok(status);
        }
        if began.elapsed() > timeout {
            let _ = child.kill();
            bail!("a sandbox's start did not return within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process's proportional set size, KiB.
fn pss_kib(pid: u32) -> u64 {
    smaps_rollup_kib(pid, "Pss:")
}

/// A process's resident set size, KiB.
fn rss_kib(pid: u32) -> u64 {
    smaps_rollup_kib(pid, "Rss:")
}

/// One KiB figure of `/proc/PID/smaps_rollup` (`field` with its colon); 0 when unreadable.
fn smaps_rollup_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A process's name (`/proc/PID/comm`).
fn comm(pid: u32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string())
}

/// The resident KiB of a VMM's guest memory (its mappings of the `palisade-guest-ram`
/// file: a memfd, or the jail's tmpfs file), or `None` when it maps none.
fn guest_ram_rss_kib(pid: u32) -> Option<u64> {
    guest_ram_rss_in_smaps(&std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?)
}

/// [`guest_ram_rss_kib`] from the text of `/proc/PID/smaps`.
fn guest_ram_rss_in_smaps(smaps: &str) -> Option<u64> {
    let mut in_guest_ram = false;
    let mut total = None;
    for line in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]".
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_guest_ram = line.split_whitespace().nth(5).is_some_and(palisade_vmm::memory::is_guest_ram_path);
        } else if in_guest_ram {
            if let Some(kib) = line.strip_prefix("Rss:").and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()) {
                *total.get_or_insert(0) += kib;
            }
        }
    }
    total
}

/// `roots` and every process below them (by parent pid, from `/proc/PID/stat`).
fn descendants(roots: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "PID (comm) state ppid …": comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = roots.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|&&(_, ppid)| ppid == parent).map(|&(pid, _)| pid));
        i += 1;
    }
    found
}

/// The pids of the processes whose command line names `needle`.
fn pids_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).contains(needle))
        .collect()
}

impl Sandboxes {
    /// Host memory per sandbox, MiB: the PSS of every host process the sandboxes own, over
    /// their number.
    pub fn pss_per_sandbox_mib(&self, setup: &Setup) -> Result<f64> {
        let pids: Vec<u32> = match self.mode {
            Mode::Bare => self.children.iter().map(Child::id).collect(),
            // crun leaves only the container's own processes (no monitor: containerd's shim
            // or conmon would add theirs).
            Mode::Crun => self.ids.iter().filter_map(|id| setup.container_pid(Mode::Crun, id)).collect(),
            // Every process palisade runs for them names its root: monitors, supervisors,
            // VMMs (whose PSS holds the guest memory the guest touched) and virtiofsd.
            Mode::Palisade => pids_naming(&setup.root(Mode::Palisade).display().to_string()),
            // vmrun and what it started: its supervisor, which started the VMM and virtiofsd.
            Mode::Vmrun => self.vmrun_processes(),
        };
        let count = self.len();
        if pids.is_empty() || count == 0 {
            bail!("no process of the {} sandboxes found", self.mode.name());
        }
        Ok(pids.iter().map(|&p| pss_kib(p)).sum::<u64>() as f64 / 1024.0 / count as f64)
    }

    /// Memory the inside of a sandbox touched, MiB per sandbox: the resident memory of the
    /// workload's own processes for bare metal and crun; for a micro-VM, the guest RAM the
    /// guest touched (the resident part of the VMM's guest memory, the `palisade-guest-ram`
    /// memfd). The difference is what the guest kernel and agent hold.
    pub fn touched_per_sandbox_mib(&self, setup: &Setup) -> Result<f64> {
        let kib: u64 = match self.mode {
            Mode::Bare => self.children.iter().map(|c| rss_kib(c.id())).sum(),
            Mode::Crun => self.ids.iter().filter_map(|id| setup.container_pid(Mode::Crun, id)).map(rss_kib).sum(),
            Mode::Palisade | Mode::Vmrun => {
                let pids = if self.mode == Mode::Palisade {
                    pids_naming(&setup.root(Mode::Palisade).display().to_string())
                } else {
                    self.vmrun_processes()
                };
                let vmms: Vec<u32> = pids.into_iter().filter(|&p| comm(p).as_deref() == Some("palisade-vmm")).collect();
                let kib: Vec<u64> = vmms.iter().filter_map(|&p| guest_ram_rss_kib(p)).collect();
                if kib.is_empty() {
                    bail!(
                        "no guest memory (a palisade-guest-ram mapping) found in the {} VMMs of the {} sandboxes",
                        vmms.len(),
                        self.mode.name()
                    );
                }
                kib.iter().sum()
            }
        };
        let count = self.len();
        if kib == 0 || count == 0 {
            bail!("no resident memory found in the {} sandboxes", self.mode.name());
        }
        Ok(kib as f64 / 1024.0 / count as f64)
    }

    fn new(setup: &Setup, mode: Mode) -> Sandboxes {
        Sandboxes { mode, runtime: setup.runtime(mode), root: setup.root(mode), children: Vec::new(), ids: Vec::new() }
    }

    fn len(&self) -> usize {
        self.children.len() + self.ids.len()
    }

    /// What the sandboxes run in the foreground (bare metal's, vmrun's) that have already
    /// ended said on stderr, last lines first: why a sandbox ended before it was ready.
    fn exited_children_stderr(&mut self) -> String {
        let mut said = String::new();
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                said.push_str(&format!("; one exited with {status}: {}", tail.join(" / ")));
            }
        }
        said
    }

    /// The vmruns and every process below them.
    fn vmrun_processes(&self) -> Vec<u32> {
        descendants(&self.children.iter().map(Child::id).collect::<Vec<_>>())
    }

    /// Ends every sandbox (SIGKILL; the containers deleted; a SIGKILLed vmrun's VM ends with
    /// it, and is waited for, so that it does not weigh on what is measured next).
    pub fn stop(&mut self) {
        let vm_processes = if self.mode == Mode::Vmrun { self.vmrun_processes() } else { Vec::new() };
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        let deadline = Instant::now() + Duration::from_secs(120);
        while vm_processes.iter().any(|&pid| Path::new(&format!("/proc/{pid}")).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for id in self.ids.drain(..) {
            let _ = Command::new(&self.runtime)
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_memory_is_the_resident_part_of_the_guest_ram_memfd() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234    /usr/bin/palisade-vmm
Size:               1024 kB
Rss:                 900 kB
7f0000000000-7f0008000000 rw-s 00000000 00:01 5678    /memfd:palisade-guest-ram (deleted)
Size:             131072 kB
Rss:               40960 kB
Pss:               40960 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                  12 kB
";
        assert_eq!(guest_ram_rss_in_smaps(smaps), Some(40960));
        assert_eq!(guest_ram_rss_in_smaps("7f0010000000-7f0010021000 rw-p 00000000 00:00 0\nRss: 12 kB\n"), None);
        let on_the_jails_tmpfs = "7f0000000000-7f0008000000 rw-s 00000000 00:2a 2    /palisade-guest-ram (deleted)\nRss: 4096 kB\n";
        assert_eq!(guest_ram_rss_in_smaps(on_the_jails_tmpfs), Some(4096));
    }
}
