//! The workloads: each one a run of `palisade-workload` (bench/src/bin/palisade-workload.rs,
//! built static so every mode runs the same bytes) with its arguments at full size or at the
//! `--quick` size.

/// Where a file workload works: the container's root filesystem, or a volume bound into it
/// (for bare metal, two directories of the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Root,
    Volume,
}

/// What a workload's run gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `hello`: the harness times the run itself (to the first output line and to the exit).
    Start,
    /// The workload times itself and prints its metrics as one JSON line.
    Measured,
    /// Measured, talking to a server on the host over the sandbox's network.
    ToHost,
    /// N sandboxes started at once: the time until all are ready.
    StartParallel(usize),
    /// N idle sandboxes: host memory per sandbox.
    Footprint(usize),
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Its name in reports (`cpu-1`, `seqio-volume`, …).
    pub name: String,
    /// What it measures, in a few words (the table's and the plot's legend).
    pub about: &'static str,
    pub kind: Kind,
    /// Its files' place, when it writes files.
    pub place: Option<Place>,
    /// `palisade-workload` arguments; `{dir}` stands for the place's directory, `{server}`
    /// for the host's server as the mode reaches it.
    pub args: Vec<String>,
    /// Measured in the first measured round only (a footprint does not vary as timings do,
    /// and costs N boots).
    pub once: bool,
}

fn workload(name: &str, about: &'static str, kind: Kind, place: Option<Place>, args: &[&str]) -> Workload {
    Workload { name: name.into(), about, kind, place, args: args.iter().map(|s| s.to_string()).collect(), once: false }
}

/// How much work each workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// For real machines.
    Full,
    /// A tenth to a quarter of it, for the emulated test host (20–50 times slower than
    /// hardware; a micro-VM's file I/O there 10 to 100 times slower than the test host's own).
    Emulated,
    /// One small run of each, for CI's smoke test (`--quick`).
    Quick,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Full => "full",
            Size::Emulated => "emulated",
            Size::Quick => "quick",
        }
    }
}

/// Every workload at `size`. `cpus` is how many threads the multi-threaded CPU workload
/// runs; `starts` and `footprints` the numbers of sandboxes started at once and kept idle.
pub fn all(size: Size, cpus: usize, starts: &[usize], footprints: &[usize]) -> Vec<Workload> {
    let size = |full: &'static str, emulated: &'static str, quick: &'static str| match size {
        Size::Full => full,
        Size::Emulated => emulated,
        Size::Quick => quick,
    };
    let threads = cpus.max(1).to_string();
    let mut list = vec![
        workload("start", "runtime command to first output, and to exit (hello)", Kind::Start, None, &["hello"]),
        workload("cpu-1", "SHA-256, one thread", Kind::Measured, None, &["cpu", "--threads", "1", "--mib", size("64", "16", "4")]),
        workload(
            &format!("cpu-{threads}"),
            "SHA-256, one thread per CPU",
            Kind::Measured,
            None,
            &["cpu", "--threads", &threads, "--mib", size("64", "16", "4")],
        ),
        workload(
            "memcpy",
            "memory bandwidth (memcpy)",
            Kind::Measured,
            None,
            &["memcpy", "--mib", size("256", "64", "16"), "--rounds", size("4", "2", "1")],
        ),
        workload("faults", "page faults on fresh anonymous memory", Kind::Measured, None, &["faults", "--mib", size("256", "32", "16")]),
        workload(
            "getppid",
            "a cheap system call (getppid)",
            Kind::Measured,
            None,
            &["getppid", "--count", size("1000000", "200000", "10000")],
        ),
        workload("spawn", "fork + exec + wait", Kind::Measured, None, &["spawn", "--count", size("200", "20", "10")]),
        workload(
            "tcp-loopback",
            "TCP on the sandbox's own 127.0.0.1: bulk, then 1-byte round trips",
            Kind::Measured,
            None,
            &["tcp-loopback", "--mib", size("256", "32", "4"), "--pings", size("10000", "1000", "100")],
        ),
        workload(
            "tcp-host",
            "TCP to a server on the host over the sandbox's network: bulk, then 1-byte round trips",
            Kind::ToHost,
            None,
            &["tcp", "--connect", "{server}", "--mib", size("256", "32", "4"), "--pings", size("10000", "1000", "100")],
        ),
    ];
    for (place, suffix) in [(Place::Root, "root"), (Place::Volume, "volume")] {
        list.push(workload(
            &format!("seqio-{suffix}"),
            "sequential write + fsync, then read",
            Kind::Measured,
            Some(place),
            &["seqio", "--dir", "{dir}", "--mib", size("256", "32", "8")],
        ));
        list.push(workload(
            &format!("smallfiles-{suffix}"),
            "create, stat, unlink of small files",
            Kind::Measured,
            Some(place),
            &["smallfiles", "--dir", "{dir}", "--count", size("2000", "200", "100")],
        ));
    }
    // A multi-threaded CPU workload on one CPU is the single-threaded one.
    if cpus <= 1 {
        list.remove(2);
    }
    for &n in starts {
        list.push(workload(
            &format!("start-parallel-{n}"),
            "sandboxes started at once, until all are ready",
            Kind::StartParallel(n),
            None,
            &["idle"],
        ));
    }
    for &n in footprints {
        let mut w = workload(&format!("footprint-{n}"), "host memory (PSS) per idle sandbox", Kind::Footprint(n), None, &["idle"]);
        w.once = true;
        list.push(w);
    }
    list
}

