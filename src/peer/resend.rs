//! How long a viewer's video stream keeps what it sent, to answer the viewer's NACKs.
//!
//! str0m keeps each sent video packet of a stream for resends (its RTX cache). The
//! payload is the `Arc` every viewer's copy of the packet shares, but each entry also
//! holds about 460 bytes of header and bookkeeping. We used to bound it by count (300
//! packets): 1.7 s at 1.5 Mbit/s, ~140 KB per viewer, but only 0.6 s at 4 Mbit/s.
//! It is bounded by time now, as libwebrtc's packet history is: at least a second
//! (a receiver that does not know the round trip retries a NACK every 100 ms, and a
//! resend can be lost too: with 5 % loss toward a viewer, 300 ms left a few packets
//! per ten thousand unrepaired), and about four round trips for a viewer far away.
//!
//! Pure policy; `peer/viewer.rs` applies it through str0m's `StreamTx::set_rtx_cache`,
//! which starts a new, empty cache each time. So the age only grows, and only when a
//! measured round trip asks for a quarter more than it has: at most three times in
//! a session (1 s to 2 s), and a round trip swinging back and forth (one receiver
//! report's sample, unsmoothed) cannot empty the cache again and again.

use std::time::Duration;

/// Before a round trip is known, and the least ever.
const MIN_AGE: Duration = Duration::from_secs(1);
/// Never more (a packet this late is no longer played).
const MAX_AGE: Duration = Duration::from_secs(2);
/// Round trips a NACK may take: the first request and its retries.
const ROUND_TRIPS: u32 = 4;
/// Time on top: the receiver waits a little for reordered packets before it asks.
const MARGIN: Duration = Duration::from_millis(150);
/// The most packets a stream keeps, whatever its bitrate (str0m grows the cache only
/// as far as the age needs: about 180 packets a second at 1.5 Mbit/s, a second at
/// 15 Mbit/s fits).
pub const MAX_PACKETS: usize = 2048;
/// str0m drops queued resends when they exceed this share of what is sent (its own
/// default): a viewer losing more is better served by a lower layer than by resends.
pub const RESEND_RATIO_CAP: Option<f32> = Some(0.15);

/// The age a viewer with this round trip needs.
fn age_for(rtt: Duration) -> Duration {
    rtt.saturating_mul(ROUND_TRIPS)
        .saturating_add(MARGIN)
        .clamp(MIN_AGE, MAX_AGE)
}

/// One stream's resend history setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendHistory {
    age: Duration,
}

impl Default for ResendHistory {
    fn default() -> Self {
        ResendHistory { age: MIN_AGE }
    }
}

impl ResendHistory {
    pub fn age(&self) -> Duration {
        self.age
    }

    /// The new age to apply for a measured round trip, if it is worth starting the
    /// cache anew for: one that needs more than a quarter again.
    pub fn retune(&mut self, rtt: Duration) -> Option<Duration> {
        let wanted = age_for(rtt);
        if wanted <= self.age.mul_f64(1.25) {
            return None;
        }
        self.age = wanted;
        Some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_age_covers_a_few_round_trips_within_bounds() {
        assert_eq!(age_for(ms(0)), MIN_AGE);
        assert_eq!(age_for(ms(100)), MIN_AGE);
        assert_eq!(age_for(ms(250)), ms(1150));
        assert_eq!(age_for(ms(400)), ms(1750));
        assert_eq!(age_for(ms(900)), MAX_AGE);
        assert_eq!(age_for(Duration::MAX), MAX_AGE);
    }

    #[test]
    fn a_viewer_close_by_keeps_the_first_cache() {
        let mut history = ResendHistory::default();
        assert_eq!(history.age(), MIN_AGE);
        for rtt in [0, 1, 30, 120, 200] {
            assert_eq!(history.retune(ms(rtt)), None, "rtt {rtt} ms");
        }
        assert_eq!(history.age(), MIN_AGE);
    }

    #[test]
    fn the_history_grows_in_large_steps_and_never_shrinks() {
        let mut history = ResendHistory::default();
        // 1 s → 1.15 s: not worth dropping what is kept.
        assert_eq!(history.retune(ms(250)), None);
        // 1 s → 1.75 s: the viewer is far away, it needs the longer history.
        assert_eq!(history.retune(ms(400)), Some(ms(1750)));
        assert_eq!(history.retune(ms(500)), None); // 1.75 → 2 s
        assert_eq!(history.age(), ms(1750));
        // Back close by, and far again: the cache is kept all along.
        for rtt in [10, 480, 280, 480, 280, 10] {
            assert_eq!(history.retune(ms(rtt)), None, "rtt {rtt} ms");
        }
        assert_eq!(history.age(), ms(1750));
        assert_eq!(history.retune(ms(900)), None); // 1.75 → 2 s is not a quarter
    }
}
