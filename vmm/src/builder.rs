//! Assembling and running a VM, in one readable sequence: KVM, memory, kernel, devices,
//! command line, boot structures, vCPUs, event loop.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot::{self, BootError};
use crate::arch::x86_64::layout::{
    self, I8042_PORT_BASE, I8042_PORT_SIZE, KVM_TSS_ADDRESS, SERIAL_GSI, SERIAL_PORT_BASE, SERIAL_PORT_SIZE, VIRTIO_MMIO_SIZE,
};
use crate::arch::x86_64::mptable::{self, MptableError, MAX_VCPUS};
use crate::arch::x86_64::{cpuid, regs, reset};
use crate::config::{MacAddr, NetConfig, VmConfig, VmExit};
use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::{Serial, SerialError, I8042};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::interrupt::VIRTIO_MMIO_INT_VRING;
use crate::devices::virtio::mmio::{MmioTransport, INTERRUPT_ACK_OFFSET, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::register_page::{RegisterPage, REGISTER_PAGE_SIZE};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{GuestMemory, IrqTrigger, VirtioDevice};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::exit::ExitSignal;
use crate::jail::seccomp::{SeccompError, StartGate, ThreadFilters};
use crate::jail::{CgroupGate, JailError};
use crate::memory::{self, MemoryError};
use crate::vcpu::{self, VcpuError};

/// Why a VM could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("--cpus {0}: between 1 and {MAX_VCPUS} vCPUs are supported")]
    VcpuCount(u8),
    #[error("no /dev/kvm: this host has no KVM")]
    NoKvm,
    #[error("/dev/kvm: {0} — run as root or add the user to the kvm group")]
    KvmPermission(kvm_ioctls::Error),
    #[error("/dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("{what}: {reason}")]
    Device { what: String, reason: String },
    #[error("too many virtio devices: at most {max} fit the IOAPIC's interrupt lines")]
    TooManyDevices { max: usize },
    #[error("VM exit eventfd: {0}")]
    ExitEvent(io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Jail(#[from] JailError),
}

/// Opens /dev/kvm with an error that says what to do.
fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmmError::NoKvm,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission(e),
        _ => VmmError::KvmOpen(e),
    })
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Gives the VM its in-kernel interrupt controllers (PIC, IOAPIC, LAPICs).
fn create_irqchip(vm: &VmFd) -> Result<(), VmmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS as usize).map_err(kvm_err("KVM_SET_TSS_ADDRESS"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))
}

/// Gives the VM its in-kernel PIT (after [`create_irqchip`]).
fn create_pit(vm: &VmFd) -> Result<(), VmmError> {
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))
}

/// A virtio-mmio transport on the MMIO bus.
struct MmioDevice {
    transport: MmioTransport,
    /// Where KVM sends the driver's used-buffer acknowledgments instead of to the VMM
    /// ([`VirtioAttacher::attach`]). Never read: an eventfd's count stops at its maximum,
    /// and KVM's signalling never blocks.
    _ack_sink: EventFd,
}

impl BusDevice for MmioDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.transport.write(offset, data)
    }
}

/// Wires virtio devices: each gets the next MMIO window and GSI, an irqfd, one ioeventfd per
/// queue on `QueueNotify`, a transport on the MMIO bus, and a place in the event loop.
struct VirtioAttacher<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemory,
    mmio: &'a mut Bus,
    event_loop: &'a mut EventLoop,
    /// (MMIO base, GSI) of each attached device, for the kernel command line.
    slots: Vec<(u64, u32)>,
    /// KVM maps memory read-only (`KVM_CAP_READONLY_MEM`): each device's registers are
    /// then read from a page ([`RegisterPage`]) instead of trapped.
    register_pages: bool,
}

const _: () = assert!(VIRTIO_MMIO_SIZE == REGISTER_PAGE_SIZE as u64, "a register page is one device's window");

