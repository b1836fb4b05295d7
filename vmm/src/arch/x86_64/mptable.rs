//! The Intel MultiProcessor Specification 1.4 table.
//!
//! The guest kernel has no ACPI, so this is how it finds its CPUs, the IOAPIC and how the
//! ISA interrupts are wired: a floating pointer structure followed by a configuration
//! table with one processor entry per vCPU, an ISA bus, the IOAPIC, one interrupt source
//! per IOAPIC pin (identity-mapped) and the local interrupts (LINT0 = ExtINT, LINT1 = NMI).
//! It sits in the last KiB of base memory, where Linux scans for it.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{IOAPIC_LAST_GSI, IOAPIC_START, LAPIC_START, MPTABLE_SIZE, MPTABLE_START};
use crate::devices::virtio::GuestMemory;

/// Most vCPUs the table (and so the VMM) supports: what fits in the 1 KiB reserved for it.
pub const MAX_VCPUS: u8 = 32;

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPC_OEM: &[u8; 8] = b"PALISADE";
const MPC_PRODUCT_ID: &[u8; 12] = b"MICROVM     ";
const MP_SPEC_REVISION: u8 = 4;
const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// CPU signature (family 6) and feature flags (FPU, APIC) of each processor entry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// Polarity and trigger mode "conforms to the bus".
const MP_IRQFLAG_DEFAULT: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs".
const MP_APIC_ALL: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("MP table: {0} vCPUs requested, between 1 and {MAX_VCPUS} are supported")]
    VcpuCount(u8),
    #[error("MP table: writing it to guest memory at {MPTABLE_START:#x}: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

/// The IOAPIC's ID: right after the vCPUs' local APIC IDs.
pub fn ioapic_id(vcpu_count: u8) -> u8 {
    vcpu_count
}

/// The table's bytes for `vcpu_count` vCPUs, to be placed at `base`.
pub fn build_mptable(vcpu_count: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if vcpu_count == 0 || vcpu_count > MAX_VCPUS {
        return Err(MptableError::VcpuCount(vcpu_count));
    }
    let ioapic_id = ioapic_id(vcpu_count);
    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..vcpu_count {
        let flags = if cpu == 0 { CPU_ENABLED | CPU_BOOTPROCESSOR } else { CPU_ENABLED };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;
    for irq in 0..=IOAPIC_LAST_GSI as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT]);
        entries.extend_from_slice(&MP_IRQFLAG_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
        entry_count += 1;
    }
    for (irq_type, dest_apic, lint) in [(MP_IRQ_EXTINT, 0, 0), (MP_IRQ_NMI, MP_APIC_ALL, 1)] {
        entries.extend_from_slice(&[MP_LINTSRC, irq_type]);
        entries.extend_from_slice(&MP_IRQFLAG_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, dest_apic, lint]);
        entry_count += 1;
    }

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(MPC_SIGNATURE);
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(MP_SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend_from_slice(MPC_OEM);
    table.extend_from_slice(MPC_PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&((base + MPF_SIZE as u64) as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte paragraphs
    mpf.push(MP_SPEC_REVISION);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0; 5]); // feature bytes: 0 = configuration table present
    mpf[10] = checksum(&mpf);

    let mut out = mpf;
    out.extend_from_slice(&table);
    debug_assert!(out.len() as u64 <= MPTABLE_SIZE);
    Ok(out)
}

/// Writes the MP table for `vcpu_count` vCPUs to guest memory.
pub fn setup_mptable(mem: &GuestMemory, vcpu_count: u8) -> Result<(), MptableError> {
    let bytes = build_mptable(vcpu_count, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START)).map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_valid() {
        for cpus in [1, 2, 7, MAX_VCPUS] {
            let bytes = build_mptable(cpus, MPTABLE_START).unwrap();
            assert_eq!(sum(&bytes[..MPF_SIZE]), 0, "floating pointer, {cpus} cpus");
            let len = u16::from_le_bytes([bytes[MPF_SIZE + 4], bytes[MPF_SIZE + 5]]) as usize;
            assert_eq!(len, bytes.len() - MPF_SIZE);
            assert_eq!(sum(&bytes[MPF_SIZE..MPF_SIZE + len]), 0, "config table, {cpus} cpus");
            assert!(bytes.len() as u64 <= MPTABLE_SIZE);
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let bytes = build_mptable(2, MPTABLE_START).unwrap();
        assert_eq!(&bytes[0..4], b"_MP_");
        let ptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, MPTABLE_START + 16);
        assert_eq!(&bytes[16..20], b"PCMP");
        assert_eq!(bytes[9], 4, "spec revision 1.4");
    }

    #[test]
    fn has_one_processor_per_vcpu_then_bus_ioapic_and_interrupts() {
        let cpus = 3;
        let bytes = build_mptable(cpus, MPTABLE_START).unwrap();
        let table = &bytes[MPF_SIZE..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        assert_eq!(u32::from_le_bytes(table[36..40].try_into().unwrap()), 0xfee0_0000);
        let mut at = MPC_HEADER_SIZE;
        for cpu in 0..cpus {
            assert_eq!(table[at], MP_PROCESSOR);
            assert_eq!(table[at + 1], cpu, "APIC ID");
            assert_eq!(table[at + 3] & CPU_BOOTPROCESSOR != 0, cpu == 0);
            at += 20;
        }
        assert_eq!(&table[at..at + 8], b"\x01\x00ISA   ");
        at += 8;
        assert_eq!(table[at], MP_IOAPIC);
        assert_eq!(table[at + 1], ioapic_id(cpus));
        assert_eq!(u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap()), 0xfec0_0000);
        at += 8;
        for irq in 0..24u8 {
            assert_eq!(table[at..at + 8], [MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id(cpus), irq]);
            at += 8;
        }
        assert_eq!(table[at + 1], MP_IRQ_EXTINT);
        assert_eq!(table[at + 9], MP_IRQ_NMI);
        assert_eq!(at + 16, table.len());
    }

    #[test]
    fn refuses_zero_or_too_many_vcpus() {
        assert!(matches!(build_mptable(0, MPTABLE_START), Err(MptableError::VcpuCount(0))));
        assert!(build_mptable(MAX_VCPUS + 1, MPTABLE_START).is_err());
    }
}
