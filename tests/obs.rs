//! OBS Studio as a WHIP publisher (CLIENTS.md, "OBS Studio"): an offer without
//! candidates, H264 as x264 + libdatachannel send it, key frames only on the
//! encoder's interval (PLI ignored), the first IDR lost, and OBS 32.1 simulcast.
//! Viewers are str0m WHEP peers offering H264 on other payload types.

mod support;

use std::time::{Duration, Instant};

use support::flow::{
    self, check, check_with, drain, drain_with, live_from, start_server, wait_for_media,
};
use support::media::{
    h264_access_unit, h264_nal_type, identity, is_h264_keyframe_start, tag_layer, H264_MAX_PACKET,
    NAL_FILLER, NAL_FU_A, NAL_IDR, NAL_PPS, NAL_SEI, NAL_SLICE, NAL_SPS, NAL_STAP_A,
};
use support::{
    init_logging, wait_until, with_timeout, Codecs, Kind, ObsOptions, ObsPublisher, SentPacket,
    Viewer, ViewerOptions,
};
use switchboard::config::Config;
use switchboard::server::Server;

const TEST_LIMIT: Duration = Duration::from_secs(20);

async fn publish(server: &Server, room: &str, options: ObsOptions) -> ObsPublisher {
    let publisher = ObsPublisher::start(server.http_addr(), room, options)
        .await
        .expect("OBS WHIP publish");
    wait_until("OBS publisher connected", Duration::from_secs(5), || {
        publisher.connected()
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e} (the server must learn the address of a client that offers no candidates \
             from its checks); peer error {:?}, answer:\n{}",
            publisher.peer.error(),
            publisher.session.answer
        )
    });
    publisher
}

async fn view(server: &Server, room: &str, codecs: Codecs) -> Viewer {
    let viewer = flow::view(server, room, ViewerOptions::default().codecs(codecs)).await;
    assert_eq!(viewer.session.response.status, 201);
    viewer
}

/// Index in `sent` of the first packet of the first key frame.
fn first_keyframe(sent: &[SentPacket]) -> usize {
    sent.iter()
        .position(|p| p.id.keyframe && p.id.packet == 0)
        .expect("a key frame was sent")
}

fn assert_obs_offer_shape(offer: &str, simulcast: bool) {
    for want in [
        "a=group:BUNDLE 0 1\r\n",
        "a=group:LS 0 1\r\n",
        "a=ice-options:ice2,trickle\r\n",
        "a=setup:actpass\r\n",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n",
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n",
        "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        "a=rtpmap:96 H264/90000\r\n",
        "a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 goog-remb\r\n",
        "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1",
    ] {
        assert!(offer.contains(want), "offer lacks {want:?}:\n{offer}");
    }
    for absent in [
        "a=candidate",
        "end-of-candidates",
        "a=rtcp-fb:111",
        "rtx",
        "transport-cc",
    ] {
        assert!(!offer.contains(absent), "offer has {absent:?}:\n{offer}");
    }
    // ICE and DTLS attributes only at session level (before the first m-line).
    let (session, media) = offer.split_once("m=").expect("m-lines");
    for attr in ["a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:"] {
        assert!(
            session.contains(attr) && !media.contains(attr),
            "{attr}:\n{offer}"
        );
    }
    let video = &offer[offer.find("m=video").expect("video")..];
    if simulcast {
        for want in [
            "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
            "a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
            "a=rid:0 send\r\na=rid:1 send\r\na=rid:2 send\r\na=simulcast:send 0;1;2\r\n",
        ] {
            assert!(
                video.contains(want),
                "video m-line lacks {want:?}:\n{offer}"
            );
        }
        assert!(!video.contains("a=ssrc:"), "no a=ssrc for video:\n{offer}");
    } else {
        assert!(video.contains("a=ssrc:"), "{offer}");
    }
}

