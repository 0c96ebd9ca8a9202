//! Per-subscriber header rewriting: sequence numbers and timestamps.
//!
//! A [`Forwarder`] sits between one publisher track (the *source*, which may change
//! over time) and one outgoing stream of one subscriber. It keeps the outgoing
//! sequence numbers consecutive and the timestamps monotonic across source
//! switches, and makes a video subscriber start (and switch) on a keyframe.
//! Pure logic: input in, decision out, time passed in.

use std::collections::VecDeque;
use std::time::Instant;

/// What the forwarder needs to know about one incoming packet.
#[derive(Debug, Clone, Copy)]
pub struct PacketMeta {
    /// Identifies the publisher stream the packet came from; a change is a switch.
    pub source: u64,
    /// Extended (64-bit, rollover-free) sequence number from the publisher.
    pub seq: u64,
    /// RTP timestamp from the publisher.
    pub timestamp: u32,
    /// The packet begins a keyframe.
    pub keyframe: bool,
    /// When the packet arrived at the server.
    pub arrival: Instant,
}

/// Where to write the packet on the subscriber's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u64,
    pub timestamp: u32,
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Video from a new source before its first keyframe.
    AwaitingKeyframe,
    /// A late packet from before the current source started (reordered or
    /// retransmitted across a switch): forwarding it would go backwards. Also one
    /// so late that the packets skipped since are no longer remembered.
    BeforeSwitch,
    /// The packet was written already (a keyframe cache replayed to a viewer that
    /// had just started on the same keyframe live, or a publisher's duplicate).
    AlreadySent,
}

/// How many sequence numbers back from the newest the forwarder remembers as
/// written, to refuse a second copy; older late packets pass (a receiver drops
/// duplicates too, and RTP's own repair reaches no further back than that).
const SENT_WINDOW: u64 = 128;

#[derive(Debug)]
pub struct Forwarder {
    /// Video waits for a keyframe at start and on every source switch; audio does not.
    needs_keyframe_to_switch: bool,
    clock_rate: u32,
    current: Option<Source>,
    /// Last output, to continue from it on the next switch.
    last: Option<LastOut>,
    /// Bit `i`: sequence number `last.seq - i` was written.
    sent: u128,
    /// The highest incoming sequence number of the current source, forwarded or
    /// skipped.
    highest_in: Option<u64>,
    /// Incoming sequence numbers of the current source skipped (dropped temporal
    /// layers) at the top, oldest first, the last [`SENT_WINDOW`] of them: the
    /// outgoing numbering closes over them.
    skipped: VecDeque<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    id: u64,
    first_seq: u64,
    /// out_seq = in_seq + seq_offset (wrapping 64-bit arithmetic).
    seq_offset: u64,
    /// out_ts = in_ts + ts_offset (wrapping 32-bit arithmetic).
    ts_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    timestamp: u32,
    at: Instant,
}

impl Forwarder {
    pub fn new(is_video: bool, clock_rate: u32) -> Self {
        Forwarder {
            needs_keyframe_to_switch: is_video,
            clock_rate: clock_rate.max(1),
            current: None,
            last: None,
            sent: 0,
            highest_in: None,
            skipped: VecDeque::new(),
        }
    }

    /// The source currently forwarded, if any.
    pub fn source(&self) -> Option<u64> {
        self.current.map(|s| s.id)
    }

    /// True until the first packet has been forwarded from the current source.
    pub fn is_waiting(&self) -> bool {
        self.current.is_none()
    }

    /// Forget the current source (its publisher left). The next source continues
    /// the outgoing numbering where this one stopped.
    pub fn clear_source(&mut self) {
        self.current = None;
    }

