//! Simulcast per viewer, end to end: an OBS-style publisher sends three H264
//! layers (`0` the largest), str0m viewers watch over WHEP, and the layer each gets
//! is read from the payloads (every payload names its layer).
//!
//! - The layer extension (`GET`/`POST {session}/layer`) pins a layer, caps the
//!   automatic choice and returns to it; bad requests are problem+json 400/415.
//! - The top layer stops: the viewer falls back to the next, and returns when it
//!   resumes.
//! - Every switch lands on a keyframe of the new layer and the viewer's sequence
//!   numbers run on with no gap.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::flow::{self, start_server, wait_for_media};
use support::http::{self, expect_problem};
use support::media::tag_layer;
use support::shaper::Shaper;
use support::{
    init_logging, wait_until, with_timeout, Codecs, Kind, ObsOptions, ObsPublisher, Viewer,
    ViewerOptions,
};
use switchboard::config::Config;
use switchboard::server::Server;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Layer choice by the viewer's requests and the layers' state alone: without
/// bandwidth estimation every viewer gets the best layer running, so what these
/// tests see does not depend on how loaded the machine is (a starved debug build
/// delays packets, and a delay-based estimate rightly falls).
fn without_estimation() -> Config {
    let mut config = Config::for_tests();
    config.media.viewer_initial_estimate_kbps = 0;
    config
}

/// Keyframes every half second on every layer (the OBS-style publisher ignores
/// PLI, so a switch waits for the next one).
const KEYFRAME_EVERY: Duration = Duration::from_millis(500);

async fn publish(server: &Server, room: &str) -> ObsPublisher {
    let options = ObsOptions::new(7)
        .simulcast()
        .keyframe_every(KEYFRAME_EVERY);
    let publisher = ObsPublisher::start(server.http_addr(), room, options)
        .await
        .expect("simulcast WHIP publish");
    wait_until("publisher connected", Duration::from_secs(5), || {
        publisher.connected()
    })
    .await
    .expect("publisher connects");
    publisher
}

/// A viewer behind a relay with no limit, which counts the RTP packets the
/// server sends it twice (see [`assert_clean_switches`]).
async fn view(server: &Server, room: &str) -> Viewer {
    let relay = std::sync::Arc::new(Shaper::start().expect("relay"));
    let options = ViewerOptions::default().codecs(Codecs::H264).via(relay);
    let viewer = flow::view(server, room, options).await;
    assert_eq!(viewer.session.response.status, 201);
    viewer
}

fn layer_url(viewer: &Viewer) -> String {
    format!("{}/layer", viewer.session.location)
}

async fn get_layers(viewer: &Viewer) -> Value {
    let response = http::request(
        reqwest::Method::GET,
        &http::url(viewer.session.http_addr, &layer_url(viewer)),
        &[],
        None,
    )
    .await
    .expect("GET layer");
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("layer report is JSON")
}

async fn post_layer(viewer: &Viewer, content_type: &str, body: &str) -> http::Response {
    http::post(
        viewer.session.http_addr,
        &layer_url(viewer),
        content_type,
        body.to_string(),
    )
    .await
    .expect("POST layer")
}

/// The layer of the last video packet received, from its payload.
fn latest_layer(viewer: &Viewer) -> Option<u8> {
    viewer
        .received(Kind::Video)
        .iter()
        .rev()
        .find_map(|p| p.identity())
        .map(|id| tag_layer(id.tag))
}

