//! Synthetic, self-describing media: what the test publisher sends and how a
//! receiver recognises it.
//!
//! Every payload ends with a 16-byte trailer that names the publisher (`tag`),
//! the frame (video) or packet counter (audio) and, for video, the packet's index
//! in its frame. The rest of the payload is a deterministic function of those
//! numbers, so a receiver can tell exactly which sent packet it got and check that
//! every byte arrived intact.
//!
//! Video payloads are real VP8 RTP payloads as far as an SFU can tell: a VP8
//! payload descriptor (RFC 7741) with S=1 and PID=0 on the first packet of a frame,
//! then on that first packet a VP8 frame tag whose P bit (bit 0) is 0 for a key
//! frame and 1 otherwise; key frames also carry the start code and dimensions.

use std::sync::Arc;
use std::time::Instant;

/// How a packet's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Opus,
    Vp8,
    /// RFC 6184 packetization mode 1, as OBS (libdatachannel) sends x264 output.
    H264,
}

/// Which kind of media a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

/// Trailer magic for video payloads.
pub const VIDEO_MAGIC: [u8; 4] = *b"SBV1";
/// Trailer magic for audio payloads.
pub const AUDIO_MAGIC: [u8; 4] = *b"SBA1";
/// Length of the identity trailer at the end of each payload.
pub const TRAILER_LEN: usize = 16;

/// Opus: 20 ms per packet at 48 kHz.
pub const AUDIO_TICKS_PER_PACKET: u32 = 960;
/// VP8 at 30 fps on a 90 kHz clock.
pub const VIDEO_TICKS_PER_FRAME: u32 = 3000;

/// What the trailer of a payload says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub kind: Kind,
    /// The publisher that made it.
    pub tag: u32,
    /// Frame number (video) or packet counter (audio).
    pub index: u32,
    /// Index of the packet in its frame (video; 0 for audio).
    pub packet: u8,
    /// Number of packets in the frame (video; 1 for audio).
    pub packets: u8,
    /// The frame is a key frame (video).
    pub keyframe: bool,
}

impl Identity {
    fn trailer(&self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[0..4].copy_from_slice(match self.kind {
            Kind::Audio => &AUDIO_MAGIC,
            Kind::Video => &VIDEO_MAGIC,
        });
        t[4..8].copy_from_slice(&self.tag.to_be_bytes());
        t[8..12].copy_from_slice(&self.index.to_be_bytes());
        t[12] = self.packet;
        t[13] = self.packets;
        t[14] = u8::from(self.keyframe);
        t[15] = 0xEE;
        t
    }

    fn seed(&self) -> u32 {
        self.tag
            .wrapping_mul(7)
            .wrapping_add(self.index.wrapping_mul(31))
            .wrapping_add(u32::from(self.packet).wrapping_mul(17))
    }
}

/// Reads the identity trailer of a payload (video or audio).
pub fn identity(payload: &[u8]) -> Option<Identity> {
    if payload.len() < TRAILER_LEN {
        return None;
    }
    let t = &payload[payload.len() - TRAILER_LEN..];
    let kind = if t[0..4] == VIDEO_MAGIC {
        Kind::Video
    } else if t[0..4] == AUDIO_MAGIC {
        Kind::Audio
    } else {
        return None;
    };
    if t[15] != 0xEE {
        return None;
    }
    Some(Identity {
        kind,
        tag: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        index: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        packet: t[12],
        packets: t[13],
        keyframe: t[14] == 1,
    })
}

fn filler(id: &Identity, len: usize, out: &mut Vec<u8>) {
    let seed = id.seed();
    out.extend((0..len).map(|i| (seed.wrapping_add((i as u32).wrapping_mul(13)) & 0xff) as u8));
}

/// The payload of Opus packet number `counter` of publisher `tag`.
pub fn audio_payload(tag: u32, counter: u32) -> Vec<u8> {
    let id = Identity {
        kind: Kind::Audio,
        tag,
        index: counter,
        packet: 0,
        packets: 1,
        keyframe: false,
    };
    // An Opus TOC byte (config 31, stereo, one frame) then filler.
    let mut p = vec![0xfc];
    filler(&id, 60, &mut p);
    p.extend_from_slice(&id.trailer());
    p
}

