//! Graceful drain. Draining, the server takes no new session (503 with
//! `Retry-After`), says so on `/readyz`, tells viewers through their event
//! streams, and keeps the running sessions until they end. The binary drains on
//! SIGTERM and exits 0 once its sessions are gone; a second signal exits at once.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::flow::{self, start_server};
use support::http::{self, expect_problem};
use support::{init_logging, with_timeout, ViewerOptions};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_sessions_tells_viewers_and_keeps_the_running_ones() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let viewer = flow::view(&server, "drain", ViewerOptions::default()).await;
        let mut events = http::Events::open(addr, &viewer.session.location)
            .await
            .expect("events");

        server.drain();
        let refused = http::post(
            addr,
            "/whep/drain",
            "application/sdp",
            support::viewer_offer(),
        )
        .await
        .expect("POST");
        expect_problem(&refused, 503).expect("no new sessions");
        assert_eq!(refused.header("retry-after"), "5");
        let ready = http::request(reqwest::Method::GET, &http::url(addr, "/readyz"), &[], None)
            .await
            .expect("readyz");
        assert_eq!(ready.status, 503, "{}", ready.body);

        events
            .until(Duration::from_secs(5), |seen| {
                seen.contains("event: draining")
            })
            .await
            .expect("no draining event");
        // The running session goes on until it ends.
        assert_eq!(server.session_count(), 1);
        assert!(!server.drained(Duration::from_millis(300)).await);
        assert_eq!(viewer.delete().await.expect("DELETE"), 200);
        assert!(server.drained(Duration::from_secs(3)).await);
        server.shutdown().await;
    })
    .await;
}

/// The process: SIGTERM starts the drain (new offers 503) and, with nothing left
/// running, the server exits 0 on its own; with a session still running, a second
/// SIGTERM ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_second_signal_exits_at_once() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for sessions_running in [false, true] {
        let port = free_port();
        let mut child = support::server_command(&["--listen", &format!("127.0.0.1:{port}")])
            .env("SWITCHBOARD_SESSION_DRAIN_TIMEOUT", "60")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switchboard");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let ready = wait(Duration::from_secs(10), || async {
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "the server did not start");
        if sessions_running {
            let created = client
                .post(format!("{base}/whep/sig"))
                .header("Content-Type", "application/sdp")
                .body(support::viewer_offer())
                .send()
                .await
                .expect("POST");
            assert_eq!(created.status(), 201);
        }
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        if sessions_running {
            let refused = wait(Duration::from_secs(5), || async {
                client
                    .post(format!("{base}/whep/sig"))
                    .header("Content-Type", "application/sdp")
                    .body(support::viewer_offer())
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 503)
            })
            .await;
            assert!(refused, "new offers are not refused while draining");
            assert!(
                child.try_wait().expect("wait").is_none(),
                "exited with a session running"
            );
            kill(pid, Signal::SIGTERM).expect("second SIGTERM");
        }
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let status = status.expect("the server did not exit");
        assert!(status.success(), "exit status {status}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}

async fn wait<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut done: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
