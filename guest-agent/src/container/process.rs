//! `process`: user and groups, capabilities, rlimits, umask, working directory,
//! no_new_privileges, seccomp placement, environment and the exec — as init actions.

use std::ffi::CString;

use oci_spec::runtime::Process;

use super::capabilities::{last_cap, CapSets};
use super::child::Action;
use super::rlimits;
use super::seccomp::Program;
use crate::process::spawn::exec_candidates;

fn cstring(field: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{field}: contains a NUL byte"))
}

/// The actions from the rlimits to the exec, in the order runc applies them.
/// `seccomp` is installed early (as root) when no_new_privileges is off, since
/// installing it then needs CAP_SYS_ADMIN; otherwise right before exec.
pub fn actions(process: &Process, seccomp: Option<Program>) -> Result<Vec<Action>, String> {
    let mut a = Vec::new();
    for r in rlimits::from_spec(process.rlimits().as_deref().unwrap_or_default())? {
        a.push(Action::Rlimit(r));
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    let mut seccomp = seccomp;
    if !nnp {
        if let Some(p) = seccomp.take() {
            a.push(Action::Seccomp(p));
        }
    }
    let last = last_cap();
    let caps = CapSets::from_spec(process.capabilities().as_ref()).limited_to(last);
    if caps.ambient & !(caps.permitted & caps.inheritable) != 0 {
        return Err("process.capabilities.ambient: every ambient capability must also be permitted and inheritable".into());
    }
    if caps.effective & !caps.permitted != 0 {
        return Err("process.capabilities.effective: every effective capability must also be permitted".into());
    }
    a.push(Action::DropBounding { caps: caps.bounding_drops(last).into_iter().collect() });
    let user = process.user();
    a.push(Action::KeepCaps(true));
    a.push(Action::SetUser { uid: user.uid(), gid: user.gid(), groups: user.additional_gids().clone().unwrap_or_default() });
    a.push(Action::KeepCaps(false));
    a.push(Action::Capset { effective: caps.effective, permitted: caps.permitted, inheritable: caps.inheritable });
    a.push(Action::Ambient { caps: (0..64).filter(|n| caps.ambient & (1u64 << n) != 0).collect() });
    a.push(Action::Umask(user.umask().unwrap_or(0o022)));
    let cwd = process.cwd().to_str().ok_or("process.cwd: not UTF-8")?;
    a.push(Action::Chdir { path: cstring("process.cwd", cwd)? });
    a.push(Action::Barrier);
    if nnp {
        a.push(Action::NoNewPrivs);
    }
    if let Some(p) = seccomp {
        a.push(Action::Seccomp(p));
    }
    a.push(Action::CloseOnExec);
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let program = args.first().ok_or("process.args: empty")?;
    a.push(Action::Exec {
        candidates: exec_candidates(program, &env).iter().map(|c| cstring("process.args[0]", c)).collect::<Result<_, _>>()?,
        argv: args.iter().map(|s| cstring("process.args", s)).collect::<Result<_, _>>()?,
        envp: env.iter().map(|s| cstring("process.env", s)).collect::<Result<_, _>>()?,
    });
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    fn kinds(a: &[Action]) -> Vec<String> {
        a.iter().map(|x| x.describe().split_whitespace().next().unwrap_or("").to_string()).collect()
    }

    fn program() -> Program {
        Program { instructions: vec![], flags: 0, unknown_syscalls: vec![] }
    }

    #[test]
    fn seccomp_goes_last_with_no_new_privileges() {
        let p = process(r#"{"cwd":"/","args":["sh"],"user":{"uid":1000,"gid":1000,"additionalGids":[10]},"noNewPrivileges":true}"#);
        let a = actions(&p, Some(program())).unwrap();
        let barrier = a.iter().position(|x| *x == Action::Barrier).unwrap();
        let nnp = a.iter().position(|x| *x == Action::NoNewPrivs).unwrap();
        let sec = a.iter().position(|x| matches!(x, Action::Seccomp(_))).unwrap();
        assert!(barrier < nnp && nnp < sec && sec < a.len() - 1, "{:?}", kinds(&a));
        assert!(a.contains(&Action::SetUser { uid: 1000, gid: 1000, groups: vec![10] }));
        assert!(matches!(a.last(), Some(Action::Exec { .. })));
    }

    #[test]
    fn seccomp_goes_first_without_no_new_privileges() {
        let p = process(r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}"#);
        let a = actions(&p, Some(program())).unwrap();
        let sec = a.iter().position(|x| matches!(x, Action::Seccomp(_))).unwrap();
        let drop = a.iter().position(|x| matches!(x, Action::DropBounding { .. })).unwrap();
        assert!(sec < drop, "installing the filter needs CAP_SYS_ADMIN: {:?}", kinds(&a));
        assert!(!a.contains(&Action::NoNewPrivs));
    }

    #[test]
    fn capabilities_and_exec() {
        let p = process(
            r#"{"cwd":"/work","args":["ls","-l"],"env":["PATH=/usr/bin:/bin"],"user":{"uid":0,"gid":0,"umask":63},
                "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"],
                "inheritable":["CAP_KILL"],"ambient":["CAP_KILL"]},
                "rlimits":[{"type":"RLIMIT_NOFILE","soft":100,"hard":200}]}"#,
        );
        let a = actions(&p, None).unwrap();
        assert!(a.contains(&Action::Capset { effective: 1 << 5, permitted: 1 << 5, inheritable: 1 << 5 }));
        assert!(a.contains(&Action::Ambient { caps: vec![5] }));
        assert!(a.contains(&Action::Umask(0o077)));
        assert!(a.contains(&Action::Chdir { path: c"/work".to_owned() }));
        let Some(Action::DropBounding { caps }) = a.iter().find(|x| matches!(x, Action::DropBounding { .. })) else { panic!() };
        assert!(!caps.contains(&0) && !caps.contains(&5) && caps.contains(&21));
        let Some(Action::Exec { candidates, argv, .. }) = a.last() else { panic!() };
        assert_eq!(candidates, &[c"/usr/bin/ls".to_owned(), c"/bin/ls".to_owned()]);
        assert_eq!(argv, &[c"ls".to_owned(), c"-l".to_owned()]);
        assert!(matches!(a[0], Action::Rlimit(_)));
    }

    #[test]
    fn inconsistent_capabilities_are_refused() {
        let p = process(
            r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"capabilities":{"ambient":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        );
        assert!(actions(&p, None).unwrap_err().contains("ambient"));
        let p = process(r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"capabilities":{"effective":["CAP_KILL"]}}"#);
        assert!(actions(&p, None).unwrap_err().contains("effective"));
    }
}
