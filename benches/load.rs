//! End-to-end load: the real server (two shards, HTTP on its own tokio runtime)
//! in this process, one WHIP publisher and N WHEP viewers over real UDP on
//! 127.0.0.1, and the server's CPU per packet a viewer receives.
//!
//! Every viewer is a str0m client (RTP mode) that only counts what it receives;
//! all of them are driven by ONE thread (`viewers`, one mio poll over their
//! sockets), so the clients of a 200-viewer run cost a fraction of a core. The
//! publisher (thread `publisher`) sends VP8-like video (30 fps, 3 packets of
//! ~1,100 bytes a frame, a keyframe first and on PLI) and Opus (50 packets/s).
//!
//! Over a fixed window, after every viewer is connected and warmed up, it reads
//! the CPU time of the server's threads (`shard-N`, `http`) and of the clients'
//! from `/proc/self/task/*/stat` (utime + stime; `schedstat` as a finer check),
//! the packets the viewers received (and lost, by sequence number), the
//! server's `switchboard_rtp_packets_forwarded_total`, and the process RSS.
//!
//! ```text
//! cargo bench --bench load                  # 50 and 200 viewers
//! cargo bench --bench load -- 50 100 200    # any list of viewer counts
//! LOAD_VIEWERS=100 LOAD_WINDOW_SECS=5 cargo bench --bench load
//! LOAD_ESTIMATE_KBPS=0 cargo bench --bench load -- 200   # viewers without TWCC estimation
//! ```
//!
//! `cargo test --all-targets` runs this binary without `--bench`: it then runs a
//! smoke version (2 viewers, a 1 s window) and exits.

#[path = "../tests/support/vp8_tag.rs"]
mod vp8_tag;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use switchboard::config::Config;
use switchboard::server::Server;

const ROOM: &str = "load";
/// Whole process, bench mode: past this the watchdog ends it.
const BENCH_DEADLINE: Duration = Duration::from_secs(115);
const SMOKE_DEADLINE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// POSTs in flight at once while the viewers join.
const JOIN_CONCURRENCY: usize = 8;
const VIDEO_PAYLOAD: usize = 1_100;
const VIDEO_PACKETS_PER_FRAME: usize = 3;
const AUDIO_PAYLOAD: usize = 80;
const FRAME_INTERVAL: Duration = Duration::from_micros(33_333);
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Longest a client loop sleeps, so it sees the stop flag.
const CLIENT_TICK: Duration = Duration::from_millis(20);

/// What one run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    viewers: usize,
    warmup: Duration,
    window: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Row {
    viewers: usize,
    connected: usize,
    join_secs: f64,
    window_secs: f64,
    /// Server threads (shard-N + http), utime + stime, in µs.
    server_cpu_us: f64,
    /// The same from `schedstat` (ns resolution), in µs; 0 when unavailable.
    server_sched_us: f64,
    shard_cpu_us: f64,
    http_cpu_us: f64,
    /// The viewers' thread and the publisher's thread.
    viewers_cpu_us: f64,
    publisher_cpu_us: f64,
    /// Everything else in this process (main thread, watchdog, ...).
    other_cpu_us: f64,
    /// The whole host's busy share of its CPUs during the window (0..1 per CPU).
    host_busy: f64,
    host_cpus: usize,
    delivered: u64,
    delivered_video: u64,
    delivered_audio: u64,
    expected: u64,
    forwarded_metric: u64,
    published: u64,
    plis: u64,
    rss_before_kb: u64,
    rss_clients_built_kb: u64,
    rss_after_kb: u64,
}

impl Row {
    fn us_per_packet(&self) -> f64 {
        self.server_cpu_us / self.delivered.max(1) as f64
    }

    fn sched_us_per_packet(&self) -> f64 {
        self.server_sched_us / self.delivered.max(1) as f64
    }

    fn packets_per_sec(&self) -> f64 {
        self.delivered as f64 / self.window_secs.max(1e-9)
    }

    fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.delivered) as f64 / self.expected as f64
    }

    fn cores(&self, us: f64) -> f64 {
        us / (self.window_secs.max(1e-9) * 1e6)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs harness=false
    // bench binaries as plain programs without it (plus any test arguments).
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let bench = args.iter().any(|a| a == "--bench");
    let plans = if bench {
        bench_plans(&args)
    } else {
        println!("load: not run with --bench (cargo test): smoke run, 2 viewers, 1 s window; args {args:?}");
        vec![Plan {
            viewers: 2,
            warmup: Duration::from_millis(300),
            window: Duration::from_secs(1),
        }]
    };
    let deadline = if bench {
        BENCH_DEADLINE
    } else {
        SMOKE_DEADLINE
    };
    spawn_watchdog(deadline);
    if CryptoProvider::get_default().is_none() {
        switchboard::crypto::install();
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = false;
    for plan in plans {
        // Leave room for joining, stopping and the report within the deadline.
        let needed = plan.warmup + plan.window + Duration::from_secs(20);
        if started.elapsed() + needed > deadline {
            eprintln!(
                "load: skipping {} viewers: it would not finish within {deadline:?}",
                plan.viewers
            );
            continue;
        }
        println!(
            "load: {} viewers (warm-up {:?}, window {:?}) ...",
            plan.viewers, plan.warmup, plan.window
        );
        match run(plan) {
            Ok(row) => {
                print_row_detail(&row);
                rows.push(row);
            }
            Err(e) => {
                eprintln!("load: {} viewers FAILED: {e}", plan.viewers);
                failed = true;
            }
        }
    }
    if !rows.is_empty() {
        print_table(&rows, bench);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Viewer counts from the arguments (plain numbers) or `LOAD_VIEWERS` (comma
/// separated), 50 and 200 by default; the window from `LOAD_WINDOW_SECS`.
fn bench_plans(args: &[String]) -> Vec<Plan> {
    let mut counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        if let Ok(v) = std::env::var("LOAD_VIEWERS") {
            counts = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        }
    }
    if counts.is_empty() {
        counts = vec![50, 200];
    }
    counts.retain(|n| (1..=500).contains(n));
    let window = std::env::var("LOAD_WINDOW_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| (0.5..=30.0).contains(s))
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(10));
    counts
        .into_iter()
        .map(|viewers| Plan {
            viewers,
            warmup: Duration::from_secs(3),
            window,
        })
        .collect()
}

/// Ends the process if it runs past `limit`, whatever hangs.
fn spawn_watchdog(limit: Duration) {
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("load: still running after {limit:?}; giving up");
            std::process::exit(2);
        });
}

// ---- one run ----------------------------------------------------------------

fn run(plan: Plan) -> Result<Row, String> {
    // The server's runtime: its threads are named `http`, as `switchboard serve` names them.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("server runtime: {e}"))?;
    // The clients' HTTP (WHIP/WHEP POSTs, /metrics) runs on this thread.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let mut config = Config::for_tests();
    config.media.shards = 2;
    // LOAD_ESTIMATE_KBPS=0 runs without viewers' bandwidth estimation (TWCC), to
    // measure what it costs.
    if let Some(kbps) = std::env::var("LOAD_ESTIMATE_KBPS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.media.viewer_initial_estimate_kbps = kbps;
    }
    let server = server_rt
        .block_on(Server::start(config))
        .map_err(|e| format!("server start: {e}"))?;
    let http_addr = server.http_addr();

    let result = client_rt.block_on(measure(plan, http_addr));

    let stopped = server_rt.block_on(async {
        tokio::time::timeout(STOP_TIMEOUT, server.shutdown())
            .await
            .is_ok()
    });
    server_rt.shutdown_timeout(Duration::from_secs(2));
    if !stopped {
        eprintln!("load: the server did not stop within {STOP_TIMEOUT:?}");
    }
    result
}

async fn measure(plan: Plan, http_addr: SocketAddr) -> Result<Row, String> {
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| format!("reqwest: {e}"))?;
    let client_cert = CryptoProvider::get_default()
        .ok_or("no crypto provider")?
        .dtls_provider
        .generate_certificate()
        .ok_or("cannot make a DTLS certificate")?;

    // The publisher, connected and sending before any viewer joins.
    let publisher = start_publisher(&http, http_addr, &client_cert).await?;
    wait_for("the publisher to connect", CONNECT_TIMEOUT, || {
        publisher.stats.connected.load(Ordering::Relaxed)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut row = Row {
        viewers: plan.viewers,
        rss_before_kb: vm_rss_kb(),
        ..Row::default()
    };

    // The viewers: all driven by one thread.
    let viewers = ViewerPool::start()?;
    let joined_at = Instant::now();
    let mut pending = Vec::with_capacity(plan.viewers);
    for _ in 0..plan.viewers {
        pending.push(PendingViewer::offer(&client_cert)?);
    }
    row.rss_clients_built_kb = vm_rss_kb();
    let mut pending = pending.into_iter();
    loop {
        let batch: Vec<PendingViewer> = pending.by_ref().take(JOIN_CONCURRENCY).collect();
        if batch.is_empty() {
            break;
        }
        let posts = batch.into_iter().map(|p| {
            let http = http.clone();
            async move {
                let answer = post_sdp(&http, http_addr, &format!("/whep/{ROOM}"), &p.offer).await?;
                p.accept(&answer)
            }
        });
        for viewer in futures_util::future::join_all(posts).await {
            viewers.add(viewer?)?;
        }
    }
    let n = plan.viewers;
    let waited = wait_for(
        "every viewer to connect and receive video",
        CONNECT_TIMEOUT,
        || {
            let s = viewers.snapshot();
            s.connected >= n && s.receiving >= n
        },
    )
    .await;
    let snap = viewers.snapshot();
    row.connected = snap.connected;
    row.join_secs = joined_at.elapsed().as_secs_f64();
    if let Err(e) = waited {
        viewers.stop();
        publisher.stop();
        return Err(format!(
            "{e}: {} connected, {} receiving, {} failed",
            snap.connected, snap.receiving, snap.failed
        ));
    }
    tokio::time::sleep(plan.warmup).await;

    // The window.
    let forwarded0 = scrape_forwarded(&http, http_addr).await?;
    let published0 = publisher.stats.sent();
    let plis0 = publisher.stats.plis.load(Ordering::Relaxed);
    let host0 = host_cpu();
    let cpu0 = thread_cpu();
    let v0 = viewers.snapshot();
    let t0 = Instant::now();
    tokio::time::sleep(plan.window).await;
    let v1 = viewers.snapshot();
    let cpu1 = thread_cpu();
    let host1 = host_cpu();
    row.window_secs = t0.elapsed().as_secs_f64();
    let forwarded1 = scrape_forwarded(&http, http_addr).await?;
    row.rss_after_kb = vm_rss_kb();
    row.published = publisher.stats.sent() - published0;
    row.plis = publisher.stats.plis.load(Ordering::Relaxed) - plis0;
    row.forwarded_metric = forwarded1.saturating_sub(forwarded0);
    row.delivered_video = v1.video - v0.video;
    row.delivered_audio = v1.audio - v0.audio;
    row.delivered = row.delivered_video + row.delivered_audio;
    row.expected = v1.expected.saturating_sub(v0.expected);
    let failed = v1.failed;

    let delta = cpu_delta(&cpu0, &cpu1);
    for (name, (ticks_us, sched_us)) in &delta {
        let server = name.starts_with("shard-") || name == "http";
        if server {
            row.server_cpu_us += ticks_us;
            row.server_sched_us += sched_us;
        }
        if name.starts_with("shard-") {
            row.shard_cpu_us += ticks_us;
        } else if name == "http" {
            row.http_cpu_us += ticks_us;
        } else if name == "viewers" {
            row.viewers_cpu_us += ticks_us;
        } else if name == "publisher" {
            row.publisher_cpu_us += ticks_us;
        } else {
            row.other_cpu_us += ticks_us;
        }
    }
    if let (Some(a), Some(b)) = (host0, host1) {
        row.host_cpus = a.cpus;
        let total = b.total.saturating_sub(a.total) as f64;
        if total > 0.0 {
            row.host_busy = 1.0 - b.idle.saturating_sub(a.idle) as f64 / total;
        }
    }

    viewers.stop();
    publisher.stop();
    if failed > 0 {
        return Err(format!("{failed} viewers failed during the run"));
    }
    if row.delivered == 0 {
        return Err("the viewers received nothing in the window".into());
    }
    Ok(row)
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn post_sdp(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    offer: &str,
) -> Result<String, String> {
    let resp = http
        .post(format!("http://{addr}{path}"))
        .header("Content-Type", "application/sdp")
        .body(offer.to_string())
        .send()
        .await
        .map_err(|e| format!("POST {path}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("POST {path}: body: {e}"))?;
    if status != 201 {
        return Err(format!("POST {path}: status {status}: {body}"));
    }
    Ok(body)
}

/// `switchboard_rtp_packets_forwarded_total` from `/metrics`.
async fn scrape_forwarded(http: &reqwest::Client, addr: SocketAddr) -> Result<u64, String> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET /metrics: body: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_rtp_packets_forwarded_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "no switchboard_rtp_packets_forwarded_total in /metrics".to_string())
}

// ---- str0m clients ------------------------------------------------------------

fn client_rtc(cert: &DtlsCert) -> Rtc {
    RtcConfig::new()
        .set_rtp_mode(true)
        .set_dtls_cert(cert.clone())
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(Instant::now())
}

/// A std socket on 127.0.0.1 and its host candidate added to `rtc`.
fn bind_loopback(rtc: &mut Rtc) -> Result<(UdpSocket, SocketAddr), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = socket
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    let candidate = Candidate::host(addr, "udp").map_err(|e| format!("candidate: {e}"))?;
    rtc.add_local_candidate(candidate)
        .ok_or("str0m refused the host candidate")?;
    Ok((socket, addr))
}

fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) -> Result<(), String> {
    let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| format!("answer: {e}"))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| format!("accept_answer: {e}"))
}

