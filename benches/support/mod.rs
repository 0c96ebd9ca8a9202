//! In-memory fixtures for the forwarding benchmarks: WHEP-like viewers (a client
//! `Rtc` paired with a server-side [`Peer`]) connected by shuttling datagrams, on a
//! simulated clock, and a publisher that produces [`MediaPacket`]s. No sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::{Codec, CodecSpec};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Receive, Transmit};
use str0m::rtp::Vp8Descriptor;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use switchboard::peer::{Peer, PeerEvent, PeerKey, PeerSettings, Role};
use switchboard::router::layers::TrackLayers;
use switchboard::router::{MediaPacket, RoomId};

/// The shard's (pretend) media socket.
pub const SERVER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);

/// Simulated time advanced per publisher packet: 1,000 packets/s, i.e. ~9 Mbit/s of
/// 1,100-byte video. It only drives str0m's timers (RTCP, ICE keepalives).
pub const PACKET_INTERVAL: Duration = Duration::from_millis(1);

const PAYLOAD_LEN: usize = 1_100;

/// A simulated clock: only moves when told to.
pub struct Clock {
    pub now: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            now: Instant::now(),
        }
    }

    pub fn advance(&mut self, by: Duration) -> Instant {
        self.now += by;
        self.now
    }
}

/// Certificates made once for the whole process (generating one costs milliseconds).
pub struct Certs {
    server: DtlsCert,
    client: DtlsCert,
}

impl Certs {
    pub fn new() -> Self {
        if CryptoProvider::get_default().is_none() {
            switchboard::crypto::install();
        }
        let provider = CryptoProvider::get_default().expect("a process-default crypto provider");
        let make = || {
            provider
                .dtls_provider
                .generate_certificate()
                .expect("a DTLS certificate")
        };
        Certs {
            server: make(),
            client: make(),
        }
    }

    pub fn settings(&self) -> PeerSettings {
        PeerSettings {
            dtls_cert: self.server.clone(),
            local_candidates: vec![Candidate::host(SERVER_ADDR, "udp").expect("host candidate")],
            reap_timeout: Duration::from_secs(30),
            // A publisher without simulcast: its viewers' bandwidth is not estimated.
            viewer_initial_estimate: None,
        }
    }
}

/// One viewer: its client (the browser side) and its server-side peer.
pub struct Subscriber {
    pub client: Rtc,
    pub client_addr: SocketAddr,
    pub client_connected: bool,
    pub peer: Peer,
    /// Server datagrams that are not media (STUN, RTCP), kept for the client.
    pub to_client: Vec<Transmit>,
}

impl Subscriber {
    /// A recvonly audio+video WHEP viewer, accepted by [`Peer::accept`]. Not connected yet.
    pub fn new(
        index: u16,
        room: &RoomId,
        certs: &Certs,
        settings: &PeerSettings,
        now: Instant,
    ) -> Self {
        let client_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50_000 + index);
        let mut client = RtcConfig::new()
            .set_rtp_mode(true)
            .set_dtls_cert(certs.client.clone())
            .build(now);
        client.add_local_candidate(Candidate::host(client_addr, "udp").expect("host candidate"));
        let mut api = client.sdp_api();
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let offer_text = offer.to_sdp_string();
        let offer = SdpOffer::from_sdp_string(&offer_text).expect("our own offer parses");

        let key = PeerKey(u64::from(index) * 2 + 1);
        let (peer, answer) = Peer::accept(
            key,
            Role::Viewer,
            room.clone(),
            switchboard::peer::Participant {
                identity: key.to_string().into(),
                name: None,
                may_send_data: true,
            },
            offer,
            &offer_text,
            settings,
            None,
            now,
        )
        .expect("the server accepts a recvonly audio+video offer");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("the answer parses");
        client
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the client accepts the answer");

        Subscriber {
            client,
            client_addr,
            client_connected: false,
            peer,
            to_client: Vec::new(),
        }
    }

    pub fn connected(&self) -> bool {
        self.peer.connected && self.client_connected
    }

    /// Lets both sides' timers run at `now` and exchanges datagrams (media included)
    /// until neither side has anything more to say. Not part of any measurement.
    pub fn service(&mut self, now: Instant, events: &mut Vec<PeerEvent>) {
        self.client
            .handle_input(Input::Timeout(now))
            .expect("client timeout");
        self.peer.handle_input(Input::Timeout(now));
        loop {
            let mut to_server = Vec::new();
            while let Some(t) = poll_client(&mut self.client, &mut self.client_connected) {
                to_server.push(t);
            }
            let mut to_client = std::mem::take(&mut self.to_client);
            self.peer.drain(&mut |t| to_client.push(t), events);
            events.clear();
            if to_server.is_empty() && to_client.is_empty() {
                return;
            }
            for t in &to_server {
                assert_eq!(t.destination, SERVER_ADDR);
                let receive = Receive::try_from(t).expect("a datagram str0m made parses");
                self.peer.handle_input(Input::Receive(now, receive));
            }
            for t in &to_client {
                assert_eq!(t.destination, self.client_addr);
                let receive = Receive::try_from(t).expect("a datagram str0m made parses");
                // The client may refuse what it cannot use (e.g. media it never saw the
                // start of); that does not matter to the server.
                let _ = self.client.handle_input(Input::Receive(now, receive));
            }
        }
    }
}

