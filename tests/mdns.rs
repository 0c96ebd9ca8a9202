//! Offers whose only candidates are mDNS names (`<uuid>.local`): what Chromium sends
//! when the page has no camera or microphone permission (a WHEP viewer, CLIENTS.md).
//! The server cannot resolve such a name and does not try; it must accept the offer
//! and learn the client's address from the client's own connectivity checks (a
//! peer-reflexive candidate). `tests/browser/mdns.mjs` does the same with a real
//! Chromium viewer (in a private network namespace).

mod support;

use std::time::Duration;

use str0m::media::{Direction, MediaKind};
use support::flow::{start_server, wait_for_media};
use support::{
    http, init_logging, wait_until, with_timeout, Codecs, Kind, PendingPeer, Publisher,
    PublisherOptions, Session, Viewer, ViewerOptions,
};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(30);

/// `offer` as Chromium writes it without media permission: every candidate's address
/// replaced by an mDNS name (one per address), and no address in the `c=` lines.
fn mdns_only(offer: &str) -> String {
    let mut names: Vec<(String, String)> = Vec::new();
    let mut out = String::with_capacity(offer.len() + 128);
    for line in offer.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        let ending = &line[bare.len()..];
        if let Some(rest) = bare.strip_prefix("a=candidate:") {
            // foundation component transport priority ADDRESS port typ ...
            let mut fields: Vec<String> = rest.split(' ').map(str::to_string).collect();
            assert!(fields.len() > 5, "a candidate line has an address: {bare}");
            let address = fields[4].clone();
            let name = match names.iter().find(|(a, _)| *a == address) {
                Some((_, n)) => n.clone(),
                None => {
                    let n = format!(
                        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}.local",
                        rand::random::<u32>(),
                        rand::random::<u16>(),
                        rand::random::<u16>() & 0xfff,
                        rand::random::<u16>() & 0xfff,
                        rand::random::<u64>() & 0xffff_ffff_ffff
                    );
                    names.push((address, n.clone()));
                    n
                }
            };
            fields[4] = name;
            out.push_str("a=candidate:");
            out.push_str(&fields.join(" "));
            out.push_str(ending);
        } else if bare.starts_with("c=IN IP4 ") {
            out.push_str("c=IN IP4 0.0.0.0");
            out.push_str(ending);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The candidate lines of `sdp`.
fn candidates(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("a=candidate:"))
        .collect()
}

/// POSTs `pending`'s offer made mDNS-only to `path`; the session and the peer, running.
async fn negotiate_mdns(
    server: &switchboard::server::Server,
    name: &str,
    path: &str,
    mut pending: PendingPeer,
    send: Option<support::SendConfig>,
) -> (support::Peer, Session) {
    let original = pending.offer.clone();
    pending.offer = mdns_only(&original);
    let offer = pending.offer.clone();
    let lines = candidates(&offer);
    assert!(!lines.is_empty(), "the offer keeps its candidates: {offer}");
    for line in &lines {
        let address = line.split(' ').nth(4).unwrap_or("");
        assert!(
            address.ends_with(".local") && address.parse::<std::net::IpAddr>().is_err(),
            "only mDNS names in the offer: {line}"
        );
    }
    assert!(
        !offer.contains("127.0.0.1"),
        "no address of the client anywhere in the offer: {offer}"
    );
    let resp = http::post(server.http_addr(), path, "application/sdp", offer.clone())
        .await
        .expect("the server answers the POST");
    assert_eq!(
        resp.status, 201,
        "an mDNS-only offer is accepted: {}",
        resp.body
    );
    let session = Session::created(server.http_addr(), path, offer, resp).expect("a session");
    let peer = pending
        .accept(name, &session.answer, send)
        .expect("the client takes the answer");
    (peer, session)
}

/// A publisher and a viewer that both offer only `.local` candidates connect, and the
/// viewer receives the publisher's audio and video: the server can only have sent it
/// to the address it learnt from the viewer's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_only_publisher_and_viewer_connect() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;

        let options = PublisherOptions::new(7);
        let pending = PendingPeer::offer_with(
            options.codecs,
            options.dtls,
            &[
                (MediaKind::Audio, Direction::SendOnly),
                (MediaKind::Video, Direction::SendOnly),
            ],
        )
        .expect("a publisher offer");
        let (peer, session) = negotiate_mdns(
            &server,
            "pub7",
            "/whip/mdns",
            pending,
            Some(options.send.clone()),
        )
        .await;
        let publisher = Publisher {
            peer,
            session,
            options,
        };
        wait_until(
            "the mDNS-only publisher connects",
            Duration::from_secs(5),
            || publisher.connected(),
        )
        .await
        .expect("publisher connects by its peer-reflexive address");

        let options = ViewerOptions::default();
        let pending = PendingPeer::offer_with(
            Codecs::Default,
            options.dtls,
            &[
                (MediaKind::Audio, Direction::RecvOnly),
                (MediaKind::Video, Direction::RecvOnly),
            ],
        )
        .expect("a viewer offer");
        let (peer, session) = negotiate_mdns(&server, "viewer", "/whep/mdns", pending, None).await;
        let viewer = Viewer {
            peer,
            session,
            options,
        };
        wait_until(
            "the mDNS-only viewer connects",
            Duration::from_secs(5),
            || viewer.connected(),
        )
        .await
        .expect("viewer connects by its peer-reflexive address");
        // About a second of media: it went publisher -> server -> viewer, both ways
        // over addresses the server learnt from checks alone.
        wait_for_media(&viewer, 40, 40, Duration::from_secs(8)).await;
        assert!(publisher.sent_count(Kind::Video) >= 40);

        assert_eq!(viewer.delete().await, Ok(200));
        assert_eq!(publisher.delete().await, Ok(200));
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

#[test]
fn mdns_only_rewrites_every_candidate() {
    let offer = "v=0\r\nc=IN IP4 127.0.0.1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
a=candidate:2 1 udp 2130706431 127.0.0.1 5001 typ host\r\na=candidate:3 1 udp 1 10.0.0.1 5 typ host\r\n";
    let out = mdns_only(offer);
    let lines = candidates(&out);
    assert_eq!(lines.len(), 3);
    let names: Vec<&str> = lines.iter().filter_map(|l| l.split(' ').nth(4)).collect();
    assert!(names.iter().all(|n| n.ends_with(".local")), "{out}");
    assert_eq!(names[0], names[1], "one name per address");
    assert_ne!(names[0], names[2]);
    assert!(out.contains("c=IN IP4 0.0.0.0\r\n"));
    assert!(lines[0].ends_with(" 5000 typ host"));
}
