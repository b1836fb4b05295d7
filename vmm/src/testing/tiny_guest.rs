//! Tiny guests: a few bytes of hand-assembled x86 code wrapped in an ELF64.
//!
//! - [`pvh_elf`] adds a `XEN_ELFNOTE_PHYS32_ENTRY` note, so a VMM boots the guest exactly
//!   like a PVH Linux vmlinux (32-bit protected mode, flat segments, paging off, EBX = start
//!   info). QEMU's `-M microvm -kernel` boots the same file the same way.
//! - [`linux64_elf`] leaves the note out, so the VMM boots it like a vmlinux without PVH:
//!   the Linux 64-bit boot protocol (long mode, identity-mapped, RSI = zero page).
//!
//! [`Code::print`], [`Code::print_cpu_mode`], [`Code::reset`] and [`Code::halt`] encode to
//! the same bytes in 32-bit and 64-bit mode, so their guests run under either entry;
//! [`Code::print_if_mmio_equals`] and [`Code::triple_fault`] use 32-bit addressing and need
//! the PVH entry.

use std::path::{Path, PathBuf};

/// Where the code is loaded and entered (high memory, like a kernel).
pub const LOAD_ADDR: u32 = 0x10_0000;
const COM1: u16 = 0x3f8;

/// x86 code, assembled by hand (32-bit unless a method says it also runs in long mode).
#[derive(Default)]
pub struct Code {
    bytes: Vec<u8>,
}

impl Code {
    pub fn new() -> Self {
        Code::default()
    }

    /// `mov dx, COM1` then `mov al, b; out dx, al` per byte.
    pub fn print(mut self, text: &str) -> Self {
        self.bytes.extend_from_slice(&[0x66, 0xba]);
        self.bytes.extend_from_slice(&COM1.to_le_bytes());
        for b in text.bytes() {
            self.bytes.extend_from_slice(&[0xb0, b, 0xee]);
        }
        self
    }

    /// Prints `text` `times` times (a loop counted in ECX; runs in 32- and 64-bit mode).
    pub fn print_repeatedly(mut self, text: &str, times: u32) -> Self {
        self.bytes.push(0xb9); // mov ecx, imm32
        self.bytes.extend_from_slice(&times.to_le_bytes());
        let body = self.bytes.len();
        self = self.print(text);
        self.bytes.extend_from_slice(&[0xff, 0xc9]); // dec ecx
        let back = (self.bytes.len() + 6 - body) as i32;
        self.bytes.extend_from_slice(&[0x0f, 0x85]); // jnz rel32
        self.bytes.extend_from_slice(&(-back).to_le_bytes());
        self
    }

    /// Reads the 32-bit register at `addr` (`mov eax, [addr]`) and prints `yes` if it holds
    /// `expected`, else `no`.
    pub fn print_if_mmio_equals(mut self, addr: u32, expected: u32, yes: u8, no: u8) -> Self {
        self.bytes.push(0xa1); // mov eax, [moffs32]
        self.bytes.extend_from_slice(&addr.to_le_bytes());
        self.bytes.push(0x3d); // cmp eax, imm32
        self.bytes.extend_from_slice(&expected.to_le_bytes());
        self.bytes.extend_from_slice(&[0xb0, no]); // mov al, no
        self.bytes.extend_from_slice(&[0x75, 0x02]); // jne +2
        self.bytes.extend_from_slice(&[0xb0, yes]); // mov al, yes
        self.bytes.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1
        self.bytes.extend_from_slice(&COM1.to_le_bytes());
        self.bytes.push(0xee); // out dx, al
        self
    }

