//! `palisade-bench`: what the VM wall costs. The same workloads (start-up, CPU, memory,
//! system calls, process creation, TCP, file I/O on the root and on a volume) run as a plain host
//! process, in a crun namespace container and in a Palisade micro-VM container (through
//! `palisade run` and through `vmrun --bundle`), interleaved
//! (every mode once per workload per round), after a warm-up; each figure is reported as a
//! median with min–max and as a ratio to bare metal's median of the same run: a table on the
//! terminal, `report.json` (schema `palisade-bench/1`), `table.txt` and `ratios.svg`/`.png`
//! in the output directory (docs/benchmarks.md).
//!
//! On a host whose /dev/kvm cannot boot a standard guest (PVM), the measuring runs inside
//! the KVM test host, which hands its report back on stdout; the files are written here. Its
//! figures are labelled "emulated — not representative of hardware".

mod harness;

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use harness::measure::{self, Event};
use harness::modes::{Mode, VmSize};
use harness::report::{self, Report};
use harness::workloads::Size;
use harness::{machine, plots, testhost, workloads};
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
    #[arg(long, default_value = "bare,crun,palisade,vmrun")]
    modes: String,
    /// Only these workloads (comma-separated names: start, cpu-1, cpu-N, memcpy, faults,
    /// getppid, spawn, tcp-loopback, tcp-host, seqio-root, seqio-volume, smallfiles-root,
    /// smallfiles-volume, start-parallel-N, footprint-N).
    #[arg(long)]
    workloads: Option<String>,
    /// Sandboxes started at once (the start-parallel-N workloads).
    #[arg(long, default_value = "1,5,10,20")]
    starts: String,
    /// Idle sandboxes whose host memory is measured (the footprint-N workloads).
    #[arg(long, default_value = "1,10,30")]
    footprints: String,
    /// vCPUs of the VM a workload runs in (default: the host's CPUs; 1 with --quick).
    /// Started and idle sandboxes (start-parallel, footprint) get palisade's default VM.
    #[arg(long)]
    vm_vcpus: Option<usize>,
    /// Memory of the VM a workload runs in, MiB (default 1024; 512 with --quick).
    #[arg(long)]
    vm_memory: Option<u32>,
    /// How much work each workload does (default: full; inside the emulated test host,
    /// `emulated`, a tenth to a quarter of it; `--quick` is `quick`).
    #[arg(long, value_enum)]
    size: Option<Size>,
    /// Where report.json, table.txt and the plots go.
    #[arg(long, default_value = "bench-results")]
    output: PathBuf,
    /// The static palisade-workload binary (default: the one scripts/setup builds).
    #[arg(long)]
    workload_bin: Option<PathBuf>,
    /// Measure nothing: make the table and plots of an earlier run's report.json again, into
    /// --output (after a change to how they are drawn, say); the report itself is left as it is.
    #[arg(long, value_name = "REPORT_JSON")]
    from_report: Option<PathBuf>,
    /// Measure, and print only the run's events on stdout, one JSON line each (how a run
    /// inside the test host hands its samples out as it takes them).
    #[arg(long, hide = true)]
    json_stdout: bool,
    /// With --json-stdout: the samples already taken (by an earlier test host), one JSON
    /// line each, not to be taken again.
    #[arg(long, hide = true)]
    done_samples: Option<PathBuf>,
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
    if let Some(path) = &args.from_report {
        let text = std::fs::read_to_string(path).with_context(|| format!("--from-report {}", path.display()))?;
        let report: Report =
            serde_json::from_str(&text).with_context(|| format!("--from-report {}: not a palisade-bench report", path.display()))?;
        if report.schema != report::SCHEMA {
            bail!("--from-report {}: schema {:?}, this palisade-bench writes {:?}", path.display(), report.schema, report::SCHEMA);
        }
        return finish(&report, &args.output, false);
    }
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let measured = if args.json_stdout {
        // Inside the test host: every event on stdout as it happens.
        let done = match &args.done_samples {
            Some(path) => testhost::read_done(path)?,
            None => HashSet::new(),
        };
        let mut stdout = std::io::stdout().lock();
        let mut emit = |event: Event| -> Result<()> {
            writeln!(stdout, "{}", serde_json::to_string(&event)?)?;
            stdout.flush().context("stdout")
        };
        return measure_here(&args, &done, &mut emit);
    } else if palisade_e2e::mode() == palisade_e2e::Mode::TestHost {
        let exe = std::env::current_exe().context("finding palisade-bench itself")?;
        let passed: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        testhost::measure(&exe, &passed)?
    } else {
        let mut measured = testhost::Measured::default();
        measure_here(&args, &HashSet::new(), &mut |event| {
            measured.take(event);
            Ok(())
        })?;
        measured
    };
    let report = measure::assemble(
        started_unix,
        started.elapsed().as_secs_f64(),
        measured.sizes,
        args.rounds,
        args.warmup,
        measured.machine.context("the run never described its machine")?,
        measured.modes,
        &measured.samples,
        &measured.missing,
    );
    finish(&report, &args.output, true)
}

