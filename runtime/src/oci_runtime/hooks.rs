//! OCI hooks (`config.json` `hooks`), run by the runtime on the host with the container's
//! state on stdin, at the points of the lifecycle the runtime spec gives them:
//!
//! - `prestart` (deprecated), `createRuntime`, `createContainer`: during `create`, once the
//!   VM runs and the container exists in it (its init waiting to be started), in that
//!   order; state `creating`. A failure fails `create`, and the container is removed.
//! - `startContainer`: during `start`, before the container's process is released; state
//!   `created`. A failure fails `start`, and the container is killed.
//! - `poststart`: during `start`, after the process was released; state `running`. A
//!   failure is logged as a warning.
//! - `poststop`: during `delete`, after the container is gone; state `stopped`. A failure is
//!   logged as a warning.
//!
//! Every hook runs on the host, in the runtime's namespaces: the container's namespaces are
//! in the guest kernel, where a host program cannot be run. (`createContainer` and
//! `startContainer` are meant for the container's namespaces: here they run where the
//! other hooks do.) A hook's path is a host path; its `args` are its whole argv (`args[0]`
//! its name), its `env` its whole environment, and `timeout` (seconds) bounds it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The most of a hook's output kept for its error message.
const MAX_OUTPUT: u64 = 64 * 1024;

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// The hooks of a container, by the point they run at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prestart: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_runtime: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_container: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_container: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<Hook>,
}

/// The points hooks run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }
}

impl Hooks {
    /// The `hooks` of a config.json (none when absent), checked: absolute paths, positive
    /// timeouts, `KEY=VALUE` environments.
    pub fn from_config(config: &serde_json::Value) -> Result<Hooks, String> {
        let Some(value) = config.get("hooks").filter(|v| !v.is_null()) else { return Ok(Hooks::default()) };
        let hooks: Hooks = serde_json::from_value(value.clone()).map_err(|e| format!("config.json: hooks: {e}"))?;
        for point in
            [Point::Prestart, Point::CreateRuntime, Point::CreateContainer, Point::StartContainer, Point::Poststart, Point::Poststop]
        {
            for (i, h) in hooks.at(point).iter().enumerate() {
                let at = format!("config.json: hooks.{}[{i}]", point.name());
                if !h.path.is_absolute() {
                    return Err(format!("{at}.path: {} is not an absolute path", h.path.display()));
                }
                if h.timeout.is_some_and(|t| t <= 0) {
                    return Err(format!("{at}.timeout: must be more than 0 seconds"));
                }
                if let Some(bad) = h.env.iter().find(|e| !e.contains('=')) {
                    return Err(format!("{at}.env: {bad:?} is not KEY=VALUE"));
                }
            }
        }
        Ok(hooks)
    }

