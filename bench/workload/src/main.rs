//! `palisade-workload`: one small program of benchmark workloads that runs the same way as a
//! plain host process, inside a crun container and inside a Palisade micro-VM (a busybox root
//! filesystem with this binary copied in at `/palisade-workload`), so that the three can be
//! compared on identical work.
//!
//! ```text
//! palisade-workload <workload> [--key value]...
//! ```
//!
//! It uses only `std`, `libc` and `serde_json` (no clap, no other crates) and nothing that needs
//! NSS or DNS, so that it links statically against glibc
//! (`-C target-feature=+crt-static`) and runs in a guest with no shared libraries at all.
//!
//! `hello` prints `ready` (start-up to first output) and `noop` does nothing (the child that
//! `spawn` starts). Every other workload prints one JSON line at the end:
//! `{"workload":…,"metrics":[{"name","value","unit","higher_is_better"}…],"check":…}`
//! ("check" only where there is something to show that the work was done).
//!
//! Exit codes: 0 on success, 1 when the work fails (the message on stderr names what failed),
//! 2 for an unknown workload or a bad argument.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: palisade-workload <workload> [--key value]...

workloads (defaults in brackets):
  hello                                   print `ready` at once (no JSON)
  noop                                    exit at once (what `spawn` starts)
  idle                                    print `ready`, then sleep until killed (a sandbox's footprint)
  cpu --threads T [1] --mib M [64]        SHA-256 over M MiB on each of T threads (MiB/s)
  memcpy --mib M [256] --rounds R [4]     copy an M MiB buffer R times (MiB/s)
  faults --mib M [256]                    first-touch every 4 KiB page of M MiB (faults/s)
  getppid --count N [1000000]             N raw getppid system calls (ns per call)
  spawn --count N [200]                   fork+exec this program with `noop` N times (us each)
  seqio --dir D --mib M [256]             write+fsync then read back M MiB in D (MiB/s)
  smallfiles --dir D --count N [2000]     create, stat and delete N 100-byte files in D (ops/s)
  tcp-loopback --mib M [64] --pings N [2000]
                                          over TCP on 127.0.0.1 in this sandbox: send M MiB
                                          (MiB/s), then N one-byte round trips (median us)
  tcp --connect HOST:PORT --mib M [64] --pings N [2000]
                                          the same to a `tcp-serve` at HOST:PORT (an IPv4
                                          address, or `gateway`: the default route's gateway)
  tcp-serve --port P [0: any]             serve tcp's connections; prints `listening PORT`
                                          first, then runs until killed (no JSON)

Each workload but hello, noop, idle and tcp-serve prints one JSON line. Exit code 1: the work failed;
2: an unknown workload or a bad argument.";

const MIB: usize = 1 << 20;
/// The page size the `faults` workload steps by (x86-64's base page).
const PAGE_SIZE: usize = 4096;
/// Size of each file in the `smallfiles` workload.
const SMALL_FILE_SIZE: usize = 100;
/// Seed of the deterministic data the workloads hash, copy and write.
const PATTERN_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

const MAX_MIB: u64 = 1 << 20;
const MAX_THREADS: u64 = 1024;
const MAX_ROUNDS: u64 = 1 << 20;
const MAX_COUNT: u64 = 1 << 40;
const MAX_FILES: u64 = 1 << 24;
const MAX_PINGS: u64 = 1 << 24;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = match parse_command_line(&args) {
        Ok(Invocation::Run(workload)) => workload,
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("palisade-workload: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&workload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-workload: {}: {e}", workload.name());
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Invocation {
    Help,
    Run(Workload),
}

#[derive(Debug, PartialEq)]
enum Workload {
    Hello,
    Noop,
    Idle,
    Cpu { threads: usize, mib: u64 },
    Memcpy { mib: u64, rounds: u64 },
    Faults { mib: u64 },
    Getppid { count: u64 },
    Spawn { count: u64 },
    Seqio { dir: PathBuf, mib: u64 },
    Smallfiles { dir: PathBuf, count: u64 },
    TcpLoopback { mib: u64, pings: u64 },
    Tcp { connect: String, mib: u64, pings: u64 },
    TcpServe { port: u16 },
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Hello => "hello",
            Workload::Noop => "noop",
            Workload::Idle => "idle",
            Workload::Cpu { .. } => "cpu",
            Workload::Memcpy { .. } => "memcpy",
            Workload::Faults { .. } => "faults",
            Workload::Getppid { .. } => "getppid",
            Workload::Spawn { .. } => "spawn",
            Workload::Seqio { .. } => "seqio",
            Workload::Smallfiles { .. } => "smallfiles",
            Workload::TcpLoopback { .. } => "tcp-loopback",
            Workload::Tcp { .. } => "tcp",
            Workload::TcpServe { .. } => "tcp-serve",
        }
    }
}

/// Parses the arguments after the program name; an error is a usage error (exit code 2).
fn parse_command_line(args: &[String]) -> Result<Invocation, String> {
    let Some(name) = args.first() else {
        return Err("no workload named".to_string());
    };
    let rest = &args[1..];
    let workload = match name.as_str() {
        "-h" | "--help" | "help" => return Ok(Invocation::Help),
        "hello" => {
            Flags::parse("hello", rest, &[])?;
            Workload::Hello
        }
        "noop" => {
            Flags::parse("noop", rest, &[])?;
            Workload::Noop
        }
        "idle" => {
            Flags::parse("idle", rest, &[])?;
            Workload::Idle
        }
        "cpu" => {
            let flags = Flags::parse("cpu", rest, &["--threads", "--mib"])?;
            let threads = flags.number("--threads", 1, MAX_THREADS)?;
            let threads = usize::try_from(threads).map_err(|e| format!("--threads {threads}: {e}"))?;
            Workload::Cpu { threads, mib: flags.number("--mib", 64, MAX_MIB)? }
        }
        "memcpy" => {
            let flags = Flags::parse("memcpy", rest, &["--mib", "--rounds"])?;
            Workload::Memcpy { mib: flags.number("--mib", 256, MAX_MIB)?, rounds: flags.number("--rounds", 4, MAX_ROUNDS)? }
        }
        "faults" => {
            let flags = Flags::parse("faults", rest, &["--mib"])?;
            Workload::Faults { mib: flags.number("--mib", 256, MAX_MIB)? }
        }
        "getppid" => {
            let flags = Flags::parse("getppid", rest, &["--count"])?;
            Workload::Getppid { count: flags.number("--count", 1_000_000, MAX_COUNT)? }
        }
        "spawn" => {
            let flags = Flags::parse("spawn", rest, &["--count"])?;
            Workload::Spawn { count: flags.number("--count", 200, MAX_COUNT)? }
        }
        "seqio" => {
            let flags = Flags::parse("seqio", rest, &["--dir", "--mib"])?;
            Workload::Seqio { dir: flags.required_path("--dir")?, mib: flags.number("--mib", 256, MAX_MIB)? }
        }
        "smallfiles" => {
            let flags = Flags::parse("smallfiles", rest, &["--dir", "--count"])?;
            Workload::Smallfiles { dir: flags.required_path("--dir")?, count: flags.number("--count", 2000, MAX_FILES)? }
        }
        "tcp-loopback" => {
            let flags = Flags::parse("tcp-loopback", rest, &["--mib", "--pings"])?;
            Workload::TcpLoopback { mib: flags.number("--mib", 64, MAX_MIB)?, pings: flags.number("--pings", 2000, MAX_PINGS)? }
        }
        "tcp" => {
            let flags = Flags::parse("tcp", rest, &["--connect", "--mib", "--pings"])?;
            let connect = flags.value("--connect").filter(|c| !c.is_empty()).ok_or("tcp needs --connect HOST:PORT")?.to_string();
            Workload::Tcp { connect, mib: flags.number("--mib", 64, MAX_MIB)?, pings: flags.number("--pings", 2000, MAX_PINGS)? }
        }
        "tcp-serve" => {
            let flags = Flags::parse("tcp-serve", rest, &["--port"])?;
            let port = match flags.value("--port") {
                None => 0,
                Some(text) => text.parse::<u16>().map_err(|_| format!("--port {text:?}: must be a whole number from 0 to 65535"))?,
            };
            Workload::TcpServe { port }
        }
        other => return Err(format!("unknown workload {other:?}")),
    };
    Ok(Invocation::Run(workload))
}

/// The `--key value` pairs after a workload's name, checked against the flags it takes.
struct Flags<'a> {
    workload: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Flags<'a> {
    fn parse(workload: &'static str, args: &'a [String], known: &[&str]) -> Result<Self, String> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if !known.contains(&flag.as_str()) {
                return Err(match known {
                    [] => format!("{workload} takes no arguments (got {flag:?})"),
                    _ => format!("unknown argument {flag:?} for {workload} (it takes {})", known.join(", ")),
                });
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if pairs.iter().any(|(seen, _)| seen == flag) {
                return Err(format!("{flag} given twice"));
            }
            pairs.push((flag, value));
        }
        Ok(Flags { workload, pairs })
    }

    fn value(&self, flag: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(name, _)| *name == flag).map(|(_, value)| *value)
    }

    /// A whole number from 1 to `max`, or `default` when the flag is absent.
    fn number(&self, flag: &str, default: u64, max: u64) -> Result<u64, String> {
        let Some(text) = self.value(flag) else {
            return Ok(default);
        };
        match text.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("{flag} {text:?}: must be a whole number from 1 to {max}")),
        }
    }

    fn required_path(&self, flag: &str) -> Result<PathBuf, String> {
        match self.value(flag) {
            Some("") => Err(format!("{flag}: must not be empty")),
            Some(path) => Ok(PathBuf::from(path)),
            None => Err(format!("{} needs {flag}", self.workload)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running and reporting
// ---------------------------------------------------------------------------------------------

/// One measured figure of a workload.
struct Metric {
    name: &'static str,
    value: f64,
    unit: &'static str,
    higher_is_better: bool,
}

impl Metric {
    fn higher_is_better(name: &'static str, value: f64, unit: &'static str) -> Self {
        Metric { name, value, unit, higher_is_better: true }
    }

    fn lower_is_better(name: &'static str, value: f64, unit: &'static str) -> Self {
        Metric { name, value, unit, higher_is_better: false }
    }
}

/// What a measuring workload prints: its figures and, optionally, evidence of the work.
struct Report {
    metrics: Vec<Metric>,
    check: Option<String>,
}

fn run(workload: &Workload) -> Result<(), String> {
    let report = match workload {
        Workload::Hello => return print_line("ready"),
        Workload::Noop => return Ok(()),
        Workload::Idle => {
            print_line("ready")?;
            loop {
                // SAFETY: pause(2) takes no arguments; it returns only when a signal is caught.
                unsafe { libc::pause() };
            }
        }
        Workload::Cpu { threads, mib } => cpu(*threads, *mib)?,
        Workload::Memcpy { mib, rounds } => memcpy(*mib, *rounds)?,
        Workload::Faults { mib } => faults(*mib)?,
        Workload::Getppid { count } => getppid(*count),
        Workload::Spawn { count } => spawn(*count)?,
        Workload::Seqio { dir, mib } => seqio(dir, *mib)?,
        Workload::Smallfiles { dir, count } => smallfiles(dir, *count)?,
        Workload::TcpLoopback { mib, pings } => tcp_loopback(*mib, *pings)?,
        Workload::Tcp { connect, mib, pings } => tcp_client(resolve_tcp_address(connect)?, *mib, *pings)?,
        Workload::TcpServe { port } => return tcp_serve(*port),
    };
    print_line(&json_line(workload.name(), &report))
}

/// Writes one line to stdout and flushes it (an error, such as a closed pipe, is reported
/// rather than a panic).
fn print_line(line: &str) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).map_err(|e| format!("writing to stdout: {e}"))
}

/// The report as one JSON line, keys in a fixed order (serde_json's own maps sort them).
fn json_line(workload: &str, report: &Report) -> String {
    let string = |s: &str| serde_json::Value::from(s).to_string();
    let metrics: Vec<String> = report
        .metrics
        .iter()
        .map(|m| {
            format!(
                r#"{{"name":{},"value":{},"unit":{},"higher_is_better":{}}}"#,
                string(m.name),
                serde_json::Value::from(m.value),
                string(m.unit),
                m.higher_is_better
            )
        })
        .collect();
    let mut line = format!(r#"{{"workload":{},"metrics":[{}]"#, string(workload), metrics.join(","));
    if let Some(check) = &report.check {
        line.push_str(&format!(r#","check":{}"#, string(check)));
    }
    line.push('}');
    line
}

/// `amount` per second over `elapsed` (never divided by zero, however short the run).
fn per_second(amount: f64, elapsed: Duration) -> f64 {
    amount / elapsed.as_secs_f64().max(1e-9)
}

/// Runs `work` and returns its result with how long it took.
fn timed<T>(work: impl FnOnce() -> Result<T, String>) -> Result<(T, Duration), String> {
    let start = Instant::now();
    let value = work()?;
    Ok((value, start.elapsed()))
}

fn mib_to_bytes(mib: u64) -> usize {
    // mib ≤ MAX_MIB (2^20), so this is at most 2^40 and fits a 64-bit usize.
    (mib as usize) << 20
}

/// A zeroed buffer of `bytes` whose pages have all been written (so none faults in later).
fn allocate(bytes: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(bytes).map_err(|e| format!("allocating {what} ({bytes} bytes): {e}"))?;
    buffer.resize(bytes, 0);
    Ok(buffer)
}

/// Fills `buffer` with deterministic bytes that do not compress to nothing (xorshift64).
fn fill_pattern(buffer: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buffer.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// A 1 MiB buffer of the pattern.
fn pattern_mib() -> Result<Vec<u8>, String> {
    let mut buffer = allocate(MIB, "a 1 MiB buffer")?;
    fill_pattern(&mut buffer, PATTERN_SEED);
    Ok(buffer)
}

// ---------------------------------------------------------------------------------------------
// cpu: SHA-256
// ---------------------------------------------------------------------------------------------

fn cpu(threads: usize, mib: u64) -> Result<Report, String> {
    let data = pattern_mib()?;
    let (digests, elapsed) = timed(|| hash_on_threads(&data, threads, mib))?;
    let first = digests[0];
    if digests.iter().any(|digest| *digest != first) {
        return Err("the hashing threads disagree on the digest of the same data".to_string());
    }
    let total_mib = threads as f64 * mib as f64;
    Ok(Report { metrics: vec![Metric::higher_is_better("hash", per_second(total_mib, elapsed), "MiB/s")], check: Some(hex(&first)) })
}

/// Each of `threads` threads hashes `data` `repeats` times over as one stream; their digests.
fn hash_on_threads(data: &[u8], threads: usize, repeats: u64) -> Result<Vec<[u8; 32]>, String> {
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let handle = std::thread::Builder::new()
                .name(format!("hash-{index}"))
                .spawn_scoped(scope, move || hash_repeated(data, repeats))
                .map_err(|e| format!("starting hashing thread {index}: {e}"))?;
            handles.push(handle);
        }
        handles.into_iter().map(|handle| handle.join().map_err(|_| "a hashing thread panicked".to_string())).collect()
    })
}

fn hash_repeated(data: &[u8], repeats: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for _ in 0..repeats {
        hasher.update(data);
    }
    hasher.finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (FIPS 180-4), streaming.
struct Sha256 {
    state: [u32; 8],
    /// Bytes of an incomplete block, waiting for more input.
    pending: [u8; 64],
    pending_len: usize,
    /// Total bytes hashed so far.
    length: u64,
}

const SHA256_INITIAL: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

const SHA256_ROUND_CONSTANTS: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
    0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
    0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
    0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
    0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
    0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Self {
        Sha256 { state: SHA256_INITIAL, pending: [0; 64], pending_len: 0, length: 0 }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (64 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 64 {
                return;
            }
            sha256_compress(&mut self.state, &self.pending);
            self.pending_len = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for block in &mut blocks {
            sha256_compress(&mut self.state, block.try_into().expect("chunks_exact(64) yields 64-byte blocks"));
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    fn finish(mut self) -> [u8; 32] {
        let bit_length = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.pending_len != 56 {
            self.update(&[0]);
        }
        self.update(&bit_length.to_be_bytes());
        let mut digest = [0u8; 32];
        for (bytes, word) in digest.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

/// The SHA-256 compression function: folds one 64-byte block into `state`.
fn sha256_compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut schedule = [0u32; 64];
    for (word, bytes) in schedule.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for i in 16..64 {
        let (w15, w2) = (schedule[i - 15], schedule[i - 2]);
        let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
        let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
        schedule[i] = schedule[i - 16].wrapping_add(s0).wrapping_add(schedule[i - 7]).wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (k, w) in SHA256_ROUND_CONSTANTS.iter().zip(schedule) {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let choice = (e & f) ^ (!e & g);
        let t1 = h.wrapping_add(s1).wrapping_add(choice).wrapping_add(*k).wrapping_add(w);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let majority = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(majority);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (word, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *word = word.wrapping_add(add);
    }
}

// ---------------------------------------------------------------------------------------------
// memcpy, faults, getppid, spawn
// ---------------------------------------------------------------------------------------------

fn memcpy(mib: u64, rounds: u64) -> Result<Report, String> {
    let bytes = mib_to_bytes(mib);
    let mut source = allocate(bytes, "the source buffer")?;
    fill_pattern(&mut source, PATTERN_SEED);
    let mut destination = allocate(bytes, "the destination buffer")?;
    let start = Instant::now();
    for _ in 0..rounds {
        destination.copy_from_slice(black_box(&source));
        black_box(&mut destination);
    }
    let elapsed = start.elapsed();
    let copied_mib = mib as f64 * rounds as f64;
    Ok(Report { metrics: vec![Metric::higher_is_better("copy", per_second(copied_mib, elapsed), "MiB/s")], check: None })
}

fn faults(mib: u64) -> Result<Report, String> {
    let len = mib_to_bytes(mib);
    // SAFETY: a new anonymous private mapping with no address hint and no file: it aliases
    // nothing, and the result is checked before use.
    let base = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if base == libc::MAP_FAILED {
        return Err(format!("mmap of {mib} MiB: {}", io::Error::last_os_error()));
    }
    avoid_huge_pages(base, len);
    let base = base.cast::<u8>();
    let pages = len / PAGE_SIZE;
    let start = Instant::now();
    for page in 0..pages {
        // SAFETY: page * PAGE_SIZE < len, so the byte is inside the mapping made above, which is
        // readable, writable and referred to by nothing else.
        unsafe { base.add(page * PAGE_SIZE).write_volatile(1) };
    }
    let elapsed = start.elapsed();
    // SAFETY: base and len are exactly the mapping made above, and nothing points into it any more.
    if unsafe { libc::munmap(base.cast(), len) } != 0 {
        return Err(format!("munmap of {mib} MiB: {}", io::Error::last_os_error()));
    }
    Ok(Report { metrics: vec![Metric::higher_is_better("faults", per_second(pages as f64, elapsed), "faults/s")], check: None })
}

/// Asks for base pages in the mapping, so that each 4 KiB page touched is one fault whatever
/// the kernel's transparent-huge-page setting (which differs between host and guest). A kernel
/// without transparent huge pages refuses the advice (EINVAL) and needs none, so it is ignored.
fn avoid_huge_pages(base: *mut libc::c_void, len: usize) {
    // SAFETY: advice on a mapping this program made and owns; it changes no memory contents.
    let _ = unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
}

fn getppid(count: u64) -> Report {
    let start = Instant::now();
    for _ in 0..count {
        // SAFETY: getppid takes no arguments, cannot fail and touches no memory of this process.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    let elapsed = start.elapsed();
    let ns_per_call = elapsed.as_secs_f64() * 1e9 / count as f64;
    Report { metrics: vec![Metric::lower_is_better("getppid", ns_per_call, "ns")], check: None }
}

fn spawn(count: u64) -> Result<Report, String> {
    let executable = own_executable()?;
    let start = Instant::now();
    for _ in 0..count {
        let status = Command::new(&executable).arg("noop").status().map_err(|e| format!("running {} noop: {e}", executable.display()))?;
        if !status.success() {
            return Err(format!("{} noop: {status}", executable.display()));
        }
    }
    let elapsed = start.elapsed();
    let us_per_spawn = elapsed.as_secs_f64() * 1e6 / count as f64;
    Ok(Report { metrics: vec![Metric::lower_is_better("spawn", us_per_spawn, "us")], check: None })
}

/// This program's path: /proc/self/exe, or argv[0] where /proc is not mounted.
fn own_executable() -> Result<PathBuf, String> {
    match std::env::current_exe() {
        Ok(path) => Ok(path),
        Err(e) => match std::env::args_os().next().map(PathBuf::from) {
            Some(path) if path.components().count() > 1 => Ok(path),
            _ => Err(format!("finding this program's own path: {e}")),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// tcp-loopback, tcp, tcp-serve
// ---------------------------------------------------------------------------------------------

/// The first byte of a connection to the TCP server: what the connection is for.
const TCP_BULK: u8 = b'B';
const TCP_PING: u8 = b'P';
/// The most connections a `tcp-serve` serves at once (each has a thread).
const MAX_TCP_CONNECTIONS: usize = 64;

/// Serves benchmark connections on `listener` until the process ends, one thread each (at
/// most [`MAX_TCP_CONNECTIONS`] at once; more wait in the listen queue). A bulk connection is
/// read to its end, then answered with the count of bytes it carried (8 bytes, little-endian);
/// a ping connection has every byte echoed.
fn serve_tcp(listener: std::net::TcpListener) -> Result<(), String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("accepting a connection: {e}")),
        };
        while open.load(Ordering::Acquire) >= MAX_TCP_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(10));
        }
        open.fetch_add(1, Ordering::AcqRel);
        let open = Arc::clone(&open);
        std::thread::spawn(move || {
            if let Err(e) = serve_tcp_connection(stream) {
                eprintln!("palisade-workload: a connection from {peer}: {e}");
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn serve_tcp_connection(mut stream: std::net::TcpStream) -> Result<(), String> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).map_err(|e| format!("reading what the connection is for: {e}"))?;
    match first[0] {
        TCP_BULK => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut received: u64 = 0;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => received += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("receiving the bulk data: {e}")),
                }
            }
            stream.write_all(&received.to_le_bytes()).map_err(|e| format!("answering the bulk count: {e}"))
        }
        TCP_PING => {
            stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let mut byte = [0u8; 1];
            loop {
                match stream.read(&mut byte) {
                    Ok(0) => return Ok(()),
                    Ok(_) => stream.write_all(&byte).map_err(|e| format!("echoing a ping: {e}"))?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("reading a ping: {e}")),
                }
            }
        }
        other => Err(format!("a connection for {other:#04x}, neither bulk ('B') nor ping ('P')")),
    }
}

/// TCP over the sandbox's own loopback: a server thread ([`serve_tcp`]) and this one.
fn tcp_loopback(mib: u64, pings: u64) -> Result<Report, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listening on 127.0.0.1 (is the loopback interface up?): {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("the listener's address: {e}"))?;
    std::thread::spawn(move || serve_tcp(listener));
    tcp_client(addr, mib, pings)
}

/// `tcp-serve`: listens on every address at `port` (0: any free port), prints
/// `listening PORT`, and serves until killed.
fn tcp_serve(port: u16) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("listening on port {port}: {e}"))?;
    let port = listener.local_addr().map_err(|e| format!("the listener's address: {e}"))?.port();
    print_line(&format!("listening {port}"))?;
    serve_tcp(listener)
}

/// `tcp --connect`'s address: `HOST:PORT` with a numeric IPv4 host, or `gateway:PORT` for
/// the default route's gateway (the host, seen from a sandbox with a veth to it).
fn resolve_tcp_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("--connect {text:?}: must be HOST:PORT"))?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(|| format!("--connect {text:?}: the port must be 1 to 65535"))?;
    let ip = if host == "gateway" {
        let routes = fs::read_to_string("/proc/net/route").map_err(|e| format!("reading /proc/net/route: {e}"))?;
        default_gateway(&routes).ok_or_else(|| format!("--connect {text:?}: there is no default route with a gateway"))?
    } else {
        host.parse::<std::net::Ipv4Addr>().map_err(|_| format!("--connect {text:?}: {host:?} is not an IPv4 address or `gateway`"))?
    };
    Ok(std::net::SocketAddr::from((ip, port)))
}

