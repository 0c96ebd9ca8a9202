//! Property tests over offer handling, on stable Rust: the function the `offer`
//! fuzz target runs (`switchboard::fuzzing::offer_both_ways`: the body as a WHIP
//! offer, then as a WHEP offer), on every seed in `fuzz/seeds/offer/` and then on
//! mutants of them from a deterministic generator, for a bounded time.
//!
//! Properties: nothing panics (the function catches nothing, so a panic in our
//! code or in str0m fails the test); a refusal is a 400 or 413 with a reason; an
//! accepted offer's answer is SDP that str0m itself parses back.
//!
//! A failing mutant is written to `target/fuzz-offer-failures/` and named in the
//! failure, so it can be replayed with the fuzzer or added to the seeds.
//! `FUZZ_OFFER_BUDGET_MS` (default 3000) and `FUZZ_OFFER_SEED` change the budget and
//! the generator's seed for a longer or different run.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::rng::Rng;

use switchboard::fuzzing::{offer_both_ways, OfferVerdict};

/// Reproducers of known, unfixed bugs, by file name in `fuzz/seeds/offer/`, with
/// the reason. They are skipped by the seed and mutation tests (and listed in
/// the output); `known_reproducers_exist_and_still_fail` checks that each still
/// fails. Remove an entry when its bug is fixed: the file then runs like any
/// other seed.
const KNOWN: &[(&str, &str)] = &[
    (
        "found-str0m-pt-locked-same-pt-vp8-and-h264-in-two-mlines.sdp",
        STR0M_PT_TWICE,
    ),
    (
        "found-str0m-pt-locked-same-pt-h264-pm0-and-pm1-sendrecv.sdp",
        STR0M_PT_TWICE,
    ),
    (
        "found-str0m-pt-locked-same-pt-vp9-profile-0-and-2.sdp",
        STR0M_PT_TWICE,
    ),
    (
        "found-str0m-pt-locked-fuzzer-min-audio-mline-h264-rtpmap.sdp",
        STR0M_PT_TWICE,
    ),
    (
        "found-str0m-pt-locked-fuzzer-min-5mline-h264-4d0032.sdp",
        STR0M_PT_TWICE,
    ),
    (
        "found-str0m-pt-locked-fuzzer-min-h264-no-fmtp-vs-pm1.sdp",
        STR0M_PT_TWICE,
    ),
];

/// Failures of known, unfixed bugs that a random mutant may run into, by a
/// piece of their panic message or broken property. Only the mutation test
/// tolerates them (counted and reported), so that its outcome does not depend
/// on how many mutants the machine gets through; a seed must not fail unless
/// it is listed in [`KNOWN`].
const KNOWN_FAILURES: &[(&str, &str)] = &[("Pt locked multiple times", STR0M_PT_TWICE)];

/// str0m 0.25 panics (`Pt locked multiple times`, format/payload_params.rs:41)
/// in `accept_offer` when one payload type number stands for two different
/// codecs or parameter sets in two m-lines of a BUNDLE and the offerer dictates
/// the payload types (a recvonly or sendrecv m-line): each m-line locks one of
/// our codecs to that number. Contained by the shard (the offer gets a 400).
const STR0M_PT_TWICE: &str =
    "str0m: one PT for two codec configurations across m-lines panics in accept_offer";

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/offer")
}

/// Every seed (name, bytes), in name order.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(seed_dir())
        .expect("fuzz/seeds/offer exists")
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("seed names are UTF-8")
                .to_string();
            let bytes = std::fs::read(&path).expect("a readable seed");
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the seed corpus is missing");
    files
}

fn known_reason(name: &str) -> Option<&'static str> {
    KNOWN.iter().find(|(n, _)| *n == name).map(|(_, why)| *why)
}

/// The properties every verdict has: a refusal is a 400 or 413 with a reason,
/// an answer is SDP that str0m itself parses back.
fn properties(verdicts: &[OfferVerdict; 2]) -> Result<(), String> {
    for (verdict, endpoint) in verdicts.iter().zip(["WHIP", "WHEP"]) {
        if let Some(broken) = verdict.broken() {
            return Err(format!("as {endpoint}: {broken}"));
        }
    }
    Ok(())
}

