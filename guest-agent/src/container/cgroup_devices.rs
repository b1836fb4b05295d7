//! The device allowlist of cgroup v2: `linux.resources.devices` compiled into a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attached to the container's cgroup, as
//! runc, crun and youki do (v2 has no `devices.allow` file).
//!
//! The program reads the kernel's `struct bpf_cgroup_dev_ctx` (access type, major,
//! minor), checks the rules from the last to the first — so the last matching rule
//! wins, as in runc — and denies what no rule matches. A deny rule matches a request
//! that asks for any of its accesses; an allow rule only one that asks for nothing
//! but its accesses, so a later partial deny is never undone by an earlier allow.
//!
//! [`compile`] is pure (its output is checked by a small interpreter in the tests);
//! [`attach`] loads the program with bpf(2) and attaches it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

#[derive(Debug, thiserror::Error)]
pub enum DeviceRulesError {
    #[error("linux.resources.devices[{index}].{field}: {message}")]
    Invalid { index: usize, field: &'static str, message: String },
    #[error("opening cgroup {path} for the device program: {source}")]
    OpenCgroup { path: String, source: std::io::Error },
    #[error("loading the cgroup device BPF program: {source}{}", if log.is_empty() { String::new() } else { format!(" (verifier: {log})") })]
    Load { source: std::io::Error, log: String },
    #[error("attaching the device BPF program to cgroup {path}: {source} (the guest kernel needs CONFIG_CGROUP_BPF)")]
    Attach { path: String, source: std::io::Error },
}

/// One rule, checked: `None` for major/minor/type means "any".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `BPF_DEVCG_DEV_CHAR` or `BPF_DEVCG_DEV_BLOCK`; `None` for type `a`.
    pub kind: Option<u32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: u32,
}

// From include/uapi/linux/bpf.h.
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

impl Rule {
    /// An allow rule for one character device, every access.
    pub fn allow_char(major: u32, minor: Option<u32>) -> Rule {
        Rule { allow: true, kind: Some(DEV_CHAR), major: Some(major), minor, access: ACC_ALL }
    }

    /// Checks `linux.resources.devices[index]`. `Ok(None)` for a rule that can never
    /// match a device check (type `p`: fifos are not devices to the kernel).
    pub fn from_spec(index: usize, r: &LinuxDeviceCgroup) -> Result<Option<Rule>, DeviceRulesError> {
        let bad = |field, message: String| DeviceRulesError::Invalid { index, field, message };
        let kind = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::P => return Ok(None),
        };
        let number = |field, v: Option<i64>, max: i64| match v {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None),
            Some(n) if n <= max => Ok(Some(n as u32)),
            Some(n) => Err(bad(field, format!("{n} is above the largest device number {max}"))),
        };
        let major = number("major", r.major(), 0xfff)?;
        let minor = number("minor", r.minor(), 0xf_ffff)?;
        let mut access = 0;
        match r.access().as_deref() {
            None | Some("") => access = ACC_ALL,
            Some(s) => {
                for c in s.chars() {
                    access |= match c {
                        'r' => ACC_READ,
                        'w' => ACC_WRITE,
                        'm' => ACC_MKNOD,
                        _ => return Err(bad("access", format!("{s:?}: {c:?} is not one of r, w, m"))),
                    };
                }
            }
        }
        Ok(Some(Rule { allow: r.allow(), kind, major, minor, access }))
    }

    /// What the rule decides for a request, or `None` when it does not match.
    pub fn decide(&self, kind: u32, major: u32, minor: u32, access: u32) -> Option<bool> {
        let access_matches = if self.allow { access & !self.access == 0 } else { access & self.access != 0 };
        let matches = self.kind.is_none_or(|k| k == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access_matches;
        matches.then_some(self.allow)
    }
}

/// The rules of a container: the spec's rules, then — as runc appends them — the
/// devices every container gets (null, zero, full, random, urandom, tty, console,
/// ptmx, the pty slaves) and the nodes of `linux.devices`, so a spec that starts with
/// "deny all" still has a working /dev.
pub fn container_rules(resources: &[LinuxDeviceCgroup], created: &[(u32, u32, u32)]) -> Result<Vec<Rule>, DeviceRulesError> {
    let mut rules = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        rules.extend(Rule::from_spec(i, r)?);
    }
    for &(_, major, minor, _) in super::devices::DEFAULT_DEVICES {
        rules.push(Rule::allow_char(major, Some(minor)));
    }
    rules.push(Rule::allow_char(5, Some(1))); // /dev/console
    rules.push(Rule::allow_char(5, Some(2))); // /dev/ptmx
    rules.push(Rule::allow_char(136, None)); // /dev/pts/*
    for &(kind, major, minor) in created {
        let kind = if kind == libc::S_IFBLK { DEV_BLOCK } else { DEV_CHAR };
        rules.push(Rule { allow: true, kind: Some(kind), major: Some(major), minor: Some(minor), access: ACC_ALL });
    }
    Ok(rules)
}

