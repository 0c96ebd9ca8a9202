//! Which simulcast layer one viewer should get: the best one its bandwidth
//! estimate carries, within what the viewer asked for, without flapping.
//! Pure logic: the layers as they stand, the estimate and the time are passed in;
//! the shard applies the answer (the switch itself waits for a keyframe of the
//! target, see `peer/viewer.rs`).
//!
//! - Layers are ordered by what they carry: picture size from their keyframes,
//!   then measured bitrate, then the rid convention as a last hint. A criterion is
//!   used only when every layer has it, so the order is always a total one.
//! - Down fast: as soon as the current layer's bitrate exceeds the estimate, or
//!   the layer stops, the best layer that fits is chosen.
//! - Up slowly: a better layer is chosen only when it fits with [`UP_HEADROOM`] to
//!   spare, and has done so for [`UP_HOLD`]. The gap between the two thresholds is
//!   what keeps a viewer from flapping around one layer's bitrate.

use std::time::{Duration, Instant};

use super::resolution::Resolution;

/// A better layer must fit the estimate this many times over before it is taken.
pub const UP_HEADROOM: f64 = 1.25;

/// ...and keep fitting for this long...
pub const UP_HOLD: Duration = Duration::from_secs(2);

/// ...where a dip of the estimate shorter than this does not count.
pub const DIP_TOLERANCE: Duration = Duration::from_millis(500);

/// One layer of a track as a viewer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerView {
    /// The layer's place in its track (its rid's place in the offer).
    pub index: u8,
    /// Packets arrived recently.
    pub available: bool,
    /// Measured over the last second; 0 until measured.
    pub bitrate_bps: u64,
    /// From its last keyframe, once one was seen.
    pub resolution: Option<Resolution>,
    /// The rid naming convention's rank, 0 the best (`router/simulcast.rs`).
    pub hint_rank: u8,
}

/// What the viewer asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preference {
    /// The best layer the estimate carries.
    #[default]
    Auto,
    /// This layer whatever the estimate, while it runs; automatic choice while
    /// it does not.
    Pin(u8),
    /// Automatic choice, but never better than this layer.
    Cap(u8),
}

/// One viewer's choice for one track.
#[derive(Debug, Default, Clone)]
pub struct LayerSelector {
    current: Option<u8>,
    /// Since when a better layer than the current one has fitted.
    better_since: Option<Instant>,
    /// Since when, during that hold, it has not.
    dip_since: Option<Instant>,
}

impl LayerSelector {
    /// The layer chosen last.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Takes `layer` as the current choice (the one the viewer started on); the
    /// next [`LayerSelector::choose`] moves on from it.
    pub fn adopt(&mut self, layer: u8) {
        self.current = Some(layer);
        self.better_since = None;
    }

    /// Chooses the layer to send now. `estimate_bps` is the viewer's bandwidth
    /// estimate for this track (`None` before there is one: the best layer).
    pub fn choose(
        &mut self,
        layers: &[LayerView],
        estimate_bps: Option<u64>,
        preference: Preference,
        now: Instant,
    ) -> Option<u8> {
        let order = quality_order(layers);
        let running: Vec<&LayerView> = order.iter().filter(|l| l.available).copied().collect();
        if running.is_empty() {
            // Nothing runs: keep the choice, it may come back.
            self.better_since = None;
            return self.current;
        }
        if let Preference::Pin(index) = preference {
            if running.iter().any(|l| l.index == index) {
                self.better_since = None;
                self.current = Some(index);
                return self.current;
            }
        }
        let allowed = allowed(&order, &running, preference);
        let fits = |l: &LayerView, headroom: f64| match estimate_bps {
            None => true,
            Some(estimate) => l.bitrate_bps as f64 * headroom <= estimate as f64,
        };
        let lowest = allowed[allowed.len() - 1];
        let best_fitting = allowed
            .iter()
            .find(|l| fits(l, 1.0))
            .copied()
            .unwrap_or(lowest);
        let best_fitting_with_headroom = allowed
            .iter()
            .find(|l| fits(l, UP_HEADROOM))
            .copied()
            .unwrap_or(lowest);
        let current = self
            .current
            .and_then(|c| allowed.iter().position(|l| l.index == c));
        let Some(current) = current else {
            // First choice, or the current layer stopped or is no longer allowed:
            // the best that fits, at once.
            self.better_since = None;
            self.current = Some(best_fitting.index);
            return self.current;
        };
        let position = |target: &LayerView| {
            allowed
                .iter()
                .position(|l| l.index == target.index)
                .unwrap_or(current)
        };
        if position(best_fitting) > current {
            // The current layer no longer fits: down at once.
            self.better_since = None;
            self.current = Some(best_fitting.index);
        } else if position(best_fitting_with_headroom) < current {
            // A better layer fits with room to spare: up once that has held.
            self.dip_since = None;
            let since = *self.better_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= UP_HOLD {
                self.better_since = None;
                self.current = Some(best_fitting_with_headroom.index);
            }
        } else if self.better_since.is_some() {
            // A dip of the estimate (it is noisy) breaks the hold only if it lasts.
            let dip = *self.dip_since.get_or_insert(now);
            if now.saturating_duration_since(dip) >= DIP_TOLERANCE {
                self.better_since = None;
                self.dip_since = None;
            }
        }
        self.current
    }
}

