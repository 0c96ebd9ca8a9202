//! Conference rooms over plain WHIP/WHEP, against the real server with the
//! in-repo str0m client: every participant publishes and watches the others in
//! the slots its offer asks for; the server gives slots to the loudest and most
//! recent speakers, pins first, and switches a slot's source on a keyframe with
//! the numbering continuous.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::auth::{auth_on, claims, mint};
use support::flow::{self, start_server};
use support::http::{self, events_in, Events};
use support::media::is_vp8_keyframe_start;
use support::{init_logging, wait_until, with_timeout, Kind, PublisherOptions, ViewerOptions};
use switchboard::auth::Claims;
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

fn publisher(tag: u32, participant: &str) -> PublisherOptions {
    let mut options = PublisherOptions::new(tag);
    options.participant = Some(participant.into());
    // Quiet until a test makes someone speak.
    options.send.audio_extensions.audio_level = Some(-127);
    options
}

fn viewer(participant: &str, slots: usize) -> ViewerOptions {
    ViewerOptions {
        participant: Some(participant.into()),
        slots,
        ..Default::default()
    }
}

/// The publisher tags received on each m-line of `kind`.
fn tags_by_mid(viewer: &support::Viewer, kind: Kind) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for p in viewer.received(kind) {
        if let (Some(mid), Some(id)) = (p.mid.clone(), p.identity()) {
            out.entry(mid).or_default().insert(id.tag);
        }
    }
    out
}

fn tags(viewer: &support::Viewer, kind: Kind) -> BTreeSet<u32> {
    tags_by_mid(viewer, kind).into_values().flatten().collect()
}

/// Four participants, each publishing audio and video and watching with three
/// slots of each: everyone receives the other three and never themselves, each
/// slot carries one participant, and a data channel message reaches the other
/// three with its sender's identity. Two shards: sessions are spread over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_participants_each_receive_the_other_three_and_never_themselves() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let names = ["p1", "p2", "p3", "p4"];
        let mut publishers = Vec::new();
        for (i, name) in names.iter().enumerate() {
            publishers.push(flow::publish(&server, "meet", publisher(i as u32 + 1, name)).await);
        }
        let mut viewers = Vec::new();
        for name in names {
            let mut options = viewer(name, 3);
            options.channel = true;
            viewers.push(flow::view(&server, "meet", options).await);
        }
        for (i, v) in viewers.iter().enumerate() {
            let own = i as u32 + 1;
            let others: BTreeSet<u32> = (1..=4).filter(|t| *t != own).collect();
            wait_until("the other three, audio and video", WAIT, || {
                tags(v, Kind::Video) == others && tags(v, Kind::Audio) == others
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: video {:?} audio {:?}",
                    names[i],
                    tags_by_mid(v, Kind::Video),
                    tags_by_mid(v, Kind::Audio)
                )
            });
            for kind in [Kind::Video, Kind::Audio] {
                let by_mid = tags_by_mid(v, kind);
                assert_eq!(by_mid.len(), 3, "{}: {kind:?} {by_mid:?}", names[i]);
                assert!(
                    by_mid.values().all(|t| t.len() == 1),
                    "{}: a {kind:?} slot changed source with nobody speaking: {by_mid:?}",
                    names[i]
                );
            }
        }
        // The slots event names the three others.
        let mut events = Events::open(server.http_addr(), &viewers[0].session.location)
            .await
            .expect("events");
        events
            .until(WAIT, |seen| seen.contains("event: slots"))
            .await
            .expect("slots");
        let slots = events.all("slots").pop().expect("a slots event");
        let shown: BTreeSet<&str> = slots["slots"]
            .as_array()
            .expect("slots")
            .iter()
            .filter_map(|s| s["participant"].as_str())
            .collect();
        assert_eq!(shown, BTreeSet::from(["p2", "p3", "p4"]), "{slots}");

        for v in &viewers {
            wait_until("data channel open", WAIT, || {
                v.peer.with_state(|s| s.channel_open)
            })
            .await
            .expect("channel");
        }
        viewers[0].peer.send_data("hello from p1");
        for v in &viewers[1..] {
            wait_until("p1's message", WAIT, || !v.peer.data_received().is_empty())
                .await
                .expect("delivered");
            let message: serde_json::Value =
                serde_json::from_str(&v.peer.data_received()[0]).expect("JSON");
            assert_eq!(message["from"], "p1", "{message}");
            assert_eq!(message["text"], "hello from p1", "{message}");
        }
        assert!(viewers[0].peer.data_received().is_empty());
        drop((viewers, publishers));
        server.shutdown().await;
    })
    .await;
}

