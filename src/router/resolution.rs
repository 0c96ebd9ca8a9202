//! The picture size a keyframe carries, read from the bitstream headers only (we
//! never decode media): how simulcast layers are ordered by what they carry rather
//! than by their names.
//!
//! - VP8 (RFC 6386 §9.1): a keyframe's frame header holds the start code and two
//!   14-bit dimensions.
//! - H264 (RFC 6184): the SPS, alone or in a STAP-A, read
//!   by the `h264-reader` crate (exp-Golomb fields, emulation prevention, cropping).
//! - VP9 (draft-ietf-payload-vp9): the scalability structure in the payload
//!   descriptor of a keyframe lists each spatial layer's size.
//!
//! - AV1 (the AV1 RTP payload format): the sequence header OBU a keyframe's first
//!   packet carries states the largest frame size.

use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::rbsp::{BitReader, ByteReader};
use str0m::format::Codec;

use super::keyframe::aggregated_units;

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl Resolution {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The size stated by `payload`, when it is the first packet of a keyframe (or for
/// H264, any packet carrying an SPS).
pub fn keyframe_resolution(codec: Codec, payload: &[u8]) -> Option<Resolution> {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::H264 => h264(payload),
        Codec::Vp9 => vp9(payload),
        Codec::Av1 => av1(payload),
        _ => None,
    }
}

/// VP8: past the payload descriptor, a keyframe's frame tag (3 bytes, bit 0 clear),
/// the start code 9d 01 2a, then width and height (14 bits each, 2 bits of scale).
fn vp8(payload: &[u8]) -> Option<Resolution> {
    let offset = vp8_descriptor_len(payload)?;
    let frame = payload.get(offset..offset + 10)?;
    if frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    nonzero(width, height)
}

/// RFC 7741 §4.2: the descriptor's length, for a packet that starts a partition 0.
fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let starts_partition = first & 0x10 != 0 && first & 0x07 == 0;
    if !starts_partition {
        return None;
    }
    let mut len = 1;
    if first & 0x80 != 0 {
        let extension = *payload.get(1)?;
        len += 1;
        if extension & 0x80 != 0 {
            len += if *payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
        }
        if extension & 0x40 != 0 {
            len += 1;
        }
        if extension & 0x30 != 0 {
            len += 1;
        }
    }
    Some(len)
}

/// H264: the first SPS in the packet, alone or in a STAP-A. (An SPS is a few
/// dozen bytes: real packetizers never fragment it.)
fn h264(payload: &[u8]) -> Option<Resolution> {
    const SPS: u8 = 7;
    let header = *payload.first()?;
    let sps = match header & 0x1f {
        24 => aggregated_units(payload.get(1..)?, 2)
            .find(|unit| unit.first().is_some_and(|b| b & 0x1f == SPS))?,
        SPS => payload,
        _ => return None,
    };
    let reader = BitReader::new(ByteReader::skipping_h264_header(sps));
    let (width, height) = SeqParameterSet::from_bits(reader)
        .ok()?
        .pixel_dimensions()
        .ok()?;
    nonzero(width, height)
}