async fn wait_for_layer(viewer: &Viewer, layer: u8, within: Duration) -> Duration {
    let start = Instant::now();
    wait_until(&format!("video of layer {layer}"), within, || {
        latest_layer(viewer) == Some(layer)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: still on layer {:?}", latest_layer(viewer)));
    start.elapsed()
}

/// Every change of layer in what the viewer received starts on the first packet
/// of a keyframe, and (with `gapless`, on a link that loses nothing) the sequence
/// numbers have no gap. Returns the layers in the order they were received.
fn assert_clean_switches(viewer: &Viewer, gapless: bool) -> Vec<u8> {
    // The same packet twice on the wire (the client's stack drops the second).
    if let Some(link) = &viewer.options.via {
        assert_eq!(link.duplicates(), 0, "RTP packets sent to the viewer twice");
    }
    // In sending order (a retransmission arrives late), each packet once.
    let mut received = viewer.received(Kind::Video);
    received.sort_by_key(|p| p.ext_seq);
    received.dedup_by_key(|p| p.ext_seq);
    let mut layers = Vec::new();
    let mut previous_seq: Option<u64> = None;
    for (i, p) in received.iter().enumerate() {
        let id = p.identity().expect("every video payload names itself");
        let layer = tag_layer(id.tag);
        if layers.last() != Some(&layer) {
            // (On a lossy link the keyframe's first packets may be the lost ones.)
            assert!(
                id.keyframe && (id.packet == 0 || !gapless),
                "packet {i} switches to layer {layer} on {id:?}, not on a keyframe's first packet"
            );
            layers.push(layer);
        }
        if let (Some(prev), true) = (previous_seq, gapless) {
            assert_eq!(
                p.ext_seq,
                prev + 1,
                "a gap before packet {i} (layer {layer})"
            );
        }
        previous_seq = Some(p.ext_seq);
    }
    layers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_pins_caps_and_returns_to_automatic_choice_switching_on_keyframes() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(without_estimation()).await;
        let publisher = publish(&server, "pin").await;
        let viewer = view(&server, "pin").await;
        let links = viewer
            .session
            .response
            .headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            links.contains("/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\""),
            "{links}"
        );
        wait_for_media(&viewer, 30, 10, Duration::from_secs(6)).await;
        wait_for_layer(&viewer, 0, Duration::from_secs(3)).await;

        // Three layers, all running, measured, the best one sent.
        let mut report = get_layers(&viewer).await;
        for _ in 0..20 {
            let measured = report["layers"]
                .as_array()
                .is_some_and(|l| l.iter().all(|l| l["bitrate"].as_u64() > Some(0)));
            if measured {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            report = get_layers(&viewer).await;
        }
        let layers = report["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 3, "{report}");
        assert!(layers.iter().all(|l| l["active"] == true), "{report}");
        let bitrate = |rid: &str| {
            layers
                .iter()
                .find(|l| l["encodingId"] == rid)
                .and_then(|l| l["bitrate"].as_u64())
                .unwrap_or(0)
        };
        assert!(
            bitrate("0") > bitrate("1") && bitrate("1") > bitrate("2"),
            "{report}"
        );
        assert_eq!(report["sending"], "0", "{report}");
        assert_eq!(report["preference"], "auto", "{report}");

        // The events stream tells the viewer its layers and the room's viewer count.
        let events_url = http::url(
            viewer.session.http_addr,
            &format!("{}/events", viewer.session.location),
        );
        let mut events = reqwest::get(&events_url).await.expect("event stream");
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(seen.contains("event: viewercount\ndata: {\"viewercount\":1}")
            && seen.contains("event: layers\ndata: ")
            && seen.contains("\"sending\":\"0\""))
        {
            match tokio::time::timeout_at(deadline, events.chunk()).await {
                Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("events: {other:?}; seen {seen:?}"),
            }
        }
        drop(events);

        // Pin the lowest layer: it comes on its next keyframe.
        let pinned = post_layer(&viewer, "application/json", r#"{"encodingId":"2"}"#).await;
        assert_eq!(pinned.status, 200, "{}", pinned.body);
        let answer: Value = serde_json::from_str(&pinned.body).expect("JSON");
        assert_eq!(answer["preference"]["pin"], "2", "{answer}");
        let took = wait_for_layer(&viewer, 2, Duration::from_secs(3)).await;
        println!("pin to layer 2: first packet after {took:?}");

        // Pin by spatial id: 1 is the middle layer.
        let pinned = post_layer(&viewer, "application/json", r#"{"spatialLayerId":1}"#).await;
        assert_eq!(pinned.status, 200, "{}", pinned.body);
        wait_for_layer(&viewer, 1, Duration::from_secs(3)).await;

        // A cap at the middle layer keeps it there even with room for more...
        let capped = post_layer(&viewer, "application/json", r#"{"maxEncodingId":"1"}"#).await;
        assert_eq!(capped.status, 200, "{}", capped.body);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(latest_layer(&viewer), Some(1));
        // ...and automatic choice climbs back to the top (after the estimate held).
        let auto = post_layer(&viewer, "application/json", "{}").await;
        assert_eq!(auto.status, 200, "{}", auto.body);
        let took = wait_for_layer(&viewer, 0, Duration::from_secs(6)).await;
        println!("back to automatic: layer 0 after {took:?}");

        // (A viewer may start on any layer's keyframe, the first picture it can
        // have, and move up from there: what matters is what followed the top.)
        let switches = assert_clean_switches(&viewer, true);
        assert!(
            switches.ends_with(&[0, 2, 1, 0]),
            "layers in the order received: {switches:?}"
        );

        // Requests that cannot be met say why.
        for (content_type, body, status) in [
            ("application/json", r#"{"encodingId":"9"}"#, 400),
            ("application/json", r#"{"temporalLayerId":3}"#, 400),
            (
                "application/json",
                r#"{"temporalLayerId":1,"maxTemporalLayerId":1}"#,
                400,
            ),
            (
                "application/json",
                r#"{"encodingId":"1","maxEncodingId":"2"}"#,
                400,
            ),
            ("application/json", r#"{"spatialLayerId":7}"#, 400),
            ("application/json", r#"{"colour":"blue"}"#, 400),
            (
                "application/json",
                r#"{"mediaId":"nope","encodingId":"1"}"#,
                400,
            ),
            ("application/json", "not json", 400),
            ("application/json", "[1,2]", 400),
            ("text/plain", "{}", 415),
        ] {
            let response = post_layer(&viewer, content_type, body).await;
            let problem = expect_problem(&response, status)
                .unwrap_or_else(|e| panic!("POST {body:?} as {content_type}: {e}"));
            assert!(
                problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{problem}"
            );
        }
        let missing = http::post(
            viewer.session.http_addr,
            "/whep/pin/00000000000000000000000000000000/layer",
            "application/json",
            "{}".to_string(),
        )
        .await
        .expect("POST");
        expect_problem(&missing, 404).expect("an unknown session is 404");

        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_layer_stops_the_viewer_falls_back_and_returns_when_it_resumes() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(without_estimation()).await;
        let publisher = publish(&server, "fallback").await;
        let viewer = view(&server, "fallback").await;
        wait_for_media(&viewer, 30, 10, Duration::from_secs(6)).await;
        wait_for_layer(&viewer, 0, Duration::from_secs(3)).await;

        publisher.pause_layer("0", true);
        let fell_back = wait_for_layer(&viewer, 1, Duration::from_secs(3)).await;
        println!("top layer stopped: layer 1 after {fell_back:?}");
        let report = get_layers(&viewer).await;
        let top = report["layers"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["encodingId"] == "0").cloned())
            .expect("layer 0 listed");
        assert_eq!(top["active"], false, "{report}");

        publisher.pause_layer("0", false);
        let returned = wait_for_layer(&viewer, 0, Duration::from_secs(6)).await;
        println!("top layer resumed: layer 0 after {returned:?}");

        let switches = assert_clean_switches(&viewer, true);
        assert!(
            switches.ends_with(&[0, 1, 0]),
            "layers in the order received: {switches:?}"
        );
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

/// With bandwidth estimation (str0m's TWCC estimate): a viewer behind a link that
/// carries the middle layer but not the top one moves below the top layer and
/// stays there, switching on keyframes. The loopback link here is shaped by a relay
/// (tests/support/shaper.rs): a 350 kbit/s token bucket with a 100 ms queue; the
/// publisher's layers are about 430, 160 and 80 kbit/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_behind_a_narrow_link_gets_a_lower_layer() {
    narrow_link(false).await;
}

/// ...and climbs back once the link widens: the server probes the link (see
/// `router/probe.rs`) at growing intervals, at most 8 s apart, while the viewer is
/// held below the top layer, so the climb waits for the next probe that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_behind_a_narrow_link_climbs_when_it_widens() {
    narrow_link(true).await;
}

async fn narrow_link(climb: bool) {
    init_logging();
    with_timeout(Duration::from_secs(100), async {
        let mut config = Config::for_tests();
        config.media.viewer_initial_estimate_kbps = 2000;
        let server = start_server(config).await;
        let publisher = publish(&server, "narrow").await;
        let shaper = std::sync::Arc::new(Shaper::start().expect("shaper"));
        shaper.set_rate_kbps(Some(350));
        let viewer = flow::view(
            &server,
            "narrow",
            ViewerOptions::default()
                .codecs(Codecs::H264)
                .via(std::sync::Arc::clone(&shaper)),
        )
        .await;
        wait_for_media(&viewer, 30, 10, Duration::from_secs(10)).await;
        // Down from the top layer it may have started on, to one the link carries.
        let start = Instant::now();
        wait_until("a layer below the top", Duration::from_secs(20), || {
            latest_layer(&viewer).is_some_and(|l| l > 0)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; dropped at the bottleneck: {}", shaper.dropped()));
        println!(
            "narrow link: layer {:?} after {:?} ({} packets dropped at the bottleneck), report {}",
            latest_layer(&viewer),
            start.elapsed(),
            shaper.dropped(),
            get_layers(&viewer).await
        );
        // It stays below the top while the link is narrow.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            latest_layer(&viewer).is_some_and(|l| l > 0),
            "back on the top layer through a 350 kbit/s link: {}",
            get_layers(&viewer).await
        );

        if !climb {
            assert_clean_switches(&viewer, false);
            drop((viewer, publisher));
            server.shutdown().await;
            return;
        }
        shaper.set_rate_kbps(None);
        let start = Instant::now();
        if let Err(e) = wait_until("the top layer again", Duration::from_secs(45), || {
            latest_layer(&viewer) == Some(0)
        })
        .await
        {
            panic!("{e}: {}", get_layers(&viewer).await);
        }
        println!(
            "link lifted: layer 0 after {:?}, report {}",
            start.elapsed(),
            get_layers(&viewer).await
        );
        // Loss at the bottleneck leaves gaps NACKs did not fill: only the
        // switches are checked here.
        assert_clean_switches(&viewer, false);
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}

/// Before anything is sent to it, a viewer's layer report is empty (200), automatic
/// choice can be asked for, and a pin cannot (there is no layer to name yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_media_the_report_is_empty_and_only_automatic_choice_is_taken() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(without_estimation()).await;
        let viewer = view(&server, "empty").await;
        let report = get_layers(&viewer).await;
        assert_eq!(report["layers"], serde_json::json!([]), "{report}");
        assert_eq!(report["sending"], Value::Null, "{report}");
        let auto = post_layer(&viewer, "application/json", "{}").await;
        assert_eq!(auto.status, 200, "{}", auto.body);
        let pin = post_layer(&viewer, "application/json", r#"{"encodingId":"q"}"#).await;
        expect_problem(&pin, 400).expect("a pin before media is a 400");
        drop(viewer);
        server.shutdown().await;
    })
    .await;
}

/// VP8 temporal layers, the finer step: a publisher sends three temporal layers
/// (the L1T3 pattern Chromium uses); the viewer caps them at the base layer through
/// the layer API and then lifts the cap. With the cap, only base frames arrive;
/// after it, all of them again. Throughout, the viewer's sequence numbers and VP8
/// picture IDs run on with no gap and TL0PICIDX moves by one per base frame, so
/// its decoder sees neither a lost packet nor a missing picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_caps_the_temporal_layer_and_its_stream_stays_continuous() {
    use support::media::{parse_vp8, temporal_of_frame, Vp8Descriptor};
    use support::PublisherOptions;
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(without_estimation()).await;
        let mut options = PublisherOptions::new(9);
        options.send.descriptor = Vp8Descriptor::Temporal;
        // Keyframes on base-frame positions of the pattern only (every 88th frame,
        // none on request), so the generator's TL0PICIDX stays a true count.
        options.send.keyframe_interval = Some(88);
        options.send.answer_keyframe_requests = false;
        let publisher = flow::publish(&server, "temporal", options).await;
        let relay = std::sync::Arc::new(Shaper::start().expect("relay"));
        let viewer = flow::view(&server, "temporal", ViewerOptions::default().via(relay)).await;
        wait_for_media(&viewer, 30, 10, Duration::from_secs(6)).await;
        let tid_of = |p: &support::media::ReceivedPacket| {
            let id = p.identity().expect("every video payload names itself");
            temporal_of_frame(id.index, id.keyframe).0
        };

        let posted = viewer.received(Kind::Video).len();
        let capped = post_layer(&viewer, "application/json", r#"{"maxTemporalLayerId":0}"#).await;
        assert_eq!(capped.status, 200, "{}", capped.body);
        // A base frame is at most 3 packets and is followed by an upper one: four
        // base packets in a row, since the POST, mean the cap is in force.
        wait_until("the cap taken", Duration::from_secs(3), || {
            let received = viewer.received(Kind::Video);
            let since = &received[posted.min(received.len())..];
            since.len() >= 4 && since.iter().rev().take(4).all(|p| tid_of(p) == 0)
        })
        .await
        .expect("base frames");
        let from = viewer.received(Kind::Video).len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during: Vec<u8> = viewer.received(Kind::Video)[from..]
            .iter()
            .map(tid_of)
            .collect();
        assert!(during.len() > 10, "{during:?}");
        assert!(
            during.iter().all(|t| *t == 0),
            "frames above the base layer: {during:?}"
        );
        let report = get_layers(&viewer).await;
        assert_eq!(report["sendingTemporalLayerId"], 0, "{report}");
        assert_eq!(report["maxTemporalLayerId"], 0, "{report}");

        let lifted = post_layer(&viewer, "application/json", "{}").await;
        assert_eq!(lifted.status, 200, "{}", lifted.body);
        let from = viewer.received(Kind::Video).len();
        wait_until("every temporal layer again", Duration::from_secs(3), || {
            let received = viewer.received(Kind::Video);
            let tids: Vec<u8> = received[from.min(received.len())..]
                .iter()
                .map(tid_of)
                .collect();
            tids.contains(&1) && tids.contains(&2)
        })
        .await
        .expect("layers 1 and 2 back");
        assert_eq!(
            get_layers(&viewer).await["sendingTemporalLayerId"],
            Value::Null
        );

        // The whole stream, in sending order: no gap, no missing picture.
        let link = viewer.options.via.as_ref().expect("relay");
        assert_eq!(link.duplicates(), 0, "RTP packets sent to the viewer twice");
        let mut received = viewer.received(Kind::Video);
        received.sort_by_key(|p| p.ext_seq);
        received.dedup_by_key(|p| p.ext_seq);
        let mut previous: Option<(u64, u16, u8)> = None; // seq, picture id, tl0
        for p in &received {
            let h = parse_vp8(&p.payload).expect("a VP8 descriptor");
            let (pid, _) = h.picture_id.expect("a picture id");
            let tl0 = h.tl0picidx.expect("a TL0PICIDX");
            if let Some((seq, last_pid, last_tl0)) = previous {
                assert_eq!(
                    p.ext_seq,
                    seq + 1,
                    "a gap before sequence number {}",
                    p.ext_seq
                );
                let step = pid.wrapping_sub(last_pid) & 0x7fff;
                if h.start && h.pid == 0 {
                    assert_eq!(step, 1, "picture {last_pid} then {pid}");
                    // TL0PICIDX moves by one on each base frame, and only then.
                    let base = u8::from(tid_of(p) == 0);
                    let tl0_step = tl0.wrapping_sub(last_tl0);
                    assert_eq!(tl0_step, base, "TL0PICIDX {last_tl0} then {tl0}");
                } else {
                    assert_eq!(step, 0, "a picture's packets share its id");
                }
            }
            previous = Some((p.ext_seq, pid, tl0));
        }
        drop((viewer, publisher));
        server.shutdown().await;
    })
    .await;
}
