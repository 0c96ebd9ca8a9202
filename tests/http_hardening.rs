//! HTTP that fails fast and stays bounded (issue 11, points 5 and 7), against
//! the real server over loopback: a body announced too large is refused before
//! it is sent, bytes that are not HTTP are answered or closed at once, slow
//! clients are cut off, every error is a problem, connections and sessions are
//! capped, and the registry's tables empty when the sessions go.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use support::http::{self, expect_problem};
use support::{flow, init_logging, wait_until, with_timeout, PublisherOptions};
use switchboard::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// "At once": what a client may wait for an answer to input that cannot succeed.
const AT_ONCE: Duration = Duration::from_secs(1);

// ---- raw HTTP over a TCP stream ----------------------------------------------

/// What came back on a raw connection.
#[derive(Debug)]
enum Outcome {
    Answered(RawResponse),
    /// Closed (or reset) without an answer.
    Closed,
    /// Nothing within the time given.
    Silent,
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn problem(&self, status: u16) -> Result<serde_json::Value, String> {
        let mut headers = http::HeaderMap::new();
        for line in self.head.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                    reqwest::header::HeaderValue::from_str(v.trim()),
                ) {
                    headers.append(k, v);
                }
            }
        }
        expect_problem(
            &http::Response {
                status: self.status,
                headers,
                body: self.body.clone(),
            },
            status,
        )
    }
}

/// Reads one response (head, and a body of its Content-Length) within `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Outcome {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if buf.is_empty() {
        return match read {
            Ok(()) => Outcome::Closed,
            Err(_) => Outcome::Silent,
        };
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Outcome::Answered(RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Connects, sends `bytes` (as far as the server takes them) and reads the answer.
async fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    read_response(&mut stream, within).await
}

/// A connection from `local` (any 127.0.0.0/8 address is this host).
async fn connect_from(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind a loopback address");
    socket.connect(addr).await.expect("connect")
}

fn expect_answer(outcome: Outcome, what: &str) -> RawResponse {
    match outcome {
        Outcome::Answered(r) => r,
        other => panic!("{what}: expected an answer, got {other:?}"),
    }
}

// ---- offers and the server --------------------------------------------------

/// A reqwest client whose connections come from `local`.
fn client_from(local: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .local_address(local)
        .build()
        .expect("reqwest client")
}

/// POSTs an offer from `client`; (status, Location, Retry-After, body).
async fn post_offer(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    offer: &str,
) -> (u16, String, Option<String>, String) {
    let resp = client
        .post(format!("http://{addr}{path}"))
        .header("Content-Type", "application/sdp")
        .body(offer.to_string())
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let location = header("location").unwrap_or_default();
    let retry_after = header("retry-after");
    let content_type = header("content-type").unwrap_or_default();
    let body = resp.text().await.unwrap_or_default();
    if status >= 400 {
        assert!(
            content_type.starts_with("application/problem+json"),
            "POST {path}: {status} is not a problem: {content_type} {body}"
        );
    }
    (status, location, retry_after, body)
}

