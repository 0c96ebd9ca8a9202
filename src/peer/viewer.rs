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
use crate::router::layer_select::{best_allowed, Preference, UP_HEADROOM};
use crate::router::layer_switch::{Admit, LayerSwitch};
use crate::router::layers::{LayerReport, LayerRequest, TrackLayers};
use crate::router::probe::ProbePlan;
use crate::router::temporal::{temporal_target, TemporalFilter, ALL_TEMPORAL};
use crate::router::vp8::Vp8Rewriter;
use crate::router::{payload_type, MediaPacket};

#[derive(Debug, Default)]
pub struct ViewerSide {
    slots: Vec<Slot>,
    /// The viewer's bandwidth estimate (str0m's TWCC estimate), bits per second.
    estimate_bps: Option<u64>,
    /// What the viewer asked for on simulcast tracks (the WHEP layer API).
    preference: Preference,
    /// The highest VP8 temporal layer it asked for (the WHEP layer API).
    max_temporal: Option<u8>,
    /// A keyframe of this track's layer is wanted for a switch: the shard takes it.
    keyframe_wish: Option<(u64, u8)>,
    /// What str0m's estimator is asked to reach, and when it probes.
    probe: ProbePlan,
    /// Layer switches made and not yet counted by the shard.
    switches: u32,
}

/// What the viewer's audio is reckoned to take of its bandwidth estimate.
pub const AUDIO_SHARE_BPS: u64 = 64_000;

