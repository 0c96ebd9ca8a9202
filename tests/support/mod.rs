//! The in-repo WebRTC test client: str0m peers (RTP mode) on 127.0.0.1 that
//! publish over WHIP and play over WHEP, and the helpers the integration tests
//! share. Each test binary uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod auth;
pub mod check;
pub mod flow;
pub mod hostile;
pub mod http;
pub mod media;
pub mod obs;
pub mod peer;
pub mod rng;
pub mod shaper;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::Rtc;

pub use check::{check_stream, check_stream_with, Segment, StreamReport, Timestamps};
pub use media::{Format, Kind, ReceivedPacket, SentPacket, Vp8Descriptor};
pub use obs::{ObsOptions, ObsPublisher};
pub use peer::{ClientDtls, Codecs, Peer, PeerState, SendConfig};

/// Installs a tracing subscriber once (`RUST_LOG` decides what is shown; nothing by default).
/// The server binary, to serve on 127.0.0.1 with OS-chosen media ports and
/// `extra` arguments (such as `--listen`).
pub fn server_command(extra: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args([
        "serve",
        "--media-ip",
        "127.0.0.1",
        "--udp-port-min",
        "0",
        "--udp-port-max",
        "0",
    ]);
    command.args(extra);
    command
}

pub fn init_logging() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Runs a test body with an overall deadline, so that no test can hang.
pub async fn with_timeout<F: Future<Output = T>, T>(limit: Duration, fut: F) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Options for [`Publisher::start`].
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    pub send: SendConfig,
    pub codecs: Codecs,
    pub dtls: ClientDtls,
    /// Publish as this participant (the `participant` query parameter).
    pub participant: Option<String>,
    /// A bearer token for the offer.
    pub token: Option<String>,
}

impl PublisherOptions {
    /// Audio + video, publisher tag `tag`.
    pub fn new(tag: u32) -> Self {
        PublisherOptions {
            send: SendConfig::new(tag),
            codecs: Codecs::Default,
            dtls: ClientDtls::default(),
            participant: None,
            token: None,
        }
    }

    pub fn dtls(mut self, dtls: ClientDtls) -> Self {
        self.dtls = dtls;
        self
    }

    pub fn audio_only(mut self) -> Self {
        self.send.video = false;
        self
    }

    pub fn video_only(mut self) -> Self {
        self.send.audio = false;
        self
    }

    pub fn keyframe_interval(mut self, frames: Option<u32>) -> Self {
        self.send.keyframe_interval = frames;
        self
    }

    pub fn answer_keyframe_requests(mut self, yes: bool) -> Self {
        self.send.answer_keyframe_requests = yes;
        self
    }

    pub fn descriptor(mut self, d: Vp8Descriptor) -> Self {
        self.send.descriptor = d;
        self
    }
}

/// Options for [`Viewer::start`].
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    pub audio: bool,
    pub video: bool,
    pub codecs: Codecs,
    pub dtls: ClientDtls,
    /// Header extension URIs left out of the offer, as a client that does not
    /// know them would.
    pub unsupported_extensions: Vec<&'static str>,
    /// Reach the server through this bottleneck link.
    pub via: Option<std::sync::Arc<shaper::Shaper>>,
    /// Open a data channel.
    pub channel: bool,
    /// Join as this participant (the `participant` query parameter).
    pub participant: Option<String>,
    /// A bearer token for the offer.
    pub token: Option<String>,
    /// Recvonly m-lines of each kind offered: the slots of a conference viewer.
    pub slots: usize,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        ViewerOptions {
            audio: true,
            video: true,
            codecs: Codecs::Default,
            dtls: ClientDtls::default(),
            unsupported_extensions: Vec::new(),
            via: None,
            channel: false,
            participant: None,
            token: None,
            slots: 1,
        }
    }
}

impl ViewerOptions {
    pub fn via(mut self, shaper: std::sync::Arc<shaper::Shaper>) -> Self {
        self.via = Some(shaper);
        self
    }

