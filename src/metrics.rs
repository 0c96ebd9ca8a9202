//! Every Prometheus metric Switchboard exposes, defined in one place.
//! Counters are lock-free atomics, so shards update them on the packet path.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
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
    pub packets_in: IntCounter,
    pub packets_out: IntCounter,
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
            packets_in: counter(
                "rtp_packets_received_total",
                "RTP packets received from publishers.",
            ),
            packets_out: counter(
                "rtp_packets_forwarded_total",
                "RTP packets written to viewers.",
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
        m.packets_in.inc();
        let text = m.render();
        assert!(
            text.contains("switchboard_rtp_packets_received_total 1"),
            "{text}"
        );
    }
}
