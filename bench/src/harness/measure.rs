//! Measuring: every workload in every mode, round after round (modes interleaved), each
//! measured run reported as a [`Sample`] the moment it is taken, and the report assembled
//! from the samples. A run can be resumed: the samples already taken (by an earlier test
//! host that crashed, say) are skipped, and the warm-up runs only what is left to measure.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::modes::{self, Mode, Setup, VmSize};
use super::report::{self, Figure, Machine, Report};
use super::scaling;
use super::workloads::{self, Kind, Workload};

/// One metric of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub higher_is_better: bool,
}

/// One measured run of a workload in a mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The measured round (0 is the first after the warm-up).
    pub round: usize,
    pub workload: String,
    pub about: String,
    /// How many sandboxes at once (the start-parallel and footprint workloads).
    pub sandboxes: Option<usize>,
    pub mode: String,
    pub metrics: Vec<Metric>,
}

impl Sample {
    pub fn key(&self) -> SampleKey {
        (self.round, self.workload.clone(), self.mode.clone())
    }
}

/// A sample that could not be taken, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingSample {
    /// The measured round (0 is the first after the warm-up).
    pub round: usize,
    pub workload: String,
    pub mode: String,
    /// The last attempt's error.
    pub error: String,
}

/// Round, workload, mode: what a sample is of.
pub type SampleKey = (usize, String, String);

/// What a measuring run says as it goes (one JSON line each on stdout inside the test host).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// First: the machine, what each mode is, and the workloads' size.
    Machine {
        machine: Machine,
        modes: BTreeMap<String, String>,
        sizes: String,
    },
    Sample(Sample),
    /// A run that failed in every attempt ([`sample`]): its sample is missing from the report,
    /// which says so, and the run goes on.
    Missing(MissingSample),
    /// A measured run begins (so that, when the test host fails during it, the runner outside
    /// knows which sample it was taking).
    Taking {
        round: usize,
        workload: String,
        mode: String,
    },
    /// A warm-up run made (progress, though not a sample).
    WarmedUp {
        workload: String,
        mode: String,
    },
    /// Last: every sample taken.
    Done,
}

/// What to measure.
pub struct Plan {
    pub size: workloads::Size,
    pub rounds: usize,
    pub warmup: usize,
    pub list: Vec<Workload>,
    pub modes: Vec<Mode>,
    pub vm: VmSize,
}

impl Plan {
    /// The runs still to make: (round, warming up, workload, mode), rounds counted from the
    /// first warm-up; a warm-up run only for a workload and mode with samples left to take.
    /// What is measured once (a footprint: N boots, and it does not vary as timings do) is
    /// neither warmed up nor measured in the rounds, but after the last of them (as measured
    /// round 0): it is the heaviest load of a run, which the emulated test host fails under
    /// most often, and a test host that fails there costs only that.
    fn runs<'a>(&'a self, done: &HashSet<SampleKey>) -> Vec<(usize, bool, &'a Workload, Mode)> {
        let wanted = |w: &Workload, measured: usize, mode: Mode| !done.contains(&(measured, w.name.clone(), mode.name().to_string()));
        let mut runs = Vec::new();
        for round in 0..self.warmup + self.rounds {
            for w in self.list.iter().filter(|w| !w.once) {
                for &mode in &self.modes {
                    let needed = if round < self.warmup {
                        (0..self.rounds).any(|m| wanted(w, m, mode))
                    } else {
                        wanted(w, round - self.warmup, mode)
                    };
                    if needed {
                        runs.push((round, round < self.warmup, w, mode));
                    }
                }
            }
        }
        for w in self.list.iter().filter(|w| w.once) {
            for &mode in &self.modes {
                if wanted(w, 0, mode) {
                    runs.push((self.warmup, false, w, mode));
                }
            }
        }
        runs
    }
}

/// What each mode is, with the size of Palisade's VMs.
pub fn mode_descriptions(modes: &[Mode], vm: &VmSize) -> BTreeMap<String, String> {
    modes
        .iter()
        .map(|&mode| {
            let about = if mode.is_vm() {
                format!(
                    "{}: workloads in a VM of {} vCPU{} and {} MiB; started and idle sandboxes in palisade's default VM (1 vCPU, 128 MiB)",
                    mode.about(),
                    vm.vcpus,
                    if vm.vcpus == 1 { "" } else { "s" },
                    vm.memory_mib
                )
            } else {
                mode.about().to_string()
            };
            (mode.name().to_string(), about)
        })
        .collect()
}

