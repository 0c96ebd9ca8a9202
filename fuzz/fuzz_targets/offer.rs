//! Offer handling: SDP text → accepted (with an answer) or a 4xx reason.
//!
//! The input is the request body, as is (so every seed and reproducer is a
//! plain SDP file you can POST). It is taken both ways: as a WHIP offer, then as
//! a WHEP offer in a room whose publisher sends a codec picked by the input's
//! length (see `switchboard::fuzzing::offer_both_ways`). Besides a panic, a
//! verdict that breaks a property (`OfferVerdict::broken`: a refusal that is not
//! a 400/413 with a reason, an answer that does not parse) is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (verdict, endpoint) in switchboard::fuzzing::offer_both_ways(data)
        .iter()
        .zip(["WHIP", "WHEP"])
    {
        if let Some(broken) = verdict.broken() {
            panic!("as {endpoint}: {broken}");
        }
    }
});