/// Runs one seed: any panic or broken property fails, naming it.
fn run_seed(input: &[u8], name: &str) -> [OfferVerdict; 2] {
    let what = format!("seed {name}");
    match catch_unwind(AssertUnwindSafe(|| offer_both_ways(input))) {
        Ok(verdicts) => {
            if let Err(broken) = properties(&verdicts) {
                panic!("{what}: {broken}");
            }
            verdicts
        }
        Err(panic) => {
            eprintln!("{what} panicked");
            std::panic::resume_unwind(panic)
        }
    }
}

/// Runs one mutant. A failure of a known, unfixed bug (see [`KNOWN_FAILURES`])
/// comes back as `Err(reason)`; any other panic or broken property saves the
/// input under `target/fuzz-offer-failures/` and fails naming the file.
fn run_mutant(input: &[u8], what: &str) -> Result<[OfferVerdict; 2], &'static str> {
    let known = |failure: &str| {
        KNOWN_FAILURES
            .iter()
            .find(|(piece, _)| failure.contains(piece))
            .map(|(_, why)| *why)
    };
    match catch_unwind(AssertUnwindSafe(|| offer_both_ways(input))) {
        Ok(verdicts) => match properties(&verdicts) {
            Ok(()) => Ok(verdicts),
            Err(broken) => {
                if let Some(why) = known(&broken) {
                    return Err(why);
                }
                let saved = save_failure(input, what);
                panic!("{what} (saved in {}): {broken}", saved.display());
            }
        },
        Err(panic) => {
            if let Some(why) = known(&panic_message(&*panic)) {
                return Err(why);
            }
            let saved = save_failure(input, what);
            eprintln!("{what} panicked; the input is saved in {}", saved.display());
            std::panic::resume_unwind(panic)
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn save_failure(input: &[u8], what: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-offer-failures");
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = dir.join(format!("{name}.sdp"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, input);
    path
}

#[test]
fn every_seed_is_answered_well() {
    let mut accepted = 0;
    for (name, bytes) in seeds() {
        if let Some(why) = known_reason(&name) {
            eprintln!("skipped known reproducer {name}: {why}");
            continue;
        }
        let verdicts = run_seed(&bytes, &name);
        accepted += verdicts.iter().filter(|v| v.is_accepted()).count();
    }
    // The real publishers' offers are taken (the SDP corpus test checks them in
    // depth against the running server).
    assert!(accepted >= 10, "only {accepted} seed offers were accepted");
    for name in [
        "obs-32-simulcast-h264.sdp",
        "gstreamer-webrtcbin-1.22-whip.sdp",
    ] {
        let bytes = std::fs::read(seed_dir().join(name)).expect("the seed exists");
        let [whip, _] = offer_both_ways(&bytes);
        assert!(whip.is_accepted(), "{name} as WHIP: {whip:?}");
    }
    let [_, whep] = offer_both_ways(
        &std::fs::read(seed_dir().join("chromium-156-whep-recvonly.sdp")).expect("the seed"),
    );
    assert!(whep.is_accepted(), "Chromium's WHEP offer: {whep:?}");
}

#[test]
fn known_reproducers_exist_and_still_fail() {
    for (name, why) in KNOWN {
        let path = seed_dir().join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|_| panic!("KNOWN names {name}, which is not in fuzz/seeds/offer"));
        // A panic's message is printed by the default hook: expected here.
        let fails = match catch_unwind(AssertUnwindSafe(|| offer_both_ways(&bytes))) {
            Err(_) => true,
            Ok(verdicts) => properties(&verdicts).is_err(),
        };
        assert!(
            fails,
            "{name} no longer fails ({why}): remove it from KNOWN so it runs as a seed"
        );
    }
}

#[test]
fn a_body_over_the_limit_is_413() {
    let body = vec![b'a'; 64 * 1024 + 1];
    for verdict in offer_both_ways(&body) {
        assert!(
            matches!(verdict, OfferVerdict::Refused { status: 413, .. }),
            "{verdict:?}"
        );
    }
}

#[test]
fn mutated_seeds_are_answered_well() {
    let budget = Duration::from_millis(env_u64("FUZZ_OFFER_BUDGET_MS").unwrap_or(3000));
    let seed = env_u64("FUZZ_OFFER_SEED").unwrap_or(0x5eed_0ff3_u64);
    let corpus: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|(name, _)| known_reason(name).is_none())
        .map(|(_, bytes)| bytes)
        .collect();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut cases = 0u64;
    let mut accepted = 0usize;
    let mut known = 0usize;
    // At least a few cases however slow the machine, then until the budget.
    while cases < 16 || started.elapsed() < budget {
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let input = mutate(base, other, &mut rng);
        let what = format!("mutant {cases} of generator seed {seed:#x}");
        match run_mutant(&input, &what) {
            Ok(verdicts) => accepted += verdicts.iter().filter(|v| v.is_accepted()).count(),
            Err(_) => known += 1,
        }
        cases += 1;
    }
    eprintln!(
        "{cases} mutants ({} offers) in {:.1?}, {accepted} accepted, {known} hit a known bug",
        cases * 2,
        started.elapsed()
    );
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// Lines with their endings, so edits keep the rest byte for byte.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split_inclusive(|b| *b == b'\n').collect()
}

/// Numbers that break assumptions: port 0, past 65535, past u32, negative.
const ODD_NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"65535",
    b"65536",
    b"127",
    b"128",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"",
];

