//! vCPUs: creation and configuration, and one thread per vCPU running `KVM_RUN`.
//!
//! A vCPU thread handles the exits that need the VMM (port I/O and MMIO go to the buses;
//! everything else ends the VM with a reason) until the VM's [`ExitSignal`] says stop.
//! Stopping kicks each thread out of `KVM_RUN` with a signal (re-sent until the thread has
//! ended, so a kick that lands just before the thread enters `KVM_RUN` is not lost) and
//! joins it: once [`RunningVcpus::stop`] returns no vCPU thread is left.

use std::sync::{mpsc, Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_lapic_state, CpuId, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, Killable, SIGRTMIN};

use crate::arch::x86_64::regs::{self, BootEntry, RegsError};
use crate::arch::x86_64::{cpuid, msr};
use crate::config::VmExit;
use crate::devices::bus::Bus;
use crate::exit::ExitSignal;
use crate::jail::seccomp::VcpuSandbox;

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// How often a stopping vCPU thread is kicked again until it has ended.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {id}: KVM_CREATE_VCPU: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {source}")]
    Cpuid { id: u8, source: cpuid::CpuidError },
    #[error("vCPU {id}: {source}")]
    Msrs { id: u8, source: msr::MsrError },
    #[error("vCPU {id}: {source}")]
    Regs { id: u8, source: RegsError },
    #[error("vCPU {id}: local APIC (KVM_GET_LAPIC/KVM_SET_LAPIC): {source}")]
    Lapic { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("vCPU {id}: starting its thread: {source}")]
    Spawn { id: u8, source: std::io::Error },
}

/// A configured vCPU, ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

/// Sets the delivery mode (bits 8..11) of a LVT register value.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as a PC BIOS leaves them.
fn setup_lint(fd: &VcpuFd, id: u8) -> Result<(), VcpuError> {
    let mut lapic = fd.get_lapic().map_err(|source| VcpuError::Lapic { id, source })?;
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
    fd.set_lapic(&lapic).map_err(|source| VcpuError::Lapic { id, source })
}

/// Creates and configures `count` vCPUs. vCPU 0 gets the boot state for `entry`; the
/// others wait for INIT/SIPI from it.
pub fn create_vcpus(
    vm: &VmFd,
    base_cpuid: &CpuId,
    count: u8,
    entry: BootEntry,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
) -> Result<Vec<Vcpu>, VcpuError> {
    (0..count)
        .map(|id| {
            let fd = vm.create_vcpu(u64::from(id)).map_err(|source| VcpuError::Create { id, source })?;
            cpuid::setup_cpuid(&fd, base_cpuid, id, count).map_err(|source| VcpuError::Cpuid { id, source })?;
            msr::setup_msrs(&fd).map_err(|source| VcpuError::Msrs { id, source })?;
            if id == 0 {
                regs::setup_boot_cpu(&fd, entry).map_err(|source| VcpuError::Regs { id, source })?;
            } else {
                regs::setup_ap_fpu(&fd).map_err(|source| VcpuError::Regs { id, source })?;
            }
            setup_lint(&fd, id)?;
            Ok(Vcpu { id, fd, pio: pio.clone(), mmio: mmio.clone(), exit: exit.clone() })
        })
        .collect()
}

/// The signal that kicks a vCPU thread out of `KVM_RUN` (its seccomp filter allows sending it).
pub(crate) fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is what makes KVM_RUN return EINTR.
}

/// Installs the (empty) handler of the kick signal, once per process.
fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| result = register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal));
    result
}

