//! The room API against the real server: list rooms, show one room's
//! participants, remove a participant (its sessions end), close a room. With auth
//! on, only an `admin` token for the room may use it; with auth off, rooms can be
//! looked at but nothing removed.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::auth::{auth_on, claims, mint};
use support::flow::{self, start_server};
use support::http::{self, expect_problem};
use support::{init_logging, with_timeout, PublisherOptions, ViewerOptions};
use switchboard::auth::Claims;
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(40);
const EVENTS_LIMIT: Duration = Duration::from_secs(5);

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> http::Response {
    http::request_with_token(reqwest::Method::GET, &http::url(addr, path), token, None)
        .await
        .expect("GET")
}

async fn delete(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> http::Response {
    http::request_with_token(reqwest::Method::DELETE, &http::url(addr, path), token, None)
        .await
        .expect("DELETE")
}

fn json(response: &http::Response) -> Value {
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("JSON")
}

fn participant_token(sub: &str, publish: bool) -> String {
    mint(&Claims {
        publish,
        subscribe: !publish,
        data: true,
        ..claims(sub, "conf")
    })
}

/// With auth on and an admin token: rooms are listed, a room's participants are
/// shown (never their session keys), a participant is removed (the others' event
/// streams say it left), and a room is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_shown_and_their_participants_removed() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(auth_on(Config::for_tests())).await;
        let addr = server.http_addr();
        let admin = token("*", true);
        let mut publish = PublisherOptions::new(4);
        publish.token = Some(participant_token("alice", true));
        let alice = flow::publish(&server, "conf", publish).await;
        let join = |sub: &str| ViewerOptions {
            token: Some(participant_token(sub, false)),
            ..Default::default()
        };
        let bob = flow::view(&server, "conf", join("bob")).await;
        let carol = flow::view(&server, "conf", join("carol")).await;
        let other_token = mint(&Claims {
            subscribe: true,
            ..claims("dave", "other")
        });
        let other = flow::view(
            &server,
            "other",
            ViewerOptions {
                token: Some(other_token),
                ..Default::default()
            },
        )
        .await;

        let rooms = json(&get(addr, "/rooms", Some(&admin)).await);
        let conf = rooms["rooms"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["room"] == "conf"))
            .cloned()
            .expect("conf listed");
        assert_eq!(conf["participants"], 3, "{rooms}");
        assert_eq!(conf["publishers"], 1, "{rooms}");
        assert_eq!(conf["viewers"], 2, "{rooms}");
        // An admin of one room sees only that room.
        let only = json(&get(addr, "/rooms", Some(&token("other", true))).await);
        assert_eq!(only["rooms"].as_array().map(Vec::len), Some(1), "{only}");

        let shown = json(&get(addr, "/rooms/conf", Some(&admin)).await);
        let identities: Vec<&str> = shown["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .filter_map(|p| p["identity"].as_str())
            .collect();
        assert_eq!(identities, ["alice", "bob", "carol"], "{shown}");
        assert_eq!(shown["publishers"][0]["identity"], "alice", "{shown}");
        for viewer in [&bob, &carol] {
            let key = viewer
                .session
                .location
                .rsplit('/')
                .next()
                .unwrap_or_default();
            assert!(
                !shown.to_string().contains(key),
                "a session key is shown: {shown}"
            );
        }

        // carol's event stream names the others, and says when one leaves.
        let mut events = http::Events::open(addr, &carol.session.location)
            .await
            .expect("events");
        let joined = |seen: &str| {
            ["alice", "bob"].iter().all(|p| {
                seen.contains(&format!(
                    "event: participant-joined\ndata: {{\"identity\":\"{p}\""
                ))
            })
        };
        events.until(EVENTS_LIMIT, joined).await.expect("joined");
        assert!(
            !events.seen.contains("\"identity\":\"carol\""),
            "carol is told about herself: {}",
            events.seen
        );

        let removed = json(&delete(addr, "/rooms/conf/participants/bob", Some(&admin)).await);
        assert_eq!(removed["sessionsEnded"], 1, "{removed}");
        let shown = json(&get(addr, "/rooms/conf", Some(&admin)).await);
        assert!(!shown.to_string().contains("\"bob\""), "{shown}");
        events
            .until(EVENTS_LIMIT, |seen| {
                seen.contains("event: participant-left\ndata: {\"identity\":\"bob\"}")
            })
            .await
            .expect("bob left");
        let missing = delete(addr, "/rooms/conf/participants/bob", Some(&admin)).await;
        expect_problem(&missing, 404).expect("no bob any more");

        let closed = json(&delete(addr, "/rooms/conf", Some(&admin)).await);
        assert_eq!(closed["sessionsEnded"], 2, "{closed}");
        let rooms = json(&get(addr, "/rooms", Some(&admin)).await);
        let names: Vec<&str> = rooms["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .filter_map(|r| r["room"].as_str())
            .collect();
        assert_eq!(names, ["other"], "{rooms}");
        expect_problem(&get(addr, "/rooms/conf", Some(&admin)).await, 404).expect("closed");
        drop((alice, bob, carol, other));
        server.shutdown().await;
    })
    .await;
}

/// With auth off, anyone may look (as anyone may publish), but nobody can remove
/// anyone: that needs auth and an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_rooms_can_be_looked_at_but_nothing_removed() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let viewer = flow::view(
            &server,
            "open",
            ViewerOptions {
                participant: Some("erin".into()),
                ..Default::default()
            },
        )
        .await;
        let rooms = json(&get(addr, "/rooms", None).await);
        assert_eq!(rooms["rooms"][0]["room"], "open", "{rooms}");
        let shown = json(&get(addr, "/rooms/open", None).await);
        assert_eq!(shown["participants"][0]["identity"], "erin", "{shown}");
        expect_problem(
            &delete(addr, "/rooms/open/participants/erin", None).await,
            403,
        )
        .expect("removing needs auth");
        expect_problem(&delete(addr, "/rooms/open", None).await, 403).expect("closing needs auth");
        assert_eq!(server.session_count(), 1, "nothing was removed");
        drop(viewer);
        server.shutdown().await;
    })
    .await;
}

fn token(room: &str, admin: bool) -> String {
    mint(&Claims {
        publish: !admin,
        admin,
        ..claims("ops", room)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_only_an_admin_token_for_the_room_may_use_it() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(auth_on(Config::for_tests())).await;
        let addr = server.http_addr();
        expect_problem(&get(addr, "/rooms", None).await, 401).expect("no token");
        expect_problem(&get(addr, "/rooms", Some(&token("*", false))).await, 403)
            .expect("no admin grant");
        expect_problem(&get(addr, "/rooms/a", Some(&token("b", true))).await, 403)
            .expect("admin of another room");
        expect_problem(
            &delete(addr, "/rooms/a", Some(&token("b", true))).await,
            403,
        )
        .expect("closing another room");
        let listed = json(&get(addr, "/rooms", Some(&token("a", true))).await);
        assert_eq!(listed["rooms"], serde_json::json!([]), "{listed}");
        expect_problem(&get(addr, "/rooms/a", Some(&token("a", true))).await, 404)
            .expect("an admin of an empty room gets 404");
        server.shutdown().await;
    })
    .await;
}
