//! Which session a datagram on a media port belongs to, the way mediasoup's
//! WebRtcServer and str0m's `Rtc::accepts` do it:
//!
//! - a STUN request is routed by the local ufrag in its USERNAME, always, also
//!   when it comes from an address already known;
//! - a STUN response, DTLS, RTP and RTCP are routed by their source address, and
//!   only an address that has been *bound* to a session counts;
//! - an address is bound only after the session's `Rtc` accepted a check from it
//!   (valid MESSAGE-INTEGRITY): the shard calls [`Demux::bind`] then, never on a
//!   ufrag match alone; each session binds at most [`MAX_ADDRS_PER_SESSION`].
//!
//! Plain data, no I/O: unit-tested here and fuzzed (`fuzz/fuzz_targets/datagram.rs`).

use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use str0m::ice::StunMessage;

use crate::peer::PeerKey;

/// Remote addresses one session may have bound at once. A client has one per
/// local interface it checks from, plus a NAT rebinding or two; the oldest is
/// forgotten when a new one is bound beyond this.
pub const MAX_ADDRS_PER_SESSION: usize = 8;

/// An address as the shard sees it: the remote address and the index of the
/// local socket the datagram reached.
pub type Path = (SocketAddr, usize);

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A STUN message for this session. The session's `Rtc` must still accept it
    /// (integrity, transaction) before it is handed in or its address is bound.
    Stun(PeerKey),
    /// DTLS, SRTP or SRTCP from an address bound to this session.
    Bound(PeerKey),
    Drop(DropReason),
}

/// Why a datagram was dropped: a metric label, so a bounded set. The
/// discriminants index [`DropReason::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN, and its source is not bound to any session.
    UnknownSource,
    /// Looks like STUN but does not parse (lengths, attributes).
    MalformedStun,
    /// A STUN indication: a keepalive that needs no answer.
    StunIndication,
    /// A STUN request whose USERNAME names no session here (or is empty).
    UnknownUfrag,
    /// A STUN response from an address not bound to any session.
    UnboundResponse,
    /// The session's `Rtc` refused the STUN message (bad integrity, wrong
    /// remote ufrag, unknown transaction).
    StunRejected,
    /// Neither STUN, DTLS nor RTP by its first byte (RFC 7983).
    NotWebRtc,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::UnknownSource,
        DropReason::MalformedStun,
        DropReason::StunIndication,
        DropReason::UnknownUfrag,
        DropReason::UnboundResponse,
        DropReason::StunRejected,
        DropReason::NotWebRtc,
    ];

    pub fn as_str(self) -> &'static str {
        debug_assert_eq!(DropReason::ALL[self as usize], self);
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::StunIndication => "stun_indication",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::UnboundResponse => "unbound_stun_response",
            DropReason::StunRejected => "stun_rejected",
            DropReason::NotWebRtc => "not_webrtc",
        }
    }
}

/// What kind of packet a datagram is, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    Rtp,
    Other,
}

pub fn kind_of(data: &[u8]) -> Kind {
    match data.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// The two class bits of a STUN message type (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StunClass {
    Request,
    Indication,
    Response,
}

fn stun_class(data: &[u8]) -> Option<StunClass> {
    let typ = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    Some(match (typ & 0x0100 != 0, typ & 0x0010 != 0) {
        (false, false) => StunClass::Request,
        (false, true) => StunClass::Indication,
        _ => StunClass::Response,
    })
}

/// The session's own ufrag in a STUN request's USERNAME (`ours:theirs`), if it
/// has a non-empty one. Borrowed from `data`.
pub fn stun_target(data: &[u8]) -> Option<&str> {
    let message = StunMessage::parse(data).ok()?;
    let username = message.username()?;
    let (ours, _theirs) = username.split_once(':')?;
    (!ours.is_empty()).then_some(ours)
}

#[derive(Debug, Default)]
struct Routes {
    ufrag: String,
    /// Bound addresses, oldest first.
    addrs: Vec<Path>,
}

/// The shard's routing tables. Their size is bounded by the sessions on the
/// shard: one ufrag and at most [`MAX_ADDRS_PER_SESSION`] addresses each.
#[derive(Debug, Default)]
pub struct Demux {
    by_addr: FxHashMap<Path, PeerKey>,
    by_ufrag: FxHashMap<String, PeerKey>,
    sessions: FxHashMap<PeerKey, Routes>,
}

impl Demux {
    /// Finds the session a datagram belongs to.
    pub fn route(&self, data: &[u8], path: Path) -> Route {
        match kind_of(data) {
            Kind::Stun => self.route_stun(data, path),
            Kind::Dtls | Kind::Rtp => match self.by_addr.get(&path) {
                Some(key) => Route::Bound(*key),
                None => Route::Drop(DropReason::UnknownSource),
            },
            Kind::Other => Route::Drop(DropReason::NotWebRtc),
        }
    }

