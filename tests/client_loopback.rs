//! Tests of the test client itself: two str0m peers talking over loopback UDP,
//! with no server and no HTTP in between. If these fail, the integration tests
//! cannot be trusted.

mod support;

use std::time::Duration;

use str0m::media::{Direction, MediaKind};
use support::media::{audio_payload, identity, is_vp8_keyframe_start, parse_vp8, video_frame};
use support::{
    answer_locally, check_stream, init_logging, wait_until, with_timeout, Codecs, Kind,
    PendingPeer, SendConfig, Vp8Descriptor,
};

#[test]
fn payloads_describe_themselves() {
    let a = audio_payload(7, 42);
    let id = identity(&a).expect("audio identity");
    assert_eq!((id.kind, id.tag, id.index), (Kind::Audio, 7, 42));

    for descriptor in [
        Vp8Descriptor::Minimal,
        Vp8Descriptor::PictureId,
        Vp8Descriptor::Temporal,
    ] {
        let key = video_frame(3, 10, true, descriptor, 0x1234);
        assert_eq!(key.len(), 3);
        assert!(is_vp8_keyframe_start(&key[0]));
        assert!(!is_vp8_keyframe_start(&key[1]));
        let h = parse_vp8(&key[0]).expect("descriptor");
        assert!(h.start);
        assert_eq!(h.pid, 0);
        match descriptor {
            Vp8Descriptor::Minimal => {
                assert_eq!(key[0][0], 0x10);
                assert_eq!(key[1][0], 0x00);
                assert_eq!(h.picture_id, None);
            }
            Vp8Descriptor::PictureId => {
                assert_eq!(key[0][0], 0x90);
                assert_eq!(h.picture_id, Some((0x1234, true)));
            }
            Vp8Descriptor::Temporal => {
                assert_eq!(h.picture_id, Some((0x1234, true)));
                assert_eq!(h.tl0picidx, Some(2), "frame 10: the third base frame");
                assert_eq!(key[0][h.len - 1] >> 6, 0, "a keyframe is a base frame");
            }
        }
        // First VP8 payload byte: P bit 0 for a key frame.
        assert_eq!(key[0][h.len] & 1, 0);
        let id = identity(&key[2]).expect("video identity");
        assert_eq!((id.tag, id.index, id.packet, id.packets), (3, 10, 2, 3));
        assert!(id.keyframe);

        let delta = video_frame(3, 11, false, descriptor, 0x1235);
        assert!(!is_vp8_keyframe_start(&delta[0]));
        let h = parse_vp8(&delta[0]).expect("descriptor");
        assert_eq!(h.keyframe, Some(false));
        assert_eq!(delta[0][h.len] & 1, 1);
        assert!(delta.iter().all(|p| p.len() < 1100));
    }
}

/// A sending offerer (like a WHIP publisher) and a receiving answerer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_to_local_receiver() {
    init_logging();
    with_timeout(Duration::from_secs(20), async {
        let pending = PendingPeer::offer(
            Codecs::Default,
            &[
                (MediaKind::Audio, Direction::SendOnly),
                (MediaKind::Video, Direction::SendOnly),
            ],
        )
        .expect("offer");
        let (receiver, answer) =
            answer_locally("receiver", &pending.offer, Codecs::Default, None).expect("answer");
        let sender = pending
            .accept("sender", &answer, Some(SendConfig::new(1)))
            .expect("accept answer");

        wait_until("both connected", Duration::from_secs(5), || {
            sender.connected() && receiver.connected()
        })
        .await
        .expect("connect");
        // More than 65536 - start so that sequence numbers wrap.
        wait_until("2 s of media", Duration::from_secs(8), || {
            receiver.with_state(|s| s.count_of(Kind::Video) > 150 && s.count_of(Kind::Audio) > 100)
        })
        .await
        .expect("media flows");
        sender.pause(true);
        let (sent_v, sent_a) = sender.with_state(|s| (s.sent_video.clone(), s.sent_audio.clone()));
        wait_until("last packets", Duration::from_secs(3), || {
            receiver.with_state(|s| {
                let ids: Vec<_> = s
                    .received
                    .iter()
                    .rev()
                    .take(50)
                    .filter_map(|r| r.identity())
                    .collect();
                ids.contains(&sent_v.last().expect("video").id)
                    && ids.contains(&sent_a.last().expect("audio").id)
            })
        })
        .await
        .expect("everything arrives");

        let recv_v = receiver.with_state(|s| s.received_of(Kind::Video));
        let recv_a = receiver.with_state(|s| s.received_of(Kind::Audio));
        let rv = check_stream(Kind::Video, &[&sent_v], &recv_v, 96).expect("video intact");
        let ra = check_stream(Kind::Audio, &[&sent_a], &recv_a, 111).expect("audio intact");
        // Nothing is lost between two directly connected peers.
        assert_eq!(rv.segments.len(), 1);
        assert_eq!(
            (rv.segments[0].first_sent, rv.segments[0].end_sent()),
            (0, sent_v.len())
        );
        assert_eq!(
            (ra.segments[0].first_sent, ra.segments[0].end_sent()),
            (0, sent_a.len())
        );
        assert!(
            recv_v.first().expect("video").seq > recv_v.last().expect("video").seq,
            "seq wrapped"
        );
    })
    .await;
}

/// A receiving offerer (like a WHEP viewer) with custom payload types, and a
/// sending answerer that only makes key frames when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_pli_gets_keyframe() {
    init_logging();
    with_timeout(Duration::from_secs(20), async {
        let pending = PendingPeer::offer(
            Codecs::Custom,
            &[
                (MediaKind::Audio, Direction::RecvOnly),
                (MediaKind::Video, Direction::RecvOnly),
            ],
        )
        .expect("offer");
        let mut cfg = SendConfig::new(2);
        cfg.keyframe_interval = None;
        cfg.descriptor = Vp8Descriptor::Minimal;
        let (sender, answer) =
            answer_locally("sender", &pending.offer, Codecs::Default, Some(cfg)).expect("answer");
        let viewer = pending.accept("viewer", &answer, None).expect("accept");

        wait_until("video", Duration::from_secs(5), || {
            viewer.with_state(|s| s.count_of(Kind::Video) > 30)
        })
        .await
        .expect("video flows");
        let keys_before = sender.with_state(|s| {
            s.sent_video
                .iter()
                .filter(|p| p.id.keyframe && p.id.packet == 0)
                .count()
        });
        assert_eq!(keys_before, 1, "only the first frame is a key frame");
        viewer.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        wait_until("a key frame after PLI", Duration::from_secs(3), || {
            viewer.with_state(|s| {
                s.received
                    .iter()
                    .filter(|r| is_vp8_keyframe_start(&r.payload))
                    .count()
                    >= 2
            })
        })
        .await
        .expect("PLI answered");
        assert!(sender.with_state(|s| !s.keyframe_requests.is_empty()));

        let sent = sender.with_state(|s| s.sent_video.clone());
        let recv = viewer.with_state(|s| s.received_of(Kind::Video));
        // The answerer sends with the viewer's payload type.
        let report = check_stream(Kind::Video, &[&sent], &recv, Codecs::Custom.vp8_pt())
            .expect("video intact");
        assert_eq!(report.segments.len(), 1);
    })
    .await;
}
