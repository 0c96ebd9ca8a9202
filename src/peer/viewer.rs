//! The viewing side of a peer: forwarded packets are rewritten (payload type,
//! sequence number, timestamp) and written into its outgoing streams. The payload
//! itself is shared, never copied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::CodecSpec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::Rtc;

use super::negotiated;
use crate::router::forward::{Drop, Forwarder, PacketMeta};
use crate::router::vp8::Vp8Rewriter;
use crate::router::{payload_type, MediaPacket};

#[derive(Debug, Default)]
pub struct ViewerSide {
    slots: Vec<Slot>,
}

/// One outgoing m-line of the viewer and what it currently shows.
#[derive(Debug)]
struct Slot {
    #[allow(dead_code)] // kept for logs and the coming multi-slot layouts
    mid: Mid,
    kind: MediaKind,
    ssrc: Ssrc,
    pts: Vec<(Pt, CodecSpec)>,
    /// The last codec mapped and the viewer's payload type for it.
    mapped: Option<(CodecSpec, Pt)>,
    vp8: Vp8Rewriter,
    /// The publisher track shown, and the layer of it being forwarded.
    track: Option<u64>,
    layer: u8,
    forwarder: Option<Forwarder>,
}

/// What happened to a packet offered to a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Video for a viewer that is waiting for a keyframe to start or switch.
    NeedsKeyframe,
    /// Not for this viewer (no slot of that kind, no common codec, a late packet).
    Skipped,
}

impl ViewerSide {
    /// Records the m-lines the client receives on: one slot each.
    pub fn learn_media<'a>(&mut self, rtc: &mut Rtc, mids: impl Iterator<Item = &'a str>) {
        for mid in mids {
            let Some(media) = negotiated(rtc, mid, &[Direction::SendOnly, Direction::SendRecv])
            else {
                continue;
            };
            let Some(ssrc) = rtc
                .direct_api()
                .stream_tx_by_mid(media.mid, None)
                .map(|s| s.ssrc())
            else {
                continue;
            };
            self.slots.push(Slot {
                mid: media.mid,
                kind: media.kind,
                ssrc,
                pts: media.codecs,
                mapped: None,
                vp8: Vp8Rewriter::default(),
                track: None,
                layer: 0,
                forwarder: None,
            });
        }
    }

    pub fn has_slots(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Video slots restart on the next keyframe of their source, numbering
    /// continuous, as on a source switch.
    pub fn restart_video(&mut self) {
        for slot in self.slots.iter_mut().filter(|s| s.kind == MediaKind::Video) {
            if let Some(f) = &mut slot.forwarder {
                f.clear_source();
            }
        }
    }

    pub fn clear_sources(&mut self) {
        for slot in &mut self.slots {
            slot.track = None;
            if let Some(f) = &mut slot.forwarder {
                f.clear_source();
            }
        }
    }

    /// Writes a packet, its timestamp moved by `squeeze` (a replayed one).
    pub fn write_one(
        &mut self,
        rtc: &mut Rtc,
        packet: &MediaPacket,
        squeeze: Option<Squeeze>,
    ) -> WriteOutcome {
        // Broadcast: the first slot of the packet's kind shows the room's publisher.
        let Some(slot) = self.slots.iter_mut().find(|s| s.kind == packet.kind) else {
            return WriteOutcome::Skipped;
        };
        let pt = match slot.mapped {
            Some((codec, pt)) if codec == packet.codec => pt,
            _ => match payload_type::choose(&packet.codec, &slot.pts) {
                Some(pt) => {
                    slot.mapped = Some((packet.codec, pt));
                    pt
                }
                None => return WriteOutcome::Skipped,
            },
        };
        let forwarder = slot.forwarder.get_or_insert_with(|| {
            Forwarder::new(
                packet.kind == MediaKind::Video,
                packet.codec.clock_rate.get(),
            )
        });
        // A slot sticks to one track until its publisher leaves; within it, it
        // moves to a better simulcast layer on that layer's keyframe.
        if slot.track.is_some_and(|t| t != packet.track) {
            return WriteOutcome::Skipped;
        }
        if forwarder.source().is_some_and(|s| s != packet.source) {
            if packet.layer < slot.layer && packet.keyframe {
                forwarder.clear_source();
            } else {
                return WriteOutcome::Skipped;
            }
        }
        // A replayed packet stands for "now": its timestamp is squeezed towards the
        // newest picture, so its original arrival (seconds ago) would make a later
        // switch or restart jump the timestamps ahead by that much.
        let arrival = match squeeze {
            Some(_) => Instant::now(),
            None => packet.arrival,
        };
        let meta = PacketMeta {
            source: packet.source,
            seq: packet.seq,
            timestamp: packet.timestamp,
            keyframe: packet.keyframe,
            arrival,
        };
        let mut out = match forwarder.forward(&meta) {
            Ok(out) => {
                slot.track = Some(packet.track);
                slot.layer = packet.layer;
                out
            }
            Err(Drop::AwaitingKeyframe) => return WriteOutcome::NeedsKeyframe,
            Err(Drop::BeforeSwitch) => return WriteOutcome::Skipped,
        };
        // The capture moment str0m builds this stream's sender reports from (lip sync).
        let mut wallclock = packet.wallclock;
        if let Some(s) = squeeze {
            // Where the newest cached picture lands, minus this picture's place before it.
            let newest_out = out
                .timestamp
                .wrapping_add(s.newest_ts.wrapping_sub(packet.timestamp));
            out.timestamp = newest_out.wrapping_sub(s.back);
            // On the newest picture's mapping line too, so the reports do not jump.
            let back = Duration::from_secs_f64(
                f64::from(s.back) / f64::from(packet.codec.clock_rate.get().max(1)),
            );
            wallclock = s
                .newest_wallclock
                .checked_sub(back)
                .unwrap_or(s.newest_wallclock);
        }
        let mut api = rtc.direct_api();
        let Some(stream) = api.stream_tx(&slot.ssrc) else {
            return WriteOutcome::Skipped;
        };
        tracing::trace!(seq = out.seq, kind = ?packet.kind, in_seq = packet.seq, "rtp out");
        let mut write = RtpWrite::new(
            pt,
            out.seq.into(),
            out.timestamp,
            wallclock,
            Arc::clone(&packet.payload),
        )
        .marker(packet.marker)
        .ext_vals(packet.extensions.to_write())
        .nackable(packet.kind == MediaKind::Video);
        if let Some(patch) = packet
            .vp8
            .as_ref()
            .and_then(|d| slot.vp8.rewrite(packet.source, d))
        {
            write = write.vp8_patch(patch);
        }
        stream.write_rtp(write);
        WriteOutcome::Written
    }
}