    /// Decide where `packet` goes on the outgoing stream, or why it is dropped.
    pub fn forward(&mut self, packet: &PacketMeta) -> Result<Rewritten, Drop> {
        let source = match self.current {
            Some(s) if s.id == packet.source => s,
            _ => {
                if self.needs_keyframe_to_switch && !packet.keyframe {
                    return Err(Drop::AwaitingKeyframe);
                }
                let s = self.start_source(packet);
                self.current = Some(s);
                s
            }
        };
        if packet.seq < source.first_seq {
            return Err(Drop::BeforeSwitch);
        }
        // A late packet goes where it would have gone: before the packets skipped
        // after it moved the numbering down.
        let skipped_after = self
            .skipped
            .iter()
            .rev()
            .take_while(|s| **s > packet.seq)
            .count();
        if skipped_after == self.skipped.len() && self.skipped.len() == SENT_WINDOW as usize {
            return Err(Drop::BeforeSwitch);
        }
        self.highest_in = self.highest_in.max(Some(packet.seq));
        let out = Rewritten {
            seq: packet
                .seq
                .wrapping_add(source.seq_offset)
                .wrapping_add(skipped_after as u64),
            timestamp: packet.timestamp.wrapping_add(source.ts_offset),
        };
        match self.last {
            // A reordered or resent packet: it fills its gap once.
            Some(last) if last.seq >= out.seq => {
                let back = last.seq - out.seq;
                if back < SENT_WINDOW {
                    if self.sent & (1 << back) != 0 {
                        return Err(Drop::AlreadySent);
                    }
                    self.sent |= 1 << back;
                }
            }
            _ => {
                let ahead = self.last.map_or(SENT_WINDOW, |last| out.seq - last.seq);
                self.sent = if ahead < SENT_WINDOW {
                    (self.sent << ahead) | 1
                } else {
                    1
                };
                self.last = Some(LastOut {
                    seq: out.seq,
                    timestamp: out.timestamp,
                    at: packet.arrival,
                })
            }
        }
        Ok(out)
    }

    /// `packet` of the current source is not forwarded (its temporal layer is
    /// dropped): the packets after it are numbered as if it never was, so the
    /// viewer sees no gap. A late one (below the highest seen) changes nothing.
    pub fn skip(&mut self, packet: &PacketMeta) {
        let Some(source) = self.current.as_mut().filter(|s| s.id == packet.source) else {
            return;
        };
        if packet.seq < source.first_seq || self.highest_in.is_some_and(|h| packet.seq <= h) {
            return;
        }
        self.highest_in = Some(packet.seq);
        source.seq_offset = source.seq_offset.wrapping_sub(1);
        if self.skipped.len() == SENT_WINDOW as usize {
            self.skipped.pop_front();
        }
        self.skipped.push_back(packet.seq);
    }

