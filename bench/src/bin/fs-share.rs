//! `fs-share`: what sharing host files with a micro-VM through virtio-fs costs, measured
//! interleaved in one run and reported as medians (min–max) and ratios to a baseline
//! measured in the same run.
//!
//! 1. Start-up with a directory root: `vmrun --rootfs DIR` (shared live) against the erofs
//!    copy it replaced (`mkfs.erofs` of DIR, then `vmrun --rootfs IMAGE`), from the start to
//!    the command's first output, for a small and a large directory.
//! 2. File I/O: sequential write + fsync and sequential read of 256 MiB, and create / stat /
//!    unlink of 2,000 small files, (a) on the host directly, (b) in a crun container on a
//!    bind mount, (c) in a Palisade container on a virtio-fs volume (`vmrun -v`).
//!
//! On hosts whose /dev/kvm cannot boot a standard guest it re-executes itself inside the KVM
//! test host; the report says so, and its absolute VM figures are then emulated.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_e2e::{paths, reexec_in_testhost_if_needed, run};

#[derive(Parser)]
#[command(about = "virtio-fs benchmark: shared roots and volumes against the host, crun and an erofs copy")]
struct Args {
    /// Rounds (each runs every contender once, interleaved), after one warm-up round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Sizes of the root directories of part 1, MiB.
    #[arg(long, value_delimiter = ',', default_value = "10,500")]
    root_sizes: Vec<u64>,
    /// Size of the sequential files of part 2, MiB.
    #[arg(long, default_value_t = 256)]
    seq_mib: u64,
    /// Number of small files of part 2.
    #[arg(long, default_value_t = 2000)]
    files: u64,
    /// virtiofsd settings compared in part 3, as MODE:THREADS (`vmrun --share-cache MODE
    /// --share-threads THREADS`); none skips part 3.
    #[arg(long, value_delimiter = ',', default_value = "auto:0,always:0,metadata:0,never:0,auto:2")]
    tunings: Vec<Tuning>,
    /// Rounds of part 3, after one warm-up round.
    #[arg(long, default_value_t = 3)]
    tuning_rounds: usize,
    /// Which parts to run (each is printed as soon as it is done: a test host lost in a
    /// later part keeps the earlier ones).
    #[arg(long, value_delimiter = ',', default_value = "startup,io,tuning")]
    parts: Vec<Part>,
    /// One round of everything at small sizes (a smoke run of a few minutes).
    #[arg(long)]
    quick: bool,
    /// Where the directories measured go [default: inside the KVM test host, a fresh ext4
    /// filesystem on a loop device; elsewhere /var/tmp]. Not a tmpfs of Linux before 6.6:
    /// its directory offsets shift as entries go, and `rm -r` through virtiofsd then leaves
    /// entries behind.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The filesystem the measured directories live on; a loop-mounted ext4 is unmounted (and
/// its image removed) on drop.
struct Scratch {
    path: PathBuf,
    what: String,
    loop_image: Option<PathBuf>,
}

impl Scratch {
    fn new(args: &Args, emulated: bool) -> Result<Scratch> {
        if let Some(dir) = &args.dir {
            return Ok(Scratch { path: dir.clone(), what: format!("{}", dir.display()), loop_image: None });
        }
        if !emulated {
            return Ok(Scratch { path: "/var/tmp".into(), what: "/var/tmp".into(), loop_image: None });
        }
        // The test host's own filesystems are tmpfs (Linux 6.1) and 9p.
        let image = PathBuf::from(format!("/dev/shm/palisade-fs-bench-{}.ext4", std::process::id()));
        let path = PathBuf::from(format!("/run/palisade-fs-bench-{}", std::process::id()));
        let size_mib = 4 * args.seq_mib + args.root_sizes.iter().max().copied().unwrap_or(0) * 2 + 256;
        std::fs::File::create(&image)?.set_len(size_mib << 20)?;
        let step = |cmd: &mut Command| -> Result<()> {
            let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
            if !out.status.success() {
                bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        let _ = Command::new("modprobe").args(["-a", "loop", "ext4"]).status();
        step(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        std::fs::create_dir_all(&path)?;
        let scratch =
            Scratch { path, what: format!("ext4 on a loop device over the test host's tmpfs ({size_mib} MiB)"), loop_image: Some(image) };
        step(Command::new("mount").args(["-o", "loop"]).arg(scratch.loop_image.as_ref().unwrap()).arg(&scratch.path))?;
        Ok(scratch)
    }

    fn tempdir(&self) -> Result<tempfile::TempDir> {
        tempfile::tempdir_in(&self.path).with_context(|| format!("a directory in {}", self.path.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(image) = &self.loop_image {
            let _ = Command::new("umount").arg(&self.path).status();
            let _ = std::fs::remove_dir(&self.path);
            let _ = std::fs::remove_file(image);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// 1: start-up with a directory root, shared live against the erofs copy.
    Startup,
    /// 2: file I/O on the host, in crun, in Palisade.
    Io,
    /// 3: file I/O in Palisade under each of virtiofsd's settings.
    Tuning,
}

/// The report so far: each piece goes to stdout at once and is kept for `--output`.
#[derive(Default)]
struct Report(String);

impl Report {
    fn add(&mut self, text: &str) {
        use std::io::Write;
        print!("{text}");
        let _ = std::io::stdout().flush();
        self.0.push_str(text);
    }
}

/// Median and range of samples.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return Stat { median: f64::NAN, min: f64::NAN, max: f64::NAN };
    }
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Stat { median, min: v[0], max: v[n - 1] }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ({:.0}–{:.0})", self.median, self.min, self.max)
    }
}

/// A busybox root directory with `filler_mib` MiB of incompressible data in it.
fn busybox_dir(dir: &Path, filler_mib: u64) -> Result<()> {
    for d in ["bin", "proc", "dev", "tmp", "sys", "data"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("/bin/busybox (busybox-static)")?;
    for applet in ["sh", "true", "echo", "dd", "date", "mkdir", "rm", "sync"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut file = std::fs::File::create(dir.join("filler"))?;
    for _ in 0..filler_mib {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        std::io::Write::write_all(&mut file, &chunk)?;
    }
    Ok(())
}

/// Runs `cmd`; returns the milliseconds to its first line of stdout, and its whole stdout.
fn time_to_first_line(mut cmd: Command, started: Instant) -> Result<(f64, String)> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("{cmd:?}"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest)?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr)?;
    }
    let status = child.wait()?;
    if !status.success() || first.is_empty() {
        bail!("{cmd:?} failed ({status}): {stderr}");
    }
    Ok((first_ms, first + &rest))
}

/// One sample, retried once when the VM was lost (the emulated test host loses one now and
/// then; a second loss is an error).
fn sample<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Ok(v) => Ok(v),
        Err(e) => {
            eprintln!("[bench] {what} failed ({e:#}); once more");
            f()
        }
    }
}

/// Part 1: ms from start to first output, live share against the erofs copy.
fn root_startup(p: &palisade_e2e::Paths, scratch: &Scratch, size: u64, rounds: usize) -> Result<(Stat, Stat)> {
    let dir = scratch.tempdir()?;
    busybox_dir(dir.path(), size)?;
    let root = dir.path().display().to_string();
    let image = tempfile::tempdir()?;
    let image_path = image.path().join("root.erofs");
    let (mut live, mut copy) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let (l, _) = sample("live share", || {
            let mut c = Command::new(&p.vmrun);
            c.args(["--rootfs", &root, "--", "echo", "ready"]);
            time_to_first_line(c, Instant::now())
        })?;
        let (c, _) = sample("erofs copy", || {
            let _ = std::fs::remove_file(&image_path);
            let started = Instant::now();
            let out = run(
                {
                    let mut m = Command::new("mkfs.erofs");
                    m.arg(&image_path).arg(dir.path());
                    m
                },
                None,
                Duration::from_secs(600),
            )?;
            if out.code() != 0 {
                bail!("mkfs.erofs: {}", out.describe());
            }
            let mut c = Command::new(&p.vmrun);
            c.arg("--rootfs").arg(&image_path).args(["--", "echo", "ready"]);
            time_to_first_line(c, started)
        })?;
        eprintln!(
            "[bench] {size} MiB root, round {round}: live {l:.0} ms, erofs copy {c:.0} ms{}",
            if round == 0 { " (warm-up)" } else { "" }
        );
        if round > 0 {
            live.push(l);
            copy.push(c);
        }
    }
    Ok((stat(live), stat(copy)))
}

/// The workload of part 2, in busybox sh, on directory `$D`: prints `write_ms=`, `read_ms=`,
/// `create_ms=`, `stat_ms=`, `unlink_ms=`. `$D/r` (for the read) is written beforehand by
/// the host, whose page cache is then dropped.
const WORKLOAD: &str = r#"set -e
# Microseconds of wall-clock time (Debian's busybox `date` has no %N; adjtimex only reads).
t() { busybox adjtimex | busybox awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%d%06d\n", s, u }'; }
case "$(t)" in ''|*[!0-9]*) echo "no clock: busybox adjtimex says $(busybox adjtimex 2>&1)" >&2; exit 9;; esac
a=$(t); dd if=/dev/zero of="$D/w" bs=1M count="$SEQ_MIB" conv=fsync 2>/dev/null; b=$(t)
echo write_ms=$(( (b - a) / 1000 ))
a=$(t); dd if="$D/r" of=/dev/null bs=1M 2>/dev/null; b=$(t)
echo read_ms=$(( (b - a) / 1000 ))
mkdir "$D/s"
a=$(t); i=0; while [ $i -lt "$FILES" ]; do : > "$D/s/$i"; i=$((i + 1)); done; b=$(t)
echo create_ms=$(( (b - a) / 1000 ))
a=$(t); i=0; while [ $i -lt "$FILES" ]; do [ -f "$D/s/$i" ]; i=$((i + 1)); done; b=$(t)
echo stat_ms=$(( (b - a) / 1000 ))
a=$(t); rm -r "$D/s"; sync; b=$(t)
echo unlink_ms=$(( (b - a) / 1000 ))
"#;

/// Which of an [`IoSamples`]' series a report row shows.
type SampleField = fn(&IoSamples) -> &Vec<f64>;

#[derive(Debug, Default, Clone)]
struct IoSamples {
    write: Vec<f64>,
    read: Vec<f64>,
    create: Vec<f64>,
    stat: Vec<f64>,
    unlink: Vec<f64>,
}

impl IoSamples {
    fn push(&mut self, out: &str) -> Result<()> {
        let get = |key: &str| -> Result<f64> {
            out.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .with_context(|| format!("no {key} in the workload's output: {out:?}"))?
                .trim()
                .parse::<f64>()
                .with_context(|| format!("{key} in {out:?}"))
        };
        self.write.push(get("write_ms")?.max(1.0));
        self.read.push(get("read_ms")?.max(1.0));
        self.create.push(get("create_ms")?.max(1.0));
        self.stat.push(get("stat_ms")?.max(1.0));
        self.unlink.push(get("unlink_ms")?.max(1.0));
        Ok(())
    }
}

/// Empties `dir`, writes the file the workload reads, syncs and drops the page cache.
fn prepare_io_dir(dir: &Path, seq_mib: u64) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("of={}", dir.join("r").display()))
        .arg(format!("count={seq_mib}"))
        .status()?;
    if !status.success() {
        bail!("dd: {status}");
    }
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (needs root)")?;
    Ok(())
}

