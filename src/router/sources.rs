//! The tracks a shard sees in one room, from the packets that pass through it:
//! who publishes what, which tracks are muted (no media for a while), how loud
//! each audio track is (RFC 6464 audio level, smoothed), and who the active
//! speaker is. Pure logic, time passed in: the shard feeds it packets and ticks
//! it; the slot policy (`slots.rs`) reads it.
//!
//! Every shard with viewers of a room sees the same packets, so each reaches
//! the same view without talking to the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use crate::ids::PeerKey;

/// A track with no packet for this long is muted (a browser that stops a track,
/// a publisher that froze); its next packet unmutes it.
pub const MUTED_AFTER: Duration = Duration::from_millis(1500);

/// How often [`RoomSources::tick`] should run: the smoothing below assumes it.
pub const TICK: Duration = Duration::from_millis(200);

/// The weight of one tick's mean loudness in the smoothed one (a time constant
/// of about 400 ms at [`TICK`]).
const SMOOTHING: f32 = 0.4;

/// Smoothed loudness (127 minus the level in -dBov) at which a track counts as
/// speaking: speech measures 20–50 dBov, room noise 70 and more, silence 127.
pub const SPEAKING: f32 = 60.0;

/// How much louder (dB) a challenger must be than the active speaker, or an audio
/// slot's holder, to take its place: short bursts do not flip the choice.
pub const HYSTERESIS: f32 = 6.0;

/// What the shard knows of one published track.
#[derive(Debug, Clone)]
pub struct Source {
    pub track: u64,
    pub publisher: PeerKey,
    pub participant: Arc<str>,
    pub kind: MediaKind,
    /// The order in which the room's tracks were learnt: join order.
    pub order: u64,
    pub last_packet: Instant,
    pub muted: bool,
    /// Smoothed loudness, 0 (silence) to 127; audio only.
    pub loudness: f32,
    /// Loudness of the packets since the last tick: sum and count.
    pending_loudness: (f32, u32),
}

/// What one packet told about its track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A track already known and running.
    Known,
    /// A new track: the slots must be given out again before it is forwarded.
    New,
    /// A muted track has media again: slots and events must hear of it.
    Unmuted,
    /// A packet of a publisher the room does not have (any more): dropped.
    Stray,
}

/// What a tick found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickOutcome {
    /// A track's muted state or the active speaker changed, or the loudness
    /// ranking moved: the slots must be looked at again.
    pub changed: bool,
    /// Some audio track speaks: where there are fewer audio slots than audio
    /// tracks, the loudest may have changed.
    pub speaking: bool,
}

/// The tracks of one room as one shard sees them.
#[derive(Debug, Default)]
pub struct RoomSources {
    sources: Vec<Source>,
    next_order: u64,
    /// The room's publishers in the order they joined (as announced to this
    /// shard): the join order of their tracks, whichever packet comes first.
    joined: Vec<PeerKey>,
    active_speaker: Option<Arc<str>>,
    /// When each participant was last the active speaker, most recent first.
    spoke: Vec<(Arc<str>, Instant)>,
}

/// Loudness from an RFC 6464 level as str0m gives it (-127..=0 dBov).
pub fn loudness(level: i8) -> f32 {
    f32::from(127 - level.unsigned_abs().min(127))
}

impl RoomSources {
    /// Notes one packet of `track`: what changed. A track of a publisher this
    /// shard was not told of (one whose late packets follow its leaving) is not
    /// learnt: it would never be forgotten.
    pub fn observe(
        &mut self,
        track: u64,
        publisher: PeerKey,
        participant: &Arc<str>,
        kind: MediaKind,
        audio_level: Option<i8>,
        at: Instant,
    ) -> Observed {
        if let Some(s) = self.sources.iter_mut().find(|s| s.track == track) {
            s.last_packet = s.last_packet.max(at);
            if let Some(level) = audio_level {
                s.pending_loudness.0 += loudness(level);
                s.pending_loudness.1 += 1;
            }
            return if std::mem::take(&mut s.muted) {
                Observed::Unmuted
            } else {
                Observed::Known
            };
        }
        self.learn(track, publisher, participant, kind, at)
    }

    /// Learns a track from a replayed (older) packet: only an unknown one is
    /// added; a known one's state is left as it is.
    pub fn learn(
        &mut self,
        track: u64,
        publisher: PeerKey,
        participant: &Arc<str>,
        kind: MediaKind,
        at: Instant,
    ) -> Observed {
        if self.get(track).is_some() {
            return Observed::Known;
        }
        let Some(rank) = self.joined.iter().position(|p| *p == publisher) else {
            return Observed::Stray;
        };
        self.next_order += 1;
        self.sources.push(Source {
            track,
            publisher,
            participant: Arc::clone(participant),
            kind,
            order: ((rank as u64) << 32) | self.next_order,
            last_packet: at,
            muted: false,
            loudness: 0.0,
            pending_loudness: (0.0, 0),
        });
        Observed::New
    }