/// Attribute lines that steer into str0m's less-trodden parts.
const ODD_LINES: &[&[u8]] = &[
    b"a=group:BUNDLE 0 0 1 1\r\n",
    b"a=mid:0\r\n",
    b"a=rtpmap:96 VP8/90000\r\n",
    b"a=rtpmap:97 rtx/90000\r\n",
    b"a=fmtp:97 apt=96\r\n",
    b"a=fmtp:97 apt=97\r\n",
    b"a=rtpmap:100 H264/90000\r\n",
    b"a=fmtp:100 profile-level-id=640032;packetization-mode=1\r\n",
    b"a=rid:0 send\r\n",
    b"a=rid:0 recv\r\n",
    b"a=simulcast:send 0;1;2\r\n",
    b"a=simulcast:recv 0;1;2\r\n",
    b"a=ssrc-group:FID 1 2\r\n",
    b"a=ssrc-group:SIM 1 2 3\r\n",
    b"a=ssrc:1 cname:x\r\n",
    b"a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
    b"a=extmap:15 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
    b"a=setup:active\r\n",
    b"a=setup:holdconn\r\n",
    b"a=inactive\r\n",
    b"a=sendrecv\r\n",
    b"a=recvonly\r\n",
    b"a=bundle-only\r\n",
    b"a=ice-ufrag:\r\n",
    b"a=ice-pwd:\r\n",
    b"a=fingerprint:sha-256 00\r\n",
    b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n",
    b"m=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
    b"m=audio 0 UDP/TLS/RTP/SAVPF 111\r\n",
    b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
];

fn mutate(base: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = base.to_vec();
    // Mostly one edit (so many mutants still get through the parser and reach
    // negotiation), sometimes up to four on top of each other.
    let edits = [1, 1, 1, 1, 2, 2, 3, 4][rng.below(8)];
    for _ in 0..edits {
        data = mutate_once(&data, other, rng);
    }
    data.truncate(70 * 1024);
    data
}

