//! One participant: its str0m `Rtc` (in RTP mode), its role, and its session
//! lifecycle. A publisher turns incoming RTP into [`MediaPacket`]s; a viewer writes
//! forwarded packets into its outgoing streams. A peer lives on exactly one shard
//! and is only touched there.

mod answer;
mod credentials;
pub mod data;
pub mod offer;
mod publisher;
mod resend;
pub mod stats;
mod viewer;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::net::Transmit;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::router::extensions;
use crate::router::{MediaPacket, RoomId};
pub use publisher::PublisherSide;
use viewer::Squeeze;
pub use viewer::{ViewerSide, WriteOutcome, AUDIO_SHARE_BPS};

use crate::router::slots::ViewerNews;

pub use crate::ids::PeerKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Viewer => "viewer",
        }
    }
}

/// What a peer tells its shard after being driven.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// A publisher's packet, ready to fan out: shared from here on by every viewer.
    Media(Arc<MediaPacket>),
    /// A viewer asked for a keyframe (PLI/FIR) on the m-line `mid`.
    KeyframeWanted(str0m::media::Mid),
    /// The peer closed the connection or its ICE failed for good.
    Gone(&'static str),
    /// The WebRTC stack (or our code around it) panicked for this session: it
    /// must end, and the panic is counted.
    Failed(&'static str),
    /// A data channel message for the room's other participants, in its relayed
    /// form (see `data.rs`).
    Data(Arc<str>),
    /// What the stack's periodic stats add to the metrics.
    Stats(stats::StatsDelta),
}

/// Who a session belongs to: its WHIP and WHEP sessions share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// From the token (`sub`), the `participant` query parameter, or else the
    /// session's own key.
    pub identity: Arc<str>,
    pub name: Option<Arc<str>>,
    /// It may send data channel messages (its token grants `data`, or auth is off).
    pub may_send_data: bool,
}

/// What waits in a viewer's replay queue.
#[derive(Debug)]
enum Queued {
    Packet(std::sync::Arc<MediaPacket>, Option<Squeeze>),
    /// Restart the slot of this track on its next keyframe (a replay was cut short).
    Restart(u64),
}

/// Settings shared by every peer a shard creates.
#[derive(Clone)]
pub struct PeerSettings {
    pub dtls_cert: DtlsCert,
    pub local_candidates: Vec<Candidate>,
    pub reap_timeout: Duration,
    /// Where a viewer's bandwidth estimate starts (`None`: no estimation).
    pub viewer_initial_estimate: Option<Bitrate>,
}

pub struct Peer {
    pub key: PeerKey,
    pub role: Role,
    pub room: RoomId,
    pub participant: Participant,
    /// Its data channel, if it opened one.
    pub data: data::DataSide,
    pub rtc: Rtc,
    pub created: Instant,
    /// When this peer last sent something authenticated: a STUN message its
    /// `Rtc` accepted, a DTLS record from a bound address, or media that
    /// decrypted. Forged or rejected datagrams never move it.
    pub last_alive: Instant,
    pub connected: bool,
    /// The shard counts it as connected in its metrics.
    pub counted_connected: bool,
    pub ice_state: IceConnectionState,
    /// When `rtc` next wants `handle_input(Timeout)`.
    pub next_timeout: Option<Instant>,
    /// Our ICE username fragment, by which the shard routes STUN requests.
    pub ufrag: String,
    /// Waiting in the shard's list of peers to drain.
    pub queued: bool,
    /// When this viewer last asked each publisher for a keyframe (one entry per
    /// publisher it shows, at most: see [`Peer::may_ask_keyframe`]).
    keyframe_asked: Vec<(PeerKey, Instant)>,
    /// The client's ICE username fragment (from its offer, or its last restart).
    pub remote_ufrag: String,
    /// Remote candidates given so far (offer and PATCHes), capped at
    /// [`MAX_REMOTE_CANDIDATES`].
    remote_candidates: usize,
    /// Set when the WebRTC stack panicked: the session is ended at once.
    failed: Option<&'static str>,
    /// Test builds: the next forwarded packet panics inside the write path.
    #[cfg(feature = "fault-injection")]
    pub panic_on_write: bool,
    /// Live video of this track (of every track: `Some(None)`) waits while its
    /// keyframe cache is on its way from another shard (the cache covers it).
    pub awaiting_replay: Option<Option<u64>>,
    /// Video still to write, paced: the keyframe cache, then the live packets
    /// that arrived while it was going out (they follow it, in order).
    replay_queue: std::collections::VecDeque<Queued>,
    /// RTP timestamp (the publisher's) of the last video packet written: the
    /// picture in progress, which a cut-short replay must still complete.
    last_written_ts: Option<u32>,
    /// When the first video packet was written to this viewer.
    pub first_video_at: Option<Instant>,
    /// The client's offer, kept to renegotiate on an ICE restart.
    offer_text: String,
    pub publisher: PublisherSide,
    pub viewer: ViewerSide,
    /// Where a viewer's slots and the room's tracks are told to its events stream.
    pub news: Option<tokio::sync::watch::Sender<ViewerNews>>,
    /// The stack's stats as last reported, for the metrics' increments.
    stats: stats::StatsTracker,
}

