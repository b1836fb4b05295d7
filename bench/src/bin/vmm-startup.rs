//! `vmm-startup`: start-up cost of `palisade-vmm` against QEMU's `microvm` machine, both
//! booting the same tiny guest ELF directly on this host's /dev/kvm, interleaved in one run
//! (palisade-vmm, QEMU, palisade-vmm, QEMU, …).
//!
//! The guest ([`palisade_vmm::testing::tiny_guest::marker_guest`]) is a PVH ELF that prints a
//! marker line on COM1 and resets through the i8042: it runs even on a PVM /dev/kvm, which
//! cannot boot a standard Linux guest. QEMU's microvm has no i8042 of its own, so it gets
//! one with `-device i8042`; with `-no-reboot` the reset ends QEMU as it ends palisade-vmm.
//!
//! Per round and contender: the time from spawn to the marker on the VMM's stdout, the
//! time from spawn to the VMM's exit, and the VMM's peak RSS as `/usr/bin/time -f %M`
//! reports it (the measured process runs under `/usr/bin/time`; both times therefore
//! include its fork+exec, which is measured alone each round as the harness floor). When
//! palisade-vmm jails itself, the process `/usr/bin/time` starts is the jail's supervisor
//! and the VMM its child: the peak RSS reported is then the larger of the two (the rusage
//! of a reaped process covers the children it reaped).
//!
//! `--vmm-variant=FLAGS` adds palisade-vmm with extra flags as a further contender in the
//! same rounds (`--vmm-variant=--no-jail` shows what the jail costs).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_vmm::testing::tiny_guest;

const TIME: &str = "/usr/bin/time";
const MARKER: &str = "palisade-startup-marker";
/// How long one VMM run may take before the benchmark gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "palisade-vmm vs qemu-system-x86_64 -M microvm: start-up time and peak RSS, interleaved")]
struct Args {
    /// Rounds; each runs every contender once.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Guest memory for both VMMs, MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// The palisade-vmm binary [default: next to this one, else from PATH].
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Also measure palisade-vmm with these extra flags (whitespace-separated), as one more
    /// contender in the same interleaved rounds; repeatable (e.g. `--vmm-variant=--no-jail`).
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    vmm_variant: Vec<String>,
    /// The QEMU binary.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Rounds run first and not counted (page cache, CPU frequency).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
}

/// One run of one contender.
#[derive(Debug, Clone, Copy)]
struct Sample {
    marker_ms: f64,
    exit_ms: f64,
    rss_kib: f64,
}

/// Runs `argv` under `/usr/bin/time -f %M`, watching its stdout for the marker.
fn measure(argv: &[String], expect_marker: bool) -> Result<Sample> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let stderr_file = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new(TIME);
    cmd.arg("-f").arg("%M").arg("-o").arg(rss_file.path()).args(argv);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr_file.reopen()?);
    // Its own process group, so a hung run can be ended with everything under it.
    cmd.process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {TIME} (apt-get install time)"))?;
    let pgid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if !sent && seen.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
                        let _ = tx.send(start.elapsed());
                        sent = true;
                    }
                }
            }
        }
        seen
    });
    let marker = if expect_marker { rx.recv_timeout(RUN_TIMEOUT).ok() } else { None };
    // A watchdog ends the run if it outlives the timeout.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_TIMEOUT).is_err() {
            // SAFETY: kill(2) with a negative pid signals the process group we created for
            // this run; it touches no memory of ours.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    });
    let status = child.wait()?;
    let exit = start.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let stdout = reader.join().unwrap_or_default();
    let stderr = std::fs::read_to_string(stderr_file.path()).unwrap_or_default();
    let rss_text = std::fs::read_to_string(rss_file.path()).unwrap_or_default();
    let describe =
        || format!("{}: {status}\nstdout: {}\nstderr: {}", argv.join(" "), String::from_utf8_lossy(&stdout).trim(), stderr.trim());
    if !status.success() {
        bail!("{}", describe());
    }
    let marker = match (expect_marker, marker) {
        (true, Some(t)) => t,
        (true, None) => bail!("no marker {MARKER:?} on stdout\n{}", describe()),
        (false, _) => exit,
    };
    // The last line is %M; anything before it is the child's own stderr-free time output.
    let rss_kib: f64 =
        rss_text.lines().last().and_then(|l| l.trim().parse().ok()).with_context(|| format!("{TIME} wrote no peak RSS: {rss_text:?}"))?;
    Ok(Sample { marker_ms: ms(marker), exit_ms: ms(exit), rss_kib })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Order statistics of one column.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    p90: f64,
    max: f64,
}

