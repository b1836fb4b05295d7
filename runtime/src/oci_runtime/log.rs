//! runc's `--log FILE` and `--log-format text|json`: where the runtime's log goes, and the
//! error line callers read back. containerd's shim reports the `msg` of the last JSON line
//! of the log (`{"level":"error","msg":…,"time":…}`) to its user, so an error is written
//! there in that form, as well as on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::time::rfc3339_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The runtime's log: `--log FILE` (appended to) or stderr.
pub struct Log {
    path: Option<PathBuf>,
    format: LogFormat,
}

/// A log line in `format`, as runc (logrus) writes it.
pub fn line(format: LogFormat, level: &str, msg: &str) -> String {
    let time = rfc3339_now();
    match format {
        LogFormat::Json => serde_json::json!({"level": level, "msg": msg, "time": time}).to_string(),
        LogFormat::Text => format!("time={time:?} level={level} msg={msg:?}"),
    }
}

struct FileWriter(Mutex<std::fs::File>);

impl Write for &FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

impl Log {
    /// Sets up `tracing` for the command: to `path` (or stderr) in `format`, at `debug` with
    /// `--debug`, else at RUST_LOG's level or `warn`.
    pub fn init(path: Option<&Path>, format: LogFormat, debug: bool) -> Log {
        let filter = if debug {
            tracing_subscriber::EnvFilter::new("debug")
        } else {
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        };
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(false);
        let file = path.and_then(|p| match open_append(p) {
            Ok(f) => Some(&*Box::leak(Box::new(FileWriter(Mutex::new(f))))),
            Err(e) => {
                eprintln!("palisade: --log {}: {e}", p.display());
                None
            }
        });
        let _ = match (file, format) {
            (Some(f), LogFormat::Json) => builder.json().flatten_event(true).with_writer(move || f).try_init(),
            (Some(f), LogFormat::Text) => builder.with_writer(move || f).try_init(),
            (None, _) => builder.with_writer(std::io::stderr).try_init(),
        };
        Log { path: path.map(Path::to_path_buf), format }
    }

    /// Reports the command's error: on stderr, and as the log's last line.
    pub fn error(&self, msg: &str) {
        eprintln!("palisade: {msg}");
        if let Some(path) = &self.path {
            if let Ok(mut f) = open_append(path) {
                let _ = writeln!(f, "{}", line(self.format, "error", msg));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_have_the_shape_containerd_reads() {
        let v: serde_json::Value = serde_json::from_str(&line(LogFormat::Json, "error", "container does not exist: x")).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container does not exist: x");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let t = line(LogFormat::Text, "error", "a \"quoted\" msg");
        assert!(t.contains(r#"level=error msg="a \"quoted\" msg""#), "{t}");
    }
}
