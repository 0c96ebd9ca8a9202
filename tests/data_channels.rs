//! Data channels between the participants of a room, end to end with the in-repo
//! client: alice publishes (WHIP) and watches with a data channel (WHEP), bob
//! watches with one, carol joins with a data channel only. A message reaches every
//! other participant, tagged with its sender's identity, and never its sender
//! (nor is its own media sent back to it);
//! a participant past the rate limit is told why and its channel is closed.

mod support;

use std::time::Duration;

use support::flow::{self, start_server};
use support::{init_logging, wait_until, with_timeout, PublisherOptions, Viewer, ViewerOptions};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(40);

fn participant(name: &str, audio: bool, video: bool) -> ViewerOptions {
    ViewerOptions {
        audio,
        video,
        channel: true,
        participant: Some(name.to_string()),
        ..Default::default()
    }
}

async fn channel_open(viewer: &Viewer) {
    wait_until("the data channel open", Duration::from_secs(10), || {
        viewer.peer.with_state(|s| s.channel_open)
    })
    .await
    .expect("the data channel opens");
}

fn messages(viewer: &Viewer) -> Vec<serde_json::Value> {
    viewer
        .peer
        .data_received()
        .iter()
        .map(|m| serde_json::from_str(m).expect("relayed messages are JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_other_participant_with_its_sender() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        // Two shards: the participants' sessions are spread over both.
        let server = start_server(Config::for_tests()).await;
        let mut publish = PublisherOptions::new(3);
        publish.participant = Some("alice".into());
        let publisher = flow::publish(&server, "chat", publish).await;
        let alice = flow::view(&server, "chat", participant("alice", true, true)).await;
        let bob = flow::view(&server, "chat", participant("bob", true, true)).await;
        let carol = flow::view(&server, "chat", participant("carol", false, false)).await;
        for p in [&alice, &bob, &carol] {
            channel_open(p).await;
        }
        // bob watches alice; alice, whose WHIP session shares her identity, is not
        // sent her own media.
        flow::wait_for_media(&bob, 20, 10, Duration::from_secs(6)).await;
        assert_eq!(
            alice.received(support::Kind::Video).len(),
            0,
            "alice got her own video"
        );
        assert_eq!(
            alice.received(support::Kind::Audio).len(),
            0,
            "alice got her own audio"
        );

        alice.peer.send_data("hello from alice");
        carol.peer.send_data("and from carol");
        wait_until("both messages delivered", Duration::from_secs(5), || {
            bob.peer.data_received().len() >= 2
                && !carol.peer.data_received().is_empty()
                && !alice.peer.data_received().is_empty()
        })
        .await
        .expect("delivered");
        let to_bob = messages(&bob);
        let from: Vec<&str> = to_bob.iter().filter_map(|m| m["from"].as_str()).collect();
        assert!(
            from.contains(&"alice") && from.contains(&"carol"),
            "{to_bob:?}"
        );
        let alices = to_bob
            .iter()
            .find(|m| m["from"] == "alice")
            .expect("alice's");
        assert_eq!(alices["text"], "hello from alice");
        // Nobody gets their own message back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            messages(&alice).iter().all(|m| m["from"] != "alice"),
            "{:?}",
            messages(&alice)
        );
        assert!(
            messages(&carol).iter().all(|m| m["from"] != "carol"),
            "{:?}",
            messages(&carol)
        );
        assert_eq!(messages(&carol).len(), 1, "{:?}", messages(&carol));

        // carol floods: past the limit she is told why, and her channel closes.
        for i in 0..200 {
            carol.peer.send_data(&format!("flood {i}"));
        }
        wait_until("carol's channel closed", Duration::from_secs(5), || {
            carol.peer.with_state(|s| s.channel_closed)
        })
        .await
        .expect("closed for flooding");
        let error = messages(&carol)
            .into_iter()
            .find(|m| m.get("error").is_some())
            .expect("told why");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("per second")),
            "{error}"
        );
        let floods = messages(&bob)
            .iter()
            .filter(|m| m["text"].as_str().is_some_and(|t| t.starts_with("flood")))
            .count();
        assert!((30..=41).contains(&floods), "bob got {floods} of the flood");
        drop((alice, bob, carol, publisher));
        server.shutdown().await;
    })
    .await;
}

/// With auth on, a participant's identity is its token's, and only a token that
/// grants `data` may send: another one is told why and its channel closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_sending_needs_the_data_grant() {
    use support::auth::{auth_on, claims, mint};
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(auth_on(Config::for_tests())).await;
        let token = |sub: &str, data: bool| {
            mint(&switchboard::auth::Claims {
                name: Some(sub.to_uppercase()),
                subscribe: true,
                data,
                ..claims(sub, "chat")
            })
        };
        let join = |sub: &str, data: bool| ViewerOptions {
            audio: false,
            video: false,
            channel: true,
            // Asking for another identity changes nothing: the token's counts.
            participant: Some("someone-else".into()),
            token: Some(token(sub, data)),
            ..Default::default()
        };
        let talker = flow::view(&server, "chat", join("erin", true)).await;
        let listener = flow::view(&server, "chat", join("frank", false)).await;
        channel_open(&talker).await;
        channel_open(&listener).await;
        talker.peer.send_data("from erin");
        wait_until("frank hears erin", Duration::from_secs(5), || {
            !listener.peer.data_received().is_empty()
        })
        .await
        .expect("relayed");
        let heard = messages(&listener);
        assert_eq!(heard[0]["from"], "erin", "{heard:?}");
        assert_eq!(heard[0]["name"], "ERIN", "{heard:?}");

        listener.peer.send_data("from frank");
        wait_until("frank's channel closed", Duration::from_secs(5), || {
            listener.peer.with_state(|s| s.channel_closed)
        })
        .await
        .expect("closed: no data grant");
        assert!(
            messages(&listener)
                .iter()
                .any(|m| m["error"].as_str().is_some_and(|e| e.contains("data"))),
            "{:?}",
            messages(&listener)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(messages(&talker).is_empty(), "{:?}", messages(&talker));
        drop((talker, listener));
        server.shutdown().await;
    })
    .await;
}
