//! The configuration: embedded defaults, a TOML file, `SWITCHBOARD_*` environment
//! variables and command-line flags, in that order of precedence (last wins).
//!
//! Every key is documented, with its default, in `config/switchboard.toml`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration of one Switchboard node.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub session: SessionConfig,
    pub ice: IceConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// How the server logs (to stderr).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (one readable line per event) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// What is logged, as `RUST_LOG` says it (`RUST_LOG`, when set, wins).
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info,str0m=warn".into(),
        }
    }
}

/// Who may publish and watch: bearer tokens (JWT) on WHIP and WHEP offers.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Offers need a token. Off, anyone who reaches the HTTP port may publish to
    /// and watch any room (the server says so when it starts).
    pub enabled: bool,
    /// The HS256 secret tokens are signed with (at least 32 bytes); empty: none.
    pub hs256_secret: String,
    /// PEM files of public keys tokens may be signed for: RSA (RS256) or EC P-256
    /// (ES256).
    pub public_key_files: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP server (WHIP, WHEP, the page, metrics) listens on.
    pub listen: SocketAddr,
    /// Largest accepted request body (an SDP offer), in bytes.
    pub max_body_bytes: usize,
    /// Value of `Access-Control-Allow-Origin`.
    pub cors_allow_origin: String,
    /// How long a client has to send a request's line and headers, counted from
    /// when the server starts waiting for them (a new connection, or the end of
    /// the previous response on a kept-alive one). Past it the connection is closed.
    #[serde(with = "duration_secs")]
    pub header_read_timeout: Duration,
    /// How long a client has to send a request's body once its headers are in.
    /// Past it the request is answered 408 and the connection closed.
    #[serde(with = "duration_secs")]
    pub body_read_timeout: Duration,
    /// Open HTTP connections, all clients together. Past it a new connection is
    /// answered 503 and closed.
    pub max_connections: usize,
    /// Open HTTP connections from one client address (IPv6: one /64).
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Number of shards (media threads); 0 means one per core.
    pub shards: usize,
    /// IP addresses the media sockets bind to. Empty means the loopback and every
    /// local interface address (IPv4 and non-link-local IPv6).
    pub bind_ips: Vec<IpAddr>,
    /// Lowest UDP port of the media range. Shard `i` uses port `udp_port_min + i`.
    /// 0 lets the operating system choose (tests).
    pub udp_port_min: u16,
    /// Highest UDP port of the media range (inclusive).
    pub udp_port_max: u16,
    /// Public addresses announced to peers when the server sits behind a 1:1 NAT.
    /// Each is announced as a server-reflexive candidate of every bound address.
    pub public_ips: Vec<IpAddr>,
    /// Bytes kept per video track so a new viewer starts at once (the packets
    /// since the last keyframe). 0 disables the cache.
    pub keyframe_cache_bytes: usize,
    /// Where the bandwidth estimate (TWCC) of each viewer of a simulcast
    /// publisher starts, in kbit/s; the layer it gets is the best one the estimate
    /// carries. 0 turns the estimation off: every viewer gets the best layer
    /// running (within its pin or cap).
    pub viewer_initial_estimate_kbps: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session that has not connected, whose ICE or DTLS failed, or that has
    /// received nothing for this long is ended and its resources freed.
    #[serde(with = "duration_secs")]
    pub reap_timeout: Duration,
    /// Smallest interval between two keyframe requests sent to one publisher track.
    #[serde(with = "duration_millis")]
    pub keyframe_request_interval: Duration,
    /// Sessions (publishers and viewers, including offers still being
    /// accepted) the node holds at once. Past it WHIP/WHEP POSTs get 503.
    pub max_sessions: usize,
    /// Sessions one client address (IPv6: one /64) holds at once.
    pub max_sessions_per_ip: usize,
    /// Publishers one room holds at once (a conference's participants who
    /// publish). Past it WHIP POSTs to the room get 409.
    pub max_publishers_per_room: usize,
    /// On SIGTERM/SIGINT the server stops taking sessions and keeps the running
    /// ones for at most this long (or until they end), then exits. A second
    /// signal exits at once.
    #[serde(with = "duration_secs")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IceConfig {
    /// STUN/TURN servers advertised to WHIP/WHEP clients in `Link` headers.
    pub servers: Vec<IceServer>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp` or `turns:...`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            cors_allow_origin: "*".to_string(),
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            shards: 0,
            bind_ips: Vec::new(),
            udp_port_min: 50000,
            udp_port_max: 50099,
            public_ips: Vec::new(),
            keyframe_cache_bytes: 8 * 1024 * 1024,
            // As mediasoup's initial available bitrate: a new viewer does not start
            // on a layer a narrow link cannot carry, and climbs where it can.
            viewer_initial_estimate_kbps: 600,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            reap_timeout: Duration::from_secs(30),
            keyframe_request_interval: Duration::from_millis(500),
            max_sessions: 5_000,
            max_sessions_per_ip: 500,
            max_publishers_per_room: 50,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A configuration error, naming the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl Config {
    /// A configuration for tests: everything on 127.0.0.1, ephemeral ports, two
    /// shards, short timeouts.
    pub fn for_tests() -> Self {
        let mut config = Config::default();
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.media.shards = 2;
        config.media.bind_ips = vec![IpAddr::from([127, 0, 0, 1])];
        config.media.udp_port_min = 0;
        config.media.udp_port_max = 0;
        config.session.reap_timeout = Duration::from_secs(5);
        config
    }

    /// Parses a TOML document; unknown keys and bad values are errors that name the key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Applies `SWITCHBOARD_SECTION_KEY` environment variables (e.g.
    /// `SWITCHBOARD_HTTP_LISTEN=0.0.0.0:8080`) read through `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for key in ENV_KEYS {
            let var = format!("SWITCHBOARD_{}", key.replace('.', "_").to_uppercase());
            if let Some(value) = lookup(&var) {
                self.set(key, &value).map_err(|e| match e {
                    ConfigError::Invalid { key, message } => ConfigError::Invalid {
                        key: format!("{key} (from {var})"),
                        message,
                    },
                    other => other,
                })?;
            }
        }
        Ok(())
    }

    /// Sets one key from its textual value (used by environment variables and flags).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(
            key: &str,
            value: &str,
            what: &str,
        ) -> Result<T, ConfigError> {
            value
                .trim()
                .parse()
                .map_err(|_| ConfigError::invalid(key, format!("`{value}` is not {what}")))
        }
        fn list<T: std::str::FromStr>(
            key: &str,
            value: &str,
            what: &str,
        ) -> Result<Vec<T>, ConfigError> {
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| parse(key, s, what))
                .collect()
        }
        fn seconds(key: &str, value: &str) -> Result<Duration, ConfigError> {
            let secs: f64 = parse(key, value, "a number of seconds")?;
            Duration::try_from_secs_f64(secs).map_err(|_| {
                ConfigError::invalid(
                    key,
                    format!("`{value}` is not a number of seconds, 0 or more"),
                )
            })
        }
        match key {
            "http.listen" => {
                self.http.listen = parse(key, value, "an address like 127.0.0.1:8080")?
            }
            "http.max_body_bytes" => {
                self.http.max_body_bytes = parse(key, value, "a number of bytes")?
            }
            "http.cors_allow_origin" => self.http.cors_allow_origin = value.to_string(),
            "http.header_read_timeout" => self.http.header_read_timeout = seconds(key, value)?,
            "http.body_read_timeout" => self.http.body_read_timeout = seconds(key, value)?,
            "http.max_connections" => {
                self.http.max_connections = parse(key, value, "a number of connections")?
            }
            "http.max_connections_per_ip" => {
                self.http.max_connections_per_ip = parse(key, value, "a number of connections")?
            }
            "media.shards" => self.media.shards = parse(key, value, "a number of shards")?,
            "media.bind_ips" => self.media.bind_ips = list(key, value, "an IP address")?,
            "media.udp_port_min" => self.media.udp_port_min = parse(key, value, "a UDP port")?,
            "media.udp_port_max" => self.media.udp_port_max = parse(key, value, "a UDP port")?,
            "media.public_ips" => self.media.public_ips = list(key, value, "an IP address")?,
            "media.keyframe_cache_bytes" => {
                self.media.keyframe_cache_bytes = parse(key, value, "a number of bytes")?
            }
            "media.viewer_initial_estimate_kbps" => {
                self.media.viewer_initial_estimate_kbps = parse(key, value, "a bitrate in kbit/s")?
            }
            "session.reap_timeout" => {
                self.session.reap_timeout =
                    Duration::from_secs(parse(key, value, "a number of seconds")?)
            }
            "session.keyframe_request_interval" => {
                self.session.keyframe_request_interval =
                    Duration::from_millis(parse(key, value, "a number of milliseconds")?)
            }
            "session.max_sessions" => {
                self.session.max_sessions = parse(key, value, "a number of sessions")?
            }
            "session.max_sessions_per_ip" => {
                self.session.max_sessions_per_ip = parse(key, value, "a number of sessions")?
            }
            "session.max_publishers_per_room" => {
                self.session.max_publishers_per_room = parse(key, value, "a number of publishers")?
            }
            "session.drain_timeout" => self.session.drain_timeout = seconds(key, value)?,
            "log.format" => self.log.format = parse(key, value, "human or json")?,
            "log.level" => self.log.level = value.to_string(),
            "auth.enabled" => self.auth.enabled = parse(key, value, "true or false")?,
            "auth.hs256_secret" => self.auth.hs256_secret = value.to_string(),
            "auth.public_key_files" => {
                self.auth.public_key_files = list(key, value, "a file path")?
            }
            _ => return Err(ConfigError::invalid(key, "unknown key")),
        }
        Ok(())
    }

    /// The token verifier auth is configured for (`None`: auth is off), its key
    /// files read; a key that cannot be used is an error naming the key.
    pub fn token_verifier(&self) -> Result<Option<crate::auth::Verifier>, ConfigError> {
        if !self.auth.enabled {
            return Ok(None);
        }
        let mut pems = Vec::new();
        for path in &self.auth.public_key_files {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(
                    "auth.public_key_files",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            pems.push(pem);
        }
        crate::auth::Verifier::new(&self.auth.hs256_secret, &pems)
            .map(Some)
            .map_err(|e| ConfigError::invalid("auth", e.to_string()))
    }

    /// Checks what the types alone cannot: the port range against the shards, the
    /// addresses against what can be bound and announced.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.token_verifier()?;
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024 bytes: real offers are up to ~14 kB",
            ));
        }
        for (key, timeout) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.body_read_timeout", self.http.body_read_timeout),
        ] {
            if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(3600) {
                return Err(ConfigError::invalid(
                    key,
                    "must be between 0.1 and 3600 seconds",
                ));
            }
        }
        for (key, cap) in [
            ("http.max_connections", self.http.max_connections),
            (
                "http.max_connections_per_ip",
                self.http.max_connections_per_ip,
            ),
            ("session.max_sessions", self.session.max_sessions),
            (
                "session.max_sessions_per_ip",
                self.session.max_sessions_per_ip,
            ),
            (
                "session.max_publishers_per_room",
                self.session.max_publishers_per_room,
            ),
        ] {
            if cap == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        let shards = self.shard_count();
        if self.media.udp_port_min != 0 {
            if self.media.udp_port_max < self.media.udp_port_min {
                return Err(ConfigError::invalid(
                    "media.udp_port_max",
                    format!(
                        "{} is below media.udp_port_min ({})",
                        self.media.udp_port_max, self.media.udp_port_min
                    ),
                ));
            }
            let ports = usize::from(self.media.udp_port_max - self.media.udp_port_min) + 1;
            if ports < shards {
                return Err(ConfigError::invalid(
                    "media.udp_port_min",
                    format!(
                        "port range too small: {ports} port(s) for {shards} shard(s); each shard needs one port"
                    ),
                ));
            }
        }
        for ip in &self.media.bind_ips {
            if ip.is_unspecified() {
                return Err(ConfigError::invalid(
                    "media.bind_ips",
                    format!("{ip} cannot be announced to peers; list the interface addresses, or leave empty for all"),
                ));
            }
            if ip.is_multicast() {
                return Err(ConfigError::invalid(
                    "media.bind_ips",
                    format!("{ip} is a multicast address"),
                ));
            }
        }
        for ip in &self.media.public_ips {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(ConfigError::invalid(
                    "media.public_ips",
                    format!("{ip} is not an address peers can reach"),
                ));
            }
        }
        for (i, server) in self.ice.servers.iter().enumerate() {
            let scheme = server.url.split(':').next().unwrap_or_default();
            if !matches!(scheme, "stun" | "stuns" | "turn" | "turns") {
                return Err(ConfigError::invalid(
                    &format!("ice.servers[{i}].url"),
                    format!(
                        "`{}` must start with stun:, stuns:, turn: or turns:",
                        server.url
                    ),
                ));
            }
        }
        if self.session.reap_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "session.reap_timeout",
                "must be at least 1 second",
            ));
        }
        Ok(())
    }

    /// The number of shards to run: the configured number, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.media.shards > 0 {
            self.media.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Keys that can be set from the environment, as `section.key`.
