//! One viewer's slot on a simulcast track: which packets it forwards, and when it
//! moves to the layer its [`LayerSelector`] chose. Pure logic, time passed in.
//!
//! A switch happens only on a keyframe of the target layer, so the decoder never
//! sees a picture it cannot decode; until that keyframe comes, the current layer
//! keeps playing (if it still runs) and a keyframe of the target is wished for,
//! again every [`KEYFRAME_RETRY`] while the wait lasts. The shard turns a wish
//! into a keyframe request to the publisher (or a replay of that layer's cache);
//! the sequence-number, timestamp and VP8 rewrites that keep the outgoing stream
//! continuous are the forwarder's (`forward.rs`, `vp8.rs`).

use std::time::{Duration, Instant};

use super::layer_select::{LayerSelector, Preference};
use super::layers::TrackLayers;

/// How often the choice of layer is reconsidered (at most once per packet).
pub const EVALUATE_EVERY: Duration = Duration::from_millis(100);

/// How long a wished-for keyframe may take before it is wished for again (the
/// publisher's keyframe requests are limited to one per
/// `session.keyframe_request_interval`, 500 ms by default, per stream).
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

/// What to do with one packet of the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It belongs to the layer being forwarded.
    Forward,
    /// It is the keyframe the switch waited for: the outgoing stream moves to its
    /// layer with it.
    Switch,
    /// Another layer's packet, or the target's before its keyframe.
    Skip,
}

#[derive(Debug, Default, Clone)]
pub struct LayerSwitch {
    selector: LayerSelector,
    /// The layer being forwarded.
    forwarding: Option<u8>,
    chosen_at: Option<Instant>,
    /// A keyframe of this layer is wanted, and since when it was last asked for.
    wish: Option<(u8, Instant)>,
    /// A wish not yet taken by the shard.
    pending: Option<u8>,
}

impl LayerSwitch {
    /// Decides about one packet of layer `layer` (`keyframe`: it starts one).
    pub fn admit(
        &mut self,
        layers: &TrackLayers,
        layer: u8,
        keyframe: bool,
        estimate_bps: Option<u64>,
        preference: Preference,
        now: Instant,
    ) -> Admit {
        if self.forwarding.is_none() && keyframe {
            // The first picture the viewer can have (live, or the cache replayed
            // to it), whatever its layer: start there at once; the choice then
            // moves on from it, at the next evaluation.
            self.selector.adopt(layer);
            self.chosen_at = Some(now);
        }
        if self
            .chosen_at
            .is_none_or(|at| now.saturating_duration_since(at) >= EVALUATE_EVERY)
        {
            self.selector
                .choose(&layers.views(now), estimate_bps, preference, now);
            self.chosen_at = Some(now);
        }
        let target = self.selector.current();
        if self.forwarding == Some(layer) {
            if let Some(t) = target.filter(|t| *t != layer) {
                self.wish_for(t, now);
            }
            return Admit::Forward;
        }
        if target == Some(layer) {
            if keyframe {
                self.forwarding = Some(layer);
                self.wish = None;
                self.pending = None;
                return Admit::Switch;
            }
            self.wish_for(layer, now);
            return Admit::Skip;
        }
        // Another layer's packet: the target's keyframe is wished for, unless the
        // target is what the viewer already gets (its cache replayed again, or a
        // keyframe asked of the publisher, would only repeat what it has).
        if let Some(t) = target.filter(|t| self.forwarding != Some(*t)) {
            self.wish_for(t, now);
        }
        Admit::Skip
    }

    /// Whether the choice was reconsidered at `now` (by the last `admit`).
    pub fn evaluated_at(&self, now: Instant) -> bool {
        self.chosen_at == Some(now)
    }

    /// The layer whose keyframe is wanted now, once per wish.
    pub fn take_keyframe_wish(&mut self) -> Option<u8> {
        self.pending.take()
    }

    /// The layer being forwarded.
    pub fn forwarding(&self) -> Option<u8> {
        self.forwarding
    }

    /// The layer chosen.
    pub fn target(&self) -> Option<u8> {
        self.selector.current()
    }

    /// The outgoing stream stopped (its publisher left, or it restarts on a
    /// keyframe): nothing is being forwarded, and the next keyframe of the target
    /// starts it again.
    pub fn stop_forwarding(&mut self) {
        self.forwarding = None;
    }

