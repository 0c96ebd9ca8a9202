//! A publisher's RTP payload: keyframe detection and the picture size a keyframe
//! states, for VP8, VP9, H264, H265 and AV1 (the first byte picks the codec; see
//! `switchboard::fuzzing::media_payload`). Seeds: `fuzz/seeds/payload/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchboard::fuzzing::media_payload(data);
});