fn receive_input(data: &[u8], source: SocketAddr, destination: SocketAddr) -> Option<Input<'_>> {
    let contents = data.try_into().ok()?;
    Some(Input::Receive(
        Instant::now(),
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents,
        },
    ))
}

// ---- the publisher ------------------------------------------------------------

#[derive(Default)]
struct PublisherStats {
    connected: AtomicBool,
    audio: AtomicU64,
    video: AtomicU64,
    plis: AtomicU64,
    keyframes: AtomicU64,
}

impl PublisherStats {
    fn sent(&self) -> u64 {
        self.audio.load(Ordering::Relaxed) + self.video.load(Ordering::Relaxed)
    }
}

struct PublisherHandle {
    stats: Arc<PublisherStats>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl PublisherHandle {
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        join_within(self.thread.take(), &self.done, "publisher");
    }
}

async fn start_publisher(
    http: &reqwest::Client,
    http_addr: SocketAddr,
    cert: &DtlsCert,
) -> Result<PublisherHandle, String> {
    let mut rtc = client_rtc(cert);
    let (socket, local) = bind_loopback(&mut rtc)?;
    let mut api = rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or("str0m made no offer")?;
    let answer = post_sdp(
        http,
        http_addr,
        &format!("/whip/{ROOM}"),
        &offer.to_sdp_string(),
    )
    .await?;
    accept_answer(&mut rtc, pending, &answer)?;
    let audio_pt = pt_of(&rtc, Codec::Opus).ok_or("no Opus payload type")?;
    let video_pt = pt_of(&rtc, Codec::Vp8).ok_or("no VP8 payload type")?;

    let stats = Arc::new(PublisherStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = mpsc::channel();
    let mut driver = PublisherDriver {
        rtc,
        socket,
        local,
        audio,
        video,
        audio_pt,
        video_pt,
        stats: stats.clone(),
        stop: stop.clone(),
        next_audio: None,
        next_video: None,
        audio_seq: 0,
        video_seq: 0,
        frame: 0,
        picture_id: 0,
        force_keyframe: true,
    };
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            if let Err(e) = driver.run() {
                eprintln!("load: publisher stopped: {e}");
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("spawn publisher: {e}"))?;
    Ok(PublisherHandle {
        stats,
        stop,
        done,
        thread: Some(thread),
    })
}

fn pt_of(rtc: &Rtc, codec: Codec) -> Option<Pt> {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

struct PublisherDriver {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    audio: Mid,
    video: Mid,
    audio_pt: Pt,
    video_pt: Pt,
    stats: Arc<PublisherStats>,
    stop: Arc<AtomicBool>,
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
    audio_seq: u64,
    video_seq: u64,
    frame: u32,
    picture_id: u16,
    force_keyframe: bool,
}

impl PublisherDriver {
    fn run(&mut self) -> Result<(), String> {
        let mut buf = vec![0u8; 2048];
        let audio_payload: Arc<[u8]> = {
            let mut p = vec![0xfcu8];
            p.resize(AUDIO_PAYLOAD, 0x5a);
            p.into()
        };
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            if self.stats.connected.load(Ordering::Relaxed) {
                self.produce(now, &audio_payload);
            }
            let timeout = self.drain()?;
            let mut wake = timeout.min(Instant::now() + CLIENT_TICK);
            for due in [self.next_audio, self.next_video].into_iter().flatten() {
                wake = wake.min(due);
            }
            let now = Instant::now();
            if wake > now {
                let wait = (wake - now).max(Duration::from_micros(100));
                self.socket
                    .set_read_timeout(Some(wait))
                    .map_err(|e| format!("set_read_timeout: {e}"))?;
                match self.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        if let Some(input) = receive_input(&buf[..n], source, self.local) {
                            self.rtc
                                .handle_input(input)
                                .map_err(|e| format!("handle_input: {e}"))?;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(format!("recv_from: {e}")),
                }
            }
            self.rtc
                .handle_input(Input::Timeout(Instant::now()))
                .map_err(|e| format!("handle_input(timeout): {e}"))?;
        }
    }

    fn drain(&mut self) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Ok(t),
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::Connected)) => {
                    self.stats.connected.store(true, Ordering::Relaxed);
                }
                Ok(Output::Event(Event::KeyframeRequest(_))) => {
                    self.stats.plis.fetch_add(1, Ordering::Relaxed);
                    self.force_keyframe = true;
                }
                Ok(Output::Event(_)) => {}
                Err(e) => return Err(format!("poll_output: {e}")),
            }
        }
    }

    fn produce(&mut self, now: Instant, audio_payload: &Arc<[u8]>) {
        let mut direct = self.rtc.direct_api();
        let due = *self.next_audio.get_or_insert(now);
        if due <= now {
            if let Some(tx) = direct.stream_tx_by_mid(self.audio, None) {
                let mut due = due;
                while due <= now {
                    let ts = (self.audio_seq as u32).wrapping_mul(960);
                    tx.write_rtp(
                        RtpWrite::new(
                            self.audio_pt,
                            self.audio_seq.into(),
                            ts,
                            now,
                            audio_payload.clone(),
                        )
                        .marker(self.audio_seq == 0),
                    );
                    self.audio_seq += 1;
                    self.stats.audio.fetch_add(1, Ordering::Relaxed);
                    due += AUDIO_INTERVAL;
                }
                self.next_audio = Some(due);
            }
        }
        let due = *self.next_video.get_or_insert(now);
        if due <= now {
            if let Some(tx) = direct.stream_tx_by_mid(self.video, None) {
                let mut due = due;
                while due <= now {
                    let keyframe = std::mem::take(&mut self.force_keyframe);
                    if keyframe {
                        self.stats.keyframes.fetch_add(1, Ordering::Relaxed);
                    }
                    let ts = self.frame.wrapping_mul(3000);
                    for i in 0..VIDEO_PACKETS_PER_FRAME {
                        let payload = vp8_payload(self.picture_id, i == 0, keyframe, self.frame);
                        tx.write_rtp(
                            RtpWrite::new(self.video_pt, self.video_seq.into(), ts, now, payload)
                                .marker(i + 1 == VIDEO_PACKETS_PER_FRAME)
                                .nackable(true),
                        );
                        self.video_seq += 1;
                        self.stats.video.fetch_add(1, Ordering::Relaxed);
                    }
                    self.frame += 1;
                    self.picture_id = (self.picture_id + 1) & 0x7fff;
                    due += FRAME_INTERVAL;
                }
                self.next_video = Some(due);
            }
        }
    }
}

