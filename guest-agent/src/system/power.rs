//! Ending the VM. The guest kernel runs with `reboot=k,panic_warm`: a reboot resets
//! through the i8042 asking for a cold reset, which the VMM turns into a clean exit (a
//! panic asks for a warm one, which the VMM reports as the panic it is).

use std::time::Duration;

use super::console;

/// Syncs and reboots; never returns (PID 1 must not exit).
pub fn reboot() -> ! {
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    console::say(&format!("reboot: {e}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A setup error PID 1 cannot serve without: say it on the console, then reboot.
pub fn fatal(message: &str) -> ! {
    console::say(&format!("fatal: {message}"));
    reboot()
}
