//! The synthetic media `switchboard load` publishes: VP8 (RFC 7741) or H264
//! (RFC 6184) RTP payloads that look real to a server (descriptors, keyframe
//! markers, a keyframe's picture size) and Opus-sized audio, each ending in a
//! trailer that says which frame and packet it is and when it was sent, so a
//! viewer measures latency and loss without decoding anything. Pure.

/// Marks a trailer: `SBLD`.
const MAGIC: [u8; 4] = *b"SBLD";
/// Bytes of the trailer at the end of every payload.
const TRAILER_LEN: usize = 22;

/// What the trailer of one packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Frame number (video) or packet number (audio), from 0.
    pub frame: u32,
    /// This packet's place in its frame, and the frame's packet count.
    pub index: u16,
    pub count: u16,
    /// When the publisher wrote it: nanoseconds on the load tool's own clock.
    pub sent_nanos: u64,
    pub keyframe: bool,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[0..4].copy_from_slice(&MAGIC);
        t[4..8].copy_from_slice(&self.frame.to_be_bytes());
        t[8..10].copy_from_slice(&self.index.to_be_bytes());
        t[10..12].copy_from_slice(&self.count.to_be_bytes());
        t[12..20].copy_from_slice(&self.sent_nanos.to_be_bytes());
        t[20] = u8::from(self.keyframe);
        t
    }

    /// The trailer at the end of `payload`, if it has one.
    pub fn decode(payload: &[u8]) -> Option<Trailer> {
        let t = payload.get(payload.len().checked_sub(TRAILER_LEN)?..)?;
        if t[0..4] != MAGIC {
            return None;
        }
        let u16_at = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
        let mut frame = [0u8; 4];
        frame.copy_from_slice(&t[4..8]);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&t[12..20]);
        Some(Trailer {
            frame: u32::from_be_bytes(frame),
            index: u16_at(8),
            count: u16_at(10),
            sent_nanos: u64::from_be_bytes(sent),
            keyframe: t[20] == 1,
        })
    }
}

/// The video codecs the load tool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VideoCodec {
    Vp8,
    H264,
}

impl VideoCodec {
    pub fn codec(self) -> str0m::format::Codec {
        match self {
            VideoCodec::Vp8 => str0m::format::Codec::Vp8,
            VideoCodec::H264 => str0m::format::Codec::H264,
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "vp8",
            VideoCodec::H264 => "h264",
        }
    }
}

/// Largest RTP payload written (a typical MTU's worth, as encoders packetize).
const MAX_PAYLOAD: usize = 1100;

/// The RTP payloads of one video frame of `bytes` bytes in all.
pub fn video_frame(
    codec: VideoCodec,
    frame: u32,
    picture_id: u16,
    keyframe: bool,
    bytes: usize,
    sent_nanos: u64,
) -> Vec<Vec<u8>> {
    let room = MAX_PAYLOAD - TRAILER_LEN - 16;
    let count = bytes.div_ceil(room).clamp(1, usize::from(u16::MAX)) as u16;
    (0..count)
        .map(|index| {
            let trailer = Trailer {
                frame,
                index,
                count,
                sent_nanos,
                keyframe,
            };
            let first = index == 0;
            let last = index + 1 == count;
            let mut p = Vec::with_capacity(MAX_PAYLOAD);
            match codec {
                VideoCodec::Vp8 => {
                    // X and S (S on a frame's first packet), I: a 15-bit picture ID.
                    p.push(if first { 0x90 } else { 0x80 });
                    p.push(0x80);
                    p.push(0x80 | (picture_id >> 8) as u8);
                    p.push((picture_id & 0xff) as u8);
                    if first {
                        push_vp8_frame_tag(&mut p, keyframe);
                    }
                }
                VideoCodec::H264 => {
                    // FU-A (type 28) fragments of one slice: IDR (5) or not (1).
                    let nal_type = if keyframe { 5 } else { 1 };
                    p.push(0x60 | 28);
                    p.push(
                        (if first { 0x80 } else { 0 }) | (if last { 0x40 } else { 0 }) | nal_type,
                    );
                }
            }
            let fill = (bytes / usize::from(count)).min(room).max(p.len() + 1);
            p.resize(fill, (frame & 0xff) as u8);
            p.extend_from_slice(&trailer.encode());
            p
        })
        .collect()
}

/// The SPS and PPS an H264 keyframe starts with (Baseline 3.1, 1280x720), each
/// its own packet before the IDR's fragments.
pub fn h264_parameter_sets() -> [&'static [u8]; 2] {
    [
        &[
            0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x06, 0xd0, 0xa1, 0x35,
        ],
        &[0x68, 0xce, 0x06, 0xe2],
    ]
}

/// One Opus-sized audio payload (a TOC byte, then filler) with its trailer.
pub fn audio_packet(number: u32, sent_nanos: u64) -> Vec<u8> {
    let mut p = vec![0xfc];
    p.resize(80, 0x5a);
    p.extend_from_slice(
        &Trailer {
            frame: number,
            index: 0,
            count: 1,
            sent_nanos,
            keyframe: false,
        }
        .encode(),
    );
    p
}

/// The VP8 frame tag (RFC 6386 §9.1) that starts a frame's first partition: P
/// bit (0 on a keyframe), version 0, show_frame, first partition size 100; a
/// keyframe adds the start code and its size, 640x360.
pub fn push_vp8_frame_tag(p: &mut Vec<u8>, keyframe: bool) {
    let size: u32 = 100;
    p.push(u8::from(!keyframe) | 0x10 | (((size & 7) as u8) << 5));
    p.push(((size >> 3) & 0xff) as u8);
    p.push(((size >> 11) & 0xff) as u8);
    if keyframe {
        p.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&640u16.to_le_bytes());
        p.extend_from_slice(&360u16.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::keyframe::starts_keyframe;

    #[test]
    fn every_packet_of_a_frame_says_where_it_belongs_and_when_it_left() {
        let packets = video_frame(VideoCodec::Vp8, 7, 0x1234, true, 6000, 99);
        assert_eq!(packets.len(), 6);
        for (i, p) in packets.iter().enumerate() {
            assert!(p.len() <= MAX_PAYLOAD);
            let t = Trailer::decode(p).expect("trailer");
            assert_eq!((t.frame, t.index, t.count), (7, i as u16, 6));
            assert_eq!((t.sent_nanos, t.keyframe), (99, true));
        }
        assert_eq!(Trailer::decode(b"short"), None);
        assert_eq!(Trailer::decode(&[0u8; 64]), None);
    }

    #[test]
    fn the_server_sees_keyframes_where_they_are() {
        let vp8 = str0m::rtp::Vp8Descriptor::parse;
        let key = video_frame(VideoCodec::Vp8, 0, 1, true, 2000, 0);
        let delta = video_frame(VideoCodec::Vp8, 1, 2, false, 2000, 0);
        let starts = |p: &Vec<u8>| vp8(p).is_ok_and(|d| d.starts_keyframe(p));
        assert!(starts(&key[0]));
        assert!(!starts(&key[1]) && !starts(&delta[0]));
        let idr = video_frame(VideoCodec::H264, 0, 0, true, 2000, 0);
        let slice = video_frame(VideoCodec::H264, 1, 0, false, 2000, 0);
        assert!(starts_keyframe(str0m::format::Codec::H264, &idr[0]));
        assert!(!starts_keyframe(str0m::format::Codec::H264, &slice[0]));
        assert!(Trailer::decode(&audio_packet(3, 5)).is_some_and(|t| t.frame == 3));
    }
}
