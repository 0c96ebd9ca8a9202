//! VP8 temporal layers: the finer step below the lowest simulcast layer. A VP8
//! encoder with temporal layering (Chromium uses three on every simulcast layer)
//! marks each frame with its temporal layer (TID); frames of a layer reference only
//! frames of that layer or below, so dropping every frame above a TID leaves a
//! stream a decoder plays at a lower frame rate. Pure logic, per viewer slot.
//!
//! - Down is taken at the next frame start: frames above the new cap are dropped
//!   whole.
//! - Up is taken one layer at a time, on a frame of that layer marked layer-sync
//!   (Y: it references only the base layer), or on a keyframe, where every layer
//!   starts afresh. Before that, the layer's frames would reference frames the
//!   viewer never got.
//!
//! Sequence numbers and VP8 picture IDs are closed over the dropped frames by the
//! forwarder (`forward.rs`) and the VP8 rewriter (`vp8.rs`).

use super::vp8::Temporal;

/// Every temporal layer (VP8's TID is two bits).
pub const ALL_TEMPORAL: u8 = 3;

/// How many recent frames keep their verdict, so a late packet of one (reordered,
/// or repaired by retransmission after later frames began) goes the way its
/// frame went.
const REMEMBERED_FRAMES: usize = 16;

/// Which temporal layers one viewer slot forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalFilter {
    /// The highest TID forwarded now.
    cap: u8,
    /// The highest TID wanted.
    target: u8,
    /// The highest TID seen: a cap at or above it drops nothing.
    highest_seen: u8,
    /// The last frames' RTP timestamps and whether each is forwarded, newest at
    /// `next - 1`.
    frames: [(u32, bool); REMEMBERED_FRAMES],
    len: usize,
    next: usize,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        TemporalFilter {
            cap: ALL_TEMPORAL,
            target: ALL_TEMPORAL,
            highest_seen: 0,
            frames: [(0, true); REMEMBERED_FRAMES],
            len: 0,
            next: 0,
        }
    }
}

impl TemporalFilter {
    /// The highest TID forwarded now.
    pub fn cap(&self) -> u8 {
        self.cap
    }

    /// The highest TID forwarded, when some frames are dropped (`None`: all pass).
    pub fn dropping_above(&self) -> Option<u8> {
        (self.cap < self.highest_seen).then_some(self.cap)
    }

    /// Wants frames up to `target` (taken at the next point where it is safe).
    pub fn set_target(&mut self, target: u8) {
        self.target = target.min(ALL_TEMPORAL);
    }

    /// Whether to forward a packet of the frame at RTP time `timestamp` with this
    /// temporal marking (`None`: no temporal layering, always forwarded) that
    /// `keyframe` starts or not.
    pub fn admit(&mut self, temporal: Option<Temporal>, keyframe: bool, timestamp: u32) -> bool {
        let Some(t) = temporal else {
            return true;
        };
        // A frame already judged: every packet of it goes the same way.
        if let Some(forwarded) = self.verdict(timestamp) {
            return forwarded;
        }
        let newest = self.newest();
        let is_new = newest.is_none_or(|n| (timestamp.wrapping_sub(n) as i32) > 0);
        if !t.frame_start || !is_new {
            // A frame seen from its middle, or an old one: its own layer decides,
            // and nothing changes (only a new frame's start may move the cap).
            return t.id <= self.cap;
        }
        self.highest_seen = self.highest_seen.max(t.id);
        if keyframe || self.target < self.cap || self.cap >= self.highest_seen {
            // A keyframe starts every layer afresh; down is safe at any frame; and
            // a cap above every layer seen has dropped nothing to miss.
            self.cap = self.target;
        } else if self.target > self.cap && t.id == self.cap + 1 && t.sync {
            self.cap = t.id;
        }
        let forwarded = t.id <= self.cap;
        self.remember(timestamp, forwarded);
        forwarded
    }