    /// Writes `value` to the 32-bit register (or memory) at `addr` (`mov dword [addr], imm32`;
    /// 32-bit mode).
    pub fn write_mmio(mut self, addr: u32, value: u32) -> Self {
        self.bytes.extend_from_slice(&[0xc7, 0x05]);
        self.bytes.extend_from_slice(&addr.to_le_bytes());
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Reads the i8042's status port `times` times (`in al, 0x64` in a loop counted in ECX):
    /// each read is an exit the VMM answers, so the VMM's other threads get to work before
    /// the guest goes on, without output and without burning a host CPU in the guest.
    pub fn wait_on_port_reads(mut self, times: u32) -> Self {
        self.bytes.push(0xb9); // mov ecx, imm32
        self.bytes.extend_from_slice(&times.to_le_bytes());
        self.bytes.extend_from_slice(&[0xe4, 0x64, 0xff, 0xc9, 0x75, 0xfa]); // in al, 0x64; dec ecx; jnz -6
        self
    }

    /// Prints `6` when running in 64-bit long mode, `3` in 32-bit protected mode: the
    /// bytes `48 ff c0` are `inc rax` in the one and `dec eax; inc eax` in the other.
    pub fn print_cpu_mode(mut self) -> Self {
        self.bytes.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax
        self.bytes.extend_from_slice(&[0x48, 0xff, 0xc0]); // inc rax | dec eax; inc eax
        self.bytes.extend_from_slice(&[0x6b, 0xc0, 0x03]); // imul eax, eax, 3
        self.bytes.extend_from_slice(&[0x04, b'3']); // add al, '3'
        self.bytes.extend_from_slice(&[0x66, 0xba]); // mov dx, COM1
        self.bytes.extend_from_slice(&COM1.to_le_bytes());
        self.bytes.push(0xee); // out dx, al
        self
    }

    /// `mov al, 0xfe; out 0x64, al`: pulse the reset line through the i8042.
    pub fn reset(mut self) -> Self {
        self.bytes.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]);
        self
    }

    /// Loads an empty IDT and raises `int3`: the CPU cannot deliver it, nor the double
    /// fault that follows, and shuts down (a triple fault).
    pub fn triple_fault(mut self) -> Self {
        // lidt [abs32]: points at the 6 zero bytes after `int3`.
        let descriptor = LOAD_ADDR + self.bytes.len() as u32 + 7 + 1;
        self.bytes.extend_from_slice(&[0x0f, 0x01, 0x1d]);
        self.bytes.extend_from_slice(&descriptor.to_le_bytes());
        self.bytes.push(0xcc); // int3
        self.bytes.extend_from_slice(&[0; 6]);
        self
    }

    /// `cli; hlt` forever.
    pub fn halt(mut self) -> Self {
        self.bytes.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The ELF image of a PVH guest running `code` at [`LOAD_ADDR`].
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    elf(code, true)
}

/// The ELF image of a guest running `code` at [`LOAD_ADDR`] with no PVH note: a VMM enters
/// it through the Linux 64-bit boot protocol, at `e_entry` in long mode.
pub fn linux64_elf(code: &[u8]) -> Vec<u8> {
    elf(code, false)
}

fn elf(code: &[u8], pvh_note: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum: u16 = if pvh_note { 2 } else { 1 };
    let note_off = EHDR + usize::from(phnum) * PHDR;
    // Note: namesz, descsz, type (XEN_ELFNOTE_PHYS32_ENTRY = 18), "Xen\0", entry.
    let mut note = Vec::new();
    if pvh_note {
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&LOAD_ADDR.to_le_bytes());
    }
    let code_off = (note_off + note.len() + 15) & !15;

    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&u64::from(LOAD_ADDR).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&phnum.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    assert_eq!(elf.len(), EHDR);

    let mut phdr = |p_type: u32, flags: u32, offset: usize, addr: u64, size: usize, align: u64| {
        elf.extend_from_slice(&p_type.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&(offset as u64).to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes()); // vaddr
        elf.extend_from_slice(&addr.to_le_bytes()); // paddr
        elf.extend_from_slice(&(size as u64).to_le_bytes()); // filesz
        elf.extend_from_slice(&(size as u64).to_le_bytes()); // memsz
        elf.extend_from_slice(&align.to_le_bytes());
    };
    phdr(1, 5, code_off, u64::from(LOAD_ADDR), code.len(), 0x1000); // PT_LOAD, R+X
    if pvh_note {
        phdr(4, 4, note_off, 0, note.len(), 4); // PT_NOTE
    }
    elf.extend_from_slice(&note);
    elf.resize(code_off, 0);
    elf.extend_from_slice(code);
    elf
}

/// Writes the PVH guest running `code` to the file `name` in `dir`.
pub fn write_guest(dir: &Path, name: &str, code: &Code) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pvh_elf(code.bytes()))?;
    Ok(path)
}

/// Writes the guest running `code` without a PVH note (see [`linux64_elf`]).
pub fn write_linux64_guest(dir: &Path, name: &str, code: &Code) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, linux64_elf(code.bytes()))?;
    Ok(path)
}

/// The guest the start-up benchmark boots: prints `marker` and a newline on COM1, then
/// resets through the i8042 (which ends `palisade-vmm`, and QEMU run with `-no-reboot`).
pub fn marker_guest(marker: &str) -> Code {
    Code::new().print(marker).print("\n").reset().halt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_image_has_the_note_and_linux64_image_does_not() {
        let code = marker_guest("hi");
        let pvh = pvh_elf(code.bytes());
        let plain = linux64_elf(code.bytes());
        let phnum = |e: &[u8]| u16::from_le_bytes([e[56], e[57]]);
        assert_eq!((phnum(&pvh), phnum(&plain)), (2, 1));
        assert!(pvh.windows(4).any(|w| w == b"Xen\0"));
        assert!(!plain.windows(4).any(|w| w == b"Xen\0"));
        assert!(pvh.ends_with(code.bytes()) && plain.ends_with(code.bytes()));
    }
}
