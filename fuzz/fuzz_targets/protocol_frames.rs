//! Agent protocol frames in both directions: what the host reads from the agent
//! (responses, stream hellos) and what the agent reads from the host (requests). Whatever
//! decodes must encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_protocol::{read_frame, write_frame, Request, Response, StreamHello};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let mut reader = data;
    // A stream of frames: read until the first that does not decode.
    while let Ok(message) = read_frame::<_, T>(&mut reader) {
        let mut encoded = Vec::new();
        write_frame(&mut encoded, &message).expect("a decoded message encodes");
        let again: T = read_frame(&mut &encoded[..]).expect("and decodes again");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(0) => round_trip::<Request>(&data[1..]),
        Some(1) => round_trip::<StreamHello>(&data[1..]),
        _ => round_trip::<Response>(data.get(1..).unwrap_or_default()),
    }
});