/// Writes the report's files into `dir` (report.json too when `with_json`) and prints its table.
fn finish(report: &Report, dir: &Path, with_json: bool) -> Result<()> {
    let written = write_outputs(report, dir, with_json)?;
    print!("{}", report::table(report));
    for path in written {
        eprintln!("[bench] wrote {}", path.display());
    }
    if !report.missing.is_empty() {
        eprintln!(
            "[bench] {} sample(s) missing: every attempt failed (listed in the table and in report.json's \"missing\")",
            report.missing.len()
        );
    }
    Ok(())
}

/// Measures on this machine what `args` ask, but the samples in `done`.
fn measure_here(args: &Args, done: &HashSet<measure::SampleKey>, emit: &mut dyn FnMut(Event) -> Result<()>) -> Result<()> {
    let machine = machine::describe();
    // --quick's VM has one vCPU: inside the emulated test host, a guest's vCPUs interrupting
    // one another add to the interrupts the test host's crashes follow (docs/testing.md).
    let vcpus = args.vm_vcpus.unwrap_or(if args.quick { 1 } else { machine.cpus });
    if !(1..=32).contains(&vcpus) {
        bail!("--vm-vcpus {vcpus}: from 1 to 32");
    }
    let memory_mib = args.vm_memory.unwrap_or(if args.quick { 512 } else { 1024 });
    if !(64..=1 << 20).contains(&memory_mib) {
        bail!("--vm-memory {memory_mib}: from 64 to 1048576 MiB");
    }
    let starts = workloads::counts("--starts", &args.starts).map_err(anyhow::Error::msg)?;
    let footprints = workloads::counts("--footprints", &args.footprints).map_err(anyhow::Error::msg)?;
    // The multi-threaded CPU workload runs as many threads as both the machine and the VM
    // have CPUs (more threads than vCPUs would measure the VM's size, not its cost).
    let size = match (args.quick, args.size) {
        (true, _) => Size::Quick,
        (false, Some(size)) => size,
        (false, None) if palisade_e2e::inside_testhost() => Size::Emulated,
        (false, None) => Size::Full,
    };
    let all = workloads::all(size, machine.cpus.min(vcpus), &starts, &footprints);
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
    let plan = measure::Plan { size, rounds: args.rounds, warmup: args.warmup, list, modes, vm: VmSize { vcpus, memory_mib } };
    let bar = ProgressBar::new();
    measure::measure(&plan, &workload_bin, done, emit, &mut |p| bar.show(&p))?;
    bar.finish();
    Ok(())
}

/// Progress on the terminal (a bar), or one line per run when stderr is not one.
struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
}

impl ProgressBar {
    fn new() -> ProgressBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        ProgressBar { bar }
    }

    fn show(&self, p: &measure::Progress<'_>) {
        if p.done == p.total {
            return;
        }
        let what =
            format!("round {}/{}{}: {} in {}", p.round + 1, p.rounds, if p.warming { " (warm-up)" } else { "" }, p.workload, p.mode.name());
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                bar.set_message(what);
            }
            None => eprintln!("[bench] {what}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// report.json (when `with_json`), table.txt and the plots in `dir`.
fn write_outputs(report: &Report, dir: &Path, with_json: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let mut written = Vec::new();
    if with_json {
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(report)?).with_context(|| format!("{}", json.display()))?;
        written.push(json);
    }
    let table = dir.join("table.txt");
    std::fs::write(&table, report::table(report)).with_context(|| format!("{}", table.display()))?;
    written.push(table);
    written.extend(plots::write(report, dir)?);
    Ok(written)
}
