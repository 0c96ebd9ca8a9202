//! Is this RTP payload the first packet of a keyframe? One function per codec,
//! reading only the payload descriptor / NAL headers (we never decode media).
//!
//! A forwarder starts a new viewer, or switches source, only on a packet for which
//! [`starts_keyframe`] is true, so decoders always begin on a picture they can decode.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// True when `payload` begins a keyframe (an intra picture the decoder can start on).
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_starts_keyframe(payload),
        Codec::Vp9 => vp9_starts_keyframe(payload),
        Codec::H264 => h264_starts_keyframe(payload),
        Codec::H265 => h265_starts_keyframe(payload),
        Codec::Av1 => av1_starts_keyframe(payload),
        _ => false,
    }
}

/// RFC 7741, read by str0m's own descriptor parser.
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    Vp8Descriptor::parse(payload).is_ok_and(|d| d.starts_keyframe(payload))
}

/// draft-ietf-payload-vp9: I|P|L|F|B|E|V|Z. A keyframe's first packet has B=1 and
/// P=0 (not inter-predicted), on spatial layer 0 when layer indices are present.
fn vp9_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let has_picture_id = first & 0x80 != 0;
    let inter_predicted = first & 0x40 != 0;
    let has_layer_indices = first & 0x20 != 0;
    let flexible = first & 0x10 != 0;
    let begins_frame = first & 0x08 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    if !has_layer_indices {
        return true;
    }
    let mut offset = 1;
    if has_picture_id {
        let Some(&pid) = payload.get(offset) else {
            return false;
        };
        offset += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    let Some(&layers) = payload.get(offset) else {
        return false;
    };
    let spatial_id = (layers >> 1) & 0x07;
    // In non-flexible mode a TL0PICIDX byte follows; it does not matter here.
    let _ = flexible;
    spatial_id == 0
}

/// RFC 6184: an IDR slice (5) or an SPS (7), alone, inside a STAP-A (24), or at the
/// start of an FU-A (28).
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let is_key = |t: u8| t == IDR || t == SPS;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        24 => aggregated_units(&payload[1..], 2)
            .any(|unit| unit.first().is_some_and(|b| is_key(b & 0x1f))),
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

/// RFC 7798: an IRAP picture (types 16..=21) or a VPS/SPS (32, 33), alone, in an
/// aggregation packet (48) or at the start of a fragmentation unit (49).
fn h265_starts_keyframe(payload: &[u8]) -> bool {
    let is_key = |t: u8| (16..=21).contains(&t) || t == 32 || t == 33;
    let nal_type = |b: u8| (b >> 1) & 0x3f;
    let Some(&header) = payload.first() else {
        return false;
    };
    match nal_type(header) {
        48 => payload.get(2..).is_some_and(|rest| {
            aggregated_units(rest, 2).any(|unit| unit.first().is_some_and(|b| is_key(nal_type(*b))))
        }),
        49 => payload
            .get(2)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x3f)),
        t => is_key(t),
    }
}

/// AV1 RTP spec: the aggregation header's N bit marks the first packet of a new
/// coded video sequence, which starts with a keyframe.
fn av1_starts_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x08 != 0)
}

/// The units of an aggregation packet: each preceded by a big-endian length of
/// `len_bytes` bytes. Stops quietly at a malformed length.
pub(crate) fn aggregated_units(mut data: &[u8], len_bytes: usize) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < len_bytes {
            return None;
        }
        let len = data[..len_bytes]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let rest = &data[len_bytes..];
        if len == 0 || len > rest.len() {
            return None;
        }
        let (unit, tail) = rest.split_at(len);
        data = tail;
        Some(unit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_plain_descriptor() {
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d]));
        assert!(
            !starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0x9d]),
            "P=1 is an inter frame"
        );
        assert!(
            !starts_keyframe(Codec::Vp8, &[0x00, 0x00]),
            "not the start of a partition"
        );
        assert!(!starts_keyframe(Codec::Vp8, &[0x11, 0x00]), "partition 1");
        assert!(!starts_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn vp8_extended_descriptor_with_15_bit_picture_id_and_tl0() {
        // X=1 S=1; I=1 L=1 T=1; picture id 0x8123 (M=1); TL0PICIDX; T/K byte; payload.
        let key = [0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x50, 0x9d];
        assert!(starts_keyframe(Codec::Vp8, &key));
        let delta = [0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x51];
        assert!(!starts_keyframe(Codec::Vp8, &delta));
        assert!(!starts_keyframe(Codec::Vp8, &key[..4]), "truncated");
    }

    #[test]
    fn vp9_flags() {
        assert!(starts_keyframe(Codec::Vp9, &[0x08]), "B=1 P=0");
        assert!(!starts_keyframe(Codec::Vp9, &[0x48]), "P=1");
        assert!(
            !starts_keyframe(Codec::Vp9, &[0x00]),
            "not beginning of frame"
        );
        // I=1 L=1 B=1, 7-bit picture id, layer byte with spatial id 1.
        assert!(!starts_keyframe(Codec::Vp9, &[0xa8, 0x01, 0x02, 0x00]));
        assert!(starts_keyframe(Codec::Vp9, &[0xa8, 0x01, 0x00, 0x00]));
    }

    #[test]
    fn h264_single_stap_and_fu() {
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88]), "IDR");
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42]), "SPS");
        assert!(
            !starts_keyframe(Codec::H264, &[0x41, 0x9a]),
            "non-IDR slice"
        );
        assert!(!starts_keyframe(Codec::H264, &[0x06, 0x05]), "SEI");
        // STAP-A carrying SPS and PPS.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]
        ));
        // STAP-A with a lying length does not panic.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0xff, 0xff, 0x67]));
        // FU-A start of IDR, and a middle fragment.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c]));
    }

    #[test]
    fn h265_types() {
        // IDR_W_RADL (19) header: type << 1.
        assert!(starts_keyframe(Codec::H265, &[19 << 1, 0x01]));
        assert!(starts_keyframe(Codec::H265, &[32 << 1, 0x01]), "VPS");
        assert!(!starts_keyframe(Codec::H265, &[1 << 1, 0x01]), "TRAIL_R");
        // FU (49) starting an IDR.
        assert!(starts_keyframe(Codec::H265, &[49 << 1, 0x01, 0x80 | 19]));
        assert!(!starts_keyframe(Codec::H265, &[49 << 1, 0x01, 19]));
    }

    #[test]
    fn av1_new_sequence_bit() {
        assert!(starts_keyframe(Codec::Av1, &[0x18]));
        assert!(!starts_keyframe(Codec::Av1, &[0x10]));
    }

    #[test]
    fn audio_is_never_a_keyframe() {
        assert!(!starts_keyframe(Codec::Opus, &[0x10, 0x00]));
    }
}