/// Why an offer could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("{0}")]
    Unusable(String),
    #[error("the offer was refused during negotiation: {0}")]
    Negotiation(String),
}

impl Peer {
    /// Builds the peer's `Rtc`, accepts the offer and returns the peer with the SDP
    /// answer. `preferred_video` is listed first in the answer: a viewer's answer
    /// leads with the codec the room's publisher sends, since we never transcode.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        key: PeerKey,
        role: Role,
        room: RoomId,
        participant: Participant,
        offer: SdpOffer,
        offer_text: &str,
        settings: &PeerSettings,
        preferred_video: Option<Codec>,
        now: Instant,
    ) -> Result<(Peer, String), AcceptError> {
        let offered = offer::summarize(offer_text);
        if let Some(why) = offer::nothing_usable(&offered, role == Role::Publisher) {
            return Err(AcceptError::Unusable(why));
        }
        if let Some(why) = offer::too_many_lines(&offered) {
            return Err(AcceptError::Unusable(why));
        }
        let candidates = count_candidates(offer_text);
        if candidates > MAX_REMOTE_CANDIDATES {
            return Err(AcceptError::Unusable(format!(
                "the offer lists {candidates} ICE candidates; at most {MAX_REMOTE_CANDIDATES} are taken"
            )));
        }
        let credentials = credentials::random_ice_credentials();
        let mut config = rtc_config(settings, preferred_video);
        if role == Role::Viewer && settings.viewer_initial_estimate.is_some() {
            // The estimate each viewer's simulcast layer is chosen by (TWCC).
            config = config.enable_bwe(settings.viewer_initial_estimate);
        }
        let mut rtc = config
            .set_local_ice_credentials(credentials.clone())
            .build(now);
        for candidate in &settings.local_candidates {
            rtc.add_local_candidate(candidate.clone());
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| AcceptError::Negotiation(e.to_string()))?;

        let mut peer = Peer {
            key,
            role,
            room,
            data: data::DataSide::new(participant.may_send_data),
            participant,
            rtc,
            created: now,
            last_alive: now,
            connected: false,
            counted_connected: false,
            ice_state: IceConnectionState::New,
            next_timeout: None,
            ufrag: credentials.ufrag,
            queued: false,
            keyframe_asked: Vec::new(),
            failed: None,
            #[cfg(feature = "fault-injection")]
            panic_on_write: false,
            remote_ufrag: offer::first_ice_ufrag(offer_text).unwrap_or_default(),
            remote_candidates: candidates,
            awaiting_replay: None,
            replay_queue: std::collections::VecDeque::new(),
            last_written_ts: None,
            first_video_at: None,
            offer_text: offer_text.to_string(),
            publisher: PublisherSide::default(),
            viewer: ViewerSide::default(),
            news: None,
            stats: stats::StatsTracker::default(),
        };
        let mids = offered
            .iter()
            .filter(|m| m.is_av() && !m.rejected)
            .filter_map(|m| m.mid.as_deref());
        match role {
            Role::Publisher => peer.publisher.learn_media(&mut peer.rtc, mids),
            Role::Viewer => peer.viewer.learn_media(&mut peer.rtc, mids),
        }
        let usable = match role {
            Role::Publisher => peer.publisher.has_media(),
            // A participant may watch nothing and only talk on its data channel.
            Role::Viewer => peer.viewer.has_slots() || offer::has_data_channel(&offered),
        };
        if !usable {
            return Err(AcceptError::Unusable(format!(
                "no audio or video m-line could be negotiated with a codec we forward ({})",
                offer::FORWARDED_CODECS.join(", ")
            )));
        }
        let answer = answer.to_sdp_string();
        let answer = match role {
            // One media stream, so the viewer's browser syncs audio and video.
            Role::Viewer => answer::one_media_stream(&answer),
            Role::Publisher => answer,
        };
        Ok((peer, answer))
    }

    /// An ICE restart asked by the client (WHIP/WHEP PATCH with new credentials):
    /// the session is renegotiated as if the client had sent its offer again with
    /// them, and gets new local credentials of ours. Returns those and our
    /// candidates as an SDP fragment.
    pub fn ice_restart(
        &mut self,
        ufrag: &str,
        pwd: &str,
        candidates: &[Candidate],
    ) -> Result<String, AcceptError> {
        let text = offer::with_credentials(&self.offer_text, ufrag, pwd);
        let offer = SdpOffer::from_sdp_string(&text)
            .map_err(|e| AcceptError::Negotiation(e.to_string()))?;
        let accepted = self.guard("ICE restart", |peer| {
            peer.rtc.sdp_api().accept_offer(offer)?;
            // str0m picked new local credentials with its own generator: ours
            // replace them before any check can use them.
            let credentials = credentials::random_ice_credentials();
            peer.rtc
                .direct_api()
                .set_local_ice_credentials(credentials.clone());
            Ok::<_, str0m::RtcError>(credentials)
        });
        let credentials = match accepted {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(AcceptError::Negotiation(e.to_string())),
            None => {
                return Err(AcceptError::Negotiation(
                    "the server could not restart ICE (internal error, logged)".into(),
                ))
            }
        };
        self.offer_text = text;
        self.remote_ufrag = ufrag.to_string();
        self.ufrag = credentials.ufrag.clone();
        let mut frag = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
            credentials.ufrag, credentials.pass
        );
        for candidate in candidates {
            frag.push_str(&format!("a={}\r\n", candidate.to_sdp_string()));
        }
        frag.push_str("a=end-of-candidates\r\n");
        Ok(frag)
    }

    /// Runs `f` on this peer; a panic inside it fails the session (it is ended
    /// on the next drain) instead of unwinding into the shard.
    fn guard<R>(&mut self, what: &'static str, f: impl FnOnce(&mut Self) -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| f(&mut *self))) {
            Ok(r) => Some(r),
            Err(payload) => {
                self.fail(what, panic_message(payload.as_ref()));
                None
            }
        }
    }

    /// Whether the `Rtc` takes this datagram: for STUN, the USERNAME names this
    /// session and the MESSAGE-INTEGRITY is valid (or the response answers one
    /// of its checks). Nothing is handed in.
    pub fn accepts(&mut self, input: &Input) -> bool {
        self.guard("STUN check", |peer| peer.rtc.accepts(input))
            .unwrap_or(false)
    }

    /// The peer proved it is there (authenticated traffic): it is not reaped.
    pub fn note_alive(&mut self, now: Instant) {
        if now > self.last_alive {
            self.last_alive = now;
        }
    }

    /// Adds candidates trickled by the client, up to [`MAX_REMOTE_CANDIDATES`]
    /// in the session's life: a full ICE agent checks every candidate it is
    /// given, so an unbounded list would let a client aim our checks anywhere.
    pub fn add_remote_candidates(&mut self, candidates: Vec<Candidate>) {
        let room = MAX_REMOTE_CANDIDATES.saturating_sub(self.remote_candidates);
        if candidates.len() > room {
            tracing::info!(session = %self.key, given = candidates.len(), taken = room, "trickled candidates beyond the cap ignored");
        }
        self.remote_candidates += candidates.len().min(room);
        self.guard("trickled candidate", |peer| {
            for c in candidates.into_iter().take(room) {
                peer.rtc.add_remote_candidate(c);
            }
        });
    }

    /// Starts closing the connection (RTCP BYE, DTLS close_notify).
    pub fn disconnect(&mut self) {
        self.guard("disconnect", |peer| peer.rtc.disconnect());
    }

    pub fn handle_input(&mut self, input: Input) {
        // A panic inside the stack must cost this one session, not the shard.
        if let Some(Err(e)) = self.guard("input", |peer| peer.rtc.handle_input(input)) {
            tracing::debug!(peer = %self.key, error = %e, "input refused");
        }
    }

    /// Whether a panic was contained for this session (it ends on its next drain).
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Marks the session failed after a panic in `what`; it is ended on the
    /// next drain.
    fn fail(&mut self, what: &'static str, message: String) {
        tracing::error!(
            session = %self.key,
            room = %self.room,
            role = self.role.as_str(),
            step = what,
            panic = %message,
            "panic contained: the session will end"
        );
        self.failed = Some(ended::INTERNAL_ERROR);
    }

    /// Drives the `Rtc` until it has nothing more to say: datagrams go to
    /// `transmit`, what the shard must act on goes to `events`.
    pub fn drain(&mut self, transmit: &mut impl FnMut(Transmit), events: &mut Vec<PeerEvent>) {
        loop {
            if let Some(why) = self.failed {
                self.next_timeout = None;
                events.push(PeerEvent::Failed(why));
                return;
            }
            if !self.rtc.is_alive() {
                self.next_timeout = None;
                events.push(PeerEvent::Gone(ended::CONNECTION_CLOSED));
                return;
            }
            let output = match self.guard("output", |peer| peer.rtc.poll_output()) {
                None => continue, // failed: reported at the top of the loop
                Some(Ok(o)) => o,
                Some(Err(e)) => {
                    tracing::debug!(peer = %self.key, error = %e, "poll_output failed");
                    self.rtc.disconnect();
                    continue;
                }
            };
            match output {
                Output::Timeout(at) => {
                    self.next_timeout = Some(at);
                    return;
                }
                Output::Transmit(t) => transmit(t),
                Output::Event(event) => self.on_event(event, events),
            }
        }
    }

    fn on_event(&mut self, event: Event, events: &mut Vec<PeerEvent>) {
        match event {
            Event::Connected => {
                self.connected = true;
                events.push(PeerEvent::Connected);
            }
            Event::IceConnectionStateChange(state) => {
                self.ice_state = state;
                tracing::debug!(peer = %self.key, ?state, "ICE state");
            }
            Event::RtpPacket(packet) if self.role == Role::Publisher => {
                // It decrypted: the publisher is there.
                self.note_alive(packet.timestamp);
                let identity = &self.participant.identity;
                if let Some(media) =
                    self.publisher
                        .on_rtp(&mut self.rtc, &self.room, self.key, identity, packet)
                {
                    events.push(PeerEvent::Media(Arc::new(media)));
                }
            }
            Event::KeyframeRequest(request) if self.role == Role::Viewer => {
                events.push(PeerEvent::KeyframeWanted(request.mid));
            }
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe,
            }) if self.role == Role::Viewer => {
                tracing::trace!(peer = %self.key, estimate = estimate.as_u64(), can_probe, "bandwidth estimate");
                self.viewer.set_estimate(estimate.as_u64());
            }
            Event::ChannelOpen(id, label) => {
                tracing::debug!(peer = %self.key, %label, "data channel open");
                self.data.opened(id);
            }
            Event::ChannelData(d) => {
                let now = Instant::now();
                if self.data.received(&mut self.rtc, d.id, d.data.len(), now) {
                    let p = &self.participant;
                    let message = data::envelope(&p.identity, p.name.as_deref(), d.binary, &d.data);
                    events.push(PeerEvent::Data(message.into()));
                }
            }
            Event::ChannelClose(id) => self.data.channel_closed(id),
            Event::MediaEgressStats(s) => {
                if let (Role::Viewer, Some(rtt)) = (self.role, s.rtt) {
                    self.viewer.on_round_trip(&mut self.rtc, s.mid, rtt);
                }
                events.push(PeerEvent::Stats(self.stats.on_egress(&s)));
            }
            Event::MediaIngressStats(s) => {
                events.push(PeerEvent::Stats(self.stats.on_ingress(&s)));
            }
            Event::PeerStats(s) => events.push(PeerEvent::Stats(self.stats.on_peer(&s))),
            Event::Closed => events.push(PeerEvent::Gone(ended::CLOSED_BY_CLIENT)),
            _ => {}
        }
    }

    /// Asks the publisher for a keyframe on its video streams (those of one
    /// `(track, layer)` if given), at most once per `interval` per stream.
    pub fn request_keyframe(
        &mut self,
        layer: Option<(u64, u8)>,
        now: Instant,
        interval: Duration,
    ) -> bool {
        self.guard("keyframe request", |peer| {
            peer.publisher.request_keyframe(
                &mut peer.rtc,
                layer,
                now,
                interval,
                KeyframeRequestKind::Pli,
            )
        })
        .unwrap_or(false)
    }

    /// Writes a forwarded packet into this viewer's outgoing stream.
    pub fn write(&mut self, packet: &MediaPacket) -> WriteOutcome {
        self.write_guarded(packet, None)
    }

    /// Writes one packet (a replayed one with its `squeeze`); a panic in the
    /// rewrite or in str0m's `write_rtp` fails this viewer only.
    fn write_guarded(&mut self, packet: &MediaPacket, squeeze: Option<Squeeze>) -> WriteOutcome {
        if self.failed.is_some() {
            return WriteOutcome::Skipped;
        }
        // A participant never receives its own media (its WHEP session shares the
        // identity of its WHIP session).
        if *packet.participant == *self.participant.identity {
            return WriteOutcome::Skipped;
        }
        self.guard("write", |peer| {
            #[cfg(feature = "fault-injection")]
            if std::mem::take(&mut peer.panic_on_write) {
                panic!("injected fault: panic in the write path");
            }
            let outcome = peer.viewer.write_one(&mut peer.rtc, packet, squeeze);
            if outcome == WriteOutcome::Written {
                peer.stats.forwarded(1);
            }
            outcome
        })
        .unwrap_or(WriteOutcome::Skipped)
    }

    /// Whether this viewer may ask `publisher` for a keyframe now (at most once
    /// per `interval` each); if so, the ask is noted.
    pub fn may_ask_keyframe(
        &mut self,
        publisher: PeerKey,
        now: Instant,
        interval: Duration,
    ) -> bool {
        match self
            .keyframe_asked
            .iter_mut()
            .find(|(p, _)| *p == publisher)
        {
            Some((_, at)) if now.saturating_duration_since(*at) < interval => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                // Bounded by the publishers it shows: those gone are forgotten.
                if self.keyframe_asked.len() >= MAX_KEYFRAME_ASKS {
                    self.keyframe_asked.remove(0);
                }
                self.keyframe_asked.push((publisher, now));
                true
            }
        }
    }

    /// Live video of `track` waits for a replay on its way.
    pub fn awaits_replay_of(&self, track: u64) -> bool {
        self.awaiting_replay
            .is_some_and(|t| t.is_none_or(|t| t == track))
    }

    /// Queues the keyframe cache for a viewer that just connected (or switches
    /// layers); it goes out paced by [`Peer::pace_replay`], the live packets of
    /// its track queued behind it.
    pub fn start_replay(&mut self, packets: &[std::sync::Arc<MediaPacket>]) {
        self.awaiting_replay = None;
        self.replay_queue.extend(
            viewer::plan_replay(packets)
                .into_iter()
                .map(|(packet, squeeze)| Queued::Packet(packet, squeeze)),
        );
    }

    /// A replay is going out.
    pub fn is_replaying(&self) -> bool {
        !self.replay_queue.is_empty()
    }

    /// Whether a live packet of `track` must queue behind the replay going out
    /// (other tracks are written live).
    pub fn replays_track(&self, track: u64) -> bool {
        let replayed = self.replay_queue.front().map(|q| match q {
            Queued::Packet(p, _) => p.track,
            Queued::Restart(track) => *track,
        });
        replayed == Some(track)
    }

    /// Live video of the track being replayed. A new keyframe makes what is
    /// still queued pointless: it is dropped and the stream restarts on the
    /// keyframe, numbering continuous (the publisher answered our PLI). A queue
    /// that outgrows [`MAX_REPLAY_QUEUE`] (the replay cannot keep up) is dropped
    /// and the track's slot starts again on its next keyframe.
    pub fn queue_behind_replay(&mut self, packet: &std::sync::Arc<MediaPacket>) {
        if self.replay_queue.len() >= MAX_REPLAY_QUEUE {
            self.replay_queue.clear();
            self.viewer.restart_track(packet.track);
            return;
        }
        // Only a keyframe of what is being replayed (another simulcast layer's
        // keyframe says nothing about this one).
        let replayed = self.replay_queue.iter().find_map(|q| match q {
            Queued::Packet(p, _) => Some((p.track, p.layer)),
            Queued::Restart(_) => None,
        });
        if packet.keyframe && replayed.is_none_or(|r| r == (packet.track, packet.layer)) {
            // Finish the picture being written (a decoder cannot use half of
            // one), drop the rest, and restart on the keyframe.
            let in_progress = self.last_written_ts;
            let finishing = self
                .replay_queue
                .iter()
                .take_while(
                    |q| matches!(q, Queued::Packet(p, _) if Some(p.timestamp) == in_progress),
                )
                .count();
            self.replay_queue.truncate(finishing);
            self.replay_queue.push_back(Queued::Restart(packet.track));
        }
        self.replay_queue
            .push_back(Queued::Packet(std::sync::Arc::clone(packet), None));
    }

    /// Writes up to `budget` queued packets; returns how many were written, and
    /// their payload bytes.
    pub fn pace_replay(&mut self, budget: usize) -> (usize, usize) {
        let mut written = 0;
        let mut bytes = 0;
        for _ in 0..budget {
            match self.replay_queue.pop_front() {
                None => break,
                Some(Queued::Restart(track)) => self.viewer.restart_track(track),
                Some(Queued::Packet(packet, squeeze)) => {
                    if self.write_guarded(&packet, squeeze) == WriteOutcome::Written {
                        self.last_written_ts = Some(packet.timestamp);
                        written += 1;
                        bytes += packet.payload.len();
                    }
                }
            }
        }
        (written, bytes)
    }

    /// Publisher `key` of the room left: nothing of it is replayed any more (its
    /// tracks leave the slots when they are assigned again).
    pub fn forget_publisher(&mut self, key: PeerKey) {
        self.replay_queue
            .retain(|q| !matches!(q, Queued::Packet(p, _) if p.publisher == key));
        if self
            .replay_queue
            .iter()
            .all(|q| matches!(q, Queued::Restart(_)))
        {
            self.replay_queue.clear();
        }
        self.keyframe_asked.retain(|(p, _)| *p != key);
    }

    /// Gives the viewer's slots to the room's tracks, and tells its events stream
    /// when a slot changed (always with `tell`: the tracks' state may have).
    pub fn assign_slots(&mut self, sources: &crate::router::sources::RoomSources, tell: bool) {
        let changed = self.viewer.assign(sources, &self.participant.identity);
        if changed || tell {
            self.tell_news(sources);
        }
    }

    /// Tells the viewer's events stream its slots and the room's tracks, if they changed.
    fn tell_news(&self, sources: &crate::router::sources::RoomSources) {
        if let Some(news) = &self.news {
            let now = self.viewer.news(sources, &self.participant.identity);
            news.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
        }
    }

    /// Why this session should be ended now, if it should.
    pub fn reap_reason(&self, now: Instant, timeout: Duration) -> Option<&'static str> {
        if let Some(why) = self.failed {
            return Some(why);
        }
        if !self.rtc.is_alive() {
            return Some(ended::CONNECTION_CLOSED);
        }
        if !self.connected && now.saturating_duration_since(self.created) > timeout {
            return Some(ended::NEVER_CONNECTED);
        }
        if now.saturating_duration_since(self.last_alive) > timeout {
            return Some(ended::SILENT);
        }
        if matches!(self.ice_state, IceConnectionState::Disconnected)
            && now.saturating_duration_since(self.last_alive) > timeout / 2
        {
            return Some(ended::ICE_DISCONNECTED);
        }
        None
    }
}