fn mutate_once(data: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = data.to_vec();
    let ls = lines(data);
    match rng.below(12) {
        // Flip a byte, or a bit.
        0 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = rng.next() as u8;
        }
        1 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        // Truncate anywhere (mid-line, mid-UTF-8).
        2 => out.truncate(rng.below(out.len() + 1)),
        // Duplicate a line, once or many times.
        3 if !ls.is_empty() => {
            let i = rng.below(ls.len());
            let times = if rng.below(4) == 0 {
                1 + rng.below(200)
            } else {
                1
            };
            out = join_with(&ls, i, &ls[i].repeat(times + 1));
        }
        // Delete a line.
        4 if !ls.is_empty() => out = join_with(&ls, rng.below(ls.len()), b""),
        // Swap two lines.
        5 if ls.len() > 1 => {
            let (i, j) = (rng.below(ls.len()), rng.below(ls.len()));
            let mut v = ls.clone();
            v.swap(i, j);
            out = v.concat();
        }
        // Insert a huge line: a long attribute value, or a long run of one byte.
        6 => {
            let n = 1000 + rng.below(30_000);
            let mut line = match rng.below(3) {
                0 => b"a=fmtp:96 ".to_vec(),
                1 => b"a=candidate:".to_vec(),
                _ => Vec::new(),
            };
            let fill = [b'a', b'9', b' ', b';', b'=', 0xff][rng.below(6)];
            line.extend(std::iter::repeat_n(fill, n));
            line.extend_from_slice(b"\r\n");
            out = insert_line(&ls, rng.below(ls.len() + 1), &line);
        }
        // Insert a line that means something to the parser or negotiation.
        7 => {
            let line = ODD_LINES[rng.below(ODD_LINES.len())];
            out = insert_line(&ls, rng.below(ls.len() + 1), line);
        }
        // Replace a number with an odd one.
        8 => {
            let numbers: Vec<(usize, usize)> = number_spans(data);
            if !numbers.is_empty() {
                let (start, end) = numbers[rng.below(numbers.len())];
                let odd = ODD_NUMBERS[rng.below(ODD_NUMBERS.len())];
                out = [&data[..start], odd, &data[end..]].concat();
            }
        }
        // Splice: the start of this seed, the rest of another.
        9 => {
            let cut = rng.below(data.len() + 1);
            let from = rng.below(other.len() + 1);
            out = [&data[..cut], &other[from..]].concat();
        }
        // Take another seed's m-section lines into this one.
        10 => {
            let theirs = lines(other);
            if !theirs.is_empty() {
                let start = rng.below(theirs.len());
                let end = (start + 1 + rng.below(10)).min(theirs.len());
                let chunk = theirs[start..end].concat();
                out = insert_line(&ls, rng.below(ls.len() + 1), &chunk);
            }
        }
        // Line endings: CRLF to LF, or a stray CR / NUL.
        _ => match rng.below(3) {
            0 => out = data.iter().copied().filter(|b| *b != b'\r').collect(),
            1 => out.insert(rng.below(out.len() + 1), b'\r'),
            _ => out.insert(rng.below(out.len() + 1), 0),
        },
    }
    out
}

/// The lines, with line `i` replaced by `with`.
fn join_with(ls: &[&[u8]], i: usize, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, line) in ls.iter().enumerate() {
        out.extend_from_slice(if n == i { with } else { line });
    }
    out
}

/// The lines, with `line` inserted before line `at`.
fn insert_line(ls: &[&[u8]], at: usize, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, l) in ls.iter().enumerate() {
        if n == at {
            out.extend_from_slice(line);
        }
        out.extend_from_slice(l);
    }
    if at >= ls.len() {
        out.extend_from_slice(line);
    }
    out
}

/// Where the runs of ASCII digits are.
fn number_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, b) in data.iter().enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, data.len()));
    }
    spans
}

#[test]
fn the_generator_is_deterministic() {
    let corpus = seeds();
    let a: Vec<Vec<u8>> = {
        let mut rng = Rng::new(7);
        (0..50)
            .map(|i| mutate(&corpus[i % corpus.len()].1, &corpus[0].1, &mut rng))
            .collect()
    };
    let mut rng = Rng::new(7);
    for (i, expected) in a.iter().enumerate() {
        let again = mutate(&corpus[i % corpus.len()].1, &corpus[0].1, &mut rng);
        assert_eq!(&again, expected, "mutant {i} differs between runs");
    }
    assert!(Path::new(&seed_dir()).is_dir());
}