    pub fn codecs(mut self, c: Codecs) -> Self {
        self.codecs = c;
        self
    }

    pub fn dtls(mut self, dtls: ClientDtls) -> Self {
        self.dtls = dtls;
        self
    }
}

/// The result of a successful WHIP/WHEP POST.
#[derive(Debug, Clone)]
pub struct Session {
    pub http_addr: SocketAddr,
    /// The `Location` header as sent.
    pub location: String,
    pub etag: Option<String>,
    pub offer: String,
    pub answer: String,
    pub response: http::Response,
}

impl Session {
    /// The session a 201 answer to the POST of `offer` to `path` created; an
    /// error when the answer has no `Location`.
    pub fn created(
        http_addr: SocketAddr,
        path: &str,
        offer: String,
        resp: http::Response,
    ) -> Result<Session, String> {
        let location = resp.header("location").to_string();
        if location.is_empty() {
            return Err(format!("POST {path}: 201 without a Location header"));
        }
        let etag = resp
            .headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        Ok(Session {
            http_addr,
            location,
            etag,
            offer,
            answer: resp.body.clone(),
            response: resp,
        })
    }

    /// DELETE the session resource; returns the status.
    pub async fn delete(&self) -> Result<u16, String> {
        Ok(http::delete(self.http_addr, &self.location).await?.status)
    }
}

/// A peer that has made its offer and waits for the answer.
pub struct PendingPeer {
    rtc: Rtc,
    socket: std::net::UdpSocket,
    mids: Vec<(Mid, MediaKind)>,
    pending: SdpPendingOffer,
    /// The offer, as SDP text.
    pub offer: String,
}

impl PendingPeer {
    /// Binds 127.0.0.1:0, adds it as the only candidate and offers one m-line per entry.
    pub fn offer(codecs: Codecs, lines: &[(MediaKind, Direction)]) -> Result<Self, String> {
        Self::offer_with(codecs, ClientDtls::default(), lines)
    }

    /// [`PendingPeer::offer`] with the DTLS side `dtls`.
    pub fn offer_with(
        codecs: Codecs,
        dtls: ClientDtls,
        lines: &[(MediaKind, Direction)],
    ) -> Result<Self, String> {
        Self::offer_full(codecs, dtls, lines, false)
    }

    /// [`PendingPeer::offer_with`], with a data channel (`chat`) if `channel`.
    pub fn offer_full(
        codecs: Codecs,
        dtls: ClientDtls,
        lines: &[(MediaKind, Direction)],
        channel: bool,
    ) -> Result<Self, String> {
        let mut rtc = peer::build_rtc_with(codecs, dtls);
        let socket = peer::bind_loopback(&mut rtc)?;
        let mut api = rtc.sdp_api();
        let mids: Vec<(Mid, MediaKind)> = lines
            .iter()
            .map(|(kind, dir)| (api.add_media(*kind, *dir, None, None, None), *kind))
            .collect();
        if channel {
            api.add_channel("chat".to_string());
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| "str0m made no offer".to_string())?;
        Ok(PendingPeer {
            rtc,
            socket,
            mids,
            pending,
            offer: offer.to_sdp_string(),
        })
    }

    /// Leaves the header extensions named by `uris` out of the offer text, as a
    /// client that does not know them would.
    pub fn without_extensions(mut self, uris: &[&str]) -> Self {
        self.offer = self
            .offer
            .split_inclusive('\n')
            .filter(|line| {
                !(line.starts_with("a=extmap:")
                    && uris.iter().any(|uri| line.trim_end().ends_with(uri)))
            })
            .collect();
        self
    }

    /// Applies the answer and starts the peer thread.
    pub fn accept(
        mut self,
        name: &str,
        answer: &str,
        send: Option<SendConfig>,
    ) -> Result<Peer, String> {
        let answer = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| format!("answer does not parse ({e}): {answer:?}"))?;
        self.rtc
            .sdp_api()
            .accept_answer(self.pending, answer)
            .map_err(|e| format!("str0m rejects the answer: {e}"))?;
        Peer::spawn(name, self.rtc, self.socket, self.mids, send)
    }
}

