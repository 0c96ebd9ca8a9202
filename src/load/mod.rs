//! `switchboard load`: a load tester for any WHIP/WHEP server (ours, or another
//! SFU). One synthetic publisher (VP8 or H264 at a set bitrate and frame rate,
//! plus Opus-sized audio) and N viewers over real UDP, each a str0m client.
//!
//! It reports, over a measurement window after everyone joined:
//! - the server's CPU per forwarded packet and memory per viewer (from /proc,
//!   with `--server-pid`);
//! - latency through the server (p50/p99/p999), from the publisher's timestamp
//!   in each payload (the clients share this process's clock);
//! - time to first frame, packets lost, duplicated and reordered, frames that
//!   did not arrive whole;
//! - join failures, with the server's reasons.
//!
//! A human summary on stdout, or one JSON object with `--json`; progress on
//! stderr while it runs.
//!
//! Latency is taken when a viewer's thread reads the packet: it includes that
//! thread's own queueing, which grows with the viewers it serves (`--threads`
//! spreads them). Plain HTTP only (`http://`): a test network's server.

pub mod client;
pub mod payload;
pub mod proc;
pub mod publisher;
pub mod viewers;

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use client::Endpoint;
use payload::VideoCodec;
use publisher::{Publisher, PublisherPlan};
use viewers::{PoolSnapshot, Pools};

/// How long the sessions are given to be DELETEd at the end.
const CLEANUP_LIMIT: Duration = Duration::from_secs(15);

/// Nanoseconds on the load tool's clock (one clock for publisher and viewers:
/// latency is their difference).
pub fn clock_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `switchboard load` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The server's base URL: POST {url}/whip/{room} and {url}/whep/{room}.
    #[arg(default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The room to publish in and watch.
    #[arg(long, default_value = "load")]
    pub room: String,
    /// Viewers (WHEP sessions).
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// Seconds measured, after every viewer joined and a warm-up.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds between the last join and the measurement.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Video codec the publisher sends.
    #[arg(long, value_enum, default_value = "vp8")]
    pub codec: VideoCodec,
    /// Video bitrate, kbit/s.
    #[arg(long, default_value_t = 1500)]
    pub bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seconds between keyframes (and one on every keyframe request).
    #[arg(long, default_value_t = 2.0)]
    pub keyframe_interval: f64,
    /// Send no audio.
    #[arg(long)]
    pub no_audio: bool,
    /// Viewers joining per second.
    #[arg(long, default_value_t = 50.0)]
    pub join_rate: f64,
    /// Percent of media packets each viewer drops on arrival, before its stack sees
    /// them: the server must repair video through NACKs (resent video counts as
    /// late, not lost; audio is not resent, as browsers do not ask for it).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Threads driving the viewers.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The server's process id: its CPU and memory are read from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The address the clients' sockets bind to (and announce).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// A bearer token for every offer.
    #[arg(long, env = "SWITCHBOARD_LOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug)]
pub struct Report {
    pub args: LoadArgs,
    pub joined: usize,
    pub join_failures: Vec<String>,
    /// The window's length.
    pub window: Duration,
    /// Packets the publisher sent and the viewers received in the window.
    pub sent: u64,
    pub received: u64,
    pub server_cpu_seconds: Option<f64>,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// The viewers' counts over the window (first-video times: since they joined).
    pub end: PoolSnapshot,
}

impl Report {
    /// Server CPU per forwarded packet, µs.
    pub fn cpu_per_packet_us(&self) -> Option<f64> {
        let cpu = self.server_cpu_seconds?;
        (self.received > 0).then(|| cpu * 1e6 / self.received as f64)
    }

    /// Server memory per viewer, KB (what joining added to its RSS).
    pub fn memory_per_viewer_kb(&self) -> Option<f64> {
        let (before, after) = (self.server_rss_before?, self.server_rss_after?);
        (self.joined > 0).then(|| (after as f64 - before as f64) / 1024.0 / self.joined as f64)
    }

    fn first_video_ms(&self, quantile: f64) -> Option<f64> {
        let mut all: Vec<Duration> = self.end.first_video.clone();
        if all.is_empty() {
            return None;
        }
        all.sort();
        let i = ((all.len() - 1) as f64 * quantile).round() as usize;
        all.get(i).map(|d| d.as_secs_f64() * 1000.0)
    }

    fn latency_ms(&self, quantile: f64) -> Option<f64> {
        let h = &self.end.latency;
        (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0)
    }