/// An OCI bundle for crun: the busybox image's files, `dir` bound at /data, the workload.
fn crun_bundle(bundle: &Path, data: &Path, env: &[String]) -> Result<()> {
    busybox_dir(&bundle.join("rootfs"), 0)?;
    let status = Command::new("crun").arg("spec").current_dir(bundle).status().context("crun spec (apt-get install crun)")?;
    if !status.success() {
        bail!("crun spec failed");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", WORKLOAD]);
    let mut all_env: Vec<String> = vec!["PATH=/bin".into(), "D=/data".into()];
    all_env.extend(env.iter().cloned());
    spec["process"]["env"] = serde_json::json!(all_env);
    spec["root"]["readonly"] = false.into();
    spec["mounts"].as_array_mut().context("mounts")?.push(serde_json::json!({
        "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]
    }));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// virtiofsd's settings (`vmrun --share-cache`, `--share-threads`), as `MODE:THREADS`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tuning {
    cache: String,
    threads: u32,
}

impl Default for Tuning {
    /// vmrun's defaults.
    fn default() -> Self {
        Tuning { cache: "auto".into(), threads: 0 }
    }
}

impl std::str::FromStr for Tuning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (cache, threads) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected MODE:THREADS, e.g. auto:0"))?;
        let threads = threads.parse().map_err(|_| format!("{s:?}: THREADS is a whole number"))?;
        Ok(Tuning { cache: cache.into(), threads })
    }
}

