//! How fast a stream is arriving: bytes over a sliding one-second window, kept in
//! ten buckets so that adding a packet and reading the rate are both O(1)-ish and
//! allocation-free. Pure logic: time passed in.

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_millis(100);
/// The window the rate is measured over.
pub const WINDOW: Duration = Duration::from_millis(100 * BUCKETS as u64);

#[derive(Debug, Clone)]
pub struct BitrateMeter {
    start: Instant,
    /// Bytes per bucket; `current` is the index of the newest bucket.
    bytes: [u64; BUCKETS],
    /// The newest bucket's number counted from `start` (index = number % BUCKETS).
    newest: u64,
}

impl BitrateMeter {
    pub fn new(now: Instant) -> Self {
        BitrateMeter {
            start: now,
            bytes: [0; BUCKETS],
            newest: 0,
        }
    }

    pub fn add(&mut self, bytes: usize, now: Instant) {
        self.advance(now);
        let index = (self.newest % BUCKETS as u64) as usize;
        self.bytes[index] = self.bytes[index].saturating_add(bytes as u64);
    }

    /// Bits per second over the last [`WINDOW`].
    pub fn bps(&mut self, now: Instant) -> u64 {
        self.advance(now);
        let total: u64 = self.bytes.iter().sum();
        total.saturating_mul(8).saturating_mul(1000) / WINDOW.as_millis() as u64
    }

    /// Moves the window so its newest bucket holds `now`, emptying the buckets
    /// it passes. A time before the newest bucket counts in the newest bucket.
    fn advance(&mut self, now: Instant) {
        let number =
            (now.saturating_duration_since(self.start).as_millis() / BUCKET.as_millis()) as u64;
        if number <= self.newest {
            return;
        }
        let passed = (number - self.newest).min(BUCKETS as u64);
        for step in 1..=passed {
            let index = ((self.newest + step) % BUCKETS as u64) as usize;
            self.bytes[index] = 0;
        }
        self.newest = number;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_measures_its_rate() {
        let t0 = Instant::now();
        let mut meter = BitrateMeter::new(t0);
        // 1,250 bytes every 10 ms = 1 Mbit/s, for three seconds.
        for i in 0..300u64 {
            meter.add(1250, t0 + Duration::from_millis(i * 10));
        }
        let bps = meter.bps(t0 + Duration::from_millis(2999));
        assert!((950_000..=1_050_000).contains(&bps), "{bps}");
    }

    #[test]
    fn a_stopped_stream_falls_to_zero_within_the_window() {
        let t0 = Instant::now();
        let mut meter = BitrateMeter::new(t0);
        for i in 0..100u64 {
            meter.add(1000, t0 + Duration::from_millis(i * 10));
        }
        assert!(meter.bps(t0 + Duration::from_millis(1000)) > 0);
        assert_eq!(meter.bps(t0 + Duration::from_millis(2100)), 0);
        // Long silence, then a packet: only that packet counts.
        meter.add(125, t0 + Duration::from_secs(3600));
        assert_eq!(meter.bps(t0 + Duration::from_secs(3600)), 1000);
    }

    #[test]
    fn times_out_of_order_and_huge_sizes_do_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut meter = BitrateMeter::new(t0);
        meter.add(usize::MAX, t0);
        meter.add(usize::MAX, t0 - Duration::from_secs(5));
        let _ = meter.bps(t0 - Duration::from_secs(1));
        let _ = meter.bps(t0 + Duration::from_secs(u32::MAX as u64));
    }
}
