//! Lip sync: a viewer's RTCP sender reports carry the publisher's own capture clock,
//! as the publisher's sender reports state it, through the server's timestamp rewrite,
//! a keyframe-cache replay and a publisher restart.
//!
//! The test publisher sends each video frame 200 ms after capturing it (an encoder
//! delay, as x264's look-ahead or OBS make) and says so in its sender reports; audio
//! goes out as it is captured. From a viewer's reports, each received packet maps to
//! a capture time; that time minus the publisher's true capture time must be the same
//! constant (the two clocks' offset) for every report, audio and video, within 10 ms.
//! Built from arrival times, video would be 200 ms off audio.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use support::flow::{publish, start_server, view, wait_for_media};
use support::media::Identity;
use support::{
    init_logging, wait_until, with_timeout, Kind, Publisher, PublisherOptions, Viewer,
    ViewerOptions,
};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(60);
const LAG: Duration = Duration::from_millis(200);
const TOLERANCE_MS: f64 = 10.0;
/// A publisher's first reports come about a second in; the server then moves each
/// stream's mapping to them over two seconds (`router::clock::SLEW`).
const SETTLE: Duration = Duration::from_millis(4000);

fn lagging_publisher(tag: u32) -> PublisherOptions {
    let mut options = PublisherOptions::new(tag);
    options.send.video_capture_lag = LAG;
    options
}

/// When each packet a publisher sent was captured, by its identity.
fn capture_times(publisher: &Publisher) -> HashMap<Identity, Instant> {
    let mut times = HashMap::new();
    for packet in publisher
        .sent(Kind::Audio)
        .into_iter()
        .chain(publisher.sent(Kind::Video))
    {
        times.insert(packet.id, packet.captured);
    }
    times
}

/// For every sender report `viewer` received after `since` on a stream of `tag`'s
/// packets: the capture time it gives the last packet received before it, minus that
/// packet's true capture time, in milliseconds (plus one arbitrary constant).
fn report_errors(
    viewer: &Viewer,
    captured: &HashMap<Identity, Instant>,
    tag: u32,
    since: Instant,
) -> Vec<(Kind, f64)> {
    // One pairing of the two clocks, so true capture instants compare with report times.
    let (instant0, system0) = (Instant::now(), SystemTime::now());
    let as_system = |at: Instant| match instant0.checked_duration_since(at) {
        Some(before) => system0 - before,
        None => system0 + at.duration_since(instant0),
    };
    viewer.peer.with_state(|state| {
        let kind_of_mid = |mid: &str| {
            state
                .received
                .iter()
                .find(|p| p.mid.as_deref() == Some(mid))
                .and_then(|p| p.kind)
        };
        let mut errors = Vec::new();
        for (mid, received_at, report) in &state.sender_reports {
            if *received_at < since {
                continue;
            }
            let Some(kind) = kind_of_mid(mid) else {
                continue;
            };
            let Some(packet) = state
                .received
                .iter()
                .rev()
                .filter(|p| p.kind == Some(kind) && p.at <= *received_at)
                .find(|p| p.identity().is_some_and(|id| id.tag == tag))
            else {
                continue;
            };
            let Some(true_capture) = packet.identity().and_then(|id| captured.get(&id)) else {
                continue;
            };
            let rate = match kind {
                Kind::Audio => 48_000.0,
                Kind::Video => 90_000.0,
            };
            let ticks = packet
                .timestamp
                .wrapping_sub(report.rtp_time.numer() as u32) as i32;
            let by_report = report.ntp_time;
            let by_report_ms = match by_report.duration_since(as_system(*true_capture)) {
                Ok(d) => d.as_secs_f64() * 1e3,
                Err(e) => -e.duration().as_secs_f64() * 1e3,
            };
            errors.push((kind, by_report_ms + f64::from(ticks) / rate * 1e3));
        }
        errors
    })
}

/// Waits until `viewer` has `count` reports of each kind after `since`, then checks
/// that they all agree on the publisher's clock.
async fn assert_in_sync(
    what: &str,
    viewer: &Viewer,
    publisher: &Publisher,
    tag: u32,
    since: Instant,
    count: usize,
) {
    let captured_now = || capture_times(publisher);
    wait_until(what, Duration::from_secs(10), || {
        let errors = report_errors(viewer, &captured_now(), tag, since);
        let audio = errors.iter().filter(|(k, _)| *k == Kind::Audio).count();
        let video = errors.iter().filter(|(k, _)| *k == Kind::Video).count();
        audio >= count && video >= count
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let errors = report_errors(viewer, &captured_now(), tag, since);
    let min = errors.iter().map(|(_, e)| *e).fold(f64::MAX, f64::min);
    let max = errors.iter().map(|(_, e)| *e).fold(f64::MIN, f64::max);
    assert!(
        max - min <= TOLERANCE_MS,
        "{what}: the reports disagree by {:.1} ms (over {TOLERANCE_MS}): {errors:?}",
        max - min
    );
    eprintln!(
        "{what}: {} reports agree within {:.2} ms",
        errors.len(),
        max - min
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_reports_carry_the_publishers_capture_clock() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;

        // A first publisher, settled on its own reports before anyone watches.
        let mut first = publish(&server, "sync", lagging_publisher(1)).await;
        tokio::time::sleep(SETTLE).await;
        // A viewer joining now starts with a replay of the keyframe cache.
        let joined = Instant::now();
        let viewer = view(&server, "sync", ViewerOptions::default()).await;
        wait_for_media(&viewer, 30, 30, Duration::from_secs(5)).await;
        assert_in_sync("after a replay", &viewer, &first, 1, joined, 2).await;

        // The publisher restarts: a new session, a new clock, same room.
        first.delete().await.expect("DELETE the first publisher");
        first.close();
        let second = publish(&server, "sync", lagging_publisher(2)).await;
        tokio::time::sleep(SETTLE).await;
        let settled = Instant::now();
        assert_in_sync("after a publisher restart", &viewer, &second, 2, settled, 2).await;

        // A second viewer gets the new publisher's cache replayed.
        let joined = Instant::now();
        let late = view(&server, "sync", ViewerOptions::default()).await;
        wait_for_media(&late, 30, 30, Duration::from_secs(5)).await;
        assert_in_sync(
            "a late viewer after the restart",
            &late,
            &second,
            2,
            joined,
            2,
        )
        .await;

        drop((viewer, late, second, first));
        server.shutdown().await;
    })
    .await;
}