/// The gateway of the default route in `/proc/net/route`'s text (addresses in hex, in the
/// kernel's byte order, which is the host's: little-endian here).
fn default_gateway(routes: &str) -> Option<std::net::Ipv4Addr> {
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (destination, gateway) = (*fields.get(1)?, *fields.get(2)?);
        let gateway = u32::from_str_radix(gateway, 16).ok()?;
        (destination == "00000000" && gateway != 0).then(|| std::net::Ipv4Addr::from(gateway.to_le_bytes()))
    })
}

/// Two connections to a [`serve_tcp`] server at `addr`. The first carries `mib` MiB one way
/// (the server answers with the count it received, so the time covers every byte arriving);
/// the second `pings` one-byte round trips with Nagle off.
fn tcp_client(addr: std::net::SocketAddr, mib: u64, pings: u64) -> Result<Report, String> {
    use std::net::{Shutdown, TcpStream};
    let total = mib * MIB as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    fill_pattern(&mut chunk, PATTERN_SEED);
    let start = Instant::now();
    let mut bulk = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    bulk.write_all(&[TCP_BULK]).map_err(|e| format!("starting the bulk data to {addr}: {e}"))?;
    let mut sent: u64 = 0;
    while sent < total {
        let n = chunk.len().min(usize::try_from(total - sent).unwrap_or(usize::MAX));
        bulk.write_all(&chunk[..n]).map_err(|e| format!("sending bulk data to {addr}: {e}"))?;
        sent += n as u64;
    }
    bulk.shutdown(Shutdown::Write).map_err(|e| format!("ending the bulk data: {e}"))?;
    let mut count = [0u8; 8];
    bulk.read_exact(&mut count).map_err(|e| format!("reading the bulk count from {addr}: {e}"))?;
    let elapsed = start.elapsed();
    let received = u64::from_le_bytes(count);
    if received != total {
        return Err(format!("the server at {addr} received {received} bytes of {total}"));
    }
    let mut ping = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    ping.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    ping.write_all(&[TCP_PING]).map_err(|e| format!("starting the pings to {addr}: {e}"))?;
    let mut rtts = Vec::with_capacity(usize::try_from(pings).unwrap_or(0));
    let mut byte = [0u8; 1];
    for i in 0..pings {
        byte[0] = i as u8;
        let sent_at = Instant::now();
        ping.write_all(&byte).map_err(|e| format!("sending ping {i} to {addr}: {e}"))?;
        ping.read_exact(&mut byte).map_err(|e| format!("reading pong {i} from {addr}: {e}"))?;
        rtts.push(sent_at.elapsed());
        if byte[0] != i as u8 {
            return Err(format!("pong {i} came back as {}", byte[0]));
        }
    }
    rtts.sort_unstable();
    let median = rtts[rtts.len() / 2];
    Ok(Report {
        metrics: vec![
            Metric::higher_is_better("throughput", total as f64 / MIB as f64 / elapsed.as_secs_f64(), "MiB/s"),
            Metric::lower_is_better("rtt", median.as_secs_f64() * 1e6, "us"),
        ],
        check: Some(format!("{received} bytes, {pings} round trips")),
    })
}