/// How a replayed packet's timestamp is moved (see [`plan_replay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Squeeze {
    newest_ts: u32,
    newest_wallclock: Instant,
    back: u32,
}

/// The keyframe cache as a new viewer gets it: the group of pictures since the
/// last keyframe, in order, each with its timestamp squeezed towards the newest
/// one (one millisecond apart), so the viewer decodes them all at once and then
/// plays the live stream with no added delay. Sequence numbers run on into the
/// live stream as usual.
pub fn plan_replay(packets: &[Arc<MediaPacket>]) -> Vec<(Arc<MediaPacket>, Option<Squeeze>)> {
    let Some(newest) = packets.last() else {
        return Vec::new();
    };
    let frames = count_frames(packets);
    let mut frame_index = 0u32;
    let mut previous_ts = packets[0].timestamp;
    packets
        .iter()
        .map(|packet| {
            if packet.timestamp != previous_ts {
                frame_index += 1;
                previous_ts = packet.timestamp;
            }
            let frames_before_newest = frames.saturating_sub(1).saturating_sub(frame_index);
            let step = packet.codec.clock_rate.get() / 1000;
            let squeeze = Squeeze {
                newest_ts: newest.timestamp,
                newest_wallclock: newest.wallclock,
                back: frames_before_newest.saturating_mul(step),
            };
            (Arc::clone(packet), Some(squeeze))
        })
        .collect()
}

/// Pictures (distinct consecutive timestamps) in a run of packets.
fn count_frames(packets: &[Arc<MediaPacket>]) -> u32 {
    let mut frames = 0;
    let mut previous = None;
    for p in packets {
        if previous != Some(p.timestamp) {
            frames += 1;
            previous = Some(p.timestamp);
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::gop_cache::tests::packet;

    #[test]
    fn replay_squeezes_pictures_one_millisecond_apart_ending_at_the_newest() {
        // Three pictures (timestamps 3000, 6000, 9000), the last in two packets.
        let mut last = Arc::into_inner(packet(4, false, 10)).expect("one owner");
        last.timestamp = 9000;
        let packets = vec![
            packet(1, true, 10),
            packet(2, false, 10),
            packet(3, false, 10),
            Arc::new(last),
        ];
        let plan = plan_replay(&packets);
        let backs: Vec<u32> = plan
            .iter()
            .map(|(_, s)| s.map(|s| s.back).unwrap_or(u32::MAX))
            .collect();
        assert_eq!(
            backs,
            vec![180, 90, 0, 0],
            "90 kHz: 1 ms = 90 ticks per picture before the newest"
        );
        assert!(plan
            .iter()
            .all(|(_, s)| s.map(|s| s.newest_ts) == Some(9000)));
        assert!(plan_replay(&[]).is_empty());
    }
}
