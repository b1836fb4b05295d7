//! Who the VMM runs as: an unprivileged uid and gid, with no supplementary groups, no
//! capability in any set (the bounding set included) and `no_new_privs`.
//!
//! Default ids: [`DEFAULT_ID_BASE`] plus the host pid of the supervising `palisade-vmm`
//! process — one uid per VM, as no two live VMs share a supervisor pid (pids are below
//! `pid_max`, at most 2^22, so ids stay in 900000..5094304, clear of the ranges
//! distributions hand out to users, system accounts and subordinate id maps of rootless
//! containers, which start at 100000 by default but are counted in 65536-id blocks per user).

use super::JailError;

/// Where the VMM uids and gids start.
pub const DEFAULT_ID_BASE: u32 = 900_000;

/// The default uid (and gid) of the VM supervised by process `pid`.
pub fn default_id(pid: u32) -> u32 {
    DEFAULT_ID_BASE + pid
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn last_error(what: &str) -> JailError {
    JailError::Sys { what: what.into(), source: std::io::Error::last_os_error() }
}

/// Empties the calling thread's effective, permitted and inheritable sets.
fn clear_capabilities() -> Result<(), JailError> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, which we pass.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(last_error("capset (clearing every capability)"));
    }
    Ok(())
}

/// The calling thread's effective, permitted and inheritable sets, OR-ed together.
fn any_capability() -> Result<u64, JailError> {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two v3 data structs, for which we pass room.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(last_error("capget"));
    }
    Ok(data.iter().enumerate().fold(0, |acc, (i, d)| acc | (u64::from(d.effective | d.permitted | d.inheritable) << (32 * i))))
}

fn prctl(what: &str, option: libc::c_int, arg: libc::c_ulong) -> Result<libc::c_int, JailError> {
    // SAFETY: the prctl options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(last_error(what));
    }
    Ok(rc)
}

/// Becomes `uid`:`gid` with nothing else: drops every capability from the bounding and
/// ambient sets, clears supplementary groups, switches ids (which empties the permitted
/// and effective sets), clears the inheritable set, sets `no_new_privs`, and re-arms the
/// parent-death signal (a credential change clears it). Checks the result.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    if uid == 0 || gid == 0 {
        return Err(JailError::RootId { uid, gid });
    }
    prctl("prctl(PR_SET_KEEPCAPS, 0)", libc::PR_SET_KEEPCAPS, 0)?;
    // Every capability the kernel knows: numbers past the last one fail with EINVAL.
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError::Sys { what: format!("prctl(PR_CAPBSET_DROP, {cap})"), source: e });
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(last_error("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    nix::unistd::setgroups(&[]).map_err(|e| JailError::sys("setgroups([])", e))?;
    let (u, g) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid));
    nix::unistd::setresgid(g, g, g).map_err(|e| JailError::sys("setresgid", e))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| JailError::sys("setresuid", e))?;
    clear_capabilities()?;
    prctl("prctl(PR_SET_NO_NEW_PRIVS)", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    prctl("prctl(PR_SET_PDEATHSIG)", libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    prctl("prctl(PR_SET_DUMPABLE, 0)", libc::PR_SET_DUMPABLE, 0)?;

    // Trust, but verify.
    let caps = any_capability()?;
    // SAFETY: PR_CAPBSET_READ takes a capability number.
    let bounding_left = (0..64).any(|cap| unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1);
    let (ruid, euid, suid) = ids(libc::getresuid)?;
    let (rgid, egid, sgid) = ids(libc::getresgid)?;
    if caps != 0 || bounding_left || [ruid, euid, suid] != [uid; 3] || [rgid, egid, sgid] != [gid; 3] {
        return Err(JailError::PrivilegesKept);
    }
    Ok(())
}

fn ids(get: unsafe extern "C" fn(*mut u32, *mut u32, *mut u32) -> libc::c_int) -> Result<(u32, u32, u32), JailError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids through the pointers we pass.
    if unsafe { get(&mut r, &mut e, &mut s) } != 0 {
        return Err(last_error("getresuid/getresgid"));
    }
    Ok((r, e, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_are_per_supervisor_and_unprivileged() {
        assert_eq!(default_id(1), 900_001);
        assert_ne!(default_id(42), default_id(43));
        assert!(default_id(1 << 22) > 65_535);
    }

    #[test]
    fn root_is_refused_as_a_jail_id() {
        assert!(matches!(drop_privileges(0, 5), Err(JailError::RootId { .. })));
        assert!(matches!(drop_privileges(5, 0), Err(JailError::RootId { .. })));
    }
}
