//! Every Prometheus metric Switchboard exposes, defined in one place.
//! Counters are lock-free atomics, so shards update them on the packet path.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// The process's own metrics (CPU, memory, open files), under Prometheus'
    /// standard `process_` names, not ours.
    process: Registry,
    pub http_requests: IntCounterVec,
    pub sessions_started: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub sessions_active: IntGauge,
    pub offers_refused: IntCounterVec,
    /// RTP packets and payload bytes from publishers, by media kind.
    pub packets_in: IntCounterVec,
    pub bytes_in: IntCounterVec,
    /// RTP packets and payload bytes written to viewers, by media kind.
    pub packets_out: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub udp_bytes_received: IntCounter,
    pub udp_bytes_sent: IntCounter,
    /// Open sessions by role and state (`connecting`, `connected`).
    pub sessions: IntGaugeVec,
    pub sessions_reaped: IntCounterVec,
    pub rooms: IntGauge,
    /// Published tracks, and viewer slots, by media kind.
    pub tracks: IntGaugeVec,
    pub subscriptions: IntGaugeVec,
    pub nacks_received: IntCounter,
    pub nacks_sent: IntCounter,
    pub packets_resent: IntCounter,
    pub keyframe_requests_received: IntCounterVec,
    pub loss: HistogramVec,
    pub packet_server_seconds: Histogram,
    pub shard_loop_seconds: Histogram,
    pub viewer_estimate: Histogram,
    pub datagrams_sent: IntCounter,
    pub datagrams_dropped: IntCounterVec,
    pub panics_contained: IntCounterVec,
    pub shard_restarts: IntCounter,
    pub inbox_dropped: IntCounterVec,
    pub media_routes: IntGaugeVec,
    pub send_errors: IntCounter,
    pub keyframe_requests: IntCounter,
    pub layer_switches: IntCounter,
    pub slot_switches: IntCounter,
    pub layer_cache_switches: IntCounter,
    pub first_video_seconds: Histogram,
    // HTTP serving and the registry (src/http, src/room.rs).
    pub http_connections_open: IntGauge,
    pub http_connections_refused: IntCounter,
    pub http_connection_errors: IntCounterVec,
    pub session_cap_refusals: IntCounterVec,
    pub registry_entries: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("switchboard".to_string()), None)
            .expect("the metric prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("metric definition is valid");
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .expect("metric definition is valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let loss = HistogramVec::new(
            HistogramOpts::new(
                "stream_loss_ratio",
                "Fraction of a stream's packets lost, from receiver reports every 2 s: \
                 direction out = viewers' reports of what we sent, in = ours of what \
                 publishers sent.",
            )
            .buckets(vec![
                0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
            ]),
            &["direction"],
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(loss.clone()))
            .expect("metric registered once");
        let rooms = IntGauge::new(
            "rooms",
            "Rooms with at least one session (updated when scraped).",
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(rooms.clone()))
            .expect("metric registered once");
        let sessions_active = IntGauge::new("sessions_active", "Sessions currently open.")
            .expect("metric definition is valid");
        registry
            .register(Box::new(sessions_active.clone()))
            .expect("metric registered once");
        let first_video_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "viewer_first_video_seconds",
                "Time from a viewer's WHEP offer to the first video packet (a keyframe) sent to it.",
            )
            .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0, 16.0]),
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(first_video_seconds.clone()))
            .expect("metric registered once");
        let http_connections_open = IntGauge::new(
            "http_connections_open",
            "HTTP connections open (capped by http.max_connections).",
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(http_connections_open.clone()))
            .expect("metric registered once");
        let registry_entries = IntGaugeVec::new(
            Opts::new(
                "registry_entries",
                "Entries in the room registry's tables, by table (updated when scraped).",
            ),
            &["table"],
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(registry_entries.clone()))
            .expect("metric registered once");
        let http_connections_refused = counter(
            "http_connections_refused_total",
            "HTTP connections answered 503 and closed at once: http.max_connections or \
             http.max_connections_per_ip reached.",
        );
        let http_connection_errors = counter_vec(
            "http_connection_errors_total",
            "HTTP connections closed on a client error, by reason: not_http (bytes that cannot \
             start a request, answered 400), header_timeout (http.header_read_timeout), \
             malformed (a request hyper could not parse, answered 4xx), incomplete (closed \
             mid-request).",
            &["reason"],
        );
        let session_cap_refusals = counter_vec(
            "session_cap_refusals_total",
            "Offers answered 503 because a session cap was reached, by scope: server \
             (session.max_sessions) or client (session.max_sessions_per_ip).",
            &["scope"],
        );
        let media_routes = IntGaugeVec::new(
            Opts::new(
                "media_routes",
                "Entries in each shard's datagram routing tables: bound remote addresses \
                 and ICE ufrags (bounded by its sessions).",
            ),
            &["shard", "table"],
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(media_routes.clone()))
            .expect("metric registered once");
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(e) = process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "no process metrics");
        }
        Metrics {
            process,
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests answered, by route template (e.g. /whep/{room}) and status.",
                &["route", "status"],
            ),
            media_routes,
            http_connections_open,
            http_connections_refused,
            http_connection_errors,
            session_cap_refusals,
            registry_entries,
            first_video_seconds,
            sessions_started: counter_vec(
                "sessions_started_total",
                "Sessions created, by role.",
                &["role"],
            ),
            sessions_ended: counter_vec(
                "sessions_ended_total",
                "Sessions ended, by role.",
                &["role"],
            ),
            sessions_active,
            offers_refused: counter_vec(
                "offers_refused_total",
                "Offers refused, by endpoint, client family (from User-Agent) and HTTP status.",
                &["endpoint", "client", "status"],
            ),
            packets_in: counter_vec(
                "rtp_packets_received_total",
                "RTP packets received from publishers, by media kind.",
                &["kind"],
            ),
            bytes_in: counter_vec(
                "rtp_bytes_received_total",
                "RTP payload bytes received from publishers, by media kind.",
                &["kind"],
            ),
            packets_out: counter_vec(
                "rtp_packets_forwarded_total",
                "RTP packets written to viewers, by media kind.",
                &["kind"],
            ),
            bytes_out: counter_vec(
                "rtp_bytes_forwarded_total",
                "RTP payload bytes written to viewers, by media kind.",
                &["kind"],
            ),
            udp_bytes_received: counter(
                "udp_bytes_received_total",
                "UDP payload bytes read from the media sockets (everything, junk included).",
            ),
            udp_bytes_sent: counter(
                "udp_bytes_sent_total",
                "UDP payload bytes sent from the media sockets.",
            ),
            sessions: gauge_vec(
                "sessions",
                "Open sessions by role and state: connecting (answered, ICE/DTLS not up \
                 yet) or connected.",
                &["role", "state"],
            ),
            sessions_reaped: counter_vec(
                "sessions_reaped_total",
                "Sessions the server ended on its own, by reason: never_connected (ICE or \
                 DTLS did not complete in time), silent (nothing authenticated received), \
                 ice_disconnected, closed (the connection closed or failed), failed (a \
                 contained panic).",
                &["reason"],
            ),
            rooms,
            tracks: gauge_vec(
                "tracks",
                "Tracks (m-lines) published, by media kind.",
                &["kind"],
            ),
            subscriptions: gauge_vec(
                "subscriptions",
                "Viewer slots (recvonly m-lines), by media kind.",
                &["kind"],
            ),
            nacks_received: counter(
                "nacks_received_total",
                "NACKs received from viewers (counted from the stack's stats every 2 s).",
            ),
            nacks_sent: counter(
                "nacks_sent_total",
                "NACKs sent to publishers (counted from the stack's stats every 2 s).",
            ),
            packets_resent: counter(
                "rtp_packets_resent_total",
                "Packets sent to viewers beyond those forwarded: retransmissions answering \
                 NACKs (from the stack's stats every 2 s; probe padding is not counted).",
            ),
            keyframe_requests_received: counter_vec(
                "keyframe_requests_received_total",
                "Keyframe requests received from viewers, by type (pli, fir).",
                &["type"],
            ),
            loss,
            packet_server_seconds: histogram(
                "packet_server_seconds",
                "Time from a publisher's packet arriving to the datagrams that forward it \
                 leaving a shard (one observation per packet and shard, at the end of the \
                 loop turn that wrote it: its last viewer there).",
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1,
                ],
            ),
            shard_loop_seconds: histogram(
                "shard_loop_seconds",
                "Work of one shard loop turn (reading, commands, timers, forwarding, \
                 sending), waiting excluded.",
                vec![
                    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                    0.025, 0.1,
                ],
            ),
            viewer_estimate: histogram(
                "viewer_estimate_bytes_per_second",
                "Bandwidth estimates of viewers (those of simulcast publishers), every 2 s \
                 each, in bytes per second (Prometheus' base unit; times 8 for bits).",
                [100e3, 250e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 20e6]
                    .iter()
                    .map(|bits| bits / 8.0)
                    .collect(),
            ),
            datagrams_sent: counter("udp_datagrams_sent_total", "UDP datagrams sent."),
            datagrams_dropped: counter_vec(
                "udp_datagrams_dropped_total",
                "UDP datagrams dropped before reaching a session, by reason (unknown source, \
                 STUN that names no session or fails its integrity check, not WebRTC, ...).",
                &["reason"],
            ),
            panics_contained: counter_vec(
                "panics_contained_total",
                "Panics caught inside a shard, by the step that panicked; each cost at most \
                 the one session involved.",
                &["step"],
            ),
            shard_restarts: counter(
                "shard_restarts_total",
                "Shard loops restarted after a panic outside any session (their sessions ended).",
            ),
            inbox_dropped: counter_vec(
                "shard_inbox_dropped_total",
                "Commands a full shard inbox did not take: media batches dropped, offers and \
                 PATCHes refused (answered 503).",
                &["kind"],
            ),
            send_errors: counter("udp_send_errors_total", "UDP sends that failed."),
            keyframe_requests: counter(
                "keyframe_requests_total",
                "Keyframe requests (PLI) sent to publishers.",
            ),
            layer_switches: counter(
                "layer_switches_total",
                "Simulcast layer switches made for viewers (each on a keyframe of the new layer).",
            ),
            slot_switches: counter(
                "slot_switches_total",
                "Viewer slots moved to another publisher's track (video on its keyframe).",
            ),
            layer_cache_switches: counter(
                "layer_cache_switches_total",
                "Simulcast layer switches started on the new layer's fresh keyframe cache instead of a keyframe request.",
            ),
            registry,
        }
        .with_every_label()
    }

    /// Creates every series of the labelled families that have a known, small
    /// set of label values, at zero: a dashboard's rate() finds them before the
    /// first event (and `absent()` means a renamed metric, not a quiet server).
    fn with_every_label(self) -> Self {
        for kind in KINDS.map(kind_label) {
            for family in [
                &self.packets_in,
                &self.bytes_in,
                &self.packets_out,
                &self.bytes_out,
            ] {
                family.with_label_values(&[kind]);
            }
            self.tracks.with_label_values(&[kind]);
            self.subscriptions.with_label_values(&[kind]);
        }
        for role in ["publisher", "viewer"] {
            for state in ["connecting", "connected"] {
                self.sessions.with_label_values(&[role, state]);
            }
            self.sessions_started.with_label_values(&[role]);
            self.sessions_ended.with_label_values(&[role]);
        }
        for reason in REAP_REASONS {
            self.sessions_reaped.with_label_values(&[reason]);
        }
        for kind in ["pli", "fir"] {
            self.keyframe_requests_received.with_label_values(&[kind]);
        }
        for direction in ["in", "out"] {
            self.loss.with_label_values(&[direction]);
        }
        for scope in ["server", "client"] {
            self.session_cap_refusals.with_label_values(&[scope]);
        }
        for step in PANIC_STEPS {
            self.panics_contained.with_label_values(&[step]);
        }
        self
    }
}

