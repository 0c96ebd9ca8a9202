//! The viewing side of a peer: forwarded packets are rewritten (payload type,
//! sequence number, timestamp) and written into its outgoing streams. The payload
//! itself is shared, never copied.

use std::sync::Arc;

use str0m::format::CodecSpec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite, Ssrc};
use str0m::Rtc;

use crate::router::forward::{Drop, Forwarder, PacketMeta};
use crate::router::{payload_type, MediaPacket};

#[derive(Debug, Default)]
pub struct ViewerSide {
    slots: Vec<Slot>,
}

/// One outgoing m-line of the viewer and what it currently shows.
#[derive(Debug)]
struct Slot {
    mid: Mid,
    kind: MediaKind,
    ssrc: Ssrc,
    pts: Vec<(Pt, CodecSpec)>,
    /// The last codec mapped and the viewer's payload type for it.
    mapped: Option<(CodecSpec, Pt)>,
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
            let mid = Mid::from(mid);
            let Some(media) = rtc.media(mid) else {
                continue;
            };
            if !matches!(media.direction(), Direction::SendOnly | Direction::SendRecv) {
                continue;
            }
            let kind = media.kind();
            let remote_pts = media.remote_pts().to_vec();
            let pts: Vec<(Pt, CodecSpec)> = rtc
                .codec_config()
                .params()
                .iter()
                .filter(|p| remote_pts.contains(&p.pt()))
                .map(|p| (p.pt(), p.spec()))
                .collect();
            let Some(ssrc) = rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc())
            else {
                continue;
            };
            if pts.is_empty() {
                continue;
            }
            self.slots.push(Slot {
                mid,
                kind,
                ssrc,
                pts,
                mapped: None,
                forwarder: None,
            });
        }
    }

    pub fn has_slots(&self) -> bool {
        !self.slots.is_empty()
    }

    pub fn kinds(&self) -> impl Iterator<Item = MediaKind> + '_ {
        self.slots.iter().map(|s| s.kind)
    }

    pub fn clear_sources(&mut self) {
        for slot in &mut self.slots {
            if let Some(f) = &mut slot.forwarder {
                f.clear_source();
            }
        }
    }

    pub fn write(&mut self, rtc: &mut Rtc, packet: &MediaPacket) -> WriteOutcome {
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
        // A slot sticks to its source until that publisher leaves.
        if forwarder.source().is_some_and(|s| s != packet.source) {
            return WriteOutcome::Skipped;
        }
        let meta = PacketMeta {
            source: packet.source,
            seq: packet.seq,
            timestamp: packet.timestamp,
            keyframe: packet.keyframe,
            arrival: packet.arrival,
        };
        let out = match forwarder.forward(&meta) {
            Ok(out) => out,
            Err(Drop::AwaitingKeyframe) => return WriteOutcome::NeedsKeyframe,
            Err(Drop::BeforeSwitch) => return WriteOutcome::Skipped,
        };
        let mut api = rtc.direct_api();
        let Some(stream) = api.stream_tx(&slot.ssrc) else {
            return WriteOutcome::Skipped;
        };
        let ext_vals = ExtensionValues {
            audio_level: packet.audio_level,
            voice_activity: packet.voice_activity,
            ..Default::default()
        };
        stream.write_rtp(
            RtpWrite::new(
                pt,
                out.seq.into(),
                out.timestamp,
                packet.arrival,
                Arc::clone(&packet.payload),
            )
            .marker(packet.marker)
            .ext_vals(ext_vals)
            .nackable(packet.kind == MediaKind::Video),
        );
        let _ = slot.mid;
        WriteOutcome::Written
    }
}
