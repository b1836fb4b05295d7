//! `linux.seccomp` compiled to a classic-BPF program with libseccomp (linked
//! statically), before the container's init is forked: the init only installs the
//! finished program with seccomp(2), an async-signal-safe system call.
//!
//! Semantics follow runc and crun, so profiles written for them (Docker's default)
//! mean the same here: syscall names unknown to libseccomp are skipped with a warning,
//! rules whose action equals the default action are skipped, a rule whose arguments
//! name distinct indices is one rule with all conditions (AND), and a rule naming the
//! same index twice becomes one rule per condition (OR).

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::str::FromStr;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};

/// seccomp(2) operation and flags (linux/seccomp.h).
pub const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
pub const SECCOMP_FILTER_FLAG_TSYNC: libc::c_uint = 1;
pub const SECCOMP_FILTER_FLAG_LOG: libc::c_uint = 2;
pub const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_uint = 4;
pub const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_uint = 32;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("linux.seccomp.{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("linux.seccomp: libseccomp: {what}: {source}")]
    Library { what: String, source: libseccomp::error::SeccompError },
    #[error("linux.seccomp: exporting the BPF program: {0}")]
    Export(std::io::Error),
}

/// A compiled filter, ready for seccomp(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub instructions: Vec<libc::sock_filter>,
    /// SECCOMP_FILTER_FLAG_* from `linux.seccomp.flags`.
    pub flags: libc::c_uint,
    /// Syscall names skipped because libseccomp does not know them.
    pub unknown_syscalls: Vec<String>,
}

impl Program {
    /// Installs the program on the calling thread. Async-signal-safe: one system
    /// call on memory prepared before fork. Needs no_new_privs or CAP_SYS_ADMIN.
    pub fn install(&self) -> Result<(), nix::errno::Errno> {
        let prog = libc::sock_fprog { len: self.instructions.len() as libc::c_ushort, filter: self.instructions.as_ptr() as *mut _ };
        // SAFETY: `prog` points at `len` valid instructions owned by `self`, alive for
        // the whole call; the kernel copies the program.
        let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, self.flags, &prog as *const libc::sock_fprog) };
        nix::errno::Errno::result(r).map(drop)
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SeccompError {
    SeccompError::Invalid { field: field.into(), message: message.into() }
}

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Library { what, source }
}

/// The libseccomp action of an OCI action; `errno_ret` defaults to EPERM like runc.
pub fn action(field: &str, a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction, SeccompError> {
    let errno = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(
            i32::try_from(errno)
                .ok()
                .filter(|e| *e <= 0xffff)
                .ok_or_else(|| invalid(field, format!("errnoRet {errno} is out of range")))?,
        ),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno).map_err(|_| invalid(field, format!("errnoRet {errno} is out of range for SCMP_ACT_TRACE")))?,
        ),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(field, "SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath), which Palisade does not support yet"))
        }
    })
}

fn compare(field: &str, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> Result<ScmpCompareOp, SeccompError> {
    Ok(match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            if value_two.is_none() {
                return Err(invalid(field, "SCMP_CMP_MASKED_EQ needs valueTwo (value is the mask, valueTwo the datum)"));
            }
            ScmpCompareOp::MaskedEqual(value)
        }
    })
}

fn arch(field: &str, name: &str) -> Result<ScmpArch, SeccompError> {
    ScmpArch::from_str(name).map_err(|_| invalid(field, format!("unknown architecture {name}")))
}

fn flag_bits(flags: &[LinuxSeccompFilterFlag]) -> libc::c_uint {
    flags.iter().fold(0, |bits, f| {
        bits | match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
        }
    })
}

/// Builds the libseccomp filter of `seccomp` (exposed for tests that inspect it).
pub fn filter(seccomp: &LinuxSeccomp) -> Result<(ScmpFilterContext, Vec<String>), SeccompError> {
    let default = action("defaultAction", seccomp.default_action(), seccomp.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("creating the filter"))?;
    // The program is installed by the init itself, after no_new_privs as the spec says.
    ctx.set_ctl_nnp(false).map_err(lib("clearing the no_new_privs attribute"))?;
    for (i, a) in seccomp.architectures().iter().flatten().enumerate() {
        let field = format!("architectures[{i}]");
        // oci-spec's Arch serialises as its SCMP_ARCH_* name, which libseccomp parses.
        let name = serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let arch = arch(&field, &name)?;
        ctx.add_arch(arch).map_err(lib(format!("{field} {name}")))?;
    }
    let mut unknown = Vec::new();
    for (i, rule) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("syscalls[{i}]");
        let act = action(&format!("{field}.action"), rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().clone().unwrap_or_default();
        let mut conditions = Vec::with_capacity(args.len());
        for (j, a) in args.iter().enumerate() {
            let afield = format!("{field}.args[{j}]");
            if a.index() > 5 {
                return Err(invalid(afield, format!("index {} is out of range (0-5)", a.index())));
            }
            let op = compare(&afield, a.op(), a.value(), a.value_two())?;
            let datum = if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq { a.value_two().unwrap_or(0) } else { a.value() };
            conditions.push(ScmpArgCompare::new(a.index() as u32, op, datum));
        }
        let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indices.sort_unstable();
        indices.dedup();
        let all_distinct = indices.len() == args.len();
        for name in rule.names() {
            let syscall = match ScmpSyscall::from_name(name) {
                Ok(s) => s,
                Err(_) => {
                    unknown.push(name.clone());
                    continue;
                }
            };
            let what = format!("{field} {name}");
            if conditions.is_empty() {
                ctx.add_rule(act, syscall).map_err(lib(what))?;
            } else if all_distinct {
                ctx.add_rule_conditional(act, syscall, &conditions).map_err(lib(what))?;
            } else {
                for c in &conditions {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c)).map_err(lib(what.clone()))?;
                }
            }
        }
    }
    Ok((ctx, unknown))
}