/// The `reason` values of `switchboard_sessions_reaped_total`.
const REAP_REASONS: [&str; 5] = [
    "never_connected",
    "silent",
    "ice_disconnected",
    "closed",
    "failed",
];

/// The shard steps whose panics are counted (`panics_contained_total{step}`).
const PANIC_STEPS: [&str; 9] = [
    "datagram", "command", "timer", "drain", "replay", "reap", "shutdown", "session", "sources",
];

/// One counter per media kind, resolved once: no label lookup per packet.
#[derive(Clone)]
pub struct ByKind([IntCounter; 2]);

/// The media kinds, in [`ByKind`]'s order.
const KINDS: [str0m::media::MediaKind; 2] = [
    str0m::media::MediaKind::Audio,
    str0m::media::MediaKind::Video,
];

impl ByKind {
    pub fn new(family: &IntCounterVec) -> Self {
        ByKind(KINDS.map(|kind| family.with_label_values(&[kind_label(kind)])))
    }

    pub fn get(&self, kind: str0m::media::MediaKind) -> &IntCounter {
        &self.0[usize::from(kind == str0m::media::MediaKind::Video)]
    }
}

/// The `kind` label of a media kind.
pub fn kind_label(kind: str0m::media::MediaKind) -> &'static str {
    match kind {
        str0m::media::MediaKind::Audio => "audio",
        str0m::media::MediaKind::Video => "video",
    }
}

