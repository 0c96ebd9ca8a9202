//! What other threads (HTTP handlers, other shards) ask of a shard.

use std::sync::Arc;

use str0m::change::SdpOffer;
use str0m::Candidate;
use tokio::sync::oneshot;

use crate::peer::{AcceptError, PeerKey, Role};
use crate::router::layers::{LayerReport, LayerRequest};
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
    /// The WHEP layer extension: what a viewer gets of its video track, after
    /// applying `request` if there is one. `None` in the reply: no such viewer here.
    Layer {
        key: PeerKey,
        request: Option<LayerRequest>,
        reply: oneshot::Sender<Option<Result<LayerReport, String>>>,
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
    /// A data channel message from `from` in `room` (relayed form), for this
    /// shard's other participants in the room.
    Data {
        room: RoomId,
        from: Arc<str>,
        message: Arc<str>,
    },
    /// A viewer somewhere needs a keyframe from `room`'s publisher `publisher`
    /// (of one track's layer, or of every video stream).
    WantKeyframe {
        room: RoomId,
        publisher: PeerKey,
        layer: Option<(u64, u8)>,
    },
    /// The WHEP pin API: the participants a viewer pins, first first (`None`:
    /// only tell). The reply: the pins in force, `None` if no such viewer here.
    Pins {
        key: PeerKey,
        pins: Option<Vec<Arc<str>>>,
        reply: oneshot::Sender<Option<Vec<Arc<str>>>>,
    },
    /// `room`'s publisher `key` now lives on `shard`.
    PublisherAt {
        room: RoomId,
        key: PeerKey,
        shard: usize,
    },
    /// To a publisher's shard: send `viewer` (on `shard`) the keyframe cache of
    /// `track` (without one: of the first cached track not of `participant`,
    /// the viewer's own).
    WantReplay {
        room: RoomId,
        viewer: PeerKey,
        shard: usize,
        track: Option<u64>,
        participant: Arc<str>,
    },
    /// To the publisher's shard: `viewer` (on `shard`) switches to `layer` of
    /// `room`: send it that layer's cache if it is fresh, or ask the publisher for
    /// a keyframe of it.
    WantLayer {
        room: RoomId,
        layer: (u64, u8),
        viewer: PeerKey,
        shard: usize,
    },
    /// From the publisher's shard: what `viewer` needs to start (may be empty).
    Replay {
        viewer: PeerKey,
        packets: Vec<Arc<MediaPacket>>,
    },
    /// `room`'s publisher `key` left: its tracks leave the viewers' slots.
    PublisherLeft {
        room: RoomId,
        key: PeerKey,
    },
    /// Answered at once: the shard's loop is turning (readiness).
    Ping(oneshot::Sender<()>),
    /// Test builds only: make the shard panic in a chosen place.
    #[cfg(feature = "fault-injection")]
    Fault(Fault),
    Shutdown,
}

impl Command {
    /// The session a command is about, to which a panic while handling it is
    /// charged.
    pub fn session(&self) -> Option<PeerKey> {
        match self {
            Command::Accept(request) => Some(request.key),
            Command::Patch { key, .. }
            | Command::End { key, .. }
            | Command::Layer { key, .. }
            | Command::Pins { key, .. } => Some(*key),
            // (A `WantReplay`'s viewer lives on another shard: nothing to charge here.)
            Command::Replay { viewer, .. } => Some(*viewer),
            #[cfg(feature = "fault-injection")]
            Command::Fault(Fault::PanicInCommand(key)) => Some(*key),
            _ => None,
        }
    }

    /// What the inbox may do with it when it is full (see `handle.rs`).
    pub fn class(&self) -> CommandClass {
        match self {
            // A data message lost to a full inbox is like one lost on the way: the
            // sender's rate limit bounds how many there are.
            Command::Media(_)
            | Command::WantKeyframe { .. }
            | Command::WantLayer { .. }
            | Command::Data { .. } => CommandClass::Media,
            Command::Accept(_)
            | Command::Patch { .. }
            | Command::Layer { .. }
            | Command::Pins { .. } => CommandClass::Request,
            _ => CommandClass::Control,
        }
    }
}

/// How a full inbox treats a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Packets from another shard, and keyframe requests relayed for its
    /// viewers (a hint, repeated if needed): dropped when the inbox is full (the
    /// viewers' NACKs and keyframe requests repair the loss).
    Media,
    /// A new offer or a PATCH from HTTP: refused when the inbox is full (the
    /// client is answered 503 and may retry).
    Request,
    /// Everything else (session ends, membership and publisher changes between
    /// shards, replays): never dropped. Each is caused by a session that exists
    /// or by one of its bounded, rate-limited requests, so their number is
    /// bounded by the session caps.
    Control,
}

/// Test builds only: where to make the shard panic.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// While handling this command, charged to `PeerKey`'s session.
    PanicInCommand(PeerKey),
    /// Inside the WebRTC write path of this viewer, on its next forwarded packet.
    PanicOnWrite(PeerKey),
    /// Outside any session's step: the shard's loop itself restarts.
    PanicInLoop,
    /// The shard's thread stops as if it could not recover.
    KillThread,
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
    /// For a viewer: the room's publisher sends simulcast, so the viewer's
    /// bandwidth is estimated (TWCC) to choose its layer. Without simulcast there
    /// is nothing to choose, and str0m's pacing by the estimate would only slow
    /// the keyframe-cache burst a new viewer starts on.
    pub estimate_bandwidth: bool,
    pub participant: crate::peer::Participant,
    /// For a viewer: where its slots and the room's tracks are told.
    pub news: Option<tokio::sync::watch::Sender<crate::router::slots::ViewerNews>>,
    pub reply: oneshot::Sender<Result<String, AcceptError>>,
}