// ---------------------------------------------------------------------------------------------
// seqio, smallfiles
// ---------------------------------------------------------------------------------------------

fn seqio(dir: &Path, mib: u64) -> Result<Report, String> {
    let path = dir.join(unique_name("seqio"));
    let base = pattern_mib()?;
    let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let scratch = Scratch::file(path.clone());
    let write_time = write_chunks(file, &path, &base, mib)?;
    let read_time = read_and_verify_chunks(&path, &base, mib)?;
    scratch.remove()?;
    Ok(Report {
        metrics: vec![
            Metric::higher_is_better("write", per_second(mib as f64, write_time), "MiB/s"),
            Metric::higher_is_better("read", per_second(mib as f64, read_time), "MiB/s"),
        ],
        check: None,
    })
}

/// Writes `mib` 1 MiB chunks, then fsyncs; the time of the writes and the fsync (stamping the
/// chunks is left out). Drops the file's pages from the page cache afterwards, untimed.
fn write_chunks(mut file: File, path: &Path, base: &[u8], mib: u64) -> Result<Duration, String> {
    let mut chunk = base.to_vec();
    let mut elapsed = Duration::ZERO;
    for index in 0..mib {
        stamp_chunk(&mut chunk, index);
        let start = Instant::now();
        file.write_all(&chunk).map_err(|e| format!("write {}: {e}", path.display()))?;
        elapsed += start.elapsed();
    }
    let start = Instant::now();
    file.sync_all().map_err(|e| format!("fsync {}: {e}", path.display()))?;
    elapsed += start.elapsed();
    drop_cached_pages(&file, path)?;
    Ok(elapsed)
}

