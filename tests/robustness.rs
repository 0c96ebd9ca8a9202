//! No input makes the server panic or hang: junk datagrams on the media ports,
//! truncated and mangled offers on the HTTP side. Afterwards the server still
//! answers a real offer.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use support::rng::Rng;
use switchboard::config::Config;
use switchboard::server::Server;

fn corpus(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sdp-corpus")
        .join(name);
    std::fs::read_to_string(path).expect("corpus offer")
}

async fn post(server: &Server, path: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}{path}", server.http_addr()))
        .header("Content-Type", "application/sdp")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_datagrams_and_mangled_offers_harm_no_one() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let mut rng = Rng::new(0x5eed_cafe_f00d_0001);

    // A real session exists while the junk arrives, so junk meets a live peer's
    // tables (and its ufrag in forged STUN).
    let offer = corpus("obs-libdatachannel-exwebrtc.sdp");
    assert_eq!(
        post(&server, "/whip/junk", offer.clone().into_bytes()).await,
        201
    );

    let socket = UdpSocket::bind("127.0.0.1:0").expect("a local socket");
    for i in 0..3000 {
        let len = rng.below(1400);
        let mut datagram = rng.bytes(len);
        match i % 4 {
            // Looks like STUN: two zero bits and the magic cookie.
            0 if datagram.len() >= 20 => {
                datagram[0] &= 0x01;
                datagram[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            // Looks like RTP/RTCP (version 2) or DTLS (content type 20..=63).
            1 if !datagram.is_empty() => datagram[0] = 0x80 | (datagram[0] & 0x3f),
            2 if !datagram.is_empty() => datagram[0] = 20 + (datagram[0] % 44),
            _ => {}
        }
        for addr in server.media_addrs() {
            let _ = socket.send_to(&datagram, addr);
        }
    }

    let endpoints = ["/whip/mangled", "/whep/mangled"];
    for i in 0..200 {
        let mut body = offer.clone().into_bytes();
        match i % 3 {
            0 => body.truncate(rng.below(body.len())),
            1 => {
                for _ in 0..8 {
                    let at = rng.below(body.len());
                    body[at] = rng.next() as u8;
                }
            }
            _ => {
                let at = rng.below(body.len());
                let junk_len = rng.below(64);
                let junk = rng.bytes(junk_len);
                body.splice(at..at, junk);
            }
        }
        let status = post(&server, endpoints[i % 2], body).await;
        assert!(
            status == 201 || status == 400 || status == 409,
            "mangled offer {i}: status {status}"
        );
    }

    // Still serving: health, and a real offer in a fresh room.
    let health = reqwest::get(format!("http://{}/healthz", server.http_addr()))
        .await
        .expect("health answers");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(post(&server, "/whip/after", offer.into_bytes()).await, 201);
    server.shutdown().await;
}
