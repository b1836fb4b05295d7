//! The container `vmrun` runs: its OCI spec, written from the command line with
//! Docker's defaults ([`crate::oci::defaults`]) or taken from a bundle
//! ([`crate::oci::bundle`]), and the few facts the rest of `vmrun` needs from it.
//! Everything here is checked on the host, before a VM boots.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::args::{self, ArgsError, SeccompOpt, VmrunArgs, USERNS_BASE_ID};
use super::network::{self, Choice, NetworkError, Publish};
use super::volume::{self, Volume, VolumeError};
use crate::oci::bundle::{self, BundleError};
use crate::oci::defaults::{self, default_spec, BindMount, DefaultsError, SeccompChoice, SpecOptions, ALL_CAPS};
use crate::share;

/// Warnings of the agent that every run with the default profile gets: the profile
/// lists a few syscalls newer or older than the guest's libseccomp knows.
pub const DEFAULT_PROFILE_WARNING: &str = "linux.seccomp: syscalls unknown to this kernel's libseccomp";

/// What `vmrun` runs.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// The OCI runtime spec (config.json text) handed to the agent.
    pub spec_json: String,
    /// The root filesystem: a directory or an image (`None`: the default image).
    pub rootfs: Option<PathBuf>,
    /// `root.readonly`: the rootfs is mounted without a writable overlay.
    pub read_only: bool,
    /// `process.terminal`.
    pub terminal: bool,
    /// The container's memory limit in MiB (rounded up), when it has one.
    pub memory_limit_mib: Option<u32>,
    /// Warning prefixes of the agent that are expected for this spec.
    pub quiet_warnings: Vec<String>,
    /// `--volume`s: volume `i` is bound from [`share::volume_guest_path`]`(i)` in the spec.
    pub volumes: Vec<Volume>,
    /// `--network` (the container then runs in the guest's network namespace) and `-p`.
    pub network: Choice,
    pub publish: Vec<Publish>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Defaults(#[from] DefaultsError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{0}: not valid JSON: {1}")]
    Json(&'static str, serde_json::Error),
    #[error("--security-opt seccomp={path}: {problem}")]
    Profile { path: PathBuf, problem: String },
    #[error("the container's spec is {0} bytes, more than the agent accepts in one message")]
    TooLarge(usize),
}

/// The spec's text, when it fits in one message to the agent.
fn checked_size(spec: String) -> Result<String, ContainerError> {
    if spec.len() > palisade_protocol::MAX_MESSAGE_SIZE - 4096 {
        return Err(ContainerError::TooLarge(spec.len()));
    }
    Ok(spec)
}

/// The plan for `args`; `lookup` reads vmrun's environment (for `-e KEY`).
pub fn plan(args: &VmrunArgs, lookup: impl Fn(&str) -> Option<String>) -> Result<ContainerPlan, ContainerError> {
    let (network, publish) = network::choose(args.network.as_deref(), &args.publish)?;
    if let Some(dir) = &args.bundle {
        let b = bundle::load(dir)?;
        let mut spec: Value = serde_json::from_str(&b.config).map_err(|e| ContainerError::Json("config.json", e))?;
        if network != Choice::None {
            network::use_guest_network_namespace(&mut spec);
        }
        // The bind mounts' host sources are shared live, as --volume's are.
        let mut volumes = Vec::new();
        bundle::rewrite_bind_sources(&mut spec, dir, |bind| -> Result<String, ContainerError> {
            volumes.push(Volume { host: bind.host.clone(), container: bind.destination.clone(), read_only: bind.read_only });
            Ok(share::volume_guest_path(bind.index))
        })?;
        let spec_json = checked_size(spec.to_string())?;
        return Ok(ContainerPlan {
            spec_json,
            rootfs: Some(b.rootfs),
            read_only: b.readonly,
            terminal: b.terminal,
            memory_limit_mib: b.memory_limit.map(|bytes| bytes.div_ceil(1 << 20).min(u32::MAX as u64) as u32),
            quiet_warnings: vec![],
            volumes,
            network,
            publish,
        });
    }
    let volumes = volume::parse_all(&args.volume)?;
    let binds = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| BindMount { source: share::volume_guest_path(i), destination: v.container.clone(), read_only: v.read_only })
        .collect();
    if args.privileged && (!args.cap_add.is_empty() || !args.cap_drop.is_empty()) {
        return Err(ArgsError::CapsWithPrivileged.into());
    }
    let security = args::security_opts(&args.security_opt)?;
    let (uid, gid) = args::user(args.user.as_deref())?;
    let hostname = args::hostname(args.hostname.as_deref())?;
    let caps: Vec<String> = if args.privileged {
        ALL_CAPS.iter().map(|c| c.to_string()).collect()
    } else {
        defaults::capabilities(&args.cap_add, &args.cap_drop)?
    };
    let seccomp = match &security.seccomp {
        SeccompOpt::Default => SeccompChoice::Default,
        SeccompOpt::Unconfined => SeccompChoice::Unconfined,
        SeccompOpt::File(path) => SeccompChoice::Profile(load_profile(path, &caps)?),
    };
    let quiet_warnings = if security.seccomp == SeccompOpt::Default { vec![DEFAULT_PROFILE_WARNING.to_string()] } else { vec![] };
    let options = SpecOptions {
        args: args.command.clone(),
        env: args::command_env(args, lookup)?,
        cwd: args.workdir.clone(),
        terminal: args.tty,
        uid,
        gid,
        hostname,
        read_only: args.read_only,
        privileged: args.privileged,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        seccomp,
        no_new_privileges: security.no_new_privileges,
        memory: args.memory.map(|mib| u64::from(mib) << 20),
        pids_limit: args.pids_limit,
        userns: args.userns.then_some(USERNS_BASE_ID),
        devices: vec![],
        binds,
    };
    let mut spec = default_spec(&options)?;
    if network != Choice::None {
        network::use_guest_network_namespace(&mut spec);
    }
    let spec = checked_size(spec.to_string())?;
    Ok(ContainerPlan {
        spec_json: spec,
        rootfs: args.rootfs.clone(),
        read_only: args.read_only,
        terminal: args.tty,
        memory_limit_mib: args.memory,
        quiet_warnings,
        volumes,
        network,
        publish,
    })
}