/// Live packets queued behind a replay at most (about 2 s of a 10 Mbit/s track):
/// past it the replay cannot keep up and is dropped.
const MAX_REPLAY_QUEUE: usize = 2048;

/// Publishers a viewer's keyframe requests are remembered for (more than it
/// can show at once).
const MAX_KEYFRAME_ASKS: usize = 2 * offer::MAX_SLOTS_PER_KIND;

/// Why the server ends a session on its own: the reasons logged, and the ones
/// the reaped-sessions metric labels (`Metrics::reap_label`).
pub mod ended {
    pub const CONNECTION_CLOSED: &str = "connection closed";
    pub const CLOSED_BY_CLIENT: &str = "closed by the client";
    pub const NEVER_CONNECTED: &str = "ICE/DTLS did not connect in time";
    pub const SILENT: &str = "nothing authenticated received from the client";
    pub const ICE_DISCONNECTED: &str = "ICE disconnected";
    pub const INTERNAL_ERROR: &str = "internal error (a panic was contained; logged)";
}

/// Remote ICE candidates one session may give (offer and trickle together).
/// Real clients give a handful; each one is a destination of our checks.
pub const MAX_REMOTE_CANDIDATES: usize = 64;

fn count_candidates(sdp: &str) -> usize {
    sdp.lines()
        .filter(|l| l.trim_start().starts_with("a=candidate:"))
        .count()
}

