//! The guest physical address space.
//!
//! ```text
//! 0x0000_0500  boot GDT              0x0000_6000  PVH hvm_start_info (+ module list)
//! 0x0000_0520  boot IDT (empty)      0x0000_7000  zero page (bzImage) / PVH memory map
//! 0x0000_8ff0  boot stack top        0x0000_9000  identity page tables (64-bit entry)
//! 0x0002_0000  kernel command line   0x0009_fc00  MP table (last KiB of base memory)
//! 0x0010_0000  high memory: kernel, then RAM up to the 32-bit MMIO gap, initrd at its top
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 the rest of RAM when the guest has more than 3 GiB
//! ```

/// Boot GDT (used by both entry protocols).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT: empty, the kernel installs its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`; EBX points here at the PVH entry.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after `hvm_start_info`.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map table.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol `boot_params` ("zero page"); RSI points here at the 64-bit entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line x86 Linux accepts (`COMMAND_LINE_SIZE`), including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: base memory usable as RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives in the last KiB of base memory, where Linux scans for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// Size reserved for the MP table.
pub const MPTABLE_SIZE: u64 = 0x400;
/// Start of high memory: kernels are loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Where the 32-bit MMIO gap starts: RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// First address above the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of each virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio-mmio device; each next device takes the next GSI but
/// [`KVM_RTC_GSI`].
pub const VIRTIO_GSI_START: u32 = 5;
/// The GSI KVM keeps for the legacy RTC (its `RTC_GSI`). KVM tracks the EOI of every
/// interrupt on it, so the guest's end-of-interrupt for that pin is a trapped APIC write
/// where other edge pins take the paravirtual EOI (no exit): a virtio device there costs
/// one more exit per interrupt. No device of ours is an RTC; virtio devices skip it.
pub const KVM_RTC_GSI: u32 = 8;
/// Last GSI the IOAPIC has (24 pins).
pub const IOAPIC_LAST_GSI: u32 = 23;
/// Legacy serial port COM1 and its IRQ.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_SIZE: u64 = 0x8;
pub const SERIAL_GSI: u32 = 4;
/// i8042 keyboard controller ports (data 0x60, command/status 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_SIZE: u64 = 0x5;
/// IOAPIC and local APIC register windows.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
pub const LAPIC_START: u64 = 0xfee0_0000;
pub const LAPIC_SIZE: u64 = 0x1000;
/// KVM_SET_TSS_ADDRESS: three pages just below the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The guest RAM regions for `mem_size` bytes: one below the 32-bit MMIO gap, and a second
/// above 4 GiB for what does not fit under it.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
    }
}

/// The MMIO window and GSI of the `index`-th virtio device, `None` past the IOAPIC's pins.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    let gsi = virtio_gsis().nth(index)?;
    Some((VIRTIO_MMIO_START + u64::try_from(index).ok()? * VIRTIO_MMIO_SIZE, gsi))
}

/// How many virtio devices have a slot.
pub fn virtio_slot_count() -> usize {
    virtio_gsis().count()
}

fn virtio_gsis() -> impl Iterator<Item = u32> {
    (VIRTIO_GSI_START..=IOAPIC_LAST_GSI).filter(|&gsi| gsi != KVM_RTC_GSI)
}

/// Kind of a memory map entry (E820 / PVH memmap types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Ram = 1,
    Reserved = 2,
}

/// One entry of the memory map the guest is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// The memory map for a guest with `mem_size` bytes of RAM (at least [`HIMEM_START`]),
/// sorted by address: base memory, the MP table (reserved), high memory (split around the
/// MMIO gap), and the IOAPIC and LAPIC windows (reserved).
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let ram = |addr, size| MemoryMapEntry { addr, size, kind: MemoryKind::Ram };
    let reserved = |addr, size| MemoryMapEntry { addr, size, kind: MemoryKind::Reserved };
    let mut map = vec![ram(0, EBDA_START), reserved(MPTABLE_START, MPTABLE_SIZE)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end - HIMEM_START));
    }
    map.push(reserved(IOAPIC_START, IOAPIC_SIZE));
    map.push(reserved(LAPIC_START, LAPIC_SIZE));
    if mem_size > MMIO_GAP_START {
        map.push(ram(MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// End of the RAM below the MMIO gap (where the initrd is placed under).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_ram_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_guest_ram_is_split_around_the_mmio_gap() {
        let four_gib = 4u64 << 30;
        assert_eq!(ram_regions(four_gib), vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        let map = memory_map(four_gib);
        let ram: u64 = map.iter().filter(|e| e.kind == MemoryKind::Ram).map(|e| e.size).sum();
        // All RAM but the legacy hole [EBDA_START, HIMEM_START) is reported.
        assert_eq!(ram, four_gib - (HIMEM_START - EBDA_START));
        assert!(map.iter().all(|e| e.kind == MemoryKind::Reserved || e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }

    #[test]
    fn memory_map_is_sorted_and_reserves_mptable_and_apics() {
        let map = memory_map(256 << 20);
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        for addr in [MPTABLE_START, IOAPIC_START, LAPIC_START] {
            let entry = map.iter().find(|e| e.addr == addr).expect("entry");
            assert_eq!(entry.kind, MemoryKind::Reserved);
        }
        assert_eq!(map[2], MemoryMapEntry { addr: HIMEM_START, size: (256 << 20) - HIMEM_START, kind: MemoryKind::Ram });
    }

    #[test]
    fn virtio_slots_follow_each_other_skip_kvms_rtc_pin_and_stop_at_the_last_ioapic_pin() {
        assert_eq!(virtio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_slot(2), Some((0xd000_2000, 7)));
        assert_eq!(virtio_slot(3), Some((0xd000_3000, 9)), "KVM's RTC pin is skipped");
        assert_eq!(virtio_slot(17), Some((0xd001_1000, 23)));
        assert_eq!(virtio_slot(18), None);
        assert_eq!(virtio_slot_count(), 18);
    }
}
