//! The publishing side of a peer: incoming RTP becomes shared [`MediaPacket`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, CodecSpec};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::rtp::{RtpPacket, Ssrc, Vp8Descriptor};
use str0m::Rtc;

use super::negotiated;
use crate::router::bitrate::BitrateMeter;
use crate::router::clock::{PublisherClock, StreamClock};
use crate::router::extensions::ForwardedExtensions;
use crate::router::keyframe::starts_keyframe;
use crate::router::layers::TrackLayers;
use crate::router::resolution::keyframe_resolution;
use crate::router::simulcast;
use crate::router::{MediaPacket, RoomId};

/// Unique per incoming stream in this process: a viewer's forwarder switches
/// (on a keyframe) whenever the source id of its packets changes.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1);

/// Bytes a forwarded packet costs on a viewer's link beyond its payload (RTP
/// header and extensions, SRTP tag, UDP and IPv4 headers): layer bitrates are
/// compared with bandwidth estimates that count whole packets.
const RTP_OVERHEAD: usize = 50;

#[derive(Debug, Default)]
pub struct PublisherSide {
    media: Vec<PublishedMedia>,
    codecs: Vec<(Pt, CodecSpec)>,
    streams: Vec<IncomingStream>,
    /// The publisher's capture clock, shared by its streams (lip sync).
    clock: PublisherClock,
}

/// One m-line the client sends on: a track, maybe in several simulcast layers.
#[derive(Debug)]
struct PublishedMedia {
    mid: Mid,
    kind: MediaKind,
    /// Unique in this process; a viewer's slot sticks to one track.
    track: u64,
    /// Its layers as every viewer's shard sees them.
    layers: Arc<TrackLayers>,
}

#[derive(Debug, Clone)]
struct IncomingStream {
    ssrc: Ssrc,
    source: u64,
    track: u64,
    /// Its layer: the index of its rid in the track's (0 without simulcast).
    layer: u8,
    kind: MediaKind,
    layers: Arc<TrackLayers>,
    meter: BitrateMeter,
    /// Its VP8 frames' bitrate per temporal layer (TID 0, 1, 2 and above), once
    /// it is seen to have temporal layering.
    temporal_meters: Option<Box<[BitrateMeter; 3]>>,
    /// When a keyframe was last asked of this stream.
    last_keyframe_request: Option<Instant>,
    /// RTP timestamp of the last picture that started a keyframe.
    last_keyframe_ts: Option<u32>,
    /// Its RTP time to capture time mapping, from its sender reports.
    clock: StreamClock,
}