impl std::fmt::Display for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--share-cache {} --share-threads {}", self.cache, self.threads)
    }
}

/// The workload in a Palisade container on a virtio-fs volume of `dir` (emptied first,
/// also before a second try: a lost VM leaves what it had written), its virtiofsd set up as
/// `tuning` says.
fn vm_workload(p: &palisade_e2e::Paths, dir: &Path, args: &Args, tuning: &Tuning) -> Result<palisade_e2e::Output> {
    let volume = format!("{}:/data", dir.display());
    sample("the workload in a Palisade container", || {
        prepare_io_dir(dir, args.seq_mib)?;
        let mut c = Command::new(&p.vmrun);
        c.args(["--vm-memory", "512", "-v", &volume, "-e", "D=/data"]);
        c.args(["--share-cache", &tuning.cache, "--share-threads", &tuning.threads.to_string()]);
        c.args(["-e", &format!("SEQ_MIB={}", args.seq_mib), "-e", &format!("FILES={}", args.files)]);
        c.args(["--", "sh", "-c", WORKLOAD]);
        let out = run(c, None, Duration::from_secs(1800))?;
        if out.code() != 0 {
            bail!("{}", out.describe());
        }
        Ok(out)
    })
}

/// Part 3: the Palisade column of part 2 under each of virtiofsd's settings, interleaved.
fn tuning_bench(p: &palisade_e2e::Paths, scratch: &Scratch, args: &Args) -> Result<Vec<IoSamples>> {
    let dir = scratch.tempdir()?;
    let mut samples = vec![IoSamples::default(); args.tunings.len()];
    for round in 0..=args.tuning_rounds {
        for (tuning, s) in args.tunings.iter().zip(samples.iter_mut()) {
            let out = vm_workload(p, dir.path(), args, tuning)?;
            eprintln!("[bench] virtiofsd {tuning}, round {round}{}: {:?}", if round == 0 { " (warm-up)" } else { "" }, out.stdout_str());
            if round > 0 {
                s.push(&out.stdout_str())?;
            }
        }
    }
    Ok(samples)
}