/// Shrinks an input that panics (or whose verdict breaks a property) to the
/// lines and fields the failure needs, by line-level then field-level delta
/// debugging, in process: `FUZZ_OFFER_MINIMISE=<file> cargo test --test
/// fuzz_offer minimise -- --ignored --nocapture`. The result fails the same way
/// (same panic message, or same broken property) and is written next to the
/// input as `<file>.min`.
#[test]
#[ignore = "a tool, run by hand on a reproducer"]
fn minimise() {
    let Some(path) = std::env::var_os("FUZZ_OFFER_MINIMISE") else {
        eprintln!("set FUZZ_OFFER_MINIMISE to the input to shrink");
        return;
    };
    let path = PathBuf::from(path);
    let input = std::fs::read(&path).expect("a readable input");
    std::panic::set_hook(Box::new(|_| {}));
    // What is wrong with an input: its panic message, or the property it breaks
    // (without the answer and the parser's memory offsets, which vary).
    let message = |data: &[u8]| -> Option<String> {
        match catch_unwind(AssertUnwindSafe(|| offer_both_ways(data))) {
            Err(panic) => Some(panic_message(&*panic)),
            Ok(verdicts) => properties(&verdicts).err().map(|broken| {
                let head = broken.split(":\n").next().unwrap_or_default();
                head.lines()
                    .map(|l| l.split(" at PointerOffset(").next().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        }
    };
    let wanted = message(&input).expect("the input panics or breaks a property");
    let mut runs = 0u32;
    let mut still_fails = |data: &[u8]| {
        runs += 1;
        message(data).as_deref() == Some(wanted.as_str())
    };
    let mut lines: Vec<Vec<u8>> = lines(&input).into_iter().map(<[u8]>::to_vec).collect();
    // Until nothing more goes: a field pass can make lines removable.
    loop {
        let size = lines.concat().len();
        shrink_lines_then_fields(&mut lines, &mut still_fails);
        if lines.concat().len() == size {
            break;
        }
    }
    let out = lines.concat();
    assert!(still_fails(&out));
    let _ = std::panic::take_hook();
    let target = path.with_extension("min");
    std::fs::write(&target, &out).expect("the result is written");
    eprintln!(
        "{} → {} bytes in {runs} runs, failing with: {wanted}\nwritten to {}",
        input.len(),
        out.len(),
        target.display()
    );
}

fn shrink_lines_then_fields(lines: &mut Vec<Vec<u8>>, still_fails: &mut dyn FnMut(&[u8]) -> bool) {
    *lines = ddmin(std::mem::take(lines), &mut |ls| still_fails(&ls.concat()));
    // Then the fields of each line (split after ' ' and ';').
    for i in 0..lines.len() {
        let fields: Vec<Vec<u8>> = lines[i]
            .split_inclusive(|b| *b == b' ' || *b == b';')
            .map(<[u8]>::to_vec)
            .collect();
        if fields.len() < 2 {
            continue;
        }
        let ending: Vec<u8> = if lines[i].ends_with(b"\r\n") {
            b"\r\n".to_vec()
        } else if lines[i].ends_with(b"\n") {
            b"\n".to_vec()
        } else {
            Vec::new()
        };
        let before = lines[..i].concat();
        let after = lines[i + 1..].concat();
        let kept = ddmin(fields, &mut |fs| {
            let mut line = fs.concat();
            if !line.ends_with(&ending) {
                line.extend_from_slice(&ending);
            }
            still_fails(&[before.as_slice(), &line, &after].concat())
        });
        let mut line = kept.concat();
        if !line.ends_with(&ending) {
            line.extend_from_slice(&ending);
        }
        lines[i] = line;
    }
}

/// Delta debugging (Zeller's ddmin, complement-only): the smallest sublist found
/// for which `keep` still holds.
fn ddmin<T: Clone>(mut units: Vec<T>, keep: &mut dyn FnMut(&[T]) -> bool) -> Vec<T> {
    let mut n = 2;
    while units.len() >= 2 {
        let chunk = units.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < units.len() {
            let end = (start + chunk).min(units.len());
            let candidate: Vec<T> = [&units[..start], &units[end..]].concat();
            if !candidate.is_empty() && keep(&candidate) {
                units = candidate;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
            start = end;
        }
        if !reduced {
            if n >= units.len() {
                break;
            }
            n = (n * 2).min(units.len());
        }
    }
    units
}