/// A VP8 RTP payload (RFC 7741) of `VIDEO_PAYLOAD` bytes: descriptor with a
/// 15-bit picture id; on a frame's first packet, the frame tag (P bit 0 on a
/// keyframe, which also carries the start code and size).
fn vp8_payload(picture_id: u16, start: bool, keyframe: bool, frame: u32) -> Arc<[u8]> {
    let mut p = Vec::with_capacity(VIDEO_PAYLOAD);
    p.push(if start { 0x90 } else { 0x80 });
    p.push(0x80);
    p.push(0x80 | (picture_id >> 8) as u8);
    p.push((picture_id & 0xff) as u8);
    if start {
        vp8_tag::push_frame_tag(&mut p, keyframe);
    }
    let fill = (frame & 0xff) as u8;
    p.resize(VIDEO_PAYLOAD, fill);
    p.into()
}

// ---- the viewers ----------------------------------------------------------------

/// A viewer that has made its offer.
struct PendingViewer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: SdpPendingOffer,
    offer: String,
}

impl PendingViewer {
    fn offer(cert: &DtlsCert) -> Result<Self, String> {
        let mut rtc = client_rtc(cert);
        let (socket, local) = bind_loopback(&mut rtc)?;
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().ok_or("str0m made no offer")?;
        Ok(PendingViewer {
            rtc,
            socket,
            local,
            pending,
            offer: offer.to_sdp_string(),
        })
    }

