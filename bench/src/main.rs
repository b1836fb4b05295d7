//! `palisade-bench`: what the VM wall costs. The same workloads (start-up, CPU, memory,
//! system calls, process creation, file I/O on the root and on a volume) run as a plain host
//! process, in a crun namespace container and in a Palisade micro-VM container, interleaved
//! (every mode once per workload per round), after a warm-up; each figure is reported as a
//! median with min–max and as a ratio to bare metal's median of the same run: a table on the
//! terminal, `report.json` (schema `palisade-bench/1`), `table.txt` and `ratios.svg`/`.png`
//! in the output directory (docs/benchmarks.md).
//!
//! On a host whose /dev/kvm cannot boot a standard guest (PVM), the measuring runs inside
//! the KVM test host, which hands its report back on stdout; the files are written here. Its
//! figures are labelled "emulated — not representative of hardware".

mod harness;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use harness::modes::{self, Mode, Setup, VmSize};
use harness::report::{self, Figure, Report};
use harness::workloads::{self, Kind};
use harness::{machine, plots, scaling};
use palisade_e2e::paths;

#[derive(Parser)]
#[command(about = "The cost of the VM wall: the same workloads on bare metal, in a crun container and in a Palisade micro-VM")]
struct Args {
    /// One small run of each workload, no warm-up (the smoke test CI runs).
    #[arg(long)]
    quick: bool,
    /// Measured rounds (each runs every workload in every mode once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Warm-up rounds, not reported.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Modes besides bare metal (always measured: every ratio is to it).
    #[arg(long, default_value = "bare,crun,palisade")]
    modes: String,
    /// Only these workloads (comma-separated names: start, cpu-1, cpu-N, memcpy, faults,
    /// getppid, spawn, seqio-root, seqio-volume, smallfiles-root, smallfiles-volume).
    #[arg(long)]
    workloads: Option<String>,
    /// Sandboxes started at once (the start-parallel-N workloads).
    #[arg(long, default_value = "1,5,10,20")]
    starts: String,
    /// Idle sandboxes whose host memory is measured (the footprint-N workloads).
    #[arg(long, default_value = "1,10,30")]
    footprints: String,
    /// Where report.json, table.txt and the plots go.
    #[arg(long, default_value = "bench-results")]
    output: PathBuf,
    /// The static palisade-workload binary (default: the one scripts/setup builds).
    #[arg(long)]
    workload_bin: Option<PathBuf>,
    /// Measure, and print only the report's JSON on stdout (how a run inside the test host
    /// hands its report out).
    #[arg(long, hide = true)]
    json_stdout: bool,
}

/// Where scripts/setup puts the static workload.
fn default_workload_bin() -> PathBuf {
    let target = paths().profile_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"));
    target.join("x86_64-unknown-linux-gnu/release/palisade-workload")
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.warmup = 0;
        args.starts = "1,2".into();
        args.footprints = "1,2".into();
    }
    if args.rounds == 0 {
        bail!("--rounds 0: at least one round is needed");
    }
    let report =
        if !args.json_stdout && palisade_e2e::mode() == palisade_e2e::Mode::TestHost { measure_in_testhost()? } else { measure(&args)? };
    if args.json_stdout {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let written = write_outputs(&report, &args.output)?;
    print!("{}", report::table(&report));
    for path in written {
        eprintln!("[bench] wrote {}", path.display());
    }
    Ok(())
}

/// Runs this same command inside the KVM test host and takes its report from its stdout.
fn measure_in_testhost() -> Result<Report> {
    let exe = std::env::current_exe().context("finding palisade-bench itself")?;
    eprintln!("[bench] this host's /dev/kvm cannot boot a standard guest: measuring inside the KVM test host (scripts/testhost)");
    let out = Command::new(paths().testhost)
        .args(["--timeout", "5400", "--"])
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .arg("--json-stdout")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("scripts/testhost")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("the run inside the test host gave no report (exit status {}); its output:\n{stdout}", out.status))?;
    serde_json::from_str(json).context("the report from inside the test host")
}

