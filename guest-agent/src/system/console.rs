//! Logging: tracing to the serial console (or stderr in host-test mode). Quiet by
//! default: warnings and errors only; `RUST_LOG=…` on the kernel command line (the
//! kernel passes unknown `key=value` words to init as environment) turns more on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

fn open_console() -> Option<File> {
    OpenOptions::new().write(true).custom_flags(libc::O_NOCTTY).open("/dev/console").ok()
}

/// Installs the tracing subscriber writing to `/dev/console` (`console`) or stderr.
pub fn init_logging(console: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).without_time().with_target(false);
    let result = match console.then(open_console).flatten() {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    if let Err(e) = result {
        say(&format!("logging setup failed: {e}"));
    }
}

/// Writes one line `palisade-agent: <line>` straight to the console (or stderr).
pub fn say(line: &str) {
    let text = format!("palisade-agent: {line}\n");
    match open_console() {
        Some(mut f) => {
            let _ = f.write_all(text.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}