fn stats(values: impl Iterator<Item = f64>) -> Stats {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return Stats { median: f64::NAN, min: f64::NAN, p90: f64::NAN, max: f64::NAN };
    }
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    // Nearest-rank 90th percentile.
    let p90 = v[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats { median, min: v[0], p90, max: v[n - 1] }
}

fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn find_vmm(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return which(&path).with_context(|| format!("--vmm {}: no such file", path.display()));
    }
    let sibling = std::env::current_exe()?.with_file_name("palisade-vmm");
    if sibling.is_file() {
        return Ok(sibling);
    }
    which(Path::new("palisade-vmm"))
        .context("palisade-vmm not found next to vmm-startup nor on PATH: cargo build --release -p palisade-vmm, or pass --vmm")
}

fn kvm_kind() -> &'static str {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        "PVM (kvm_pvm: no VT-x/AMD-V underneath)"
    } else if loaded("kvm_intel") {
        "Intel VT-x (kvm_intel)"
    } else if loaded("kvm_amd") {
        "AMD-V (kvm_amd)"
    } else {
        "unknown"
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown".into())
}

fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_default()
}

fn qemu_argv(qemu: &Path, accel: &str, memory: u32, guest: &Path) -> Vec<String> {
    let mut argv = vec![qemu.display().to_string()];
    argv.extend(
        [
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off",
            "-accel",
            accel,
            "-cpu",
            if accel == "kvm" { "host" } else { "max" },
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "i8042",
            "-m",
        ]
        .map(String::from),
    );
    argv.push(memory.to_string());
    argv.push("-kernel".into());
    argv.push(guest.display().to_string());
    argv
}

fn fmt_ms(s: Stats) -> String {
    format!("{:.1} ms ({:.1} / {:.1} / {:.1})", s.median, s.min, s.p90, s.max)
}

