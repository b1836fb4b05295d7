//! The harness's parts: the workloads, the modes that run them, the machine, the report and
//! its plot.

pub mod machine;
pub mod modes;
pub mod plots;
pub mod report;
pub mod scaling;
pub mod workloads;
