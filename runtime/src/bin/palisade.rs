//! `palisade`: an OCI runtime with runc's command line; every container in a micro-VM.
//! The commands are `palisade_runtime::oci_runtime`.

use std::process::ExitCode;

use clap::Parser;
use palisade_runtime::oci_runtime::cli::{dispatch, Cli, Command};
use palisade_runtime::oci_runtime::log::Log;
use palisade_runtime::oci_runtime::monitor::MonitorFiles;
use palisade_runtime::oci_runtime::store::ContainerDir;

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the blocked signals.
    let signals = match palisade_runtime::vmrun::signals::start() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("palisade: {e}");
            return ExitCode::from(1);
        }
    };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A monitor's stdio is its container's: its own log goes to a file.
    let log_path = match &cli.command {
        Command::Monitor { id, exec } => Some(MonitorFiles::of(&ContainerDir::new(&cli.root, id), exec.as_deref()).log),
        _ => cli.log.clone(),
    };
    let log = Log::init(log_path.as_deref(), cli.log_format, cli.debug);
    match dispatch(&cli, &signals) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            log.error(&e.to_string());
            ExitCode::from(1)
        }
    }
}
