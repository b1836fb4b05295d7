//! Measuring inside the KVM test host (on a host whose /dev/kvm cannot boot a standard
//! guest): this same command runs there with `--json-stdout` and streams its [`Event`]s back
//! on stdout, one JSON line each. QEMU's emulation of nested AMD-V now and then crashes or
//! wedges the test host (docs/testing.md); a full run takes long enough to meet that, so the
//! run goes on in a new test host with the samples already taken skipped
//! (`--done-samples FILE`), as long as the test hosts get somewhere. A sample during which
//! two test hosts failed is given up (reported missing, with why) rather than tried again.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::measure::{Event, MissingSample, Sample, SampleKey};
use super::report::Machine;

/// Most test hosts one run may use.
const MAX_TESTHOSTS: usize = 8;

/// Test hosts that may fail while one sample is being taken before it is given up: the
/// emulator's failures come at random, but some loads (30 idle micro-VMs) meet them nearly
/// every time, and a run must not spend its test hosts on one sample.
const FAILURES_PER_SAMPLE: usize = 2;

/// What a run measured, gathered from its events.
#[derive(Default)]
pub struct Measured {
    pub machine: Option<Machine>,
    pub modes: BTreeMap<String, String>,
    pub sizes: String,
    pub samples: Vec<Sample>,
    /// Samples that could not be taken (the last word on each, if a later test host took it).
    pub missing: Vec<MissingSample>,
    /// Warm-up runs made.
    pub warmed_up: usize,
    /// [`Event::Done`] came.
    pub finished: bool,
    /// The sample being taken (an [`Event::Taking`] not yet followed by its sample or its
    /// missing report).
    pub taking: Option<SampleKey>,
}

impl Measured {
    /// Takes in one event (a sample taken twice counts once).
    pub fn take(&mut self, event: Event) {
        match event {
            Event::Machine { machine, modes, sizes } => {
                self.machine.get_or_insert(machine);
                self.modes = modes;
                self.sizes = sizes;
            }
            Event::Taking { round, workload, mode } => self.taking = Some((round, workload, mode)),
            Event::Sample(s) => {
                self.taking = None;
                self.missing.retain(|m| (m.round, &m.workload, &m.mode) != (s.round, &s.workload, &s.mode));
                if !self.samples.iter().any(|t| t.key() == s.key()) {
                    self.samples.push(s);
                }
            }
            Event::Missing(m) => {
                self.taking = None;
                self.missing.retain(|n| (n.round, &n.workload, &n.mode) != (m.round, &m.workload, &m.mode));
                self.missing.push(m);
            }
            Event::WarmedUp { .. } => self.warmed_up += 1,
            Event::Done => self.finished = true,
        }
    }
}

/// Runs `exe ARGS --json-stdout` inside test hosts until every sample is taken.
pub fn measure(exe: &std::path::Path, args: &[std::ffi::OsString]) -> Result<Measured> {
    eprintln!("[bench] this host's /dev/kvm cannot boot a standard guest: measuring inside the KVM test host (scripts/testhost)");
    let work = tempfile::Builder::new().prefix("palisade-bench-host.").tempdir().context("a directory for the done samples")?;
    let done_file = work.path().join("done-samples.jsonl");
    let mut measured = Measured::default();
    let mut fruitless = 0;
    let mut given_up = GivenUp::default();
    for testhost in 1..=MAX_TESTHOSTS {
        write_done(&done_file, &measured.samples, &given_up.missing)?;
        measured.taking = None;
        let (samples_before, warmed_up_before) = (measured.samples.len(), measured.warmed_up);
        measured.finished = false;
        let mut child = Command::new(palisade_e2e::paths().testhost)
            .args(["--timeout", "5400", "--"])
            .arg(exe)
            .args(args)
            .arg("--json-stdout")
            .arg("--done-samples")
            .arg(&done_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting scripts/testhost")?;
        let forwarded = palisade_e2e::forward_termination(&child);
        let stdout = child.stdout.take().context("the test host's stdout")?;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Only the events; anything else on stdout is the test host's own noise.
            if let Ok(event) = serde_json::from_str::<Event>(&line) {
                measured.take(event);
            }
        }
        let status = child.wait().context("waiting for scripts/testhost")?;
        drop(forwarded);
        if let Some(signal) = palisade_e2e::termination_signal() {
            // The test host was told to end too (and took its own run directory with it).
            eprintln!("[bench] stopped by signal {signal} after {} samples; nothing is reported", measured.samples.len());
            drop(work);
            std::process::exit(128 + signal);
        }
        if measured.finished && status.success() {
            return Ok(measured);
        }
        let failure = palisade_e2e::testhost_failure(status.code())
            .with_context(|| format!("the measuring inside the test host failed ({status}): its error is above"))?;
        // A test host that crashed during its warm-up still got somewhere.
        let taken = measured.samples.len();
        fruitless = if taken == samples_before && measured.warmed_up == warmed_up_before { fruitless + 1 } else { 0 };
        if fruitless >= 2 {
            bail!("the test host {failure} twice in a row without making a run ({taken} samples taken in all)");
        }
        if let Some(missing) = measured.taking.take().and_then(|key| given_up.test_host_failed(key, failure)) {
            eprintln!("[bench] no sample of {} in {} (round {}): {}", missing.workload, missing.mode, missing.round, missing.error);
            measured.take(Event::Missing(missing));
        }
        eprintln!(
            "[bench] the test host {failure} (test host {testhost} of at most {MAX_TESTHOSTS}, {taken} samples taken): going on in a new test host"
        );
    }
    bail!("{MAX_TESTHOSTS} test hosts failed before every sample was taken ({} taken)", measured.samples.len())
}

