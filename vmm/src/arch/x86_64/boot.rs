//! Loading the guest kernel, initrd and command line, and the boot information the kernel
//! reads at entry.
//!
//! - An ELF `vmlinux` with a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) boots through PVH: an
//!   `hvm_start_info` with the command line, the memory map and the initrd as module 0.
//! - An ELF without the note, or a bzImage, boots through the Linux 64-bit boot protocol: a
//!   `boot_params` zero page with the E820 map, command line and initrd.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout::{
    self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, VIRTIO_MMIO_SIZE,
    ZERO_PAGE_START,
};
use super::regs::BootEntry;
use crate::devices::virtio::GuestMemory;

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 0x1000;
/// `hvm_start_info.magic` ("xEn3" with the top bit of 0x3 cleared).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    KernelOpen { path: PathBuf, source: std::io::Error },
    #[error("kernel {path}: is not a Linux kernel (neither ELF vmlinux nor bzImage)")]
    NotAKernel { path: PathBuf },
    #[error("kernel {path}: loading the {format} into guest memory: {source}")]
    KernelLoad { path: PathBuf, format: KernelFormat, source: linux_loader::loader::Error },
    #[error("initrd {path}: {source}")]
    InitrdOpen { path: PathBuf, source: std::io::Error },
    #[error("initrd {path}: {size} bytes do not fit in guest memory between the kernel (ends at {kernel_end:#x}) and {top:#x}; give the VM more memory")]
    InitrdTooBig { path: PathBuf, size: u64, kernel_end: u64, top: u64 },
    #[error("initrd {path}: reading it into guest memory: {source}")]
    InitrdLoad { path: PathBuf, source: vm_memory::GuestMemoryError },
    #[error("kernel command line {cmdline:?}: {source}")]
    Cmdline { cmdline: String, source: linux_loader::cmdline::Error },
    #[error("kernel command line: writing it to guest memory: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    #[error("writing the {protocol} boot parameters to guest memory: {source}")]
    BootParams { protocol: &'static str, source: linux_loader::configurator::Error },
}

/// What kind of kernel image a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::Elf => "ELF vmlinux",
            KernelFormat::BzImage => "bzImage",
        })
    }
}

/// Recognises a kernel from its first bytes (at least 0x206 for a bzImage).
pub fn detect_kernel_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        return Some(KernelFormat::Elf);
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: BootEntry,
    /// First guest address after the kernel image.
    pub end: u64,
    /// The bzImage setup header (for the zero page), if any.
    pub setup_header: Option<setup_header>,
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let open_err = |source| BootError::KernelOpen { path: path.into(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = Vec::with_capacity(1024);
    (&mut file).take(1024).read_to_end(&mut head).map_err(open_err)?;
    let format = detect_kernel_format(&head).ok_or_else(|| BootError::NotAKernel { path: path.into() })?;
    let load_err = |source| BootError::KernelLoad { path: path.into(), format, source };
    match format {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh(addr.raw_value()),
                _ => BootEntry::Linux64(result.kernel_load.raw_value()),
            };
            Ok(LoadedKernel { format, entry, end: result.kernel_end, setup_header: None })
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let entry = BootEntry::Linux64(result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET);
            Ok(LoadedKernel { format, entry, end: result.kernel_end, setup_header: result.setup_header })
        }
    }
}

/// Where an initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdLocation {
    pub addr: u64,
    pub size: u64,
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible under `top`,
/// above `kernel_end`.
pub fn initrd_placement(size: u64, kernel_end: u64, top: u64) -> Option<u64> {
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd at `path` high in the RAM below the MMIO gap.
pub fn load_initrd(mem: &GuestMemory, path: &Path, kernel: &LoadedKernel, mem_size: u64) -> Result<InitrdLocation, BootError> {
    let open_err = |source| BootError::InitrdOpen { path: path.into(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let mut top = layout::low_ram_end(mem_size);
    if let Some(max) = kernel.setup_header.map(|h| h.initrd_addr_max).filter(|m| *m != 0) {
        top = top.min(u64::from(max) + 1);
    }
    let addr = initrd_placement(size, kernel.end, top).ok_or_else(|| BootError::InitrdTooBig {
        path: path.into(),
        size,
        kernel_end: kernel.end,
        top,
    })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { path: path.into(), size, kernel_end: kernel.end, top })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| BootError::InitrdLoad { path: path.into(), source })?;
    Ok(InitrdLocation { addr, size })
}

/// The kernel command line: the user's, plus one `virtio_mmio.device=` per virtio device
/// (its MMIO base and GSI).
pub fn build_cmdline(base: &str, virtio_devices: &[(u64, u32)]) -> Result<Cmdline, BootError> {
    let err = |source| BootError::Cmdline { cmdline: base.to_string(), source };
    let mut cmdline = Cmdline::try_from(base, CMDLINE_MAX_SIZE).map_err(err)?;
    for (addr, gsi) in virtio_devices {
        cmdline.add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(*addr), *gsi, None).map_err(err)?;
    }
    Ok(cmdline)
}

