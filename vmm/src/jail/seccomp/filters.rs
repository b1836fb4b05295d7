//! The seccomp allowlists, one per kind of VMM thread, as data.
//!
//! Each entry is a system call the thread may make, optionally restricted by its
//! arguments: the call is allowed if *any* of its [`Check`]s holds (an empty list allows
//! it whatever the arguments). Anything not listed kills the whole VMM process with
//! `SIGSYS` (`SECCOMP_RET_KILL_PROCESS`).
//!
//! The lists cover what a running VM needs once it is built, and nothing the build
//! needs (opening files, creating the VM and its vCPUs, spawning threads): the filters are
//! installed after the build and before the first guest instruction. How the lists were
//! found: `strace -f` of the tiny-guest tests and the device unit tests, plus reading the
//! code of every path a guest can drive (virtio-blk, virtio-net, virtio-vsock, virtio-rng, serial,
//! i8042, the event loop, vCPU stop and teardown). glibc's allocator is held to one arena
//! (see [`crate::jail`]) so it never opens `/proc/sys/vm/overcommit_memory` from a thread.
//!
//! There are no I/O threads: all device I/O runs on the event-loop thread, whose list is
//! therefore the I/O list too.

use libc::{c_long, SYS_accept4, SYS_brk, SYS_clock_gettime, SYS_clock_nanosleep, SYS_close, SYS_connect};
use libc::{SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_wait, SYS_exit, SYS_exit_group, SYS_fcntl, SYS_fdatasync};
use libc::{SYS_fstat, SYS_fsync, SYS_futex, SYS_getpid, SYS_getrandom, SYS_gettid, SYS_ioctl, SYS_lseek};
use libc::{SYS_ftruncate, SYS_timerfd_settime, SYS_write, SYS_writev};
use libc::{SYS_getsockopt, SYS_shutdown, SYS_sigaltstack, SYS_socket, SYS_statx, SYS_tgkill, SYS_timerfd_gettime};
use libc::{SYS_madvise, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_munmap, SYS_nanosleep, SYS_pread64};
use libc::{SYS_preadv, SYS_pwrite64, SYS_pwritev, SYS_read, SYS_readv, SYS_recvfrom, SYS_recvmsg};
use libc::{SYS_rseq, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sched_yield, SYS_sendmsg, SYS_sendto};

/// A condition on one argument of a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Argument `.0` (its low 32 bits) equals `.1`.
    Eq(u8, u32),
    /// Argument `.0` has none of the bits in `.1`.
    NoBits(u8, u64),
    /// Argument `.0` masked with `.1` (its low 32 bits) equals `.2`.
    Masked(u8, u32, u32),
    /// Every one of these holds.
    AllOf(&'static [Check]),
    /// Argument `.0` is the vCPU kick signal (a real-time signal whose number glibc decides
    /// at run time, see [`crate::vcpu`]).
    KickSignal(u8),
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub syscall: c_long,
    pub name: &'static str,
    /// The call is allowed if any holds; empty: always.
    pub any_of: &'static [Check],
}

const fn any(syscall: c_long, name: &'static str) -> Allowed {
    Allowed { syscall, name, any_of: &[] }
}