/// The samples during which test hosts failed, and those given up.
#[derive(Default)]
struct GivenUp {
    failures: BTreeMap<SampleKey, usize>,
    missing: Vec<MissingSample>,
}

impl GivenUp {
    /// A test host failed (`failure` says how) while taking `key`: the sample's missing
    /// report when that gives it up.
    fn test_host_failed(&mut self, key: SampleKey, failure: &str) -> Option<MissingSample> {
        let count = self.failures.entry(key.clone()).or_default();
        *count += 1;
        if *count < FAILURES_PER_SAMPLE {
            return None;
        }
        let (round, workload, mode) = key;
        let missing = MissingSample {
            round,
            workload,
            mode,
            error: format!(
                "the test host failed while taking it, {count} times (the last time it {failure}): given up so that the run could go on"
            ),
        };
        self.missing.push(missing.clone());
        Some(missing)
    }
}

/// The samples taken and those given up, one JSON line each, for `--done-samples`.
fn write_done(path: &std::path::Path, samples: &[Sample], given_up: &[MissingSample]) -> Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let lines = samples.iter().map(serde_json::to_string).chain(given_up.iter().map(serde_json::to_string));
    for line in lines {
        writeln!(file, "{}", line?).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// The keys of the samples in a `--done-samples` file: those taken, and those given up.
pub fn read_done(path: &std::path::Path) -> Result<HashSet<SampleKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--done-samples {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Sample>(l)
                .map(|s| s.key())
                .or_else(|_| serde_json::from_str::<MissingSample>(l).map(|m| (m.round, m.workload, m.mode)))
                .with_context(|| format!("--done-samples {}: {l:?}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: usize, workload: &str, mode: &str) -> Sample {
        Sample { round, workload: workload.into(), about: "about".into(), sandboxes: Some(30), mode: mode.into(), metrics: vec![] }
    }

    #[test]
    fn a_sample_during_which_two_test_hosts_failed_is_given_up_and_skipped_from_then_on() {
        let mut measured = Measured::default();
        let mut given_up = GivenUp::default();
        let key = (0, "footprint-30".to_string(), "palisade".to_string());
        for failure in ["crashed", "wedged"] {
            measured.take(Event::Taking { round: 0, workload: "footprint-30".into(), mode: "palisade".into() });
            assert_eq!(measured.taking.as_ref(), Some(&key), "before the test host {failure}");
            let missing = measured.taking.take().and_then(|k| given_up.test_host_failed(k, failure));
            if failure == "crashed" {
                assert_eq!(missing, None, "one failure is the emulator's chance, not the sample's");
            } else {
                let missing = missing.expect("the second failure gives it up");
                assert_eq!((missing.round, missing.workload.as_str(), missing.mode.as_str()), (0, "footprint-30", "palisade"));
                assert!(missing.error.contains("2 times (the last time it wedged)"), "{}", missing.error);
                measured.take(Event::Missing(missing));
            }
        }
        assert_eq!(measured.missing.len(), 1);
        // Another sample's failure counts for that one alone.
        assert_eq!(given_up.test_host_failed((1, "cpu-1".into(), "palisade".into()), "crashed"), None);
        // The next test host skips both what was taken and what was given up.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("done.jsonl");
        write_done(&path, &[sample(0, "footprint-10", "palisade")], &given_up.missing).unwrap();
        let done = read_done(&path).unwrap();
        assert_eq!(done, HashSet::from([(0, "footprint-10".to_string(), "palisade".to_string()), key]));
        std::fs::write(&path, "{\"round\":0}\n").unwrap();
        assert!(read_done(&path).is_err(), "a line that is neither is an error");
    }

    #[test]
    fn a_sample_that_arrives_ends_the_taking_of_it() {
        let mut measured = Measured::default();
        measured.take(Event::Taking { round: 2, workload: "cpu-1".into(), mode: "crun".into() });
        measured.take(Event::Sample(sample(2, "cpu-1", "crun")));
        assert_eq!(measured.taking, None);
        assert_eq!(measured.samples.len(), 1);
    }
}