/// A packet of publisher `tag` arrived among the viewer's `kind` packets after
/// the first `from`.
fn arrived_since(v: &support::Viewer, kind: Kind, from: usize, tag: u32) -> bool {
    v.received(kind)
        .iter()
        .skip(from)
        .any(|p| p.identity().is_some_and(|i| i.tag == tag))
}

/// The viewer's last `n` packets of `kind` are all publisher `tag`'s.
fn lately_only(v: &support::Viewer, kind: Kind, n: usize, tag: u32) -> bool {
    v.received(kind)
        .iter()
        .rev()
        .take(n)
        .all(|p| p.identity().is_some_and(|i| i.tag == tag))
}

/// Checks that a viewer's video, across source switches, has continuous
/// sequence numbers and starts each new source on a keyframe.
fn assert_switches_clean(viewer: &support::Viewer) {
    let video = viewer.received(Kind::Video);
    let mut previous: Option<(u64, u32)> = None;
    for p in &video {
        let Some(tag) = p.identity().map(|i| i.tag) else {
            continue;
        };
        if let Some((seq, last_tag)) = previous {
            assert!(
                p.ext_seq == seq + 1 || p.ext_seq <= seq,
                "a gap in the numbering: {seq} then {}",
                p.ext_seq
            );
            if tag != last_tag && p.ext_seq > seq {
                assert!(
                    is_vp8_keyframe_start(&p.payload),
                    "the switch to {tag} did not start on a keyframe"
                );
            }
        }
        if previous.is_none_or(|(seq, _)| p.ext_seq > seq) {
            previous = Some((p.ext_seq, tag));
        }
    }
}

/// One slot of each kind, three publishers. Nobody speaks: the first to join is
/// shown on video. Then the third speaks up: it becomes the active speaker, takes the
/// audio slot and the video slot (on its keyframe, numbering continuous). A pin
/// wins over the speaker; unpinned, the speaker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_audio_level_rises_takes_the_speaker_slot() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let a = flow::publish(&server, "talk", publisher(1, "a")).await;
        let b = flow::publish(&server, "talk", publisher(2, "b")).await;
        let c = flow::publish(&server, "talk", publisher(3, "c")).await;
        let v = flow::view(&server, "talk", viewer("v", 1)).await;
        let mut events = Events::open(addr, &v.session.location)
            .await
            .expect("events");
        // (Audio: any of the silent three; a slot's holder keeps it against equals.)
        wait_until("a shown", WAIT, || {
            tags(&v, Kind::Video).contains(&1) && !tags(&v, Kind::Audio).is_empty()
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the first to join is shown: {e}: video {:?} audio {:?}",
                tags_by_mid(&v, Kind::Video),
                tags_by_mid(&v, Kind::Audio)
            )
        });

        c.set_audio_level(-20);
        events
            .until(WAIT, |seen| {
                events_in(seen, "active-speaker")
                    .last()
                    .is_some_and(|e| e["participant"] == "c")
            })
            .await
            .expect("c is the active speaker");
        let video_before = v.count(Kind::Video);
        wait_until("c shown", WAIT, || {
            arrived_since(&v, Kind::Video, video_before, 3) && lately_only(&v, Kind::Audio, 5, 3)
        })
        .await
        .expect("the speaker takes the slots");
        let slots = events.all("slots").pop().expect("slots");
        assert!(
            slots["slots"]
                .as_array()
                .expect("slots")
                .iter()
                .all(|s| s["participant"] == "c"),
            "{slots}"
        );

        // Pinned, b has the video slot though c speaks.
        let pinned = http::request(
            reqwest::Method::PUT,
            &http::url(addr, &format!("{}/pins", v.session.location)),
            &[("Content-Type", "application/json")],
            Some(br#"{"pins":["b"]}"#.to_vec()),
        )
        .await
        .expect("PUT pins");
        assert_eq!(pinned.status, 200, "{}", pinned.body);
        assert_eq!(pinned.body, r#"{"pins":["b"]}"#);
        let video_before = v.count(Kind::Video);
        wait_until("b shown", WAIT, || {
            let recent: Vec<u32> = v
                .received(Kind::Video)
                .iter()
                .skip(video_before)
                .filter_map(|p| p.identity().map(|i| i.tag))
                .collect();
            recent.len() > 10 && recent.iter().rev().take(10).all(|t| *t == 2)
        })
        .await
        .expect("the pinned participant takes the video slot");
        assert!(
            lately_only(&v, Kind::Audio, 5, 3),
            "the audio slot stays with the speaker"
        );
        assert_switches_clean(&v);
        drop((a, b, c, v));
        server.shutdown().await;
    })
    .await;
}