    fn start_source(&mut self, packet: &PacketMeta) -> Source {
        self.highest_in = None;
        self.skipped.clear();
        let (first_out_seq, first_out_ts) = match self.last {
            Some(last) => {
                // Continue right after the last packet sent, and advance the
                // timestamp by the wall-clock time that passed (at least one tick),
                // so the decoder sees neither a gap nor time going backwards.
                let elapsed = packet.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)).round();
                let ticks = (ticks as u64).clamp(1, u64::from(u32::MAX / 2)) as u32;
                (last.seq + 1, last.timestamp.wrapping_add(ticks))
            }
            // First source ever: keep the publisher's numbering, folded into the
            // first rollover period (a receiver assumes ROC 0 at start).
            None => (packet.seq & 0xffff, packet.timestamp),
        };
        Source {
            id: packet.source,
            first_seq: packet.seq,
            seq_offset: first_out_seq.wrapping_sub(packet.seq),
            ts_offset: first_out_ts.wrapping_sub(packet.timestamp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(source: u64, seq: u64, timestamp: u32, keyframe: bool, at: Instant) -> PacketMeta {
        PacketMeta {
            source,
            seq,
            timestamp,
            keyframe,
            arrival: at,
        }
    }

    #[test]
    fn video_waits_for_a_keyframe_then_passes_through() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        assert_eq!(
            f.forward(&meta(1, 100, 5000, false, t0)),
            Err(Drop::AwaitingKeyframe)
        );
        let first = f.forward(&meta(1, 101, 6000, true, t0)).unwrap();
        assert_eq!(
            first,
            Rewritten {
                seq: 101,
                timestamp: 6000
            }
        );
        let next = f.forward(&meta(1, 102, 6000, false, t0)).unwrap();
        assert_eq!(next.seq, 102);
        assert_eq!(
            f.forward(&meta(1, 100, 5000, false, t0)),
            Err(Drop::BeforeSwitch)
        );
    }

    #[test]
    fn first_sequence_number_is_folded_below_the_first_rollover() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(false, 48_000);
        let out = f.forward(&meta(1, 3 * 65_536 + 7, 1, false, t0)).unwrap();
        assert_eq!(out.seq, 7);
        assert_eq!(
            f.forward(&meta(1, 3 * 65_536 + 8, 961, false, t0))
                .unwrap()
                .seq,
            8
        );
    }

    #[test]
    fn audio_switches_at_once_and_continues_numbering() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(false, 48_000);
        f.forward(&meta(1, 10, 1000, false, t0)).unwrap();
        let last = f.forward(&meta(1, 11, 1960, false, t0)).unwrap();
        let later = t0 + Duration::from_millis(100);
        let switched = f.forward(&meta(2, 50_000, 7, false, later)).unwrap();
        assert_eq!(switched.seq, last.seq + 1);
        assert_eq!(switched.timestamp, 1960 + 4800, "100 ms at 48 kHz later");
        assert_eq!(
            f.forward(&meta(2, 50_001, 967, false, later)).unwrap().seq,
            last.seq + 2
        );
    }

    #[test]
    fn video_switch_waits_for_the_new_sources_keyframe() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        f.forward(&meta(1, 1, 0, true, t0)).unwrap();
        let last = f.forward(&meta(1, 2, 3000, false, t0)).unwrap();
        f.clear_source();
        assert_eq!(
            f.forward(&meta(2, 900, 10, false, t0)),
            Err(Drop::AwaitingKeyframe)
        );
        let at = t0 + Duration::from_millis(1);
        let key = f.forward(&meta(2, 901, 20, true, at)).unwrap();
        assert_eq!(key.seq, last.seq + 1);
        assert_eq!(key.timestamp, 3000 + 90);
        assert_eq!(f.source(), Some(2));
    }

    #[test]
    fn timestamps_advance_at_least_one_tick_on_an_instant_switch() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(false, 48_000);
        let a = f.forward(&meta(1, 1, u32::MAX, false, t0)).unwrap();
        let b = f.forward(&meta(2, 1, 0, false, t0)).unwrap();
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(1));
    }

    #[test]
    fn reordered_packets_keep_their_gap_and_do_not_move_the_high_water_mark() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(false, 48_000);
        f.forward(&meta(1, 10, 0, false, t0)).unwrap();
        assert_eq!(f.forward(&meta(1, 12, 0, false, t0)).unwrap().seq, 12);
        assert_eq!(f.forward(&meta(1, 11, 0, false, t0)).unwrap().seq, 11);
        let switched = f.forward(&meta(2, 500, 0, false, t0)).unwrap();
        assert_eq!(switched.seq, 13);
    }

    #[test]
    fn a_packet_is_written_once_and_a_late_one_fills_its_gap_once() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        f.forward(&meta(1, 100, 0, true, t0)).unwrap();
        f.forward(&meta(1, 102, 0, false, t0)).unwrap();
        assert_eq!(
            f.forward(&meta(1, 102, 0, false, t0)),
            Err(Drop::AlreadySent)
        );
        assert_eq!(
            f.forward(&meta(1, 100, 0, true, t0)),
            Err(Drop::AlreadySent)
        );
        assert_eq!(f.forward(&meta(1, 101, 0, false, t0)).unwrap().seq, 101);
        assert_eq!(
            f.forward(&meta(1, 101, 0, false, t0)),
            Err(Drop::AlreadySent)
        );
        // Far ahead, then the window still knows what it wrote near the top.
        f.forward(&meta(1, 1_000, 0, false, t0)).unwrap();
        assert_eq!(
            f.forward(&meta(1, 1_000, 0, false, t0)),
            Err(Drop::AlreadySent)
        );
        assert_eq!(f.forward(&meta(1, 999, 0, false, t0)).unwrap().seq, 999);
        // Beyond the window a late packet is not judged.
        assert!(f.forward(&meta(1, 102, 0, false, t0)).is_ok());
    }

    #[test]
    fn skipped_packets_leave_no_gap_and_late_ones_land_where_they_belong() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(true, 90_000);
        assert_eq!(f.forward(&meta(1, 100, 0, true, t0)).unwrap().seq, 100);
        // 101 is late; 102 and 103 are skipped; 104 follows 100's numbering.
        f.skip(&meta(1, 102, 0, false, t0));
        f.skip(&meta(1, 103, 0, false, t0));
        assert_eq!(f.forward(&meta(1, 104, 0, false, t0)).unwrap().seq, 102);
        assert_eq!(f.forward(&meta(1, 101, 0, false, t0)).unwrap().seq, 101);
        assert_eq!(f.forward(&meta(1, 105, 0, false, t0)).unwrap().seq, 103);
        // Skipping again what was seen changes nothing.
        f.skip(&meta(1, 103, 0, false, t0));
        assert_eq!(f.forward(&meta(1, 106, 0, false, t0)).unwrap().seq, 104);
        // A switch continues from the last written, skips forgotten.
        f.clear_source();
        assert_eq!(f.forward(&meta(2, 9, 0, true, t0)).unwrap().seq, 105);
    }

    /// Any pattern of skipped and forwarded packets, some forwarded late: each
    /// forwarded packet gets the number it would have had if the skipped ones had
    /// never existed, so the viewer sees consecutive numbers with no gap.
    #[test]
    fn any_pattern_of_skips_numbers_the_forwarded_consecutively() {
        let t0 = Instant::now();
        let mut next = crate::router::test_random(0x7f4a_7c15);
        // 0: skipped, 1: forwarded in order, 2: held back and forwarded late.
        let fate: Vec<u32> = (0..20_000).map(|_| next() % 6 / 2).collect();
        let first = 1_000u64;
        let mut expected = Vec::with_capacity(fate.len());
        let mut numbered = first;
        for f in &fate {
            if *f != 0 {
                numbered += 1;
            }
            expected.push(numbered);
        }
        let mut f = Forwarder::new(true, 90_000);
        f.forward(&meta(1, first, 0, true, t0)).unwrap();
        let mut held_back = Vec::new();
        for (i, fate) in fate.iter().enumerate() {
            let seq = first + 1 + i as u64;
            match fate {
                0 => f.skip(&meta(1, seq, 0, false, t0)),
                2 => held_back.push(i),
                _ => {
                    let out = f.forward(&meta(1, seq, 0, false, t0)).unwrap().seq;
                    assert_eq!(out, expected[i], "seq {seq}");
                    for late in held_back.drain(..) {
                        let late_seq = first + 1 + late as u64;
                        let out = f.forward(&meta(1, late_seq, 0, false, t0)).unwrap().seq;
                        assert_eq!(out, expected[late], "late seq {late_seq}");
                    }
                }
            }
        }
    }

    /// Three sources (simulcast layers, or publishers) whose numbering starts just
    /// before the 16-bit sequence and 32-bit timestamp wraps; the viewer switches
    /// between them at random, always on a keyframe. Whatever the order, every
    /// forwarded packet's sequence number is the last one plus one (also on the
    /// wire, in 16 bits) and every picture's timestamp is later than the one before.
    #[test]
    fn any_sequence_of_switches_keeps_numbering_continuous_across_wraps() {
        let t0 = Instant::now();
        let mut next = crate::router::test_random(0x2545_f491);
        let mut f = Forwarder::new(true, 90_000);
        // Per source: next extended seq, next timestamp.
        let mut sources = [
            (65_530u64, u32::MAX - 9_000),
            (3 * 65_536 - 3, u32::MAX - 100),
            (1_000, 5),
        ];
        let mut current: Option<usize> = None;
        let mut last: Option<Rewritten> = None;
        for step in 0..20_000u64 {
            let at = t0 + Duration::from_millis(step);
            // Each source sends a picture of 1-3 packets; a picture is a keyframe
            // one time in ten.
            let source = (next() % 3) as usize;
            let packets = 1 + next() % 3;
            let keyframe = next() % 10 == 0;
            let wants_switch = next() % 4 == 0;
            if wants_switch && current != Some(source) {
                f.clear_source();
                current = Some(source);
            }
            let (seq, ts) = sources[source];
            // Another source's packets never reach the forwarder (the viewer skips
            // them before it); they only move that source's numbering on.
            let shown = current == Some(source);
            for i in (0..packets).filter(|_| shown) {
                let meta = PacketMeta {
                    source: source as u64,
                    seq: seq + u64::from(i),
                    timestamp: ts,
                    keyframe: keyframe && i == 0,
                    arrival: at,
                };
                match f.forward(&meta) {
                    Ok(out) => {
                        if let Some(prev) = last {
                            assert_eq!(out.seq, prev.seq + 1, "step {step}");
                            assert_eq!(out.seq as u16, (prev.seq as u16).wrapping_add(1));
                            if i == 0 {
                                let advance = out.timestamp.wrapping_sub(prev.timestamp) as i32;
                                assert!(advance > 0, "step {step}: time went back by {advance}");
                            } else {
                                assert_eq!(out.timestamp, prev.timestamp, "one picture, one time");
                            }
                        }
                        last = Some(out);
                    }
                    Err(Drop::AwaitingKeyframe) => {
                        assert!(
                            !(keyframe && i == 0),
                            "a keyframe was refused at step {step}"
                        );
                    }
                    Err(e) => panic!("in-order packet refused at step {step}: {e:?}"),
                }
            }
            sources[source] = (seq + u64::from(packets), ts.wrapping_add(3_000));
        }
        assert!(last.is_some_and(|l| l.seq > 3_000), "{last:?}");
    }
}
