//! Every real offer in tests/data/sdp-corpus (see its INDEX.md for where each came
//! from) is posted to the real server, and each answer is checked with Mozilla's
//! SDP parser (webrtc-sdp, the one Firefox uses) against what CLIENTS.md says a
//! good answer looks like.

use std::path::PathBuf;
use std::time::Duration;

use switchboard::config::Config;
use switchboard::server::Server;
use webrtc_sdp::attribute_type::{SdpAttribute, SdpAttributeType};
use webrtc_sdp::media_type::SdpMedia;
use webrtc_sdp::SdpSession;

const FORWARDED: &[&str] = &["OPUS", "VP8", "VP9", "H264", "H265", "AV1", "RTX"];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sdp-corpus")
}

struct Posted {
    status: u16,
    content_type: String,
    location: Option<String>,
    body: String,
}

async fn post(server: &Server, endpoint: &str, room: &str, sdp: &str) -> Posted {
    let url = format!("http://{}/{endpoint}/{room}", server.http_addr());
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body(sdp.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let location = header("location");
    let status = response.status().as_u16();
    let body = response.text().await.expect("a body");
    Posted {
        status,
        content_type,
        location,
        body,
    }
}

fn parse(sdp: &str, what: &str) -> SdpSession {
    webrtc_sdp::parse_sdp(sdp, false)
        .unwrap_or_else(|e| panic!("{what} does not parse: {e}\n{sdp}"))
}

fn mid(m: &SdpMedia) -> Option<String> {
    match m.get_attribute(SdpAttributeType::Mid) {
        Some(SdpAttribute::Mid(mid)) => Some(mid.clone()),
        _ => None,
    }
}

/// The DTLS role as written (`active`, `passive`, `actpass`, `holdconn`).
fn setup(session: &SdpSession, m: &SdpMedia) -> Option<String> {
    let attr = m
        .get_attribute(SdpAttributeType::Setup)
        .or_else(|| session.get_attribute(SdpAttributeType::Setup));
    match attr {
        Some(SdpAttribute::Setup(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn has(session: &SdpSession, m: &SdpMedia, t: SdpAttributeType) -> bool {
    m.get_attribute(t.clone()).is_some() || session.get_attribute(t).is_some()
}

fn direction(m: &SdpMedia) -> &'static str {
    for (t, name) in [
        (SdpAttributeType::Sendonly, "sendonly"),
        (SdpAttributeType::Recvonly, "recvonly"),
        (SdpAttributeType::Inactive, "inactive"),
    ] {
        if m.get_attribute(t).is_some() {
            return name;
        }
    }
    "sendrecv"
}

fn offered_codecs(m: &SdpMedia) -> Vec<String> {
    m.get_attributes_of_type(SdpAttributeType::Rtpmap)
        .into_iter()
        .filter_map(|a| match a {
            SdpAttribute::Rtpmap(r) => Some(r.codec_name.to_ascii_uppercase()),
            _ => None,
        })
        .collect()
}

fn rids(m: &SdpMedia) -> Vec<String> {
    m.get_attributes_of_type(SdpAttributeType::Rid)
        .into_iter()
        .filter_map(|a| match a {
            SdpAttribute::Rid(r) => Some(r.id.clone()),
            _ => None,
        })
        .collect()
}

fn simulcast_ids(m: &SdpMedia, receive: bool) -> Option<Vec<String>> {
    match m.get_attribute(SdpAttributeType::Simulcast) {
        Some(SdpAttribute::Simulcast(s)) => {
            let versions = if receive { &s.receive } else { &s.send };
            Some(
                versions
                    .iter()
                    .flat_map(|v| v.ids.iter().map(|id| id.id.clone()))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// The checks of CLIENTS.md "What a good answer looks like", for one offer/answer pair.
fn check_answer(name: &str, offer: &SdpSession, answer: &SdpSession) {
    assert_eq!(
        answer.media.len(),
        offer.media.len(),
        "{name}: one answer m-line per offered m-line"
    );
    let offer_passive = offer
        .media
        .iter()
        .any(|m| setup(offer, m).as_deref() == Some("passive"));
    let mut accepted = 0;
    for (i, (o, a)) in offer.media.iter().zip(&answer.media).enumerate() {
        assert_eq!(a.get_type(), o.get_type(), "{name}: m-line {i} kind");
        // Media the client sends in a codec we forward must be taken, also when
        // offered as `m=... 0` with a=bundle-only (GStreamer, the WHIP RFC).
        let wanted = matches!(direction(o), "sendonly" | "sendrecv")
            && (o.get_port() != 0 || o.get_attribute(SdpAttributeType::BundleOnly).is_some())
            && offered_codecs(o)
                .iter()
                .any(|c| FORWARDED.contains(&c.as_str()) && c != "RTX");
        if wanted {
            assert_ne!(
                a.get_port(),
                0,
                "{name}: m-line {i} (sent in a codec we forward) was rejected"
            );
        }
        assert_eq!(mid(a), mid(o), "{name}: m-line {i} keeps its mid");
        if a.get_port() == 0 {
            continue; // rejected
        }
        accepted += 1;
        let expected_setup = if offer_passive { "active" } else { "passive" };
        assert_eq!(
            setup(answer, a).as_deref(),
            Some(expected_setup),
            "{name}: m-line {i} DTLS role"
        );
        for t in [
            SdpAttributeType::IceUfrag,
            SdpAttributeType::IcePwd,
            SdpAttributeType::Fingerprint,
        ] {
            assert!(has(answer, a, t.clone()), "{name}: m-line {i} lacks {t}");
        }
        for map in a.get_attributes_of_type(SdpAttributeType::Rtpmap) {
            if let SdpAttribute::Rtpmap(r) = map {
                let codec = r.codec_name.to_ascii_uppercase();
                assert!(
                    FORWARDED.contains(&codec.as_str()),
                    "{name}: m-line {i} answers codec {codec}, which we cannot forward"
                );
            }
        }
        let offered_rids = rids(o);
        if let Some(sent) = simulcast_ids(o, false) {
            let received = simulcast_ids(a, true)
                .unwrap_or_else(|| panic!("{name}: m-line {i} lacks a=simulcast:recv"));
            assert_eq!(
                received, sent,
                "{name}: m-line {i} simulcast:recv has exactly the offered rids"
            );
            assert_eq!(rids(a), offered_rids, "{name}: m-line {i} answers each rid");
        }
    }
    assert!(accepted > 0, "{name}: at least one m-line accepted");
    let candidates: usize = answer
        .media
        .iter()
        .map(|m| m.get_attributes_of_type(SdpAttributeType::Candidate).len())
        .sum();
    assert!(candidates > 0, "{name}: the answer carries a candidate");
}

/// Which endpoint a corpus offer is for: WHIP if it sends anything, else WHEP.
fn endpoint_for(offer: &SdpSession) -> &'static str {
    let sends = offer.media.iter().any(|m| {
        matches!(direction(m), "sendonly" | "sendrecv") && m.get_port() != 0
            || m.get_attribute(SdpAttributeType::BundleOnly).is_some() && direction(m) != "recvonly"
    });
    if sends {
        "whip"
    } else {
        "whep"
    }
}

fn is_data_only(offer: &SdpSession) -> bool {
    offer
        .media
        .iter()
        .all(|m| m.get_type().to_string() == "application")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_offer_gets_a_good_answer_or_a_clear_refusal() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sdp"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus is there");
    // Offers written from CLIENTS.md for clients the corpus lacks, and offers
    // captured here from real clients (see each folder's README).
    let mut more: Vec<PathBuf> = ["../constructed", "../captured"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(corpus_dir().join(dir)).expect("offer folder"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sdp"))
        .collect();
    more.sort();
    assert!(!more.is_empty());
    files.extend(more);
    for (n, path) in files.iter().enumerate() {
        let name = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(path).expect("readable offer");
        let offer = parse(&text, &name);
        let endpoint = endpoint_for(&offer);
        let posted = post(&server, endpoint, &format!("corpus{n}"), &text).await;
        if is_data_only(&offer) {
            // A participant with only a data channel joins with WHEP: answered there
            // with a live SCTP m-line, and refused by WHIP (nothing to publish).
            let joined = post(&server, "whep", &format!("corpus{n}"), &text).await;
            assert_eq!(joined.status, 201, "{name} on whep: {}", joined.body);
            assert!(
                joined
                    .body
                    .lines()
                    .any(|l| l.starts_with("m=application ") && !l.starts_with("m=application 0 ")),
                "{name}: the answer has no data channel: {}",
                joined.body
            );
            assert_eq!(
                posted.status, 400,
                "{name}: a data-channel-only offer cannot publish"
            );
            assert!(
                posted.content_type.starts_with("application/problem+json"),
                "{name}"
            );
            assert!(
                posted.body.contains("no audio or video"),
                "{name}: {}",
                posted.body
            );
            continue;
        }
        assert_eq!(posted.status, 201, "{name} on {endpoint}: {}", posted.body);
        assert_eq!(posted.content_type, "application/sdp", "{name}");
        let location = posted.location.unwrap_or_default();
        assert!(
            location.starts_with(&format!("/{endpoint}/corpus{n}/")),
            "{name}: Location {location}"
        );
        let answer = parse(&posted.body, &format!("answer to {name}"));
        check_answer(&name, &offer, &answer);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_setup_passive_gets_setup_active() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let text = std::fs::read_to_string(corpus_dir().join("obs-libdatachannel-exwebrtc.sdp"))
        .expect("offer");
    let passive = text.replace("a=setup:actpass", "a=setup:passive");
    assert_ne!(passive, text);
    let posted = post(&server, "whip", "passive", &passive).await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    check_answer(
        "passive",
        &parse(&passive, "offer"),
        &parse(&posted.body, "answer"),
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playback_offer_on_whip_is_refused_with_the_reason() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let text = std::fs::read_to_string(corpus_dir().join("chrome-millicast-recvonly-mdns.sdp"))
        .expect("offer");
    let posted = post(&server, "whip", "wrongway", &text).await;
    assert_eq!(posted.status, 400);
    assert!(posted.body.contains("sendonly"), "{}", posted.body);
    server.shutdown().await;
}

/// The first codec of each video m-line of an answer.
fn first_video_codecs(answer: &SdpSession) -> Vec<String> {
    answer
        .media
        .iter()
        .filter(|m| m.get_type().to_string() == "video" && m.get_port() != 0)
        .filter_map(|m| {
            m.get_attributes_of_type(SdpAttributeType::Rtpmap)
                .into_iter()
                .find_map(|a| match a {
                    SdpAttribute::Rtpmap(r) => Some(r.codec_name.to_ascii_uppercase()),
                    _ => None,
                })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_answer_leads_with_the_codec_the_publisher_sends() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let viewer_offer =
        std::fs::read_to_string(corpus_dir().join("chrome-millicast-recvonly-mdns.sdp"))
            .expect("offer");
    // Without a publisher, our own preference (VP8) leads.
    let before = post(&server, "whep", "lead", &viewer_offer).await;
    assert_eq!(before.status, 201, "{}", before.body);
    assert!(first_video_codecs(&parse(&before.body, "answer"))
        .iter()
        .all(|c| c == "VP8"));
    // OBS publishes H264: a viewer's answer now lists H264 first.
    let obs = std::fs::read_to_string(corpus_dir().join("obs-libdatachannel-exwebrtc.sdp"))
        .expect("offer");
    let published = post(&server, "whip", "lead", &obs).await;
    assert_eq!(published.status, 201, "{}", published.body);
    let after = post(&server, "whep", "lead", &viewer_offer).await;
    assert_eq!(after.status, 201, "{}", after.body);
    let firsts = first_video_codecs(&parse(&after.body, "answer"));
    assert!(!firsts.is_empty());
    assert!(firsts.iter().all(|c| c == "H264"), "{firsts:?}");
    server.shutdown().await;
}