/// The test client's H264 looks like x264 through libdatachannel: SPS (High
/// profile, whatever the SDP says), PPS, SEI, then the IDR in FU-A fragments of
/// at most 1200 bytes; never STAP-A; filler NALs sometimes; every packet
/// self-identifying.
#[test]
fn h264_payloads_look_like_obs() {
    let key = h264_access_unit(7, 0, true, 0);
    let types: Vec<_> = key.iter().map(|p| h264_nal_type(p).unwrap()).collect();
    assert_eq!(
        &types[..4],
        &[
            (NAL_SPS, true),
            (NAL_PPS, true),
            (NAL_SEI, true),
            (NAL_IDR, true)
        ]
    );
    assert_eq!(key[0][1], 100, "SPS profile_idc: High");
    assert!(is_h264_keyframe_start(&key[0]));
    assert!(key[1..].iter().all(|p| !is_h264_keyframe_start(p)));
    assert_eq!(key[3][0] & 0x1f, NAL_FU_A);
    assert!(key[3][1] & 0x80 != 0, "FU-A start bit");
    let last_idr = key
        .iter()
        .rposition(|p| h264_nal_type(p) == Some((NAL_IDR, false)))
        .unwrap();
    assert!(key[last_idr][1] & 0x40 != 0, "FU-A end bit");
    let mut fillers = 0;
    for frame in 0..12u32 {
        for layer in 0..3u8 {
            let au = h264_access_unit(7, frame, frame == 0, layer);
            for (i, p) in au.iter().enumerate() {
                assert!(p.len() <= H264_MAX_PACKET);
                assert_ne!(p[0] & 0x1f, NAL_STAP_A);
                let id = identity(p).expect("identity");
                assert_eq!(
                    (id.index, usize::from(id.packet), usize::from(id.packets)),
                    (frame, i, au.len())
                );
                let (t, _) = h264_nal_type(p).unwrap();
                if frame > 0 {
                    assert!(
                        matches!(t, NAL_SLICE | NAL_SEI | NAL_FILLER),
                        "frame {frame}: NAL {t}"
                    );
                }
                fillers += usize::from(t == NAL_FILLER);
            }
        }
    }
    assert!(fillers > 0);
    let size = |layer| -> usize {
        h264_access_unit(7, 0, true, layer)
            .iter()
            .map(|p| p.len())
            .sum()
    };
    assert!(
        size(0) > size(1) && size(1) > size(2),
        "layer 0 is the largest"
    );
}

/// The OBS publisher (no candidates, first IDR lost, key frames every 2 s, PLI
/// ignored) and two viewers with H264 on other payload types (102 and 125): each gets every H264 packet from the first key frame on,
/// intact, in order, with consecutive sequence numbers and its own payload type;
/// audio likewise. POST is answered exactly 201, DELETE exactly 200 (OBS closes
/// the connection first, then sends DELETE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_publisher_without_candidates_reaches_two_viewers_intact() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let mut publisher = publish(
            &server,
            "obs",
            ObsOptions::new(1)
                .keyframe_every(Duration::from_secs(2))
                .lose_first_keyframe(true),
        )
        .await;
        assert_obs_offer_shape(&publisher.session.offer, false);
        assert_eq!(publisher.session.response.status, 201);
        let answer = &publisher.parsed_answer;
        assert_eq!(
            answer.mlines,
            vec![("0".to_string(), true), ("1".to_string(), true)],
            "answer m-lines:\n{}",
            publisher.session.answer
        );

        let v1 = view(&server, "obs", Codecs::H264).await;
        let v2 = view(&server, "obs", Codecs::H264Alt).await;
        // The first key frame comes 2 s after the start; then ~1.5 s of video.
        for v in [&v1, &v2] {
            wait_for_media(v, 90, 100, Duration::from_secs(8)).await;
        }
        let (sent_video, sent_audio) = drain(&publisher, &[&v1, &v2]).await;

        // What went out: delta frames first (the first IDR was lost), from seq 0.
        assert_eq!(sent_video[0].seq, 0);
        assert_eq!(sent_audio[0].seq, 0);
        assert!(
            !sent_video[0].id.keyframe,
            "the stream starts without its IDR"
        );
        assert!(sent_audio.iter().all(|p| p.marker));
        let key = first_keyframe(&sent_video);
        assert!(key > 0);

        for v in [&v1, &v2] {
            let video = check(v, Kind::Video, &[&sent_video]);
            assert_eq!(video.segments.len(), 1, "one uninterrupted run: {video:?}");
            assert_eq!(
                video.segments[0].first_sent, key,
                "video must start on the first key frame that was sent: {video:?}"
            );
            assert_eq!(video.segments[0].end_sent(), sent_video.len());
            let audio = check_with(v, Kind::Audio, &[&sent_audio], live_from(v));
            assert_eq!(audio.segments.len(), 1, "{audio:?}");
            assert_eq!(audio.segments[0].end_sent(), sent_audio.len());
        }
        assert_eq!(v1.delete().await.expect("viewer DELETE"), 200);
        assert_eq!(v2.delete().await.expect("viewer DELETE"), 200);
        let status = publisher.stop().await.expect("publisher DELETE");
        assert_eq!(
            status, 200,
            "OBS closes its connection, then DELETEs and wants exactly 200"
        );
        drop((v1, v2, publisher));
        server.shutdown().await;
    })
    .await;
}