    /// A publisher joined the room: its tracks rank after those who joined before.
    pub fn publisher_joined(&mut self, publisher: PeerKey) {
        if !self.joined.contains(&publisher) {
            self.joined.push(publisher);
        }
    }

    /// Forgets a publisher's tracks. True if it had any.
    pub fn remove_publisher(&mut self, publisher: PeerKey) -> bool {
        self.joined.retain(|p| *p != publisher);
        let before = self.sources.len();
        self.sources.retain(|s| s.publisher != publisher);
        // Who is gone is no longer a speaker (this bounds `spoke` by the room).
        let sources = &self.sources;
        let present = |p: &Arc<str>| sources.iter().any(|s| s.participant == *p);
        self.spoke.retain(|(p, _)| present(p));
        if self.active_speaker.as_ref().is_some_and(|p| !present(p)) {
            self.active_speaker = None;
        }
        before != self.sources.len()
    }

    /// Smooths the audio levels, marks silent tracks muted and picks the active
    /// speaker. Runs every [`TICK`].
    pub fn tick(&mut self, now: Instant) -> TickOutcome {
        let mut changed = false;
        let mut speaking = false;
        for s in &mut self.sources {
            if !s.muted && now.saturating_duration_since(s.last_packet) > MUTED_AFTER {
                s.muted = true;
                changed = true;
            }
            if s.kind == MediaKind::Audio {
                let (sum, count) = std::mem::take(&mut s.pending_loudness);
                let mean = if count == 0 { 0.0 } else { sum / count as f32 };
                let before = s.loudness >= SPEAKING;
                s.loudness += SMOOTHING * (mean - s.loudness);
                // Crossing the speaking line can reorder the audio slots.
                changed |= before != (s.loudness >= SPEAKING);
                speaking |= s.loudness >= SPEAKING;
            }
        }
        if let Some(speaker) = self.choose_speaker() {
            if self.active_speaker.as_ref() != Some(&speaker) {
                self.active_speaker = Some(Arc::clone(&speaker));
                changed = true;
            }
            self.spoke.retain(|(p, _)| *p != speaker);
            self.spoke.insert(0, (speaker, now));
        }
        TickOutcome { changed, speaking }
    }

    /// The loudest speaking participant, unless the current speaker still speaks
    /// and is not outdone by [`HYSTERESIS`].
    fn choose_speaker(&self) -> Option<Arc<str>> {
        let loudest = self
            .sources
            .iter()
            .filter(|s| s.kind == MediaKind::Audio && !s.muted && s.loudness >= SPEAKING)
            .max_by(|a, b| a.loudness.total_cmp(&b.loudness))?;
        let current = self.active_speaker.as_ref().and_then(|p| {
            self.sources
                .iter()
                .filter(|s| s.kind == MediaKind::Audio && !s.muted && s.participant == *p)
                .map(|s| s.loudness)
                .max_by(f32::total_cmp)
        });
        match (current, &self.active_speaker) {
            (Some(level), Some(p))
                if level >= SPEAKING && loudest.loudness < level + HYSTERESIS =>
            {
                Some(Arc::clone(p))
            }
            _ => Some(Arc::clone(&loudest.participant)),
        }
    }

    pub fn active_speaker(&self) -> Option<&Arc<str>> {
        self.active_speaker.as_ref()
    }

