//! The report: every figure measured in the run, as medians with min–max and a ratio to bare
//! metal's median of the same run; its JSON form (schema `palisade-bench/1`, documented in
//! docs/benchmarks.md) and its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "palisade-bench/1";
/// Said in the table and on the plots of a run inside the emulated test host.
pub const EMULATED_LABEL: &str = "emulated — not representative of hardware";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub kernel: String,
    /// How the micro-VMs get virtualization: `hardware`, `pvm`, `emulated-test-host`, …
    pub virtualization: String,
    /// [`EMULATED_LABEL`] when the figures come from the emulated test host.
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Every sample, in the order measured.
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// This mode's median over bare metal's (1.0 for bare metal).
    pub ratio_to_bare: f64,
}

/// One figure (a workload's metric) in every mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub about: String,
    /// How many sandboxes at once (the start-parallel and footprint workloads).
    #[serde(default)]
    pub sandboxes: Option<usize>,
    /// By mode name (`bare`, `crun`, `palisade`).
    pub modes: BTreeMap<String, Summary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    /// When the run started (seconds since the Unix epoch) and how long it took.
    pub started_unix: u64,
    pub seconds: f64,
    pub quick: bool,
    /// How much work each workload did: `full`, `emulated` (a tenth to a quarter of it, for
    /// the emulated test host) or `quick`.
    #[serde(default)]
    pub sizes: String,
    pub rounds: usize,
    pub warmup: usize,
    pub machine: Machine,
    /// Mode name → what it is.
    pub modes: BTreeMap<String, String>,
    pub figures: Vec<Figure>,
    /// Samples that could not be taken (a run that failed in every attempt), and why; the
    /// figures summarize the samples that were.
    #[serde(default)]
    pub missing: Vec<super::measure::MissingSample>,
}

pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The summaries of one figure's samples by mode, ratios to `bare`'s median.
pub fn summarize(samples: &BTreeMap<String, Vec<f64>>) -> BTreeMap<String, Summary> {
    let bare = samples.get("bare").map(|s| median(s)).unwrap_or(f64::NAN);
    samples
        .iter()
        .map(|(mode, s)| {
            let m = median(s);
            let summary = Summary {
                samples: s.clone(),
                median: m,
                min: s.iter().copied().fold(f64::INFINITY, f64::min),
                max: s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ratio_to_bare: m / bare,
            };
            (mode.clone(), summary)
        })
        .collect()
}

fn number(v: f64) -> String {
    match v.abs() {
        x if x >= 100.0 => format!("{v:.0}"),
        x if x >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// The report as a table: a row per figure, a column per mode (median, min–max, ratio).
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "palisade-bench: {} CPUs ({}), {} MiB, kernel {}, virtualization: {}",
        m.cpus, m.cpu_model, m.memory_mib, m.kernel, m.virtualization
    );
    if let Some(label) = &m.label {
        let _ = writeln!(out, "*** {label} ***");
    }
    let _ = writeln!(
        out,
        "{} rounds after {} warm-up (modes interleaved), medians (min–max) and ratio to bare metal{}\n",
        report.rounds,
        report.warmup,
        match report.sizes.as_str() {
            "quick" => "; --quick: one small run each",
            "emulated" => "; workloads at the emulated test host's sizes (a tenth to a quarter of the full ones)",
            _ => "",
        }
    );
    let modes: Vec<&String> = report.modes.keys().collect();
    let mut rows = vec![{
        let mut head = vec!["workload".to_string(), "metric".into(), "unit".into()];
        head.extend(modes.iter().map(|m| m.to_string()));
        head
    }];
    for f in &report.figures {
        let mut row = vec![
            f.workload.clone(),
            format!("{} ({})", f.metric, if f.higher_is_better { "higher is better" } else { "lower is better" }),
            f.unit.clone(),
        ];
        for mode in &modes {
            row.push(match f.modes.get(*mode) {
                Some(s) => format!("{} ({}–{}) {:.2}×", number(s.median), number(s.min), number(s.max), s.ratio_to_bare),
                None => "-".into(),
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        }
    }
    if !report.missing.is_empty() {
        let _ = writeln!(out, "\nmissing samples (every attempt failed; the figures above summarize the samples taken):");
        for m in &report.missing {
            let _ = writeln!(out, "  {} in {}, round {}: {}", m.workload, m.mode, m.round + 1, m.error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios_come_from_the_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let samples: BTreeMap<String, Vec<f64>> =
            [("bare".to_string(), vec![10.0, 12.0, 11.0]), ("palisade".to_string(), vec![5.0, 6.0, 4.0])].into_iter().collect();
        let s = summarize(&samples);
        assert_eq!(s["bare"].ratio_to_bare, 1.0);
        assert_eq!((s["palisade"].median, s["palisade"].min, s["palisade"].max), (5.0, 4.0, 6.0));
        assert!((s["palisade"].ratio_to_bare - 5.0 / 11.0).abs() < 1e-12);
    }
}