/// POST `pending`'s offer to `path`, apply the answer, spawn the thread.
async fn negotiate(
    name: &str,
    http_addr: SocketAddr,
    path: &str,
    pending: PendingPeer,
    send: Option<SendConfig>,
    via: Option<&shaper::Shaper>,
    token: Option<&str>,
) -> Result<(Peer, Session), String> {
    // Behind a relay the offer goes without candidates: the server learns only the
    // relay's address (from the checks through it) and cannot reach around it.
    let offer = match via {
        Some(_) => shaper::without_candidates(&pending.offer),
        None => pending.offer.clone(),
    };
    let resp = http::request_with_token(
        reqwest::Method::POST,
        &http::url(http_addr, path),
        token,
        Some(("application/sdp", offer.clone().into_bytes())),
    )
    .await?;
    if resp.status != 201 {
        return Err(format!(
            "POST {path}: status {} (expected 201), body {:?}",
            resp.status, resp.body
        ));
    }
    let session = Session::created(http_addr, path, offer, resp)?;
    let answer = match via {
        Some(shaper) => shaper.rewrite_answer(&session.answer),
        None => session.answer.clone(),
    };
    let peer = pending
        .accept(name, &answer, send)
        .map_err(|e| format!("POST {path}: {e}"))?;
    Ok((peer, session))
}

/// A WHIP publisher writing synthetic Opus + VP8.
pub struct Publisher {
    pub peer: Peer,
    pub session: Session,
    pub options: PublisherOptions,
}

impl Publisher {
    /// Offers sendonly audio and/or video to `/whip/{room}` and starts sending once connected.
    pub async fn start(
        http_addr: SocketAddr,
        room: &str,
        options: PublisherOptions,
    ) -> Result<Publisher, String> {
        let mut lines = Vec::new();
        if options.send.audio {
            lines.push((MediaKind::Audio, Direction::SendOnly));
        }
        if options.send.video {
            lines.push((MediaKind::Video, Direction::SendOnly));
        }
        let name = format!("pub{}", options.send.tag);
        let path = match &options.participant {
            Some(p) => format!("/whip/{room}?participant={p}"),
            None => format!("/whip/{room}"),
        };
        let (peer, session) = negotiate(
            &name,
            http_addr,
            &path,
            PendingPeer::offer_with(options.codecs, options.dtls, &lines)?,
            Some(options.send.clone()),
            None,
            options.token.as_deref(),
        )
        .await?;
        Ok(Publisher {
            peer,
            session,
            options,
        })
    }

    /// DELETE the WHIP session (the peer keeps running until [`Publisher::close`] or drop).
    pub async fn delete(&self) -> Result<u16, String> {
        self.session.delete().await
    }

    /// Stops the peer thread.
    pub fn close(&mut self) {
        self.peer.stop();
    }

    pub fn tag(&self) -> u32 {
        self.options.send.tag
    }

    /// Stops writing media (connection stays up).
    pub fn pause(&self) {
        self.peer.pause(true);
    }

    pub fn resume(&self) {
        self.peer.pause(false);
    }

    /// Sends audio at this RFC 6464 level (-127 silence to 0 loudest) from now on.
    pub fn set_audio_level(&self, level: i8) {
        self.peer.set_audio_level(level);
    }

    pub fn sent(&self, kind: Kind) -> Vec<SentPacket> {
        self.peer.sent(kind)
    }

    pub fn sent_count(&self, kind: Kind) -> usize {
        self.peer.sent_count(kind)
    }

    pub fn keyframe_requests(&self) -> usize {
        self.peer.keyframe_requests()
    }

    pub fn connected(&self) -> bool {
        self.peer.connected()
    }
}

/// A WHEP viewer recording every RTP packet.
pub struct Viewer {
    pub peer: Peer,
    pub session: Session,
    pub options: ViewerOptions,
}