/// How a publisher packs its VP8 payload descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vp8Descriptor {
    /// One byte: `0x10` on the first packet of a frame, `0x00` after.
    Minimal,
    /// With a 15-bit picture id (as browsers send): `0x90 0x80 PID PID` / `0x80 0x80 ..`.
    PictureId,
    /// Three temporal layers as Chromium sends them (L1T3): picture id, TL0PICIDX
    /// and TID, the TIDs of frames 0, 1, 2, 3 being 0, 2, 1, 2 and repeating; the
    /// first frame of layers 1 and 2 after a base frame is marked layer-sync.
    /// Keyframes are base frames; TL0PICIDX counts base frames only when keyframes
    /// fall on base positions (a multiple of 4), which a test must arrange.
    Temporal,
}

/// A frame's temporal layer and layer-sync bit in the [`Vp8Descriptor::Temporal`]
/// pattern.
pub fn temporal_of_frame(frame: u32, keyframe: bool) -> (u8, bool) {
    if keyframe {
        return (0, false);
    }
    match frame % 4 {
        0 => (0, false),
        1 => (2, true),
        2 => (1, true),
        _ => (2, false),
    }
}

/// The TL0PICIDX of a frame in the [`Vp8Descriptor::Temporal`] pattern (base
/// frames counted; keyframes are base frames at their place in the pattern).
pub fn tl0_of_frame(frame: u32) -> u8 {
    (frame / 4) as u8
}

/// Number of RTP packets a frame is sent in.
pub fn packets_in_frame(frame: u32, keyframe: bool) -> u8 {
    if keyframe {
        3
    } else if frame % 3 == 0 {
        2
    } else {
        1
    }
}

/// The payloads of VP8 frame `frame` of publisher `tag`, one per RTP packet.
pub fn video_frame(
    tag: u32,
    frame: u32,
    keyframe: bool,
    descriptor: Vp8Descriptor,
    picture_id: u16,
) -> Vec<Vec<u8>> {
    let packets = packets_in_frame(frame, keyframe);
    (0..packets)
        .map(|packet| {
            let id = Identity {
                kind: Kind::Video,
                tag,
                index: frame,
                packet,
                packets,
                keyframe,
            };
            let start = packet == 0;
            let mut p = Vec::with_capacity(1000);
            match descriptor {
                Vp8Descriptor::Minimal => p.push(if start { 0x10 } else { 0x00 }),
                Vp8Descriptor::PictureId => {
                    let pid = picture_id & 0x7fff;
                    p.push(if start { 0x90 } else { 0x80 });
                    p.push(0x80);
                    p.push(0x80 | (pid >> 8) as u8);
                    p.push((pid & 0xff) as u8);
                }
                Vp8Descriptor::Temporal => {
                    let pid = picture_id & 0x7fff;
                    let (tid, sync) = temporal_of_frame(frame, keyframe);
                    p.push(if start { 0x90 } else { 0x80 });
                    p.push(0xe0); // I L T
                    p.push(0x80 | (pid >> 8) as u8);
                    p.push((pid & 0xff) as u8);
                    p.push(tl0_of_frame(frame));
                    p.push((tid << 6) | if sync { 0x20 } else { 0 });
                }
            }
            if start {
                switchboard::load::payload::push_vp8_frame_tag(&mut p, keyframe);
            }
            let body = if keyframe { 900 } else { 600 };
            filler(&id, body, &mut p);
            p.extend_from_slice(&id.trailer());
            p
        })
        .collect()
}

/// A parsed VP8 payload descriptor (RFC 7741 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Header {
    /// S bit: first packet of a VP8 partition.
    pub start: bool,
    /// Partition index.
    pub pid: u8,
    /// N bit.
    pub non_reference: bool,
    /// Picture id and whether it is 15 bits wide.
    pub picture_id: Option<(u16, bool)>,
    pub tl0picidx: Option<u8>,
    /// Length of the descriptor in bytes.
    pub len: usize,
    /// For the first packet of a frame (S=1, PID=0): P bit of the VP8 frame tag is 0.
    pub keyframe: Option<bool>,
}