/// VP9: I|P|L|F|B|E|V|Z, the picture ID, layer indices, TL0PICIDX or reference
/// indices, then with V the scalability structure: N_S|Y|G, and with Y a 16-bit
/// width and height per spatial layer. The largest layer's size is the stream's.
fn vp9(payload: &[u8]) -> Option<Resolution> {
    let first = *payload.first()?;
    let has_picture_id = first & 0x80 != 0;
    let inter_predicted = first & 0x40 != 0;
    let has_layer_indices = first & 0x20 != 0;
    let flexible = first & 0x10 != 0;
    let has_structure = first & 0x02 != 0;
    if inter_predicted || !has_structure {
        return None;
    }
    let mut offset = 1;
    if has_picture_id {
        offset += if *payload.get(offset)? & 0x80 != 0 {
            2
        } else {
            1
        };
    }
    if has_layer_indices {
        offset += 1;
        if !flexible {
            offset += 1; // TL0PICIDX
        }
    }
    if flexible && inter_predicted {
        // Reference indices follow only for inter-predicted pictures: not here.
        return None;
    }
    let structure = *payload.get(offset)?;
    offset += 1;
    let spatial_layers = usize::from(structure >> 5) + 1;
    let has_sizes = structure & 0x10 != 0;
    if !has_sizes {
        return None;
    }
    let sizes = payload.get(offset..offset + 4 * spatial_layers)?;
    let (width, height) = sizes
        .chunks_exact(4)
        .map(|s| {
            (
                u32::from(u16::from_be_bytes([s[0], s[1]])),
                u32::from(u16::from_be_bytes([s[2], s[3]])),
            )
        })
        .max_by_key(|(w, h)| u64::from(*w) * u64::from(*h))?;
    nonzero(width, height)
}

/// AV1 (the AV1 RTP payload format, AV1 bitstream §5.5): the aggregation header
/// (Z|Y|W|N), then OBU elements, each with a LEB128 length unless W says how many
/// there are and it is the last; the sequence header OBU (type 1) states the
/// largest frame size.
fn av1(payload: &[u8]) -> Option<Resolution> {
    let aggregation = *payload.first()?;
    let continues_previous = aggregation & 0x80 != 0;
    if continues_previous {
        return None; // the first element is the tail of an OBU from the last packet
    }
    let counted = usize::from((aggregation >> 4) & 0x03);
    let mut rest = payload.get(1..)?;
    let mut index = 0;
    while !rest.is_empty() {
        index += 1;
        let element = if counted != 0 && index == counted {
            std::mem::take(&mut rest)
        } else {
            let (len, used) = leb128(rest)?;
            let end = used.checked_add(usize::try_from(len).ok()?)?;
            let element = rest.get(used..end)?;
            rest = &rest[end..];
            element
        };
        if let Some(size) = av1_sequence_header(element) {
            return Some(size);
        }
    }
    None
}

/// An OBU as the RTP payload carries it (without `obu_size` normally; with one, it
/// is read past): the largest frame size if it is a sequence header.
fn av1_sequence_header(obu: &[u8]) -> Option<Resolution> {
    const SEQUENCE_HEADER: u8 = 1;
    let header = *obu.first()?;
    if (header >> 3) & 0x0f != SEQUENCE_HEADER {
        return None;
    }
    let has_extension = header & 0x04 != 0;
    let has_size = header & 0x02 != 0;
    let mut at = 1 + usize::from(has_extension);
    if has_size {
        at += leb128(obu.get(at..)?)?.1;
    }
    let mut bits = Bits::new(obu.get(at..)?);
    let _profile = bits.read(3)?;
    let _still_picture = bits.read(1)?;
    let reduced = bits.read(1)? == 1;
    if reduced {
        bits.read(5)?; // seq_level_idx[0]
    } else {
        let timing_info = bits.read(1)? == 1;
        let mut decoder_model_info = false;
        let mut buffer_delay_length = 0;
        if timing_info {
            bits.read(32)?; // num_units_in_display_tick
            bits.read(32)?; // time_scale
            if bits.read(1)? == 1 {
                bits.uvlc()?; // num_ticks_per_picture_minus_1
            }
            decoder_model_info = bits.read(1)? == 1;
            if decoder_model_info {
                buffer_delay_length = bits.read(5)? as u32 + 1;
                bits.read(32)?; // num_units_in_decoding_tick
                bits.read(5)?; // buffer_removal_time_length_minus_1
                bits.read(5)?; // frame_presentation_time_length_minus_1
            }
        }
        let initial_display_delay = bits.read(1)? == 1;
        let operating_points = bits.read(5)? + 1;
        for _ in 0..operating_points {
            bits.read(12)?; // operating_point_idc
            let level = bits.read(5)?;
            if level > 7 {
                bits.read(1)?; // seq_tier
            }
            if decoder_model_info && bits.read(1)? == 1 {
                bits.read(buffer_delay_length)?; // decoder_buffer_delay
                bits.read(buffer_delay_length)?; // encoder_buffer_delay
                bits.read(1)?; // low_delay_mode_flag
            }
            if initial_display_delay && bits.read(1)? == 1 {
                bits.read(4)?; // initial_display_delay_minus_1
            }
        }
    }
    let width_bits = bits.read(4)? as u32 + 1;
    let height_bits = bits.read(4)? as u32 + 1;
    let width = bits.read(width_bits)?.checked_add(1)?;
    let height = bits.read(height_bits)?.checked_add(1)?;
    nonzero(u32::try_from(width).ok()?, u32::try_from(height).ok()?)
}

