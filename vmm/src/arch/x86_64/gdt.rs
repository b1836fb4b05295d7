//! Global descriptor table entries for the boot CPU, and the KVM segments they describe.

use kvm_bindings::kvm_segment;

/// Builds a GDT descriptor from its flags (access byte in bits 0..8, flags nibble in
/// bits 12..16 of `flags`), base and limit (20 bits).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Flat 4 GiB 32-bit code segment (execute/read, accessed; G=1, D=1).
pub const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat 64-bit code segment (execute/read, accessed; G=1, L=1).
pub const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// Flat 4 GiB data segment (read/write, accessed; G=1, B=1).
pub const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// A busy 32-bit TSS (KVM needs a valid TR).
pub const TSS: u64 = gdt_entry(0x808b, 0, 0xfffff);

/// The boot GDT for the 32-bit PVH entry: null, code, data, TSS.
pub const PVH_GDT: [u64; 4] = [0, CODE32, DATA, TSS];
/// The boot GDT for the 64-bit Linux boot protocol entry: null, code, data, TSS.
pub const LINUX64_GDT: [u64; 4] = [0, CODE64, DATA, TSS];
/// Selectors of the entries above.
pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32) | ((entry & 0x0000_00ff_0000_0000) >> 16) | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With G=1 the limit counts 4 KiB pages; KVM wants bytes.
    if (entry >> 55) & 1 == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

/// The KVM segment register state for a descriptor at GDT index `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let present = bit(47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_usual_flat_descriptors() {
        // The values every x86 boot loader uses.
        assert_eq!(CODE32, 0x00cf_9b00_0000_ffff);
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segments_decode_back() {
        let cs = segment_from_gdt(CODE32, 1);
        assert_eq!((cs.base, cs.limit, cs.selector, cs.type_), (0, 0xffff_ffff, 8, 0xb));
        assert_eq!((cs.present, cs.db, cs.l, cs.s, cs.g, cs.unusable), (1, 1, 0, 1, 1, 0));
        let cs64 = segment_from_gdt(CODE64, 1);
        assert_eq!((cs64.l, cs64.db), (1, 0));
        let custom = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcd), 2);
        assert_eq!((custom.base, custom.limit, custom.g), (0x1234_5678, 0xabcd, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