fn io_bench(p: &palisade_e2e::Paths, scratch: &Scratch, args: &Args) -> Result<[IoSamples; 3]> {
    let env = vec![format!("SEQ_MIB={}", args.seq_mib), format!("FILES={}", args.files)];
    let host_dir = scratch.tempdir()?;
    let crun_dir = scratch.tempdir()?;
    let vm_dir = scratch.tempdir()?;
    let bundle = tempfile::tempdir()?;
    crun_bundle(bundle.path(), crun_dir.path(), &env)?;
    let mut samples: [IoSamples; 3] = Default::default();
    let timeout = Duration::from_secs(1800);
    for round in 0..=args.rounds {
        // (a) the host itself, with the same busybox shell, run from the same place as
        // crun's (so that neither execs from a slower filesystem, the test host's 9p root).
        prepare_io_dir(host_dir.path(), args.seq_mib)?;
        let tools = bundle.path().join("rootfs/bin");
        let mut c = Command::new(tools.join("busybox"));
        c.args(["sh", "-c", WORKLOAD])
            .env("PATH", &tools)
            .env("D", host_dir.path())
            .env("SEQ_MIB", args.seq_mib.to_string())
            .env("FILES", args.files.to_string());
        let host = run(c, None, timeout)?;
        if host.code() != 0 {
            bail!("the workload on the host: {}", host.describe());
        }
        // (b) crun, on a bind mount.
        prepare_io_dir(crun_dir.path(), args.seq_mib)?;
        let mut c = Command::new("crun");
        c.args(["run", "-b"]).arg(bundle.path()).arg(format!("palisade-fs-bench-{}-{round}", std::process::id()));
        let crun = run(c, None, timeout)?;
        if crun.code() != 0 {
            bail!("the workload in crun: {}", crun.describe());
        }
        // (c) a Palisade container on a virtio-fs volume.
        let vm = vm_workload(p, vm_dir.path(), args, &Tuning::default())?;
        let outs = [host.stdout_str(), crun.stdout_str(), vm.stdout_str()];
        eprintln!(
            "[bench] file I/O round {round}{}: host {:?}, crun {:?}, palisade {:?}",
            if round == 0 { " (warm-up)" } else { "" },
            outs[0],
            outs[1],
            outs[2]
        );
        if round > 0 {
            for (s, out) in samples.iter_mut().zip(outs.iter()) {
                s.push(out)?;
            }
        }
    }
    Ok(samples)
}