/// The text of a caught panic, for the log.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// The video codecs we forward, in our default order of preference.
const VIDEO_CODECS: [Codec; 5] = [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::H265, Codec::Av1];

/// What was negotiated on one m-line: its kind, the rids the client sends, and
/// the codecs (our payload params whose type the client listed).
pub(crate) struct Negotiated {
    pub mid: str0m::media::Mid,
    pub kind: MediaKind,
    pub rids_rx: Vec<String>,
    pub codecs: Vec<(str0m::media::Pt, str0m::format::CodecSpec)>,
}

/// Reads the m-line `mid` if its (our side's) direction is one of `directions`
/// and at least one codec was agreed on.
pub(crate) fn negotiated(
    rtc: &Rtc,
    mid: &str,
    directions: &[str0m::media::Direction],
) -> Option<Negotiated> {
    let mid = str0m::media::Mid::from(mid);
    let media = rtc.media(mid)?;
    if !directions.contains(&media.direction()) {
        return None;
    }
    let remote_pts = media.remote_pts();
    let codecs: Vec<_> = rtc
        .codec_config()
        .params()
        .iter()
        .filter(|p| remote_pts.contains(&p.pt()))
        .map(|p| (p.pt(), p.spec()))
        .collect();
    if codecs.is_empty() {
        return None;
    }
    let rids_rx = match media.rids_rx() {
        str0m::media::Rids::Specific(list) => list.iter().map(|r| r.to_string()).collect(),
        _ => Vec::new(),
    };
    Some(Negotiated {
        mid,
        kind: media.kind(),
        rids_rx,
        codecs,
    })
}

