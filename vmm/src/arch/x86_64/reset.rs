//! What kind of reset the guest asked for when it reset the VM through the i8042.
//!
//! Before any reset, Linux on x86 tells the BIOS whether it wants a warm or a cold one: it
//! writes the BIOS data area's reset flag, the 16 bits at [`RESET_FLAG_ADDR`],
//! [`WARM_RESET`] for a warm reset and 0 for a cold one (`native_machine_emergency_restart`).
//! A kernel booted with `reboot=panic_warm` (Palisade's guests: `reboot=k,panic_warm`) asks
//! for a warm reset only when it panics, and a cold one for every reboot and power-off. So a
//! reset whose flag says warm is the guest kernel's panic. The flag is the guest's word, as
//! everything it sends is: a guest could write it and reset, which only makes its own VM's
//! end read as a panic.

use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::GuestMemory;

/// Guest-physical address of the BIOS data area's reset flag.
pub const RESET_FLAG_ADDR: u64 = 0x472;
/// The reset flag's value for a warm reset.
pub const WARM_RESET: u16 = 0x1234;

/// Whether the guest's reset flag asks for a warm reset.
pub fn warm_reset_requested(mem: &GuestMemory) -> bool {
    mem.read_obj::<u16>(GuestAddress(RESET_FLAG_ADDR)).is_ok_and(|flag| flag == WARM_RESET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, Backing};

    #[test]
    fn only_the_warm_value_of_the_flag_is_a_warm_reset() {
        let mem = create_guest_memory(64, Backing::Anonymous).unwrap();
        assert!(!warm_reset_requested(&mem), "fresh memory: cold");
        mem.write_obj(WARM_RESET, GuestAddress(RESET_FLAG_ADDR)).unwrap();
        assert!(warm_reset_requested(&mem));
        mem.write_obj(0u16, GuestAddress(RESET_FLAG_ADDR)).unwrap();
        assert!(!warm_reset_requested(&mem), "what a reboot writes");
    }
}
