//! `palisade-bench`: start-up cost of a command in a Palisade micro-VM, against crun
//! running the same busybox command in a namespace container, measured interleaved in
//! one run (A B A B …) and reported as medians and ratios.
//!
//! On hosts whose /dev/kvm cannot boot a standard guest it re-executes itself inside
//! the KVM test host, like the end-to-end tests; absolute times there are 20–50× those
//! of hardware, so read the ratios.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_e2e::{paths, reexec_in_testhost_if_needed, run};

#[derive(Parser)]
#[command(about = "Palisade start-up benchmark: vmrun vs crun, interleaved")]
struct Args {
    /// Rounds (each runs every contender once).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Guest memory for vmrun, MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// One vmrun sample, from the `vmrun-timings:` line vmrun prints with PALISADE_TIMINGS=1.
#[derive(Debug, Default, Clone, Copy)]
struct VmSample {
    agent_ready_ms: f64,
    command_exit_ms: f64,
    total_ms: f64,
    vmm_rss_kib: f64,
    vmm_overhead_rss_kib: f64,
    supervisor_rss_kib: f64,
}

fn parse_timings(stderr: &str) -> Result<VmSample> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmrun-timings:"))
        .context("vmrun printed no `vmrun-timings:` line (PALISADE_TIMINGS=1)")?;
    let mut s = VmSample::default();
    for field in line.split_whitespace() {
        let (k, v) = field.split_once('=').context("malformed timings field")?;
        let v: f64 = v.parse().with_context(|| format!("timings field {k}"))?;
        match k {
            "agent_ready_ms" => s.agent_ready_ms = v,
            "command_exit_ms" => s.command_exit_ms = v,
            "vmm_rss_kib" => s.vmm_rss_kib = v,
            "vmm_overhead_rss_kib" => s.vmm_overhead_rss_kib = v,
            "supervisor_rss_kib" => s.supervisor_rss_kib = v,
            _ => {}
        }
    }
    Ok(s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// An OCI bundle with the busybox image's files, running `true`.
fn crun_bundle(dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("/bin/busybox (busybox-static)")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"))?;
    let status = Command::new("crun").arg("spec").current_dir(dir).status().context("crun spec (apt-get install crun)")?;
    if !status.success() {
        bail!("crun spec failed");
    }
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

fn time_cmd(mut cmd: Command) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = run(std::mem::replace(&mut cmd, Command::new("true")), None, Duration::from_secs(600))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if out.code() != 0 {
        bail!("{cmd:?} failed: {}", out.describe());
    }
    Ok((ms, out.stderr))
}

fn main() -> Result<()> {
    reexec_in_testhost_if_needed();
    let args = Args::parse();
    let p = paths();
    let bundle = tempfile::tempdir()?;
    crun_bundle(bundle.path())?;
    let mut vm = Vec::new();
    let mut crun = Vec::new();
    for round in 0..args.rounds {
        let mut c = Command::new(&p.vmrun);
        c.env("PALISADE_TIMINGS", "1").args(["--memory", &args.memory.to_string(), "--", "true"]);
        let (total, stderr) = time_cmd(c)?;
        let mut s = parse_timings(&stderr)?;
        s.total_ms = total;
        vm.push(s);
        let mut c = Command::new("crun");
        c.args(["run", "-b"]).arg(bundle.path()).arg(format!("palisade-bench-{round}"));
        let (ms, _) = time_cmd(c)?;
        crun.push(ms);
        eprintln!("[bench] round {}/{}: vmrun {:.0} ms, crun {:.0} ms", round + 1, args.rounds, total, ms);
    }
    let m = |f: fn(&VmSample) -> f64| median(vm.iter().map(f).collect());
    let crun_ms = median(crun);
    let where_ = if palisade_e2e::inside_testhost() {
        "inside the KVM test host (QEMU TCG with emulated AMD-V: absolute times are 20–50× hardware; read the ratios)"
    } else {
        "directly on this host's KVM"
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let report = format!(
        "Measured {where_}, kernel {}, {} rounds interleaved (vmrun, crun, vmrun, crun, …), medians.\n\n\
         | what | median | ratio to `crun run` |\n|---|---|---|\n\
         | `crun run` busybox `true` (namespace container) | {crun_ms:.0} ms | 1.0× |\n\
         | vmrun: start → agent ready | {:.0} ms | {:.1}× |\n\
         | vmrun: start → command exit status | {:.0} ms | {:.1}× |\n\
         | vmrun: start → vmrun exit (VM gone) | {:.0} ms | {:.1}× |\n\n\
         VMM resident memory at command exit: {:.1} MiB in all, of which {:.1} MiB is the VMM's own \
         (everything but the guest RAM mapping; guest memory {} MiB); the jail's supervisor \
         process beside it: {:.1} MiB.\n",
        kernel.trim(),
        args.rounds,
        m(|s| s.agent_ready_ms),
        m(|s| s.agent_ready_ms) / crun_ms,
        m(|s| s.command_exit_ms),
        m(|s| s.command_exit_ms) / crun_ms,
        m(|s| s.total_ms),
        m(|s| s.total_ms) / crun_ms,
        m(|s| s.vmm_rss_kib) / 1024.0,
        m(|s| s.vmm_overhead_rss_kib) / 1024.0,
        args.memory,
        m(|s| s.supervisor_rss_kib) / 1024.0,
    );
    print!("{report}");
    if let Some(path) = args.output {
        std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