/// An unsigned LEB128 value (at most 8 bytes) and the bytes it took.
fn leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Big-endian bits, as the AV1 bitstream is written.
struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Bits { bytes, at: 0 }
    }

    /// `n` bits (at most 32) as a number.
    fn read(&mut self, n: u32) -> Option<u64> {
        if n > 32 {
            return None;
        }
        let mut value = 0u64;
        for _ in 0..n {
            let byte = *self.bytes.get(self.at / 8)?;
            let bit = (byte >> (7 - self.at % 8)) & 1;
            value = (value << 1) | u64::from(bit);
            self.at += 1;
        }
        Some(value)
    }

    /// AV1's `uvlc()`: leading zeros, then that many bits.
    fn uvlc(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.read(1)? == 0 {
            zeros += 1;
            if zeros >= 32 {
                return None;
            }
        }
        Some(self.read(zeros)? + (1u64 << zeros) - 1)
    }
}

fn nonzero(width: u32, height: u32) -> Option<Resolution> {
    (width > 0 && height > 0).then_some(Resolution { width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe's first bytes: descriptor, frame tag, start code, size.
    pub fn vp8_keyframe(descriptor: &[u8], width: u16, height: u16) -> Vec<u8> {
        let mut p = descriptor.to_vec();
        p.extend_from_slice(&[0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&width.to_le_bytes());
        p.extend_from_slice(&height.to_le_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn vp8_keyframes_state_their_size_whatever_the_descriptor() {
        let size = |p: &[u8]| keyframe_resolution(Codec::Vp8, p);
        let expected = Some(Resolution {
            width: 1280,
            height: 720,
        });
        assert_eq!(size(&vp8_keyframe(&[0x10], 1280, 720)), expected);
        // X, I with a 15-bit picture ID, L, T/K.
        assert_eq!(
            size(&vp8_keyframe(
                &[0x90, 0xf0, 0x81, 0x23, 0x05, 0x40],
                1280,
                720
            )),
            expected
        );
        // Scale bits are not part of the size.
        assert_eq!(
            size(&vp8_keyframe(&[0x10], 1280 | 0x4000, 720 | 0x8000)),
            expected
        );
        // An inter frame, a continuation packet, a truncated header: nothing.
        let mut inter = vp8_keyframe(&[0x10], 1280, 720);
        inter[1] |= 0x01;
        assert_eq!(size(&inter), None);
        assert_eq!(size(&vp8_keyframe(&[0x00], 1280, 720)), None);
        assert_eq!(size(&vp8_keyframe(&[0x10], 1280, 720)[..8]), None);
        assert_eq!(size(&[]), None);
    }

    /// x264's SPS for 640x360 constrained baseline (368 lines of macroblocks,
    /// cropped; an emulation-prevention byte inside), from Debian's GStreamer:
    /// `videotestsrc ! video/x-raw,width=640,height=360 ! x264enc`.
    const SPS_640X360: [u8; 28] = [
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x16, 0xa0, 0xc0, 0xc0, 0xd4,
        0xa0, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x07, 0x91, 0xe2, 0xc5, 0xc9,
    ];

    #[test]
    fn h264_sps_alone_or_aggregated_states_the_cropped_size() {
        let expected = Some(Resolution {
            width: 640,
            height: 360,
        });
        assert_eq!(keyframe_resolution(Codec::H264, &SPS_640X360), expected);
        let mut stap = vec![0x18, 0x00, SPS_640X360.len() as u8];
        stap.extend_from_slice(&SPS_640X360);
        stap.extend_from_slice(&[0x00, 0x04, 0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(keyframe_resolution(Codec::H264, &stap), expected);
        // An IDR slice alone: no size; a broken SPS: none either.
        assert_eq!(keyframe_resolution(Codec::H264, &[0x65, 0x88, 0x84]), None);
        assert_eq!(keyframe_resolution(Codec::H264, &SPS_640X360[..4]), None);
        assert_eq!(
            keyframe_resolution(Codec::H264, &[0x18, 0x00, 0xff, 0x67]),
            None
        );
    }

    #[test]
    fn vp9_scalability_structure_states_the_largest_layer() {
        // I (7-bit picture ID), B, E, V; N_S = 1 (two layers), Y; two sizes.
        let payload = [
            0x8e, 0x05, 0x30, 0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68, 0xaa,
        ];
        assert_eq!(
            keyframe_resolution(Codec::Vp9, &payload),
            Some(Resolution {
                width: 640,
                height: 360
            })
        );
        assert_eq!(keyframe_resolution(Codec::Vp9, &payload[..7]), None);
    }

    /// The sequence header aom's encoder wrote for 320x180 (Debian's GStreamer
    /// `videotestsrc ! video/x-raw,width=320,height=180 ! av1enc`), without its
    /// size field, as the RTP payload format carries OBUs.
    const AV1_SEQUENCE_HEADER_320X180: [u8; 12] = [
        0x08, 0x20, 0x00, 0x00, 0x04, 0x3c, 0xfe, 0xcf, 0x81, 0xb5, 0xf2, 0x04,
    ];

    #[test]
    fn av1_sequence_header_states_the_size_in_any_aggregation() {
        let expected = Some(Resolution {
            width: 320,
            height: 180,
        });
        // One OBU element, W = 1 (the last element has no length), N = 1.
        let mut single = vec![0x18];
        single.extend_from_slice(&AV1_SEQUENCE_HEADER_320X180);
        assert_eq!(keyframe_resolution(Codec::Av1, &single), expected);
        // W = 0: every element with a LEB128 length; a temporal delimiter first.
        let mut listed = vec![0x08, 0x01, 0x12];
        listed.push(AV1_SEQUENCE_HEADER_320X180.len() as u8);
        listed.extend_from_slice(&AV1_SEQUENCE_HEADER_320X180);
        assert_eq!(keyframe_resolution(Codec::Av1, &listed), expected);
        // W = 2: two elements, the first with a length.
        let mut two = vec![0x28, AV1_SEQUENCE_HEADER_320X180.len() as u8];
        two.extend_from_slice(&AV1_SEQUENCE_HEADER_320X180);
        two.extend_from_slice(&[0x32, 0x00]);
        assert_eq!(keyframe_resolution(Codec::Av1, &two), expected);
        // A continuation (Z = 1), a frame OBU alone, a truncated header: none.
        let mut continued = single.clone();
        continued[0] |= 0x80;
        assert_eq!(keyframe_resolution(Codec::Av1, &continued), None);
        assert_eq!(
            keyframe_resolution(Codec::Av1, &[0x18, 0x32, 0x10, 0x00]),
            None
        );
        assert_eq!(keyframe_resolution(Codec::Av1, &single[..6]), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut next = crate::router::test_random(0x2545_f491);
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
                let _ = keyframe_resolution(codec, &bytes);
            }
        }
    }
}
