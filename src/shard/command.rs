//! What other threads (HTTP handlers, other shards) ask of a shard.

use std::sync::Arc;

use str0m::change::SdpOffer;
use str0m::Candidate;
use tokio::sync::oneshot;

use crate::peer::{AcceptError, PeerKey, Role};
use crate::router::{MediaPacket, RoomId};

/// The reason given when the client DELETEs its session.
pub const DELETED_BY_CLIENT: &str = "deleted by the client";

pub enum Command {
    /// Create a session from an offer; the reply carries the SDP answer.
    Accept(Box<AcceptRequest>),
    /// A WHIP/WHEP PATCH: trickled candidates, or an ICE restart when the
    /// credentials differ from the session's current ones.
    Patch {
        key: PeerKey,
        credentials: Option<(String, String)>,
        candidates: Vec<Candidate>,
        reply: oneshot::Sender<PatchOutcome>,
    },
    /// End a session. Replies whether it existed here.
    End {
        key: PeerKey,
        reason: &'static str,
        reply: Option<oneshot::Sender<bool>>,
    },
    /// A viewer of `room` joined or left `shard`.
    ViewerCount {
        room: RoomId,
        shard: usize,
        joined: bool,
    },
    /// Packets from a publisher on another shard, for this shard's viewers.
    Media(Vec<Arc<MediaPacket>>),
    /// A viewer somewhere needs a keyframe from `room`'s publisher.
    WantKeyframe {
        room: RoomId,
    },
    /// `room`'s publisher now lives on `shard`.
    PublisherAt {
        room: RoomId,
        shard: usize,
    },
    /// To the publisher's shard: send `viewer` (on `shard`) the keyframe cache.
    WantReplay {
        room: RoomId,
        viewer: PeerKey,
        shard: usize,
    },
    /// From the publisher's shard: what `viewer` needs to start (may be empty).
    Replay {
        viewer: PeerKey,
        packets: Vec<Arc<MediaPacket>>,
    },
    /// `room`'s publisher left: viewers wait for the next one.
    PublisherLeft {
        room: RoomId,
    },
    Shutdown,
}

/// What a PATCH did.
#[derive(Debug)]
pub enum PatchOutcome {
    /// The session is not (or no longer) here.
    Gone,
    /// Candidates added to the current ICE session.
    Trickled,
    /// ICE restarted; our new credentials and candidates as an SDP fragment.
    Restarted(String),
    Failed(AcceptError),
}

pub struct AcceptRequest {
    pub key: PeerKey,
    pub role: Role,
    pub room: RoomId,
    pub offer: SdpOffer,
    pub offer_text: String,
    /// For a viewer: the video codec the room's publisher sends, listed first.
    pub preferred_video: Option<str0m::format::Codec>,
    pub reply: oneshot::Sender<Result<String, AcceptError>>,
}
