//! Entry points for fuzzing: the server's input paths as plain functions of bytes.
//!
//! The cargo-fuzz targets in `fuzz/` and the property tests in `tests/fuzz_*.rs`
//! (stable Rust, run by `cargo test`) call the same functions, so a reproducer the
//! fuzzer finds is replayed by the suite as it is.
//!
//! Nothing here catches panics: a panic anywhere on the path (ours or str0m's) is
//! what the fuzzer is looking for. (The server itself contains them per session.)
//! Not part of the server's API: hidden from the docs and free to change.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::Candidate;

use crate::config::HttpConfig;
use crate::peer::{offer as offered, AcceptError, Peer, PeerEvent, PeerKey, PeerSettings, Role};
use crate::router::RoomId;

// ---------------------------------------------------------------------------
// Offer handling: SDP text → accepted (with our answer) or a 4xx reason.
// ---------------------------------------------------------------------------

/// What the server would answer to a WHIP/WHEP POST with this body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferVerdict {
    /// 201 Created, with this SDP answer.
    Accepted { answer: String },
    /// A 4xx refusal: its status and the reason the client is told.
    Refused { status: u16, reason: String },
}

impl OfferVerdict {
    pub fn is_accepted(&self) -> bool {
        matches!(self, OfferVerdict::Accepted { .. })
    }

    /// What is wrong with this verdict, if anything: a refusal must be a 400 or
    /// 413 with a reason, an answer must be SDP that str0m itself parses back
    /// (a client could not use it otherwise). Checked by the fuzz target and the
    /// property tests alike.
    pub fn broken(&self) -> Option<String> {
        match self {
            OfferVerdict::Refused { status, reason } => {
                if *status != 400 && *status != 413 {
                    return Some(format!("refused with {status}, not 400/413: {reason}"));
                }
                if reason.trim().is_empty() {
                    return Some("refused without a reason".to_string());
                }
                None
            }
            OfferVerdict::Accepted { answer } => str0m::change::SdpAnswer::from_sdp_string(answer)
                .err()
                .map(|e| format!("our answer does not parse ({e}):\n{answer}")),
        }
    }
}

/// The settings every fuzzed peer is built with, made once per process: one DTLS
/// certificate (as the server makes it), one loopback host candidate, the default
/// reap timeout.
fn settings() -> &'static PeerSettings {
    static SETTINGS: OnceLock<PeerSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let provider = crate::crypto::install().expect("the crypto provider was just installed");
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .expect("the crypto provider generates a DTLS certificate");
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let candidate = Candidate::host(addr, "udp").expect("a loopback host candidate is valid");
        PeerSettings {
            dtls_cert,
            local_candidates: vec![candidate],
            reap_timeout: Duration::from_secs(30),
            viewer_initial_estimate: Some(str0m::bwe::Bitrate::kbps(2000)),
        }
    })
}

/// A WHIP (`role_is_publisher`) or WHEP POST of `data` as the offer, taken the
/// way the server takes it: the body-size and UTF-8 checks, str0m's parse,
/// [`Peer::accept`] as a shard runs it, then the first drive of the new peer.
///
/// A viewer's answer leads with no preferred codec here (no publisher in the
/// room); [`offer_preferring`] picks one.
pub fn offer(data: &[u8], role_is_publisher: bool) -> OfferVerdict {
    let role = if role_is_publisher {
        Role::Publisher
    } else {
        Role::Viewer
    };
    offer_preferring(data, role, None)
}

/// [`offer`] with the role and, for a viewer, the video codec the room's
/// publisher sends (what the server lists first in a viewer's answer). A
/// publisher's preference is always read from its own offer, as the server does.
pub fn offer_preferring(data: &[u8], role: Role, viewer_prefers: Option<Codec>) -> OfferVerdict {
    // What `create_session` checks before handing the offer to a shard.
    let limit = HttpConfig::default().max_body_bytes;
    if data.len() > limit {
        return refused(
            413,
            format!("the body is larger than {limit} bytes (http.max_body_bytes)"),
        );
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return refused(400, "the body is not UTF-8 text".to_string());
    };
    let sdp = match SdpOffer::from_sdp_string(text) {
        Ok(sdp) => sdp,
        Err(e) => return refused(400, offered::describe_parse_error(text, &e.to_string())),
    };
    let preferred_video = match role {
        Role::Publisher => offered::first_sent_video_codec(&offered::summarize(text)),
        Role::Viewer => viewer_prefers,
    };

    // What the shard does, without its catch_unwind.
    let room: RoomId = "fuzz".into();
    let now = Instant::now();
    let accepted = Peer::accept(
        PeerKey(1),
        role,
        room,
        fuzz_participant(),
        sdp,
        text,
        settings(),
        preferred_video,
        now,
    );
    let (mut peer, answer) = match accepted {
        Ok(ok) => ok,
        Err(AcceptError::Unusable(why)) => return refused(400, why),
        Err(e @ AcceptError::Negotiation(_)) => return refused(400, e.to_string()),
    };

    // The shard drives a new peer at once. `Peer::drain` contains a panic of the
    // stack (it ends the session); here it must not go unnoticed.
    let mut events = Vec::new();
    peer.drain(&mut |_| {}, &mut events);
    for event in &events {
        if let PeerEvent::Failed(why) = event {
            panic!("the first drive of an accepted peer panicked (contained): {why}");
        }
    }
    OfferVerdict::Accepted { answer }
}

