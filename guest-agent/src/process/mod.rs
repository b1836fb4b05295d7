//! Processes the agent runs for the host: spawning ([`spawn`]), their stdio plumbing
//! ([`stdio`]), the table of started processes and the zombie reaper ([`table`],
//! [`reaper`]), and wait-status decoding ([`exit`]).

pub mod exit;
pub mod reaper;
pub mod spawn;
pub mod stdio;
pub mod table;
