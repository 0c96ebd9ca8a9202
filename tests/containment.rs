//! A panic costs at most the one session involved: faults injected into a
//! running server (test builds only, feature `fault-injection`) end one
//! session while the others on the same shard keep playing; a panic outside
//! any session restarts the shard in place; a dead shard is noticed.

mod support;

use std::time::Duration;

use support::flow::{publish, start_server, view, wait_for_media};
use support::hostile::{metric, session_id};
use support::{wait_until, with_timeout, Kind, PublisherOptions, Viewer, ViewerOptions};
use switchboard::config::Config;
use switchboard::server::Server;
use switchboard::shard::Fault;

fn key_of(viewer: &Viewer) -> switchboard::peer::PeerKey {
    switchboard::peer::PeerKey::parse(session_id(&viewer.session.location)).expect("session id")
}

fn shard_of(server: &Server, viewer: &Viewer) -> Option<usize> {
    server.session_shard(session_id(&viewer.session.location))
}

/// Views until two viewers share a shard; returns them and that shard.
async fn two_viewers_on_one_shard(server: &Server, room: &str) -> (Viewer, Viewer, usize) {
    let mut viewers: Vec<Viewer> = Vec::new();
    for _ in 0..4 {
        let v = view(server, room, ViewerOptions::default()).await;
        let shard = shard_of(server, &v).expect("registered");
        if let Some(i) = viewers
            .iter()
            .position(|o| shard_of(server, o) == Some(shard))
        {
            let first = viewers.swap_remove(i);
            return (first, v, shard);
        }
        viewers.push(v);
    }
    panic!("no two viewers on one shard out of four (two shards)");
}

/// Waits until `viewer` has received `more` video packets beyond what it has now.
async fn keeps_playing(viewer: &Viewer, more: usize) {
    let now = viewer.count(Kind::Video);
    wait_until("more video", Duration::from_secs(5), || {
        viewer.count(Kind::Video) >= now + more
    })
    .await
    .expect("the other viewer keeps playing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_writing_to_one_viewer_ends_only_that_viewer() {
    support::init_logging();
    with_timeout(Duration::from_secs(60), async {
        let server = start_server(Config::for_tests()).await;
        let _publisher = publish(&server, "write", PublisherOptions::new(1)).await;
        let (victim, other, shard) = two_viewers_on_one_shard(&server, "write").await;
        wait_for_media(&other, 20, 5, Duration::from_secs(5)).await;
        let sessions = server.session_count();
        assert!(server.inject_fault(shard, Fault::PanicOnWrite(key_of(&victim))));
        wait_until("the victim's session ends", Duration::from_secs(5), || {
            shard_of(&server, &victim).is_none()
        })
        .await
        .expect("the session that panicked is ended");
        keeps_playing(&other, 30).await;
        let text = support::hostile::metrics_text(&server).await;
        assert_eq!(
            metric(
                &text,
                "switchboard_panics_contained_total{step=\"session\"}"
            ),
            1.0,
            "{text}"
        );
        assert_eq!(
            server.session_count(),
            sessions - 1,
            "every other session remains"
        );
        // Its client may still DELETE it: 200, as for any session the server ended.
        assert_eq!(victim.delete().await.expect("DELETE answers"), 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_command_ends_only_its_session() {
    support::init_logging();
    with_timeout(Duration::from_secs(60), async {
        let server = start_server(Config::for_tests()).await;
        let _publisher = publish(&server, "cmd", PublisherOptions::new(1)).await;
        let (victim, other, shard) = two_viewers_on_one_shard(&server, "cmd").await;
        wait_for_media(&other, 20, 5, Duration::from_secs(5)).await;
        assert!(server.inject_fault(shard, Fault::PanicInCommand(key_of(&victim))));
        wait_until("the victim's session ends", Duration::from_secs(5), || {
            shard_of(&server, &victim).is_none()
        })
        .await
        .expect("the session charged with the panic is ended");
        keeps_playing(&other, 30).await;
        let text = support::hostile::metrics_text(&server).await;
        assert_eq!(
            metric(
                &text,
                "switchboard_panics_contained_total{step=\"command\"}"
            ),
            1.0,
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_outside_any_session_restarts_the_shard() {
    support::init_logging();
    with_timeout(Duration::from_secs(60), async {
        let server = start_server(Config::for_tests()).await;
        // Keyframes only on request: a viewer of the restarted shard starts only
        // if that shard still knows where the publisher lives.
        let publisher = publish(
            &server,
            "loop",
            PublisherOptions::new(1).keyframe_interval(None),
        )
        .await;
        let publisher_shard = server
            .session_shard(session_id(&publisher.session.location))
            .expect("registered");
        let other_shard = 1 - publisher_shard;
        // A viewer on each shard.
        let a = view(&server, "loop", ViewerOptions::default()).await;
        let b = view(&server, "loop", ViewerOptions::default()).await;
        let (survivor, doomed) = if shard_of(&server, &a) == Some(publisher_shard) {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(shard_of(&server, &doomed), Some(other_shard));
        wait_for_media(&doomed, 10, 5, Duration::from_secs(5)).await;

        assert!(server.inject_fault(other_shard, Fault::PanicInLoop));
        wait_until(
            "the restarted shard's sessions end",
            Duration::from_secs(5),
            || shard_of(&server, &doomed).is_none(),
        )
        .await
        .expect("sessions of the restarted shard are ended");
        keeps_playing(&survivor, 30).await;
        let text = support::hostile::metrics_text(&server).await;
        assert_eq!(
            metric(&text, "switchboard_shard_restarts_total"),
            1.0,
            "{text}"
        );

        // The restarted shard takes offers and plays again.
        let mut fresh = None;
        for _ in 0..3 {
            let v = view(&server, "loop", ViewerOptions::default()).await;
            if shard_of(&server, &v) == Some(other_shard) {
                fresh = Some(v);
                break;
            }
        }
        let fresh = fresh.expect("a new viewer landed on the restarted shard");
        wait_for_media(&fresh, 20, 5, Duration::from_secs(10)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_is_noticed() {
    support::init_logging();
    with_timeout(Duration::from_secs(30), async {
        let server = start_server(Config::for_tests()).await;
        let ready = reqwest::get(format!("http://{}/readyz", server.http_addr()))
            .await
            .expect("readyz answers");
        assert_eq!(ready.status(), 200);
        assert!(server.inject_fault(1, Fault::KillThread));
        let dead = tokio::time::timeout(Duration::from_secs(5), server.shard_failure())
            .await
            .expect("the death is noticed");
        assert_eq!(dead, 1);
        let ready = reqwest::get(format!("http://{}/readyz", server.http_addr()))
            .await
            .expect("readyz answers");
        assert_eq!(ready.status(), 503, "not ready with a dead shard");
    })
    .await;
}

/// The binary exits non-zero when a shard dies, so its supervisor restarts it.
#[test]
fn the_binary_exits_70_when_a_shard_dies() {
    let mut child = support::server_command(&["--listen", "127.0.0.1:0", "--shards", "2"])
        .env("SWITCHBOARD_TEST_KILL_SHARD_AFTER_MS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit after its shard died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(70));
}
