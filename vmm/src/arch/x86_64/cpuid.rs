//! The CPUID a vCPU sees: what KVM supports, filtered.
//!
//! Each vCPU gets its own APIC ID (leaves 0x1, 0xB, 0x1F) and a topology of one socket with
//! one thread per core; the hypervisor bit is set; nested virtualization (VMX/SVM), the PMU
//! (leaf 0xA), thermal/power management (leaf 0x6) and the MSRs behind them are hidden.
//! The KVM paravirtual leaves (0x4000_0000..) are kept as KVM reports them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

// Leaf 0x1.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
const LEAF1_EBX_CPU_COUNT_SHIFT: u32 = 16;
const LEAF1_ECX_DTES64: u32 = 1 << 2;
const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_DS_CPL: u32 = 1 << 4;
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_EIST: u32 = 1 << 7;
const LEAF1_ECX_TM2: u32 = 1 << 8;
const LEAF1_ECX_PDCM: u32 = 1 << 15;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_DS: u32 = 1 << 21;
const LEAF1_EDX_ACPI: u32 = 1 << 22;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF1_EDX_TM: u32 = 1 << 29;
const LEAF1_EDX_PBE: u32 = 1 << 31;
// Leaf 0x8000_0001.
const EXT1_ECX_SVM: u32 = 1 << 2;
// Leaf 0xB / 0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Supported(kvm_ioctls::Error),
    #[error("KVM_SET_CPUID2: {0}")]
    Set(kvm_ioctls::Error),
}

/// What KVM can offer on this host.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(CpuidError::Supported)
}

/// Filters `base` for vCPU `vcpu_id` of `vcpu_count` and sets it on `vcpu`.
pub fn setup_cpuid(vcpu: &VcpuFd, base: &CpuId, vcpu_id: u8, vcpu_count: u8) -> Result<(), CpuidError> {
    let mut cpuid = base.clone();
    filter_cpuid(cpuid.as_mut_slice(), vcpu_id, vcpu_count);
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::Set)
}

/// Number of bits needed to number `count` items (x2APIC ID shift width).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites the entries for vCPU `vcpu_id` (its APIC ID) of `vcpu_count`.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], vcpu_id: u8, vcpu_count: u8) {
    let count = u32::from(vcpu_count.max(1));
    let apic_id = u32::from(vcpu_id);
    for entry in entries.iter_mut() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << LEAF1_EBX_APIC_ID_SHIFT) | (count << LEAF1_EBX_CPU_COUNT_SHIFT);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                entry.ecx &= !(LEAF1_ECX_VMX
                    | LEAF1_ECX_MONITOR
                    | LEAF1_ECX_DTES64
                    | LEAF1_ECX_DS_CPL
                    | LEAF1_ECX_EIST
                    | LEAF1_ECX_TM2
                    | LEAF1_ECX_PDCM);
                entry.edx &= !(LEAF1_EDX_DS | LEAF1_EDX_ACPI | LEAF1_EDX_TM | LEAF1_EDX_PBE);
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Deterministic cache parameters (subleaves with a cache type): cores per
            // package in 31:26, logical processors sharing the cache in 25:14 (only the
            // L3 is shared).
            0x4 if entry.eax & 0x1f != 0 => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax &= 0x3fff;
                entry.eax |= ((count - 1) & 0x3f) << 26;
                entry.eax |= (sharing & 0xfff) << 14;
            }
            0x6 | 0xa => {
                // No thermal/power management, no architectural PMU.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xb | 0x1f => {
                let (eax, ebx, level_type) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (id_bits(count), count, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = apic_id;
            }
            0x8000_0001 => entry.ecx &= !EXT1_ECX_SVM,
            0x8000_0008 => {
                // AMD: number of cores - 1 in ECX[7:0], APIC ID size in ECX[15:12].
                entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(count) << 12) | ((count - 1) & 0xff);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax, ebx, ecx, edx, ..Default::default() }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries.iter().find(|e| e.function == function && e.index == index).unwrap()
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0x0, 0, 0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            // CLFLUSH line size 8 in EBX[15:8]; VMX, MONITOR and PDCM set; HTT clear.
            entry(0x1, 0, 0x906ea, 0x0000_0800, LEAF1_ECX_VMX | LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM | 1, LEAF1_EDX_ACPI | 1),
            entry(0x4, 0, 0x121, 0, 0, 0),
            entry(0x4, 3, 0x163, 0, 0, 0),
            entry(0x6, 0, 0x77, 0x2, 0x9, 0),
            entry(0xa, 0, 0x0760_3804, 0, 0, 0x603),
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0xb, 1, 0, 0, 0, 0),
            entry(0xb, 2, 0, 0, 0, 0),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            entry(0x8000_0001, 0, 0, 0, EXT1_ECX_SVM | 1, 0),
        ]
    }

    #[test]
    fn each_vcpu_sees_its_own_apic_id() {
        for id in [0u8, 1, 3] {
            let mut entries = sample();
            filter_cpuid(&mut entries, id, 4);
            let leaf1 = find(&entries, 0x1, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(id));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_eq!(find(&entries, 0xb, 0).edx, u32::from(id));
            assert_eq!(find(&entries, 0xb, 1).edx, u32::from(id));
        }
    }

    #[test]
    fn hypervisor_bit_set_and_nested_virt_hidden() {
        let mut entries = sample();
        filter_cpuid(&mut entries, 0, 1);
        let leaf1 = find(&entries, 0x1, 0);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(leaf1.ecx & (LEAF1_ECX_VMX | LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM), 0);
        assert_eq!(leaf1.ecx & 1, 1, "unrelated features kept");
        assert_eq!(leaf1.edx & (LEAF1_EDX_ACPI | LEAF1_EDX_HTT), 0);
        assert_eq!(find(&entries, 0x8000_0001, 0).ecx, 1);
    }

    #[test]
    fn pmu_and_power_leaves_are_zeroed_and_kvm_leaves_kept() {
        let mut entries = sample();
        filter_cpuid(&mut entries, 0, 2);
        for function in [0x6, 0xa] {
            let e = find(&entries, function, 0);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0), "leaf {function:#x}");
        }
        assert_eq!(find(&entries, 0x4000_0000, 0), sample()[9]);
    }

    #[test]
    fn topology_is_one_socket_of_single_thread_cores() {
        let mut entries = sample();
        filter_cpuid(&mut entries, 2, 3);
        let smt = find(&entries, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        let core = find(&entries, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 3, 0x201));
        let invalid = find(&entries, 0xb, 2);
        assert_eq!((invalid.eax, invalid.ebx, invalid.ecx), (0, 0, 2));
        let l1 = find(&entries, 0x4, 0);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff, l1.eax & 0x3fff), (2, 0, 0x121));
        let l3 = find(&entries, 0x4, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (2, 2));
        assert_ne!(find(&entries, 0x1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
