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

use super::measure::{Event, Sample, SampleKey};
use super::report::Machine;

/// Most test hosts one run may use.
const MAX_TESTHOSTS: usize = 8;

/// What the test hosts measured.
pub struct Measured {
    pub machine: Machine,
    pub modes: BTreeMap<String, String>,
    pub sizes: String,
    pub samples: Vec<Sample>,
}

/// Runs `exe ARGS --json-stdout` inside test hosts until every sample is taken.
pub fn measure(exe: &std::path::Path, args: &[std::ffi::OsString]) -> Result<Measured> {
    eprintln!("[bench] this host's /dev/kvm cannot boot a standard guest: measuring inside the KVM test host (scripts/testhost)");
    let work = tempfile::Builder::new().prefix("palisade-bench-host.").tempdir().context("a directory for the done samples")?;
    let done_file = work.path().join("done-samples.jsonl");
    let mut machine = None;
    let mut modes = BTreeMap::new();
    let mut sizes = String::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut fruitless = 0;
    for testhost in 1..=MAX_TESTHOSTS {
        write_done(&done_file, &samples)?;
        let before = samples.len();
        let mut warmed_up = 0;
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
        let mut finished = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Only the events; anything else on stdout is the test host's own noise.
            let Ok(event) = serde_json::from_str::<Event>(&line) else { continue };
            match event {
                Event::Machine { machine: m, modes: d, sizes: z } => {
                    machine.get_or_insert(m);
                    modes = d;
                    sizes = z;
                }
                Event::Sample(s) => {
                    if !samples.iter().any(|t| t.key() == s.key()) {
                        samples.push(s);
                    }
                }
                Event::WarmedUp { .. } => warmed_up += 1,
                Event::Done => finished = true,
            }
        }
        let status = child.wait().context("waiting for scripts/testhost")?;
        if finished && status.success() {
            let machine = machine.context("the test host never described its machine")?;
            return Ok(Measured { machine, modes, sizes, samples });
        }
        let failure = palisade_e2e::testhost_failure(status.code())
            .with_context(|| format!("the measuring inside the test host failed ({status}): its error is above"))?;
        // A test host that crashed during its warm-up still got somewhere.
        fruitless = if samples.len() == before && warmed_up == 0 { fruitless + 1 } else { 0 };
        if fruitless >= 2 {
            bail!("the test host {failure} twice in a row without making a run ({} samples taken in all)", samples.len());
        }
        eprintln!(
            "[bench] the test host {failure} (test host {testhost} of at most {MAX_TESTHOSTS}, {} samples taken): going on in a new test host",
            samples.len()
        );
    }
    bail!("{MAX_TESTHOSTS} test hosts failed before every sample was taken ({} taken)", samples.len())
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