fn fmt_mib(s: Stats) -> String {
    format!("{:.2} MiB ({:.2} / {:.2} / {:.2})", s.median / 1024.0, s.min / 1024.0, s.p90 / 1024.0, s.max / 1024.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !Path::new(TIME).is_file() {
        bail!("{TIME} not found: it measures peak RSS — install it with `apt-get install time`");
    }
    let vmm = find_vmm(args.vmm.clone())?;
    let dir = tempfile::tempdir()?;
    let guest =
        tiny_guest::write_guest(dir.path(), "marker-guest.elf", &tiny_guest::marker_guest(MARKER)).context("writing the tiny guest")?;
    let vmm_argv: Vec<String> =
        vec![vmm.display().to_string(), "--kernel".into(), guest.display().to_string(), "--memory".into(), args.memory.to_string()];

    // QEMU: present? able to use this /dev/kvm for the guest? Else TCG, said out loud.
    let mut notes = Vec::new();
    let qemu_argv = match which(&args.qemu) {
        None => {
            let note = format!(
                "{} not found: QEMU is not compared. Install it with `apt-get install qemu-system-x86` and run again.",
                args.qemu.display()
            );
            eprintln!("[vmm-startup] {note}");
            notes.push(note);
            None
        }
        Some(qemu) => {
            let kvm = qemu_argv(&qemu, "kvm", args.memory, &guest);
            match measure(&kvm, true) {
                Ok(_) => Some(kvm),
                Err(e) => {
                    let tcg = qemu_argv(&qemu, "tcg", args.memory, &guest);
                    let note = format!(
                        "QEMU could not boot the guest on this /dev/kvm ({}); it is measured with `-accel tcg` \
                         instead, which is NOT a like-for-like comparison.",
                        e.to_string().lines().take(3).collect::<Vec<_>>().join(" | ")
                    );
                    eprintln!("[vmm-startup] {note}");
                    measure(&tcg, true).context("QEMU with -accel tcg failed too")?;
                    notes.push(note);
                    Some(tcg)
                }
            }
        }
    };
    let floor_argv = vec!["/bin/true".to_string()];

    // The contenders, in the order each round runs them.
    let mut contenders: Vec<(String, Vec<String>)> = vec![("palisade-vmm".into(), vmm_argv.clone())];
    for variant in &args.vmm_variant {
        let mut argv = vmm_argv.clone();
        argv.extend(variant.split_whitespace().map(String::from));
        contenders.push((format!("palisade-vmm {}", variant.trim()), argv));
    }
    if let Some(argv) = &qemu_argv {
        contenders.push(("QEMU microvm".into(), argv.clone()));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
    let mut floor = Vec::new();
    for round in 0..args.warmup + args.rounds {
        let counted = round >= args.warmup;
        let mut line = Vec::new();
        for ((name, argv), samples) in contenders.iter().zip(samples.iter_mut()) {
            let s = measure(argv, true).with_context(|| name.clone())?;
            line.push(format!("{name} {:.1}/{:.1} ms {} KiB", s.marker_ms, s.exit_ms, s.rss_kib));
            if counted {
                samples.push(s);
            }
        }
        let f = measure(&floor_argv, false).context("/usr/bin/time /bin/true")?;
        if counted {
            floor.push(f);
            eprintln!("[vmm-startup] round {}/{} (marker/exit, peak RSS): {}", round + 1 - args.warmup, args.rounds, line.join("; "));
        }
    }

    let col = |v: &[Sample], f: fn(&Sample) -> f64| stats(v.iter().map(f));
    let mut report = String::new();
    report.push_str(&format!(
        "Machine: {}, {} CPUs, kernel {}, KVM: {}; load average at the end {}.\n",
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        kvm_kind(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    ));
    if let Some(argv) = &qemu_argv {
        report.push_str(&format!("QEMU: {}.\n", qemu_version(Path::new(&argv[0]))));
    }
    report.push_str(&format!(
        "{} rounds interleaved ({}, harness floor; repeated) after {} warm-up rounds; guest memory {} MiB; \
         the guest is the same tiny PVH ELF for every contender. Each cell: median (min / p90 / max).\n\n",
        args.rounds,
        contenders.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
        args.warmup,
        args.memory
    ));
    report.push_str(
        "| contender | spawn → marker on stdout | spawn → process exit | peak RSS (`/usr/bin/time -f %M`) |\n|---|---|---|---|\n",
    );
    for ((name, _), v) in contenders.iter().zip(&samples) {
        report.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            fmt_ms(col(v, |s| s.marker_ms)),
            fmt_ms(col(v, |s| s.exit_ms)),
            fmt_mib(col(v, |s| s.rss_kib))
        ));
    }
    if qemu_argv.is_some() {
        let q = samples.last().expect("QEMU is the last contender");
        report.push_str("\n| QEMU microvm / … (ratio of medians) | to the marker | to exit | peak RSS |\n|---|---|---|---|\n");
        for ((name, _), v) in contenders.iter().zip(&samples).take(contenders.len() - 1) {
            let ratio = |f: fn(&Sample) -> f64| col(q, f).median / col(v, f).median;
            report.push_str(&format!(
                "| {name} | {:.1}× | {:.1}× | {:.1}× |\n",
                ratio(|s| s.marker_ms),
                ratio(|s| s.exit_ms),
                ratio(|s| s.rss_kib)
            ));
        }
    }
    let fl = col(&floor, |s| s.exit_ms);
    report.push_str(&format!(
        "\nHarness floor: `/usr/bin/time /bin/true` spawn → exit {} — part of every time above.\n\nCommands:\n\n",
        fmt_ms(fl)
    ));
    for (name, argv) in &contenders {
        report.push_str(&format!("- {name}: `{TIME} -f %M {}`\n", argv.join(" ")));
    }
    report.push('\n');
    for note in &notes {
        report.push_str(&format!("Note: {note}\n\n"));
    }
    print!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_order_statistics() {
        let s = stats([5.0, 1.0, 3.0, 2.0, 4.0].into_iter());
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(s.p90, 5.0);
        let s = stats((1..=30).map(f64::from));
        assert_eq!((s.median, s.p90), (15.5, 27.0));
    }
}
