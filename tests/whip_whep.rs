//! End-to-end media tests: the real server on loopback, str0m publishers over
//! WHIP and str0m viewers over WHEP (see `tests/support`).

mod support;

use std::time::{Duration, Instant};

use support::flow::{
    check, check_with, drain, live_from, publish, start_server, view, wait_for_media,
};
use support::{
    init_logging, wait_until, with_timeout, Codecs, Kind, PublisherOptions, Viewer, ViewerOptions,
};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(40);

/// One publisher (VP8 + Opus), three viewers (one with other payload types): each
/// viewer's video starts on a key frame and from there is exactly what was sent,
/// byte for byte, in order, with consecutive sequence numbers; audio likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_viewers_receive_every_packet_intact() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(&server, "intact", PublisherOptions::new(1)).await;

        let v1 = view(&server, "intact", ViewerOptions::default()).await;
        let v2 = view(
            &server,
            "intact",
            ViewerOptions::default().codecs(Codecs::Custom),
        )
        .await;
        let v3 = view(&server, "intact", ViewerOptions::default()).await;
        for v in [&v1, &v2, &v3] {
            // About 2.5 s of media (the publisher sends ~41 video and 50 audio packets a second).
            wait_for_media(v, 100, 120, Duration::from_secs(8)).await;
        }
        let (sent_video, sent_audio) = drain(&publisher, &[&v1, &v2, &v3]).await;

        for v in [&v1, &v2, &v3] {
            for (kind, sent) in [(Kind::Video, &sent_video), (Kind::Audio, &sent_audio)] {
                let report = check_with(v, kind, &[sent], live_from(v));
                assert_eq!(
                    report.segments.len(),
                    1,
                    "{kind:?}: one uninterrupted run expected: {report:?}"
                );
                assert_eq!(
                    report.segments[0].end_sent(),
                    sent.len(),
                    "{kind:?}: the run must reach the last packet sent"
                );
                assert!(report.packets >= 100, "{kind:?}: {report:?}");
            }
        }
        drop((v1, v2, v3, publisher));
        server.shutdown().await;
    })
    .await;
}

/// A viewer joining a running stream whose publisher sends no periodic key frames
/// gets a key frame first, and fast: the server asks the publisher for one (the
/// GOP cache is off here, so the key frame must come from a PLI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_viewer_starts_on_requested_keyframe() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = Config::for_tests();
        config.media.keyframe_cache_bytes = 0;
        let server = start_server(config).await;
        let publisher = publish(
            &server,
            "late",
            PublisherOptions::new(1).keyframe_interval(None),
        )
        .await;
        wait_until("1.5 s of video sent", Duration::from_secs(5), || {
            publisher.sent_count(Kind::Video) >= 60
        })
        .await
        .expect("publisher sends");
        let requests_before = publisher.keyframe_requests();

        let viewer = view(&server, "late", ViewerOptions::default()).await;
        let connected_at = viewer
            .peer
            .with_state(|s| s.connected_at)
            .expect("connected");
        wait_for_media(&viewer, 1, 1, Duration::from_secs(3)).await;
        let first = viewer.received(Kind::Video)[0].at;
        let delay = first.saturating_duration_since(connected_at);
        assert!(
            delay < Duration::from_millis(1000),
            "first video packet {delay:?} after the viewer connected"
        );
        assert!(
            publisher.keyframe_requests() > requests_before,
            "the server did not ask the publisher for a key frame when the viewer joined"
        );
        wait_for_media(&viewer, 60, 60, Duration::from_secs(5)).await;
        let (sent_video, sent_audio) = drain(&publisher, &[&viewer]).await;
        let video = check(&viewer, Kind::Video, &[&sent_video]);
        assert_eq!(video.segments.len(), 1, "{video:?}");
        assert!(
            video.segments[0].first_sent > 0,
            "the viewer cannot have the publisher's first frame without a cache"
        );
        assert_eq!(video.segments[0].end_sent(), sent_video.len());
        let audio = check(&viewer, Kind::Audio, &[&sent_audio]);
        assert_eq!(audio.segments.len(), 1, "{audio:?}");
        assert_eq!(audio.segments[0].end_sent(), sent_audio.len());
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

/// Like OBS: the publisher ignores PLI and sent its only key frame long ago. With
/// the default configuration (GOP cache on) a late viewer still starts at once, on
/// that key frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_viewer_starts_from_keyframe_cache() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(
            &server,
            "cache",
            PublisherOptions::new(1)
                .keyframe_interval(None)
                .answer_keyframe_requests(false),
        )
        .await;
        wait_until("1.5 s of video sent", Duration::from_secs(5), || {
            publisher.sent_count(Kind::Video) >= 60
        })
        .await
        .expect("publisher sends");

        let viewer = view(&server, "cache", ViewerOptions::default()).await;
        let connected_at = viewer
            .peer
            .with_state(|s| s.connected_at)
            .expect("connected");
        wait_for_media(&viewer, 1, 0, Duration::from_secs(3)).await;
        let delay = viewer.received(Kind::Video)[0]
            .at
            .saturating_duration_since(connected_at);
        assert!(
            delay < Duration::from_millis(1000),
            "first video packet {delay:?} after the viewer connected"
        );
        wait_for_media(&viewer, 100, 30, Duration::from_secs(5)).await;
        let (sent_video, _) = drain(&publisher, &[&viewer]).await;
        // The replayed cache may come with compressed timestamps; live packets may not.
        let video = check_with(&viewer, Kind::Video, &[&sent_video], live_from(&viewer));
        assert_eq!(video.segments.len(), 1, "{video:?}");
        assert_eq!(
            video.segments[0].first_sent, 0,
            "the only key frame is the publisher's first frame"
        );
        assert_eq!(video.segments[0].end_sent(), sent_video.len());
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