/// One output of the client that must go to the server; `None` at its timeout.
fn poll_client(client: &mut Rtc, connected: &mut bool) -> Option<Transmit> {
    loop {
        match client.poll_output().expect("client poll_output") {
            Output::Timeout(_) => return None,
            Output::Transmit(t) => return Some(t),
            Output::Event(Event::Connected) => *connected = true,
            Output::Event(_) => {}
        }
    }
}

/// Creates `n` viewers of `room` and connects them all (ICE + DTLS) on `clock`.
pub fn connected_subscribers(
    n: u16,
    room: &RoomId,
    certs: &Certs,
    clock: &mut Clock,
) -> Vec<Subscriber> {
    let settings = certs.settings();
    let mut subs: Vec<Subscriber> = (0..n)
        .map(|i| Subscriber::new(i, room, certs, &settings, clock.now))
        .collect();
    let mut events = Vec::new();
    let deadline = clock.now + Duration::from_secs(10);
    while !subs.iter().all(Subscriber::connected) {
        assert!(
            clock.now < deadline,
            "{} of {n} subscribers did not connect in 10 simulated seconds",
            subs.iter().filter(|s| !s.connected()).count()
        );
        let now = clock.advance(Duration::from_millis(5));
        for sub in &mut subs {
            sub.service(now, &mut events);
        }
    }
    subs
}

/// A VP8 publisher like Chrome's: consecutive sequence numbers, one packet per
/// frame at 30 fps clock steps, a 15-bit picture ID and a TL0PICIDX, a keyframe
/// first. Each packet gets its own payload (the publisher's allocation, made
/// before any measurement); subscribers share it.
pub struct Publisher {
    room: RoomId,
    codec: CodecSpec,
    seq: u64,
    timestamp: u32,
    picture_id: u16,
    sent: u64,
    layers: Arc<TrackLayers>,
}

impl Publisher {
    /// The codec is taken from a viewer's own VP8 parameters, as a publisher that
    /// negotiated the same defaults would have it.
    pub fn new(room: &RoomId, sample: &Peer) -> Self {
        let codec = sample
            .rtc
            .codec_config()
            .params()
            .iter()
            .map(|p| p.spec())
            .find(|s| s.codec == Codec::Vp8)
            .expect("the server enables VP8");
        Publisher {
            room: room.clone(),
            codec,
            seq: 65_536 * 3 + 1_000,
            timestamp: 90_000,
            picture_id: 0x1234,
            sent: 0,
            layers: Arc::new(TrackLayers::new(&[])),
        }
    }

    /// The publisher sends three simulcast layers (`f`, `h`, `q`), of which the
    /// packets are the best's: every viewer's layer choice runs, and forwards them.
    pub fn simulcast(mut self) -> Self {
        self.layers = Arc::new(TrackLayers::new(&[
            ("f".into(), 0),
            ("h".into(), 1),
            ("q".into(), 2),
        ]));
        self
    }

    /// The next packet, arriving at `now`; the first one is a keyframe.
    pub fn next(&mut self, now: Instant) -> MediaPacket {
        let first = self.sent == 0;
        // Payload descriptor: X and S set; I, L and T present: a 15-bit picture ID,
        // TL0PICIDX, TID 0 with Y. Then the VP8 payload header, whose bit 0 is clear
        // on a keyframe.
        let pid = self.picture_id & 0x7fff;
        let mut payload = vec![
            0x90,
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            self.sent as u8,
            0x20,
            if first { 0x10 } else { 0x11 },
        ];
        payload.extend((payload.len()..PAYLOAD_LEN).map(|i| (i * 7 + 3) as u8));
        let payload: Arc<[u8]> = payload.into();
        // As the publisher side does it: the descriptor is parsed once, for every viewer.
        let vp8 = Vp8Descriptor::parse(&payload).ok();
        let keyframe = vp8.as_ref().is_some_and(|d| d.starts_keyframe(&payload));
        debug_assert_eq!(keyframe, first);
        if self.layers.is_simulcast() {
            // As the publisher's side records what its layer carries (on the wall
            // clock, which the viewers' choice reads).
            self.layers.record(0, Instant::now(), 1_500_000, None);
        }
        let packet = MediaPacket {
            room: self.room.clone(),
            publisher: switchboard::peer::PeerKey(1),
            participant: Arc::from("publisher"),
            kind: MediaKind::Video,
            source: 7,
            track: 7,
            layer: 0,
            layers: Arc::clone(&self.layers),
            codec: self.codec,
            seq: self.seq,
            timestamp: self.timestamp,
            marker: true,
            keyframe,
            vp8,
            temporal: None,
            arrival: now,
            wallclock: now,
            extensions: Default::default(),
            payload,
        };
        self.seq += 1;
        self.sent += 1;
        self.picture_id = self.picture_id.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(3_000);
        packet
    }
}

/// True for an SRTP media packet (as opposed to STUN, DTLS or SRTCP).
pub fn is_rtp(datagram: &[u8]) -> bool {
    matches!(datagram, [128..=191, pt, ..] if !(192..=223).contains(pt))
}