/// One figure's samples while the run goes on.
struct Accumulating {
    figure: Figure,
    samples: BTreeMap<String, Vec<f64>>,
}

fn measure(args: &Args) -> Result<Report> {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let machine = machine::describe();
    let starts = workloads::counts("--starts", &args.starts).map_err(anyhow::Error::msg)?;
    let footprints = workloads::counts("--footprints", &args.footprints).map_err(anyhow::Error::msg)?;
    let all = workloads::all(args.quick, machine.cpus, &starts, &footprints);
    let list = workloads::select(all, args.workloads.as_deref()).map_err(anyhow::Error::msg)?;
    let modes = Mode::parse_list(&args.modes)?;
    let workload_bin = args.workload_bin.clone().unwrap_or_else(default_workload_bin);
    if !workload_bin.is_file() {
        bail!(
            "{}: no such file — scripts/setup builds it (CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"-C target-feature=+crt-static\" \
             cargo build --release -p palisade-workload --target x86_64-unknown-linux-gnu)",
            workload_bin.display()
        );
    }
    let palisade = paths().profile_dir.join("palisade");
    let vm = VmSize { vcpus: machine.cpus.clamp(1, 32), memory_mib: if args.quick { 512 } else { 1024 } };
    let setup = Setup::new(&workload_bin, &palisade, &vm)?;
    let rounds = args.warmup + args.rounds;
    let per_round = list.iter().filter(|w| !w.once).count();
    let total = ((rounds * per_round + list.len() - per_round) * modes.len()) as u64;
    let progress = Progress::new(total);
    let mut figures: Vec<Accumulating> = Vec::new();
    for round in 0..rounds {
        let warming = round < args.warmup;
        for w in list.iter().filter(|w| !w.once || round == args.warmup) {
            for &mode in &modes {
                let dir = w.place.map(|p| setup.dir(mode, p));
                let argv = workloads::arguments(w, dir.as_deref());
                progress.say(&format!(
                    "round {}/{rounds}{}: {} in {}",
                    round + 1,
                    if warming { " (warm-up)" } else { "" },
                    w.name,
                    mode.name()
                ));
                let metrics = sample(&setup, mode, w.kind, &argv).with_context(|| format!("{} in {}", w.name, mode.name()))?;
                if !warming {
                    for (metric, value, unit, higher_is_better) in metrics {
                        let at = match figures.iter().position(|f| f.figure.workload == w.name && f.figure.metric == metric) {
                            Some(at) => at,
                            None => {
                                figures.push(Accumulating {
                                    figure: Figure {
                                        workload: w.name.clone(),
                                        metric: metric.clone(),
                                        unit,
                                        higher_is_better,
                                        about: w.about.into(),
                                        sandboxes: match w.kind {
                                            Kind::StartParallel(n) | Kind::Footprint(n) => Some(n),
                                            _ => None,
                                        },
                                        modes: BTreeMap::new(),
                                    },
                                    samples: BTreeMap::new(),
                                });
                                figures.len() - 1
                            }
                        };
                        figures[at].samples.entry(mode.name().into()).or_default().push(value);
                    }
                }
                progress.done();
            }
        }
    }
    progress.finish();
    let figures = figures.into_iter().map(|acc| Figure { modes: report::summarize(&acc.samples), ..acc.figure }).collect();
    Ok(Report {
        schema: report::SCHEMA.into(),
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        quick: args.quick,
        rounds: args.rounds,
        warmup: args.warmup,
        machine,
        modes: modes.iter().map(|m| (m.name().to_string(), m.about().to_string())).collect(),
        figures,
    })
}

