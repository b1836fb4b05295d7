//! `palisade-bench --quick`: the harness runs every workload once in every mode (bare
//! metal, crun, a Palisade micro-VM) and writes its JSON report, table and plots; their
//! structure is what this checks (the numbers are the benchmark's business, not a test's).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use libtest_mimic::Trial;
use palisade_e2e::{inside_testhost, paths, run, vm_timeout};
use serde_json::Value;

use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![trial("bench::palisade_bench_quick_reports_every_workload_in_every_mode_with_its_ratios", quick_run)]
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn quick_run() -> TestResult {
    // Beside other tests (not beside the leak tests, which hold the machine alone): only the
    // structure of its figures is checked here, and its sandboxes are its own (its own
    // runtime roots, its own vmrun processes), so another test's VMs do not count in them.
    let _shared = crate::vmrun::shared();
    let out_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(paths().profile_dir.join("palisade-bench"));
    cmd.arg("--quick").arg("--output").arg(out_dir.path());
    let out = run(cmd, None, vm_timeout() * 40).map_err(|e| e.to_string())?;
    ensure!(out.code() == 0, "palisade-bench --quick: {}", out.describe());

    let report: Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("report.json")).map_err(|e| format!("report.json: {e}"))?)
            .map_err(|e| format!("report.json: {e}"))?;
    ensure!(report["schema"] == "palisade-bench/1", "report.json's schema: {}", report["schema"]);
    ensure!(report["quick"] == true && report["sizes"] == "quick", "report.json's sizes: {} {}", report["quick"], report["sizes"]);
    let modes: BTreeSet<&str> = report["modes"].as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
    ensure!(modes == BTreeSet::from(["bare", "crun", "palisade", "vmrun"]), "report.json's modes: {modes:?}");
    // --quick's workload VM, and the default VM of the started and idle sandboxes.
    for mode in ["palisade", "vmrun"] {
        let about = report["modes"][mode].as_str().unwrap_or_default();
        ensure!(
            about.contains("a VM of 1 vCPU and 512 MiB") && about.contains("default VM (1 vCPU, 128 MiB)"),
            "report.json's modes.{mode} does not say its VM sizes: {about:?}"
        );
    }
    let label = report["machine"]["label"].as_str();
    if inside_testhost() {
        ensure!(
            label == Some("emulated — not representative of hardware"),
            "a run in the emulated test host is not labelled so: {label:?}"
        );
    }
    let figures = report["figures"].as_array().cloned().unwrap_or_default();
    let workloads: BTreeSet<&str> = figures.iter().filter_map(|f| f["workload"].as_str()).collect();
    // No cpu-N: it runs as many threads as both the machine and the VM have CPUs, and
    // --quick's VM has one.
    let expected = BTreeSet::from([
        "start",
        "cpu-1",
        "memcpy",
        "faults",
        "getppid",
        "spawn",
        "tcp-loopback",
        "tcp-host",
        "seqio-root",
        "seqio-volume",
        "smallfiles-root",
        "smallfiles-volume",
        "start-parallel-1",
        "start-parallel-2",
        "footprint-1",
        "footprint-2",
    ]);
    ensure!(workloads == expected, "the report's workloads {workloads:?}, not {expected:?}");
    for f in &figures {
        let name = format!("{} {}", f["workload"], f["metric"]);
        let bare_median = f["modes"]["bare"]["median"].as_f64().ok_or(format!("{name}: no bare metal median"))?;
        for mode in &modes {
            let s = &f["modes"][*mode];
            let samples: Vec<f64> = s["samples"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            ensure!(samples.len() == 1 && samples[0].is_finite() && samples[0] > 0.0, "{name} in {mode}: samples {}", s["samples"]);
            let m = s["median"].as_f64().unwrap_or(f64::NAN);
            let ratio = s["ratio_to_bare"].as_f64().unwrap_or(f64::NAN);
            ensure!(m == median(&samples), "{name} in {mode}: median {m} is not the samples' {}", median(&samples));
            let close = (ratio - m / bare_median).abs() <= 1e-9 * ratio.abs().max(1.0);
            ensure!(close, "{name} in {mode}: ratio {ratio}, not {m} / {bare_median}");
        }
    }

    let table = std::fs::read_to_string(out_dir.path().join("table.txt")).map_err(|e| format!("table.txt: {e}"))?;
    ensure!(expected.iter().all(|w| table.contains(w)), "table.txt lacks a workload:\n{table}");
    ensure!(label.is_none_or(|l| table.contains(l)), "table.txt lacks the label {label:?}:\n{table}");
    for (stem, names) in [("ratios", "seqio-volume"), ("start-parallel", "sandboxes"), ("footprint", "MiB per sandbox")] {
        let png = std::fs::read(out_dir.path().join(format!("{stem}.png"))).map_err(|e| format!("{stem}.png: {e}"))?;
        ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{stem}.png is not a PNG plot ({} bytes)", png.len());
        let svg = std::fs::read_to_string(out_dir.path().join(format!("{stem}.svg"))).map_err(|e| format!("{stem}.svg: {e}"))?;
        ensure!(svg.contains("<svg") && svg.contains(names), "{stem}.svg is not the plot (no {names:?} in it)");
        ensure!(label.is_none_or(|l| svg.contains(l)), "{stem}.svg lacks the label {label:?}");
    }

    // --from-report makes the same table and plots again from report.json, measuring nothing.
    let again = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(paths().profile_dir.join("palisade-bench"));
    cmd.arg("--from-report").arg(out_dir.path().join("report.json")).arg("--output").arg(again.path());
    let out = run(cmd, None, Duration::from_secs(120)).map_err(|e| e.to_string())?;
    ensure!(out.code() == 0, "palisade-bench --from-report: {}", out.describe());
    let table_again = std::fs::read_to_string(again.path().join("table.txt")).map_err(|e| format!("table.txt again: {e}"))?;
    ensure!(table_again == table, "--from-report's table differs:\n{table_again}\n--- the run's:\n{table}");
    for stem in ["ratios", "start-parallel", "footprint"] {
        let svg = std::fs::read(again.path().join(format!("{stem}.svg"))).map_err(|e| format!("{stem}.svg again: {e}"))?;
        let first = std::fs::read(out_dir.path().join(format!("{stem}.svg"))).map_err(|e| format!("{stem}.svg: {e}"))?;
        ensure!(svg == first, "--from-report's {stem}.svg differs from the run's");
    }
    Ok(())
}