    fn verdict(&self, timestamp: u32) -> Option<bool> {
        (0..self.len)
            .map(|back| self.frames[(self.next + REMEMBERED_FRAMES - 1 - back) % REMEMBERED_FRAMES])
            .find(|(ts, _)| *ts == timestamp)
            .map(|(_, forwarded)| forwarded)
    }

    fn newest(&self) -> Option<u32> {
        (self.len > 0)
            .then(|| self.frames[(self.next + REMEMBERED_FRAMES - 1) % REMEMBERED_FRAMES].0)
    }

    fn remember(&mut self, timestamp: u32, forwarded: bool) {
        self.frames[self.next] = (timestamp, forwarded);
        self.next = (self.next + 1) % REMEMBERED_FRAMES;
        self.len = (self.len + 1).min(REMEMBERED_FRAMES);
    }
}

/// The temporal layers a viewer's estimate carries on the layer it gets:
/// `up_to_bps[t]` is the layer's bitrate with frames of TID `t` and below (0 when
/// not measured). All of them while the layer fits; otherwise the highest that
/// fits (going up needs `headroom` to spare over the current cap), the base layer
/// at least.
pub fn temporal_target(
    up_to_bps: [u64; 3],
    layer_bps: u64,
    estimate_bps: Option<u64>,
    current_cap: u8,
    headroom: f64,
) -> u8 {
    let Some(estimate) = estimate_bps else {
        return ALL_TEMPORAL;
    };
    if layer_bps as f64 <= estimate as f64 || up_to_bps.iter().all(|b| *b == 0) {
        return ALL_TEMPORAL;
    }
    let mut target = 0;
    for (tid, bps) in up_to_bps.iter().enumerate() {
        let tid = tid as u8;
        let needed = if tid > current_cap {
            *bps as f64 * headroom
        } else {
            *bps as f64
        };
        if *bps > 0 && needed <= estimate as f64 {
            target = tid;
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u8, sync: bool) -> Option<Temporal> {
        Some(Temporal {
            id,
            sync,
            frame_start: true,
        })
    }

    fn rest(id: u8) -> Option<Temporal> {
        Some(Temporal {
            id,
            sync: false,
            frame_start: false,
        })
    }

    /// Feeds frames one after the other, each at its own RTP time.
    struct Feed {
        f: TemporalFilter,
        ts: u32,
    }

    impl Feed {
        fn new() -> Self {
            Feed {
                f: TemporalFilter::default(),
                ts: 0,
            }
        }
        fn start(&mut self, t: Option<Temporal>, keyframe: bool) -> bool {
            self.ts = self.ts.wrapping_add(3000);
            self.f.admit(t, keyframe, self.ts)
        }
        fn rest(&mut self, t: Option<Temporal>) -> bool {
            self.f.admit(t, false, self.ts)
        }
    }

    /// L1T3's pattern: TIDs 0 2 1 2, repeating.
    const PATTERN: [u8; 4] = [0, 2, 1, 2];

    #[test]
    fn down_drops_whole_frames_above_the_cap_from_the_next_frame() {
        let mut f = Feed::new();
        assert!(f.start(frame(2, false), false));
        f.f.set_target(0);
        // The frame under way is finished.
        assert!(f.rest(rest(2)));
        let mut kept = Vec::new();
        for (i, id) in PATTERN.iter().cycle().take(12).enumerate() {
            if f.start(frame(*id, false), false) {
                assert!(f.rest(rest(*id)), "a frame is never cut");
                kept.push(i);
            } else {
                assert!(!f.rest(rest(*id)));
            }
        }
        assert_eq!(kept, vec![0, 4, 8], "only the base layer");
        assert_eq!(f.f.cap(), 0);
        assert_eq!(f.f.dropping_above(), Some(0));
    }

    #[test]
    fn up_waits_for_a_sync_frame_of_each_layer_in_turn() {
        let mut f = Feed::new();
        f.f.set_target(0);
        f.start(frame(0, false), false);
        f.f.set_target(2);
        assert!(
            !f.start(frame(2, true), false),
            "layer 2 before layer 1 is back"
        );
        assert!(!f.start(frame(1, false), false), "not a sync frame");
        assert!(f.start(frame(0, false), false));
        assert!(f.start(frame(1, true), false));
        assert_eq!(f.f.cap(), 1);
        assert!(!f.start(frame(2, false), false));
        assert!(f.start(frame(2, true), false));
        assert_eq!(f.f.cap(), 2);
        assert_eq!(f.f.dropping_above(), None, "every layer seen passes");
        assert!(f.start(frame(2, false), false));
        // Every layer wanted: nothing above layer 2 was ever dropped, so at once.
        f.f.set_target(ALL_TEMPORAL);
        assert!(f.start(frame(0, false), false));
        assert_eq!(f.f.cap(), ALL_TEMPORAL);
    }

    #[test]
    fn a_keyframe_takes_the_target_at_once() {
        let mut f = Feed::new();
        f.f.set_target(0);
        f.start(frame(0, false), false);
        f.f.set_target(ALL_TEMPORAL);
        assert!(f.start(frame(0, false), true));
        assert_eq!(f.f.cap(), ALL_TEMPORAL);
        assert!(f.start(frame(2, false), false));
    }

    #[test]
    fn packets_without_temporal_layering_always_pass() {
        let mut f = TemporalFilter::default();
        f.set_target(0);
        assert!(f.admit(None, false, 0));
    }

    /// A packet that comes late (reordered, or repaired after later frames began)
    /// goes the way its own frame went, and moves nothing.
    #[test]
    fn a_late_packet_goes_the_way_of_its_frame() {
        let mut f = TemporalFilter::default();
        f.set_target(0);
        assert!(f.admit(frame(0, false), false, 3000)); // A, base, starts
        assert!(!f.admit(frame(2, true), false, 6000)); // B, dropped
        assert!(f.admit(rest(0), false, 3000), "the rest of A, late");
        assert!(!f.admit(rest(2), false, 6000), "the rest of B");
        // A late frame start of B (its first packet repaired) is still dropped,
        // and a late start of A still forwarded; neither moves the cap.
        assert!(!f.admit(frame(2, true), false, 6000));
        assert!(f.admit(frame(0, false), false, 3000));
        assert_eq!(f.cap(), 0);
        // A frame never seen, met in its middle: its own layer decides.
        assert!(!f.admit(rest(1), false, 4500));
        assert!(f.admit(rest(0), false, 9000));
        // An old frame start beyond the memory does not move the cap either.
        f.set_target(ALL_TEMPORAL);
        assert!(!f.admit(frame(1, true), false, 1500));
        assert_eq!(f.cap(), 0);
        // Nor across the RTP timestamp wrap.
        let mut w = TemporalFilter::default();
        w.set_target(0);
        assert!(w.admit(frame(0, false), false, u32::MAX - 100));
        assert!(!w.admit(frame(2, true), false, 2900));
        assert!(w.admit(rest(0), false, u32::MAX - 100));
    }

    #[test]
    fn the_target_is_every_layer_while_the_layer_fits_and_the_best_that_fits_below() {
        let up_to = [60_000, 90_000, 120_000];
        assert_eq!(
            temporal_target(up_to, 120_000, Some(200_000), 0, 1.25),
            ALL_TEMPORAL
        );
        assert_eq!(temporal_target(up_to, 120_000, None, 0, 1.25), ALL_TEMPORAL);
        assert_eq!(temporal_target(up_to, 120_000, Some(100_000), 2, 1.25), 1);
        assert_eq!(temporal_target(up_to, 120_000, Some(30_000), 2, 1.25), 0);
        // Up from the base layer needs headroom: 90 kbit/s * 1.25 > 100 kbit/s.
        assert_eq!(temporal_target(up_to, 120_000, Some(100_000), 0, 1.25), 0);
        assert_eq!(temporal_target(up_to, 120_000, Some(113_000), 0, 1.25), 1);
        // Unmeasured: no temporal step.
        assert_eq!(
            temporal_target([0; 3], 120_000, Some(10_000), 0, 1.25),
            ALL_TEMPORAL
        );
    }
}
