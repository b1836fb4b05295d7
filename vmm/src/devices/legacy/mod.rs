//! Legacy PC devices: the COM1 serial port and the i8042 (for its reset line).

pub mod i8042;
pub mod serial;
pub mod tail_log;

pub use i8042::I8042;
pub use serial::{Serial, SerialError};