    pub fn to_json(&self) -> Value {
        let e = &self.end;
        let c = &e.counts;
        json!({
            "url": self.args.url,
            "room": self.args.room,
            "viewers": self.args.viewers,
            "joined": self.joined,
            "connected": e.connected,
            "joinFailures": self.join_failures,
            "codec": self.args.codec.name(),
            "videoKbps": self.args.bitrate,
            "fps": self.args.fps,
            "audio": !self.args.no_audio,
            "windowSeconds": self.window.as_secs_f64(),
            "packetsSent": self.sent,
            "packetsReceived": self.received,
            "serverCpuSeconds": self.server_cpu_seconds,
            "serverCpuPerPacketUs": self.cpu_per_packet_us(),
            "serverRssBeforeBytes": self.server_rss_before,
            "serverRssAfterBytes": self.server_rss_after,
            "serverMemoryPerViewerKb": self.memory_per_viewer_kb(),
            "latencyMs": {
                "p50": self.latency_ms(0.5),
                "p99": self.latency_ms(0.99),
                "p999": self.latency_ms(0.999),
                "max": (!e.latency.is_empty()).then(|| e.latency.max() as f64 / 1000.0),
            },
            "firstVideoMs": {
                "p50": self.first_video_ms(0.5),
                "p95": self.first_video_ms(0.95),
                "max": self.first_video_ms(1.0),
                "viewersWithVideo": e.first_video.len(),
            },
            "lossPercent": self.args.loss,
            "packets": {
                "expected": c.expected(),
                "received": c.received(),
                "lost": c.expected().saturating_sub(c.received()),
                "videoLost": c.video_lost(),
                "audioLost": c.audio_lost(),
                "duplicated": c.duplicated,
                "reordered": c.reordered,
            },
            "frames": {
                "complete": c.frames_complete,
                "incomplete": c.frames_incomplete,
                "missing": c.frames_missing,
            },
            "viewerFailures": e.failed,
        })
    }

    pub fn summary(&self) -> String {
        let e = &self.end;
        let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2} ms"));
        let mut out = format!(
            "switchboard load: {} viewers of {} ({}, {} kbit/s at {} fps{}) for {:.1} s\n",
            self.args.viewers,
            self.args.url,
            self.args.codec.name(),
            self.args.bitrate,
            self.args.fps,
            if self.args.no_audio { "" } else { " + audio" },
            self.window.as_secs_f64()
        );
        out += &format!(
            "  joined          {} of {}, {} connected{}\n",
            self.joined,
            self.args.viewers,
            self.end.connected,
            if self.join_failures.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} failed: {})",
                    self.join_failures.len(),
                    self.join_failures[0]
                )
            }
        );
        out += &format!(
            "  forwarded       {} packets received by viewers ({:.0}/s), {} sent by the publisher\n",
            self.received,
            self.received as f64 / self.window.as_secs_f64().max(1e-9),
            self.sent
        );
        out += &match self.cpu_per_packet_us() {
            Some(us) => format!(
                "  server CPU      {us:.2} µs per forwarded packet ({:.2} s in the window)\n",
                self.server_cpu_seconds.unwrap_or(0.0)
            ),
            None => "  server CPU      n/a (give --server-pid)\n".to_string(),
        };
        out += &match self.memory_per_viewer_kb() {
            Some(kb) => format!("  server memory   {kb:.0} KB per viewer\n"),
            None => "  server memory   n/a (give --server-pid)\n".to_string(),
        };
        out += &format!(
            "  latency         p50 {}  p99 {}  p999 {}\n",
            ms(self.latency_ms(0.5)),
            ms(self.latency_ms(0.99)),
            ms(self.latency_ms(0.999))
        );
        out += &format!(
            "  first video     p50 {}  p95 {}  max {} ({} viewers)\n",
            ms(self.first_video_ms(0.5)),
            ms(self.first_video_ms(0.95)),
            ms(self.first_video_ms(1.0)),
            e.first_video.len()
        );
        let c = &e.counts;
        out += &format!(
            "  packets         {} video and {} audio lost, {} duplicated, {} late (reordered or resent) of {}\n",
            c.video_lost(),
            c.audio_lost(),
            c.duplicated,
            c.reordered,
            c.expected()
        );
        if self.args.loss > 0.0 {
            out += &format!(
                "                  ({}% dropped on arrival at each viewer; video is resent, audio is not)\n",
                self.args.loss
            );
        }
        out += &format!(
            "  frames          {} whole, {} incomplete, {} missing\n",
            c.frames_complete, c.frames_incomplete, c.frames_missing
        );
        if !e.failed.is_empty() {
            out += &format!(
                "  viewer failures {} (first: {})\n",
                e.failed.len(),
                e.failed[0]
            );
        }
        out
    }
}