/// H264 profiles real clients offer beyond str0m's defaults (42001f, 42e01f,
/// 4d001f, 64001f): Safari's constrained high 640c1f and high 4:4:4 f4001f. We
/// forward any profile, so we accept them (packetization-mode 1). Only profiles
/// distinct from the defaults: str0m matches H264 across levels, and two of our
/// payload types matching one offered type makes it panic (`Pt locked multiple
/// times`), so e.g. 640032 next to 64001f must not be added.
const EXTRA_H264_PROFILES: [u32; 2] = [0x640c1f, 0xf4001f];

fn with_more_h264_profiles(mut config: RtcConfig) -> RtcConfig {
    let codecs = config.codec_config();
    let mut used: Vec<u8> = codecs
        .params()
        .iter()
        .flat_map(|p| [Some(p.pt()), p.resend()])
        .flatten()
        .map(|pt| *pt)
        .collect();
    // Payload types are renumbered to the client's in an answer; ours only need to
    // be distinct.
    let mut free = (96u8..=127)
        .chain(35..=63)
        .filter(|pt| !used.contains(pt))
        .collect::<Vec<_>>()
        .into_iter();
    for profile in EXTRA_H264_PROFILES {
        let (Some(pt), Some(rtx)) = (free.next(), free.next()) else {
            break;
        };
        used.extend([pt, rtx]);
        codecs.add_h264(pt.into(), Some(rtx.into()), true, profile);
    }
    config
}