const ENV_KEYS: &[&str] = &[
    "http.listen",
    "http.max_body_bytes",
    "http.cors_allow_origin",
    "http.header_read_timeout",
    "http.body_read_timeout",
    "http.max_connections",
    "http.max_connections_per_ip",
    "media.shards",
    "media.bind_ips",
    "media.udp_port_min",
    "media.udp_port_max",
    "media.public_ips",
    "media.keyframe_cache_bytes",
    "media.viewer_initial_estimate_kbps",
    "session.reap_timeout",
    "session.keyframe_request_interval",
    "session.max_sessions",
    "session.max_sessions_per_ip",
    "session.max_publishers_per_room",
    "session.drain_timeout",
    "log.format",
    "log.level",
    "auth.enabled",
    "auth.hs256_secret",
    "auth.public_key_files",
];

mod duration_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !(0.0..=86_400.0 * 365.0).contains(&secs) {
            return Err(serde::de::Error::custom("a number of seconds, 0 or more"));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

mod duration_millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let millis = u64::deserialize(d)?;
        Ok(Duration::from_millis(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_equals_the_embedded_defaults() {
        let text = include_str!("../config/switchboard.toml");
        let parsed = Config::from_toml(text).expect("config/switchboard.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[http]\nlisten_addr = \"1.2.3.4:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_address_is_named() {
        let err = Config::from_toml("[http]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn port_range_too_small_names_the_key() {
        let mut c = Config::default();
        c.media.shards = 4;
        c.media.udp_port_min = 50000;
        c.media.udp_port_max = 50001;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("media.udp_port_min"), "{err}");
        assert!(err.to_string().contains("too small"), "{err}");
    }

    #[test]
    fn env_overrides_and_errors_name_the_variable() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "SWITCHBOARD_HTTP_LISTEN").then(|| "0.0.0.0:9000".to_string()))
            .unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:9000".parse().unwrap());
        let err = c
            .apply_env(|k| (k == "SWITCHBOARD_MEDIA_SHARDS").then(|| "many".to_string()))
            .unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD_MEDIA_SHARDS"),
            "{err}"
        );
    }

    #[test]
    fn durations_read_as_seconds_and_millis() {
        let c =
            Config::from_toml("[session]\nreap_timeout = 12\nkeyframe_request_interval = 250\n")
                .unwrap();
        assert_eq!(c.session.reap_timeout, Duration::from_secs(12));
        assert_eq!(
            c.session.keyframe_request_interval,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn http_timeouts_and_caps_from_file_and_env() {
        let mut c = Config::from_toml(
            "[http]\nheader_read_timeout = 2.5\nbody_read_timeout = 3\nmax_connections = 7\n\
             [session]\nmax_sessions = 9\nmax_sessions_per_ip = 4\n",
        )
        .unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(3));
        assert_eq!(c.http.max_connections, 7);
        assert_eq!(c.session.max_sessions, 9);
        assert_eq!(c.session.max_sessions_per_ip, 4);
        c.apply_env(|k| match k {
            "SWITCHBOARD_HTTP_BODY_READ_TIMEOUT" => Some("0.5".to_string()),
            "SWITCHBOARD_HTTP_MAX_CONNECTIONS_PER_IP" => Some("3".to_string()),
            "SWITCHBOARD_SESSION_MAX_SESSIONS_PER_IP" => Some("2".to_string()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.http.body_read_timeout, Duration::from_millis(500));
        assert_eq!(c.http.max_connections_per_ip, 3);
        assert_eq!(c.session.max_sessions_per_ip, 2);
        c.validate().unwrap();
        let err = c
            .apply_env(|k| (k == "SWITCHBOARD_HTTP_HEADER_READ_TIMEOUT").then(|| "-1".to_string()))
            .unwrap_err();
        assert!(
            err.to_string().contains("http.header_read_timeout"),
            "{err}"
        );
    }

    #[test]
    fn zero_caps_and_timeouts_name_the_key() {
        let mut c = Config::default();
        c.session.max_sessions = 0;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("session.max_sessions"), "{err}");
        let mut c = Config::default();
        c.http.header_read_timeout = Duration::ZERO;
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains("http.header_read_timeout"),
            "{err}"
        );
    }

    #[test]
    fn unspecified_bind_ip_is_refused() {
        let mut c = Config::default();
        c.media.bind_ips = vec!["0.0.0.0".parse().unwrap()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("media.bind_ips"));
    }
}
