//! The `CONNECT <port>\n` line a host client sends the vsock device's Unix socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_vmm::devices::virtio::vsock::unix::handshake::parse_connect_line;

fuzz_target!(|data: &[u8]| {
    if let Some(port) = parse_connect_line(data) {
        // Whatever it accepts says CONNECT and the same port in decimal.
        let text = std::str::from_utf8(data).expect("an accepted line is text");
        assert!(text.starts_with("CONNECT "), "{text:?}");
        assert!(text.contains(&port.to_string()), "{text:?} gave {port}");
    }
});