/// The server's `registry_entries` gauge for `table`, read from /metrics.
async fn registry_entries(addr: SocketAddr, table: &str) -> i64 {
    let metrics = http::request(
        reqwest::Method::GET,
        &http::url(addr, "/metrics"),
        &[],
        None,
    )
    .await
    .expect("GET /metrics");
    let prefix = format!("switchboard_registry_entries{{table=\"{table}\"}} ");
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

/// Reads an event stream until `word` has come.
async fn read_until(events: &mut reqwest::Response, word: &str) {
    let mut seen = String::new();
    while !seen.contains(word) {
        match tokio::time::timeout(Duration::from_secs(5), events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("waiting for {word:?}: {other:?}; seen {seen:?}"),
        }
    }
}

/// Waits until every registry table the sessions fill is empty.
async fn wait_for_empty_registry(addr: SocketAddr) {
    let start = Instant::now();
    loop {
        let mut sizes = Vec::new();
        for table in [
            "rooms",
            "sessions",
            "live_channels",
            "session_slots",
            "session_slot_clients",
        ] {
            sizes.push((table, registry_entries(addr, table).await));
        }
        if sizes.iter().all(|(_, n)| *n == 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "registry tables did not empty: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- 1. fail fast -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_above_the_limit_is_413_before_the_body_is_sent() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        for (path, extra) in [
            ("/whip/big", ""),
            ("/whep/big", ""),
            ("/whip/big", "Expect: 100-continue\r\n"),
            ("/whip/big/0000000000000001", ""),
            ("/healthz", ""),
        ] {
            let method = if path.matches('/').count() > 2 {
                "PATCH"
            } else {
                "POST"
            };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n{extra}\
                 Content-Length: 999999999999999\r\n\r\nhello"
            );
            let started = Instant::now();
            let answer = expect_answer(
                exchange(addr, request.as_bytes(), AT_ONCE).await,
                &format!("{method} {path} {extra}"),
            );
            answer
                .problem(413)
                .unwrap_or_else(|e| panic!("{method} {path} {extra}: {e}"));
            assert!(started.elapsed() < AT_ONCE);
        }
        assert_eq!(server.session_count(), 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_http_are_answered_or_closed_at_once() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..20 {
            let blob: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
            cases.push((format!("4 KB random blob #{i}"), blob));
        }
        // Random bytes that are all token characters: a "method" that never ends.
        let tchars =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";
        let token: Vec<u8> = (0..4096)
            .map(|_| tchars[rng.random_range(0..tchars.len())])
            .collect();
        cases.push(("4 KB of token characters".into(), token));
        cases.push(("text without CRLFCRLF".into(), b"HELLO".repeat(800)));
        cases.push((
            "text with spaces, no CRLF".into(),
            b"hello world ".repeat(300),
        ));
        cases.push((
            "a request target that never ends".into(),
            [&b"GET /"[..], &b"a".repeat(8192)].concat(),
        ));
        cases.push(("a TLS ClientHello".into(), {
            let mut hello = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            hello.extend((0..500).map(|_| rng.random::<u8>()));
            hello
        }));
        cases.push((
            "HTTP/2 prior knowledge".into(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ));
        cases.push(("an SSH banner".into(), b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()));
        cases.push(("4 KB of zeros".into(), vec![0; 4096]));
        cases.push(("4 KB of newlines".into(), b"\r\n".repeat(2048)));
        for (what, bytes) in &cases {
            let started = Instant::now();
            match exchange(addr, bytes, AT_ONCE).await {
                Outcome::Answered(r) => assert!(
                    (400..500).contains(&r.status),
                    "{what}: answered {} {:?}",
                    r.status,
                    r.head
                ),
                Outcome::Closed => {}
                Outcome::Silent => panic!("{what}: no answer and not closed within {AT_ONCE:?}"),
            }
            assert!(started.elapsed() < AT_ONCE * 2, "{what}");
        }
        // The server is none the worse.
        let resp = http::post(
            addr,
            "/whep/after-junk",
            "application/sdp",
            support::viewer_offer(),
        )
        .await
        .expect("POST");
        assert_eq!(resp.status, 201, "{:?}", resp.body);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_by_the_header_timeout() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = Config::for_tests();
        config.http.header_read_timeout = Duration::from_secs(1);
        let server = flow::start_server(config).await;
        let addr = server.http_addr();
        let partial: [(&str, &[u8]); 3] = [
            ("nothing at all", b""),
            ("a request line only", b"POST /whip/slow HTTP/1.1\r\n"),
            (
                "headers without their end",
                b"POST /whip/slow HTTP/1.1\r\nHost: x\r\nContent-Type: applic",
            ),
        ];
        for (what, bytes) in partial {
            let started = Instant::now();
            match exchange(addr, bytes, Duration::from_secs(4)).await {
                Outcome::Closed => {}
                Outcome::Answered(r) => assert_eq!(r.status, 408, "{what}: {r:?}"),
                Outcome::Silent => panic!("{what}: still open after 4 s"),
            }
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(3),
                "{what}: cut off after {took:?}, expected about 1 s"
            );
        }
        // A kept-alive connection idle after its request is closed too.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let ok = expect_answer(read_response(&mut stream, AT_ONCE).await, "GET /healthz");
        assert_eq!(ok.status, 200);
        let started = Instant::now();
        assert!(
            matches!(
                read_response(&mut stream, Duration::from_secs(4)).await,
                Outcome::Closed
            ),
            "an idle kept-alive connection is closed"
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        // A response that streams (a viewer's events) is not a slow request:
        // it outlives the header timeout.
        let client = client_from("127.0.0.1".parse().unwrap());
        let (status, whep, ..) =
            post_offer(&client, addr, "/whep/streaming", &support::viewer_offer()).await;
        assert_eq!(status, 201);
        let mut events = client
            .get(format!("http://{addr}{whep}/events"))
            .send()
            .await
            .expect("GET events");
        // The stream's first events: the room's state, then its viewer count.
        read_until(&mut events, "event: viewercount").await;
        let quiet = tokio::time::timeout(Duration::from_millis(2500), events.chunk()).await;
        assert!(quiet.is_err(), "the event stream ended or spoke: {quiet:?}");
        assert_eq!(http::delete(addr, &whep).await.expect("DELETE").status, 200);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_408_and_a_broken_body_is_400_not_413() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = Config::for_tests();
        config.http.body_read_timeout = Duration::from_secs(1);
        let limit = config.http.max_body_bytes;
        let server = flow::start_server(config).await;
        let addr = server.http_addr();

        // 10 bytes of a 100-byte body, then nothing.
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"POST /whip/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                  Content-Length: 100\r\n\r\nv=0\r\no=- 0",
            )
            .await
            .expect("write");
        let answer = expect_answer(
            read_response(&mut stream, Duration::from_secs(4)).await,
            "slow body",
        );
        answer.problem(408).expect("slow body");
        assert_eq!(answer.header("connection"), Some("close"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // The client stops sending (half-close) in the middle of the body.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"POST /whip/cut HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                  Content-Length: 100\r\n\r\nv=0\r\n",
            )
            .await
            .expect("write");
        stream.shutdown().await.expect("half-close");
        let answer = expect_answer(read_response(&mut stream, AT_ONCE).await, "cut body");
        answer
            .problem(400)
            .expect("a body cut short is 400, not 413");

        // A chunked body whose chunk size is not a number.
        let bad_chunk =
            b"POST /whep/chunk HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                          Transfer-Encoding: chunked\r\n\r\n5\r\nv=0\r\n\r\nzz\r\nxx\r\n0\r\n\r\n";
        let answer = expect_answer(exchange(addr, bad_chunk, AT_ONCE).await, "bad chunk");
        answer
            .problem(400)
            .expect("a malformed chunk is 400, not 413");

        // A chunked body (no Content-Length) past the limit is still 413.
        let mut big = b"POST /whep/chunk HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        let chunk = vec![b'a'; 8192];
        for _ in 0..=(limit / chunk.len()) {
            big.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            big.extend_from_slice(&chunk);
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(b"0\r\n\r\n");
        let answer = expect_answer(exchange(addr, &big, AT_ONCE).await, "big chunked body");
        answer.problem(413).expect("chunked body past the limit");

        assert_eq!(server.session_count(), 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_extractor_rejections_are_problems() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let cases: [(reqwest::Method, &str, u16); 7] = [
            (reqwest::Method::GET, "/whip/room", 405),
            (reqwest::Method::PUT, "/whep/room", 405),
            (reqwest::Method::GET, "/whep/room/0000000000000001", 405),
            (reqwest::Method::DELETE, "/metrics", 405),
            (reqwest::Method::GET, "/no/such/thing", 404),
            (reqwest::Method::POST, "/whip", 404),
            (reqwest::Method::POST, "/whip/%FF%FE", 400),
        ];
        for (method, path, status) in cases {
            let resp = http::request(method.clone(), &http::url(addr, path), &[], None)
                .await
                .expect("request");
            let problem =
                expect_problem(&resp, status).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            if status == 405 {
                assert!(resp.has_header("allow"), "{method} {path}: no Allow header");
                let detail = problem["detail"].as_str().unwrap_or_default();
                assert!(detail.contains(method.as_str()), "{detail}");
            }
            assert_eq!(
                resp.header("access-control-allow-origin"),
                "*",
                "{method} {path}: CORS headers on errors too"
            );
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_answered_503_at_once() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = Config::for_tests();
        config.http.max_connections = 4;
        config.http.max_connections_per_ip = 3;
        // The held connections stay open for the whole test.
        config.http.header_read_timeout = Duration::from_secs(30);
        let server = flow::start_server(config).await;
        let addr = server.http_addr();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

        // Three idle connections from A: the fourth from A is refused...
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut stream = connect_from(a, addr).await;
            stream.write_all(healthz).await.expect("write");
            let ok = expect_answer(read_response(&mut stream, AT_ONCE).await, "held");
            assert_eq!(ok.status, 200);
            held.push(stream);
        }
        let mut extra = connect_from(a, addr).await;
        let _ = extra.write_all(healthz).await;
        let refused = expect_answer(read_response(&mut extra, AT_ONCE).await, "4th from A");
        refused.problem(503).expect("per-address cap");
        assert!(refused.header("retry-after").is_some(), "{refused:?}");

        // ...one from B is taken, and then the server is full for B too.
        let mut from_b = connect_from(b, addr).await;
        from_b.write_all(healthz).await.expect("write");
        let ok = expect_answer(read_response(&mut from_b, AT_ONCE).await, "from B");
        assert_eq!(ok.status, 200);
        let mut extra = connect_from(b, addr).await;
        let _ = extra.write_all(healthz).await;
        let refused = expect_answer(read_response(&mut extra, AT_ONCE).await, "5th in all");
        refused.problem(503).expect("server-wide cap");

        // A connection that closes frees its place.
        drop(held.pop());
        let start = Instant::now();
        loop {
            let mut stream = connect_from(a, addr).await;
            let _ = stream.write_all(healthz).await;
            let answer = expect_answer(read_response(&mut stream, AT_ONCE).await, "after close");
            if answer.status == 200 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the place was not freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.shutdown().await;
    })
    .await;
}

// ---- 2. session caps -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_caps_are_503_with_retry_after_until_one_ends() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = Config::for_tests();
        config.session.max_sessions = 3;
        config.session.max_sessions_per_ip = 2;
        config.session.max_publishers_per_room = 1;
        let server = flow::start_server(config).await;
        let addr = server.http_addr();
        let a = client_from("127.0.0.1".parse().unwrap());
        let b = client_from("127.0.0.2".parse().unwrap());
        let offer = support::viewer_offer();

        // Refused offers hold no slot.
        let (status, ..) = post_offer(&a, addr, "/whep/caps", "not sdp").await;
        assert_eq!(status, 400);
        let (first, first_location, ..) =
            post_offer(&a, addr, "/whip/caps", &support::publisher_offer()).await;
        assert_eq!(first, 201);
        let (status, ..) = post_offer(&a, addr, "/whip/caps", &support::publisher_offer()).await;
        assert_eq!(status, 409, "the seat is taken; the 409 holds no slot");

        // A's second session is its last.
        let (status, ..) = post_offer(&a, addr, "/whep/caps", &offer).await;
        assert_eq!(status, 201);
        let (status, _, retry_after, body) = post_offer(&a, addr, "/whep/caps", &offer).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after.is_some(), "503 without Retry-After");
        assert!(body.contains("max_sessions_per_ip"), "{body}");

        // B takes the server's last session; then the server is full for B too.
        let (status, b_location, ..) = post_offer(&b, addr, "/whep/caps", &offer).await;
        assert_eq!(status, 201);
        let (status, _, retry_after, body) = post_offer(&b, addr, "/whep/caps", &offer).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after.is_some(), "503 without Retry-After");
        assert!(body.contains("session.max_sessions"), "{body}");

        // A DELETE frees a slot: A may post again.
        let deleted = http::delete(addr, &first_location).await.expect("DELETE");
        assert_eq!(deleted.status, 200);
        let (status, ..) = post_offer(&a, addr, "/whep/caps", &offer).await;
        assert_eq!(status, 201);
        let deleted = http::delete(addr, &b_location).await.expect("DELETE");
        assert_eq!(deleted.status, 200);
        let (status, ..) = post_offer(&b, addr, "/whip/caps", &support::publisher_offer()).await;
        assert_eq!(status, 201, "B publishes in the freed seat and slot");

        let metrics = http::request(
            reqwest::Method::GET,
            &http::url(addr, "/metrics"),
            &[],
            None,
        )
        .await
        .expect("metrics");
        for scope in ["server", "client"] {
            let line = format!("switchboard_session_cap_refusals_total{{scope=\"{scope}\"}} 1");
            assert!(metrics.body.contains(&line), "no {line:?} in /metrics");
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_reaped_by_a_shard_free_their_slots() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let mut config = Config::for_tests();
        config.session.max_sessions = 2;
        config.session.reap_timeout = Duration::from_secs(1);
        let server = flow::start_server(config).await;
        let addr = server.http_addr();
        let a = client_from("127.0.0.1".parse().unwrap());
        let offer = support::viewer_offer();
        for _ in 0..2 {
            let (status, ..) = post_offer(&a, addr, "/whep/reaped", &offer).await;
            assert_eq!(status, 201);
        }
        let (status, ..) = post_offer(&a, addr, "/whep/reaped", &offer).await;
        assert_eq!(status, 503);
        // Neither session ever connects: the shards reap them and the slots free.
        wait_for_empty_registry(addr).await;
        let (status, ..) = post_offer(&a, addr, "/whep/reaped", &offer).await;
        assert_eq!(status, 201);
        server.shutdown().await;
    })
    .await;
}