impl Metrics {
    /// The label of a reap reason (see [`REAP_REASONS`]).
    pub fn reap_label(reason: &str) -> &'static str {
        use crate::peer::ended;
        match reason {
            ended::NEVER_CONNECTED => "never_connected",
            ended::SILENT => "silent",
            ended::ICE_DISCONNECTED => "ice_disconnected",
            ended::INTERNAL_ERROR => "failed",
            _ => "closed",
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&[self.registry.gather(), self.process.gather()].concat())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A bounded label for a User-Agent: the client family, never the raw string.
pub fn client_family(user_agent: &str) -> &'static str {
    let ua = user_agent.to_ascii_lowercase();
    const FAMILIES: &[(&str, &str)] = &[
        ("obs", "obs"),
        ("libdatachannel", "obs"),
        ("gstreamer", "gstreamer"),
        ("lavf", "ffmpeg"),
        ("ffmpeg", "ffmpeg"),
        ("aiortc", "aiortc"),
        ("python", "aiortc"),
        ("pion", "pion"),
        ("go-http-client", "pion"),
        ("firefox", "firefox"),
        ("edg/", "edge"),
        ("chrome", "chrome"),
        ("safari", "safari"),
        ("curl", "curl"),
    ];
    FAMILIES
        .iter()
        .find(|(needle, _)| ua.contains(needle))
        .map(|(_, family)| *family)
        .unwrap_or(if ua.is_empty() { "none" } else { "other" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(
            client_family("Mozilla/5.0 (X11) Chrome/120.0 Safari/537.36"),
            "chrome"
        );
        assert_eq!(client_family("Mozilla/5.0 Firefox/119.0"), "firefox");
        assert_eq!(client_family("OBS-Studio/30.1"), "obs");
        assert_eq!(client_family("Lavf/61.1.100"), "ffmpeg");
        assert_eq!(client_family(""), "none");
        assert_eq!(client_family("something"), "other");
    }

    #[test]
    fn renders_text_format() {
        let m = Metrics::new();
        m.packets_in.with_label_values(&["video"]).inc();
        let text = m.render();
        assert!(
            text.contains("switchboard_rtp_packets_received_total{kind=\"video\"} 1"),
            "{text}"
        );
        // Labelled families start at zero for every value they can take.
        assert!(
            text.contains("switchboard_sessions{role=\"viewer\",state=\"connected\"} 0"),
            "{text}"
        );
    }
}