/// Parses the VP8 payload descriptor at the start of an RTP payload.
pub fn parse_vp8(p: &[u8]) -> Option<Vp8Header> {
    let b0 = *p.first()?;
    let x = b0 & 0x80 != 0;
    let mut h = Vp8Header {
        start: b0 & 0x10 != 0,
        pid: b0 & 0x07,
        non_reference: b0 & 0x20 != 0,
        picture_id: None,
        tl0picidx: None,
        len: 1,
        keyframe: None,
    };
    if x {
        let b1 = *p.get(1)?;
        h.len = 2;
        if b1 & 0x80 != 0 {
            let m = *p.get(h.len)?;
            if m & 0x80 != 0 {
                let lo = *p.get(h.len + 1)?;
                h.picture_id = Some(((u16::from(m & 0x7f) << 8) | u16::from(lo), true));
                h.len += 2;
            } else {
                h.picture_id = Some((u16::from(m & 0x7f), false));
                h.len += 1;
            }
        }
        if b1 & 0x40 != 0 {
            h.tl0picidx = Some(*p.get(h.len)?);
            h.len += 1;
        }
        if b1 & 0x30 != 0 {
            p.get(h.len)?;
            h.len += 1;
        }
    }
    if h.start && h.pid == 0 {
        let tag = *p.get(h.len)?;
        h.keyframe = Some(tag & 0x01 == 0);
    }
    Some(h)
}

/// True when the payload is the first packet of a VP8 key frame.
pub fn is_vp8_keyframe_start(payload: &[u8]) -> bool {
    parse_vp8(payload).and_then(|h| h.keyframe).unwrap_or(false)
}

/// The bytes of a video payload after its VP8 payload descriptor, or the whole
/// payload for audio: what an SFU must forward untouched.
pub fn body(kind: Kind, payload: &[u8]) -> &[u8] {
    match kind {
        Kind::Audio => payload,
        Kind::Video => match parse_vp8(payload) {
            Some(h) if h.len <= payload.len() => &payload[h.len..],
            _ => payload,
        },
    }
}

/// One RTP packet the publisher handed to str0m.
#[derive(Debug, Clone)]
pub struct SentPacket {
    pub kind: Kind,
    pub format: Format,
    /// The simulcast layer (rid) it was sent on, if any.
    pub rid: Option<String>,
    pub id: Identity,
    /// Extended sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub pt: u8,
    pub payload: Arc<[u8]>,
    pub at: Instant,
    /// When it was captured, on the sender's schedule (its sender reports say so):
    /// the frame's or audio packet's due time, minus any `video_capture_lag`.
    pub captured: Instant,
}

/// One RTP packet a peer received (`Event::RtpPacket`).
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// Kind of the m-line it arrived on, if known.
    pub kind: Option<Kind>,
    pub mid: Option<String>,
    pub ssrc: u32,
    /// Sequence number as on the wire.
    pub seq: u16,
    /// Extended sequence number as str0m computed it.
    pub ext_seq: u64,
    pub timestamp: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    pub at: Instant,
    /// The header extension values str0m parsed.
    pub extensions: str0m::rtp::ExtensionValues,
}

impl ReceivedPacket {
    /// The identity trailer of the payload.
    pub fn identity(&self) -> Option<Identity> {
        identity(&self.payload)
    }
}

// ---------------------------------------------------------------------------
// H264 as OBS sends it (x264 output packetized by libdatachannel).
//
// Each access unit is a list of NAL units; a NAL unit of up to
// `H264_MAX_PACKET` bytes goes in one packet (single NAL unit packet), a larger
// one as FU-A fragments (never STAP-A). A keyframe is SPS, PPS, (SEI,) IDR; other
// frames are non-IDR slices, sometimes with an SEI before or filler data after.
// Every packet ends with the identity trailer (inside the NAL data), so the
// payload stays self-describing; the bytes in front of it are a function of the
// identity, as for VP8.

/// Largest RTP payload OBS writes (its `MAX_VIDEO_FRAGMENT_SIZE`).
pub const H264_MAX_PACKET: usize = 1200;

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_FILLER: u8 = 12;
pub const NAL_STAP_A: u8 = 24;
pub const NAL_FU_A: u8 = 28;

/// The tag written into the payloads of simulcast layer `layer` of publisher `tag`:
/// each layer is a source of its own, told apart by its payloads.
pub fn layer_tag(tag: u32, layer: u8) -> u32 {
    tag | (u32::from(layer) << 24)
}

/// The layer a tag made by [`layer_tag`] names.
pub fn tag_layer(tag: u32) -> u8 {
    (tag >> 24) as u8
}