impl VirtioAttacher<'_> {
    fn attach<D>(&mut self, device: D) -> Result<(), VmmError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let name = device.name();
        let device_err = |reason: String| VmmError::Device { what: format!("virtio-{name}"), reason };
        let (base, gsi) = layout::virtio_slot(self.slots.len()).ok_or(VmmError::TooManyDevices { max: layout::virtio_slot_count() })?;
        let device = Arc::new(Mutex::new(device));
        // The guest reads the registers from a page KVM maps read-only at the window, without
        // an exit; above all `InterruptStatus`, which the driver reads on every interrupt.
        let page = match self.register_pages {
            true => Some(Arc::new(RegisterPage::new().map_err(|e| device_err(format!("register page: {e}")))?)),
            false => None,
        };
        let irq = match &page {
            Some(page) => IrqTrigger::with_register_page(page.clone()),
            None => IrqTrigger::new(),
        };
        let irq = Arc::new(irq.map_err(|e| device_err(format!("interrupt eventfd: {e}")))?);
        self.vm.register_irqfd(&irq.evt, gsi).map_err(|e| device_err(format!("KVM_IRQFD for GSI {gsi}: {e}")))?;
        {
            let dev = device.lock().unwrap_or_else(|p| p.into_inner());
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                let addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
                self.vm
                    .register_ioevent(evt, &addr, queue as u32)
                    .map_err(|e| device_err(format!("KVM_IOEVENTFD for queue {queue} at {base:#x}: {e}")))?;
            }
        }
        // The driver's acknowledgment of used buffers (`InterruptACK` = 1), which its
        // interrupt handler writes on every interrupt, is completed by KVM and never reaches
        // the VMM: one exit out to the VMM's vCPU thread fewer per interrupt. The used-buffer
        // bit of `InterruptStatus` then stays set once raised, so the driver looks at its
        // used rings on every interrupt of the device, which a driver must cope with anyway
        // (a device whose queues a vhost-user backend serves always shows it: `IrqTrigger`).
        // Any other value (one with the configuration bit) still reaches the transport.
        let ack_sink = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_err(format!("acknowledgment eventfd: {e}")))?;
        self.vm
            .register_ioevent(&ack_sink, &IoEventAddress::Mmio(base + INTERRUPT_ACK_OFFSET), VIRTIO_MMIO_INT_VRING)
            .map_err(|e| device_err(format!("KVM_IOEVENTFD for InterruptACK at {base:#x}: {e}")))?;
        let transport =
            MmioTransport::with_register_page(self.mem.clone(), device.clone() as Arc<Mutex<dyn VirtioDevice>>, irq, page.clone());
        if let Some(page) = &page {
            let slot = memory::FIRST_REGISTER_PAGE_SLOT + self.slots.len() as u32;
            // SAFETY: the page lives as long as its transport, which the MMIO bus, and so the
            // vCPUs, hold until the VM has stopped running.
            unsafe { memory::register_read_only(self.vm, slot, base, page.host_address(), VIRTIO_MMIO_SIZE) }
                .map_err(|e| device_err(format!("register page at {base:#x}: {e}")))?;
        }
        self.mmio.insert(Arc::new(Mutex::new(MmioDevice { transport, _ack_sink: ack_sink })), base, VIRTIO_MMIO_SIZE)?;
        self.event_loop.add(device);
        tracing::debug!(device = name, base = format_args!("{base:#x}"), gsi, "virtio device attached");
        self.slots.push((base, gsi));
        Ok(())
    }
}

/// Opens the tap of virtio-net device `net` in its network namespace (the caller's when it
/// names none). An error names the tap and the namespace.
pub fn open_tap(net: &NetConfig) -> Result<Tap, String> {
    let place = || net.netns.as_ref().map(|p| format!(" in network namespace {}", p.display())).unwrap_or_default();
    match crate::netns::in_netns(net.netns.as_deref(), || Tap::open(&net.tap)) {
        Ok(Ok(tap)) => Ok(tap),
        Ok(Err(e)) => Err(format!("tap {}{}: {e}", net.tap, place())),
        Err(e) => Err(format!("tap {}: {e}", net.tap)),
    }
}

