//! What an operator relies on: sessions that never connect are reaped and their
//! room freed, refused offers are counted by client, configured ICE servers are
//! advertised, and `check-config` names the key at fault.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use switchboard::config::{Config, IceServer};
use switchboard::server::Server;

fn corpus(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sdp-corpus")
        .join(name);
    std::fs::read_to_string(path).expect("corpus offer")
}

async fn post(server: &Server, path: &str, body: &str, user_agent: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}{path}", server.http_addr()))
        .header("Content-Type", "application/sdp")
        .header("User-Agent", user_agent)
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_connects_is_reaped_and_frees_the_room() {
    let mut config = Config::for_tests();
    config.session.reap_timeout = Duration::from_secs(1);
    config.session.max_publishers_per_room = 1;
    let server = Server::start(config).await.expect("server starts");
    // The offer's only candidates point at a loopback port nobody answers on.
    let offer = corpus("obs-libdatachannel-exwebrtc.sdp");
    let first = post(&server, "/whip/reaped", &offer, "OBS-Studio/30.1").await;
    assert_eq!(first.status().as_u16(), 201);
    assert_eq!(
        post(&server, "/whip/reaped", &offer, "OBS-Studio/30.1")
            .await
            .status()
            .as_u16(),
        409,
        "the room's one seat is taken while the session lives"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while server.session_count() > 0 {
        assert!(Instant::now() < deadline, "the session was not reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The seat is free again, and the old resource is gone.
    assert_eq!(
        post(&server, "/whip/reaped", &offer, "OBS-Studio/30.1")
            .await
            .status()
            .as_u16(),
        201
    );
    let text = support::hostile::metrics_text(&server).await;
    for line in [
        "switchboard_sessions_ended_total{role=\"publisher\"} 1",
        // An ICE/DTLS failure, counted by its reason.
        "switchboard_sessions_reaped_total{reason=\"never_connected\"} 1",
        "switchboard_sessions_reaped_total{reason=\"silent\"} 0",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_offers_are_counted_by_client_family() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let data_only = corpus("pion-datachannel-only.sdp");
    let r = post(&server, "/whip/refused", &data_only, "Go-http-client/1.1").await;
    assert_eq!(r.status().as_u16(), 400);
    let r = post(
        &server,
        "/whep/refused",
        "v=0 nonsense",
        "Mozilla/5.0 Chrome/120.0",
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    let text = support::hostile::metrics_text(&server).await;
    assert!(
        text.contains(
            "switchboard_offers_refused_total{client=\"pion\",endpoint=\"whip\",status=\"400\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("switchboard_offers_refused_total{client=\"chrome\",endpoint=\"whep\",status=\"400\"} 1"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_ice_servers_are_advertised_in_link_headers() {
    let mut config = Config::for_tests();
    config.ice.servers = vec![
        IceServer {
            url: "stun:stun.example.net:3478".into(),
            username: None,
            credential: None,
        },
        IceServer {
            url: "turn:turn.example.net:3478?transport=udp".into(),
            username: Some("user".into()),
            credential: Some("secret".into()),
        },
    ];
    let server = Server::start(config).await.expect("server starts");
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/whip/linked", server.http_addr()),
        )
        .send()
        .await
        .expect("OPTIONS answers");
    let created = post(
        &server,
        "/whip/linked",
        &corpus("obs-libdatachannel-exwebrtc.sdp"),
        "OBS",
    )
    .await;
    assert_eq!(created.status().as_u16(), 201);
    for response in [&preflight, &created] {
        let links: Vec<&str> = response
            .headers()
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(
            links
                .iter()
                .any(|l| l.starts_with("<stun:stun.example.net:3478>; rel=\"ice-server\"")),
            "{links:?}"
        );
        assert!(
            links
                .iter()
                .any(|l| l.contains("<turn:turn.example.net:3478?transport=udp>")
                    && l.contains("username=\"user\"")
                    && l.contains("credential=\"secret\"")),
            "{links:?}"
        );
    }
    server.shutdown().await;
}

#[test]
fn check_config_names_the_key_at_fault() {
    let dir = std::env::temp_dir().join(format!("switchboard-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cases = [
        ("[http]\nlisten_on = \"127.0.0.1:1\"\n", "listen_on"),
        ("[http]\nlisten = \"not an address\"\n", "listen"),
        (
            "[media]\nshards = 8\nudp_port_min = 50000\nudp_port_max = 50003\n",
            "media.udp_port_min",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad{i}.toml"));
        std::fs::write(&file, text).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("run switchboard");
        assert!(!out.status.success(), "case {i} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "case {i}: {stderr}");
    }
    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchboard.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check-config")
        .arg(&good)
        .output()
        .expect("run switchboard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json`: every line the server logs is one JSON object with its
/// level and message (a log collector's input), and a session's lines carry its
/// room, session and participant as fields; a bad format is refused by name.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let mut child = support::server_command(&["--log-format", "json", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start switchboard");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let read_until = |logged: &mut Vec<String>, done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let found = done(&line);
                logged.push(line);
                if found {
                    return true;
                }
            }
        }
        false
    };
    let mut logged = Vec::new();
    // The plain "listening" line for people (on stderr, not a log record)
    // follows the JSON one: it gives the address.
    assert!(
        read_until(&mut logged, &|l| l
            .starts_with("switchboard listening on http://")),
        "{logged:?}"
    );
    let addr = logged
        .last()
        .and_then(|l| l.strip_prefix("switchboard listening on http://"))
        .expect("address")
        .to_string();
    // A session: its lines carry the room, the session and the participant.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let created = runtime.block_on(support::http::post(
        addr.parse().expect("address"),
        "/whep/logged-room?participant=zoe",
        "application/sdp",
        support::viewer_offer(),
    ));
    assert_eq!(created.as_ref().map(|r| r.status), Ok(201), "{created:?}");
    let created_line = read_until(&mut logged, &|l| l.contains("session created"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(created_line, "{logged:?}");
    let records: Vec<serde_json::Value> = logged
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        records.iter().any(|r| r["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("switchboard listening"))),
        "{logged:?}"
    );
    assert!(records.iter().all(|r| r["level"].is_string()), "{logged:?}");
    let session = records
        .iter()
        .find(|r| r["fields"]["message"] == "session created")
        .expect("the session's line");
    assert_eq!(session["fields"]["room"], "logged-room", "{session}");
    assert_eq!(session["fields"]["participant"], "zoe", "{session}");
    assert!(
        session["fields"]["session"]
            .as_str()
            .is_some_and(|s| s.len() == 16),
        "{session}"
    );
    assert!(
        !logged.iter().any(|l| l.contains("a=ice-pwd")),
        "SDP in the logs"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--log-format", "xml"])
        .output()
        .expect("run switchboard");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("log.format"));
}

/// `/metrics` counts HTTP requests by route template and status (never the room
/// or session: bounded labels), and carries the process's CPU, memory and open
/// files under Prometheus' standard names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_and_the_process_are_measured() {
    support::init_logging();
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let answered = post(
        &server,
        "/whep/metered-room",
        &support::viewer_offer(),
        "test",
    )
    .await;
    assert_eq!(answered.status(), 201);
    let refused = post(&server, "/whep/metered-room", "not sdp", "test").await;
    assert_eq!(refused.status(), 400);
    let text = reqwest::get(format!("http://{}/metrics", server.http_addr()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        "switchboard_http_requests_total{route=\"/whep/{room}\",status=\"201\"} 1",
        "switchboard_http_requests_total{route=\"/whep/{room}\",status=\"400\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(!text.contains("metered-room"), "a room name in a label");
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} not in /metrics"
        );
    }
    server.shutdown().await;
}