/// The NAL units (header byte, size of the NAL unit) of frame `frame` in `layer`
/// (0 is the largest).
fn h264_nal_units(frame: u32, keyframe: bool, layer: u8) -> Vec<(u8, usize)> {
    let scale = |big: usize| match layer {
        0 => big,
        1 => big / 3,
        _ => big / 8,
    };
    let mut units = Vec::new();
    if keyframe {
        // nal_ref_idc 3 for parameter sets and IDR, as x264 writes them.
        units.push((0x60 | NAL_SPS, 26));
        units.push((0x60 | NAL_PPS, 6));
        units.push((NAL_SEI, 180));
        units.push((0x60 | NAL_IDR, scale(4200).max(300)));
    } else {
        if frame % 5 == 0 {
            units.push((NAL_SEI, 40));
        }
        let size = if frame % 2 == 0 { 1900 } else { 900 };
        units.push((0x40 | NAL_SLICE, scale(size).max(120)));
    }
    if frame % 4 == 1 {
        units.push((NAL_FILLER, 150));
    }
    units
}

/// The RTP payloads of H264 access unit `frame` of publisher `tag` (already a
/// [`layer_tag`] for simulcast), one per RTP packet; `layer` only decides the sizes.
pub fn h264_access_unit(tag: u32, frame: u32, keyframe: bool, layer: u8) -> Vec<Vec<u8>> {
    // First the shape of each packet: (prefix bytes, filler length).
    let mut shapes: Vec<(Vec<u8>, usize)> = Vec::new();
    for (header, size) in h264_nal_units(frame, keyframe, layer) {
        let nal_type = header & 0x1f;
        if size <= H264_MAX_PACKET {
            let mut prefix = vec![header];
            match nal_type {
                // profile_idc 100 (High) although the SDP says 42e01f, as x264 does.
                NAL_SPS => prefix.extend_from_slice(&[0x64, 0x00, 0x1f, 0xac, 0xd9]),
                NAL_PPS => prefix.extend_from_slice(&[0xeb, 0xe3, 0xcb]),
                _ => {}
            }
            let fill = size.saturating_sub(prefix.len() + TRAILER_LEN);
            shapes.push((prefix, fill));
        } else {
            // FU-A: indicator (F, NRI of the NAL, type 28), header (S, E, type).
            let per_packet = H264_MAX_PACKET - 2;
            let data = size - 1;
            let count = data.div_ceil(per_packet - TRAILER_LEN);
            let mut left = data;
            for i in 0..count {
                let chunk = left.min(per_packet - TRAILER_LEN);
                left -= chunk;
                let mut fu = nal_type;
                if i == 0 {
                    fu |= 0x80;
                }
                if i + 1 == count {
                    fu |= 0x40;
                }
                shapes.push((vec![(header & 0xe0) | NAL_FU_A, fu], chunk));
            }
        }
    }
    let packets = shapes.len() as u8;
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (prefix, fill))| {
            let id = Identity {
                kind: Kind::Video,
                tag,
                index: frame,
                packet: i as u8,
                packets,
                keyframe,
            };
            let mut p = prefix;
            filler(&id, fill, &mut p);
            p.extend_from_slice(&id.trailer());
            debug_assert!(p.len() <= H264_MAX_PACKET);
            p
        })
        .collect()
}

/// The NAL unit type a packet starts (for FU-A, of the fragmented unit, with
/// whether this is its first fragment).
pub fn h264_nal_type(payload: &[u8]) -> Option<(u8, bool)> {
    let first = *payload.first()?;
    match first & 0x1f {
        NAL_FU_A => {
            let fu = *payload.get(1)?;
            Some((fu & 0x1f, fu & 0x80 != 0))
        }
        t => Some((t, true)),
    }
}

/// True when the payload is the first packet of an H264 access unit that a
/// decoder can start on: it carries the SPS (which OBS sends before each IDR).
pub fn is_h264_keyframe_start(payload: &[u8]) -> bool {
    h264_nal_type(payload) == Some((NAL_SPS, true))
}

/// True when the payload begins a key frame in `format`.
pub fn starts_keyframe(format: Format, payload: &[u8]) -> bool {
    match format {
        Format::Vp8 => is_vp8_keyframe_start(payload),
        Format::H264 => is_h264_keyframe_start(payload),
        Format::Opus => false,
    }
}
