//! `palisade-agent`: PID 1 of a Palisade guest (run as `/init` of the initramfs).
//!
//! `palisade-agent --listen-unix DIR` is a test mode for hosts: it serves the same
//! protocol on `DIR/control.sock` and `DIR/stream.sock`, mounts nothing, runs processes
//! in the host's root, and exits on `Shutdown`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_agent::conn::{Listener, UnixConnListener, VsockListener};
use palisade_agent::process::{reaper, table::ProcessTable};
use palisade_agent::server::{serve, Agent, AgentConfig};
use palisade_agent::system::{console, mounts, net, power, switch_root};
use palisade_protocol::{AGENT_CONTROL_PORT, AGENT_STREAM_PORT};

/// Attempts (100 ms apart) to bind a vsock port before giving up.
const VSOCK_BIND_ATTEMPTS: u32 = 50;

fn main() {
    // As PID 1, whatever the arguments: the kernel passes unknown command-line words
    // to init, and PID 1 must never exit.
    if std::process::id() == 1 {
        guest_init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == "--listen-unix" => host_test_mode(PathBuf::from(dir)),
        _ => {
            eprintln!("palisade-agent: runs as PID 1 of a Palisade guest, or as: palisade-agent --listen-unix DIR");
            std::process::exit(2);
        }
    }
}

fn guest_init() -> ! {
    // First leave the initramfs (rootfs cannot be pivoted away from); this re-executes
    // /init on a tmpfs root, where the check below is false.
    match switch_root::on_initramfs() {
        Ok(true) => {
            let argv: Vec<std::ffi::CString> =
                std::env::args_os().filter_map(|a| std::ffi::CString::new(a.into_encoded_bytes()).ok()).collect();
            match switch_root::switch_to_tmpfs(&argv) {
                Err(e) => power::fatal(&e.to_string()),
            }
        }
        Ok(false) => {}
        Err(e) => power::fatal(&e.to_string()),
    }
    let warnings = match mounts::mount_base() {
        Ok(w) => w,
        Err(e) => power::fatal(&e.to_string()),
    };
    mounts::ensure_standard_fds();
    console::init_logging(true);
    for w in warnings {
        tracing::warn!("{w}");
    }
    tracing::info!("not on the initramfs: containers are entered with pivot_root");
    raise_open_files_limit();
    if let Err(e) = net::loopback_up() {
        tracing::warn!("loopback interface lo: {e}");
    }
    let processes = Arc::new(ProcessTable::new());
    if let Err(e) = reaper::start(processes.clone()) {
        power::fatal(&format!("starting the zombie reaper: {e}"));
    }
    let config = AgentConfig {
        mount_rootfs: true,
        rootfs_base: PathBuf::from("/run/palisade/rootfs"),
        shares_base: PathBuf::from(palisade_protocol::SHARES_DIR),
        on_shutdown: Box::new(|| power::reboot()),
    };
    // The vsock transport may still be coming up: retry for a few seconds.
    let listen = |port: u32| -> Box<dyn Listener> {
        let mut attempt = 0;
        loop {
            match VsockListener::bind(port) {
                Ok(l) => return Box::new(l),
                Err(e) if attempt < VSOCK_BIND_ATTEMPTS => {
                    tracing::debug!("listening on vsock port {port}: {e}; retrying");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => power::fatal(&format!("listening on vsock port {port}: {e}")),
            }
        }
    };
    let (control, streams) = (listen(AGENT_CONTROL_PORT), listen(AGENT_STREAM_PORT));
    console::say("ready");
    if let Err(e) = serve(Arc::new(Agent::new(config, processes)), control, streams) {
        power::fatal(&format!("serving: {e}"));
    }
    power::fatal("the server stopped")
}

fn host_test_mode(dir: PathBuf) -> ! {
    console::init_logging(false);
    let processes = Arc::new(ProcessTable::new());
    let run = || -> anyhow::Result<()> {
        use anyhow::Context;
        reaper::start(processes.clone()).context("starting the zombie reaper")?;
        let bind = |name: &str| -> anyhow::Result<Box<dyn Listener>> {
            let path = dir.join(name);
            Ok(Box::new(UnixConnListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?))
        };
        let (control, streams) = (bind("control.sock")?, bind("stream.sock")?);
        let config = AgentConfig {
            mount_rootfs: false,
            rootfs_base: dir.join("rootfs"),
            shares_base: dir.join("shares"),
            on_shutdown: Box::new(|| std::process::exit(0)),
        };
        serve(Arc::new(Agent::new(config, processes.clone())), control, streams).context("serving")?;
        Ok(())
    };
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("palisade-agent: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The kernel's open-files ceiling (`fs.nr_open` default).
const NR_OPEN: libc::rlim_t = 1 << 20;

/// Lifts PID 1's hard RLIMIT_NOFILE (the kernel starts init at 4096) to the kernel's
/// ceiling, as systemd does: a container in a user namespace cannot raise a hard limit
/// above what it inherits, so its spec's `RLIMIT_NOFILE` (Docker: 1048576) must fit
/// under ours. The soft limit stays as it is.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a live local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_max < NR_OPEN {
            lim.rlim_max = NR_OPEN;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("raising RLIMIT_NOFILE to {NR_OPEN}: {}", std::io::Error::last_os_error());
            }
        }
    }
}