/// Reads a seccomp profile (Docker's JSON or OCI `linux.seccomp`) for a container
/// with the bounding set `caps`, and checks it has the shape of `linux.seccomp`.
pub fn load_profile(path: &Path, caps: &[String]) -> Result<Value, ContainerError> {
    let problem = |problem: String| ContainerError::Profile { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| problem(format!("not valid JSON: {e}")))?;
    let seccomp = defaults::seccomp_for_caps(&value, caps).map_err(problem)?;
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(seccomp.clone())
        .map_err(|e| problem(format!("not a seccomp profile: {e}")))?;
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(a: &[&str]) -> VmrunArgs {
        VmrunArgs::try_parse_from(std::iter::once("vmrun").chain(a.iter().copied())).unwrap()
    }

    fn spec_of(a: &[&str]) -> Value {
        serde_json::from_str(&plan(&parse(a), |_| None).unwrap().spec_json).unwrap()
    }

    #[test]
    fn the_command_line_shapes_the_spec() {
        let s = spec_of(&[
            "--hostname",
            "box",
            "-u",
            "1000:1000",
            "--memory",
            "64",
            "--pids-limit",
            "20",
            "--security-opt",
            "no-new-privileges",
            "--",
            "sh",
            "-c",
            "x",
        ]);
        assert_eq!(s["hostname"], "box");
        assert_eq!(s["process"]["args"], serde_json::json!(["sh", "-c", "x"]));
        assert_eq!(s["process"]["user"], serde_json::json!({"uid": 1000, "gid": 1000}));
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(s["linux"]["resources"]["pids"]["limit"], 20);
        assert_eq!(s["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        assert!(s["linux"]["seccomp"].is_object());
        let p = plan(&parse(&["--read-only", "--memory", "64", "true"]), |_| None).unwrap();
        assert!(p.read_only && !p.terminal);
        assert_eq!(p.memory_limit_mib, Some(64));
        assert_eq!(p.quiet_warnings, [DEFAULT_PROFILE_WARNING]);

        let u = spec_of(&["--userns", "true"]);
        assert_eq!(u["linux"]["uidMappings"][0]["hostID"], USERNS_BASE_ID);
        let c = spec_of(&["--cap-drop", "ALL", "--cap-add", "chown", "--security-opt", "seccomp=unconfined", "true"]);
        assert_eq!(c["process"]["capabilities"]["bounding"], serde_json::json!(["CAP_CHOWN"]));
        assert!(c["linux"].get("seccomp").is_none());
    }

    #[test]
    fn volumes_become_bind_mounts_from_the_share() {
        let p = plan(&parse(&["-v", "/srv/data:/data", "--volume", "/etc/hosts:/etc/hosts:ro", "true"]), |_| None).unwrap();
        assert_eq!(p.volumes.len(), 2);
        let s: Value = serde_json::from_str(&p.spec_json).unwrap();
        let binds: Vec<&Value> = s["mounts"].as_array().unwrap().iter().filter(|m| m["type"] == "bind").collect();
        assert_eq!(binds.len(), 2);
        assert_eq!(binds[0]["source"], "/run/palisade/shares/palisade/volumes/0");
        assert_eq!(binds[0]["destination"], "/data");
        assert_eq!(binds[1]["destination"], "/etc/hosts");
        assert_eq!(binds[1]["options"][2], "ro");
        let e = plan(&parse(&["-v", "data:/data", "true"]), |_| None).unwrap_err().to_string();
        assert!(e.contains("named and anonymous volumes"), "{e}");
    }

    #[test]
    fn a_bundles_bind_mounts_are_shared_as_volumes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rw"]},
                {"destination": "/etc/hosts", "source": "hosts", "options": ["bind", "ro"]}
            ]
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let p = plan(&parse(&["--bundle", &dir.path().display().to_string()]), |_| None).unwrap();
        assert_eq!(
            p.volumes,
            [
                Volume { host: "/srv/data".into(), container: "/data".into(), read_only: false },
                Volume { host: dir.path().join("hosts"), container: "/etc/hosts".into(), read_only: true },
            ]
        );
        let s: Value = serde_json::from_str(&p.spec_json).unwrap();
        assert_eq!(s["mounts"][0]["source"], "proc");
        assert_eq!(s["mounts"][1]["source"], "/run/palisade/shares/palisade/volumes/0");
        assert_eq!(s["mounts"][2]["source"], "/run/palisade/shares/palisade/volumes/1");
    }

    #[test]
    fn a_network_puts_the_container_in_the_guests_network_namespace() {
        let kinds = |a: &[&str]| -> Vec<String> {
            spec_of(a)["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap().to_string()).collect()
        };
        assert!(kinds(&["true"]).contains(&"network".to_string()));
        assert!(!kinds(&["--network", "nat", "true"]).contains(&"network".to_string()));
        assert!(!kinds(&["-p", "8080:80", "true"]).contains(&"network".to_string()));
        assert!(!kinds(&["--network", "tap:t0", "true"]).contains(&"network".to_string()));
        assert!(kinds(&["--network", "none", "true"]).contains(&"network".to_string()));
        assert_eq!(kinds(&["--network", "nat", "true"]).len(), 5);
        let p = plan(&parse(&["-p", "8080:80", "true"]), |_| None).unwrap();
        assert_eq!((p.network, p.publish.len()), (Choice::Nat, 1));
        let e = plan(&parse(&["--network", "none", "-p", "8080:80", "true"]), |_| None).unwrap_err().to_string();
        assert!(e.starts_with("--publish is for --network nat"), "{e}");
    }

    #[test]
    fn refusals_are_named() {
        let err = |a: &[&str]| plan(&parse(a), |_| None).unwrap_err().to_string();
        assert!(err(&["--privileged", "--cap-drop", "ALL", "true"]).contains("--privileged"));
        assert!(err(&["--cap-add", "CAP_NOPE", "true"]).contains("CAP_NOPE"));
        assert!(err(&["-u", "root", "true"]).contains("--user"));
        assert!(err(&["--security-opt", "seccomp=/nonexistent.json", "true"]).starts_with("--security-opt seccomp=/nonexistent.json: "));
    }

    #[test]
    fn a_profile_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("p.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .unwrap();
        let s = spec_of(&["--security-opt", &format!("seccomp={}", good.display()), "true"]);
        assert_eq!(s["linux"]["seccomp"]["syscalls"][0]["action"], "SCMP_ACT_KILL_PROCESS");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_EXPLODE"}]}"#).unwrap();
        let e = plan(&parse(&["--security-opt", &format!("seccomp={}", bad.display()), "true"]), |_| None).unwrap_err().to_string();
        assert!(e.contains("not a seccomp profile"), "{e}");
        std::fs::write(&bad, "{\n,").unwrap();
        let e = plan(&parse(&["--security-opt", &format!("seccomp={}", bad.display()), "true"]), |_| None).unwrap_err().to_string();
        assert!(e.contains("not valid JSON") && e.contains("line 2"), "{e}");
    }
}