impl Viewer {
    /// Offers recvonly audio and/or video to `/whep/{room}`.
    pub async fn start(
        http_addr: SocketAddr,
        room: &str,
        options: ViewerOptions,
    ) -> Result<Viewer, String> {
        let mut lines = Vec::new();
        for _ in 0..options.slots.max(1) {
            if options.audio {
                lines.push((MediaKind::Audio, Direction::RecvOnly));
            }
            if options.video {
                lines.push((MediaKind::Video, Direction::RecvOnly));
            }
        }
        let path = match &options.participant {
            Some(p) => format!("/whep/{room}?participant={p}"),
            None => format!("/whep/{room}"),
        };
        let (peer, session) = negotiate(
            "viewer",
            http_addr,
            &path,
            PendingPeer::offer_full(options.codecs, options.dtls, &lines, options.channel)?
                .without_extensions(&options.unsupported_extensions),
            None,
            options.via.as_deref(),
            options.token.as_deref(),
        )
        .await?;
        Ok(Viewer {
            peer,
            session,
            options,
        })
    }

    pub async fn delete(&self) -> Result<u16, String> {
        self.session.delete().await
    }

    pub fn close(&mut self) {
        self.peer.stop();
    }

    /// Sends a PLI on the video m-line.
    pub fn request_keyframe(&self) {
        self.peer.request_keyframe(KeyframeRequestKind::Pli);
    }

    pub fn received(&self, kind: Kind) -> Vec<ReceivedPacket> {
        self.peer.with_state(|s| s.received_of(kind))
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.peer.with_state(|s| s.count_of(kind))
    }

    pub fn connected(&self) -> bool {
        self.peer.connected()
    }

    /// The payload type this viewer negotiated for `kind`.
    pub fn expected_pt(&self, kind: Kind) -> u8 {
        match kind {
            Kind::Audio => self.options.codecs.opus_pt(),
            Kind::Video => self.options.codecs.video_pt(),
        }
    }

    /// True when the last packet of `kind` received carries the identity of `last`.
    pub fn has_received(&self, last: &SentPacket) -> bool {
        self.peer.with_state(|s| {
            s.received
                .iter()
                .rev()
                .take(64)
                .any(|r| r.identity() == Some(last.id))
        })
    }
}

/// Makes an offer with str0m without a peer behind it (for error tests).
pub fn offer_sdp(rtc: &mut Rtc, lines: &[(MediaKind, Direction)], channel: bool) -> String {
    let _ = peer::bind_loopback(rtc);
    let mut api = rtc.sdp_api();
    for (kind, dir) in lines {
        api.add_media(*kind, *dir, None, None, None);
    }
    if channel {
        api.add_channel("data".to_string());
    }
    let (offer, _pending) = api.apply().expect("str0m makes an offer");
    offer.to_sdp_string()
}

/// A str0m client's offer to publish audio and video (no peer behind it).
pub fn publisher_offer() -> String {
    let mut rtc = peer::build_rtc(Codecs::Default);
    offer_sdp(
        &mut rtc,
        &[
            (MediaKind::Audio, Direction::SendOnly),
            (MediaKind::Video, Direction::SendOnly),
        ],
        false,
    )
}

/// A str0m client's offer to watch audio and video (no peer behind it).
pub fn viewer_offer() -> String {
    let mut rtc = peer::build_rtc(Codecs::Default);
    offer_sdp(
        &mut rtc,
        &[
            (MediaKind::Audio, Direction::RecvOnly),
            (MediaKind::Video, Direction::RecvOnly),
        ],
        false,
    )
}

/// Answers an offer directly (no HTTP) with a str0m peer; used by the client's own tests.
pub fn answer_locally(
    name: &str,
    offer: &str,
    codecs: Codecs,
    send: Option<SendConfig>,
) -> Result<(Peer, String), String> {
    let mut rtc = peer::build_rtc(codecs);
    let socket = peer::bind_loopback(&mut rtc)?;
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| format!("offer: {e}"))?;
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("accept_offer: {e}"))?;
    let peer = Peer::spawn(name, rtc, socket, Vec::new(), send)?;
    Ok((peer, answer.to_sdp_string()))
}
