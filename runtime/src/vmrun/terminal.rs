//! The host terminal: raw mode while a `-t` command runs (restored on drop), and its
//! window size.

use std::io;
use std::os::fd::RawFd;

use palisade_protocol::TtySize;

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// The window size of the terminal on `fd`, if it is one.
pub fn window_size(fd: RawFd) -> Option<TtySize> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ writes into the live local.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the result is checked.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } < 0 || ws.ws_row == 0 || ws.ws_col == 0 {
        return None;
    }
    Some(TtySize { rows: ws.ws_row, cols: ws.ws_col })
}

/// Raw mode on a terminal; the previous settings come back on drop.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode (Ctrl-C and friends become plain bytes). `None` when `fd`
    /// is not a terminal.
    pub fn enable(fd: RawFd) -> io::Result<Option<RawMode>> {
        if !is_tty(fd) {
            return Ok(None);
        }
        // SAFETY: an all-zero termios is valid storage; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on live locals and a terminal fd.
        unsafe {
            if libc::tcgetattr(fd, &mut saved) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores settings read from the same terminal earlier.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
