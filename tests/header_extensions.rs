//! Header extensions that describe the media reach viewers as the publisher sent
//! them: video orientation (a phone's picture is shown the right way up),
//! abs-capture-time, playout delay, video content type and the audio level. A
//! viewer that did not negotiate one does not get it.

mod support;

use std::time::{Duration, SystemTime};

use str0m::media::MediaTime;
use str0m::rtp::{AbsCaptureTime, ExtensionValues, VideoOrientation};
use support::flow::{publish, start_server, view, wait_for_media};
use support::media::ReceivedPacket;
use support::{init_logging, with_timeout, Kind, PublisherOptions, Viewer, ViewerOptions};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(60);
const ORIENTATION_URI: &str = "urn:3gpp:video-orientation";

fn capture_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) + Duration::from_millis(250)
}

/// A phone-like publisher: its picture must be turned 90°, it asks for low-latency
/// playout, shares its capture clock and says it is a screen share.
fn rotated_publisher() -> PublisherOptions {
    let mut options = PublisherOptions::new(1);
    options.send.video_extensions = ExtensionValues {
        video_orientation: Some(VideoOrientation::Deg90),
        play_delay_min: Some(MediaTime::from_hundredths(0)),
        play_delay_max: Some(MediaTime::from_hundredths(40)),
        video_content_type: Some(1),
        abs_capture_time: Some(AbsCaptureTime {
            capture_time: capture_time(),
            clock_offset: Some(3 << 28),
        }),
        ..Default::default()
    };
    options.send.audio_extensions = ExtensionValues {
        audio_level: Some(-27),
        voice_activity: Some(true),
        ..Default::default()
    };
    options
}

/// The viewer's packets from the publisher, of `kind`.
fn from_publisher(viewer: &Viewer, kind: Kind) -> Vec<ReceivedPacket> {
    viewer
        .received(kind)
        .into_iter()
        .filter(|p| p.identity().is_some_and(|id| id.tag == 1))
        .collect()
}

fn assert_video_extensions(viewer: &Viewer, orientation: Option<VideoOrientation>) {
    let video = from_publisher(viewer, Kind::Video);
    assert!(!video.is_empty(), "no video from the publisher");
    for packet in &video {
        let values = &packet.extensions;
        assert_eq!(values.video_orientation, orientation, "seq {}", packet.seq);
        assert_eq!(values.play_delay_min, Some(MediaTime::from_hundredths(0)));
        assert_eq!(values.play_delay_max, Some(MediaTime::from_hundredths(40)));
        assert_eq!(values.video_content_type, Some(1));
        let capture = values
            .abs_capture_time
            .unwrap_or_else(|| panic!("seq {}: no abs-capture-time", packet.seq));
        assert_eq!(capture.clock_offset, Some(3 << 28));
        // Each stack converts NTP through an f64: microseconds are what is left.
        let error = capture
            .capture_time
            .duration_since(capture_time())
            .unwrap_or_else(|e| e.duration());
        assert!(
            error < Duration::from_micros(5),
            "capture time off by {error:?}"
        );
    }
}

fn assert_audio_level(viewer: &Viewer) {
    let audio = from_publisher(viewer, Kind::Audio);
    assert!(!audio.is_empty(), "no audio from the publisher");
    for packet in &audio {
        assert_eq!(
            packet.extensions.audio_level,
            Some(-27),
            "seq {}",
            packet.seq
        );
        assert_eq!(packet.extensions.voice_activity, Some(true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_extensions_reach_viewers_unchanged() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(&server, "rotated", rotated_publisher()).await;
        let viewer = view(&server, "rotated", ViewerOptions::default()).await;
        wait_for_media(&viewer, 60, 30, Duration::from_secs(10)).await;
        assert_video_extensions(&viewer, Some(VideoOrientation::Deg90));
        assert_audio_level(&viewer);

        // A viewer that never offered orientation gets the others, not it.
        let mut options = ViewerOptions::default();
        options.unsupported_extensions.push(ORIENTATION_URI);
        let plain = view(&server, "rotated", options).await;
        assert!(
            !plain.session.offer.contains(ORIENTATION_URI),
            "the offer still names orientation"
        );
        wait_for_media(&plain, 60, 30, Duration::from_secs(10)).await;
        assert_video_extensions(&plain, None);
        assert_audio_level(&plain);

        drop((viewer, plain, publisher));
        server.shutdown().await;
    })
    .await;
}
