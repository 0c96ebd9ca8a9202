//! `/metrics` after real sessions: the counters move, the output passes
//! `promtool check metrics`, and a real Prometheus server scraping the server
//! answers every query of the Grafana dashboard (deploy/grafana/dashboards) with
//! a series, so the dashboard cannot drift from the metrics.
//!
//! promtool and prometheus come from Debian's `prometheus` package. Without them
//! these tests say so and pass, unless SWITCHBOARD_REQUIRE_PROMETHEUS=1 (CI).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::flow::{self, start_server};
use support::hostile::metrics_text;
use support::{init_logging, wait_until, with_timeout, PublisherOptions, ViewerOptions};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(90);

/// The families a real session must move.
const MOVING: [&str; 12] = [
    "switchboard_rtp_packets_received_total{kind=\"video\"}",
    "switchboard_rtp_packets_received_total{kind=\"audio\"}",
    "switchboard_rtp_bytes_received_total{kind=\"video\"}",
    "switchboard_rtp_packets_forwarded_total{kind=\"video\"}",
    "switchboard_rtp_bytes_forwarded_total{kind=\"audio\"}",
    "switchboard_udp_bytes_sent_total",
    "switchboard_udp_bytes_received_total",
    "switchboard_packet_server_seconds_count",
    "switchboard_shard_loop_seconds_count",
    "switchboard_stream_loss_ratio_count{direction=\"out\"}",
    "switchboard_stream_loss_ratio_count{direction=\"in\"}",
    "switchboard_viewer_first_video_seconds_count",
];

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The path of `tool` if installed; `None` (the test then passes, saying why)
/// unless SWITCHBOARD_REQUIRE_PROMETHEUS=1.
fn tool(name: &str) -> Option<String> {
    let found = ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| std::path::Path::new(path).exists());
    if found.is_none() {
        assert!(
            std::env::var("SWITCHBOARD_REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "{name} is required (Debian: apt-get install prometheus)"
        );
        eprintln!("SKIP: {name} is not installed (Debian: apt-get install prometheus)");
    }
    found
}

/// A publisher and a viewer exchanging media, plus one refused offer.
async fn busy_server() -> (
    switchboard::server::Server,
    support::Publisher,
    support::Viewer,
) {
    let server = start_server(Config::for_tests()).await;
    let mut publish = PublisherOptions::new(7);
    publish.participant = Some("alice".into());
    let publisher = flow::publish(&server, "metered", publish).await;
    let viewer = flow::view(
        &server,
        "metered",
        ViewerOptions {
            participant: Some("bob".into()),
            ..Default::default()
        },
    )
    .await;
    flow::wait_for_media(&viewer, 30, 20, Duration::from_secs(10)).await;
    let refused = support::http::post(
        server.http_addr(),
        "/whep/metered",
        "application/sdp",
        "not sdp",
    )
    .await
    .expect("POST");
    assert_eq!(refused.status, 400);
    (server, publisher, viewer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_session_moves_the_counters_and_passes_promtool() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let (server, publisher, viewer) = busy_server().await;
        // Until every family moved: the loss family needs a stats report (every 2 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = metrics_text(&server).await;
            if MOVING
                .iter()
                .all(|s| sample(&text, s).is_some_and(|v| v > 0.0))
                || Instant::now() >= deadline
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let value = |series: &str| {
            sample(&text, series).unwrap_or_else(|| panic!("{series} not in:\n{text}"))
        };
        for moving in MOVING {
            assert!(value(moving) > 0.0, "{moving} did not move:\n{text}");
        }
        for (series, expected) in [
            (
                "switchboard_sessions{role=\"publisher\",state=\"connected\"}",
                1.0,
            ),
            (
                "switchboard_sessions{role=\"viewer\",state=\"connected\"}",
                1.0,
            ),
            (
                "switchboard_sessions{role=\"viewer\",state=\"connecting\"}",
                0.0,
            ),
            ("switchboard_tracks{kind=\"video\"}", 1.0),
            ("switchboard_tracks{kind=\"audio\"}", 1.0),
            ("switchboard_subscriptions{kind=\"video\"}", 1.0),
            ("switchboard_rooms", 1.0),
        ] {
            assert_eq!(value(series), expected, "{series}:\n{text}");
        }
        // Forwarded: each packet to the one viewer, so as many as received (the
        // replayed cache aside, give or take what is in flight).
        let received = value("switchboard_rtp_packets_received_total{kind=\"audio\"}");
        let forwarded = value("switchboard_rtp_packets_forwarded_total{kind=\"audio\"}");
        assert!(
            (forwarded - received).abs() <= 5.0,
            "{received} in, {forwarded} out"
        );
        // The session's end moves the gauges back.
        drop(viewer);
        drop(publisher);
        wait_until("sessions ended", Duration::from_secs(10), || {
            server.session_count() == 0
        })
        .await
        .expect("sessions did not end");
        let after = metrics_text(&server).await;
        for series in [
            "switchboard_sessions{role=\"viewer\",state=\"connected\"}",
            "switchboard_tracks{kind=\"video\"}",
            "switchboard_subscriptions{kind=\"video\"}",
        ] {
            assert_eq!(sample(&after, series), Some(0.0), "{series}:\n{after}");
        }
        // The clients went away without a DELETE: the server ended both on its
        // own (closed, or silent once nothing came any more), and counted them.
        let reaped = ["closed", "silent"]
            .iter()
            .filter_map(|r| {
                sample(
                    &after,
                    &format!("switchboard_sessions_reaped_total{{reason=\"{r}\"}}"),
                )
            })
            .sum::<f64>();
        assert_eq!(reaped, 2.0, "{after}");

        if let Some(promtool) = tool("promtool") {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write metrics");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server.shutdown().await;
    })
    .await;
}

/// Kills the Prometheus child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every PromQL expression of the dashboard, `$__rate_interval` made concrete.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/dashboards/switchboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            queries.push((title, expr.replace("$__rate_interval", "10s")));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query() {
    init_logging();
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    with_timeout(TEST_LIMIT, async {
        let (server, publisher, viewer) = busy_server().await;
        let dir = tempfile_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: switchboard\n    \
             static_configs:\n      - targets: [\"{}\"]\n",
            server.http_addr()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let _prometheus = Running(
            Command::new(prometheus)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus"),
        );
        let api = format!("http://127.0.0.1:{port}/api/v1/query");
        let query = |q: String| {
            let api = api.clone();
            async move {
                let response = reqwest::Client::new()
                    .get(&api)
                    .query(&[("query", q.as_str())])
                    .send()
                    .await
                    .ok()?;
                serde_json::from_str::<serde_json::Value>(&response.text().await.ok()?).ok()
            }
        };
        // Enough scrapes for a 10 s rate(): wait until it has scraped 6 times.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let scrapes = query("count_over_time(up{job=\"switchboard\"}[1m])".into()).await;
            let count = scrapes
                .as_ref()
                .and_then(|r| r["data"]["result"][0]["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if count >= 6.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape: {scrapes:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let queries = dashboard_queries();
        assert!(queries.len() >= 20, "{} queries", queries.len());
        let mut empty = Vec::new();
        for (panel, expr) in &queries {
            let answer = query(expr.clone()).await.expect("query answered");
            assert_eq!(answer["status"], "success", "{panel}: {expr}: {answer}");
            if answer["data"]["result"]
                .as_array()
                .is_none_or(|r| r.is_empty())
            {
                empty.push(format!("{panel}: {expr}"));
            }
        }
        assert!(
            empty.is_empty(),
            "queries without a series:\n{}",
            empty.join("\n")
        );
        drop((viewer, publisher));
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-prometheus-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}