/// One run of a workload in a mode: its metrics (name, value, unit, higher is better).
/// Inside the emulated test host, a failed Palisade run is run again (at most three runs in
/// all): QEMU's emulation of nested AMD-V now and then loses a VM, which ends its container
/// with SIGKILL (137). A failure that happens three times in a row is reported.
fn sample(setup: &Setup, mode: Mode, kind: Kind, argv: &[String]) -> Result<Vec<(String, f64, String, bool)>> {
    let mut attempt = 1;
    loop {
        match sample_once(setup, mode, kind, argv) {
            Err(e) if mode == Mode::Palisade && palisade_e2e::inside_testhost() && attempt < 3 => {
                eprintln!("[bench] {e:#} (attempt {attempt}): VMs are now and then lost under emulation; running it once more");
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn sample_once(setup: &Setup, mode: Mode, kind: Kind, argv: &[String]) -> Result<Vec<(String, f64, String, bool)>> {
    let timeout = palisade_e2e::vm_timeout() * 10;
    match kind {
        Kind::StartParallel(n) => {
            let (took, mut sandboxes) = scaling::start(setup, mode, n, n, timeout)?;
            sandboxes.stop();
            return Ok(vec![("all_ready".into(), ms(took), "ms".into(), false)]);
        }
        Kind::Footprint(n) => {
            let mut sandboxes = scaling::start_idle(setup, mode, n, timeout)?;
            // Settled: the guests' boot-time work done, what stays is what an idle one holds.
            std::thread::sleep(Duration::from_secs(3));
            let pss = sandboxes.pss_per_sandbox_mib(setup)?;
            sandboxes.stop();
            return Ok(vec![("pss".into(), pss, "MiB/sandbox".into(), false)]);
        }
        Kind::Start | Kind::Measured => {}
    }
    let out = modes::run(setup.command(mode, argv)?, timeout)?;
    if !out.status.success() {
        let tail: Vec<&str> = out.stderr.lines().rev().take(8).collect();
        bail!("exited with {}: {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    match kind {
        Kind::Start => {
            let first = out.first_line.filter(|_| out.stdout.starts_with("ready")).context("no `ready` line on stdout")?;
            Ok(vec![("first_output".into(), ms(first), "ms".into(), false), ("exit".into(), ms(out.exited), "ms".into(), false)])
        }
        _ => parse_metrics(&out.stdout),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The metrics of a workload's JSON line (its last line on stdout).
fn parse_metrics(stdout: &str) -> Result<Vec<(String, f64, String, bool)>> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).context("the workload printed nothing")?;
    let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("the workload's line {line:?}"))?;
    let metrics = value["metrics"].as_array().with_context(|| format!("no metrics in {line:?}"))?;
    metrics
        .iter()
        .map(|m| {
            Ok((
                m["name"].as_str().context("a metric without a name")?.to_string(),
                m["value"].as_f64().filter(|v| v.is_finite()).context("a metric without a finite value")?,
                m["unit"].as_str().unwrap_or("").to_string(),
                m["higher_is_better"].as_bool().unwrap_or(true),
            ))
        })
        .collect()
}

/// Progress on the terminal (a bar), or one line per run when stderr is not one.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress { bar }
    }

    fn say(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_string()),
            None => eprintln!("[bench] {what}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// report.json, table.txt and the plots in `dir`.
fn write_outputs(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?).with_context(|| format!("{}", json.display()))?;
    let table = dir.join("table.txt");
    std::fs::write(&table, report::table(report)).with_context(|| format!("{}", table.display()))?;
    let mut written = vec![json, table];
    written.extend(plots::write(report, dir)?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workloads_line_gives_its_metrics() {
        let line = r#"{"workload":"seqio","metrics":[{"name":"write","value":12.5,"unit":"MiB/s","higher_is_better":true},{"name":"read","value":30,"unit":"MiB/s","higher_is_better":true}]}"#;
        let m = parse_metrics(&format!("noise\n{line}\n")).unwrap();
        assert_eq!(m, vec![("write".into(), 12.5, "MiB/s".into(), true), ("read".into(), 30.0, "MiB/s".into(), true)]);
        assert!(parse_metrics("").is_err());
        assert!(parse_metrics(r#"{"metrics":[{"name":"x","value":"fast"}]}"#).is_err());
    }
}