/// The running layers a viewer with `preference` may get (a pin aside), best
/// first: all of them, or those at or below a cap (the lowest one if the cap is
/// below everything that runs). `running` is `order` without the stopped ones.
fn allowed<'a>(
    order: &[&'a LayerView],
    running: &[&'a LayerView],
    preference: Preference,
) -> Vec<&'a LayerView> {
    let capped: Vec<&LayerView> = match preference {
        Preference::Cap(index) => match order.iter().position(|l| l.index == index) {
            Some(cap) => order[cap..]
                .iter()
                .filter(|l| l.available)
                .copied()
                .collect(),
            None => running.to_vec(),
        },
        _ => running.to_vec(),
    };
    if capped.is_empty() {
        running[running.len().saturating_sub(1)..].to_vec()
    } else {
        capped
    }
}

/// The best layer a viewer with `preference` may get, whatever its bandwidth:
/// what its estimator is asked to reach.
pub fn best_allowed(layers: &[LayerView], preference: Preference) -> Option<&LayerView> {
    let order = quality_order(layers);
    let running: Vec<&LayerView> = order.iter().filter(|l| l.available).copied().collect();
    if let Preference::Pin(index) = preference {
        if let Some(pinned) = running.iter().find(|l| l.index == index) {
            return Some(pinned);
        }
    }
    allowed(&order, &running, preference).first().copied()
}

