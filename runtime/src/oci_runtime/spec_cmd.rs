//! `spec` (a starting config.json, as `runc spec` writes) and `features` (what this runtime
//! implements, runtime-spec `features.json`).

use std::path::Path;

use serde_json::{json, Value};

use super::RuntimeError;
use crate::oci::defaults::{default_spec, SeccompChoice, SpecOptions};

/// The spec `palisade spec` writes: runc's shape (`sh` on a terminal, a read-only
/// `rootfs`), with Docker's default capabilities and seccomp profile.
pub fn example_spec(rootless: bool) -> Result<Value, RuntimeError> {
    let options = SpecOptions {
        args: vec!["sh".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(), "TERM=xterm".into()],
        cwd: "/".into(),
        terminal: true,
        hostname: Some("palisade".into()),
        read_only: true,
        seccomp: SeccompChoice::Default,
        userns: rootless.then_some(crate::vmrun::args::USERNS_BASE_ID),
        ..SpecOptions::default()
    };
    let mut spec = default_spec(&options).map_err(|e| RuntimeError::Other(e.to_string()))?;
    spec["root"] = json!({"path": "rootfs", "readonly": true});
    // The version this runtime reports (state, features), which other runtimes read too
    // (crun 1.8 refuses 1.2.0).
    spec["ociVersion"] = json!(super::query::OCI_VERSION);
    Ok(spec)
}

/// `spec [--bundle DIR] [--rootless]`: writes DIR/config.json, never over an existing one.
pub fn spec(bundle: &Path, rootless: bool) -> Result<(), RuntimeError> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(RuntimeError::State("File config.json exists. Remove it first".into()));
    }
    let text = serde_json::to_string_pretty(&example_spec(rootless)?).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(|e| RuntimeError::Other(format!("{}: {e}", path.display())))
}

/// `features`.
pub fn features() -> Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": super::query::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "relatime",
                         "norelatime", "strictatime", "noatime", "private", "rprivate", "shared", "rshared", "slave",
                         "rslave", "unbindable", "runbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": crate::oci::defaults::ALL_CAPS.to_vec(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.github.palisade.vm": "every container runs in a KVM micro-VM of its own"}
    })
}
