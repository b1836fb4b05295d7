//! x86_64 guest setup: physical layout, boot CPU state, CPUID, MSRs, MP table, kernel loading.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod reset;