/// One outgoing m-line of the viewer and what it currently shows.
#[derive(Debug)]
struct Slot {
    mid: Mid,
    kind: MediaKind,
    ssrc: Ssrc,
    pts: Vec<(Pt, CodecSpec)>,
    /// The last codec mapped and the viewer's payload type for it.
    mapped: Option<(CodecSpec, Pt)>,
    vp8: Vp8Rewriter,
    /// The publisher track shown.
    track: Option<u64>,
    forwarder: Option<Forwarder>,
    /// Which simulcast layer of the track it forwards, and when it switches.
    layers: LayerSwitch,
    /// The layers of the track shown (for the layer API and events).
    track_layers: Option<Arc<TrackLayers>>,
    /// Which VP8 temporal layers it forwards.
    temporal: TemporalFilter,
    /// The highest temporal layer the viewer's estimate carries on the layer
    /// forwarded (every one unless even the lowest layer does not fit).
    temporal_by_bandwidth: u8,
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
                forwarder: None,
                layers: LayerSwitch::default(),
                track_layers: None,
                temporal: TemporalFilter::default(),
                temporal_by_bandwidth: ALL_TEMPORAL,
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
            slot.layers.stop_forwarding();
        }
    }

    pub fn clear_sources(&mut self) {
        for slot in &mut self.slots {
            slot.track = None;
            if let Some(f) = &mut slot.forwarder {
                f.clear_source();
            }
            slot.layers = LayerSwitch::default();
            slot.track_layers = None;
        }
    }

    /// The viewer's bandwidth estimate changed.
    pub fn set_estimate(&mut self, bps: u64) {
        self.estimate_bps = Some(bps);
    }

    /// The viewer asked for a layer, a cap, or automatic choice (the layer API):
    /// resolved against the layers of the track shown. Answers what is sent then.
    pub fn request_layer(
        &mut self,
        request: &LayerRequest,
        now: Instant,
    ) -> Result<LayerReport, String> {
        let spatial = LayerRequest {
            max_temporal_layer_id: None,
            ..request.clone()
        };
        if spatial == LayerRequest::default() {
            // Automatic choice needs no layer to resolve: it holds before media too.
            self.preference = Preference::Auto;
            self.max_temporal = request.max_temporal_layer_id;
            return Ok(self.layer_report(now));
        }
        let layers = self
            .slots
            .iter()
            .find(|s| s.kind == MediaKind::Video)
            .and_then(|s| s.track_layers.clone())
            .ok_or_else(|| "nothing is being sent to this session yet".to_string())?;
        self.preference = request.resolve(&layers, now)?;
        self.max_temporal = request.max_temporal_layer_id;
        Ok(self.layer_report(now))
    }

    /// The layers of the video track shown, and which one is sent (no layers
    /// while nothing is shown).
    pub fn layer_report(&self, now: Instant) -> LayerReport {
        let slot = self.slots.iter().find(|s| s.kind == MediaKind::Video);
        let Some((slot, layers)) = slot.and_then(|s| Some((s, s.track_layers.as_ref()?))) else {
            return LayerReport {
                mid: slot.map(|s| s.mid.to_string()).unwrap_or_default(),
                layers: Vec::new(),
                sending: None,
                target: None,
                preference: self.preference,
                sending_temporal: None,
                max_temporal: self.max_temporal,
                estimate_bps: self.estimate_bps,
            };
        };
        let simulcast = layers.is_simulcast();
        LayerReport {
            mid: slot.mid.to_string(),
            layers: layers.states(now),
            sending: if simulcast {
                slot.layers.forwarding()
            } else {
                Some(0)
            },
            target: if simulcast {
                slot.layers.target()
            } else {
                Some(0)
            },
            preference: self.preference,
            sending_temporal: slot.temporal.dropping_above(),
            max_temporal: self.max_temporal,
            estimate_bps: self.estimate_bps,
        }
    }

    /// Layer switches made since the last call.
    pub fn take_switches(&mut self) -> u32 {
        std::mem::take(&mut self.switches)
    }

    /// A keyframe wanted for a layer switch: (track, layer), once per wish.
    pub fn take_keyframe_wish(&mut self) -> Option<(u64, u8)> {
        self.keyframe_wish.take()
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
        // A slot sticks to one track until its publisher leaves; within a
        // simulcast track, it forwards the layer chosen for this viewer.
        if slot.track.is_some_and(|t| t != packet.track) {
            return WriteOutcome::Skipped;
        }
        if packet.layers.is_simulcast() {
            // The packet's arrival is the clock the layers' state is recorded on:
            // no clock read per viewer per packet.
            let now = packet.arrival;
            let estimate = self.estimate_bps.map(|e| e.saturating_sub(AUDIO_SHARE_BPS));
            let admit = slot.layers.admit(
                &packet.layers,
                packet.layer,
                packet.keyframe,
                estimate,
                self.preference,
                now,
            );
            if let Some(layer) = slot.layers.take_keyframe_wish() {
                self.keyframe_wish = Some((packet.track, layer));
            }
            if slot.layers.evaluated_at(now) {
                slot.temporal_by_bandwidth = match slot.layers.forwarding() {
                    Some(layer) => temporal_target(
                        packet.layers.up_to_temporal_bps(layer),
                        packet.layers.bitrate_bps(layer),
                        estimate,
                        slot.temporal.cap(),
                        UP_HEADROOM,
                    ),
                    None => ALL_TEMPORAL,
                };
                let target = slot.layers.target();
                want_probing(
                    rtc,
                    &mut self.probe,
                    &packet.layers,
                    target,
                    self.preference,
                    self.estimate_bps,
                    now,
                );
            }
            match admit {
                Admit::Skip => return WriteOutcome::Skipped,
                Admit::Switch => {
                    forwarder.clear_source();
                    self.switches += 1;
                }
                Admit::Forward => {}
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
        // The finer step: frames above the temporal layer chosen are dropped, and
        // the numbering closes over them.
        if packet.temporal.is_some() {
            let wanted = self
                .max_temporal
                .unwrap_or(ALL_TEMPORAL)
                .min(slot.temporal_by_bandwidth);
            slot.temporal.set_target(wanted);
            if !slot
                .temporal
                .admit(packet.temporal, packet.keyframe, packet.timestamp)
            {
                forwarder.skip(&meta);
                if let (Some(d), Some(t)) = (&packet.vp8, packet.temporal) {
                    if t.frame_start {
                        slot.vp8.skip(packet.source, d);
                    }
                }
                return WriteOutcome::Skipped;
            }
        }
        let mut out = match forwarder.forward(&meta) {
            Ok(out) => {
                if slot.track != Some(packet.track) {
                    slot.track = Some(packet.track);
                    slot.track_layers = Some(Arc::clone(&packet.layers));
                }
                out
            }
            Err(Drop::AwaitingKeyframe) => return WriteOutcome::NeedsKeyframe,
            Err(Drop::BeforeSwitch | Drop::AlreadySent) => return WriteOutcome::Skipped,
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

/// Tells str0m's estimator what the best layer the viewer may have needs, so it
/// probes towards it (and, while the viewer is held below that layer, now and
/// then beyond its estimate: see `router/probe.rs`).
fn want_probing(
    rtc: &mut Rtc,
    probe: &mut ProbePlan,
    layers: &TrackLayers,
    target: Option<u8>,
    preference: Preference,
    estimate_bps: Option<u64>,
    now: Instant,
) {
    let views = layers.views(now);
    let Some(best) = best_allowed(&views, preference) else {
        return;
    };
    // Beyond the bar the best layer must clear (its bitrate with headroom), so an
    // estimate that reaches it is not left hovering on it.
    let wanted = (best.bitrate_bps as f64 * UP_HEADROOM * PROBE_MARGIN) as u64 + AUDIO_SHARE_BPS;
    let held_below = target.is_some_and(|t| t != best.index);
    if let Some(desired) = probe.plan(wanted, estimate_bps, held_below, now) {
        rtc.bwe().set_bitrate(
            str0m::bwe::Bitrate::bps(0),
            str0m::bwe::Bitrate::bps(desired),
        );
    }
}

/// How far beyond the best layer's bar the estimator is asked to probe.
const PROBE_MARGIN: f64 = 1.3;

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