const AUDIO_REPORT_INTERVAL: Duration = Duration::from_secs(1);

fn rtc_config(settings: &PeerSettings, preferred_video: Option<Codec>) -> RtcConfig {
    let mut config = RtcConfig::new()
        .set_rtp_mode(true)
        // Audio sender reports every second, as for video (str0m's default is 5 s):
        // a new viewer can sync audio and video after one second instead of five.
        .set_rtcp_report_interval_audio(AUDIO_REPORT_INTERVAL)
        // NACKs, keyframe requests, loss and estimates for the metrics.
        .set_stats_interval(Some(stats::STATS_INTERVAL))
        .set_dtls_cert(settings.dtls_cert.clone())
        .clear_codecs()
        .enable_opus(true, false);
    // Each enable_* appends its payload types: the order of the calls is the order
    // of preference in our answers.
    let order = preferred_video.into_iter().chain(
        VIDEO_CODECS
            .into_iter()
            .filter(|c| Some(*c) != preferred_video),
    );
    for codec in order {
        config = match codec {
            Codec::Vp8 => config.enable_vp8(true),
            Codec::Vp9 => config.enable_vp9(true),
            Codec::H264 => config.enable_h264(true),
            Codec::H265 => config.enable_h265(true),
            Codec::Av1 => config.enable_av1(true),
            _ => config,
        };
    }
    // After every codec is enabled: the extra profiles take payload types no
    // other codec uses (str0m's H265 has fixed ones; taken before it was
    // enabled, 102/103 were claimed twice and the answer could list 102 twice).
    let mut config = with_more_h264_profiles(config)
        // str0m's first resend history per stream (its default is 1,000+ packets);
        // a viewer's video streams then keep what `peer/resend.rs` says.
        .set_send_buffer_video(300)
        .set_send_buffer_audio(50);
    // Beyond str0m's standard extensions: those a viewer needs as the publisher sent them.
    for (id, extension) in extensions::NEGOTIATED {
        config = config.set_extension(id, extension);
    }
    config
}
