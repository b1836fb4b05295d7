//! The machine a run measured: CPU, memory, kernel, and how its micro-VMs get
//! virtualization (hardware VT-x/AMD-V, nested, PVM, or the emulated test host).

use palisade_vmm::host::{probe_kvm_host, KvmHostKind};

use super::report::{Machine, EMULATED_LABEL};

pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let emulated = palisade_e2e::inside_testhost();
    let virtualization = if emulated {
        "emulated-test-host (QEMU TCG with emulated AMD-V; the test host's kernel runs KVM)".to_string()
    } else {
        let nested = cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        match (probe_kvm_host(), nested) {
            (KvmHostKind::Hardware, false) => "hardware".into(),
            (KvmHostKind::Hardware, true) => "nested (VT-x/AMD-V inside a VM)".into(),
            (KvmHostKind::Pvm, _) => "pvm".into(),
            (KvmHostKind::Unknown, _) => "unknown".into(),
            (KvmHostKind::Missing, _) => "none (no /dev/kvm)".into(),
        }
    };
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib,
        kernel,
        virtualization,
        label: emulated.then(|| EMULATED_LABEL.to_string()),
    }
}
