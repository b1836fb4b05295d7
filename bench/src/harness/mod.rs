//! The harness's parts: the workloads, the modes that run them, the machine, the report and
//! its plot.

pub mod host_link;
pub mod machine;
pub mod measure;
pub mod modes;
pub mod plots;
pub mod report;
pub mod scaling;
pub mod testhost;
pub mod workloads;
