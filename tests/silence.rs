//! A publisher that goes silent (no DELETE, no close) is reaped after the
//! configured timeout; its viewer stays connected, is told the stream is
//! inactive, and plays the next publisher.

mod support;

use std::time::Duration;

use support::{wait_until, with_timeout, Kind, Publisher, PublisherOptions, Viewer, ViewerOptions};
use switchboard::config::Config;
use switchboard::server::Server;

/// Reads the viewer's event stream until `event` arrives (or the time is up).
async fn next_event(events: &mut reqwest::Response, event: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, events.chunk()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains(&format!("event: {event}")) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_publisher_is_reaped_and_its_viewer_is_told() {
    with_timeout(Duration::from_secs(40), async {
        let mut config = Config::for_tests();
        config.session.reap_timeout = Duration::from_secs(2);
        let server = Server::start(config).await.expect("server starts");
        let addr = server.http_addr();

        let mut first = Publisher::start(addr, "quiet", PublisherOptions::new(1))
            .await
            .expect("publish");
        wait_until("publisher connected", Duration::from_secs(5), || {
            first.connected()
        })
        .await
        .expect("connects");
        let viewer = Viewer::start(addr, "quiet", ViewerOptions::default())
            .await
            .expect("view");
        wait_until("viewer gets video", Duration::from_secs(5), || {
            viewer.count(Kind::Video) > 10
        })
        .await
        .expect("video flows");

        let events_url = format!("http://{addr}{}/events", viewer.session.location);
        let mut events = reqwest::get(&events_url).await.expect("event stream");
        assert_eq!(events.status().as_u16(), 200);
        assert!(
            next_event(&mut events, "active", Duration::from_secs(2)).await,
            "told active first"
        );

        // The publisher's process dies: no DELETE, no DTLS close, nothing more.
        first.close();
        assert!(
            next_event(&mut events, "inactive", Duration::from_secs(10)).await,
            "the viewer is told nothing is playing once the publisher is reaped"
        );
        assert_eq!(server.session_count(), 1, "only the viewer is left");

        // The viewer is still there and plays the next publisher.
        let before = viewer.count(Kind::Video);
        let _second = Publisher::start(addr, "quiet", PublisherOptions::new(2))
            .await
            .expect("publish again");
        assert!(
            next_event(&mut events, "active", Duration::from_secs(5)).await,
            "told active again"
        );
        wait_until(
            "video from the second publisher",
            Duration::from_secs(5),
            || viewer.count(Kind::Video) > before + 10,
        )
        .await
        .expect("the viewer resumes");
        server.shutdown().await;
    })
    .await;
}
