//! Seccomp filters per VMM thread kind, compiled with `seccompiler` from the allowlists in
//! [`filters`]. A call outside a thread's list kills the whole VMM with `SIGSYS`.
//!
//! When they go in: each vCPU thread installs its filter as it starts
//! ([`VcpuSandbox::enter`]); the event-loop thread installs its own once it has started
//! the vCPU threads ([`ThreadFilters::apply_event_loop`]) and then opens the [`StartGate`]
//! the vCPU threads wait at before their first `KVM_RUN`. So every thread is filtered
//! before the first guest instruction runs. Filters are inherited by threads created
//! later, which is why the event loop's goes in only after the vCPU threads exist: each
//! thread ends up with exactly its own list.

pub mod filters;

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

use filters::{Allowed, Check};

/// The kinds of VMM thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the event loop and all device I/O.
    EventLoop,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::EventLoop => "event loop",
            ThreadKind::Vcpu => "vCPU",
        }
    }

    fn own_list(self) -> &'static [Allowed] {
        match self {
            ThreadKind::EventLoop => filters::EVENT_LOOP,
            ThreadKind::Vcpu => filters::VCPU,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: compiling the {kind} filter: {source}")]
    Compile { kind: &'static str, source: seccompiler::BackendError },
    #[error("seccomp: installing the {kind} filter: {source}")]
    Install { kind: &'static str, source: seccompiler::Error },
}

/// The conditions that must all hold for `check`.
fn conditions(check: Check, kick_signal: libc::c_int) -> Result<Vec<SeccompCondition>, seccompiler::BackendError> {
    let one = match check {
        Check::Eq(arg, value) => SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, u64::from(value)),
        Check::NoBits(arg, bits) => SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(bits), 0),
        Check::Masked(arg, mask, value) => {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(u64::from(mask)), u64::from(value))
        }
        Check::KickSignal(arg) => SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, kick_signal as u64),
        Check::AllOf(checks) => {
            let mut all = Vec::new();
            for check in checks {
                all.extend(conditions(*check, kick_signal)?);
            }
            return Ok(all);
        }
    };
    Ok(vec![one?])
}

/// Compiles the filter of `kind`: its allowlist, everything else `KILL_PROCESS`.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Compile { kind: kind.name(), source };
    let kick = crate::vcpu::kick_signal();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for allowed in filters::allowlist(kind.own_list()) {
        let entry = rules.entry(allowed.syscall).or_default();
        for check in allowed.any_of {
            entry.push(SeccompRule::new(conditions(*check, kick).map_err(err)?).map_err(err)?);
        }
    }
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, TargetArch::x86_64).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// The compiled filters of a VMM.
#[derive(Clone)]
pub struct ThreadFilters {
    event_loop: Arc<BpfProgram>,
    vcpu: Arc<BpfProgram>,
    /// Debug builds only: vCPU threads make a forbidden call once filtered (see
    /// [`VcpuSandbox::enter`]).
    selftest: bool,
}

impl ThreadFilters {
    pub fn compile() -> Result<Self, SeccompError> {
        Ok(ThreadFilters {
            event_loop: Arc::new(compile(ThreadKind::EventLoop)?),
            vcpu: Arc::new(compile(ThreadKind::Vcpu)?),
            selftest: false,
        })
    }

    /// Makes vCPU 0 attempt a forbidden system call right after installing its filter, to
    /// show that a violation kills the VMM. Honoured only in debug builds: a release VMM
    /// has no such code.
    pub fn with_selftest(mut self, selftest: bool) -> Self {
        self.selftest = selftest;
        self
    }

    /// Installs the event-loop filter on the calling thread.
    pub fn apply_event_loop(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.event_loop).map_err(|source| SeccompError::Install { kind: ThreadKind::EventLoop.name(), source })
    }

    /// What a vCPU thread installs before it first runs the guest, and the gate it then
    /// waits at.
    pub fn vcpu_sandbox(&self, gate: Arc<StartGate>) -> VcpuSandbox {
        VcpuSandbox { filter: self.vcpu.clone(), selftest: self.selftest, gate }
    }
}