// ---- 3. bounded tables ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_delete_on_many_rooms_leave_no_registry_entries() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let client = client_from("127.0.0.1".parse().unwrap());
        let (publisher, viewer) = (support::publisher_offer(), support::viewer_offer());
        for _ in 0..40 {
            let room = format!("room-{:016x}", rand::random::<u64>());
            let (status, whip, ..) =
                post_offer(&client, addr, &format!("/whip/{room}"), &publisher).await;
            assert_eq!(status, 201);
            let (status, whep, ..) =
                post_offer(&client, addr, &format!("/whep/{room}"), &viewer).await;
            assert_eq!(status, 201);
            // The viewer follows the room's events; the stream says where the room is.
            let mut events = client
                .get(format!("http://{addr}{whep}/events"))
                .send()
                .await
                .expect("GET events");
            assert_eq!(events.status(), 200);
            let first = tokio::time::timeout(AT_ONCE, events.chunk())
                .await
                .expect("the first event at once")
                .expect("event stream")
                .unwrap_or_default();
            assert!(
                String::from_utf8_lossy(&first).contains("inactive"),
                "{first:?}"
            );
            for location in [&whip, &whep] {
                let deleted = http::delete(addr, location).await.expect("DELETE");
                assert_eq!(deleted.status, 200);
            }
            drop(events);
        }
        wait_for_empty_registry(addr).await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_room_told_to_its_watcher_leaves_no_entries_when_everyone_goes() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = flow::start_server(Config::for_tests()).await;
        let addr = server.http_addr();
        let client = client_from("127.0.0.1".parse().unwrap());
        // The publisher connects (its shard marks the room live) before anyone watches.
        let publisher = flow::publish(&server, "live-room", PublisherOptions::new(1)).await;
        let (status, whep, ..) =
            post_offer(&client, addr, "/whep/live-room", &support::viewer_offer()).await;
        assert_eq!(status, 201);
        let mut events = client
            .get(format!("http://{addr}{whep}/events"))
            .send()
            .await
            .expect("GET events");
        read_until(&mut events, "event: active").await;
        assert_eq!(publisher.delete().await.expect("DELETE publisher"), 200);
        read_until(&mut events, "event: inactive").await;
        let deleted = http::delete(addr, &whep).await.expect("DELETE viewer");
        assert_eq!(deleted.status, 200);
        // The stream ends with the session; then the room's channel is gone.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = events.chunk().await {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "the event stream did not end with its session"
        );
        wait_for_empty_registry(addr).await;
        wait_until("nothing left", Duration::from_secs(5), || {
            server.session_count() == 0
        })
        .await
        .expect("sessions gone");
        server.shutdown().await;
    })
    .await;
}