/// `layers` best first (see the module documentation).
pub fn quality_order(layers: &[LayerView]) -> Vec<&LayerView> {
    let all_sized = layers.iter().all(|l| l.resolution.is_some());
    let all_measured = layers.iter().all(|l| l.bitrate_bps > 0);
    let mut order: Vec<&LayerView> = layers.iter().collect();
    order.sort_by_key(|l| {
        let pixels = match (all_sized, l.resolution) {
            (true, Some(r)) => r.pixels(),
            _ => 0,
        };
        let bitrate = if all_measured { l.bitrate_bps } else { 0 };
        (
            std::cmp::Reverse(pixels),
            std::cmp::Reverse(bitrate),
            l.hint_rank,
            l.index,
        )
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chrome's `q;h;f` at 320x180, 640x360 and 1280x720, offered in that order.
    fn chrome_layers() -> Vec<LayerView> {
        let layer = |index: u8, width: u32, height: u32, kbps: u64, hint_rank: u8| LayerView {
            index,
            available: true,
            bitrate_bps: kbps * 1000,
            resolution: Some(Resolution { width, height }),
            hint_rank,
        };
        vec![
            layer(0, 320, 180, 150, 2),
            layer(1, 640, 360, 500, 1),
            layer(2, 1280, 720, 1500, 0),
        ]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The choices made at each step of (time, estimate in kbit/s).
    fn run(
        selector: &mut LayerSelector,
        layers: &[LayerView],
        steps: &[(u64, u64)],
        t0: Instant,
    ) -> Vec<Option<u8>> {
        steps
            .iter()
            .map(|(at, kbps)| {
                selector.choose(layers, Some(kbps * 1000), Preference::Auto, t0 + ms(*at))
            })
            .collect()
    }

    #[test]
    fn layers_are_ordered_by_size_then_bitrate_then_name() {
        let layers = chrome_layers();
        let order: Vec<u8> = quality_order(&layers).iter().map(|l| l.index).collect();
        assert_eq!(order, vec![2, 1, 0]);
        // Names that lie (OBS-style numbers reversed): the sizes decide.
        let mut lying = chrome_layers();
        for l in &mut lying {
            l.hint_rank = l.index;
        }
        let order: Vec<u8> = quality_order(&lying).iter().map(|l| l.index).collect();
        assert_eq!(order, vec![2, 1, 0]);
        // No sizes yet: bitrate; nothing measured: the names.
        for l in &mut lying {
            l.resolution = None;
        }
        let order: Vec<u8> = quality_order(&lying).iter().map(|l| l.index).collect();
        assert_eq!(order, vec![2, 1, 0]);
        for l in &mut lying {
            l.bitrate_bps = 0;
        }
        let order: Vec<u8> = quality_order(&lying).iter().map(|l| l.index).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn the_best_layer_that_fits_is_chosen_at_once_at_start() {
        let layers = chrome_layers();
        let t0 = Instant::now();
        for (kbps, expected) in [(5000, 2), (1600, 2), (1000, 1), (400, 0), (50, 0)] {
            let mut s = LayerSelector::default();
            assert_eq!(run(&mut s, &layers, &[(0, kbps)], t0), vec![Some(expected)]);
        }
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(&layers, None, Preference::Auto, t0), Some(2));
    }

    #[test]
    fn down_at_once_up_only_after_the_estimate_held_with_headroom() {
        let layers = chrome_layers();
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        let choices = run(
            &mut s,
            &layers,
            &[
                (0, 3000),    // top
                (100, 1200),  // top no longer fits: half at once
                (200, 1700),  // fits top, but not with headroom: stay
                (300, 2000),  // fits with headroom: wait...
                (1300, 2000), // ...still waiting...
                (2299, 2000), // ...not yet...
                (2300, 2000), // ...held 2 s: up
                (2400, 400),  // collapse: straight to the bottom
            ],
            t0,
        );
        assert_eq!(
            choices,
            [2, 1, 1, 1, 1, 1, 2, 0].map(Some).to_vec(),
            "{choices:?}"
        );
    }

    #[test]
    fn a_short_dip_of_the_estimate_does_not_break_the_hold_a_long_one_does() {
        let layers = chrome_layers();
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        let choices = run(
            &mut s,
            &layers,
            &[
                (0, 1000),    // half
                (100, 2500),  // the top fits with headroom: the hold starts
                (1000, 1700), // a dip (no headroom) for 400 ms...
                (1400, 2500), // ...forgiven
                (2100, 2500), // held 2 s since 100 ms: up
            ],
            t0,
        );
        assert_eq!(choices, [1, 1, 1, 1, 2].map(Some).to_vec());
        let mut s = LayerSelector::default();
        let choices = run(
            &mut s,
            &layers,
            &[
                (0, 1000),
                (100, 2500),  // the hold starts
                (1000, 1700), // a dip...
                (1600, 1700), // ...of 600 ms: the hold is broken
                (1700, 2500), // starts again
                (2100, 2500),
                (3700, 2500), // 2 s after it started again: up
            ],
            t0,
        );
        assert_eq!(choices, [1, 1, 1, 1, 1, 1, 2].map(Some).to_vec());
    }

    #[test]
    fn an_estimate_wavering_around_a_layers_bitrate_does_not_flap() {
        let layers = chrome_layers();
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        // Around 1.5 Mbit/s ±15 %, every 100 ms for 20 s, starting on the half layer.
        s.choose(&layers, Some(600_000), Preference::Auto, t0);
        let steps: Vec<(u64, u64)> = (1..200u64)
            .map(|i| (i * 100, if i % 2 == 0 { 1725 } else { 1275 }))
            .collect();
        let choices = run(&mut s, &layers, &steps, t0);
        let switches = choices.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(switches, 0, "{choices:?}");
        assert!(choices.iter().all(|c| *c == Some(1)));
    }

    #[test]
    fn a_layer_that_stops_is_left_at_once_and_taken_again_when_it_resumes() {
        let mut layers = chrome_layers();
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Auto, t0),
            Some(2)
        );
        layers[2].available = false;
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Auto, t0 + ms(100)),
            Some(1)
        );
        layers[2].available = true;
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Auto, t0 + ms(200)),
            Some(1),
            "a layer back is an upgrade: it waits"
        );
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Auto, t0 + ms(2200)),
            Some(2)
        );
        // Everything stops: the choice stays, nothing better to do.
        for l in &mut layers {
            l.available = false;
        }
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Auto, t0 + ms(2300)),
            Some(2)
        );
    }

    #[test]
    fn a_pin_wins_over_the_estimate_while_its_layer_runs() {
        let mut layers = chrome_layers();
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        assert_eq!(
            s.choose(&layers, Some(100_000), Preference::Pin(2), t0),
            Some(2)
        );
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Pin(0), t0 + ms(1)),
            Some(0),
            "a pin down or up is immediate"
        );
        layers[0].available = false;
        assert_eq!(
            s.choose(&layers, Some(5_000_000), Preference::Pin(0), t0 + ms(2)),
            Some(2),
            "a pinned layer that stops: automatic meanwhile"
        );
    }

    #[test]
    fn a_cap_bounds_the_automatic_choice() {
        let mut layers = chrome_layers();
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        assert_eq!(
            s.choose(&layers, Some(9_000_000), Preference::Cap(1), t0),
            Some(1)
        );
        assert_eq!(
            s.choose(&layers, Some(300_000), Preference::Cap(1), t0 + ms(1)),
            Some(0)
        );
        // Cap at a stopped layer: the layers below it still qualify.
        layers[1].available = false;
        let mut s = LayerSelector::default();
        assert_eq!(
            s.choose(&layers, Some(9_000_000), Preference::Cap(1), t0),
            Some(0)
        );
        // A cap below every running layer: the lowest running one.
        layers[0].available = false;
        let mut s = LayerSelector::default();
        assert_eq!(
            s.choose(&layers, Some(9_000_000), Preference::Cap(0), t0),
            Some(2)
        );
    }
}