    fn accept(mut self, answer: &str) -> Result<Viewer, String> {
        accept_answer(&mut self.rtc, self.pending, answer)?;
        self.socket
            .set_nonblocking(true)
            .map_err(|e| format!("set_nonblocking: {e}"))?;
        Ok(Viewer {
            rtc: self.rtc,
            socket: mio::net::UdpSocket::from_std(self.socket),
            local: self.local,
            next: Instant::now(),
            connected: false,
            failed: false,
            audio: 0,
            video: 0,
            streams: Vec::new(),
        })
    }
}

/// One received stream: first and highest extended sequence number.
struct Stream {
    ssrc: u32,
    first: u64,
    highest: u64,
}

struct Viewer {
    rtc: Rtc,
    socket: mio::net::UdpSocket,
    local: SocketAddr,
    next: Instant,
    connected: bool,
    failed: bool,
    audio: u64,
    video: u64,
    streams: Vec<Stream>,
}

impl Viewer {
    /// Polls str0m until it wants a timeout; sends, counts.
    fn drain(&mut self, audio_pt: u8) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::Connected)) => self.connected = true,
                Ok(Output::Event(Event::RtpPacket(p))) => {
                    if *p.header.payload_type == audio_pt {
                        self.audio += 1;
                    } else {
                        self.video += 1;
                    }
                    let ssrc = *p.header.ssrc;
                    let seq = *p.seq_no;
                    match self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
                        Some(s) => s.highest = s.highest.max(seq),
                        None => self.streams.push(Stream {
                            ssrc,
                            first: seq,
                            highest: seq,
                        }),
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    self.failed = true;
                    self.next = Instant::now() + Duration::from_secs(3600);
                    return;
                }
            }
        }
    }

    /// Packets the streams seen so far should have brought.
    fn expected(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.highest - s.first + 1)
            .sum::<u64>()
    }
}