impl PublisherSide {
    /// Records the m-lines the client sends on, and their negotiated codecs.
    pub fn learn_media<'a>(&mut self, rtc: &mut Rtc, mids: impl Iterator<Item = &'a str>) {
        for mid in mids {
            let Some(media) = negotiated(rtc, mid, &[Direction::RecvOnly, Direction::SendRecv])
            else {
                continue;
            };
            for (pt, spec) in media.codecs {
                if !self.codecs.iter().any(|(p, _)| *p == pt) {
                    self.codecs.push((pt, spec));
                }
            }
            let ranked: Vec<(String, u8)> = media
                .rids_rx
                .iter()
                .map(|rid| (rid.clone(), simulcast::rank(Some(rid), &media.rids_rx)))
                .collect();
            self.media.push(PublishedMedia {
                mid: media.mid,
                kind: media.kind,
                track: NEXT_SOURCE.fetch_add(1, Ordering::Relaxed),
                layers: Arc::new(TrackLayers::new(&ranked)),
            });
        }
    }

    /// How many tracks (m-lines) of `kind` it publishes.
    pub fn track_count(&self, kind: MediaKind) -> usize {
        self.media.iter().filter(|m| m.kind == kind).count()
    }

    pub fn has_media(&self) -> bool {
        !self.media.is_empty() && !self.codecs.is_empty()
    }

    /// Turns one incoming RTP packet into the packet every subscriber shares.
    pub fn on_rtp(
        &mut self,
        rtc: &mut Rtc,
        room: &RoomId,
        publisher: crate::ids::PeerKey,
        participant: &Arc<str>,
        packet: RtpPacket,
    ) -> Option<MediaPacket> {
        if packet.payload.is_empty() {
            return None; // padding
        }
        let ssrc = packet.header.ssrc;
        let index = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                self.learn_stream(rtc, ssrc)?;
                self.streams.len() - 1
            }
        };
        let pt = packet.header.payload_type;
        let codec = self
            .codecs
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, spec)| *spec)?;
        let stream = &mut self.streams[index];
        if let Some(report) = &packet.last_sender_info {
            // The extended RTP time, cut back to the 32 bits on the wire.
            stream.clock.observe(
                &mut self.clock,
                report.ntp_time,
                report.rtp_time.numer() as u32,
                packet.header.timestamp,
                codec.clock_rate.get(),
                packet.timestamp,
            );
        }
        let wallclock = stream.clock.wallclock(
            &mut self.clock,
            packet.header.timestamp,
            codec.clock_rate.get(),
            packet.timestamp,
        );
        let vp8 = match codec.codec {
            Codec::Vp8 => Vp8Descriptor::parse(&packet.payload).ok(),
            _ => None,
        };
        let starts = match &vp8 {
            Some(d) => d.starts_keyframe(&packet.payload),
            None => {
                stream.kind == MediaKind::Video && starts_keyframe(codec.codec, &packet.payload)
            }
        };
        // Only the first keyframe packet of a picture starts it: H264 sends SPS,
        // PPS, then IDR fragments, and each would otherwise look like a start.
        let timestamp = packet.header.timestamp;
        let keyframe = starts && stream.last_keyframe_ts != Some(timestamp);
        if keyframe {
            stream.last_keyframe_ts = Some(timestamp);
        }
        // What the layer carries, for every viewer's choice of layer.
        let arrival = packet.timestamp;
        stream
            .meter
            .add(packet.payload.len() + RTP_OVERHEAD, arrival);
        let resolution = if starts {
            keyframe_resolution(codec.codec, &packet.payload)
        } else {
            None
        };
        stream
            .layers
            .record(stream.layer, arrival, stream.meter.bps(arrival), resolution);
        let temporal = vp8.and_then(|_| crate::router::vp8::temporal(&packet.payload));
        if let Some(t) = temporal {
            let meters = stream
                .temporal_meters
                .get_or_insert_with(|| Box::new([0; 3].map(|_| BitrateMeter::new(arrival))));
            meters[usize::from(t.id.min(2))].add(packet.payload.len() + RTP_OVERHEAD, arrival);
            let mut up_to = [0u64; 3];
            let mut sum = 0;
            for (tid, meter) in meters.iter_mut().enumerate() {
                sum += meter.bps(arrival);
                up_to[tid] = sum;
            }
            stream.layers.record_temporal(stream.layer, up_to);
        }
        tracing::trace!(seq = *packet.seq_no, kind = ?stream.kind, keyframe, len = packet.payload.len(), "rtp in");
        Some(MediaPacket {
            room: room.clone(),
            publisher,
            participant: Arc::clone(participant),
            kind: stream.kind,
            source: stream.source,
            track: stream.track,
            layer: stream.layer,
            layers: Arc::clone(&stream.layers),
            codec,
            seq: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            keyframe,
            vp8,
            temporal,
            arrival: packet.timestamp,
            wallclock,
            extensions: ForwardedExtensions::from_received(&packet.header.ext_vals),
            payload: Arc::clone(&packet.payload),
        })
    }

    /// A new SSRC: a new stream of one of the m-lines. A layer's new stream
    /// replaces the old one (the client restarted its encoder).
    fn learn_stream(&mut self, rtc: &mut Rtc, ssrc: Ssrc) -> Option<()> {
        let (mid, rid) = {
            let mut api = rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let media = self.media.iter().find(|m| m.mid == mid)?;
        let rid = rid.map(|r| r.to_string());
        let layer = match &rid {
            Some(rid) => media.layers.index_of(rid)?,
            None => 0,
        };
        let stream = IncomingStream {
            ssrc,
            source: NEXT_SOURCE.fetch_add(1, Ordering::Relaxed),
            track: media.track,
            layer,
            kind: media.kind,
            layers: Arc::clone(&media.layers),
            meter: BitrateMeter::new(Instant::now()),
            temporal_meters: None,
            last_keyframe_request: None,
            last_keyframe_ts: None,
            clock: StreamClock::default(),
        };
        tracing::debug!(%ssrc, %mid, ?rid, layer, source = stream.source, "new incoming stream");
        self.streams
            .retain(|s| !(s.track == stream.track && s.layer == stream.layer));
        self.streams.push(stream);
        Some(())
    }

    /// Sends a PLI on the video streams of `layer` (every layer with `None`),
    /// each at most once per `interval`. Returns whether a request went out.
    pub fn request_keyframe(
        &mut self,
        rtc: &mut Rtc,
        layer: Option<(u64, u8)>,
        now: Instant,
        interval: Duration,
        kind: KeyframeRequestKind,
    ) -> bool {
        let mut sent = false;
        let mut api = rtc.direct_api();
        for stream in self.streams.iter_mut().filter(|s| {
            s.kind == MediaKind::Video
                && layer.is_none_or(|(track, layer)| s.track == track && s.layer == layer)
        }) {
            if stream
                .last_keyframe_request
                .is_some_and(|at| now.saturating_duration_since(at) < interval)
            {
                continue;
            }
            if let Some(rx) = api.stream_rx(&stream.ssrc) {
                rx.request_keyframe(kind);
                stream.last_keyframe_request = Some(now);
                sent = true;
            }
        }
        sent
    }
}
