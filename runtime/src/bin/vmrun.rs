//! `vmrun [OPTIONS] -- CMD [ARGS…]`: run a command in a fresh micro-VM, like `docker run`.

use clap::Parser;
use palisade_runtime::vmrun::{self, VmrunArgs};

fn main() {
    vmrun::timings::start();
    // Before any thread exists, so every thread inherits the blocked signals.
    let signals = match vmrun::signals::start() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("vmrun: {e}");
            std::process::exit(125);
        }
    };
    let args = match VmrunArgs::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(args.log_level.as_deref());
    let code = match vmrun::run(&args, &signals) {
        Ok(code) => code,
        Err(e) => {
            if !e.is_quiet() {
                eprintln!("vmrun: {e}");
            }
            e.exit_code()
        }
    };
    vmrun::timings::report();
    std::process::exit(code);
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