/// Holds the vCPU threads back until every thread of the VMM is filtered: each vCPU
/// thread arrives (filtered) and waits; the event-loop thread, filtered, waits for all of
/// them to arrive and opens it.
#[derive(Default)]
pub struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    arrived: usize,
    open: bool,
}

/// How often waiters look at their `give_up` condition.
const GATE_POLL: Duration = Duration::from_millis(5);

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A filtered vCPU thread: arrives and waits for the gate to open, or for `give_up`;
    /// whether it opened.
    pub fn arrive_and_wait(&self, give_up: impl Fn() -> bool) -> bool {
        let mut state = self.lock();
        state.arrived += 1;
        self.changed.notify_all();
        while !state.open {
            if give_up() {
                return false;
            }
            state = self.changed.wait_timeout(state, GATE_POLL).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// Waits for `count` vCPU threads to arrive (or for `give_up`), then opens.
    pub fn open_when_arrived(&self, count: usize, give_up: impl Fn() -> bool) {
        let mut state = self.lock();
        while state.arrived < count && !give_up() {
            state = self.changed.wait_timeout(state, GATE_POLL).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.open = true;
        self.changed.notify_all();
    }
}

/// The seccomp filter a vCPU thread installs on itself.
#[derive(Clone)]
pub struct VcpuSandbox {
    filter: Arc<BpfProgram>,
    selftest: bool,
    gate: Arc<StartGate>,
}

impl VcpuSandbox {
    /// Installs the vCPU filter on the calling thread (vCPU `id`).
    pub fn enter(&self, id: u8) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.filter).map_err(|source| SeccompError::Install { kind: ThreadKind::Vcpu.name(), source })?;
        #[cfg(debug_assertions)]
        if self.selftest && id == 0 {
            // Debug builds only, asked for by the operator (PALISADE_VMM_SECCOMP_SELFTEST=1):
            // what a compromised VMM would try first. `openat` is on no allowlist, so the
            // kernel kills the process with SIGSYS before the call returns.
            tracing::warn!("seccomp self-test: vCPU 0 opens /etc/passwd, which its filter forbids");
            // SAFETY: a plain open(2) of a NUL-terminated path; the result is only logged.
            let fd = unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            tracing::error!("seccomp self-test: the forbidden open returned {fd}: the filter is not working");
        }
        #[cfg(not(debug_assertions))]
        let _ = (id, self.selftest);
        Ok(())
    }

    /// Waits until the whole VMM is filtered (or `give_up`); whether the guest may run.
    pub fn wait_for_start(&self, give_up: impl Fn() -> bool) -> bool {
        self.gate.arrive_and_wait(give_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_gate_opens_once_every_vcpu_arrived() {
        let gate = Arc::new(StartGate::default());
        let vcpus: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || gate.arrive_and_wait(|| false))
            })
            .collect();
        gate.open_when_arrived(2, || false);
        assert!(vcpus.into_iter().all(|t| t.join().unwrap()));

        // A VM that stops while starting: nobody waits forever.
        let gate = StartGate::default();
        assert!(!gate.arrive_and_wait(|| true));
        gate.open_when_arrived(5, || true);
    }

    #[test]
    fn filters_compile_and_differ() {
        let event_loop = compile(ThreadKind::EventLoop).unwrap();
        let vcpu = compile(ThreadKind::Vcpu).unwrap();
        assert!(!event_loop.is_empty() && !vcpu.is_empty());
        assert!(event_loop.len() > vcpu.len(), "the vCPU list is the smaller one");
        assert!(event_loop.len() < 4096, "a BPF program holds at most 4096 instructions");
    }

    #[test]
    fn lists_have_no_duplicates_and_keep_dangerous_calls_out() {
        for kind in [ThreadKind::EventLoop, ThreadKind::Vcpu] {
            let mut seen = std::collections::HashSet::new();
            for allowed in filters::allowlist(kind.own_list()) {
                assert!(seen.insert(allowed.syscall), "{} listed twice for {}", allowed.name, kind.name());
            }
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_ptrace,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_bpf,
                libc::SYS_process_vm_writev,
            ] {
                assert!(!seen.contains(&forbidden), "syscall {forbidden} allowed for {}", kind.name());
            }
        }
        // Only vCPU threads may run the guest.
        let vcpu_ioctl = filters::allowlist(filters::VCPU).find(|a| a.syscall == libc::SYS_ioctl).unwrap();
        assert_eq!(vcpu_ioctl.any_of, &[Check::Eq(1, filters::KVM_RUN)]);
        let loop_ioctl = filters::allowlist(filters::EVENT_LOOP).find(|a| a.syscall == libc::SYS_ioctl).unwrap();
        assert!(!loop_ioctl.any_of.contains(&Check::Eq(1, filters::KVM_RUN)));
    }

    /// The calls of [`arguments_are_filtered_where_the_vmm_needs_less_than_the_whole_call`]:
    /// the first five are what the VMM makes, the last five what it must not.
    const CASES: [&str; 10] = [
        "futex WAKE|PRIVATE",
        "socket AF_UNIX SOCK_STREAM|CLOEXEC",
        "madvise DONTNEED",
        "statx of a descriptor",
        "mremap MAYMOVE",
        "futex LOCK_PI",
        "socket AF_UNIX SOCK_DGRAM",
        "madvise HWPOISON",
        "statx of a path",
        "mremap FIXED",
    ];

    /// Makes call `case` of [`CASES`]; its result does not matter, only whether it is killed.
    fn make_call(case: usize) {
        // SAFETY: raw system calls on a local word, a fresh socket, memory this function maps
        // itself, or a path it only looks up; nothing is dereferenced afterwards.
        unsafe {
            let word = 0u32;
            let page = || libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            let mut stat: libc::statx = std::mem::zeroed();
            match case {
                0 => {
                    libc::syscall(libc::SYS_futex, &word, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
                }
                1 => {
                    libc::close(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0));
                }
                2 => {
                    libc::madvise(page(), 4096, libc::MADV_DONTNEED);
                }
                3 => {
                    libc::statx(2, c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_SIZE, &mut stat);
                }
                4 => {
                    libc::mremap(page(), 4096, 8192, libc::MREMAP_MAYMOVE);
                }
                5 => {
                    libc::syscall(libc::SYS_futex, &word, libc::FUTEX_LOCK_PI | libc::FUTEX_PRIVATE_FLAG, 0, 0);
                }
                6 => {
                    libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
                }
                7 => {
                    libc::madvise(page(), 4096, libc::MADV_HWPOISON);
                }
                8 => {
                    libc::statx(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0, libc::STATX_SIZE, &mut stat);
                }
                _ => {
                    libc::mremap(page(), 4096, 4096, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, 0x7000_0000usize as *mut libc::c_void);
                }
            }
        }
    }

    /// Runs `call` in a child process under the filter of `kind`; returns how the child
    /// ended: `Ok(code)` for an exit, `Err(signal)` for a signal (so a kill does not take
    /// the test binary down).
    fn under_filter(kind: ThreadKind, call: impl FnOnce()) -> Result<i32, i32> {
        let filter = compile(kind).unwrap();
        // SAFETY: the child installs the filter, makes raw system calls and _exits; the
        // parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if seccompiler::apply_filter(&filter).is_err() {
                    libc::_exit(2);
                }
                call();
                libc::_exit(0);
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            if libc::WIFSIGNALED(status) {
                Err(libc::WTERMSIG(status))
            } else {
                Ok(libc::WEXITSTATUS(status))
            }
        }
    }

    /// The argument filters: what the VMM uses passes, the rest of each call is SIGSYS.
    #[test]
    fn arguments_are_filtered_where_the_vmm_needs_less_than_the_whole_call() {
        for (case, what) in CASES.iter().enumerate() {
            let expected = if case < 5 { Ok(0) } else { Err(libc::SIGSYS) };
            assert_eq!(under_filter(ThreadKind::EventLoop, || make_call(case)), expected, "{what}");
        }
    }

    /// A filtered thread runs what its list allows and dies on the rest; run in a child
    /// process so the kill does not take the test binary down.
    #[test]
    fn a_forbidden_call_kills_the_process_with_sigsys() {
        let opened = under_filter(ThreadKind::Vcpu, || {
            // SAFETY: a plain open of a path; the descriptor is never used.
            unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
        });
        assert_eq!(opened, Err(libc::SIGSYS));
    }
}
