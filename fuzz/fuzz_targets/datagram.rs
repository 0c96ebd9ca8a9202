//! The media-port datagram path: one datagram (its first byte picks the source
//! address) against a shard's routing tables and a real session's `Rtc` →
//! which session gets it, whether its STUN is accepted, or a drop (see
//! `switchboard::fuzzing::datagram`). Seeds: `fuzz/seeds/datagram/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchboard::fuzzing::datagram(data);
});
