//! Conferences: the pin API's body (`PUT .../pins`) and the slot policy's table
//! (candidates, current slots, pins), the first byte picking which. See
//! `switchboard::fuzzing::{pins_body, slot_policy}`. Seeds: `fuzz/seeds/conference/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard::fuzzing::conference(data));