/// Creates the virtio devices `config` asks for, in a fixed order: disks (so the first is
/// `/dev/vda`), vsock, rng, virtio-fs, virtio-net. `fs_streams` are the virtio-fs backends'
/// connections when the caller made them (the jail does: the jailed VMM cannot reach their
/// sockets), one per `config.fs` entry; otherwise each backend's socket is connected here.
/// `taps` are likewise the virtio-net devices' taps.
fn attach_virtio_devices(
    config: &VmConfig,
    vsock_listener: Option<UnixListener>,
    fs_streams: Vec<UnixStream>,
    taps: Vec<OwnedFd>,
    attacher: &mut VirtioAttacher<'_>,
) -> Result<(), VmmError> {
    for disk in &config.disks {
        let block = Block::new(&disk.path, disk.read_only)
            .and_then(|block| block.with_rate_limits(disk.read_rates, disk.write_rates))
            .map_err(|e| VmmError::Device { what: format!("disk {}", disk.path.display()), reason: e.to_string() })?;
        attacher.attach(block)?;
    }
    if let Some(vsock) = &config.vsock {
        let device = match vsock_listener {
            Some(listener) => Vsock::with_listener(vsock.guest_cid, &vsock.uds_path, listener),
            None => Vsock::new(vsock.guest_cid, &vsock.uds_path),
        };
        let device =
            device.map_err(|e| VmmError::Device { what: format!("vsock socket {}", vsock.uds_path.display()), reason: e.to_string() })?;
        attacher.attach(device)?;
    }
    if config.rng {
        let rng = Rng::with_rates(config.rng_rates).map_err(|e| VmmError::Device { what: "virtio-rng".into(), reason: e.to_string() })?;
        attacher.attach(rng)?;
    }
    let mut fs_streams = fs_streams.into_iter();
    for fs in &config.fs {
        let what = || format!("virtio-fs {:?}", fs.tag);
        let stream = match fs_streams.next() {
            Some(stream) => stream,
            None => UnixStream::connect(&fs.socket)
                .map_err(|e| VmmError::Device { what: what(), reason: format!("vhost-user socket {}: {e}", fs.socket.display()) })?,
        };
        let device = Fs::new(&fs.tag, stream).map_err(|e| VmmError::Device { what: what(), reason: e.to_string() })?;
        attacher.attach(device)?;
    }
    let mut taps = taps.into_iter();
    for net in &config.net {
        let what = || format!("virtio-net on tap {}", net.tap);
        let tap = match taps.next() {
            Some(fd) => Tap::from_fd(fd),
            None => open_tap(net).map_err(|reason| VmmError::Device { what: what(), reason })?,
        };
        let mac = net.mac.unwrap_or_else(MacAddr::random);
        let device = Net::new(tap, mac.0, net.mtu)
            .and_then(|n| n.with_rate_limits(net.rx_rates, net.tx_rates))
            .map_err(|e| VmmError::Device { what: what(), reason: e.to_string() })?;
        attacher.attach(device)?;
    }
    Ok(())
}

/// What the host jail ([`crate::jail`]) adds to a run; the default adds nothing.
#[derive(Default)]
pub struct RunOptions {
    /// The vsock device's listening socket, bound by the caller (the jail binds it at the
    /// caller's path before entering a root that does not contain it).
    pub vsock_listener: Option<UnixListener>,
    /// Connections to the virtio-fs backends, one per `VmConfig::fs` entry, made by the
    /// caller (the jail connects before entering its root); empty: connect here.
    pub fs_streams: Vec<UnixStream>,
    /// The virtio-net devices' taps, one per `VmConfig::net` entry, opened by the caller
    /// (the jail opens them in their namespaces); empty: open them here.
    pub taps: Vec<OwnedFd>,
    /// The file for guest RAM when a vhost-user backend maps it too, made by the caller
    /// (the jail makes it on a tmpfs that backs it with huge pages: [`crate::jail::guest_ram`]);
    /// `None`: a memfd.
    pub guest_ram: Option<std::fs::File>,
    /// Seccomp filters: each vCPU thread installs its own as it starts, this thread the
    /// event loop's once the vCPU threads are started; only then does any vCPU enter the
    /// guest.
    pub seccomp: Option<ThreadFilters>,
    /// Where the jailed VMM waits to be in its cgroups: before anything is written into
    /// guest memory and before any vCPU thread exists.
    pub cgroup_gate: Option<CgroupGate>,
}

/// Boots the VM `config` describes and runs it until it stops; returns why it stopped.
/// All vCPU threads have ended when this returns, whatever the outcome.
pub fn run_vm(config: VmConfig) -> Result<VmExit, VmmError> {
    run_vm_with(config, RunOptions::default())
}

