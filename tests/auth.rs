//! Bearer tokens on WHIP and WHEP offers, against the real server with auth on:
//! no token or a bad one is a 401 with a bearer challenge, a good token for
//! another room or without the grant is a 403 (both problem+json), and a token
//! that grants the offer gets it answered. Tokens are minted by the same code
//! `switchboard token` uses.

mod support;

use std::time::Duration;

use support::flow;
use support::http::{self, expect_problem};
use support::{init_logging, with_timeout};
use switchboard::auth::{expiry_in, mint_hs256, Claims};
use switchboard::config::Config;

const SECRET: &str = "a test secret of at least 32 bytes!";
const TEST_LIMIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    let mut config = Config::for_tests();
    config.auth.enabled = true;
    config.auth.hs256_secret = SECRET.into();
    config
}

fn token(room: &str, publish: bool, subscribe: bool, ttl_secs: i64) -> String {
    let exp = if ttl_secs >= 0 {
        expiry_in(Duration::from_secs(ttl_secs as u64))
    } else {
        expiry_in(Duration::ZERO).saturating_sub(ttl_secs.unsigned_abs())
    };
    let claims = Claims {
        sub: "alice".into(),
        name: Some("Alice".into()),
        room: room.into(),
        publish,
        subscribe,
        data: false,
        admin: false,
        exp,
    };
    mint_hs256(SECRET, &claims).expect("mint")
}

async fn offer(
    server: &switchboard::server::Server,
    path: &str,
    body: String,
    authorization: Option<&str>,
) -> http::Response {
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    http::request(
        reqwest::Method::POST,
        &http::url(server.http_addr(), path),
        &headers,
        Some(body.into_bytes()),
    )
    .await
    .expect("POST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_need_a_token_that_grants_them() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(config()).await;
        let publish = token("standup", true, false, 3600);
        let watch = token("team-*", false, true, 3600);
        let expired = token("standup", true, true, -3600);
        let forged = mint_hs256(
            "someone else's secret, 32 bytes long",
            &Claims {
                sub: "mallory".into(),
                name: None,
                room: "*".into(),
                publish: true,
                subscribe: true,
                data: true,
                admin: true,
                exp: expiry_in(Duration::from_secs(3600)),
            },
        )
        .expect("mint");

        let unauthenticated = [
            ("/whip/standup", None, "no token"),
            (
                "/whip/standup",
                Some("Basic YWxpY2U6cHc=".to_string()),
                "not bearer",
            ),
            (
                "/whip/standup",
                Some(format!("Bearer {expired}")),
                "expired",
            ),
            ("/whip/standup", Some(format!("Bearer {forged}")), "forged"),
            ("/whep/standup", Some("Bearer x.y.z".to_string()), "garbage"),
        ];
        for (path, authorization, what) in unauthenticated {
            let body = if path.starts_with("/whip") {
                support::publisher_offer()
            } else {
                support::viewer_offer()
            };
            let response = offer(&server, path, body, authorization.as_deref()).await;
            let problem = expect_problem(&response, 401).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                response.header("www-authenticate").starts_with("Bearer"),
                "{what}: {:?}",
                response.header("www-authenticate")
            );
            assert!(
                problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{what}"
            );
        }

        let forbidden = [
            ("/whip/other", format!("Bearer {publish}"), "another room"),
            (
                "/whep/standup",
                format!("Bearer {publish}"),
                "no subscribe grant",
            ),
            (
                "/whip/team-a",
                format!("Bearer {watch}"),
                "no publish grant",
            ),
            (
                "/whep/teams",
                format!("Bearer {watch}"),
                "outside the pattern",
            ),
        ];
        for (path, authorization, what) in forbidden {
            let body = if path.starts_with("/whip") {
                support::publisher_offer()
            } else {
                support::viewer_offer()
            };
            let response = offer(&server, path, body, Some(&authorization)).await;
            expect_problem(&response, 403).unwrap_or_else(|e| panic!("{what}: {e}"));
        }

        let published = offer(
            &server,
            "/whip/standup",
            support::publisher_offer(),
            Some(&format!("Bearer {publish}")),
        )
        .await;
        assert_eq!(published.status, 201, "{}", published.body);
        let watched = offer(
            &server,
            "/whep/team-a",
            support::viewer_offer(),
            Some(&format!("bearer {watch}")),
        )
        .await;
        assert_eq!(watched.status, 201, "{}", watched.body);
        server.shutdown().await;
    })
    .await;
}

/// A token that grants only `data` joins with a data channel alone; a token whose
/// identity has control characters is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_only_token_joins_with_a_data_channel_alone() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(config()).await;
        let mint = |sub: &str| {
            mint_hs256(
                SECRET,
                &Claims {
                    sub: sub.into(),
                    name: None,
                    room: "chat".into(),
                    publish: false,
                    subscribe: false,
                    data: true,
                    admin: false,
                    exp: expiry_in(Duration::from_secs(600)),
                },
            )
            .expect("mint")
        };
        let data_only = || {
            let mut rtc = support::peer::build_rtc(support::Codecs::Default);
            support::offer_sdp(&mut rtc, &[], true)
        };
        let bearer = format!("Bearer {}", mint("gina"));
        let joined = offer(&server, "/whep/chat", data_only(), Some(&bearer)).await;
        assert_eq!(joined.status, 201, "{}", joined.body);
        let watching = offer(
            &server,
            "/whep/chat",
            support::viewer_offer(),
            Some(&bearer),
        )
        .await;
        let problem = expect_problem(&watching, 403).expect("no subscribe grant");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("data channel only")),
            "{problem}"
        );
        let odd = format!("Bearer {}", mint("gina\nadmin"));
        expect_problem(
            &offer(&server, "/whep/chat", data_only(), Some(&odd)).await,
            401,
        )
        .expect("a control character in sub");
        server.shutdown().await;
    })
    .await;
}

/// Auth is off only when configured so, and a server with auth on refuses to
/// start without a usable key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_on_needs_a_usable_key() {
    init_logging();
    let mut short = config();
    short.auth.hs256_secret = "too short".into();
    assert!(switchboard::server::Server::start(short).await.is_err());
    let mut missing = config();
    missing.auth.hs256_secret.clear();
    missing.auth.public_key_files = vec!["/nonexistent/key.pem".into()];
    let err = switchboard::server::Server::start(missing)
        .await
        .err()
        .expect("a missing key file");
    assert!(err.to_string().contains("auth.public_key_files"), "{err}");
    assert!(
        !Config::default().auth.enabled,
        "off by default, for local use"
    );
}