/// A publisher that stops sending is announced `track-muted` for each of its
/// tracks, and `track-unmuted` when it sends again; the viewer's slot shows it
/// again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_without_media_is_muted_and_unmuted() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let a = flow::publish(&server, "mute", publisher(1, "a")).await;
        let v = flow::view(&server, "mute", viewer("v", 1)).await;
        let mut events = Events::open(server.http_addr(), &v.session.location)
            .await
            .expect("events");
        wait_until("a shown and heard", WAIT, || {
            tags(&v, Kind::Video).contains(&1) && tags(&v, Kind::Audio).contains(&1)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: video {:?} audio {:?}",
                tags_by_mid(&v, Kind::Video),
                tags_by_mid(&v, Kind::Audio)
            )
        });
        a.pause();
        let muted = |seen: &str| {
            let kinds: BTreeSet<String> = events_in(seen, "track-muted")
                .iter()
                .filter(|e| e["participant"] == "a")
                .filter_map(|e| e["kind"].as_str().map(String::from))
                .collect();
            kinds == BTreeSet::from(["audio".to_string(), "video".to_string()])
        };
        events.until(WAIT, muted).await.expect("both tracks muted");
        assert!(
            events_in(&events.seen, "track-unmuted").is_empty(),
            "{}",
            events.seen
        );
        let before = v.count(Kind::Video);
        a.resume();
        events
            .until(WAIT, |seen| events_in(seen, "track-unmuted").len() == 2)
            .await
            .expect("both tracks unmuted");
        wait_until("video again", WAIT, || v.count(Kind::Video) > before + 10)
            .await
            .expect("the slot shows it again");
        drop((a, v));
        server.shutdown().await;
    })
    .await;
}

fn token(sub: &str, publish: bool, admin: bool) -> String {
    mint(&Claims {
        name: Some(sub.to_uppercase()),
        publish,
        subscribe: !publish,
        data: true,
        admin,
        ..claims(sub, "api")
    })
}

/// Removing a participant through the room API: its sessions end, the others'
/// events say it left, and its slot goes to the next participant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_participant_frees_its_slot() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(auth_on(Config::for_tests())).await;
        let addr = server.http_addr();
        let mut first = PublisherOptions::new(1);
        first.token = Some(token("alice", true, false));
        let alice = flow::publish(&server, "api", first).await;
        let mut second = PublisherOptions::new(2);
        second.token = Some(token("bob", true, false));
        let bob = flow::publish(&server, "api", second).await;
        let v = flow::view(
            &server,
            "api",
            ViewerOptions {
                token: Some(token("vic", false, false)),
                ..Default::default()
            },
        )
        .await;
        let mut events = Events::open(addr, &v.session.location)
            .await
            .expect("events");
        wait_until("alice shown", WAIT, || tags(&v, Kind::Video).contains(&1))
            .await
            .expect("alice first");
        events
            .until(WAIT, |seen| seen.contains("\"participant\":\"alice\""))
            .await
            .expect("slots name alice");
        let slots = events.all("slots").pop().expect("slots");
        assert_eq!(slots["slots"][1]["name"], "ALICE", "{slots}");

        let admin = token("ops", false, true);
        let removed = http::request_with_token(
            reqwest::Method::DELETE,
            &http::url(addr, "/rooms/api/participants/alice"),
            Some(&admin),
            None,
        )
        .await
        .expect("DELETE");
        assert_eq!(removed.status, 200, "{}", removed.body);
        events
            .until(WAIT, |seen| {
                seen.contains("event: participant-left\ndata: {\"identity\":\"alice\"}")
            })
            .await
            .expect("alice left");
        let before = v.count(Kind::Video);
        wait_until("bob shown", WAIT, || {
            arrived_since(&v, Kind::Video, before, 2)
        })
        .await
        .expect("bob takes the freed slot");
        events
            .until(WAIT, |seen| {
                last_video_participant(seen).as_deref() == Some("bob")
            })
            .await
            .expect("slots say bob");
        assert_switches_clean(&v);
        drop((alice, bob, v));
        server.shutdown().await;
    })
    .await;
}

/// Who the video slot shows, by the last `slots` event.
fn last_video_participant(seen: &str) -> Option<String> {
    let slots = events_in(seen, "slots").pop()?;
    slots["slots"]
        .as_array()?
        .iter()
        .find(|s| s["kind"] == "video")?["participant"]
        .as_str()
        .map(String::from)
}