/// A viewer that comes before any publisher starts receiving when one arrives; when
/// that publisher leaves (DELETE) and another one comes, the viewer's streams go on
/// with consecutive sequence numbers and the new video starts on a key frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_before_publisher_and_publisher_switch() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let viewer = view(&server, "switch", ViewerOptions::default()).await;

        let mut first = publish(&server, "switch", PublisherOptions::new(1)).await;
        wait_for_media(&viewer, 60, 60, Duration::from_secs(5)).await;
        assert_eq!(
            first.delete().await.expect("DELETE"),
            200,
            "DELETE of the publisher"
        );
        first.close();
        let first_video = first.sent(Kind::Video);
        let first_audio = first.sent(Kind::Audio);
        let before = (viewer.count(Kind::Video), viewer.count(Kind::Audio));

        let second = publish(
            &server,
            "switch",
            PublisherOptions::new(2).keyframe_interval(Some(60)),
        )
        .await;
        let joined = Instant::now();
        wait_until(
            "video from the second publisher",
            Duration::from_secs(5),
            || {
                viewer.peer.with_state(|s| {
                    s.received_of(Kind::Video)
                        .iter()
                        .filter(|p| p.identity().is_some_and(|id| id.tag == 2))
                        .count()
                        >= 60
                })
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {} video / {} audio packets in total, {:?} before the second publisher",
                viewer.count(Kind::Video),
                viewer.count(Kind::Audio),
                before
            )
        });
        let (second_video, second_audio) = drain(&second, &[&viewer]).await;

        let video = check(&viewer, Kind::Video, &[&first_video, &second_video]);
        let tags: Vec<u32> = video.segments.iter().map(|s| s.tag).collect();
        assert_eq!(tags, vec![1, 2], "video runs: {video:?}");
        assert_eq!(video.segments[1].end_sent(), second_video.len());
        let audio = check(&viewer, Kind::Audio, &[&first_audio, &second_audio]);
        let tags: Vec<u32> = audio.segments.iter().map(|s| s.tag).collect();
        assert_eq!(tags, vec![1, 2], "audio runs: {audio:?}");
        assert_eq!(audio.segments[1].end_sent(), second_audio.len());
        let switch_delay = video.segments[1].first_at.saturating_duration_since(joined);
        assert!(
            switch_delay < Duration::from_secs(3),
            "second publisher's video reached the viewer {switch_delay:?} after it connected"
        );
        drop((viewer, second, first));
        server.shutdown().await;
    })
    .await;
}

/// DELETE of the publisher's session stops media to every viewer, even though the
/// publisher's peer goes on sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_publisher_stops_media() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(&server, "stop", PublisherOptions::new(1)).await;
        let v1 = view(&server, "stop", ViewerOptions::default()).await;
        let v2 = view(&server, "stop", ViewerOptions::default()).await;
        for v in [&v1, &v2] {
            wait_for_media(v, 30, 30, Duration::from_secs(5)).await;
        }

        assert_eq!(publisher.delete().await.expect("DELETE"), 200);
        // The server has ended the publisher's session (only the viewers are left)...
        wait_until(
            "the publisher's session ended",
            Duration::from_secs(2),
            || server.session_count() == 2,
        )
        .await
        .expect("the publisher session ends");
        // ...and what it had already sent has been read by the viewers' threads.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts = |v: &Viewer| (v.count(Kind::Video), v.count(Kind::Audio));
        let before = [counts(&v1), counts(&v2)];
        let sent_before = publisher.sent_count(Kind::Video);
        // Observe a quiet second: nothing may arrive.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = [counts(&v1), counts(&v2)];
        assert!(
            publisher.sent_count(Kind::Video) > sent_before,
            "the publisher peer kept sending"
        );
        assert_eq!(
            before, after,
            "(video, audio) packets per viewer kept arriving after DELETE"
        );

        let again = publisher.delete().await.expect("second DELETE");
        assert_eq!(again, 404, "DELETE of an ended session");
        assert_eq!(v1.delete().await.expect("viewer DELETE"), 200);
        drop((v1, v2, publisher));
        server.shutdown().await;
    })
    .await;
}

/// An audio-only publisher: a viewer asking for audio and video gets the audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_publisher() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(&server, "radio", PublisherOptions::new(5).audio_only()).await;
        let viewer = view(&server, "radio", ViewerOptions::default()).await;
        wait_for_media(&viewer, 0, 50, Duration::from_secs(5)).await;
        let (_, sent_audio) = drain(&publisher, &[&viewer]).await;
        let audio = check(&viewer, Kind::Audio, &[&sent_audio]);
        assert_eq!(audio.segments.len(), 1, "{audio:?}");
        assert_eq!(audio.segments[0].end_sent(), sent_audio.len());
        assert_eq!(viewer.count(Kind::Video), 0);
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}
