//! The RTP header extensions that describe the media itself, carried from a
//! publisher's packet to every viewer's copy unchanged: audio level, video
//! orientation, abs-capture-time, playout delay and video content type.
//!
//! The others describe one hop (mid, rid, transport-wide sequence numbers,
//! abs-send-time): str0m writes its own on each viewer's stream. A value goes out
//! only where the viewer negotiated the extension; str0m writes just the
//! extensions in the m-line's agreed map.

use str0m::media::MediaTime;
use str0m::rtp::{AbsCaptureTime, Extension, ExtensionValues, VideoOrientation};

/// The extensions, beyond str0m's standard set, that the server offers to accept
/// and to write: with ids that no standard extension uses (an answer takes the
/// offer's ids anyway).
pub const NEGOTIATED: [(u8, Extension); 3] = [
    (5, Extension::AbsoluteCaptureTime),
    (6, Extension::PlayoutDelay),
    (7, Extension::VideoContentType),
];

/// The media-describing extension values of one packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardedExtensions {
    /// `urn:ietf:params:rtp-hdrext:ssrc-audio-level`: level in -dBov, and the V bit.
    pub audio_level: Option<(i8, bool)>,
    /// `urn:3gpp:video-orientation`: how the receiver must rotate the picture.
    pub video_orientation: Option<VideoOrientation>,
    /// `abs-capture-time`: when the frame was captured, on the capturer's clock.
    pub abs_capture_time: Option<AbsCaptureTime>,
    /// `playout-delay`: the (min, max) delay the sender asks receivers to play at.
    pub playout_delay: Option<(MediaTime, MediaTime)>,
    /// `video-content-type`: 1 for a screen share, which receivers buffer differently.
    pub video_content_type: Option<u8>,
}

impl ForwardedExtensions {
    /// Takes the values str0m parsed from a publisher's packet.
    pub fn from_received(values: &ExtensionValues) -> Self {
        ForwardedExtensions {
            audio_level: values
                .audio_level
                .map(|level| (level, values.voice_activity.unwrap_or(false))),
            video_orientation: values.video_orientation,
            abs_capture_time: values.abs_capture_time,
            playout_delay: values.play_delay_min.zip(values.play_delay_max),
            video_content_type: values.video_content_type,
        }
    }

    /// The values for a viewer's `RtpWrite`.
    pub fn to_write(&self) -> ExtensionValues {
        ExtensionValues {
            audio_level: self.audio_level.map(|(level, _)| level),
            voice_activity: self.audio_level.map(|(_, voice)| voice),
            video_orientation: self.video_orientation,
            abs_capture_time: self.abs_capture_time,
            play_delay_min: self.playout_delay.map(|(min, _)| min),
            play_delay_max: self.playout_delay.map(|(_, max)| max),
            video_content_type: self.video_content_type,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn every_value_is_written_as_it_was_received() {
        // The wire format itself is str0m's (tests/header_extensions.rs sends it
        // through a server); here: nothing is lost or mixed up on the way.
        let sent = ForwardedExtensions {
            audio_level: Some((-42, true)),
            video_orientation: Some(VideoOrientation::Deg90),
            abs_capture_time: Some(AbsCaptureTime {
                capture_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                clock_offset: Some(-1 << 20),
            }),
            playout_delay: Some((
                MediaTime::from_hundredths(0),
                MediaTime::from_hundredths(50),
            )),
            video_content_type: Some(1),
        };
        assert_eq!(ForwardedExtensions::from_received(&sent.to_write()), sent);
    }

    #[test]
    fn nothing_in_nothing_out() {
        let none = ForwardedExtensions::from_received(&ExtensionValues::default());
        assert_eq!(none, ForwardedExtensions::default());
        let written = none.to_write();
        assert_eq!(written.audio_level, None);
        assert_eq!(written.voice_activity, None);
        assert_eq!(written.video_orientation, None);
        assert_eq!(written.play_delay_min, None);
        assert_eq!(written.abs_capture_time, None);
    }

    #[test]
    fn a_half_playout_delay_is_not_forwarded() {
        // str0m writes playout-delay only with both bounds: keep them together.
        let values = ExtensionValues {
            play_delay_min: Some(MediaTime::from_hundredths(10)),
            ..Default::default()
        };
        assert_eq!(
            ForwardedExtensions::from_received(&values).playout_delay,
            None
        );
    }

    #[test]
    fn an_audio_level_without_the_v_bit_says_no_voice() {
        let values = ExtensionValues {
            audio_level: Some(-30),
            ..Default::default()
        };
        let forwarded = ForwardedExtensions::from_received(&values);
        assert_eq!(forwarded.audio_level, Some((-30, false)));
        assert_eq!(forwarded.to_write().voice_activity, Some(false));
    }
}
