//! Model-specific registers every vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MTRR_ENABLE: u64 = 0x800;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("building the boot MSR list: {0:?}")]
    Build(vmm_sys_util::fam::Error),
    #[error("KVM_SET_MSRS: {0}")]
    Set(kvm_ioctls::Error),
    #[error("KVM_SET_MSRS set {set} of {wanted} boot MSRs (first refused: {refused:#x})")]
    Partial { set: usize, wanted: usize, refused: u32 },
}

/// The boot MSRs: syscall/sysenter state cleared, TSC at 0, fast strings on, and MTRRs
/// enabled with write-back as the default memory type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Sets the boot MSRs on `vcpu`; all of them must be accepted.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set != entries.len() {
        let refused = entries.get(set).map_or(0, |e| e.index);
        return Err(MsrError::Partial { set, wanted: entries.len(), refused });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_mtrrs_with_write_back_default() {
        let entries = boot_msr_entries();
        let mtrr = entries.iter().find(|e| e.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data, 0x806);
        let tsc = entries.iter().find(|e| e.index == MSR_IA32_TSC).unwrap();
        assert_eq!(tsc.data, 0);
        assert!(Msrs::from_entries(&entries).is_ok());
    }
}