fn main() -> Result<()> {
    reexec_in_testhost_if_needed();
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.root_sizes = vec![4];
        args.seq_mib = 16;
        args.files = 100;
        args.tunings.truncate(2);
        args.tuning_rounds = 1;
    }
    let p = paths();
    let emulated = palisade_e2e::inside_testhost();
    let where_ = if emulated {
        "inside the KVM test host (QEMU TCG with emulated AMD-V): **emulated — not representative of hardware**; the host and crun figures are the test host's"
    } else {
        "directly on this host's KVM"
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Whether the host backs guest RAM with huge pages decides what a first touch of it
    // costs: anonymous RAM follows `enabled`, a memfd `shmem_enabled`; the jailed VMM's
    // tmpfs file gets them in any case short of `deny`.
    let thp = |file: &str| {
        let text = std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{file}")).unwrap_or_default();
        text.split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')).map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let scratch = Scratch::new(&args, emulated)?;
    let mut report = Report::default();
    report.add(&format!(
        "Measured {where_}; {cpu}, {cores} cores, kernel {}, transparent huge pages `{}` (shmem `{}`); directories on {}; {} rounds after a warm-up ({} for virtiofsd's settings), interleaved; medians (min–max).\n\n",
        kernel.trim(),
        thp("enabled"),
        thp("shmem_enabled"),
        scratch.what,
        args.rounds,
        args.tuning_rounds
    ));
    if args.parts.contains(&Part::Startup) {
        let mut text = String::from("**Start-up with a directory root** (start → the command's first output, ms)\n\n| root directory | shared live (`--rootfs DIR`) | erofs copy (`mkfs.erofs` + `--rootfs IMAGE`) | live / copy |\n|---|---|---|---|\n");
        for &size in &args.root_sizes {
            let (live, copy) = root_startup(&p, &scratch, size, args.rounds)?;
            text.push_str(&format!("| {size} MiB | {live} | {copy} | {:.2}× |\n", live.median / copy.median));
        }
        report.add(&text);
    }
    let mib = args.seq_mib as f64;
    let files = args.files as f64;
    let rows: [(&str, f64, SampleField); 5] = [
        ("sequential write + fsync, MiB/s", mib, |s| &s.write),
        ("sequential read, MiB/s", mib, |s| &s.read),
        ("create, files/s", files, |s| &s.create),
        ("stat, files/s", files, |s| &s.stat),
        ("unlink (`rm -r`), files/s", files, |s| &s.unlink),
    ];
    if args.parts.contains(&Part::Io) {
        let [host, crun, vm] = io_bench(&p, &scratch, &args)?;
        let mut text = format!(
            "\n**File I/O** ({} MiB sequential, {} small files; higher is better; ratio to the host)\n\n| workload | host | crun, bind mount | Palisade, virtio-fs volume |\n|---|---|---|---|\n",
            args.seq_mib, args.files
        );
        for &(name, amount, field) in &rows {
            let rate = |s: &IoSamples| stat(field(s).iter().map(|ms| amount / (ms / 1000.0)).collect());
            let (h, c, v) = (rate(&host), rate(&crun), rate(&vm));
            text.push_str(&format!(
                "| {name} | {h} | {c} ({:.0} %) | {v} ({:.0} %) |\n",
                100.0 * c.median / h.median,
                100.0 * v.median / h.median
            ));
        }
        report.add(&text);
    }
    if args.parts.contains(&Part::Tuning) && !args.tunings.is_empty() {
        let tuned = tuning_bench(&p, &scratch, &args)?;
        let mut text = format!(
            "\n**virtiofsd's settings** (file I/O in Palisade under each; higher is better; ratio to `{}`, vmrun's default)\n\n| workload |",
            Tuning::default()
        );
        for t in &args.tunings {
            text.push_str(&format!(" `{t}` |"));
        }
        text.push_str("\n|---|");
        text.push_str(&"---|".repeat(args.tunings.len()));
        text.push('\n');
        let base = args.tunings.iter().position(|t| *t == Tuning::default());
        for (name, amount, field) in rows {
            text.push_str(&format!("| {name} |"));
            let rates: Vec<Stat> = tuned.iter().map(|s| stat(field(s).iter().map(|ms| amount / (ms / 1000.0)).collect())).collect();
            for r in &rates {
                match base {
                    Some(b) => text.push_str(&format!(" {r} ({:.0} %) |", 100.0 * r.median / rates[b].median)),
                    None => text.push_str(&format!(" {r} |")),
                }
            }
            text.push('\n');
        }
        report.add(&text);
    }
    if let Some(path) = args.output {
        std::fs::write(&path, &report.0).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