/// The codecs a viewer's room may be publishing, for [`offer_both_ways`].
const ROOM_VIDEO: [Option<Codec>; 6] = [
    None,
    Some(Codec::Vp8),
    Some(Codec::Vp9),
    Some(Codec::H264),
    Some(Codec::H265),
    Some(Codec::Av1),
];

/// The body posted both ways: to WHIP, then to WHEP in a room whose publisher
/// sends the codec picked by the body's length (so inputs stay plain SDP files
/// and every preference is reached). What the `offer` fuzz target and
/// `tests/fuzz_offer.rs` run on each input.
pub fn offer_both_ways(data: &[u8]) -> [OfferVerdict; 2] {
    let whip = offer_preferring(data, Role::Publisher, None);
    let whep = offer_preferring(
        data,
        Role::Viewer,
        ROOM_VIDEO[data.len() % ROOM_VIDEO.len()],
    );
    [whip, whep]
}

fn refused(status: u16, reason: String) -> OfferVerdict {
    OfferVerdict::Refused { status, reason }
}

// ---------------------------------------------------------------------------
// Datagram demultiplexing: one datagram plus a shard's tables → which session
// gets it (and whether its `Rtc` takes it), or a drop.
// ---------------------------------------------------------------------------

/// Our ICE credentials in the fuzzed session, fixed so seeds can carry checks
/// with a valid MESSAGE-INTEGRITY ([`valid_check`]).
pub const FUZZ_LOCAL_UFRAG: &str = "fuzzlocalufrag00";
pub const FUZZ_LOCAL_PASS: &str = "fuzzlocalpassword000000000000000";
/// The client's, as its offer states them.
pub const FUZZ_REMOTE_UFRAG: &str = "fuzzremoteufrag0";
pub const FUZZ_REMOTE_PASS: &str = "fuzzremotepassword00000000000000";

/// A second session on the shard, found by this ufrag only.
const OTHER_UFRAG: &str = "otherufrag000000";

/// What happened to a fuzzed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramVerdict {
    pub route: crate::shard::demux::Route,
    /// The session's `Rtc` accepted a STUN message (integrity checked).
    pub stun_accepted: bool,
    /// The datagram was handed to the session's `Rtc`.
    pub handed_in: bool,
}

/// A client's offer with fixed ICE credentials, made once.
fn client_offer() -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(|| {
        let _ = settings(); // installs the crypto provider
        let mut rtc = str0m::RtcConfig::new()
            .set_local_ice_credentials(str0m::IceCreds {
                ufrag: FUZZ_REMOTE_UFRAG.into(),
                pass: FUZZ_REMOTE_PASS.into(),
            })
            .build(Instant::now());
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        if let Ok(c) = Candidate::host(addr, "udp") {
            rtc.add_local_candidate(c);
        }
        let mut api = rtc.sdp_api();
        api.add_media(
            str0m::media::MediaKind::Video,
            str0m::media::Direction::SendOnly,
            None,
            None,
            None,
        );
        let (offer, _) = api.apply().expect("str0m makes an offer");
        offer.to_sdp_string()
    })
}

/// The source of a fuzzed datagram: its first byte picks one of eight
/// (address, local socket) paths, two of them bound to a session.
fn fuzz_path(selector: u8) -> crate::shard::demux::Path {
    let port = 5000 + u16::from(selector % 4);
    (
        SocketAddr::from(([127, 0, 0, 1], port)),
        usize::from(selector / 4 % 2),
    )
}

