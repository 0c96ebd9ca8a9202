//! The HTTP surface of WHIP/WHEP: success headers, CORS, and every error as an
//! RFC 9457 problem (`application/problem+json` with status, title and detail).

mod support;

use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind};
use str0m::Rtc;
use support::http::{self, expect_problem};
use support::{auth, flow, init_logging, offer_sdp, wait_until, with_timeout};
use switchboard::config::Config;
use switchboard::server::Server;

const TEST_LIMIT: Duration = Duration::from_secs(30);

fn lower_detail(problem: &serde_json::Value) -> String {
    problem["detail"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

async fn server() -> Server {
    flow::start_server(Config::for_tests()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_success_headers() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        let addr = server.http_addr();
        for (path, offer) in [
            ("/whip/headers", support::publisher_offer()),
            ("/whep/headers", support::viewer_offer()),
        ] {
            let resp = http::request(
                reqwest::Method::POST,
                &http::url(addr, path),
                &[
                    ("Content-Type", "application/sdp"),
                    ("Origin", "http://127.0.0.1:9"),
                ],
                Some(offer.into_bytes()),
            )
            .await
            .expect("POST");
            assert_eq!(resp.status, 201, "{path}: {:?}", resp.body);
            let location = resp.header("location");
            assert!(
                location.starts_with(&format!("{path}/")) && location.len() > path.len() + 1,
                "{path}: Location {location:?}"
            );
            assert!(resp.has_header("etag"), "{path}: no ETag");
            assert!(
                resp.header("content-type").starts_with("application/sdp"),
                "{path}: content-type {:?}",
                resp.header("content-type")
            );
            assert!(
                str0m::change::SdpAnswer::from_sdp_string(&resp.body).is_ok(),
                "{path}: the answer does not parse: {:?}",
                resp.body
            );
            assert_eq!(resp.header("access-control-allow-origin"), "*", "{path}");
            let exposed = resp.header("access-control-expose-headers").to_lowercase();
            assert!(
                exposed.contains("location") || exposed == "*",
                "{path}: Location not exposed to scripts: {exposed:?}"
            );

            let deleted = http::delete(addr, location).await.expect("DELETE");
            assert_eq!(deleted.status, 200, "{path}: DELETE {location}");
            let again = http::delete(addr, location).await.expect("DELETE again");
            expect_problem(&again, 404).expect("second DELETE is 404");
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_advertises_sdp() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        for path in ["/whip/room", "/whep/room"] {
            let resp = http::preflight(server.http_addr(), path)
                .await
                .expect("OPTIONS");
            assert!(
                resp.status == 204 || resp.status == 200,
                "OPTIONS {path}: status {}",
                resp.status
            );
            assert!(
                resp.header("accept-post").contains("application/sdp"),
                "OPTIONS {path}: Accept-Post {:?}",
                resp.header("accept-post")
            );
            assert!(
                resp.has_header("access-control-allow-origin"),
                "OPTIONS {path}: no Access-Control-Allow-Origin"
            );
            let methods = resp.header("access-control-allow-methods").to_uppercase();
            assert!(
                methods.contains("POST") || methods == "*",
                "OPTIONS {path}: Access-Control-Allow-Methods {methods:?}"
            );
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        let addr = server.http_addr();
        for (path, offer) in [
            ("/whip/ct", support::publisher_offer()),
            ("/whep/ct", support::viewer_offer()),
        ] {
            for ct in ["text/plain", "application/json"] {
                let resp = http::post(addr, path, ct, offer.clone())
                    .await
                    .expect("POST");
                expect_problem(&resp, 415).unwrap_or_else(|e| panic!("POST {path} as {ct}: {e}"));
            }
            let resp = http::request(
                reqwest::Method::POST,
                &http::url(addr, path),
                &[],
                Some(offer.clone().into_bytes()),
            )
            .await
            .expect("POST");
            expect_problem(&resp, 415)
                .unwrap_or_else(|e| panic!("POST {path} without content type: {e}"));
        }
        assert_eq!(server.session_count(), 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_sdp_is_400() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        let addr = server.http_addr();
        let bodies: [&[u8]; 4] = [
            b"this is not sdp",
            b"",
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video",
            &[0xff, 0xfe, 0x00, 0x01, 0x80],
        ];
        for path in ["/whip/bad", "/whep/bad"] {
            for body in bodies {
                let resp = http::post(addr, path, "application/sdp", body.to_vec())
                    .await
                    .expect("POST");
                expect_problem(&resp, 400)
                    .unwrap_or_else(|e| panic!("POST {path} with {body:?}: {e}"));
            }
        }
        assert_eq!(server.session_count(), 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_without_media_is_400_naming_it() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        let mut rtc = support::peer::build_rtc(support::Codecs::Default);
        let offer = offer_sdp(&mut rtc, &[], true);
        assert!(offer.contains("m=application"), "{offer}");
        let resp = http::post(server.http_addr(), "/whip/dc", "application/sdp", offer)
            .await
            .expect("POST");
        let problem = expect_problem(&resp, 400).expect("data channel only offer");
        let detail = lower_detail(&problem);
        assert!(
            ["audio", "video", "media"]
                .iter()
                .any(|w| detail.contains(w)),
            "the detail should say that audio/video is missing: {detail:?}"
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_without_usable_codec_is_400_naming_it() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        // PCMU only: nothing the server forwards.
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_pcmu(true, false)
            .build(Instant::now());
        let offer = offer_sdp(&mut rtc, &[(MediaKind::Audio, Direction::SendOnly)], false);
        assert!(offer.contains("PCMU"), "{offer}");
        let resp = http::post(server.http_addr(), "/whip/codec", "application/sdp", offer)
            .await
            .expect("POST");
        let problem = expect_problem(&resp, 400).expect("PCMU only offer");
        let detail = lower_detail(&problem);
        assert!(
            ["codec", "opus", "pcmu"].iter().any(|w| detail.contains(w)),
            "the detail should name the codec problem: {detail:?}"
        );
        assert_eq!(server.session_count(), 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_is_404() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        for path in [
            "/whip/room/no-such-session",
            "/whep/room/no-such-session",
            "/whip/never-used-room/abc",
        ] {
            let resp = http::delete(server.http_addr(), path)
                .await
                .expect("DELETE");
            expect_problem(&resp, 404).unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_is_409_and_a_participant_publishing_again_replaces_itself() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = auth::auth_on(Config::for_tests());
        config.session.max_publishers_per_room = 2;
        let server = flow::start_server(config).await;
        let addr = server.http_addr();
        let token = |sub: &str| {
            auth::mint(&switchboard::auth::Claims {
                publish: true,
                admin: sub == "ops",
                ..auth::claims(sub, "*")
            })
        };
        let post = |sub: &str, path: &'static str| {
            let token = token(sub);
            async move {
                http::request_with_token(
                    reqwest::Method::POST,
                    &http::url(addr, path),
                    Some(&token),
                    Some(("application/sdp", support::publisher_offer().into_bytes())),
                )
                .await
                .expect("POST")
            }
        };
        let alice = post("alice", "/whip/busy").await;
        assert_eq!(alice.status, 201, "{:?}", alice.body);
        let bob = post("bob", "/whip/busy").await;
        assert_eq!(bob.status, 201, "{:?}", bob.body);
        let carol = post("carol", "/whip/busy").await;
        expect_problem(&carol, 409).expect("a third publisher in a room of two");
        // Alice again (a reconnect, her token): the new session replaces the old one.
        let again = post("alice", "/whip/busy").await;
        assert_eq!(again.status, 201, "{:?}", again.body);
        // Her old session ends: two sessions are left, Bob's and her new one,
        // and the room lists them in the order they joined.
        wait_until("alice's old session ended", Duration::from_secs(5), || {
            server.session_count() == 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: sessions {}", server.session_count()));
        let shown = http::request_with_token(
            reqwest::Method::GET,
            &http::url(addr, "/rooms/busy"),
            Some(&token("ops")),
            None,
        )
        .await
        .expect("GET");
        let shown: serde_json::Value = serde_json::from_str(&shown.body).expect("json");
        let publishers: Vec<&str> = shown["publishers"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["identity"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(publishers, ["bob", "alice"], "{shown}");
        // Another room is free.
        let other = post("carol", "/whip/not-busy").await;
        assert_eq!(other.status, 201, "{:?}", other.body);
        server.shutdown().await;
    })
    .await;
}

/// Without auth, `?participant=` is only a claim: it cannot end somebody's
/// publishing session. A second WHIP session of that identity is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_identity_cannot_replace_a_publisher() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = server().await;
        let addr = server.http_addr();
        let post = || {
            http::post(
                addr,
                "/whip/claimed?participant=alice",
                "application/sdp",
                support::publisher_offer(),
            )
        };
        let first = post().await.expect("POST");
        assert_eq!(first.status, 201, "{:?}", first.body);
        let second = post().await.expect("POST");
        expect_problem(&second, 409).expect("alice publishes already");
        assert!(second.body.contains("already publishes"), "{}", second.body);
        assert_eq!(server.session_count(), 1);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let config = Config::for_tests();
        let limit = config.http.max_body_bytes;
        let server = Server::start(config).await.expect("server starts");
        // A valid offer padded past the limit with extra attribute lines.
        let mut big = support::publisher_offer();
        while big.len() <= limit {
            big.push_str("a=x-padding:0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
        }
        for (path, body) in [
            ("/whip/big", big.clone().into_bytes()),
            ("/whep/big", vec![b'v'; 1024 * 1024]),
            ("/whip/big", vec![b'v'; 1024 * 1024]),
        ] {
            let resp = http::post(server.http_addr(), path, "application/sdp", body)
                .await
                .expect("POST");
            expect_problem(&resp, 413).unwrap_or_else(|e| panic!("POST {path} too big: {e}"));
        }
        assert_eq!(server.session_count(), 0);
        server.shutdown().await;
    })
    .await;
}