    /// When `participant` was last the active speaker.
    pub fn last_spoke(&self, participant: &str) -> Option<Instant> {
        self.spoke
            .iter()
            .find(|(p, _)| &**p == participant)
            .map(|(_, at)| *at)
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn publisher_of(&self, track: u64) -> Option<PeerKey> {
        self.sources
            .iter()
            .find(|s| s.track == track)
            .map(|s| s.publisher)
    }

    pub fn get(&self, track: u64) -> Option<&Source> {
        self.sources.iter().find(|s| s.track == track)
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// How many of the tracks are of `kind`.
    pub fn count(&self, kind: MediaKind) -> usize {
        self.sources.iter().filter(|s| s.kind == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> (RoomSources, Instant) {
        (RoomSources::default(), Instant::now())
    }

    /// `ticks` ticks during which `levels` (track, -dBov) arrive every 20 ms.
    fn speak(sources: &mut RoomSources, at: &mut Instant, levels: &[(u64, i8)], ticks: u32) {
        for (track, _) in levels {
            sources.publisher_joined(PeerKey(*track));
        }
        for _ in 0..ticks {
            for _ in 0..10 {
                *at += Duration::from_millis(20);
                for (track, level) in levels {
                    let participant: Arc<str> = format!("p{track}").into();
                    sources.observe(
                        *track,
                        PeerKey(*track),
                        &participant,
                        MediaKind::Audio,
                        Some(*level),
                        *at,
                    );
                }
            }
            sources.tick(*at);
        }
    }

    #[test]
    fn a_new_track_and_an_unmuted_one_ask_for_a_new_assignment() {
        let (mut s, mut at) = room();
        let p: Arc<str> = "a".into();
        let video =
            |s: &mut RoomSources, at| s.observe(1, PeerKey(1), &p, MediaKind::Video, None, at);
        assert_eq!(
            video(&mut s, at),
            Observed::Stray,
            "a publisher nobody announced"
        );
        s.publisher_joined(PeerKey(1));
        assert_eq!(video(&mut s, at), Observed::New);
        assert_eq!(video(&mut s, at), Observed::Known);
        at += MUTED_AFTER + Duration::from_millis(1);
        assert!(s.tick(at).changed, "silence mutes it");
        assert!(s.get(1).is_some_and(|t| t.muted));
        assert!(!s.tick(at).changed, "once");
        // A replayed packet says nothing about now: still muted.
        assert_eq!(
            s.learn(1, PeerKey(1), &p, MediaKind::Video, at),
            Observed::Known
        );
        assert!(s.get(1).is_some_and(|t| t.muted));
        assert_eq!(video(&mut s, at), Observed::Unmuted);
        assert!(s.get(1).is_some_and(|t| !t.muted));
        assert!(s.remove_publisher(PeerKey(1)));
        assert!(s.is_empty());
        // Its late packets do not bring it back.
        assert_eq!(video(&mut s, at), Observed::Stray);
        assert!(s.is_empty());
    }

    #[test]
    fn the_loudest_speaker_becomes_active_and_keeps_it_against_a_slightly_louder_one() {
        let (mut s, mut at) = room();
        // 1 speaks (-30 dBov), 2 is quiet room noise.
        speak(&mut s, &mut at, &[(1, -30), (2, -90)], 10);
        assert_eq!(s.active_speaker().map(|p| &**p), Some("p1"));
        // 2 speaks a little louder than 1: within the hysteresis, 1 keeps it.
        speak(&mut s, &mut at, &[(1, -30), (2, -27)], 10);
        assert_eq!(s.active_speaker().map(|p| &**p), Some("p1"));
        // 2 much louder: it takes over.
        speak(&mut s, &mut at, &[(1, -40), (2, -20)], 10);
        assert_eq!(s.active_speaker().map(|p| &**p), Some("p2"));
        assert!(s.last_spoke("p2") > s.last_spoke("p1"));
        // 2 falls silent, 1 speaks: 1 is active again.
        speak(&mut s, &mut at, &[(1, -30), (2, -127)], 10);
        assert_eq!(s.active_speaker().map(|p| &**p), Some("p1"));
    }

    #[test]
    fn nobody_speaking_keeps_the_last_speaker() {
        let (mut s, mut at) = room();
        speak(&mut s, &mut at, &[(1, -30), (2, -127)], 10);
        speak(&mut s, &mut at, &[(1, -127), (2, -127)], 10);
        assert_eq!(s.active_speaker().map(|p| &**p), Some("p1"));
    }

    #[test]
    fn join_order_is_the_publishers_not_the_first_packets() {
        let (mut s, at) = room();
        s.publisher_joined(PeerKey(1));
        s.publisher_joined(PeerKey(2));
        s.publisher_joined(PeerKey(1)); // announced again: keeps its place
        let p: Arc<str> = "p".into();
        s.observe(20, PeerKey(2), &p, MediaKind::Video, None, at);
        s.observe(10, PeerKey(1), &p, MediaKind::Video, None, at);
        let order = |t| s.get(t).map(|s| s.order);
        assert!(order(10) < order(20));
    }

    #[test]
    fn a_single_loud_packet_does_not_make_a_speaker() {
        let (mut s, mut at) = room();
        speak(&mut s, &mut at, &[(1, -127)], 5);
        let p: Arc<str> = "p1".into();
        assert_eq!(s.get(1).map(|t| &*t.participant), Some("p1"));
        at += Duration::from_millis(20);
        s.observe(1, PeerKey(1), &p, MediaKind::Audio, Some(0), at);
        for _ in 0..9 {
            at += Duration::from_millis(20);
            s.observe(1, PeerKey(1), &p, MediaKind::Audio, Some(-127), at);
        }
        s.tick(at);
        assert_eq!(s.active_speaker(), None);
    }

    #[test]
    fn loudness_is_bounded_for_any_level() {
        for level in i8::MIN..=i8::MAX {
            let l = loudness(level);
            assert!((0.0..=127.0).contains(&l), "{level} -> {l}");
        }
        assert_eq!(loudness(0), 127.0);
        assert_eq!(loudness(-127), 0.0);
    }
}