/// Measures what `plan` says but the samples in `done`, telling `emit` the machine first,
/// then each sample as it is taken, then [`Event::Done`]. `progress` hears of every run.
pub fn measure(
    plan: &Plan,
    workload_bin: &Path,
    done: &HashSet<SampleKey>,
    emit: &mut dyn FnMut(Event) -> Result<()>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    let machine = super::machine::describe();
    emit(Event::Machine { machine, modes: mode_descriptions(&plan.modes, &plan.vm), sizes: plan.size.name().to_string() })?;
    let runs = plan.runs(done);
    let to_host = runs.iter().any(|(_, _, w, _)| w.kind == Kind::ToHost);
    let setup = Setup::new(workload_bin, &palisade_e2e::paths().profile_dir, &plan.vm, to_host)?;
    let total = runs.len();
    for (i, (round, warming, w, mode)) in runs.into_iter().enumerate() {
        progress(Progress { done: i, total, round, rounds: plan.warmup + plan.rounds, warming, workload: &w.name, mode });
        if !warming {
            emit(Event::Taking { round: round - plan.warmup, workload: w.name.clone(), mode: mode.name().to_string() })?;
        }
        let dir = w.place.map(|p| setup.dir(mode, p));
        let server = if w.kind == Kind::ToHost { Some(setup.server_address(mode)?) } else { None };
        let argv = workloads::arguments(w, dir.as_deref(), server.as_deref());
        let metrics = match sample(&setup, mode, w.kind, &argv).with_context(|| format!("{} in {}", w.name, mode.name())) {
            Ok(metrics) => metrics,
            // A warm-up run that fails is only said; a measured one is reported missing.
            Err(e) if warming => {
                eprintln!("[bench] warm-up run failed: {e:#}");
                continue;
            }
            Err(e) => {
                eprintln!("[bench] no sample: {e:#}");
                emit(Event::Missing(MissingSample {
                    round: round - plan.warmup,
                    workload: w.name.clone(),
                    mode: mode.name().to_string(),
                    error: format!("{e:#}"),
                }))?;
                continue;
            }
        };
        if warming {
            emit(Event::WarmedUp { workload: w.name.clone(), mode: mode.name().to_string() })?;
        } else {
            emit(Event::Sample(Sample {
                round: round - plan.warmup,
                workload: w.name.clone(),
                about: w.about.to_string(),
                sandboxes: match w.kind {
                    Kind::StartParallel(n) | Kind::Footprint(n) => Some(n),
                    _ => None,
                },
                mode: mode.name().to_string(),
                metrics,
            }))?;
        }
    }
    progress(Progress { done: total, total, round: 0, rounds: 0, warming: false, workload: "", mode: Mode::Bare });
    emit(Event::Done)
}

/// Where a run is, for a progress bar or line.
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub round: usize,
    pub rounds: usize,
    pub warming: bool,
    pub workload: &'a str,
    pub mode: Mode,
}

/// The report of a run: one figure per workload and metric (in the order first measured),
/// each mode's samples summarized with their ratio to bare metal's median.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    started_unix: u64,
    seconds: f64,
    sizes: String,
    rounds: usize,
    warmup: usize,
    machine: Machine,
    modes: BTreeMap<String, String>,
    samples: &[Sample],
    missing: &[MissingSample],
) -> Report {
    struct Accumulating {
        figure: Figure,
        samples: BTreeMap<String, Vec<f64>>,
    }
    let mut figures: Vec<Accumulating> = Vec::new();
    let mut ordered: Vec<&Sample> = samples.iter().collect();
    // In the order measured: by round (a resumed run's samples arrive later).
    ordered.sort_by_key(|s| s.round);
    for s in ordered {
        for m in &s.metrics {
            let at = match figures.iter().position(|f| f.figure.workload == s.workload && f.figure.metric == m.name) {
                Some(at) => at,
                None => {
                    figures.push(Accumulating {
                        figure: Figure {
                            workload: s.workload.clone(),
                            metric: m.name.clone(),
                            unit: m.unit.clone(),
                            higher_is_better: m.higher_is_better,
                            about: s.about.clone(),
                            sandboxes: s.sandboxes,
                            modes: BTreeMap::new(),
                        },
                        samples: BTreeMap::new(),
                    });
                    figures.len() - 1
                }
            };
            figures[at].samples.entry(s.mode.clone()).or_default().push(m.value);
        }
    }
    Report {
        schema: report::SCHEMA.into(),
        started_unix,
        seconds,
        quick: sizes == workloads::Size::Quick.name(),
        sizes,
        rounds,
        warmup,
        machine,
        modes,
        figures: figures.into_iter().map(|acc| Figure { modes: report::summarize(&acc.samples), ..acc.figure }).collect(),
        missing: missing.to_vec(),
    }
}

