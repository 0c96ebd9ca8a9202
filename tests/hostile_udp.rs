//! Hostile datagrams on the media ports: the STUN family that once stopped a
//! shard, forged checks from many source ports, and what must still work
//! afterwards (publishing and playing on every shard, reaping on schedule).

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind};
use support::flow::{publish, start_server, view, wait_for_media};
use support::hostile::{answer_ufrag, forged_check, metric, metric_sum, session_id, stun_family};
use support::{wait_until, with_timeout, Codecs, PublisherOptions, ViewerOptions};
use switchboard::config::Config;
use switchboard::server::Server;

/// POSTs a publisher offer that will never connect; returns (session id, our ufrag).
async fn unconnected_publisher(server: &Server, room: &str) -> (String, String) {
    let offer = support::publisher_offer();
    let resp = support::http::post(
        server.http_addr(),
        &format!("/whip/{room}"),
        "application/sdp",
        offer,
    )
    .await
    .expect("POST answers");
    assert_eq!(resp.status, 201, "{}", resp.body);
    let ufrag = answer_ufrag(&resp.body).expect("answer has a ufrag");
    (session_id(resp.header("location")).to_string(), ufrag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stun_family_stops_no_shard() {
    support::init_logging();
    with_timeout(Duration::from_secs(60), async {
        let server = start_server(Config::for_tests()).await;
        // A live session's ufrag, so part of the family names a real session.
        let (_, ufrag) = unconnected_publisher(&server, "bait").await;
        let family = stun_family(&ufrag);
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // Sent in chunks, each read and dropped before the next: a slow machine
        // must not lose datagrams in a full kernel buffer before a shard reads them.
        const CHUNK: usize = 32;
        let mut sent = 0usize;
        for _round in 0..3 {
            for port in server.media_addrs() {
                for chunk in family.chunks(CHUNK) {
                    for datagram in chunk {
                        // Loopback: a full socket buffer is the only way this fails.
                        let _ = socket.send_to(datagram, port);
                    }
                    sent += chunk.len();
                    let expected = sent as f64;
                    // Every datagram is looked at and dropped (none reaches a session).
                    wait_until(
                        "a chunk of the family is read",
                        Duration::from_secs(10),
                        || {
                            let text = futures_block(support::hostile::metrics_text(&server));
                            metric_sum(&text, "switchboard_udp_datagrams_dropped_total") >= expected
                        },
                    )
                    .await
                    .expect("the shards read and dropped every datagram of the family");
                }
            }
        }

        // Then: publish and play on every shard (sessions go round-robin).
        let mut shards_used = std::collections::BTreeSet::new();
        let mut kept = Vec::new();
        for (i, room) in ["one", "two"].iter().enumerate() {
            let publisher = publish(&server, room, PublisherOptions::new(i as u32 + 1)).await;
            let viewer = view(&server, room, ViewerOptions::default()).await;
            wait_for_media(&viewer, 20, 10, Duration::from_secs(10)).await;
            for location in [&publisher.session.location, &viewer.session.location] {
                let shard = server
                    .session_shard(session_id(location))
                    .expect("session is registered");
                shards_used.insert(shard);
            }
            kept.push((publisher, viewer));
        }
        assert_eq!(
            shards_used.len(),
            2,
            "sessions landed on every shard: {shards_used:?}"
        );
        let text = support::hostile::metrics_text(&server).await;
        assert_eq!(
            metric_sum(&text, "switchboard_panics_contained_total"),
            0.0,
            "no panic at all:\n{text}"
        );
    })
    .await;
}

/// Blocks on a future from inside `wait_until`'s synchronous condition.
fn futures_block<F: std::future::Future>(fut: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_checks_from_many_ports_grow_nothing_and_keep_nothing_alive() {
    support::init_logging();
    with_timeout(Duration::from_secs(60), async {
        let mut config = Config::for_tests();
        config.session.reap_timeout = Duration::from_secs(3);
        let server = start_server(config).await;
        let (session, ufrag) = unconnected_publisher(&server, "forged").await;
        let shard = server.session_shard(&session).expect("registered");
        let port = server.media_addrs()[shard];
        let username = format!("{ufrag}:attacker");
        let sockets: Vec<UdpSocket> = (0..200)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let started = Instant::now();
        let mut reaped_at = None;
        // Keep forging well past the reap timeout: the session must go anyway.
        while started.elapsed() < Duration::from_secs(7) {
            for socket in &sockets {
                let _ = socket.send_to(&forged_check(username.as_bytes()), port);
            }
            if reaped_at.is_none() && server.session_shard(&session).is_none() {
                reaped_at = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let reaped_at = reaped_at.expect("the session was reaped despite the forged checks");
        assert!(
            reaped_at < Duration::from_secs(6),
            "reaped on schedule (3 s timeout, 1 s housekeeping): {reaped_at:?}"
        );
        // Housekeeping publishes the table sizes every second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let text = support::hostile::metrics_text(&server).await;
        assert_eq!(
            metric_sum(&text, "switchboard_media_routes{"),
            0.0,
            "no address was bound, no ufrag is left:\n{text}"
        );
        let rejected = metric(
            &text,
            "switchboard_udp_datagrams_dropped_total{reason=\"stun_rejected\"}",
        );
        let unknown = metric(
            &text,
            "switchboard_udp_datagrams_dropped_total{reason=\"unknown_ufrag\"}",
        );
        assert!(
            rejected >= 200.0 && unknown > 0.0,
            "forged checks were refused by integrity while the session lived, \
             then by ufrag: rejected {rejected}, unknown {unknown}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connected_viewer_is_kept_alive_by_authenticated_checks() {
    support::init_logging();
    with_timeout(Duration::from_secs(40), async {
        let mut config = Config::for_tests();
        // Above the ~3 s between str0m's own checks on the selected pair, whose
        // authenticated responses are this viewer's proof of life.
        config.session.reap_timeout = Duration::from_secs(4);
        let server = start_server(config).await;
        // No publisher: nothing but ICE consent checks flows for this viewer.
        let viewer = view(&server, "idle", ViewerOptions::default()).await;
        let id = session_id(&viewer.session.location).to_string();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            server.session_shard(&id).is_some(),
            "a connected viewer answering checks outlives the reap timeout"
        );
        assert!(viewer.connected());
        let text = support::hostile::metrics_text(&server).await;
        assert!(
            metric_sum(&text, "switchboard_media_routes{") >= 2.0,
            "its address and ufrag are routed:\n{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_aiming_checks_at_many_addresses_is_refused() {
    with_timeout(Duration::from_secs(30), async {
        let server = start_server(Config::for_tests()).await;
        let mut rtc = support::peer::build_rtc(Codecs::Default);
        let offer = support::offer_sdp(&mut rtc, &[(MediaKind::Video, Direction::SendOnly)], false);
        // A full ICE agent checks every candidate: 65 of them, all on loopback.
        let extra: String = (0..65)
            .map(|i| {
                format!(
                    "a=candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host\r\n",
                    20000 + i
                )
            })
            .collect();
        let offer = offer.replacen("a=mid:", &format!("{extra}a=mid:"), 1);
        let resp = support::http::post(server.http_addr(), "/whip/many", "application/sdp", offer)
            .await
            .expect("POST answers");
        assert_eq!(resp.status, 400, "{}", resp.body);
        assert!(resp.body.contains("ICE candidates"), "{}", resp.body);
    })
    .await;
}
