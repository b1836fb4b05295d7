//! Measuring inside the KVM test host (on a host whose /dev/kvm cannot boot a standard
//! guest): this same command runs there with `--json-stdout` and streams its [`Event`]s back
//! on stdout, one JSON line each. QEMU's emulation of nested AMD-V now and then crashes or
//! wedges the test host (docs/testing.md); a full run takes long enough to meet that, so the
//! run goes on in a new test host with the samples already taken skipped
//! (`--done-samples FILE`), as long as the test hosts get somewhere.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::measure::{Event, MissingSample, Sample, SampleKey};
use super::report::Machine;

/// Most test hosts one run may use.
const MAX_TESTHOSTS: usize = 8;

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
            Event::Sample(s) => {
                self.missing.retain(|m| (m.round, &m.workload, &m.mode) != (s.round, &s.workload, &s.mode));
                if !self.samples.iter().any(|t| t.key() == s.key()) {
                    self.samples.push(s);
                }
            }
            Event::Missing(m) => {
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
    for testhost in 1..=MAX_TESTHOSTS {
        write_done(&done_file, &measured.samples)?;
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
        let stdout = child.stdout.take().context("the test host's stdout")?;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Only the events; anything else on stdout is the test host's own noise.
            if let Ok(event) = serde_json::from_str::<Event>(&line) {
                measured.take(event);
            }
        }
        let status = child.wait().context("waiting for scripts/testhost")?;
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
        eprintln!(
            "[bench] the test host {failure} (test host {testhost} of at most {MAX_TESTHOSTS}, {taken} samples taken): going on in a new test host"
        );
    }
    bail!("{MAX_TESTHOSTS} test hosts failed before every sample was taken ({} taken)", measured.samples.len())
}

/// The samples taken, one JSON line each, for `--done-samples`.
fn write_done(path: &std::path::Path, samples: &[Sample]) -> Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    for s in samples {
        writeln!(file, "{}", serde_json::to_string(s)?).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// The keys of the samples in a `--done-samples` file.
pub fn read_done(path: &std::path::Path) -> Result<HashSet<SampleKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--done-samples {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Sample>(l).map(|s| s.key()).with_context(|| format!("--done-samples {}: {l:?}", path.display())))
        .collect()
}