/// Reads the file back in 1 MiB chunks and checks each against what was written; the time of
/// the reads alone.
fn read_and_verify_chunks(path: &Path, base: &[u8], mib: u64) -> Result<Duration, String> {
    let mut file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut expected = base.to_vec();
    let mut chunk = allocate(MIB, "the read buffer")?;
    let mut elapsed = Duration::ZERO;
    for index in 0..mib {
        let start = Instant::now();
        file.read_exact(&mut chunk).map_err(|e| format!("read {} (MiB {index}): {e}", path.display()))?;
        elapsed += start.elapsed();
        stamp_chunk(&mut expected, index);
        if let Some(offset) = chunk.iter().zip(&expected).position(|(got, want)| got != want) {
            return Err(format!("read {}: byte {offset} of MiB {index} differs from what was written", path.display()));
        }
    }
    match file.read(&mut chunk[..1]) {
        Ok(0) => Ok(elapsed),
        Ok(_) => Err(format!("read {}: longer than the {mib} MiB written", path.display())),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

/// Marks every 4 KiB block of a chunk with the chunk's index and the block's, so a block read
/// back from the wrong place does not pass for the right one.
fn stamp_chunk(chunk: &mut [u8], index: u64) {
    for (block_number, block) in chunk.chunks_mut(4096).enumerate() {
        let stamp = (index << 16) | block_number as u64;
        block[..8].copy_from_slice(&stamp.to_le_bytes());
    }
}

/// Drops a file's (clean, fsynced) pages from the page cache, so reading it back reaches the disk.
fn drop_cached_pages(file: &File, path: &Path) -> Result<(), String> {
    // SAFETY: the descriptor belongs to `file`, open for the whole call; the advice changes no
    // memory of this process.
    let ret = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match ret {
        0 => Ok(()),
        errno => Err(format!("posix_fadvise DONTNEED {}: {}", path.display(), io::Error::from_raw_os_error(errno))),
    }
}

fn smallfiles(dir: &Path, count: u64) -> Result<Report, String> {
    let subdirectory = dir.join(unique_name("smallfiles"));
    fs::create_dir(&subdirectory).map_err(|e| format!("mkdir {}: {e}", subdirectory.display()))?;
    let scratch = Scratch::directory(subdirectory.clone());
    let paths: Vec<PathBuf> = (0..count).map(|i| subdirectory.join(format!("f{i}"))).collect();
    let mut content = [0u8; SMALL_FILE_SIZE];
    fill_pattern(&mut content, PATTERN_SEED);
    let ((), create_time) = timed(|| create_files(&paths, &content))?;
    let ((), stat_time) = timed(|| stat_files(&paths))?;
    let ((), unlink_time) = timed(|| unlink_files(&paths))?;
    scratch.remove()?;
    let ops = count as f64;
    Ok(Report {
        metrics: vec![
            Metric::higher_is_better("create", per_second(ops, create_time), "ops/s"),
            Metric::higher_is_better("stat", per_second(ops, stat_time), "ops/s"),
            Metric::higher_is_better("unlink", per_second(ops, unlink_time), "ops/s"),
        ],
        check: None,
    })
}

fn create_files(paths: &[PathBuf], content: &[u8]) -> Result<(), String> {
    for path in paths {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        file.write_all(content).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn stat_files(paths: &[PathBuf]) -> Result<(), String> {
    for path in paths {
        let metadata = fs::metadata(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
        if metadata.len() != SMALL_FILE_SIZE as u64 {
            return Err(format!("stat {}: {} bytes, {SMALL_FILE_SIZE} were written", path.display(), metadata.len()));
        }
    }
    Ok(())
}

fn unlink_files(paths: &[PathBuf]) -> Result<(), String> {
    for path in paths {
        fs::remove_file(path).map_err(|e| format!("unlink {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A name no other run is using: the workload, the process id and the clock's nanoseconds.
fn unique_name(workload: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("palisade-workload-{workload}-{}-{nanos}", std::process::id())
}

/// A file or directory this program made: removed, errors reported, by `remove`; removed
/// quietly (with anything left in it) if dropped first, so a failure leaves nothing behind.
struct Scratch {
    path: PathBuf,
    is_directory: bool,
    removed: bool,
}

impl Scratch {
    fn file(path: PathBuf) -> Self {
        Scratch { path, is_directory: false, removed: false }
    }

    fn directory(path: PathBuf) -> Self {
        Scratch { path, is_directory: true, removed: false }
    }

    fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        if self.is_directory {
            fs::remove_dir(&self.path).map_err(|e| format!("rmdir {}: {e}", self.path.display()))
        } else {
            fs::remove_file(&self.path).map_err(|e| format!("unlink {}: {e}", self.path.display()))
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let _ = if self.is_directory { fs::remove_dir_all(&self.path) } else { fs::remove_file(&self.path) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(data: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(data);
        hex(&hasher.finish())
    }

    fn parse(args: &[&str]) -> Result<Invocation, String> {
        parse_command_line(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(sha256_hex(&vec![b'a'; 1_000_000]), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }

    #[test]
    fn sha256_streaming_matches_one_shot() {
        let mut data = vec![0u8; 1000];
        fill_pattern(&mut data, 7);
        for split in [0, 1, 55, 56, 63, 64, 65, 127, 128, 999, 1000] {
            let mut hasher = Sha256::new();
            hasher.update(&data[..split]);
            hasher.update(&data[split..]);
            assert_eq!(hex(&hasher.finish()), sha256_hex(&data), "split at {split}");
        }
    }

    #[test]
    fn defaults_apply() {
        assert_eq!(parse(&["cpu"]), Ok(Invocation::Run(Workload::Cpu { threads: 1, mib: 64 })));
        assert_eq!(parse(&["memcpy"]), Ok(Invocation::Run(Workload::Memcpy { mib: 256, rounds: 4 })));
        assert_eq!(parse(&["getppid"]), Ok(Invocation::Run(Workload::Getppid { count: 1_000_000 })));
        assert_eq!(parse(&["spawn"]), Ok(Invocation::Run(Workload::Spawn { count: 200 })));
        assert_eq!(parse(&["hello"]), Ok(Invocation::Run(Workload::Hello)));
        assert_eq!(parse(&["idle"]), Ok(Invocation::Run(Workload::Idle)));
        assert_eq!(parse(&["--help"]), Ok(Invocation::Help));
    }

    #[test]
    fn flags_are_read() {
        assert_eq!(parse(&["cpu", "--mib", "8", "--threads", "4"]), Ok(Invocation::Run(Workload::Cpu { threads: 4, mib: 8 })));
        assert_eq!(
            parse(&["seqio", "--dir", "/data", "--mib", "16"]),
            Ok(Invocation::Run(Workload::Seqio { dir: PathBuf::from("/data"), mib: 16 }))
        );
        assert_eq!(
            parse(&["smallfiles", "--dir", "/tmp"]),
            Ok(Invocation::Run(Workload::Smallfiles { dir: PathBuf::from("/tmp"), count: 2000 }))
        );
        assert_eq!(parse(&["tcp-loopback", "--pings", "10"]), Ok(Invocation::Run(Workload::TcpLoopback { mib: 64, pings: 10 })));
    }

    #[test]
    fn tcp_loopback_carries_every_byte_and_times_round_trips() {
        let report = tcp_loopback(2, 20).unwrap();
        let names: Vec<&str> = report.metrics.iter().map(|m| m.name).collect();
        assert_eq!(names, ["throughput", "rtt"]);
        assert!(report.metrics.iter().all(|m| m.value.is_finite() && m.value > 0.0));
        assert_eq!(report.check.as_deref(), Some("2097152 bytes, 20 round trips"));
    }

    #[test]
    fn tcp_reaches_a_tcp_serve_and_names_a_bad_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_tcp(listener));
        let report = tcp_client(resolve_tcp_address(&addr.to_string()).unwrap(), 1, 5).unwrap();
        assert_eq!(report.check.as_deref(), Some("1048576 bytes, 5 round trips"));
        // Two clients at once are served side by side.
        let other = std::thread::spawn(move || tcp_client(addr, 1, 5).map(|r| r.check));
        assert!(tcp_client(addr, 1, 5).is_ok());
        assert_eq!(other.join().unwrap().unwrap().as_deref(), Some("1048576 bytes, 5 round trips"));
        // A connection that is neither bulk nor ping is closed without an answer.
        let mut odd = std::net::TcpStream::connect(addr).unwrap();
        odd.write_all(b"X").unwrap();
        assert_eq!(odd.read(&mut [0u8; 8]).unwrap(), 0);
        for bad in ["10.0.0.1", "10.0.0.1:0", "host.example:80", "gateway:x"] {
            assert!(resolve_tcp_address(bad).unwrap_err().contains(bad), "{bad}");
        }
        assert_eq!(
            parse(&["tcp", "--connect", "gateway:5201"]),
            Ok(Invocation::Run(Workload::Tcp { connect: "gateway:5201".into(), mib: 64, pings: 2000 }))
        );
        assert!(parse(&["tcp"]).unwrap_err().contains("--connect"));
        assert_eq!(parse(&["tcp-serve"]), Ok(Invocation::Run(Workload::TcpServe { port: 0 })));
        assert!(parse(&["tcp-serve", "--port", "70000"]).unwrap_err().contains("--port"));
    }

    #[test]
    fn the_default_gateway_is_read_from_proc_net_route() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00E7A80A\t00000000\t0001\t0\t0\t0\t00FCFFFF\t0\t0\t0\n\
            eth0\t00000000\t01E7A80A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_gateway(routes), Some(std::net::Ipv4Addr::new(10, 168, 231, 1)));
        assert_eq!(default_gateway("Iface\tDestination\tGateway\n"), None);
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for args in [["cpu", "--mib", "lots"], ["cpu", "--threads", "0"], ["memcpy", "--rounds", "-1"], ["faults", "--mib", "2097152"]] {
            let error = parse(&args).unwrap_err();
            assert!(error.contains(args[1]), "{args:?}: {error}");
        }
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["fly"]).unwrap_err().contains("fly"));
        assert!(parse(&["cpu", "--dir", "/tmp"]).unwrap_err().contains("--dir"));
        assert!(parse(&["cpu", "--mib"]).unwrap_err().contains("--mib needs a value"));
        assert!(parse(&["cpu", "--mib", "1", "--mib", "2"]).unwrap_err().contains("twice"));
        assert!(parse(&["seqio"]).unwrap_err().contains("--dir"));
        assert!(parse(&["noop", "extra"]).unwrap_err().contains("extra"));
    }

    #[test]
    fn report_is_one_json_line_in_order() {
        let report = Report {
            metrics: vec![Metric::higher_is_better("write", 123.5, "MiB/s"), Metric::lower_is_better("spawn", 2.0, "us")],
            check: Some("ab\"c".to_string()),
        };
        let line = json_line("seqio", &report);
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"workload":"seqio","metrics":[{"name":"write","value":123.5,"unit":"MiB/s","higher_is_better":true}"#));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["metrics"][1]["higher_is_better"], false);
        assert_eq!(parsed["check"], "ab\"c");
    }

    #[test]
    fn stamps_differ_between_chunks() {
        let base = vec![0u8; MIB];
        let (mut first, mut second) = (base.clone(), base);
        stamp_chunk(&mut first, 0);
        stamp_chunk(&mut second, 1);
        assert_ne!(first, second);
    }
}
