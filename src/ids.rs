//! The names the other modules share: a session's key and a room's name. A leaf:
//! it imports nothing of ours, so `router/` (pure forwarding decisions) and
//! `peer/` (one participant's WebRTC stack) both use it without importing each
//! other's internals for it.

use std::fmt;
use std::sync::Arc;

/// A session's identity: in the resource URL, in the shard's tables, and in logs.
/// Random, so it is unique across nodes as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

impl PeerKey {
    pub fn random() -> Self {
        PeerKey(rand::random::<u64>() | 1)
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(PeerKey)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A room's name, shared cheaply between the packets and tables that mention it.
pub type RoomId = Arc<str>;
