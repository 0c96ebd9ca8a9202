//! The publisher-payload fuzz target's function (`switchboard::fuzzing::media_payload`)
//! on its seed corpus, whose names state the size each keyframe carries, then on
//! mutants of the seeds: no panic, and a size is never zero.

mod support;

use std::path::Path;

use support::rng::Rng;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/payload");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fuzz/seeds/payload")
        .map(|entry| {
            let path = entry.expect("seed").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            (name, std::fs::read(&path).expect("seed bytes"))
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn seeds_state_the_sizes_their_names_say() {
    let seeds = seeds();
    assert!(seeds.len() >= 7, "{} seeds", seeds.len());
    for (name, bytes) in &seeds {
        let size = switchboard::fuzzing::media_payload(bytes);
        let stated = name.rsplit('-').next().and_then(|s| {
            let (w, h) = s.split_once('x')?;
            Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?))
        });
        if let Some((width, height)) = stated {
            assert_eq!(
                size.map(|s| (s.width, s.height)),
                Some((width, height)),
                "{name}"
            );
        }
    }
}

#[test]
fn mutated_seeds_never_panic() {
    let seeds = seeds();
    let mut rng = Rng::new(0x5eed_0fab);
    for _ in 0..50_000 {
        let (_, seed) = &seeds[rng.below(seeds.len())];
        let mut bytes = seed.clone();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.below(256) as u8;
                }
                2 => bytes.truncate(rng.below(bytes.len() + 1)),
                _ => bytes.push(rng.below(256) as u8),
            }
        }
        let _ = switchboard::fuzzing::media_payload(&bytes);
    }
}
