//! Property test over the datagram fuzz entry (`switchboard::fuzzing::datagram`,
//! also run by `fuzz/fuzz_targets/datagram.rs`): every seed in
//! `fuzz/seeds/datagram/`, the hostile STUN family, valid checks, and a bounded
//! number of deterministic mutations of them. A panic anywhere fails the test.

mod support;

use std::time::{Duration, Instant};

use support::rng::Rng;
use switchboard::fuzzing::{datagram, valid_check, FUZZ_LOCAL_UFRAG};
use switchboard::shard::demux::{DropReason, Route};

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/datagram");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    for (i, d) in support::hostile::stun_family(FUZZ_LOCAL_UFRAG)
        .into_iter()
        .enumerate()
    {
        let mut with_source = vec![i as u8];
        with_source.extend(d);
        out.push(with_source);
    }
    for selector in 0..8 {
        out.push(valid_check(selector, selector % 2 == 0));
    }
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => d.truncate(rng.below(d.len() + 1)),
            3 => {
                let extra = rng.below(64);
                d.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ if d.len() > 24 => {
                // Repeat an attribute-sized chunk (repeated fields).
                let start = 21 + rng.below(d.len() - 21);
                let end = (start + 8).min(d.len());
                let chunk = d[start..end].to_vec();
                d.splice(start..start, chunk);
            }
            _ => {}
        }
    }
    d
}

#[test]
fn valid_checks_are_accepted_and_bind_and_forged_ones_are_not() {
    let good = datagram(&valid_check(2, true));
    assert!(good.stun_accepted && good.handed_in, "{good:?}");
    let mut forged = valid_check(2, true);
    let last = forged.len() - 10; // inside MESSAGE-INTEGRITY
    forged[last] ^= 0xff;
    let bad = datagram(&forged);
    assert!(!bad.stun_accepted && !bad.handed_in, "{bad:?}");
    // The datagram that once stopped every shard.
    let mut indication = vec![2u8];
    indication.extend(support::hostile::stun(
        support::hostile::BINDING_INDICATION,
        &[(support::hostile::USERNAME, b":x")],
    ));
    assert_eq!(
        datagram(&indication).route,
        Route::Drop(DropReason::StunIndication)
    );
}

#[test]
fn seeds_and_their_mutations_never_panic() {
    let seeds = seeds();
    assert!(seeds.len() > 100, "seeds present: {}", seeds.len());
    for seed in &seeds {
        datagram(seed);
    }
    let mut rng = Rng::new(0xd47a_6a4d_0000_0011);
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(4) && runs < 20_000 {
        let seed = &seeds[rng.below(seeds.len())];
        datagram(&mutate(&mut rng, seed));
        runs += 1;
    }
    assert!(runs > 100, "ran {runs} mutations");
}

/// Writes the generated seeds to `fuzz/seeds/datagram/` (run by hand:
/// `cargo test --test fuzz_datagram -- --ignored write_seed_corpus`).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/datagram");
    std::fs::create_dir_all(&dir).expect("seed dir");
    let mut generated = Vec::new();
    for (i, d) in support::hostile::stun_family(FUZZ_LOCAL_UFRAG)
        .into_iter()
        .enumerate()
    {
        let mut with_source = vec![i as u8];
        with_source.extend(d);
        generated.push((format!("stun-family-{i:03}"), with_source));
    }
    for selector in 0..8 {
        generated.push((
            format!("valid-check-from-path-{selector}"),
            valid_check(selector, selector % 2 == 0),
        ));
    }
    generated.push(("rtp-from-bound".into(), {
        let mut d = vec![0u8, 0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];
        d.extend([0u8; 40]);
        d
    }));
    generated.push(("dtls-from-bound".into(), {
        let mut d = vec![0u8, 22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12];
        d.extend([1u8; 12]);
        d
    }));
    for (name, data) in generated {
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}