/// What the rules decide for a request, the program's semantics in plain Rust.
pub fn decide(rules: &[Rule], kind: u32, major: u32, minor: u32, access: u32) -> bool {
    rules.iter().rev().find_map(|r| r.decide(kind, major, minor, access)).unwrap_or(false)
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (class | op | source) of the instructions the program uses.
pub const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
pub const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
pub const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
pub const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
pub const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
pub const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0xf), off, imm }
}

// Registers: R1 the context (then scratch), R2 type, R3 access, R4 major, R5 minor.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// Marks a jump to the next rule; patched once the rule's length is known.
const NEXT: i16 = i16::MIN;

/// Compiles `rules` (last match wins, default deny) into a program.
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, where
    // access_type is (access << 16) | type.
    let mut p = vec![
        insn(LDX_W, R2, R1, 0, 0),
        insn(AND32_K, R2, 0, 0, 0xffff),
        insn(LDX_W, R3, R1, 0, 0),
        insn(RSH32_K, R3, 0, 0, 16),
        insn(LDX_W, R4, R1, 4, 0),
        insn(LDX_W, R5, R1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut block = Vec::new();
        if let Some(kind) = r.kind {
            block.push(insn(JNE_K, R2, 0, NEXT, kind as i32));
        }
        if r.access != ACC_ALL || !r.allow {
            block.push(insn(MOV32_X, R1, R3, 0, 0));
            if r.allow {
                // Asks for something the rule does not allow: next rule.
                block.push(insn(AND32_K, R1, 0, 0, (!r.access & ACC_ALL) as i32));
                block.push(insn(JNE_K, R1, 0, NEXT, 0));
            } else {
                // Asks for nothing the rule denies: next rule.
                block.push(insn(AND32_K, R1, 0, 0, r.access as i32));
                block.push(insn(JEQ_K, R1, 0, NEXT, 0));
            }
        }
        if let Some(major) = r.major {
            block.push(insn(JNE_K, R4, 0, NEXT, major as i32));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JNE_K, R5, 0, NEXT, minor as i32));
        }
        block.push(insn(MOV32_K, R0, 0, 0, r.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        let mut conditional = false;
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == NEXT {
                // A jump goes to pc + 1 + off; the next rule starts at `len`.
                ins.off = (len - i - 1) as i16;
                conditional = true;
            }
        }
        p.extend(block);
        if !conditional {
            // The rule matches every request: nothing after it can run, and the
            // verifier refuses unreachable instructions.
            return p;
        }
    }
    p.push(insn(MOV32_K, R0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands, program and attach types, flags.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The BPF_PROG_LOAD part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_PROG_ATTACH part of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of union bpf_attr whose
    // size is passed along; the kernel reads (and for logs writes) only that much, and
    // any pointers inside it are kept alive by the caller for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as libc::c_uint) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `program` as a cgroup device program.
pub fn load(program: &[Insn]) -> Result<OwnedFd, DeviceRulesError> {
    let license = c"GPL";
    let try_load = |log: &mut [u8]| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            // The kernel refuses a log buffer without a log level.
            log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
            ..Default::default()
        };
        attr.prog_name[..9].copy_from_slice(b"palisade\0");
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let fd = match try_load(&mut []) {
        Ok(fd) => fd,
        Err(source) => {
            // Load again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            if let Ok(fd) = try_load(&mut log) {
                // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]).trim().lines().last().unwrap_or_default().to_string();
            return Err(DeviceRulesError::Load { source, log });
        }
    };
    // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Compiles `rules`, loads the program and attaches it to the cgroup v2 directory
/// `cgroup` (with BPF_F_ALLOW_MULTI: programs of ancestors still apply, all must
/// allow). The cgroup keeps the program; the descriptor is closed on return.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> Result<(), DeviceRulesError> {
    let path = cgroup.display().to_string();
    let prog = load(&compile(rules))?;
    let c_path = CString::new(cgroup.as_os_str().as_encoded_bytes())
        .map_err(|_| DeviceRulesError::OpenCgroup { path: path.clone(), source: std::io::ErrorKind::InvalidInput.into() })?;
    // SAFETY: open with a valid NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(DeviceRulesError::OpenCgroup { path, source: std::io::Error::last_os_error() });
    }
    // SAFETY: `fd` was just opened and is owned here.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop).map_err(|source| DeviceRulesError::Attach { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `p` on a device context: the subset of eBPF that [`compile`] emits.
    fn run(p: &[Insn], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                AND32_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                RSH32_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                MOV32_K => r[dst] = i.imm as u32 as u64,
                MOV32_X => r[dst] = r[src] as u32 as u64,
                JEQ_K if r[dst] == imm => pc = (pc as i64 + i.off as i64) as usize,
                JNE_K if r[dst] != imm => pc = (pc as i64 + i.off as i64) as usize,
                JEQ_K | JNE_K => {}
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("the program does not end")
    }

    fn rules(json: &str) -> Vec<Rule> {
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
        spec.iter().enumerate().filter_map(|(i, r)| Rule::from_spec(i, r).unwrap()).collect()
    }

    /// The compiled program agrees with [`decide`] on every combination.
    fn agree(rules: &[Rule]) {
        let p = compile(rules);
        for kind in [DEV_BLOCK, DEV_CHAR] {
            for major in [1, 5, 10, 136, 254] {
                for minor in [0, 3, 5, 200] {
                    for access in 1..=ACC_ALL {
                        let want = decide(rules, kind, major, minor, access);
                        assert_eq!(run(&p, kind, major, minor, access) == 1, want, "{kind} {major}:{minor} access {access} with {rules:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_rule_matching_everything_ends_the_program() {
        // `--privileged`: allow everything, after (so before, in the program) other rules.
        let rules = rules(r#"[{"allow": false}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}, {"allow": true}]"#);
        let p = compile(&rules);
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        assert_eq!(p.iter().filter(|i| i.code == EXIT).count(), 1, "nothing after the catch-all: {} insns", p.len());
        assert_eq!(run(&p, DEV_BLOCK, 8, 0, ACC_ALL), 1);
        agree(&rules);
    }

    #[test]
    fn no_rules_deny_everything() {
        assert_eq!(run(&compile(&[]), DEV_CHAR, 1, 3, ACC_READ), 0);
        agree(&[]);
    }

    #[test]
    fn last_matching_rule_wins() {
        let r = rules(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"access":"rw"},
                {"allow":false,"type":"c","major":1,"minor":5,"access":"rwm"},
                {"allow":true,"type":"b","major":254,"minor":0,"access":"r"}]"#,
        );
        agree(&r);
        assert!(decide(&r, DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE), "/dev/null rw");
        assert!(!decide(&r, DEV_CHAR, 1, 3, ACC_MKNOD), "mknod of /dev/null was not allowed");
        assert!(!decide(&r, DEV_CHAR, 1, 5, ACC_READ), "/dev/zero is denied after the allow");
        assert!(decide(&r, DEV_BLOCK, 254, 0, ACC_READ));
        assert!(!decide(&r, DEV_BLOCK, 254, 0, ACC_READ | ACC_WRITE), "read-only block device opened rw");
        // An "allow all" at the end opens everything.
        let all = rules(r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"a"}]"#);
        agree(&all);
        assert!(decide(&all, DEV_BLOCK, 8, 0, ACC_ALL));
    }

    #[test]
    fn a_partial_deny_is_not_undone_by_an_earlier_allow() {
        let r = rules(
            r#"[{"allow":true,"type":"c","major":10,"access":"rwm"},{"allow":false,"type":"c","major":10,"minor":200,"access":"w"}]"#,
        );
        agree(&r);
        assert!(decide(&r, DEV_CHAR, 10, 200, ACC_READ));
        assert!(!decide(&r, DEV_CHAR, 10, 200, ACC_READ | ACC_WRITE));
    }

    #[test]
    fn container_rules_keep_the_default_devices_after_deny_all() {
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_str(r#"[{"allow":false,"access":"rwm"}]"#).unwrap();
        let r = container_rules(&spec, &[(libc::S_IFCHR, 10, 229)]).unwrap();
        agree(&r);
        for (major, minor) in [(1, 3), (1, 5), (1, 9), (5, 0), (5, 2), (136, 7), (10, 229)] {
            assert!(decide(&r, DEV_CHAR, major, minor, ACC_READ | ACC_WRITE), "{major}:{minor}");
        }
        assert!(!decide(&r, DEV_CHAR, 10, 200, ACC_READ), "/dev/net/tun was not allowed");
        assert!(!decide(&r, DEV_BLOCK, 1, 3, ACC_READ), "a block device 1:3 is not /dev/null");
    }

    #[test]
    fn bad_rules_name_the_field() {
        let spec: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":true,"type":"c","access":"rx"},{"allow":true,"type":"c","major":5000}]"#).unwrap();
        assert!(Rule::from_spec(0, &spec[0]).unwrap_err().to_string().starts_with("linux.resources.devices[0].access"));
        assert!(Rule::from_spec(1, &spec[1]).unwrap_err().to_string().starts_with("linux.resources.devices[1].major"));
        let fifo: LinuxDeviceCgroup = serde_json::from_str(r#"{"allow":true,"type":"p"}"#).unwrap();
        assert_eq!(Rule::from_spec(2, &fifo).unwrap(), None);
    }
}