/// Compiles `seccomp` into a BPF program.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Program, SeccompError> {
    if seccomp.listener_path().is_some() {
        return Err(invalid("listenerPath", "seccomp agents (SCMP_ACT_NOTIFY) are not supported yet"));
    }
    let (ctx, unknown_syscalls) = filter(seccomp)?;
    let bytes = export(&ctx)?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 {
        return Err(SeccompError::Export(std::io::Error::other(format!("libseccomp exported {} bytes", bytes.len()))));
    }
    if bytes.len() / size > libc::BPF_MAXINSNS as usize {
        return Err(invalid("syscalls", format!("the filter has {} instructions, more than the kernel's 4096", bytes.len() / size)));
    }
    let instructions = bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Ok(Program { instructions, flags: flag_bits(seccomp.flags().as_deref().unwrap_or_default()), unknown_syscalls })
}

/// seccomp_export_bpf into a memfd (libseccomp 2.5 has no in-memory export).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"seccomp-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Export(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file).map_err(lib("exporting BPF"))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut bytes)).map_err(SeccompError::Export)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    /// Runs `f` in a forked child with `program` installed; returns the wait status.
    fn in_child(program: &Program, f: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw system calls (prctl, seccomp, the syscall
        // under test, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: see above; the child never returns into the test harness.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if program.install().is_err() {
                    libc::_exit(200);
                }
                libc::_exit(f());
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child into a live local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// getpriority(PRIO_PROCESS, 0): harmless, returns >= 0 when allowed.
    fn call_getpriority() -> i32 {
        // SAFETY: a plain system call without pointers.
        let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
        if r < 0 {
            100 + errno()
        } else {
            0
        }
    }

    fn rule_profile(action: &str) -> Program {
        compile(&profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{{"names":["getpriority"],"action":"{action}","errnoRet":42}}]}}"#
        )))
        .unwrap()
    }

    fn exited(status: i32) -> Option<i32> {
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }
    fn signalled(status: i32) -> Option<i32> {
        libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
    }

    #[test]
    fn allow_lets_the_call_through() {
        assert_eq!(exited(in_child(&rule_profile("SCMP_ACT_ALLOW"), call_getpriority)), Some(0));
    }

    #[test]
    fn errno_returns_the_configured_errno() {
        assert_eq!(exited(in_child(&rule_profile("SCMP_ACT_ERRNO"), call_getpriority)), Some(142));
    }

    #[test]
    fn errno_without_errno_ret_is_eperm() {
        let p = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpriority"],"action":"SCMP_ACT_ERRNO"}]}"#))
            .unwrap();
        assert_eq!(exited(in_child(&p, call_getpriority)), Some(100 + libc::EPERM));
    }

    #[test]
    fn kill_process_kill_thread_and_kill_end_with_sigsys() {
        for a in ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL"] {
            assert_eq!(signalled(in_child(&rule_profile(a), call_getpriority)), Some(libc::SIGSYS), "{a}");
        }
    }

    #[test]
    fn trap_raises_sigsys() {
        // No handler is installed, so SIGSYS's default action ends the process.
        assert_eq!(signalled(in_child(&rule_profile("SCMP_ACT_TRAP"), call_getpriority)), Some(libc::SIGSYS));
    }

    #[test]
    fn log_allows_and_trace_without_a_tracer_is_enosys() {
        assert_eq!(exited(in_child(&rule_profile("SCMP_ACT_LOG"), call_getpriority)), Some(0));
        assert_eq!(exited(in_child(&rule_profile("SCMP_ACT_TRACE"), call_getpriority)), Some(100 + libc::ENOSYS));
    }

    #[test]
    fn default_action_and_default_errno_apply_to_unlisted_calls() {
        // An allowlist: everything but what the child needs fails with errno 7.
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":7,
                "syscalls":[{"names":["exit_group","exit"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(exited(in_child(&p, call_getpriority)), Some(107));
    }

    #[test]
    fn argument_conditions_select_calls() {
        // getpriority(which, who): only which == PRIO_PGRP (1) is refused.
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":9,
                "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(exited(in_child(&p, call_getpriority)), Some(0), "PRIO_PROCESS is allowed");
        fn pgrp() -> i32 {
            // SAFETY: a plain system call without pointers.
            let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PGRP, 0) };
            if r < 0 {
                100 + errno()
            } else {
                0
            }
        }
        assert_eq!(exited(in_child(&p, pgrp)), Some(109));
        // MASKED_EQ: (which & 0x1) == 0x1 is refused too.
        let m = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":9,
                "args":[{"index":0,"value":1,"valueTwo":1,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(exited(in_child(&m, pgrp)), Some(109));
        assert_eq!(exited(in_child(&m, call_getpriority)), Some(0));
    }

    #[test]
    fn unknown_names_are_skipped_and_reported() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_syscall","getpriority"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .unwrap();
        assert_eq!(p.unknown_syscalls, ["no_such_syscall"]);
        assert_eq!(exited(in_child(&p, call_getpriority)), Some(100 + libc::EPERM));
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let notify = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#);
        assert!(compile(&notify).unwrap_err().to_string().contains("syscalls[0].action"));
        let masked = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        assert!(compile(&masked).unwrap_err().to_string().contains("syscalls[0].args[0]"));
        let index = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(compile(&index).unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn flags_are_passed_through() {
        let p =
            compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#))
                .unwrap();
        assert_eq!(p.flags, SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW);
        assert!(!p.instructions.is_empty());
    }
}
