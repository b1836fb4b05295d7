//! `palisade-sandbox` as a user meets it without a VM: refusals name what was wrong, exit
//! 125, and leave nothing behind. (Booting sandboxes is the end-to-end tests' part.)

use std::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_palisade-sandbox");

fn cli(root: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(CLI).arg("--root").arg(root).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn refusals_name_what_was_wrong_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sandboxes");
    let (code, _, err) = cli(&root, &["state", "nosuch"]);
    assert_eq!((code, err.trim()), (125, "palisade-sandbox: sandbox nosuch does not exist"));
    let (code, _, err) = cli(&root, &["stop", "../etc"]);
    assert_eq!(code, 125);
    assert!(err.contains("../etc"), "{err}");
    let (code, out, _) = cli(&root, &["list"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    let (code, _, err) = cli(&root, &["exec", "nosuch", "--", "true"]);
    assert_eq!((code, err.trim()), (125, "palisade-sandbox: sandbox nosuch does not exist"));
    // A root filesystem that does not exist is named before any VM or state.
    let kind = palisade_vmm::host::probe_kvm_host();
    if kind != palisade_vmm::host::KvmHostKind::Missing {
        let (code, _, err) = cli(&root, &["start", "s1", "--rootfs", "/nonexistent/rootfs"]);
        assert_eq!(code, 125, "{err}");
        if kind == palisade_vmm::host::KvmHostKind::Pvm {
            assert!(err.contains("PVM"), "a PVM host is said at once: {err}");
        } else {
            assert!(err.contains("/nonexistent/rootfs"), "{err}");
        }
        assert!(!root.join("s1").exists(), "a refused start left its sandbox behind");
    }
}
