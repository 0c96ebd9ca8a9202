//! Who is shown where: the pure policy that gives a viewer's slots (one per
//! recvonly m-line of its offer) to the room's tracks.
//!
//! - Audio slots go to the loudest tracks (smoothed RFC 6464 level, see
//!   `sources.rs`); a track holding a slot keeps it unless a challenger is
//!   louder by [`HYSTERESIS`].
//! - Video slots go to the viewer's pinned participants first (in pin order),
//!   then to the most recent active speakers, then by join order. Muted tracks
//!   come after every unmuted one.
//!
//! A track that stays chosen keeps its slot, so a change moves as few tiles as
//! possible. The viewer's own tracks are never candidates (the caller leaves
//! them out). The shard applies the result: a video slot switches source on the
//! new source's keyframe (`peer/viewer.rs`), with the same rewriting as a
//! simulcast layer switch.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use str0m::media::MediaKind;

pub use super::sources::HYSTERESIS;

/// What one viewer is told about its slots and the room's tracks (its events
/// stream turns changes into `slots`, `active-speaker`, `track-muted` and
/// `track-unmuted`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewerNews {
    /// Every slot of the viewer, in m-line order, and the track it shows (or is
    /// moving to).
    pub slots: Vec<SlotView>,
    pub active_speaker: Option<Arc<str>>,
    /// The room's tracks but the viewer's own, and whether each is muted.
    pub tracks: Vec<(TrackView, bool)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlotView {
    pub mid: String,
    pub kind: MediaKind,
    pub track: Option<TrackView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrackView {
    /// Opaque, unique in this process for the track's life.
    pub track: u64,
    pub participant: Arc<str>,
    pub kind: MediaKind,
}

/// One track a slot may show, as the policy weighs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub track: u64,
    pub participant: Arc<str>,
    pub muted: bool,
    /// Smoothed loudness, 0 (silence) to 127 (audio).
    pub loudness: f32,
    /// When its participant was last the active speaker.
    pub last_spoke: Option<Instant>,
    /// Join order: lower joined earlier.
    pub order: u64,
}

/// The tracks for a viewer's audio slots (`current`: what each shows now).
pub fn assign_audio(current: &[Option<u64>], candidates: &[Candidate]) -> Vec<Option<u64>> {
    let mut ranked: Vec<&Candidate> = candidates.iter().collect();
    let held = |c: &Candidate| current.contains(&Some(c.track));
    let score = |c: &Candidate| c.loudness + if held(c) { HYSTERESIS } else { 0.0 };
    ranked.sort_by(|a, b| {
        a.muted
            .cmp(&b.muted)
            .then(score(b).total_cmp(&score(a)))
            .then(a.order.cmp(&b.order))
    });
    place(current, &ranked)
}

/// The tracks for a viewer's video slots, `pins` being the participants it
/// pinned, first first.
pub fn assign_video(
    current: &[Option<u64>],
    candidates: &[Candidate],
    pins: &[Arc<str>],
) -> Vec<Option<u64>> {
    let mut ranked: Vec<&Candidate> = candidates.iter().collect();
    let pin = |c: &Candidate| {
        pins.iter()
            .position(|p| *p == c.participant)
            .unwrap_or(usize::MAX)
    };
    ranked.sort_by_key(|c| (pin(c), c.muted, Reverse(c.last_spoke), c.order));
    place(current, &ranked)
}

