//! Tiny PVH guests: 32-bit x86 code wrapped in an ELF64 with a `XEN_ELFNOTE_PHYS32_ENTRY`
//! note, so the VMM boots them exactly like a PVH Linux vmlinux (protected mode, flat
//! segments, paging off, EBX = start info).

use std::path::PathBuf;

/// Where the code is loaded and entered (high memory, like a kernel).
pub const LOAD_ADDR: u32 = 0x10_0000;
const COM1: u16 = 0x3f8;

/// 32-bit code, assembled by hand.
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
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    // Note: namesz, descsz, type (XEN_ELFNOTE_PHYS32_ENTRY = 18), "Xen\0", entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD_ADDR.to_le_bytes());
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
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
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
    phdr(4, 4, note_off, 0, note.len(), 4); // PT_NOTE
    elf.extend_from_slice(&note);
    elf.resize(code_off, 0);
    elf.extend_from_slice(code);
    elf
}

/// Writes the guest to a file in `dir`.
pub fn write_guest(dir: &std::path::Path, name: &str, code: &Code) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pvh_elf(code.bytes())).expect("writing the test guest");
    path
}