/// One run of a workload in a mode: its metrics. Inside the emulated test host, a failed run
/// in a micro-VM is run again (at most three runs in all): QEMU's emulation of nested AMD-V
/// now and then loses a VM, which ends its container with SIGKILL (137). A failure that
/// happens three times in a row is reported.
fn sample(setup: &Setup, mode: Mode, kind: Kind, argv: &[String]) -> Result<Vec<Metric>> {
    let mut attempt = 1;
    loop {
        match sample_once(setup, mode, kind, argv) {
            Err(e) if mode.is_vm() && palisade_e2e::inside_testhost() && attempt < 3 => {
                eprintln!("[bench] {e:#} (attempt {attempt}): VMs are now and then lost under emulation; running it once more");
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn sample_once(setup: &Setup, mode: Mode, kind: Kind, argv: &[String]) -> Result<Vec<Metric>> {
    let timeout = palisade_e2e::vm_timeout() * 10;
    let metric = |name: &str, value: f64, unit: &str| Metric { name: name.into(), value, unit: unit.into(), higher_is_better: false };
    match kind {
        Kind::StartParallel(n) => {
            let (took, mut sandboxes) = scaling::start(setup, mode, n, n, timeout)?;
            sandboxes.stop();
            return Ok(vec![metric("all_ready", ms(took), "ms")]);
        }
        Kind::Footprint(n) => {
            let mut sandboxes = scaling::start_idle(setup, mode, n, timeout)?;
            // Settled: the guests' boot-time work done, what stays is what an idle one holds.
            std::thread::sleep(Duration::from_secs(3));
            let pss = sandboxes.pss_per_sandbox_mib(setup)?;
            let touched = sandboxes.touched_per_sandbox_mib(setup)?;
            sandboxes.stop();
            return Ok(vec![metric("pss", pss, "MiB/sandbox"), metric("touched", touched, "MiB/sandbox")]);
        }
        Kind::Start | Kind::Measured | Kind::ToHost => {}
    }
    let command = if kind == Kind::ToHost { setup.command_to_host(mode, argv)? } else { setup.command(mode, argv)? };
    let out = modes::run(command, timeout)?;
    if !out.status.success() {
        let tail: Vec<&str> = out.stderr.lines().rev().take(8).collect();
        bail!("exited with {}: {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    match kind {
        Kind::Start => {
            let first = out.first_line.filter(|_| out.stdout.starts_with("ready")).context("no `ready` line on stdout")?;
            Ok(vec![metric("first_output", ms(first), "ms"), metric("exit", ms(out.exited), "ms")])
        }
        _ => parse_metrics(&out.stdout),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The metrics of a workload's JSON line (its last line on stdout).
fn parse_metrics(stdout: &str) -> Result<Vec<Metric>> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).context("the workload printed nothing")?;
    let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("the workload's line {line:?}"))?;
    let metrics = value["metrics"].as_array().with_context(|| format!("no metrics in {line:?}"))?;
    metrics
        .iter()
        .map(|m| {
            Ok(Metric {
                name: m["name"].as_str().context("a metric without a name")?.to_string(),
                value: m["value"].as_f64().filter(|v| v.is_finite()).context("a metric without a finite value")?,
                unit: m["unit"].as_str().unwrap_or("").to_string(),
                higher_is_better: m["higher_is_better"].as_bool().unwrap_or(true),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: f64) -> Metric {
        Metric { name: name.into(), value, unit: "MiB/s".into(), higher_is_better: true }
    }

    #[test]
    fn a_workloads_line_gives_its_metrics() {
        let line = r#"{"workload":"seqio","metrics":[{"name":"write","value":12.5,"unit":"MiB/s","higher_is_better":true},{"name":"read","value":30,"unit":"MiB/s","higher_is_better":true}]}"#;
        let m = parse_metrics(&format!("noise\n{line}\n")).unwrap();
        assert_eq!(m, vec![metric("write", 12.5), metric("read", 30.0)]);
        assert!(parse_metrics("").is_err());
        assert!(parse_metrics(r#"{"metrics":[{"name":"x","value":"fast"}]}"#).is_err());
    }

    fn plan() -> Plan {
        let list = workloads::all(workloads::Size::Full, 2, &[], &[1])
            .into_iter()
            .filter(|w| w.name == "cpu-1" || w.name == "footprint-1")
            .collect();
        Plan {
            size: workloads::Size::Full,
            rounds: 3,
            warmup: 1,
            list,
            modes: vec![Mode::Bare, Mode::Palisade],
            vm: VmSize { vcpus: 1, memory_mib: 512 },
        }
    }

    #[test]
    fn a_resumed_run_measures_only_what_is_left_and_warms_up_only_that() {
        let plan = plan();
        let all = plan.runs(&HashSet::new());
        // cpu-1: 1 warm-up + 3 measured rounds, footprint-1 once (measured round 0, no warm-up)
        // after the last round, in both modes.
        assert_eq!(all.len(), 2 * 4 + 2);
        assert!(all.iter().all(|(round, warming, _, _)| *warming == (*round == 0)));
        let last: Vec<(usize, &str, &str)> = all[8..].iter().map(|(r, _, w, m)| (*r, w.name.as_str(), m.name())).collect();
        assert_eq!(last, [(1, "footprint-1", "bare"), (1, "footprint-1", "palisade")]);
        assert_eq!(all[7].2.name, "cpu-1");
        assert_eq!(all[7].0, 3);
        // Everything of cpu-1 in bare metal and the footprint in both modes done: what is left
        // is cpu-1 in palisade, warmed up first.
        let mut done: HashSet<SampleKey> = (0..3).map(|r| (r, "cpu-1".to_string(), "bare".to_string())).collect();
        done.insert((0, "footprint-1".into(), "bare".into()));
        done.insert((0, "footprint-1".into(), "palisade".into()));
        let left: Vec<(usize, bool, &str, &str)> =
            plan.runs(&done).into_iter().map(|(r, warm, w, m)| (r, warm, w.name.as_str(), m.name())).collect();
        assert_eq!(
            left,
            [
                (0, true, "cpu-1", "palisade"),
                (1, false, "cpu-1", "palisade"),
                (2, false, "cpu-1", "palisade"),
                (3, false, "cpu-1", "palisade")
            ]
        );
        // All done: nothing to run, not even a warm-up.
        let done: HashSet<SampleKey> =
            all.iter().filter(|r| !r.1).map(|(r, _, w, m)| (r - 1, w.name.clone(), m.name().to_string())).collect();
        assert!(plan.runs(&done).is_empty());
    }

    #[test]
    fn the_report_is_assembled_from_samples_in_any_order() {
        let s = |round: usize, mode: &str, v: f64| Sample {
            round,
            workload: "seqio-root".into(),
            about: "sequential".into(),
            sandboxes: None,
            mode: mode.into(),
            metrics: vec![metric("write", v)],
        };
        let samples = vec![s(1, "bare", 10.0), s(0, "bare", 12.0), s(0, "palisade", 6.0), s(1, "palisade", 4.0)];
        let machine = super::super::machine::describe();
        let report = assemble(1, 2.0, "full".into(), 2, 1, machine, BTreeMap::new(), &samples, &[]);
        assert_eq!(report.figures.len(), 1);
        let f = &report.figures[0];
        assert_eq!((f.workload.as_str(), f.metric.as_str()), ("seqio-root", "write"));
        // In the order measured: round 0 first.
        assert_eq!(f.modes["bare"].samples, [12.0, 10.0]);
        assert_eq!(f.modes["palisade"].median, 5.0);
        assert!((f.modes["palisade"].ratio_to_bare - 5.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn a_missing_sample_is_reported_until_a_later_test_host_takes_it() {
        use super::super::testhost::Measured;
        let missing = |round: usize, error: &str| MissingSample {
            round,
            workload: "start-parallel-5".into(),
            mode: "palisade".into(),
            error: error.into(),
        };
        let mut measured = Measured::default();
        measured.take(Event::Missing(missing(0, "first")));
        measured.take(Event::Missing(missing(0, "again")));
        measured.take(Event::Missing(missing(1, "round 2")));
        assert_eq!(measured.missing, [missing(0, "again"), missing(1, "round 2")]);
        measured.take(Event::Sample(Sample {
            round: 0,
            workload: "start-parallel-5".into(),
            about: "".into(),
            sandboxes: Some(5),
            mode: "palisade".into(),
            metrics: vec![metric("all_ready", 1.0)],
        }));
        assert_eq!(measured.missing, [missing(1, "round 2")]);
        let machine = super::super::machine::describe();
        let report = assemble(1, 2.0, "full".into(), 2, 0, machine, BTreeMap::new(), &measured.samples, &measured.missing);
        assert_eq!(report.missing, [missing(1, "round 2")]);
        let table = report::table(&report);
        assert!(table.contains("missing samples") && table.contains("start-parallel-5 in palisade, round 2: round 2"), "{table}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["missing"][0]["error"], "round 2");
    }
}