    fn wish_for(&mut self, layer: u8, now: Instant) {
        let due = match self.wish {
            Some((wished, at)) if wished == layer => {
                now.saturating_duration_since(at) >= KEYFRAME_RETRY
            }
            _ => true,
        };
        if due {
            self.wish = Some((layer, now));
            self.pending = Some(layer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::resolution::Resolution;

    /// q, h, f at 150 kbit/s 320x180, 500 kbit/s 640x360, 1.5 Mbit/s 1280x720,
    /// all running at `now`.
    fn running_layers(now: Instant) -> TrackLayers {
        let layers = TrackLayers::new(&[("q".into(), 2), ("h".into(), 1), ("f".into(), 0)]);
        for (index, kbps, width, height) in
            [(0, 150, 320, 180), (1, 500, 640, 360), (2, 1500, 1280, 720)]
        {
            let size = Resolution { width, height };
            layers.record(index, now, kbps * 1000, Some(size));
        }
        layers
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_on_the_first_keyframe_then_moves_to_the_chosen_layer_on_its_keyframe() {
        let t0 = Instant::now();
        let layers = running_layers(t0);
        let mut s = LayerSwitch::default();
        let estimate = Some(700_000); // carries h, not f
                                      // Nothing before a keyframe.
        assert_eq!(
            s.admit(&layers, 2, false, estimate, Preference::Auto, t0),
            Admit::Skip
        );
        // The cache of f replayed: start on it, although it does not fit...
        assert_eq!(
            s.admit(&layers, 2, true, estimate, Preference::Auto, t0),
            Admit::Switch
        );
        assert_eq!(s.forwarding(), Some(2));
        // ...then the choice moves down; f keeps playing until h's keyframe.
        let t = t0 + EVALUATE_EVERY;
        assert_eq!(
            s.admit(&layers, 2, false, estimate, Preference::Auto, t),
            Admit::Forward
        );
        assert_eq!(s.target(), Some(1));
        assert_eq!(s.take_keyframe_wish(), Some(1));
        assert_eq!(s.take_keyframe_wish(), None, "one wish at a time");
        assert_eq!(
            s.admit(&layers, 1, false, estimate, Preference::Auto, t),
            Admit::Skip
        );
        assert_eq!(
            s.admit(&layers, 0, true, estimate, Preference::Auto, t),
            Admit::Skip
        );
        assert_eq!(
            s.admit(&layers, 1, true, estimate, Preference::Auto, t),
            Admit::Switch
        );
        assert_eq!(
            s.admit(&layers, 2, false, estimate, Preference::Auto, t),
            Admit::Skip
        );
        assert_eq!(
            s.admit(&layers, 1, false, estimate, Preference::Auto, t),
            Admit::Forward
        );
    }

    #[test]
    fn a_wish_is_repeated_while_its_keyframe_does_not_come() {
        let t0 = Instant::now();
        let layers = running_layers(t0);
        let mut s = LayerSwitch::default();
        s.admit(&layers, 0, true, Some(100_000), Preference::Auto, t0);
        assert_eq!(
            s.admit(&layers, 0, false, None, Preference::Pin(2), t0 + ms(100)),
            Admit::Forward
        );
        assert_eq!(s.take_keyframe_wish(), Some(2));
        s.admit(&layers, 0, false, None, Preference::Pin(2), t0 + ms(400));
        assert_eq!(s.take_keyframe_wish(), None);
        s.admit(
            &layers,
            0,
            false,
            None,
            Preference::Pin(2),
            t0 + ms(100) + KEYFRAME_RETRY,
        );
        assert_eq!(s.take_keyframe_wish(), Some(2));
    }

    #[test]
    fn when_the_forwarded_layer_stops_the_best_running_one_is_wished_for_at_once() {
        let t0 = Instant::now();
        let layers = running_layers(t0);
        let mut s = LayerSwitch::default();
        s.admit(&layers, 2, true, None, Preference::Auto, t0);
        // h and q keep running; f's last packet was at t0.
        let t = t0 + ms(1100);
        for index in [0, 1] {
            layers.record(index, t, 500_000, None);
        }
        assert_eq!(
            s.admit(&layers, 1, false, None, Preference::Auto, t),
            Admit::Skip
        );
        assert_eq!(s.target(), Some(1));
        assert_eq!(s.take_keyframe_wish(), Some(1));
        assert_eq!(
            s.admit(&layers, 1, true, None, Preference::Auto, t),
            Admit::Switch
        );
    }

    #[test]
    fn the_layer_already_forwarded_is_not_wished_for_when_other_layers_pass() {
        let t0 = Instant::now();
        let layers = running_layers(t0);
        let mut s = LayerSwitch::default();
        let plenty = Some(5_000_000);
        assert_eq!(
            s.admit(&layers, 2, true, plenty, Preference::Auto, t0),
            Admit::Switch
        );
        for step in 1..40u64 {
            let now = t0 + ms(step * 50);
            for layer in [0, 1, 2] {
                s.admit(&layers, layer, false, plenty, Preference::Auto, now);
                assert_eq!(s.take_keyframe_wish(), None, "at {step}, layer {layer}");
            }
        }
        assert_eq!(s.forwarding(), Some(2));
    }

    #[test]
    fn any_sequence_of_packets_switches_only_on_keyframes_of_the_target() {
        let t0 = Instant::now();
        let layers = running_layers(t0);
        let mut s = LayerSwitch::default();
        let mut next = crate::router::test_random(0x9e37_79b9);
        let mut forwarded = None;
        for step in 0..5000u64 {
            let r = next();
            let layer = (r % 3) as u8;
            let keyframe = r % 11 == 0;
            let estimate = Some(u64::from(next() % 3_000_000));
            let preference = match next() % 20 {
                0 => Preference::Pin((next() % 3) as u8),
                1 => Preference::Cap((next() % 3) as u8),
                _ => Preference::Auto,
            };
            let now = t0 + ms(step * 7);
            for index in 0..3u8 {
                layers.record(index, now, u64::from(index) * 600_000 + 100_000, None);
            }
            let admit = s.admit(&layers, layer, keyframe, estimate, preference, now);
            if let Some(wished) = s.take_keyframe_wish() {
                assert_ne!(
                    forwarded.filter(|_| admit != Admit::Switch),
                    Some(wished),
                    "a keyframe wished for the layer already forwarded at step {step}"
                );
            }
            match admit {
                Admit::Switch => {
                    assert!(keyframe, "a switch without a keyframe at step {step}");
                    forwarded = Some(layer);
                }
                Admit::Forward => assert_eq!(forwarded, Some(layer), "step {step}"),
                Admit::Skip => {}
            }
        }
    }
}