/// The first `current.len()` of `ranked`, each already shown keeping its slot,
/// the others in the free slots in rank order.
fn place(current: &[Option<u64>], ranked: &[&Candidate]) -> Vec<Option<u64>> {
    let chosen: Vec<u64> = ranked.iter().take(current.len()).map(|c| c.track).collect();
    let mut out: Vec<Option<u64>> = Vec::with_capacity(current.len());
    for shown in current {
        let keep = shown.filter(|t| chosen.contains(t) && !out.contains(&Some(*t)));
        out.push(keep);
    }
    let newcomers: Vec<u64> = chosen
        .iter()
        .filter(|t| !out.contains(&Some(**t)))
        .copied()
        .collect();
    let mut newcomers = newcomers.into_iter();
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        *slot = newcomers.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn candidate(track: u64, participant: &str) -> Candidate {
        Candidate {
            track,
            participant: participant.into(),
            muted: false,
            loudness: 0.0,
            last_spoke: None,
            order: track,
        }
    }

    #[test]
    fn video_slots_go_by_join_order_when_nobody_spoke() {
        let all = [candidate(1, "a"), candidate(2, "b"), candidate(3, "c")];
        assert_eq!(assign_video(&[None, None], &all, &[]), [Some(1), Some(2)]);
        // More slots than publishers: the rest stay empty.
        assert_eq!(
            assign_video(&[None, None, None, None], &all[..2], &[]),
            [Some(1), Some(2), None, None]
        );
        assert_eq!(assign_video(&[], &all, &[]), Vec::<Option<u64>>::new());
    }

    #[test]
    fn recent_speakers_come_before_join_order_and_pins_before_both() {
        let t0 = Instant::now();
        let mut all = [candidate(1, "a"), candidate(2, "b"), candidate(3, "c")];
        all[2].last_spoke = Some(t0);
        all[1].last_spoke = Some(t0 + Duration::from_secs(1));
        assert_eq!(assign_video(&[None], &all, &[]), [Some(2)]);
        assert_eq!(assign_video(&[None, None], &all, &[]), [Some(2), Some(3)]);
        let pins: Vec<Arc<str>> = vec!["a".into()];
        assert_eq!(assign_video(&[None], &all, &pins), [Some(1)]);
        assert_eq!(assign_video(&[None, None], &all, &pins), [Some(1), Some(2)]);
        // Pinned somebody who is not there: no effect.
        let absent: Vec<Arc<str>> = vec!["zed".into()];
        assert_eq!(assign_video(&[None], &all, &absent), [Some(2)]);
    }

    #[test]
    fn a_track_that_stays_chosen_keeps_its_slot() {
        let t0 = Instant::now();
        let mut all = [candidate(1, "a"), candidate(2, "b"), candidate(3, "c")];
        // Slots show 1 and 2; c speaks: it replaces the least ranked (1, who never
        // spoke, joined first but b spoke), in 1's slot; 2 stays where it was.
        all[1].last_spoke = Some(t0);
        all[2].last_spoke = Some(t0 + Duration::from_secs(1));
        assert_eq!(
            assign_video(&[Some(1), Some(2)], &all, &[]),
            [Some(3), Some(2)]
        );
    }

    #[test]
    fn muted_video_comes_after_every_unmuted_track() {
        let mut all = [candidate(1, "a"), candidate(2, "b")];
        all[0].muted = true;
        assert_eq!(assign_video(&[None], &all, &[]), [Some(2)]);
        assert_eq!(assign_video(&[None, None], &all, &[]), [Some(2), Some(1)]);
    }

    #[test]
    fn audio_goes_to_the_loudest_with_hysteresis_for_holders() {
        let mut all = [candidate(1, "a"), candidate(2, "b"), candidate(3, "c")];
        all[0].loudness = 90.0;
        all[1].loudness = 70.0;
        all[2].loudness = 80.0;
        assert_eq!(assign_audio(&[None, None], &all), [Some(1), Some(3)]);
        // b gets a little louder than c, who holds a slot: c keeps it.
        all[1].loudness = 83.0;
        assert_eq!(assign_audio(&[Some(1), Some(3)], &all), [Some(1), Some(3)]);
        // Much louder: b takes c's slot.
        all[1].loudness = 95.0;
        assert_eq!(assign_audio(&[Some(1), Some(3)], &all), [Some(1), Some(2)]);
    }

    #[test]
    fn speakers_come_and_go() {
        let mut all = vec![candidate(1, "a"), candidate(2, "b")];
        assert_eq!(
            assign_audio(&[None, None, None], &all),
            [Some(1), Some(2), None]
        );
        all.push(candidate(3, "c"));
        assert_eq!(
            assign_audio(&[Some(1), Some(2), None], &all),
            [Some(1), Some(2), Some(3)]
        );
        all.remove(0); // a left
        assert_eq!(
            assign_audio(&[Some(1), Some(2), Some(3)], &all),
            [None, Some(2), Some(3)]
        );
    }

    #[test]
    fn many_publishers_few_slots_every_slot_distinct() {
        let mut random = crate::router::test_random(7);
        for _ in 0..500 {
            let n = (random() % 12) as u64;
            let slots = (random() % 5) as usize;
            let all: Vec<Candidate> = (1..=n)
                .map(|t| Candidate {
                    loudness: (random() % 128) as f32,
                    muted: random() % 4 == 0,
                    ..candidate(t, &format!("p{t}"))
                })
                .collect();
            let current: Vec<Option<u64>> = (0..slots)
                .map(|_| Some(u64::from(random() % 14)).filter(|t| *t > 0))
                .collect();
            for out in [
                assign_audio(&current, &all),
                assign_video(&current, &all, &[]),
            ] {
                assert_eq!(out.len(), slots);
                let shown: Vec<u64> = out.iter().flatten().copied().collect();
                let mut unique = shown.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), shown.len(), "a track in two slots: {out:?}");
                assert!(shown.iter().all(|t| (1..=n).contains(t)));
                assert_eq!(shown.len(), slots.min(n as usize), "{out:?}");
            }
        }
    }
}
