//! End-to-end load: the real server (two shards, HTTP on its own tokio runtime)
//! in this process, one WHIP publisher and N WHEP viewers over real UDP on
//! 127.0.0.1, and the server's CPU per packet a viewer receives.
//!
//! The clients are `switchboard load`'s (`src/load/`): every viewer a str0m
//! client (RTP mode) that only counts what it receives, all of them driven by ONE
//! thread (`load-viewers-0`, one mio poll over their sockets), so the clients of a
//! 200-viewer run cost a fraction of a core. The publisher (thread
//! `load-publisher`) sends VP8-like video (1.5 Mbit/s at 30 fps, a keyframe first
//! and on PLI) and Opus (50 packets/s). `switchboard load` runs the same clients
//! against a server in another process (any WHIP/WHEP server).
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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard::config::Config;
use switchboard::load::{
    self,
    client::Endpoint,
    payload::VideoCodec,
    proc,
    publisher::{Publisher, PublisherPlan},
    viewers::Pools,
};
use switchboard::server::Server;

const ROOM: &str = "load";
/// Whole process, bench mode: past this the watchdog ends it.
const BENCH_DEADLINE: Duration = Duration::from_secs(115);
const SMOKE_DEADLINE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The publisher's video: 1.5 Mbit/s VP8 at 30 fps (6 packets a frame), plus Opus.
const VIDEO_KBPS: u64 = 1500;

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
    /// Distinct sequence numbers that arrived (duplicates left out).
    received: u64,
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
        self.expected.saturating_sub(self.received) as f64 / self.expected as f64
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

    // The clients are `switchboard load`'s: blocking HTTP on this thread, media
    // on their own threads.
    let result = measure(plan, http_addr);

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

fn measure(plan: Plan, http_addr: SocketAddr) -> Result<Row, String> {
    let endpoint = Endpoint::new(&format!("http://{http_addr}"), None)?;
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let publish = PublisherPlan {
        codec: VideoCodec::Vp8,
        video_kbps: VIDEO_KBPS,
        fps: 30,
        keyframe_interval: Duration::from_secs(3600),
        audio: true,
    };

    // The publisher, connected and sending before any viewer joins.
    let publisher = Publisher::start(&endpoint, ROOM, loopback, publish)?;
    wait_for("the publisher to connect", CONNECT_TIMEOUT, || {
        publisher.stats.connected.load(Ordering::Relaxed)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let mut row = Row {
        viewers: plan.viewers,
        rss_before_kb: vm_rss_kb(),
        ..Row::default()
    };

    // The viewers: all driven by one thread.
    let mut viewers = Pools::start(1)?;
    let joined_at = Instant::now();
    for n in 0..plan.viewers {
        viewers.add(load::viewers::join(
            &endpoint,
            ROOM,
            loopback,
            VideoCodec::Vp8,
            n,
            0.0,
        )?)?;
    }
    row.rss_clients_built_kb = vm_rss_kb();
    let n = plan.viewers;
    let waited = wait_for(
        "every viewer to connect and receive video",
        CONNECT_TIMEOUT,
        || {
            viewers
                .snapshot()
                .is_ok_and(|s| s.connected >= n && s.first_video.len() >= n)
        },
    );
    let snap = viewers.snapshot()?;
    row.connected = snap.connected;
    row.join_secs = joined_at.elapsed().as_secs_f64();
    if let Err(e) = waited {
        viewers.stop();
        publisher.stop();
        return Err(format!(
            "{e}: {} connected, {} receiving, {} failed",
            snap.connected,
            snap.first_video.len(),
            snap.failed.len()
        ));
    }
    std::thread::sleep(plan.warmup);

    // The window.
    let forwarded0 = scrape_forwarded(http_addr)?;
    let published0 = publisher.sent();
    let plis0 = publisher.stats.keyframe_requests.load(Ordering::Relaxed);
    let host0 = host_cpu();
    let cpu0 = thread_cpu();
    let v0 = viewers.snapshot()?;
    let t0 = Instant::now();
    std::thread::sleep(plan.window);
    let v1 = viewers.snapshot()?.since(&v0);
    let cpu1 = thread_cpu();
    let host1 = host_cpu();
    row.window_secs = t0.elapsed().as_secs_f64();
    let forwarded1 = scrape_forwarded(http_addr)?;
    row.rss_after_kb = vm_rss_kb();
    row.published = publisher.sent() - published0;
    row.plis = publisher.stats.keyframe_requests.load(Ordering::Relaxed) - plis0;
    row.forwarded_metric = forwarded1.saturating_sub(forwarded0);
    row.delivered_video = v1.counts.video;
    row.delivered_audio = v1.counts.audio;
    row.delivered = row.delivered_video + row.delivered_audio;
    row.expected = v1.counts.expected();
    // What arrived by sequence number (a duplicate is not a delivery).
    row.received = v1.counts.received();
    let failed = v1.failed.len();

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
        } else if name.starts_with("load-viewers") {
            row.viewers_cpu_us += ticks_us;
        } else if name == "load-publisher" {
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

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `switchboard_rtp_packets_forwarded_total` (both kinds) from `/metrics`.
fn scrape_forwarded(addr: SocketAddr) -> Result<u64, String> {
    let mut response = ureq::get(format!("http://{addr}/metrics"))
        .call()
        .map_err(|e| format!("GET /metrics: {e}"))?;
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET /metrics: body: {e}"))?;
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("switchboard_rtp_packets_forwarded_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Ok(total as u64)
}

// ---- /proc ----------------------------------------------------------------------

/// Per thread id: (name, utime + stime in µs, schedstat run time in µs).
fn thread_cpu() -> HashMap<u32, (String, f64, f64)> {
    let ticks = proc::clock_ticks();
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
        let cpu_us = proc::parse_stat_cpu(&stat, ticks).map_or(0.0, |s| s * 1e6);
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
    proc::rss_bytes(std::process::id()).map_or(0, |b| b / 1024)
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
        proc::clock_ticks(),
    );
}