fn internal_error_reason(fd: &mut VcpuFd) -> String {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal`
    // member of the exit union; reading plain integers from it is sound.
    let internal = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal };
    let what = match internal.suberror {
        KVM_INTERNAL_ERROR_EMULATION => "emulation failure (an instruction KVM cannot emulate; on PVM, a guest kernel without PVM support)",
        KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "failure delivering an event",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown suberror",
    };
    // What KVM adds (for an emulation failure: flags, the instruction's length and bytes, the
    // hardware exit's reason and details), at most its 16 words: numbers, for a bug report.
    let data: Vec<String> =
        internal.data.iter().take((internal.ndata as usize).min(internal.data.len())).map(|w| format!("{w:#x}")).collect();
    if data.is_empty() {
        format!("{what} (suberror {})", internal.suberror)
    } else {
        format!("{what} (suberror {}; data {})", internal.suberror, data.join(" "))
    }
}

impl Vcpu {
    /// Runs until the VM stops or this vCPU ends it. With a `sandbox`, the thread installs
    /// its seccomp filter before it first enters the guest.
    fn run(mut self, sandbox: Option<VcpuSandbox>) {
        let id = self.id;
        if let Some(sandbox) = sandbox {
            if let Err(e) = sandbox.enter(id) {
                self.exit.request(VmExit::VcpuError { vcpu: id, reason: e.to_string() });
                return;
            }
            if !sandbox.wait_for_start(|| self.exit.is_stopping()) {
                return;
            }
        }
        // The thread inherits the creator's signal mask: make sure kicks get through.
        if let Err(e) = unblock_signal(kick_signal()) {
            tracing::warn!(vcpu = id, "unblocking the kick signal: {e}");
        }
        while !self.exit.is_stopping() {
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.pio.read(u64::from(port), data) {
                        tracing::trace!(vcpu = id, "read from unhandled port {port:#x}");
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !self.pio.write(u64::from(port), data) {
                        tracing::trace!(vcpu = id, "write to unhandled port {port:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        tracing::debug!(vcpu = id, "read from unhandled MMIO address {addr:#x}");
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio.write(addr, data) {
                        tracing::debug!(vcpu = id, "write to unhandled MMIO address {addr:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => continue,
                Ok(VcpuExit::Hlt) => VmExit::Halted { vcpu: id },
                Ok(VcpuExit::Shutdown) => VmExit::TripleFault { vcpu: id },
                Ok(VcpuExit::FailEntry(hardware_reason, _cpu)) => VmExit::FailEntry { vcpu: id, hardware_reason },
                Ok(VcpuExit::InternalError) => VmExit::InternalError { vcpu: id, reason: internal_error_reason(&mut self.fd) },
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VmExit::VcpuError { vcpu: id, reason: "the guest reported a crash".into() },
                    other => VmExit::VcpuError { vcpu: id, reason: format!("unknown KVM system event {other}") },
                },
                Ok(other) => VmExit::VcpuError { vcpu: id, reason: format!("unexpected KVM exit {other:?}") },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => VmExit::VcpuError { vcpu: id, reason: format!("KVM_RUN: {e}") },
            };
            tracing::debug!(vcpu = id, %exit, "vCPU exit ends the VM");
            self.exit.request(exit);
        }
    }
}

/// The vCPU threads of a running VM. Dropping it stops them.
pub struct RunningVcpus {
    /// Each thread, and the receiving end of a channel whose sender the thread drops as it
    /// ends (so stopping waits for exactly as long as the thread takes, not a poll period).
    threads: Vec<(u8, JoinHandle<()>, mpsc::Receiver<()>)>,
    exit: Arc<ExitSignal>,
}

/// Starts one thread per vCPU; with a `sandbox`, each installs its seccomp filter first.
pub fn start_vcpus(vcpus: Vec<Vcpu>, exit: Arc<ExitSignal>, sandbox: Option<VcpuSandbox>) -> Result<RunningVcpus, VcpuError> {
    install_kick_handler()?;
    let mut running = RunningVcpus { threads: Vec::with_capacity(vcpus.len()), exit };
    for vcpu in vcpus {
        let id = vcpu.id;
        let (ended_tx, ended_rx) = mpsc::channel::<()>();
        let sandbox = sandbox.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let _ended = ended_tx;
                vcpu.run(sandbox)
            })
            .map_err(|source| VcpuError::Spawn { id, source })?;
        running.threads.push((id, handle, ended_rx));
    }
    Ok(running)
}

impl RunningVcpus {
    /// Stops every vCPU thread and waits for it to end.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        if !self.exit.is_stopping() {
            self.exit.request(VmExit::VcpuError { vcpu: 0, reason: "the VMM stopped the VM".into() });
        }
        for (id, handle, ended) in self.threads.drain(..) {
            while !handle.is_finished() {
                if let Err(e) = handle.kill(kick_signal()) {
                    tracing::warn!("kicking vCPU {id}: {e}");
                }
                // Returns as soon as the thread drops its sender, or after KICK_INTERVAL
                // to kick again.
                if let Err(mpsc::RecvTimeoutError::Disconnected) = ended.recv_timeout(KICK_INTERVAL) {
                    break;
                }
            }
            if handle.join().is_err() {
                tracing::error!("vCPU {id} thread panicked");
            }
        }
    }
}

impl Drop for RunningVcpus {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes_are_set_without_touching_other_bits() {
        let mut lapic = kvm_lapic_state { regs: [0; 1024] };
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        let lvt0 = with_delivery_mode(lapic_reg(&lapic, APIC_LVT0), APIC_MODE_EXTINT);
        assert_eq!(lvt0, 0x0001_0700);
        assert_eq!(with_delivery_mode(0x0001_0000, APIC_MODE_NMI), 0x0001_0400);
        set_lapic_reg(&mut lapic, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0xdead_beef);
    }
}