/// What all viewers have done so far.
#[derive(Debug, Clone, Copy, Default)]
struct PoolSnapshot {
    connected: usize,
    /// Viewers that received video.
    receiving: usize,
    failed: usize,
    audio: u64,
    video: u64,
    expected: u64,
}

enum PoolCommand {
    Add(Box<Viewer>),
    Snapshot(mpsc::Sender<PoolSnapshot>),
}

const POOL_WAKER: Token = Token(usize::MAX);

/// The thread that drives every viewer.
struct ViewerPool {
    commands: mpsc::Sender<PoolCommand>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl ViewerPool {
    fn start() -> Result<Self, String> {
        let poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
        let waker = Arc::new(Waker::new(poll.registry(), POOL_WAKER).map_err(|e| e.to_string())?);
        let (commands, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("viewers".into())
            .spawn(move || {
                drive_viewers(poll, rx, &thread_stop);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("spawn viewers: {e}"))?;
        Ok(ViewerPool {
            commands,
            waker,
            stop,
            done,
            thread: Some(thread),
        })
    }

    fn add(&self, viewer: Viewer) -> Result<(), String> {
        self.commands
            .send(PoolCommand::Add(Box::new(viewer)))
            .map_err(|_| "the viewers' thread has stopped".to_string())?;
        let _ = self.waker.wake();
        Ok(())
    }

    fn snapshot(&self) -> PoolSnapshot {
        let (tx, rx) = mpsc::channel();
        if self.commands.send(PoolCommand::Snapshot(tx)).is_err() {
            return PoolSnapshot::default();
        }
        let _ = self.waker.wake();
        rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        join_within(self.thread.take(), &self.done, "viewers");
    }
}

fn drive_viewers(mut poll: Poll, commands: mpsc::Receiver<PoolCommand>, stop: &AtomicBool) {
    let audio_pt = 111u8;
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wake = viewers
            .iter()
            .map(|v| v.next)
            .min()
            .unwrap_or(now + CLIENT_TICK)
            .min(now + CLIENT_TICK);
        let _ = poll.poll(&mut events, Some(wake.saturating_duration_since(now)));
        for event in events.iter() {
            let Some(v) = viewers.get_mut(event.token().0) else {
                continue;
            };
            // Edge-triggered: read until the socket is empty.
            for _ in 0..10_000 {
                match v.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        if v.failed {
                            continue;
                        }
                        if let Some(input) = receive_input(&buf[..n], source, v.local) {
                            if v.rtc.handle_input(input).is_err() {
                                v.failed = true;
                            }
                        }
                        // str0m holds one RTP packet until polled: drain each time.
                        v.drain(audio_pt);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        for v in viewers.iter_mut().filter(|v| v.next <= now && !v.failed) {
            if v.rtc.handle_input(Input::Timeout(now)).is_err() {
                v.failed = true;
            }
            v.drain(audio_pt);
        }
        while let Ok(command) = commands.try_recv() {
            match command {
                PoolCommand::Add(mut v) => {
                    let token = Token(viewers.len());
                    if poll
                        .registry()
                        .register(&mut v.socket, token, Interest::READABLE)
                        .is_err()
                    {
                        v.failed = true;
                    }
                    v.drain(audio_pt);
                    viewers.push(*v);
                }
                PoolCommand::Snapshot(reply) => {
                    let mut s = PoolSnapshot::default();
                    for v in &viewers {
                        s.connected += usize::from(v.connected);
                        s.receiving += usize::from(v.video > 0);
                        s.failed += usize::from(v.failed);
                        s.audio += v.audio;
                        s.video += v.video;
                        s.expected += v.expected();
                    }
                    let _ = reply.send(s);
                }
            }
        }
    }
}

/// Joins `thread` if it says it is done within `STOP_TIMEOUT`; otherwise leaves it.
fn join_within(thread: Option<JoinHandle<()>>, done: &mpsc::Receiver<()>, name: &str) {
    match done.recv_timeout(STOP_TIMEOUT) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            eprintln!("load: the {name} thread did not stop within {STOP_TIMEOUT:?}; left running");
        }
    }
}

// ---- /proc ----------------------------------------------------------------------

/// Per thread id: (name, utime + stime in µs, schedstat run time in µs).
fn thread_cpu() -> HashMap<u32, (String, f64, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> f64 {
            fields
                .get(n - 3)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu_us = (field(14) + field(15)) / ticks * 1e6;
        let sched_us = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map(|ns| ns / 1e3)
            .unwrap_or(0.0);
        out.insert(tid, (name, cpu_us, sched_us));
    }
    out
}

/// CPU used between two snapshots, summed per thread name. A thread born in
/// between counts from zero; one that ended in between is lost (none should).
fn cpu_delta(
    a: &HashMap<u32, (String, f64, f64)>,
    b: &HashMap<u32, (String, f64, f64)>,
) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for (tid, (name, cpu, sched)) in b {
        let (cpu0, sched0) = a.get(tid).map(|(_, c, s)| (*c, *s)).unwrap_or((0.0, 0.0));
        let e = out.entry(name.clone()).or_default();
        e.0 += cpu - cpu0;
        e.1 += sched - sched0;
    }
    out
}

struct HostCpu {
    total: u64,
    idle: u64,
    cpus: usize,
}

/// The host's aggregate CPU counters from `/proc/stat`.
fn host_cpu() -> Option<HostCpu> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some(HostCpu { total, idle, cpus })
}

fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

// ---- report -----------------------------------------------------------------------

fn print_row_detail(r: &Row) {
    let w = r.window_secs;
    println!(
        "  joined {} viewers in {:.2} s; window {:.2} s: publisher sent {} packets ({} PLI), \
         viewers got {} ({} video, {} audio), server counted {} forwarded",
        r.connected,
        r.join_secs,
        w,
        r.published,
        r.plis,
        r.delivered,
        r.delivered_video,
        r.delivered_audio,
        r.forwarded_metric,
    );
    println!(
        "  CPU (cores): shards {:.3}, http {:.3}, viewers' thread {:.3}, publisher {:.3}, \
         other {:.3}; host busy per /proc/stat {:.1}% of {} CPUs (reads lower than \
         the per-thread figures on this VM)",
        r.cores(r.shard_cpu_us),
        r.cores(r.http_cpu_us),
        r.cores(r.viewers_cpu_us),
        r.cores(r.publisher_cpu_us),
        r.cores(r.other_cpu_us),
        r.host_busy * 100.0,
        r.host_cpus,
    );
    println!(
        "  RSS: {} KB before viewers, {} KB with the client Rtcs built, {} KB after the window",
        r.rss_before_kb, r.rss_clients_built_kb, r.rss_after_kb
    );
}