/// A viewer joining mid-GOP (key frame every 3 s, joining 1 s after one) gets
/// video at once from the key frame cache: the first video packet within 500 ms
/// of its POST, starting with the cached SPS, PPS, SEI and IDR, and running on
/// into the live stream with consecutive sequence numbers. The viewer's PLI
/// reaches OBS, which ignores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_gop_viewer_starts_at_once_from_cached_keyframe() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(
            &server,
            "gop",
            ObsOptions::new(2).keyframe_every(Duration::from_secs(3)),
        )
        .await;
        // Frame 30: one second after the key frame at frame 0.
        wait_until("1 s of video sent", Duration::from_secs(5), || {
            publisher
                .peer
                .with_state(|s| s.sent_video.last().is_some_and(|p| p.id.index >= 30))
        })
        .await
        .expect("publisher sends");
        let keys_before = publisher.keyframes_sent().len();
        assert_eq!(keys_before, 1, "only the first key frame so far");

        let plis_before = publisher.keyframe_requests();
        let posted = Instant::now();
        let viewer = view(&server, "gop", Codecs::H264).await;
        wait_for_media(&viewer, 1, 0, Duration::from_millis(1500)).await;
        let first = viewer.received(Kind::Video)[0].clone();
        let delay = first.at.saturating_duration_since(posted);
        assert!(
            delay <= Duration::from_millis(500),
            "first video packet {delay:?} after the WHEP POST"
        );
        // Like Chromium, the viewer sends a PLI when it starts; the server passes
        // it on to OBS (the cache served this viewer, so it needs none itself).
        viewer.request_keyframe();
        wait_until("a PLI at OBS", Duration::from_secs(2), || {
            publisher.keyframe_requests() > plis_before
        })
        .await
        .expect("the server asks OBS for a key frame when a viewer wants one");
        wait_for_media(&viewer, 60, 30, Duration::from_secs(3)).await;
        let (sent_video, _) = drain(&publisher, &[&viewer]).await;

        // OBS ignored every PLI: key frames only on the encoder's interval.
        let keys: Vec<u32> = publisher
            .keyframes_sent()
            .iter()
            .map(|p| p.id.index)
            .collect();
        assert!(keys.iter().all(|f| f % 90 == 0), "key frames at {keys:?}");

        // The start is the cached key frame, whole: SPS, PPS, SEI, then the IDR.
        let received = viewer.received(Kind::Video);
        let nals: Vec<_> = received
            .iter()
            .take(4)
            .map(|p| h264_nal_type(&p.payload).map(|(t, _)| t))
            .collect();
        assert_eq!(
            nals,
            vec![Some(NAL_SPS), Some(NAL_PPS), Some(NAL_SEI), Some(NAL_IDR)],
            "the viewer's video must begin with the cached access unit"
        );
        let video = check_with(&viewer, Kind::Video, &[&sent_video], live_from(&viewer));
        assert_eq!(video.segments.len(), 1, "{video:?}");
        assert_eq!(
            video.segments[0].first_sent, 0,
            "the cached key frame is the publisher's first frame"
        );
        assert_eq!(video.segments[0].end_sent(), sent_video.len());

        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

/// OBS 32.1 simulcast: three layers (`0` the largest) with no a=ssrc lines, the
/// SSRCs learnt from the rid extension. The answer accepts all three, and a
/// viewer gets layer 0 only, with consecutive sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_simulcast_viewer_gets_layer_zero() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        // OBS's offer and layers, not bandwidth estimation (tests/simulcast.rs): with it,
        // this debug-build viewer's slow receive loop reads as congestion and moves it down.
        let mut config = Config::for_tests();
        config.media.viewer_initial_estimate_kbps = 0;
        let server = start_server(config).await;
        let publisher = publish(
            &server,
            "layers",
            ObsOptions::new(3)
                .simulcast()
                .keyframe_every(Duration::from_secs(2)),
        )
        .await;
        assert_obs_offer_shape(&publisher.session.offer, true);
        assert_eq!(
            publisher.parsed_answer.simulcast.as_deref(),
            Some("recv 0;1;2"),
            "OBS fails unless the answer has as many layers as it sent:\n{}",
            publisher.session.answer
        );
        // Every layer is sent, layer 0 the largest.
        wait_until("0.5 s of video sent", Duration::from_secs(5), || {
            publisher
                .peer
                .with_state(|s| s.sent_video.last().is_some_and(|p| p.id.index >= 15))
        })
        .await
        .expect("publisher sends");
        let bytes = |rid: &str| -> usize {
            publisher
                .sent_layer(rid)
                .iter()
                .map(|p| p.payload.len())
                .sum()
        };
        assert!(bytes("0") > bytes("1") && bytes("1") > bytes("2"));

        let viewer = view(&server, "layers", Codecs::H264).await;
        wait_for_media(&viewer, 90, 30, Duration::from_secs(6)).await;
        let (layer0, _) = drain_with(&publisher, &[&viewer], |p| p.sent_layer("0")).await;

        let received = viewer.received(Kind::Video);
        let mut per_layer = [0usize; 3];
        for p in &received {
            if let Some(id) = p.identity() {
                per_layer[usize::from(tag_layer(id.tag)).min(2)] += 1;
            }
        }
        assert_eq!(
            (per_layer[1], per_layer[2]),
            (0, 0),
            "packets per layer received: {per_layer:?}"
        );
        let video = check_with(&viewer, Kind::Video, &[&layer0], live_from(&viewer));
        assert_eq!(video.segments.len(), 1, "{video:?}");
        assert_eq!(video.segments[0].end_sent(), layer0.len());
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}
