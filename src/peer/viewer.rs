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
use super::resend::{self, ResendHistory};
use crate::router::forward::{Drop, Forwarder, PacketMeta};
use crate::router::layer_select::{best_allowed, Preference, UP_HEADROOM};
use crate::router::layer_switch::{Admit, LayerSwitch};
use crate::router::layers::{LayerReport, LayerRequest, TrackLayers};
use crate::router::probe::ProbePlan;
use crate::router::slots::{self, Candidate, SlotView, TrackView, ViewerNews};
use crate::router::sources::{RoomSources, Source};
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
    /// Keyframes of these tracks' layers are wanted for switches: the shard takes them.
    keyframe_wishes: Vec<(u64, u8)>,
    /// What str0m's estimator is asked to reach, and when it probes.
    probe: ProbePlan,
    /// Layer switches made and not yet counted by the shard.
    switches: u32,
    /// Slot source switches made and not yet counted by the shard.
    source_switches: u32,
    /// The participants it pinned (the WHEP pin API): their video first.
    pins: Vec<Arc<str>>,
    /// Video slots given a track: the viewer's estimate is shared among them.
    video_shown: u64,
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
    forwarder: Option<Forwarder>,
    /// The publisher track shown.
    shown: Option<Shown>,
    /// The track a video slot moves to on that track's next keyframe; until
    /// then the shown one goes on.
    next: Option<Shown>,
    /// How long str0m keeps what this slot sent, for NACKs (video only).
    resend: ResendHistory,
}

/// A publisher track as one slot follows it.
#[derive(Debug)]
struct Shown {
    track: u64,
    /// Which simulcast layer of the track it forwards, and when it switches.
    layers: LayerSwitch,
    /// The layers of the track (for the layer API and events), once seen.
    track_layers: Option<Arc<TrackLayers>>,
    /// Which VP8 temporal layers it forwards.
    temporal: TemporalFilter,
    /// The highest temporal layer the viewer's estimate carries on the layer
    /// forwarded (every one unless even the lowest layer does not fit).
    temporal_by_bandwidth: u8,
}

impl Shown {
    fn new(track: u64) -> Self {
        Shown {
            track,
            layers: LayerSwitch::default(),
            track_layers: None,
            temporal: TemporalFilter::default(),
            temporal_by_bandwidth: ALL_TEMPORAL,
        }
    }

    /// The layer switch's verdict on one packet of the track followed, and the
    /// keyframe (track, layer) it wishes for, if any.
    fn admit(
        &mut self,
        packet: &MediaPacket,
        estimate: Option<u64>,
        preference: Preference,
        now: Instant,
    ) -> (Admit, Option<(u64, u8)>) {
        let admit = self.layers.admit(
            &packet.layers,
            packet.layer,
            packet.keyframe,
            estimate,
            preference,
            now,
        );
        let wish = self.layers.take_keyframe_wish().map(|l| (packet.track, l));
        (admit, wish)
    }
}

impl Slot {
    fn shows(&self, track: u64) -> bool {
        self.shown.as_ref().is_some_and(|s| s.track == track)
    }

    fn awaits(&self, track: u64) -> bool {
        self.next.as_ref().is_some_and(|s| s.track == track)
    }

    /// The track the slot shows or is moving to.
    fn wanted(&self) -> Option<u64> {
        self.next.as_ref().or(self.shown.as_ref()).map(|s| s.track)
    }