/// Writes the command line, and the boot parameters the kernel's entry protocol reads.
pub fn configure_boot(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdLocation>,
    mem_size: u64,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::CmdlineLoad)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .map_err(|source| BootError::Cmdline { cmdline: String::new(), source })?;
    let map = layout::memory_map(mem_size);
    match kernel.entry {
        BootEntry::Pvh(_) => {
            let mut start_info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC_VALUE,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: map.len() as u32,
                ..Default::default()
            };
            let memmap: Vec<hvm_memmap_table_entry> =
                map.iter().map(|e| hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind as u32, reserved: 0 }).collect();
            let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if let Some(initrd) = initrd {
                start_info.nr_modules = 1;
                start_info.modlist_paddr = PVH_MODLIST_START;
                params = BootParams { header: vm_memory::ByteValued::as_slice(&start_info).to_vec(), ..params };
                let module = hvm_modlist_entry { paddr: initrd.addr, size: initrd.size, ..Default::default() };
                params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&params, mem).map_err(|source| BootError::BootParams { protocol: "PVH", source })
        }
        BootEntry::Linux64(_) => {
            let mut zero_page = boot_params::default();
            if let Some(header) = kernel.setup_header {
                zero_page.hdr = header;
            }
            zero_page.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
            zero_page.hdr.boot_flag = BOOT_FLAG_MAGIC;
            zero_page.hdr.header = HDRS_MAGIC;
            zero_page.hdr.kernel_alignment = KERNEL_ALIGNMENT;
            zero_page.hdr.cmd_line_ptr = CMDLINE_START as u32;
            zero_page.hdr.cmdline_size = cmdline_len as u32;
            if let Some(initrd) = initrd {
                zero_page.hdr.ramdisk_image = initrd.addr as u32;
                zero_page.hdr.ramdisk_size = initrd.size as u32;
            }
            for (slot, e) in zero_page.e820_table.iter_mut().zip(map.iter()) {
                *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind as u32 };
            }
            zero_page.e820_entries = map.len().min(zero_page.e820_table.len()) as u8;
            let params = BootParams::new(&zero_page, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&params, mem).map_err(|source| BootError::BootParams { protocol: "Linux", source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_elf_and_bzimage_and_refuses_the_rest() {
        assert_eq!(detect_kernel_format(b"\x7fELF\x02\x01\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_kernel_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_kernel_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_kernel_format(&[]), None);
    }

    #[test]
    fn non_kernel_file_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notakernel");
        std::fs::write(&path, b"hello world, not a kernel").unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let err = load_kernel(&mem, &path).unwrap_err().to_string();
        assert_eq!(err, format!("kernel {}: is not a Linux kernel (neither ELF vmlinux nor bzImage)", path.display()));
        let missing = dir.path().join("missing");
        let err = load_kernel(&mem, &missing).unwrap_err().to_string();
        assert!(err.starts_with(&format!("kernel {}: ", missing.display())), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }

    /// A distribution bzImage: `$PALISADE_TEST_BZIMAGE`, else the newest `/boot/vmlinuz-*`.
    fn distro_bzimage() -> Option<std::path::PathBuf> {
        if let Some(path) = std::env::var_os("PALISADE_TEST_BZIMAGE") {
            return Some(path.into());
        }
        let mut found: Vec<_> = std::fs::read_dir("/boot")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
            .collect();
        found.sort();
        found.pop()
    }

    #[test]
    fn a_distribution_bzimage_loads_for_the_64_bit_entry() {
        let Some(path) = distro_bzimage() else {
            eprintln!("skipped: no /boot/vmlinuz-* (apt-get install linux-image-amd64, or set PALISADE_TEST_BZIMAGE)");
            return;
        };
        let mem_size = 256u64 << 20;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let kernel = load_kernel(&mem, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kernel.format, KernelFormat::BzImage);
        let header = kernel.setup_header.expect("a bzImage has a setup header");
        assert_eq!({ header.header }, HDRS_MAGIC);
        // Loaded at code32_start (1 MiB), entered at startup_64 0x200 past it.
        assert_eq!(kernel.entry, BootEntry::Linux64(HIMEM_START + BZIMAGE_64BIT_ENTRY_OFFSET));
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(kernel.end > HIMEM_START && kernel.end < HIMEM_START + size, "end {:#x}", kernel.end);
        // The protected-mode kernel's first bytes are now in guest memory.
        let setup_len = (u64::from(header.setup_sects) + 1) * 512;
        let mut file_bytes = [0u8; 64];
        let mut guest_bytes = [0u8; 64];
        let mut file = File::open(&path).unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(setup_len)).unwrap();
        file.read_exact(&mut file_bytes).unwrap();
        mem.read_slice(&mut guest_bytes, GuestAddress(HIMEM_START)).unwrap();
        assert_eq!(file_bytes, guest_bytes);
        // The zero page gets the kernel's setup header plus ours.
        let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
        configure_boot(&mem, &kernel, &cmdline, None, mem_size).unwrap();
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(({ zp.hdr.version }, { zp.hdr.type_of_loader }), ({ header.version }, LOADER_TYPE_UNDEFINED));
        assert_eq!({ zp.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    }

    #[test]
    fn broken_kernels_fail_with_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        // Looks like an ELF, is not one.
        let elf = dir.path().join("truncated-vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01 and then nothing useful").unwrap();
        // Looks like a bzImage (the "HdrS" magic), but its header is nonsense.
        let bz = dir.path().join("broken-bzImage");
        let mut bytes = vec![0u8; 0x400];
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&bz, &bytes).unwrap();
        for (path, format) in [(&elf, "ELF vmlinux"), (&bz, "bzImage")] {
            let err = load_kernel(&mem, path).unwrap_err().to_string();
            let prefix = format!("kernel {}: loading the {format} into guest memory: ", path.display());
            assert!(err.starts_with(&prefix), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn cmdline_gets_one_virtio_mmio_entry_per_device() {
        let cmdline = build_cmdline("console=ttyS0 reboot=k panic=-1", &[(0xd000_0000, 5), (0xd000_1000, 6)]).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k panic=-1 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        let with_init = build_cmdline("console=ttyS0 -- foo", &[(0xd000_0000, 5)]).unwrap();
        assert_eq!(with_init.as_cstring().unwrap().to_str().unwrap(), "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- foo");
        assert!(build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE + 1), &[]).is_err());
    }

    #[test]
    fn initrd_goes_page_aligned_under_the_top_and_above_the_kernel() {
        assert_eq!(initrd_placement(0x1800, 0x20_0000, 0x800_0000), Some(0x7ff_e000));
        assert_eq!(initrd_placement(0x800_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(initrd_placement(0x900_0000, 0, 0x800_0000), None);
    }

    #[test]
    fn pvh_start_info_lists_cmdline_memmap_and_initrd() {
        let mem_size = 64 << 20;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let kernel = LoadedKernel { format: KernelFormat::Elf, entry: BootEntry::Pvh(0x100_0000), end: 0x200_0000, setup_header: None };
        let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
        let initrd = InitrdLocation { addr: 0x300_0000, size: 0x1234 };
        configure_boot(&mem, &kernel, &cmdline, Some(initrd), mem_size).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.cmdline_paddr, info.memmap_paddr, info.nr_modules), (CMDLINE_START, PVH_MEMMAP_START, 1));
        assert_eq!(info.memmap_entries as usize, layout::memory_map(mem_size).len());
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
        let first: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START)).unwrap();
        assert_eq!((first.addr, first.type_), (0, 1));
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
    }

    #[test]
    fn linux_zero_page_has_e820_cmdline_and_initrd() {
        let mem_size = 64 << 20;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        let kernel = LoadedKernel { format: KernelFormat::Elf, entry: BootEntry::Linux64(0x100_0000), end: 0x200_0000, setup_header: None };
        let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
        configure_boot(&mem, &kernel, &cmdline, Some(InitrdLocation { addr: 0x300_0000, size: 99 }), mem_size).unwrap();
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ zp.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ zp.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!(({ zp.hdr.ramdisk_image }, { zp.hdr.ramdisk_size }), (0x300_0000, 99));
        assert_eq!(zp.e820_entries as usize, layout::memory_map(mem_size).len());
        let e = zp.e820_table[2];
        assert_eq!(({ e.addr }, { e.r#type }), (HIMEM_START, 1));
    }
}