    fn route_stun(&self, data: &[u8], path: Path) -> Route {
        if data.len() < 20 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
            return Route::Drop(DropReason::MalformedStun);
        }
        match stun_class(data) {
            Some(StunClass::Request) => match stun_target(data) {
                Some(ufrag) => match self.by_ufrag.get(ufrag) {
                    Some(key) => Route::Stun(*key),
                    None => Route::Drop(DropReason::UnknownUfrag),
                },
                None if StunMessage::parse(data).is_err() => Route::Drop(DropReason::MalformedStun),
                None => Route::Drop(DropReason::UnknownUfrag),
            },
            Some(StunClass::Indication) => Route::Drop(DropReason::StunIndication),
            Some(StunClass::Response) => match self.by_addr.get(&path) {
                Some(key) => Route::Stun(*key),
                None => Route::Drop(DropReason::UnboundResponse),
            },
            None => Route::Drop(DropReason::MalformedStun),
        }
    }

    /// A new session, found by STUN requests naming `ufrag`.
    pub fn add_session(&mut self, key: PeerKey, ufrag: &str) {
        self.remove_session(key);
        self.by_ufrag.insert(ufrag.to_string(), key);
        self.sessions.insert(
            key,
            Routes {
                ufrag: ufrag.to_string(),
                addrs: Vec::new(),
            },
        );
    }

    /// The session's ufrag changed (an ICE restart).
    pub fn set_ufrag(&mut self, key: PeerKey, ufrag: &str) {
        let Some(routes) = self.sessions.get_mut(&key) else {
            return;
        };
        if routes.ufrag == ufrag {
            return;
        }
        if self.by_ufrag.get(&routes.ufrag) == Some(&key) {
            self.by_ufrag.remove(&routes.ufrag);
        }
        routes.ufrag = ufrag.to_string();
        self.by_ufrag.insert(ufrag.to_string(), key);
    }

    /// Binds `path` to the session, after its `Rtc` accepted a check from there
    /// (call it on every accepted check). An address bound to another session
    /// moves (the client reused a port); beyond the cap, the session's address
    /// checked least recently is forgotten: the path in use is checked every few
    /// seconds, so it stays. Returns whether the address was new for this session.
    pub fn bind(&mut self, key: PeerKey, path: Path) -> bool {
        let Some(routes) = self.sessions.get_mut(&key) else {
            return false;
        };
        if let Some(i) = routes.addrs.iter().position(|a| *a == path) {
            let fresh = routes.addrs.remove(i);
            routes.addrs.push(fresh); // most recently checked last
            return false;
        }
        if routes.addrs.len() >= MAX_ADDRS_PER_SESSION {
            let oldest = routes.addrs.remove(0);
            self.by_addr.remove(&oldest);
        }
        routes.addrs.push(path);
        if let Some(previous) = self.by_addr.insert(path, key) {
            if previous != key {
                if let Some(other) = self.sessions.get_mut(&previous) {
                    other.addrs.retain(|a| *a != path);
                }
            }
        }
        true
    }

    /// Forgets everything about a session.
    pub fn remove_session(&mut self, key: PeerKey) {
        let Some(routes) = self.sessions.remove(&key) else {
            return;
        };
        if self.by_ufrag.get(&routes.ufrag) == Some(&key) {
            self.by_ufrag.remove(&routes.ufrag);
        }
        for path in routes.addrs {
            if self.by_addr.get(&path) == Some(&key) {
                self.by_addr.remove(&path);
            }
        }
    }

    /// The addresses bound to a session, oldest first.
    pub fn addrs_of(&self, key: PeerKey) -> &[Path] {
        self.sessions
            .get(&key)
            .map(|r| r.addrs.as_slice())
            .unwrap_or_default()
    }

    /// Entries in the tables: (addresses, ufrags, sessions).
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (self.by_addr.len(), self.by_ufrag.len(), self.sessions.len())
    }

    pub fn clear(&mut self) {
        self.by_addr.clear();
        self.by_ufrag.clear();
        self.sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

    /// A STUN message of `typ` with the given attributes (type, value), padded.
    pub(crate) fn stun(typ: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = typ.to_be_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&COOKIE);
        out.extend_from_slice(&[7; 12]);
        out.extend_from_slice(&body);
        out
    }

    const USERNAME: u16 = 0x0006;
    const PRIORITY: u16 = 0x0024;
    const INTEGRITY: u16 = 0x0008;

    fn request(username: &[u8]) -> Vec<u8> {
        stun(
            0x0001,
            &[
                (USERNAME, username),
                (PRIORITY, &[0, 0, 0, 1]),
                (INTEGRITY, &[0; 20]),
            ],
        )
    }

    fn addr(port: u16) -> Path {
        (SocketAddr::from(([127, 0, 0, 1], port)), 0)
    }

    #[test]
    fn requests_route_by_ufrag_even_from_a_bound_address() {
        let mut demux = Demux::default();
        demux.add_session(PeerKey(1), "aaaa");
        demux.add_session(PeerKey(2), "bbbb");
        demux.bind(PeerKey(1), addr(5000));
        // From session 1's address, but naming session 2.
        assert_eq!(
            demux.route(&request(b"bbbb:x"), addr(5000)),
            Route::Stun(PeerKey(2))
        );
        assert_eq!(
            demux.route(&[0x80; 40], addr(5000)),
            Route::Bound(PeerKey(1))
        );
        assert_eq!(
            demux.route(&[0x80; 40], addr(5001)),
            Route::Drop(DropReason::UnknownSource)
        );
    }

    #[test]
    fn odd_usernames_route_nowhere_and_never_panic() {
        let mut demux = Demux::default();
        demux.add_session(PeerKey(1), "aaaa");
        let long = vec![b'a'; 600];
        let cases: [&[u8]; 8] = [
            b"",
            b":",
            b":x",
            b"x:",
            b"::",
            b"aaaa:",
            &[0xff, 0xfe, b':', 1],
            &long,
        ];
        for username in cases {
            let route = demux.route(&request(username), addr(1));
            assert!(matches!(route, Route::Drop(_)), "{username:?} → {route:?}");
        }
        // Binding indication with an empty local ufrag: the datagram that stopped shards.
        let indication = stun(0x0011, &[(USERNAME, b":x")]);
        assert_eq!(
            demux.route(&indication, addr(1)),
            Route::Drop(DropReason::StunIndication)
        );
        assert_eq!(stun_target(&indication), None);
        assert_eq!(stun_target(&request(b":x")), None);
        assert_eq!(stun_target(&request(b"aaaa:x")), Some("aaaa"));
    }

    #[test]
    fn overrunning_and_repeated_attributes_are_dropped() {
        let mut demux = Demux::default();
        demux.add_session(PeerKey(1), "aaaa");
        let mut overrun = request(b"aaaa:x");
        overrun[22..24].copy_from_slice(&0xfff0u16.to_be_bytes()); // USERNAME length
        assert!(matches!(demux.route(&overrun, addr(1)), Route::Drop(_)));
        let twice = stun(
            0x0001,
            &[
                (USERNAME, b"zzzz:x"),
                (USERNAME, b"aaaa:x"),
                (PRIORITY, &[0, 0, 0, 1]),
                (INTEGRITY, &[0; 20]),
            ],
        );
        // Whichever USERNAME the parser keeps, only a real session can come out,
        // and that session's `Rtc` still checks the integrity.
        let route = demux.route(&twice, addr(1));
        assert!(matches!(route, Route::Stun(PeerKey(1)) | Route::Drop(_)));
        for len in 0..24 {
            let _ = demux.route(&request(b"aaaa:x")[..len], addr(1));
        }
        assert_eq!(
            demux.route(&stun(0x0101, &[]), addr(1)),
            Route::Drop(DropReason::UnboundResponse)
        );
    }

    #[test]
    fn addresses_are_capped_per_session_and_freed_with_it() {
        let mut demux = Demux::default();
        demux.add_session(PeerKey(1), "aaaa");
        for port in 0..100 {
            demux.bind(PeerKey(1), addr(port));
        }
        assert_eq!(demux.table_sizes(), (MAX_ADDRS_PER_SESSION, 1, 1));
        // A path checked again is the last to go.
        let kept = addr(100 - MAX_ADDRS_PER_SESSION as u16);
        assert!(!demux.bind(PeerKey(1), kept));
        demux.bind(PeerKey(1), addr(500));
        assert!(demux.addrs_of(PeerKey(1)).contains(&kept));
        // The one checked least recently went instead.
        assert!(!demux
            .addrs_of(PeerKey(1))
            .contains(&addr(101 - MAX_ADDRS_PER_SESSION as u16)));
        assert_eq!(demux.table_sizes(), (MAX_ADDRS_PER_SESSION, 1, 1));
        demux.remove_session(PeerKey(1));
        assert_eq!(demux.table_sizes(), (0, 0, 0));
    }

    #[test]
    fn a_reused_address_moves_to_the_newer_session() {
        let mut demux = Demux::default();
        demux.add_session(PeerKey(1), "aaaa");
        demux.add_session(PeerKey(2), "bbbb");
        demux.bind(PeerKey(1), addr(9));
        demux.bind(PeerKey(2), addr(9));
        assert!(demux.addrs_of(PeerKey(1)).is_empty());
        demux.remove_session(PeerKey(1));
        assert_eq!(demux.route(&[0x80; 12], addr(9)), Route::Bound(PeerKey(2)));
        demux.set_ufrag(PeerKey(2), "cccc");
        assert_eq!(
            demux.route(&request(b"bbbb:x"), addr(9)),
            Route::Drop(DropReason::UnknownUfrag)
        );
        assert_eq!(
            demux.route(&request(b"cccc:x"), addr(9)),
            Route::Stun(PeerKey(2))
        );
    }
}