    /// Gives the slot `track` (nothing: `None`). Audio switches at once (every
    /// packet is decodable); video keeps showing its track until the new one's
    /// keyframe, unless it showed nothing.
    fn assign(&mut self, track: Option<u64>) -> bool {
        if self.wanted() == track {
            return false;
        }
        match track {
            Some(t) if self.shows(t) => self.next = None,
            Some(t) if self.kind == MediaKind::Video && self.shown.is_some() => {
                self.next = Some(Shown::new(t));
            }
            _ => {
                self.shown = track.map(Shown::new);
                self.next = None;
                if let Some(f) = &mut self.forwarder {
                    f.clear_source();
                }
            }
        }
        true
    }
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
            let mut api = rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(media.mid, None) else {
                continue;
            };
            let resend = ResendHistory::default();
            if media.kind == MediaKind::Video {
                stream.set_rtx_cache(resend::MAX_PACKETS, resend.age(), resend::RESEND_RATIO_CAP);
            }
            let ssrc = stream.ssrc();
            self.slots.push(Slot {
                mid: media.mid,
                kind: media.kind,
                ssrc,
                pts: media.codecs,
                mapped: None,
                vp8: Vp8Rewriter::default(),
                forwarder: None,
                shown: None,
                next: None,
                resend,
            });
        }
    }

    /// Fits the resend history of the video slot on `mid` to the viewer's measured
    /// round trip (see `peer/resend.rs`).
    pub fn on_round_trip(&mut self, rtc: &mut Rtc, mid: Mid, rtt: Duration) {
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.mid == mid && s.kind == MediaKind::Video)
        else {
            return;
        };
        let Some(age) = slot.resend.retune(rtt) else {
            return;
        };
        if let Some(stream) = rtc.direct_api().stream_tx(&slot.ssrc) {
            tracing::debug!(%mid, rtt_ms = rtt.as_millis() as u64, age_ms = age.as_millis() as u64, "resend history retuned");
            stream.set_rtx_cache(resend::MAX_PACKETS, age, resend::RESEND_RATIO_CAP);
        }
    }

    /// How many slots of `kind` it has.
    pub fn slot_count(&self, kind: MediaKind) -> usize {
        self.slots.iter().filter(|s| s.kind == kind).count()
    }

    pub fn has_slots(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The slot showing `track` restarts on its next keyframe, numbering
    /// continuous, as on a source switch.
    pub fn restart_track(&mut self, track: u64) {
        for slot in self.slots.iter_mut().filter(|s| s.shows(track)) {
            if let Some(f) = &mut slot.forwarder {
                f.clear_source();
            }
            if let Some(shown) = &mut slot.shown {
                shown.layers.stop_forwarding();
            }
        }
    }

    /// Gives the slots to the room's tracks by the slot policy (`router/slots.rs`),
    /// leaving out the viewer's own participant `own`. True if any slot changed.
    pub fn assign(&mut self, sources: &RoomSources, own: &str) -> bool {
        let mut changed = false;
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let current: Vec<Option<u64>> = self
                .slots
                .iter()
                .filter(|s| s.kind == kind)
                .map(Slot::wanted)
                .collect();
            if current.is_empty() {
                continue;
            }
            let candidates: Vec<Candidate> = sources
                .sources()
                .iter()
                .filter(|s| s.kind == kind && &*s.participant != own)
                .map(|s| Candidate {
                    track: s.track,
                    participant: Arc::clone(&s.participant),
                    muted: s.muted,
                    loudness: s.loudness,
                    last_spoke: sources.last_spoke(&s.participant),
                    order: s.order,
                })
                .collect();
            let chosen = match kind {
                MediaKind::Audio => slots::assign_audio(&current, &candidates),
                MediaKind::Video => slots::assign_video(&current, &candidates, &self.pins),
            };
            for (slot, track) in self.slots.iter_mut().filter(|s| s.kind == kind).zip(chosen) {
                changed |= slot.assign(track);
            }
        }
        self.video_shown = self
            .slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video && s.wanted().is_some())
            .count() as u64;
        changed
    }

    /// The participants the viewer pinned, first first (the WHEP pin API).
    pub fn set_pins(&mut self, pins: Vec<Arc<str>>) {
        self.pins = pins;
    }

    pub fn pins(&self) -> &[Arc<str>] {
        &self.pins
    }

    /// What the viewer's slots show, and the room's tracks, for its events.
    pub fn news(&self, sources: &RoomSources, own: &str) -> ViewerNews {
        let view = |s: &Source| TrackView {
            track: s.track,
            participant: Arc::clone(&s.participant),
            kind: s.kind,
        };
        ViewerNews {
            slots: self
                .slots
                .iter()
                .map(|s| SlotView {
                    mid: s.mid.to_string(),
                    kind: s.kind,
                    track: s.wanted().and_then(|t| sources.get(t)).map(view),
                })
                .collect(),
            active_speaker: sources.active_speaker().cloned(),
            tracks: sources
                .sources()
                .iter()
                .filter(|s| &*s.participant != own)
                .map(|s| (view(s), s.muted))
                .collect(),
        }
    }

    /// The track the first video slot shows or moves to.
    pub fn first_video_track(&self) -> Option<u64> {
        self.slots
            .iter()
            .find(|s| s.kind == MediaKind::Video)
            .and_then(Slot::wanted)
    }

    /// The track and layer the slot on `mid` forwards (a viewer's PLI names it).
    pub fn forwarded_on(&self, mid: Mid) -> Option<(u64, u8)> {
        let slot = self.slots.iter().find(|s| s.mid == mid)?;
        let shown = slot.shown.as_ref()?;
        Some((shown.track, shown.layers.forwarding().unwrap_or(0)))
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
            .and_then(|s| s.shown.as_ref()?.track_layers.clone())
            .ok_or_else(|| "nothing is being sent to this session yet".to_string())?;
        self.preference = request.resolve(&layers, now)?;
        self.max_temporal = request.max_temporal_layer_id;
        Ok(self.layer_report(now))
    }

    /// The layers of the video track shown, and which one is sent (no layers
    /// while nothing is shown).
    pub fn layer_report(&self, now: Instant) -> LayerReport {
        let slot = self.slots.iter().find(|s| s.kind == MediaKind::Video);
        let shown = slot.and_then(|s| Some((s, s.shown.as_ref()?)));
        let Some((slot, shown, layers)) =
            shown.and_then(|(s, shown)| Some((s, shown, shown.track_layers.as_ref()?)))
        else {
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
                shown.layers.forwarding()
            } else {
                Some(0)
            },
            target: if simulcast {
                shown.layers.target()
            } else {
                Some(0)
            },
            preference: self.preference,
            sending_temporal: shown.temporal.dropping_above(),
            max_temporal: self.max_temporal,
            estimate_bps: self.estimate_bps,
        }
    }

    /// Layer switches made since the last call.
    pub fn take_switches(&mut self) -> u32 {
        std::mem::take(&mut self.switches)
    }

    /// Keyframes wanted for layer switches: (track, layer), once per wish.
    pub fn take_keyframe_wishes(&mut self) -> Option<Vec<(u64, u8)>> {
        (!self.keyframe_wishes.is_empty()).then(|| std::mem::take(&mut self.keyframe_wishes))
    }

    /// Slot source switches made since the last call.
    pub fn take_source_switches(&mut self) -> u32 {
        std::mem::take(&mut self.source_switches)
    }

    /// Writes a packet, its timestamp moved by `squeeze` (a replayed one).
    pub fn write_one(
        &mut self,
        rtc: &mut Rtc,
        packet: &MediaPacket,
        squeeze: Option<Squeeze>,
    ) -> WriteOutcome {
        // The video slots share the viewer's estimate: each simulcast choice gets its part.
        let video_shown = self.video_shown.max(1);
        // The slot that shows the packet's track, or is moving to it.
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.kind == packet.kind && (s.shows(packet.track) || s.awaits(packet.track)))
        else {
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
        // The packet's arrival is the clock the layers' state is recorded on: no
        // clock read per viewer per packet.
        let now = packet.arrival;
        let estimate = self
            .estimate_bps
            .map(|e| e.saturating_sub(AUDIO_SHARE_BPS) / video_shown);
        if let Some(next) = slot.next.as_mut().filter(|n| n.track == packet.track) {
            // A source switch of a video slot: it happens on the new track's
            // keyframe (of the layer chosen for the viewer), with the outgoing
            // numbering continuous, as a layer switch does.
            let ready = if packet.layers.is_simulcast() {
                let admit = next.admit(packet, estimate, self.preference, now);
                self.keyframe_wishes.extend(admit.1);
                admit.0 == Admit::Switch
            } else {
                packet.keyframe
            };
            if !ready {
                // Without layers a keyframe request to its publisher brings it.
                return if packet.layers.is_simulcast() {
                    WriteOutcome::Skipped
                } else {
                    WriteOutcome::NeedsKeyframe
                };
            }
            slot.shown = slot.next.take();
            forwarder.clear_source();
            self.source_switches += 1;
        }
        let Some(shown) = slot.shown.as_mut() else {
            return WriteOutcome::Skipped;
        };
        if shown.track_layers.is_none() {
            shown.track_layers = Some(Arc::clone(&packet.layers));
        }
        if packet.layers.is_simulcast() {
            let (admit, wish) = shown.admit(packet, estimate, self.preference, now);
            self.keyframe_wishes.extend(wish);
            if shown.layers.evaluated_at(now) {
                shown.temporal_by_bandwidth = match shown.layers.forwarding() {
                    Some(layer) => temporal_target(
                        packet.layers.up_to_temporal_bps(layer),
                        packet.layers.bitrate_bps(layer),
                        estimate,
                        shown.temporal.cap(),
                        UP_HEADROOM,
                    ),
                    None => ALL_TEMPORAL,
                };
                let target = shown.layers.target();
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
                .min(shown.temporal_by_bandwidth);
            shown.temporal.set_target(wanted);
            if !shown
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
            Ok(out) => out,
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
