//! Boot CPU state: general registers, segment/control registers and the FPU.
//!
//! Two entry protocols:
//! - PVH: 32-bit protected mode, paging off, flat segments, EBX = `hvm_start_info` address.
//! - Linux 64-bit boot protocol: long mode with identity-mapped page tables for the first
//!   GiB, RSI = `boot_params` (zero page) address.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::gdt::{self, LINUX64_GDT, PVH_GDT};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::devices::virtio::GuestMemory;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the boot CPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode at this address.
    Pvh(u64),
    /// Linux boot protocol: 64-bit long mode at this address.
    Linux64(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("vCPU registers: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("vCPU segment registers: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("vCPU FPU state: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("writing the boot {what} to guest memory: {source}")]
    Memory { what: &'static str, source: GuestMemoryError },
}

/// The general registers at entry.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs { rflags: 0x2, ..Default::default() };
    match entry {
        BootEntry::Pvh(rip) => {
            regs.rip = rip;
            regs.rbx = PVH_INFO_START;
        }
        BootEntry::Linux64(rip) => {
            regs.rip = rip;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// Fills the segment and control registers of `sregs` (as read from KVM) for `entry`.
pub fn boot_sregs(sregs: &mut kvm_sregs, entry: BootEntry) {
    let table = match entry {
        BootEntry::Pvh(_) => PVH_GDT,
        BootEntry::Linux64(_) => LINUX64_GDT,
    };
    let code = gdt::segment_from_gdt(table[1], 1);
    let data = gdt::segment_from_gdt(table[2], 2);
    let tss = gdt::segment_from_gdt(table[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match entry {
        BootEntry::Pvh(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
}

/// Writes the boot GDT, an empty IDT and (for the 64-bit entry) identity page tables
/// covering the first GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemory, entry: BootEntry) -> Result<(), RegsError> {
    let table = match entry {
        BootEntry::Pvh(_) => PVH_GDT,
        BootEntry::Linux64(_) => LINUX64_GDT,
    };
    let err = |what| move |source| RegsError::Memory { what, source };
    for (i, descriptor) in table.iter().enumerate() {
        mem.write_obj(*descriptor, GuestAddress(BOOT_GDT_START + 8 * i as u64)).map_err(err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)).map_err(err("IDT"))?;
    if let BootEntry::Linux64(_) = entry {
        const PRESENT_RW: u64 = 0x3;
        const HUGE: u64 = 0x80;
        mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START)).map_err(err("page tables"))?;
        mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START)).map_err(err("page tables"))?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | PRESENT_RW | HUGE, GuestAddress(PDE_START + i * 8)).map_err(err("page tables"))?;
        }
    }
    Ok(())
}

/// The FPU at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// Puts the boot CPU in the entry state. Boot tables must already be in guest memory.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)?;
    let mut sregs = vcpu.get_sregs().map_err(RegsError::SetSregs)?;
    boot_sregs(&mut sregs, entry);
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&boot_regs(entry)).map_err(RegsError::SetRegs)?;
    Ok(())
}

/// Sets only the FPU of an application processor (it waits for INIT/SIPI for the rest).
pub fn setup_ap_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn pvh_entry_is_32_bit_protected_mode_with_start_info_in_ebx() {
        let regs = boot_regs(BootEntry::Pvh(0x0100_0000));
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x0100_0000, PVH_INFO_START, 2));
        let mut sregs = kvm_sregs::default();
        boot_sregs(&mut sregs, BootEntry::Pvh(0));
        assert_eq!(sregs.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((sregs.efer, sregs.cr4), (0, 0));
        assert_eq!((sregs.cs.selector, sregs.cs.db, sregs.cs.l), (8, 1, 0));
        assert_eq!(sregs.ss.selector, 16);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn linux64_entry_is_long_mode_with_zero_page_in_rsi() {
        let regs = boot_regs(BootEntry::Linux64(0x20_0000));
        assert_eq!((regs.rip, regs.rsi, regs.rsp), (0x20_0000, ZERO_PAGE_START, BOOT_STACK_POINTER));
        let mut sregs = kvm_sregs::default();
        boot_sregs(&mut sregs, BootEntry::Linux64(0));
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cr3), (1, 0, PML4_START));
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem, BootEntry::Linux64(0)).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 511 << 21);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, gdt::CODE64);
    }
}