const fn when(syscall: c_long, name: &'static str, any_of: &'static [Check]) -> Allowed {
    Allowed { syscall, name, any_of }
}

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u32 = 0xae80;
const FIONBIO: u32 = libc::FIONBIO as u32;
const FIOCLEX: u32 = libc::FIOCLEX as u32;
/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`: which offloads a tap hands the guest.
pub const TUNSETOFFLOAD: u32 = libc::TUNSETOFFLOAD as u32;
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// Memory may be (un)mapped and protected, never made executable.
const NO_EXEC_ARG2: &[Check] = &[Check::NoBits(2, PROT_EXEC)];
/// `fcntl` only reads or sets descriptor and status flags (std checks fds it drops with
/// F_GETFD in debug builds; `set_nonblocking` may use F_GETFL/F_SETFL).
const FCNTL_FLAGS: &[Check] = &[
    Check::Eq(1, libc::F_GETFD as u32),
    Check::Eq(1, libc::F_SETFD as u32),
    Check::Eq(1, libc::F_GETFL as u32),
    Check::Eq(1, libc::F_SETFL as u32),
];
/// Signals a thread may send: the vCPU kick, and SIGABRT (a Rust abort).
const TGKILL_SIGNALS: &[Check] = &[Check::KickSignal(2), Check::Eq(2, libc::SIGABRT as u32)];
/// The futex command, without `FUTEX_PRIVATE_FLAG` and `FUTEX_CLOCK_REALTIME`.
const FUTEX_CMD: u32 = 0x7f;
/// The futex operations glibc and Rust's std use for their locks, condition variables and
/// thread joins; not the priority-inheritance ones (`FUTEX_LOCK_PI` and kin, the kernel's
/// most bug-prone futex code: CVE-2014-3153), nothing uses them here.
const FUTEX_OPS: &[Check] = &[
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_WAIT as u32),
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_WAKE as u32),
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_REQUEUE as u32),
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_CMP_REQUEUE as u32),
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_WAKE_OP as u32),
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_WAIT_BITSET as u32),
    Check::Masked(1, FUTEX_CMD, libc::FUTEX_WAKE_BITSET as u32),
];
/// `madvise`: glibc's allocator gives memory back (heap trim, a thread's stack at its end);
/// nothing else is advised once the VM runs.
const MADVISE_FREEING: &[Check] = &[Check::Eq(2, libc::MADV_DONTNEED as u32), Check::Eq(2, libc::MADV_FREE as u32)];
/// `mremap` grows or moves a mapping (glibc's `realloc` of a large block), never onto a
/// chosen address and never keeping the old one.
const MREMAP_MOVE_ONLY: &[Check] = &[Check::NoBits(3, (libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP) as u64)];
/// `statx` of a descriptor the VMM holds (`File::metadata`: an empty path with
/// `AT_EMPTY_PATH`), never a path lookup.
const STATX_FD_ONLY: &[Check] = &[Check::Masked(2, libc::AT_EMPTY_PATH as u32, libc::AT_EMPTY_PATH as u32)];
/// The one socket the VMM makes once running: a Unix stream to `<uds>_<port>` for a
/// guest-initiated vsock connection (with `SOCK_CLOEXEC`/`SOCK_NONBLOCK` in the type's high
/// bits).
const UNIX_STREAM_SOCKET: &[Check] =
    &[Check::AllOf(&[Check::Eq(0, libc::AF_UNIX as u32), Check::Masked(1, 0xf, libc::SOCK_STREAM as u32)])];

/// What every VMM thread needs: memory, locks, signals, time, logging to stderr, ending.
const COMMON: &[Allowed] = &[
    any(SYS_brk, "brk"),
    when(SYS_mmap, "mmap", NO_EXEC_ARG2),
    when(SYS_mprotect, "mprotect", NO_EXEC_ARG2),
    when(SYS_mremap, "mremap", MREMAP_MOVE_ONLY),
    any(SYS_munmap, "munmap"),
    when(SYS_madvise, "madvise", MADVISE_FREEING),
    when(SYS_futex, "futex", FUTEX_OPS),
    any(SYS_rt_sigprocmask, "rt_sigprocmask"),
    any(SYS_rt_sigreturn, "rt_sigreturn"),
    any(SYS_sigaltstack, "sigaltstack"),
    any(SYS_rseq, "rseq"),
    any(SYS_clock_gettime, "clock_gettime"),
    any(SYS_sched_yield, "sched_yield"),
    any(SYS_getpid, "getpid"),
    any(SYS_gettid, "gettid"),
    when(SYS_tgkill, "tgkill", TGKILL_SIGNALS),
    any(SYS_write, "write"),
    any(SYS_writev, "writev"),
    any(SYS_close, "close"),
    when(SYS_fcntl, "fcntl", FCNTL_FLAGS),
    // HashMap keys: a map created on a thread for the first time (a vsock reset on a vCPU).
    any(SYS_getrandom, "getrandom"),
    any(SYS_exit, "exit"),
    any(SYS_exit_group, "exit_group"),
];

/// The event loop: epoll, eventfds, timerfd, virtio-blk file I/O, the vsock Unix sockets
/// (accepting host clients, connecting guest-initiated streams to `<uds>_<port>`), stopping
/// the vCPU threads (kick signal, join, sleep), teardown.
pub const EVENT_LOOP: &[Allowed] = &[
    any(SYS_epoll_wait, "epoll_wait"),
    any(SYS_epoll_pwait, "epoll_pwait"),
    any(SYS_epoll_ctl, "epoll_ctl"),
    any(SYS_read, "read"),
    any(SYS_readv, "readv"),
    any(SYS_pread64, "pread64"),
    any(SYS_preadv, "preadv"),
    any(SYS_pwrite64, "pwrite64"),
    any(SYS_pwritev, "pwritev"),
    any(SYS_lseek, "lseek"),
    any(SYS_fsync, "fsync"),
    any(SYS_fdatasync, "fdatasync"),
    any(SYS_fstat, "fstat"),
    when(SYS_statx, "statx", STATX_FD_ONLY),
    any(SYS_timerfd_settime, "timerfd_settime"),
    any(SYS_timerfd_gettime, "timerfd_gettime"),
    any(SYS_accept4, "accept4"),
    when(SYS_socket, "socket", UNIX_STREAM_SOCKET),
    any(SYS_connect, "connect"),
    any(SYS_getsockopt, "getsockopt"),
    any(SYS_shutdown, "shutdown"),
    any(SYS_sendto, "sendto"),
    any(SYS_sendmsg, "sendmsg"),
    any(SYS_recvfrom, "recvfrom"),
    any(SYS_recvmsg, "recvmsg"),
    // virtio-net: TUNSETOFFLOAD on the tap, once per activation (the device defers it from the
    // vCPU thread that activates it to this one). Its reads and writes of frames are plain
    // `read`/`write`.
    when(SYS_ioctl, "ioctl", &[Check::Eq(1, FIONBIO), Check::Eq(1, FIOCLEX), Check::Eq(1, TUNSETOFFLOAD)]),
    any(SYS_nanosleep, "nanosleep"),
    any(SYS_clock_nanosleep, "clock_nanosleep"),
];

/// A vCPU: `KVM_RUN`, and what its exits drive on this thread: port and MMIO accesses to
/// the serial port (console writes), the i8042 (reset), virtio-mmio registers (activation,
/// reset, queue notification and interrupt eventfds).
/// The console log, written on the vCPU thread, keeps its newest part under a limit by
/// moving it to the front now and then (`devices::legacy::tail_log`): `pread64`,
/// `pwrite64`, `ftruncate`, `lseek` on the descriptors the VMM already holds.
pub const VCPU: &[Allowed] = &[
    when(SYS_ioctl, "ioctl", &[Check::Eq(1, KVM_RUN)]),
    any(SYS_pread64, "pread64"),
    any(SYS_pwrite64, "pwrite64"),
    any(SYS_ftruncate, "ftruncate"),
    any(SYS_lseek, "lseek"),
];

/// What the list of a thread kind is: [`COMMON`] plus its own.
pub fn allowlist(own: &'static [Allowed]) -> impl Iterator<Item = &'static Allowed> {
    COMMON.iter().chain(own.iter())
}
