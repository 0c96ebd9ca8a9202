//! What one viewer asks of its bandwidth estimator (str0m's TWCC estimate): the
//! bitrate it would like to reach, and, while the viewer is held below the best
//! layer it may have, a probe of the link now and then so it can climb back when
//! the link widens. Pure logic: the shard's viewer applies the answer with
//! `Rtc::bwe().set_bitrate`.
//!
//! str0m probes (a short burst of padding above the estimate, whose arrival the
//! feedback measures) when the desired bitrate rises above the estimate. Without
//! a probe, an estimate that fell with the link climbs only as fast as the media
//! sent lets it (about 1.5 times what is acknowledged), so a viewer moved down to a
//! smaller layer stays there long after the link came back. So while the viewer is
//! held below, every [`FIRST_PROBE_AFTER`] and then at growing intervals up to
//! [`MAX_PROBE_INTERVAL`], the desired bitrate is lowered to the estimate for one
//! evaluation and raised again: the rise is the probe. A climb resets the interval.

use std::time::{Duration, Instant};

/// How long a viewer is held below its best layer before the first probe.
pub const FIRST_PROBE_AFTER: Duration = Duration::from_secs(2);

/// The longest interval between probes while they keep failing (each failure
/// doubles it), so a narrow link is not probed more often than this.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(8);

/// Only a change of the desired bitrate by more than this fraction is passed on.
const CHANGE_WORTH_TELLING: f64 = 0.1;

#[derive(Debug, Clone, Default)]
pub struct ProbePlan {
    /// The desired bitrate last given to the estimator.
    told: Option<u64>,
    /// The desired bitrate was lowered for a probe: raise it at the next evaluation.
    lowered: bool,
    /// When the next probe is due while the viewer stays held below.
    next_probe: Option<Instant>,
    /// The wait after the next probe.
    interval: Duration,
}

impl ProbePlan {
    /// Called at each evaluation of the viewer's layer. `wanted_bps`: the bitrate
    /// its best allowed layer needs; `held_below`: the layer chosen is not that
    /// one. Returns a desired bitrate to give the estimator now, if it changed.
    pub fn plan(
        &mut self,
        wanted_bps: u64,
        estimate_bps: Option<u64>,
        held_below: bool,
        now: Instant,
    ) -> Option<u64> {
        if wanted_bps == 0 {
            return None;
        }
        if self.lowered {
            // The rise after the dip: str0m probes towards it.
            self.lowered = false;
            return self.tell(wanted_bps);
        }
        match estimate_bps.filter(|e| held_below && *e < wanted_bps) {
            Some(estimate) => {
                let due = *self.next_probe.get_or_insert(now + FIRST_PROBE_AFTER);
                if now >= due {
                    self.interval =
                        (self.interval * 2).clamp(FIRST_PROBE_AFTER, MAX_PROBE_INTERVAL);
                    self.next_probe = Some(now + self.interval);
                    self.lowered = true;
                    return self.tell(estimate.max(1));
                }
            }
            None => {
                // At the best layer allowed, or the estimate carries it: probing
                // starts afresh the next time the viewer is held below.
                self.next_probe = None;
                self.interval = Duration::ZERO;
            }
        }
        let changed = self.told.is_none_or(|told| {
            wanted_bps.abs_diff(told) as f64 > told as f64 * CHANGE_WORTH_TELLING
        });
        if changed {
            return self.tell(wanted_bps);
        }
        None
    }

    fn tell(&mut self, bps: u64) -> Option<u64> {
        self.told = Some(bps);
        Some(bps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_wanted_bitrate_is_told_once_and_again_only_when_it_moves_a_tenth() {
        let t0 = Instant::now();
        let mut p = ProbePlan::default();
        assert_eq!(p.plan(1_000_000, None, false, t0), Some(1_000_000));
        assert_eq!(
            p.plan(1_050_000, Some(3_000_000), false, t0 + ms(100)),
            None
        );
        assert_eq!(
            p.plan(1_200_000, Some(3_000_000), false, t0 + ms(200)),
            Some(1_200_000)
        );
        assert_eq!(
            p.plan(0, None, false, t0 + ms(300)),
            None,
            "nothing measured yet"
        );
    }

    #[test]
    fn a_viewer_held_below_probes_by_a_dip_and_a_rise_at_growing_intervals() {
        let t0 = Instant::now();
        let mut p = ProbePlan::default();
        let wanted = 1_000_000;
        let estimate = Some(450_000);
        assert_eq!(p.plan(wanted, estimate, true, t0), Some(wanted));
        let mut probes = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            now += ms(100);
            if let Some(told) = p.plan(wanted, estimate, true, now) {
                if told < wanted {
                    // The dip is to the estimate, and the next evaluation rises.
                    assert_eq!(told, 450_000);
                    now += ms(100);
                    assert_eq!(p.plan(wanted, estimate, true, now), Some(wanted));
                    probes.push(now.duration_since(t0));
                }
            }
        }
        let gaps: Vec<u64> = probes.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert!(probes[0] <= FIRST_PROBE_AFTER + ms(200), "{probes:?}");
        assert_eq!(&gaps[..3], &[2, 4, 8], "{probes:?}");
        assert!(gaps[3..].iter().all(|g| *g == 8), "{gaps:?}");
    }

    #[test]
    fn no_probe_while_the_estimate_carries_the_best_layer_and_a_climb_starts_afresh() {
        let t0 = Instant::now();
        let mut p = ProbePlan::default();
        let wanted = 1_000_000;
        p.plan(wanted, Some(2_000_000), true, t0);
        for step in 1..100 {
            assert_eq!(
                p.plan(wanted, Some(2_000_000), true, t0 + ms(step * 100)),
                None,
                "the estimate already carries it"
            );
            assert_eq!(
                p.plan(wanted, Some(400_000), false, t0 + ms(step * 100)),
                None
            );
        }
        // Held below after many failed probes, then climbed: the next hold probes
        // after FIRST_PROBE_AFTER again, not after the longest interval.
        let mut now = t0 + Duration::from_secs(20);
        for _ in 0..400 {
            now += ms(100);
            p.plan(wanted, Some(400_000), true, now);
        }
        now += ms(100);
        p.plan(wanted, Some(400_000), false, now);
        let held_again = now;
        let first = (1..100)
            .map(|i| held_again + ms(i * 100))
            .find(|at| p.plan(wanted, Some(400_000), true, *at) == Some(400_000))
            .expect("a probe");
        assert!(first.duration_since(held_again) <= FIRST_PROBE_AFTER + ms(100));
    }
}
