//! The conference fuzz target's functions (`switchboard::fuzzing::{pins_body,
//! slot_policy}`) on its seeds, on crafted bodies, and on mutants: no panic, the
//! pin list bounded and without repeats, and every slot filled with a distinct
//! known track while candidates wait.

mod support;

use std::path::Path;

use support::rng::Rng;
use switchboard::fuzzing::{conference as run, pins_body, slot_policy};

#[test]
fn crafted_pin_bodies_are_answered_not_panicked_on() {
    assert_eq!(pins_body(br#"{"pins":["a","b","a"]}"#), Ok(2));
    let many = format!(
        "{{\"pins\":[{}]}}",
        (0..17)
            .map(|i| format!("\"p{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    for bad in [
        &b""[..],
        b"{}",
        b"[]",
        b"null",
        br#"{"pins":"alice"}"#,
        br#"{"pins":[1,2]}"#,
        br#"{"pins":[""]}"#,
        br#"{"pins":["a\u0000b"]}"#,
        br#"{"pins":[],"extra":1}"#,
        b"\xff\xfe",
        many.as_bytes(),
    ] {
        assert!(
            pins_body(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = format!("{{\"pins\":[\"{}\"]}}", "x".repeat(65));
    assert!(pins_body(long.as_bytes()).is_err());
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(pins_body(deep.as_bytes()).is_err());
}

#[test]
fn seeds_and_their_mutants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/conference");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fuzz/seeds/conference")
        .map(|e| std::fs::read(e.expect("seed").path()).expect("seed bytes"))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3);
    let mut rng = Rng::new(0x5107);
    for seed in &seeds {
        run(seed);
        for _ in 0..2_000 {
            let mut m = seed.clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(3) {
                    0 if !m.is_empty() => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    1 => m.push(rng.next() as u8),
                    _ if m.len() > 1 => {
                        let i = rng.below(m.len());
                        m.remove(i);
                    }
                    _ => {}
                }
            }
            run(&m);
        }
    }
    // Random tables of every size.
    for _ in 0..5_000 {
        let len = rng.below(80);
        let data = rng.bytes(len);
        slot_policy(&data);
    }
}
