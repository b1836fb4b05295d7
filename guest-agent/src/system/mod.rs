//! What PID 1 sets up in the guest before serving: a root that containers can
//! pivot_root away from ([`switch_root`]), the base mounts ([`mounts`]), the
//! loopback interface ([`net`]), logging to the serial console ([`console`]), and the
//! way out ([`power`]).

pub mod console;
pub mod mounts;
pub mod net;
pub mod power;
pub mod switch_root;