/// One datagram on a media port, as a shard takes it: the first byte of `data`
/// picks the source, the rest is the datagram. The shard's tables hold the
/// fuzzed session (a real publisher [`Peer`], fixed credentials) with
/// 127.0.0.1:5000 bound, and a second session with 127.0.0.1:5001 bound.
/// Routed STUN goes through the session's `Rtc::accepts` (integrity), an
/// accepted one binds its address, and whatever is accepted or bound is handed
/// to the `Rtc`, unguarded. The tables' bounds are checked after each step.
pub fn datagram(data: &[u8]) -> DatagramVerdict {
    use crate::shard::demux::{Demux, Route, MAX_ADDRS_PER_SESSION};
    use str0m::net::{Protocol, Receive};

    let (selector, datagram) = match data.split_first() {
        Some((s, rest)) => (*s, rest),
        None => (0, data),
    };
    let path = fuzz_path(selector);
    let now = Instant::now();
    let mut demux = Demux::default();
    demux.add_session(PeerKey(1), FUZZ_LOCAL_UFRAG);
    demux.add_session(PeerKey(2), OTHER_UFRAG);
    demux.bind(PeerKey(1), fuzz_path(0));
    demux.bind(PeerKey(2), fuzz_path(1));

    let route = demux.route(datagram, path);
    let mut verdict = DatagramVerdict {
        route,
        stun_accepted: false,
        handed_in: false,
    };
    let (key, stun) = match route {
        Route::Stun(key) => (key, true),
        Route::Bound(key) => (key, false),
        Route::Drop(_) => return verdict,
    };
    assert!(
        key == PeerKey(1) || key == PeerKey(2),
        "routed to a session that exists"
    );
    if key != PeerKey(1) {
        return verdict; // no `Rtc` behind the second session
    }
    // A session untouched by earlier inputs: `accepts` changes nothing, so a
    // peer is kept until something is handed in (then the next input gets a
    // fresh one), which keeps most inputs cheap.
    let Ok(contents) = datagram.try_into() else {
        return verdict;
    };
    let mut peer = FUZZ_PEER
        .with(|cached| cached.borrow_mut().take())
        .unwrap_or_else(|| fuzz_peer(now));
    let input = str0m::Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: path.0,
            destination: SocketAddr::from(([127, 0, 0, 1], 9)),
            contents,
        },
    );
    if stun {
        if !peer.rtc.accepts(&input) {
            FUZZ_PEER.with(|cached| *cached.borrow_mut() = Some(peer));
            return verdict;
        }
        verdict.stun_accepted = true;
        demux.bind(key, path);
    }
    // Errors are fine (refused input); a panic is a finding.
    let _ = peer.rtc.handle_input(input);
    verdict.handed_in = true;
    while let Ok(output) = peer.rtc.poll_output() {
        if matches!(output, str0m::Output::Timeout(_)) {
            break;
        }
    }
    let (addrs, ufrags, sessions) = demux.table_sizes();
    assert!(sessions == 2 && ufrags == 2 && addrs <= 2 * MAX_ADDRS_PER_SESSION);
    verdict
}

thread_local! {
    static FUZZ_PEER: std::cell::RefCell<Option<Peer>> = const { std::cell::RefCell::new(None) };
}

fn fuzz_participant() -> crate::peer::Participant {
    crate::peer::Participant {
        identity: "fuzz".into(),
        name: None,
        may_send_data: true,
    }
}

/// The fuzzed session: a publisher accepted from [`client_offer`], with our
/// fixed credentials.
fn fuzz_peer(now: Instant) -> Peer {
    let offer_text = client_offer();
    let sdp = SdpOffer::from_sdp_string(offer_text).expect("our own offer parses");
    let (mut peer, _answer) = Peer::accept(
        PeerKey(1),
        Role::Publisher,
        "fuzz".into(),
        fuzz_participant(),
        sdp,
        offer_text,
        settings(),
        None,
        now,
    )
    .expect("our own offer is accepted");
    peer.rtc
        .direct_api()
        .set_local_ice_credentials(str0m::IceCreds {
            ufrag: FUZZ_LOCAL_UFRAG.into(),
            pass: FUZZ_LOCAL_PASS.into(),
        });
    peer.ufrag = FUZZ_LOCAL_UFRAG.into();
    peer
}

/// A binding request to the fuzzed session with a valid MESSAGE-INTEGRITY (as
/// a client that knows our password sends it), preceded by the source
/// selector byte [`datagram`] reads.
pub fn valid_check(selector: u8, use_candidate: bool) -> Vec<u8> {
    let provider = {
        let _ = settings();
        str0m::config::CryptoProvider::get_default().expect("installed by settings()")
    };
    let username = format!("{FUZZ_LOCAL_UFRAG}:{FUZZ_REMOTE_UFRAG}");
    let message = str0m::ice::StunMessage::binding_request(
        &username,
        str0m::ice::TransId::new(),
        true,
        0x1234_5678,
        0x6e00_1eff,
        use_candidate,
    );
    let mut buf = vec![0u8; 1500];
    let hmac =
        |key: &[u8], payloads: &[&[u8]]| provider.sha1_hmac_provider.sha1_hmac(key, payloads);
    let len = message
        .to_bytes(Some(FUZZ_LOCAL_PASS.as_bytes()), &mut buf, hmac)
        .expect("a binding request serializes");
    let mut out = vec![selector];
    out.extend_from_slice(&buf[..len]);
    out
}