    pub fn at(&self, point: Point) -> &[Hook] {
        match point {
            Point::Prestart => &self.prestart,
            Point::CreateRuntime => &self.create_runtime,
            Point::CreateContainer => &self.create_container,
            Point::StartContainer => &self.start_container,
            Point::Poststart => &self.poststart,
            Point::Poststop => &self.poststop,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Hooks::default()
    }

    /// Runs the hooks of `points`, in order, each with `state` (JSON) on stdin; stops at
    /// the first that fails.
    pub fn run(&self, points: &[Point], state: &str) -> Result<(), String> {
        for &point in points {
            for (i, hook) in self.at(point).iter().enumerate() {
                run_hook(hook, state).map_err(|e| format!("{} hook {i} ({}): {e}", point.name(), hook.path.display()))?;
            }
        }
        Ok(())
    }

    /// [`Hooks::run`] for hooks whose failure the lifecycle goes on after: each failure is
    /// a warning, and the rest still run.
    pub fn run_warning(&self, point: Point, state: &str, id: &str) {
        for (i, hook) in self.at(point).iter().enumerate() {
            if let Err(e) = run_hook(hook, state) {
                tracing::warn!("container {id}: {} hook {i} ({}): {e}", point.name(), hook.path.display());
            }
        }
    }
}

fn run_hook(hook: &Hook, state: &str) -> Result<(), String> {
    let mut cmd = Command::new(&hook.path);
    if let Some((first, rest)) = hook.args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, first);
        cmd.args(rest);
    }
    cmd.env_clear();
    for e in &hook.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("starting it: {e}"))?;
    let mut stdin = child.stdin.take();
    let state = state.to_string();
    // A hook need not read its stdin: the state is written by a thread of its own.
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(state.as_bytes());
        }
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_OUTPUT).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = hook.timeout.map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if deadline.is_some_and(|d| Instant::now() > d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", hook.timeout.unwrap_or_default()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let _ = writer.join();
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if status.success() {
        return Ok(());
    }
    let said = stderr.lines().chain(stdout.lines()).rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let said: String = said.chars().take(300).map(|c| if c.is_control() { '?' } else { c }).collect();
    Err(if said.is_empty() { format!("{status}") } else { format!("{status}: {said}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hooks: serde_json::Value) -> Result<Hooks, String> {
        Hooks::from_config(&serde_json::json!({ "hooks": hooks }))
    }

    #[test]
    fn hooks_are_read_and_checked() {
        assert!(Hooks::from_config(&serde_json::json!({})).unwrap().is_empty());
        let h = config(serde_json::json!({"createRuntime": [{"path": "/bin/true", "timeout": 5}], "poststop": [{"path": "/bin/echo"}]}))
            .unwrap();
        assert_eq!(h.at(Point::CreateRuntime)[0].timeout, Some(5));
        assert_eq!(h.at(Point::Poststop).len(), 1);
        assert!(config(serde_json::json!({"prestart": [{"path": "true"}]})).unwrap_err().contains("hooks.prestart[0].path"));
        assert!(config(serde_json::json!({"poststart": [{"path": "/bin/true", "timeout": 0}]})).unwrap_err().contains("timeout"));
        assert!(config(serde_json::json!({"poststart": [{"path": "/bin/true", "env": ["X"]}]})).unwrap_err().contains("KEY=VALUE"));
        assert!(config(serde_json::json!({"poststart": [{"args": []}]})).is_err());
    }

    #[test]
    fn a_hook_gets_the_state_its_argv_and_env_and_its_failure_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // sh -c SCRIPT arg1: $0 is arg1 (argv[0] is the hook's name, my-hook).
        let script = format!("read -r state; echo \"$0 [$1] $X $state\" > {}", out.display());
        let hook = |script: &str, timeout| Hook {
            path: "/bin/sh".into(),
            args: vec!["my-hook".into(), "-c".into(), script.into(), "arg1".into()],
            env: vec!["X=42".into()],
            timeout,
        };
        let hooks = Hooks { poststart: vec![hook(&script, None)], ..Hooks::default() };
        hooks.run(&[Point::Poststart], "{\"status\":\"running\"}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "arg1 [] 42 {\"status\":\"running\"}\n");
        let failing = Hooks { prestart: vec![hook("echo broken >&2; exit 3", None)], ..Hooks::default() };
        let e = failing.run(&[Point::Prestart], "{}").unwrap_err();
        assert!(e.starts_with("prestart hook 0 (/bin/sh)") && e.contains("exit status: 3") && e.contains("broken"), "{e}");
        let slow = Hooks { create_runtime: vec![hook("sleep 5", Some(1))], ..Hooks::default() };
        let e = slow.run(&[Point::CreateRuntime], "{}").unwrap_err();
        assert!(e.contains("timed out after 1 s"), "{e}");
        let missing =
            Hooks { poststop: vec![Hook { path: "/no/such/hook".into(), args: vec![], env: vec![], timeout: None }], ..Hooks::default() };
        assert!(missing.run(&[Point::Poststop], "{}").unwrap_err().contains("starting it"));
    }
}
