//! Payload-type mapping: which of a viewer's negotiated payload types carries a
//! publisher's codec. Publishers and viewers number their codecs differently
//! (aiortc: VP8 97, Chromium: VP8 96), so the number is rewritten per viewer.

use str0m::format::{Codec, CodecSpec};
use str0m::media::Pt;

/// Picks the viewer's payload type for the publisher's codec: the same codec (and,
/// for H264, the same packetization mode); among several, the closest profile.
/// The H264 profile is deliberately not required to match: OBS announces
/// `42e01f` whatever it sends, and browsers decode any profile they negotiated.
pub fn choose(publisher: &CodecSpec, viewer: &[(Pt, CodecSpec)]) -> Option<Pt> {
    viewer
        .iter()
        .enumerate()
        .filter(|(_, (_, spec))| compatible(publisher, spec))
        .max_by_key(|(index, (_, spec))| (closeness(publisher, spec), std::cmp::Reverse(*index)))
        .map(|(_, (pt, _))| *pt)
}

fn compatible(publisher: &CodecSpec, viewer: &CodecSpec) -> bool {
    if publisher.codec != viewer.codec {
        return false;
    }
    match publisher.codec {
        Codec::H264 => {
            publisher.format.packetization_mode.unwrap_or(0)
                == viewer.format.packetization_mode.unwrap_or(0)
        }
        _ => true,
    }
}

/// Higher is closer. Ties go to the first listed (the viewer's preference).
fn closeness(publisher: &CodecSpec, viewer: &CodecSpec) -> u8 {
    let p = &publisher.format;
    let v = &viewer.format;
    match publisher.codec {
        Codec::H264 => {
            u8::from(p.profile_level_id == v.profile_level_id) * 2
                + u8::from(
                    p.profile_level_id.map(|x| x >> 16) == v.profile_level_id.map(|x| x >> 16),
                )
        }
        Codec::Vp9 => u8::from(p.profile_id.unwrap_or(0) == v.profile_id.unwrap_or(0)) * 2,
        Codec::Av1 => u8::from(p.profile.unwrap_or(0) == v.profile.unwrap_or(0)) * 2,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::format::FormatParams;
    use str0m::media::Frequency;

    fn spec(codec: Codec, format: FormatParams) -> CodecSpec {
        CodecSpec {
            codec,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format,
        }
    }

    fn h264(profile: u32, mode: u8) -> CodecSpec {
        spec(
            Codec::H264,
            FormatParams {
                profile_level_id: Some(profile),
                packetization_mode: Some(mode),
                ..Default::default()
            },
        )
    }

    #[test]
    fn same_codec_different_number() {
        let publisher = spec(Codec::Vp8, FormatParams::default());
        let viewer = vec![
            (Pt::from(96), spec(Codec::H264, FormatParams::default())),
            (Pt::from(98), spec(Codec::Vp8, FormatParams::default())),
        ];
        assert_eq!(choose(&publisher, &viewer), Some(Pt::from(98)));
    }

    #[test]
    fn h264_needs_the_same_packetization_mode_and_prefers_the_same_profile() {
        let publisher = h264(0x42e01f, 1);
        let viewer = vec![
            (Pt::from(100), h264(0x42e01f, 0)),
            (Pt::from(102), h264(0x640c1f, 1)),
            (Pt::from(104), h264(0x42e01f, 1)),
        ];
        assert_eq!(choose(&publisher, &viewer), Some(Pt::from(104)));
        // No same profile: any packetization-mode-1 H264 will do (OBS lies about it).
        assert_eq!(choose(&publisher, &viewer[..2]), Some(Pt::from(102)));
        assert_eq!(choose(&publisher, &viewer[..1]), None);
    }

    #[test]
    fn no_common_codec() {
        let publisher = spec(Codec::Av1, FormatParams::default());
        assert_eq!(
            choose(
                &publisher,
                &[(Pt::from(96), spec(Codec::Vp8, FormatParams::default()))]
            ),
            None
        );
    }
}