/// `--starts 1,5,10` and the like: sandbox counts.
pub fn counts(flag: &str, text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<usize>().ok().filter(|&n| (1..=200).contains(&n)).ok_or_else(|| format!("{flag}: {n:?} is not a count from 1 to 200"))
        })
        .collect()
}

/// The workload's arguments with its place's directory and the host's server filled in.
pub fn arguments(w: &Workload, dir: Option<&str>, server: Option<&str>) -> Vec<String> {
    w.args
        .iter()
        .map(|a| match a.as_str() {
            "{dir}" => dir.unwrap_or("/tmp").to_string(),
            "{server}" => server.unwrap_or("127.0.0.1:1").to_string(),
            _ => a.clone(),
        })
        .collect()
}

/// Picks workloads by name (`--workloads a,b`); an unknown name is an error naming it.
pub fn select(all: Vec<Workload>, names: Option<&str>) -> Result<Vec<Workload>, String> {
    let Some(names) = names else { return Ok(all) };
    let mut chosen = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let w = all.iter().find(|w| w.name == name).ok_or_else(|| {
            format!("--workloads: no workload {name:?} (there are {})", all.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", "))
        })?;
        chosen.push(w.clone());
    }
    if chosen.is_empty() {
        return Err("--workloads: no workload named".into());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_sizes_are_smaller_and_places_are_filled_in() {
        let full = all(Size::Full, 4, &[1, 5], &[1]);
        let quick = all(Size::Quick, 4, &[1, 5], &[1]);
        let emulated = all(Size::Emulated, 4, &[1, 5], &[1]);
        assert_eq!(full.len(), quick.len());
        assert_eq!(full.len(), emulated.len());
        let mib = |list: &[Workload]| list.iter().find(|w| w.name == "seqio-root").unwrap().args[4].parse::<u32>().unwrap();
        assert!(mib(&full) > mib(&emulated) && mib(&emulated) > mib(&quick));
        assert!(full.iter().any(|w| w.name == "cpu-4"));
        assert_eq!(all(Size::Full, 1, &[], &[]).iter().filter(|w| w.name.starts_with("cpu-")).count(), 1);
        let seq = quick.iter().find(|w| w.name == "seqio-volume").unwrap();
        assert_eq!(arguments(seq, Some("/data"), None), ["seqio", "--dir", "/data", "--mib", "8"]);
        let tcp = quick.iter().find(|w| w.name == "tcp-host").unwrap();
        assert_eq!(tcp.kind, Kind::ToHost);
        assert_eq!(&arguments(tcp, None, Some("gateway:5201"))[..3], ["tcp", "--connect", "gateway:5201"]);
        assert_eq!(select(full.clone(), Some("start, spawn")).unwrap().len(), 2);
        assert!(select(full.clone(), Some("nope")).unwrap_err().contains("nope"));
        assert!(full.iter().any(|w| w.name == "start-parallel-5" && w.kind == Kind::StartParallel(5)));
        assert!(full.iter().any(|w| w.name == "footprint-1" && w.once));
        assert_eq!(counts("--starts", "1, 5,20").unwrap(), [1, 5, 20]);
        assert!(counts("--starts", "0").unwrap_err().contains("--starts"));
    }
}