/// Runs the load and prints the report.
pub fn main(args: LoadArgs) -> ExitCode {
    match run(args) {
        Ok(report) => {
            if report.args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.summary());
            }
            if report.joined == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("switchboard load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One run: the publisher, the viewers, the window, the report.
pub fn run(args: LoadArgs) -> Result<Report, String> {
    let endpoint = Endpoint::new(&args.url, args.token.clone())?;
    clock_nanos();
    let plan = PublisherPlan {
        codec: args.codec,
        video_kbps: args.bitrate,
        fps: args.fps,
        keyframe_interval: Duration::from_secs_f64(args.keyframe_interval.max(0.1)),
        audio: !args.no_audio,
    };
    let publisher = Publisher::start(&endpoint, &args.room, args.bind, plan)
        .map_err(|e| format!("the publisher could not join: {e}"))?;
    let connected = wait(Duration::from_secs(10), || {
        publisher.stats.connected.load(Ordering::Relaxed)
    });
    if !connected {
        publisher.stop();
        return Err("the publisher did not connect within 10 s".into());
    }
    progress(&format!("publisher connected to {}", args.url));
    // A settle time, not a wait on something seen from here: the server takes the
    // publisher's first keyframe into its room before its memory is read.
    std::thread::sleep(Duration::from_secs(1));
    let rss_before = args.server_pid.and_then(proc::rss_bytes);

    let mut pools = Pools::start(args.threads)?;
    let mut locations = Vec::new();
    let mut join_failures = Vec::new();
    let pace = Duration::from_secs_f64(1.0 / args.join_rate.max(0.1));
    let started = Instant::now();
    for n in 0..args.viewers {
        let due = started + pace * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match viewers::join(&endpoint, &args.room, args.bind, args.codec, n, args.loss) {
            Ok(joined) => {
                locations.extend(joined.location.clone());
                pools.add(joined)?;
            }
            Err(e) => join_failures.push(e),
        }
        if (n + 1) % 50 == 0 {
            progress(&format!(
                "{} of {} viewers joined",
                n + 1 - join_failures.len(),
                args.viewers
            ));
        }
    }
    let joined = args.viewers - join_failures.len();
    let all_connected = wait(Duration::from_secs(15), || {
        pools.snapshot().is_ok_and(|s| s.connected >= joined)
    });
    if !all_connected {
        progress("not every viewer connected within 15 s: the report counts the ones that did");
    }
    progress(&format!(
        "{joined} viewers joined; warming up {} s",
        args.warmup
    ));
    std::thread::sleep(Duration::from_secs(args.warmup));

    pools.reset_latency();
    let begin = pools.snapshot()?;
    let sent_begin = publisher.sent();
    let cpu_begin = args.server_pid.and_then(proc::cpu_seconds);
    let window_start = Instant::now();
    let window = Duration::from_secs(args.seconds.max(1));
    while window_start.elapsed() < window {
        std::thread::sleep(
            Duration::from_secs(1).min(window.saturating_sub(window_start.elapsed())),
        );
        let s = pools.snapshot()?;
        let p99 =
            (!s.latency.is_empty()).then(|| s.latency.value_at_quantile(0.99) as f64 / 1000.0);
        progress(&format!(
            "{:>3} s: {} viewers connected, {} packets received, latency p99 {}",
            window_start.elapsed().as_secs(),
            s.connected,
            (s.counts.audio + s.counts.video)
                .saturating_sub(begin.counts.audio + begin.counts.video),
            p99.map_or("n/a".into(), |v| format!("{v:.2} ms"))
        ));
    }
    let elapsed = window_start.elapsed();
    let cpu_end = args.server_pid.and_then(proc::cpu_seconds);
    let sent = publisher.sent() - sent_begin;
    let end = pools.snapshot()?.since(&begin);
    let rss_after = args.server_pid.and_then(proc::rss_bytes);
    let received = end.counts.audio + end.counts.video;

    pools.stop();
    // The sessions are ended, within a bound: a hung server is left to reap them.
    let cleanup = Instant::now() + CLEANUP_LIMIT;
    for location in publisher.location.iter().chain(&locations) {
        if Instant::now() >= cleanup {
            progress("stopped ending sessions after 15 s: the server will reap the rest");
            break;
        }
        endpoint.delete(location);
    }
    publisher.stop();
    Ok(Report {
        args,
        joined,
        join_failures,
        window: elapsed,
        sent,
        received,
        server_cpu_seconds: cpu_begin.zip(cpu_end).map(|(a, b)| b - a),
        server_rss_before: rss_before,
        server_rss_after: rss_after,
        end,
    })
}

fn progress(line: &str) {
    eprintln!("load: {line}");
}

/// Polls `done` every 50 ms for up to `limit`; whether it came true.
fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}