fn print_table(rows: &[Row], bench: bool) {
    println!();
    println!(
        "| viewers | viewer-pkts/s | server µs/viewer-pkt (stat / schedstat) | loss | \
         server CPU (cores) | clients CPU (cores) | process CPU (% of all CPUs) | \
         RSS Δ/viewer, KB (whole process / client Rtcs at creation) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let per_viewer = |kb: u64| kb.saturating_sub(r.rss_before_kb) as f64 / r.viewers as f64;
        println!(
            "| {} | {:.0} | {:.2} / {:.2} | {:.3}% | {:.3} | {:.3} | {:.1}% | {:.0} / {:.0} |",
            r.viewers,
            r.packets_per_sec(),
            r.us_per_packet(),
            r.sched_us_per_packet(),
            r.loss() * 100.0,
            r.cores(r.server_cpu_us),
            r.cores(r.viewers_cpu_us + r.publisher_cpu_us),
            r.cores(r.server_cpu_us + r.viewers_cpu_us + r.publisher_cpu_us + r.other_cpu_us)
                / r.host_cpus.max(1) as f64
                * 100.0,
            per_viewer(r.rss_after_kb),
            per_viewer(r.rss_clients_built_kb),
        );
    }
    println!();
    if !bench {
        println!(
            "(smoke run, test profile: these figures mean nothing; use `cargo bench --bench load`)"
        );
        return;
    }
    println!(
        "PERFORMANCE.md (str0m floor, measured end to end): 5.1-9.2 µs per viewer-packet at 200 \
         viewers, 4.8-5.6 at 20. Here the clients share the same {} CPUs with the server; \
         server CPU = threads shard-N + http (utime+stime, {} Hz ticks). RSS is the whole \
         process's: the server's peers and the clients' Rtcs.",
        rows.first().map(|r| r.host_cpus).unwrap_or(0),
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_CLK_TCK) },
    );
}
