//! str0m's periodic stats of one peer (every [`STATS_INTERVAL`]), turned into
//! the increments the shard adds to its metrics: NACKs and keyframe requests each
//! way, packets resent, loss, and the bandwidth estimate. str0m reports running
//! totals per m-line (and simulcast layer); this keeps the last ones and answers
//! the difference. Pure: no I/O, no clock.

use str0m::media::{Mid, Rid};
use str0m::stats::{MediaEgressStats, MediaIngressStats, PeerStats};

/// How often str0m reports: often enough for a dashboard's rate(), rare enough
/// to cost nothing per viewer.
pub const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What one report adds to the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsDelta {
    pub nacks_received: u64,
    pub plis_received: u64,
    pub firs_received: u64,
    pub nacks_sent: u64,
    pub resent: u64,
    /// Fraction lost of a stream we send (the viewer's receiver reports).
    pub loss_out: Option<f32>,
    /// Fraction lost of a stream we receive (ours, of a publisher's).
    pub loss_in: Option<f32>,
    pub estimate_bps: Option<u64>,
}

/// One m-line, and its simulcast layer.
type StreamKey = (Mid, Option<Rid>);

#[derive(Debug, Clone, Copy, Default)]
struct EgressTotals {
    packets: u64,
    nacks: u64,
    plis: u64,
    firs: u64,
}

/// The running totals last reported, per m-line and layer (bounded by the
/// peer's m-lines).
#[derive(Debug, Default)]
pub struct StatsTracker {
    egress: Vec<(StreamKey, EgressTotals)>,
    /// Per incoming m-line and layer: NACKs sent and packets received so far.
    ingress: Vec<(StreamKey, (u64, u64))>,
    /// Packets str0m says it sent, all m-lines together.
    egress_packets: u64,
    /// Packets we wrote into the peer's streams.
    forwarded: u64,
    /// The part of `egress_packets` beyond `forwarded` counted so far.
    resent_counted: u64,
}

impl StatsTracker {
    /// A packet was written into one of the peer's streams.
    pub fn forwarded(&mut self, packets: u64) {
        self.forwarded += packets;
    }

    pub fn on_egress(&mut self, s: &MediaEgressStats) -> StatsDelta {
        let now = EgressTotals {
            packets: s.packets,
            nacks: s.nacks,
            plis: s.plis,
            firs: s.firs,
        };
        let key = (s.mid, s.rid);
        let before = match self.egress.iter_mut().find(|(k, _)| *k == key) {
            Some((_, last)) => std::mem::replace(last, now),
            None => {
                self.egress.push((key, now));
                EgressTotals::default()
            }
        };
        self.egress_packets += now.packets.saturating_sub(before.packets);
        // Sent beyond what was written: retransmissions and probe padding. What
        // is written and not yet sent (the pacer's queue) makes this lag, never lead.
        let beyond = self.egress_packets.saturating_sub(self.forwarded);
        let resent = beyond.saturating_sub(self.resent_counted);
        self.resent_counted += resent;
        StatsDelta {
            nacks_received: now.nacks.saturating_sub(before.nacks),
            plis_received: now.plis.saturating_sub(before.plis),
            firs_received: now.firs.saturating_sub(before.firs),
            resent,
            loss_out: s.loss.filter(|l| l.is_finite()),
            ..StatsDelta::default()
        }
    }

    pub fn on_ingress(&mut self, s: &MediaIngressStats) -> StatsDelta {
        let key = (s.mid, s.rid);
        let now = (s.nacks, s.packets);
        let (nacks, packets) = match self.ingress.iter_mut().find(|(k, _)| *k == key) {
            Some((_, last)) => std::mem::replace(last, now),
            None => {
                self.ingress.push((key, now));
                (0, 0)
            }
        };
        StatsDelta {
            nacks_sent: s.nacks.saturating_sub(nacks),
            // A stream that stopped (a paused layer) keeps reporting its last
            // fraction: only a stream that moved says anything about loss now.
            loss_in: s.loss.filter(|l| l.is_finite() && s.packets > packets),
            ..StatsDelta::default()
        }
    }

    pub fn on_peer(&self, s: &PeerStats) -> StatsDelta {
        StatsDelta {
            estimate_bps: s.bwe_tx.map(|b| b.as_u64()),
            ..StatsDelta::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn egress(mid: &str, packets: u64, nacks: u64, plis: u64) -> MediaEgressStats {
        MediaEgressStats {
            mid: Mid::from(mid),
            rid: None,
            bytes: packets * 1000,
            packets,
            firs: 0,
            plis,
            nacks,
            rtt: None,
            loss: Some(0.02),
            timestamp: Instant::now(),
            remote: None,
        }
    }

    #[test]
    fn running_totals_become_increments_per_m_line() {
        let mut t = StatsTracker::default();
        t.forwarded(150);
        let first = t.on_egress(&egress("0", 100, 3, 1));
        assert_eq!((first.nacks_received, first.plis_received), (3, 1));
        assert_eq!(first.loss_out, Some(0.02));
        let other = t.on_egress(&egress("1", 40, 0, 0));
        assert_eq!(other.nacks_received, 0, "another m-line has its own totals");
        let again = t.on_egress(&egress("0", 100, 5, 1));
        assert_eq!((again.nacks_received, again.plis_received), (2, 0));
    }

    #[test]
    fn resends_are_what_was_sent_beyond_what_was_written() {
        let mut t = StatsTracker::default();
        t.forwarded(100);
        // 90 of 100 sent: the pacer holds 10. Nothing resent.
        assert_eq!(t.on_egress(&egress("0", 90, 0, 0)).resent, 0);
        // All 100, and 8 more: resends.
        assert_eq!(t.on_egress(&egress("0", 108, 8, 0)).resent, 8);
        // Counted once.
        assert_eq!(t.on_egress(&egress("0", 108, 8, 0)).resent, 0);
        t.forwarded(10);
        assert_eq!(t.on_egress(&egress("0", 120, 10, 0)).resent, 2);
    }

    #[test]
    fn a_counter_that_goes_back_adds_nothing() {
        let mut t = StatsTracker::default();
        t.on_egress(&egress("0", 100, 9, 0));
        let back = t.on_egress(&egress("0", 50, 2, 0));
        assert_eq!(back.nacks_received, 0);
        assert_eq!(back.resent, 0);
    }
}