/// [`run_vm`], with what the host jail adds.
pub fn run_vm_with(config: VmConfig, options: RunOptions) -> Result<VmExit, VmmError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmmError::VcpuCount(config.vcpus));
    }
    let mem_size = u64::from(config.memory_mib) << 20;

    let kvm = open_kvm()?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    // A vhost-user backend maps guest memory itself: it must be a file then.
    let backing = match (config.fs.is_empty(), options.guest_ram) {
        (true, _) => memory::Backing::Anonymous,
        (false, Some(file)) => memory::Backing::File(file),
        (false, None) => memory::Backing::Memfd,
    };
    let mem = memory::create_guest_memory(config.memory_mib, backing)?;

    // Guest memory first. Each of these steps waits for an SRCU grace period in KVM (new
    // memory slots, the interrupt controllers' I/O devices and routing), and on these hosts
    // the first waits of a new VM are quick (~0.1 ms) while one that follows them closely
    // takes 4-7 ms: registered after the interrupt controllers and PIT, the memory was the
    // largest single item of a start-up. (The PIT must come after the interrupt controllers.
    // The VM's teardown takes as long in either order: tearing the PIT down waits for grace
    // periods of its own.)
    memory::register_guest_memory(&vm, &mem)?;
    create_irqchip(&vm)?;
    create_pit(&vm)?;

    let base_cpuid = cpuid::supported_cpuid(&kvm)?;
    if let Some(gate) = options.cgroup_gate {
        gate.wait()?;
    }
    let kernel = boot::load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, &kernel, mem_size)?),
        None => None,
    };
    tracing::debug!(kernel = %config.kernel.display(), format = %kernel.format, entry = ?kernel.entry, "kernel loaded");

    let exit = Arc::new(ExitSignal::new().map_err(VmmError::ExitEvent)?);
    let mut event_loop = EventLoop::new(exit.clone())?;
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    let serial = Serial::new(&config.serial)?;
    vm.register_irqfd(serial.irq_evt(), SERIAL_GSI).map_err(kvm_err("KVM_IRQFD for the serial port"))?;
    pio.insert(Arc::new(Mutex::new(serial)), SERIAL_PORT_BASE, SERIAL_PORT_SIZE)?;
    pio.insert(Arc::new(Mutex::new(I8042::new(exit.clone()))), I8042_PORT_BASE, I8042_PORT_SIZE)?;

    let register_pages = vm.check_extension(kvm_ioctls::Cap::ReadonlyMem);
    tracing::debug!(register_pages, "virtio-mmio registers read from read-only pages");
    let mut attacher =
        VirtioAttacher { vm: &vm, mem: &mem, mmio: &mut mmio, event_loop: &mut event_loop, slots: Vec::new(), register_pages };
    attach_virtio_devices(&config, options.vsock_listener, options.fs_streams, options.taps, &mut attacher)?;
    let virtio_slots = attacher.slots;

    let cmdline = boot::build_cmdline(&config.cmdline, &virtio_slots)?;
    boot::configure_boot(&mem, &kernel, &cmdline, initrd, mem_size)?;
    mptable::setup_mptable(&mem, config.vcpus)?;
    regs::write_boot_tables(&mem, kernel.entry)?;

    let vcpus = vcpu::create_vcpus(&vm, &base_cpuid, config.vcpus, kernel.entry, Arc::new(pio), Arc::new(mmio), exit.clone())?;
    let gate = Arc::new(StartGate::default());
    let sandbox = options.seccomp.as_ref().map(|filters| filters.vcpu_sandbox(gate.clone()));
    let vcpu_count = vcpus.len();
    let running = vcpu::start_vcpus(vcpus, exit.clone(), sandbox)?;
    if let Some(filters) = &options.seccomp {
        if let Err(e) = filters.apply_event_loop() {
            running.stop();
            return Err(e.into());
        }
    }
    if options.seccomp.is_some() {
        // Once every thread is filtered, the guest may run.
        gate.open_when_arrived(vcpu_count, || exit.is_stopping());
    }
    let outcome = event_loop.run_until_exit(&exit);
    running.stop();
    let outcome = match outcome? {
        VmExit::Reset if reset::warm_reset_requested(&mem) => VmExit::Panic,
        other => other,
    };
    tracing::info!(%outcome, "VM stopped");
    Ok(outcome)
}