/// A publisher's RTP payload as the packet path reads it without decoding: the
/// first byte picks the codec, the rest is the payload. Keyframe detection and the
/// picture size a keyframe states (simulcast layer ordering). Returns the size,
/// which is never zero when given.
pub fn media_payload(data: &[u8]) -> Option<crate::router::resolution::Resolution> {
    let (&selector, payload) = data.split_first()?;
    let codec = match selector % 5 {
        0 => Codec::Vp8,
        1 => Codec::Vp9,
        2 => Codec::H264,
        3 => Codec::H265,
        _ => Codec::Av1,
    };
    let _ = crate::router::keyframe::starts_keyframe(codec, payload);
    if codec == Codec::Vp8 {
        // The descriptor's temporal fields, read by our own parser.
        let temporal = crate::router::vp8::temporal(payload);
        assert!(temporal.is_none_or(|t| t.id <= 3));
    }
    let size = crate::router::resolution::keyframe_resolution(codec, payload);
    assert!(size.is_none_or(|s| s.width > 0 && s.height > 0));
    size
}

// ---------------------------------------------------------------------------
// Conferences: the pin API's body, and the slot policy's table.
// ---------------------------------------------------------------------------

/// The conference fuzz target: the first byte picks the pin API's body (even) or
/// the slot policy's table (odd) for the rest.
pub fn conference(data: &[u8]) {
    match data.split_first() {
        Some((selector, rest)) if selector % 2 == 0 => {
            let _ = pins_body(rest);
        }
        Some((_, rest)) => slot_policy(rest),
        None => {}
    }
}

/// A `PUT /whep/{room}/{session}/pins` body: the pins in force, or the 400's
/// reason. A list is never longer than the cap, nor holds an identity twice.
pub fn pins_body(data: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let pins = crate::http::pins::parse_body(text)?;
    assert!(pins.len() <= crate::http::pins::MAX_PINS);
    for (i, p) in pins.iter().enumerate() {
        assert!(!pins[..i].contains(p), "a pin twice");
    }
    Ok(pins.len())
}

/// The slot policy on a room and a viewer decoded from bytes: byte 0 the number
/// of slots, byte 1 of pins, then per candidate three bytes (track, loudness,
/// flags: muted, spoke recently), and per current slot a byte (0: empty). Panics
/// (the fuzzer's finding) if a slot shows an unknown track, a track shows twice,
/// or slots stay empty while candidates wait.
pub fn slot_policy(data: &[u8]) {
    use crate::router::slots::{assign_audio, assign_video, Candidate};
    let [slots, pins, rest @ ..] = data else {
        return;
    };
    let slots = usize::from(slots % 17);
    let (current, rest) = rest.split_at(slots.min(rest.len()));
    let now = Instant::now();
    let mut candidates: Vec<Candidate> = Vec::new();
    for chunk in rest.chunks_exact(3) {
        let track = u64::from(chunk[0]);
        if candidates.iter().any(|c| c.track == track) {
            continue;
        }
        candidates.push(Candidate {
            track,
            participant: format!("p{}", chunk[0] % 7).into(),
            muted: chunk[2] & 1 == 1,
            loudness: f32::from(chunk[1] % 128),
            last_spoke: (chunk[2] & 2 == 2)
                .then(|| now - Duration::from_millis(u64::from(chunk[2]))),
            order: u64::from(chunk[1]),
        });
    }
    let pins: Vec<std::sync::Arc<str>> = (0..pins % 4).map(|i| format!("p{i}").into()).collect();
    let mut current: Vec<Option<u64>> = current
        .iter()
        .map(|t| (*t != 0).then_some(u64::from(*t)))
        .collect();
    current.resize(slots, None);
    for out in [
        assign_audio(&current, &candidates),
        assign_video(&current, &candidates, &pins),
    ] {
        assert_eq!(out.len(), slots);
        let shown: Vec<u64> = out.iter().flatten().copied().collect();
        for (i, t) in shown.iter().enumerate() {
            assert!(
                candidates.iter().any(|c| c.track == *t),
                "an unknown track shown"
            );
            assert!(!shown[..i].contains(t), "a track in two slots");
        }
        assert_eq!(
            shown.len(),
            slots.min(candidates.len()),
            "a slot left empty"
        );
    }
}
