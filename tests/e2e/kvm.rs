//! The KVM the tests run on: a VM with one vCPU runs to a `hlt`.

use kvm_ioctls::{Kvm, VcpuExit};
use libtest_mimic::Trial;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![trial("kvm::vcpu_runs_to_hlt", vcpu_runs_to_hlt)]
}

fn vcpu_runs_to_hlt() -> TestResult {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let code_addr = GuestAddress(0x1000);
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(code_addr, 0x1000)]).map_err(|e| format!("guest memory: {e}"))?;
    // mov al, 0x2a; out 0x80, al; hlt
    mem.write_slice(&[0xb0, 0x2a, 0xe6, 0x80, 0xf4], code_addr).map_err(|e| e.to_string())?;
    let region = mem.iter().next().ok_or("no memory region")?;
    let slot = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: code_addr.0,
        memory_size: 0x1000,
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping of `mem`, which outlives the VM below.
    unsafe { vm.set_user_memory_region(slot) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    regs.rip = code_addr.0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    let mut saw_out = false;
    for _ in 0..16 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(0x80, data) => saw_out = data == [0x2a],
            VcpuExit::Hlt => {
                ensure!(saw_out, "the vCPU halted without the port write before it");
                return Ok(());
            }
            other => return Err(format!("unexpected vCPU exit {other:?}").into()),
        }
    }
    Err("the vCPU never reached hlt".into())
}
