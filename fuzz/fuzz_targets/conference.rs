//! Conferences: the pin API's body (`PUT .../pins`) and the slot policy's table
//! (candidates, current slots, pins), the first byte picking which. See
//! `switchboard::fuzzing::{pins_body, slot_policy}`. Seeds: `fuzz/seeds/conference/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((selector, rest)) if selector % 2 == 0 => {
            let _ = switchboard::fuzzing::pins_body(rest);
        }
        Some((_, rest)) => switchboard::fuzzing::slot_policy(rest),
        None => {}
    }
});
