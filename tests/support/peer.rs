//! A str0m peer (RTP mode) driven by its own thread and UDP socket on 127.0.0.1.
//!
//! The thread records everything it receives and, when given a [`SendConfig`],
//! writes synthetic Opus and VP8 RTP (see [`super::media`]) on its send m-lines as
//! soon as it is connected. State is shared behind a mutex and read by the tests
//! through [`Peer::with_state`]. Dropping the [`Peer`] stops the thread.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::config::DtlsCert;
use str0m::crypto::CryptoProvider;
use str0m::format::{Codec, CodecConfig, FormatParams};
use str0m::media::{Frequency, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::rtcp::SenderInfo;
use str0m::rtp::{Extension, ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use super::media::{
    audio_payload, h264_access_unit, identity, layer_tag, video_frame, Format, Kind,
    ReceivedPacket, SentPacket, Vp8Descriptor, AUDIO_TICKS_PER_PACKET, VIDEO_TICKS_PER_FRAME,
};

/// The payload types a peer offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codecs {
    /// str0m's defaults: Opus 111, VP8 96 (RTX 97).
    Default,
    /// Other numbers, as some clients use: Opus 100, VP8 102 (RTX 103).
    Custom,
    /// Opus 111 and one H264 (packetization-mode 1, `42e01f`) on 102, no RTX.
    H264,
    /// Opus 111 and one H264 (packetization-mode 1, `42e01f`) on 125, no RTX.
    H264Alt,
    /// Opus 111 and one H264 (packetization-mode 1, Constrained High `640c1f`,
    /// as Safari offers it) on 127, no RTX.
    H264High,
}

impl Codecs {
    pub fn opus_pt(self) -> u8 {
        match self {
            Codecs::Default | Codecs::H264 | Codecs::H264Alt | Codecs::H264High => 111,
            Codecs::Custom => 100,
        }
    }

    /// The payload type of the (only) video codec.
    pub fn video_pt(self) -> u8 {
        match self {
            Codecs::Default => 96,
            Codecs::Custom => 102,
            Codecs::H264 => 102,
            Codecs::H264Alt => 125,
            Codecs::H264High => 127,
        }
    }

    /// Same as [`Codecs::video_pt`] (kept for the VP8 tests).
    pub fn vp8_pt(self) -> u8 {
        self.video_pt()
    }

    /// The format of the video this peer offers.
    pub fn video_format(self) -> Format {
        match self {
            Codecs::Default | Codecs::Custom => Format::Vp8,
            Codecs::H264 | Codecs::H264Alt | Codecs::H264High => Format::H264,
        }
    }
}

/// H264 format parameters: packetization mode 1 and the given profile-level-id.
pub fn h264_params(profile_level_id: u32) -> FormatParams {
    FormatParams {
        level_asymmetry_allowed: Some(true),
        packetization_mode: Some(1),
        profile_level_id: Some(profile_level_id),
        ..Default::default()
    }
}

/// Opus as OBS offers it: stereo, in-band FEC.
pub fn opus_params() -> FormatParams {
    FormatParams {
        min_p_time: Some(10),
        use_inband_fec: Some(true),
        ..Default::default()
    }
}

pub fn crypto() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

/// Opus (stereo, in-band FEC) on `opus_pt` and H264 (packetization mode 1,
/// `profile`, no RTX) on `video_pt`.
pub fn add_opus_h264(c: &mut CodecConfig, opus_pt: u8, video_pt: u8, profile: u32) {
    c.add_config(
        Pt::from(opus_pt),
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        opus_params(),
    );
    c.add_config(
        Pt::from(video_pt),
        None,
        Codec::H264,
        Frequency::NINETY_KHZ,
        None,
        h264_params(profile),
    );
}

/// The DTLS side of a test peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientDtls {
    /// str0m's own DTLS (dimpl) with an ECDSA certificate, as Chrome and Firefox present.
    #[default]
    EcdsaDimpl,
    /// OpenSSL's DTLS with an RSA-2048 certificate, as GStreamer's webrtcbin presents.
    RsaOpenssl,
}

/// A self-signed RSA-2048 certificate, made once per process (RSA keys are slow to make).
pub fn rsa_certificate() -> DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let make = || -> Result<DtlsCert, openssl::error::ErrorStack> {
            let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048)?)?;
            let mut name = openssl::x509::X509NameBuilder::new()?;
            name.append_entry_by_text("CN", "gstreamer-like")?;
            let name = name.build();
            let mut builder = openssl::x509::X509::builder()?;
            builder.set_version(2)?;
            builder.set_subject_name(&name)?;
            builder.set_issuer_name(&name)?;
            builder.set_not_before(openssl::asn1::Asn1Time::days_from_now(0)?.as_ref())?;
            builder.set_not_after(openssl::asn1::Asn1Time::days_from_now(1)?.as_ref())?;
            builder.set_pubkey(&key)?;
            builder.sign(&key, openssl::hash::MessageDigest::sha256())?;
            Ok(DtlsCert {
                certificate: builder.build().to_der()?,
                private_key: key.private_key_to_der()?,
            })
        };
        make().expect("OpenSSL makes an RSA certificate")
    })
    .clone()
}

/// A str0m `Rtc` in RTP mode offering only Opus and VP8.
pub fn build_rtc(codecs: Codecs) -> Rtc {
    build_rtc_with(codecs, ClientDtls::EcdsaDimpl)
}

/// [`build_rtc`] with the DTLS side `dtls`.
pub fn build_rtc_with(codecs: Codecs, dtls: ClientDtls) -> Rtc {
    let mut cfg = RtcConfig::new()
        .set_rtp_mode(true)
        // Sender reports on audio every second, as on video (lip sync tests).
        .set_rtcp_report_interval_audio(Duration::from_secs(1))
        .clear_codecs();
    // As a browser: offer the media-describing extensions beyond str0m's standard
    // set, on ids of our own (Chrome's for playout delay), not the server's.
    for (id, extension) in [
        (12, Extension::PlayoutDelay),
        (9, Extension::VideoContentType),
        (14, Extension::AbsoluteCaptureTime),
    ] {
        cfg = cfg.set_extension(id, extension);
    }
    cfg = match dtls {
        ClientDtls::EcdsaDimpl => cfg.set_crypto_provider(crypto()),
        ClientDtls::RsaOpenssl => cfg
            .set_crypto_provider(Arc::new(switchboard::crypto::provider()))
            .set_dtls_cert(rsa_certificate()),
    };
    match codecs {
        Codecs::Default => {
            cfg = cfg.enable_opus(true, false).enable_vp8(true);
        }
        Codecs::Custom => {
            let c = cfg.codec_config();
            c.add_config(
                Pt::from(codecs.opus_pt()),
                None,
                Codec::Opus,
                Frequency::FORTY_EIGHT_KHZ,
                Some(2),
                opus_params(),
            );
            c.add_config(
                Pt::from(codecs.vp8_pt()),
                Some(Pt::from(codecs.vp8_pt() + 1)),
                Codec::Vp8,
                Frequency::NINETY_KHZ,
                None,
                FormatParams::default(),
            );
        }
        Codecs::H264 | Codecs::H264Alt | Codecs::H264High => {
            let profile = if codecs == Codecs::H264High {
                0x640c1f
            } else {
                0x42e01f
            };
            add_opus_h264(
                cfg.codec_config(),
                codecs.opus_pt(),
                codecs.video_pt(),
                profile,
            );
        }
    }
    cfg.build(Instant::now())
}

/// A UDP socket on 127.0.0.1 (ephemeral port) and the matching host candidate added to `rtc`.
pub fn bind_loopback(rtc: &mut Rtc) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    // Arrival times from the kernel, as a browser's network thread has them: this
    // client's loop may read a datagram late on a busy machine, and a late reading
    // stamped "now" would bunch arrivals and spoil the sender's bandwidth probes.
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )
    .map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    let addr = socket
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    let candidate =
        Candidate::host(addr, "udp").map_err(|e| format!("host candidate {addr}: {e}"))?;
    rtc.add_local_candidate(candidate)
        .ok_or_else(|| format!("str0m refused the host candidate {addr}"))?;
    Ok(socket)
}

/// What a sending peer sends.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Written into every payload to tell publishers apart.
    pub tag: u32,
    pub audio: bool,
    pub video: bool,
    /// A key frame every this many frames (the first frame is always one);
    /// `None`: only the first frame and on request.
    pub keyframe_interval: Option<u32>,
    /// Answer PLI/FIR with a key frame (OBS does not).
    pub answer_keyframe_requests: bool,
    /// VP8 payload descriptor layout.
    pub descriptor: Vp8Descriptor,
    /// First (16-bit) sequence numbers; the defaults wrap within a few seconds.
    pub video_seq_start: u16,
    pub audio_seq_start: u16,
    pub video_ts_start: u32,
    pub audio_ts_start: u32,
    pub picture_id_start: u16,
    /// Frames per second (30 by default).
    pub fps: u32,
    /// How long before it is sent each video frame was captured (an encoder delay),
    /// as this peer's sender reports state it; audio is sent as it is captured.
    pub video_capture_lag: Duration,
    /// How the video is encoded (VP8 by default; H264 as OBS sends it).
    pub video_format: Format,
    /// Simulcast: the rids of the layers, best first, each written on the stream
    /// declared for it (empty: one stream without a rid).
    pub layers: Vec<String>,
    /// Do not send the first key frame (OBS's first IDR is usually lost before
    /// the track opens): the stream starts with delta frames.
    pub lose_first_keyframe: bool,
    /// Put the mid and rid header extensions into every video packet (OBS 32.1),
    /// not only until the receiver reports (str0m's default).
    pub mid_rid_on_every_packet: bool,
    /// Set the marker bit on every audio packet (OBS) rather than on the first.
    pub audio_marker_always: bool,
    /// Header extension values written on every video packet (orientation,
    /// playout delay, ...): written only where the answer agreed to them.
    pub video_extensions: ExtensionValues,
    /// Header extension values written on every audio packet (audio level).
    pub audio_extensions: ExtensionValues,
}

impl SendConfig {
    pub fn new(tag: u32) -> Self {
        SendConfig {
            tag,
            audio: true,
            video: true,
            keyframe_interval: Some(30),
            answer_keyframe_requests: true,
            descriptor: Vp8Descriptor::PictureId,
            video_seq_start: 65_430u16.wrapping_add((tag as u16).wrapping_mul(7) % 64),
            audio_seq_start: 65_470u16.wrapping_add((tag as u16).wrapping_mul(11) % 32),
            video_ts_start: 0xffff_0000u32.wrapping_add(tag.wrapping_mul(1_000_003)),
            audio_ts_start: 0xfff0_0000u32.wrapping_add(tag.wrapping_mul(7_000_001)),
            picture_id_start: 0x7ff0u16.wrapping_add(tag as u16) & 0x7fff,
            fps: 30,
            video_capture_lag: Duration::ZERO,
            video_format: Format::Vp8,
            layers: Vec::new(),
            lose_first_keyframe: false,
            mid_rid_on_every_packet: false,
            audio_marker_always: false,
            video_extensions: ExtensionValues::default(),
            audio_extensions: ExtensionValues::default(),
        }
    }

    /// What OBS 30-32 sends: Opus with the marker on every packet, H264 (x264
    /// packetized by libdatachannel) with a key frame every 2 s (60 frames) and
    /// never on request, sequence numbers from 0.
    pub fn obs(tag: u32) -> Self {
        SendConfig {
            keyframe_interval: Some(60),
            answer_keyframe_requests: false,
            video_seq_start: 0,
            audio_seq_start: 0,
            video_format: Format::H264,
            audio_marker_always: true,
            ..SendConfig::new(tag)
        }
    }
}

/// Commands to a peer thread.
#[derive(Debug)]
enum Command {
    RequestKeyframe(KeyframeRequestKind),
    /// Pause or resume; the sender is told once it is done.
    Pause(bool, Sender<()>),
    /// The RFC 6464 audio level (-dBov, negative) on the audio written from now on.
    AudioLevel(i8, Sender<()>),
    /// Stop (or resume) writing one simulcast layer (its index); told once done.
    PauseLayer(usize, bool, Sender<()>),
    /// Close the connection (RTCP BYE, DTLS close_notify); told once drained.
    Close(Sender<()>),
    /// Send a text message on the data channel (once it is open).
    SendData(String),
}

/// Everything a peer saw and did, shared with the test.
#[derive(Debug, Default)]
pub struct PeerState {
    pub connected_at: Option<Instant>,
    pub ice_state: Option<IceConnectionState>,
    /// m-lines and their kinds.
    pub mids: HashMap<Mid, MediaKind>,
    pub sent_audio: Vec<SentPacket>,
    pub sent_video: Vec<SentPacket>,
    pub received: Vec<ReceivedPacket>,
    /// Keyframe requests received (PLI/FIR from the remote side).
    pub keyframe_requests: Vec<(Instant, KeyframeRequestKind)>,
    /// Keyframe requests this peer sent.
    pub keyframe_requests_sent: usize,
    /// The first error that stopped the thread, if any.
    pub error: Option<String>,
    /// The thread has ended.
    pub finished: bool,
    /// Datagrams that could not be sent.
    pub send_errors: usize,
    /// Datagrams received on the socket.
    pub datagrams_received: usize,
    /// Datagrams sent on the socket.
    pub datagrams_sent: usize,
    /// RTCP sender reports received: the m-line, when, and what the report said.
    pub sender_reports: Vec<(String, Instant, SenderInfo)>,
    /// The data channel is open.
    pub channel_open: bool,
    /// The data channel was closed by the other side.
    pub channel_closed: bool,
    /// Text messages received on the data channel.
    pub data_received: Vec<String>,
}

impl PeerState {
    pub fn connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// Received packets of one kind, in arrival order.
    pub fn received_of(&self, kind: Kind) -> Vec<ReceivedPacket> {
        self.received
            .iter()
            .filter(|p| p.kind == Some(kind))
            .cloned()
            .collect()
    }

    pub fn count_of(&self, kind: Kind) -> usize {
        self.received
            .iter()
            .filter(|p| p.kind == Some(kind))
            .count()
    }

    pub fn sent_of(&self, kind: Kind) -> &[SentPacket] {
        match kind {
            Kind::Audio => &self.sent_audio,
            Kind::Video => &self.sent_video,
        }
    }
}

struct Shared {
    state: Mutex<PeerState>,
    stop: AtomicBool,
}

/// A running peer. Dropping it stops its thread.
pub struct Peer {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Peer {
    /// Runs `rtc` on `socket` in a new thread. `mids` are the m-lines known up front
    /// (more are learnt from `Event::MediaAdded`).
    pub fn spawn(
        name: &str,
        rtc: Rtc,
        socket: UdpSocket,
        mids: Vec<(Mid, MediaKind)>,
        send: Option<SendConfig>,
    ) -> Result<Peer, String> {
        let local_addr = socket
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(PeerState {
                mids: mids.into_iter().collect(),
                ..Default::default()
            }),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("peer-{name}"))
            .spawn(move || {
                let mut driver = Driver {
                    rtc,
                    socket,
                    local_addr,
                    shared: thread_shared,
                    commands: rx,
                    gen: send.map(MediaGen::new),
                    paused: false,
                    paused_layers: Vec::new(),
                    connected: false,
                    closing: None,
                    channel: None,
                };
                let result = driver.run();
                let mut st = driver.state();
                if let Err(e) = result {
                    st.error.get_or_insert(e);
                }
                st.finished = true;
            })
            .map_err(|e| format!("spawn peer thread: {e}"))?;
        Ok(Peer {
            shared,
            commands: tx,
            thread: Some(thread),
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads the shared state.
    pub fn with_state<R>(&self, f: impl FnOnce(&PeerState) -> R) -> R {
        let st = lock(&self.shared.state);
        f(&st)
    }

    pub fn connected(&self) -> bool {
        self.with_state(|s| s.connected())
    }

    /// Everything written of `kind` (all layers for simulcast video).
    pub fn sent(&self, kind: Kind) -> Vec<SentPacket> {
        self.with_state(|s| s.sent_of(kind).to_vec())
    }

    pub fn sent_count(&self, kind: Kind) -> usize {
        self.with_state(|s| s.sent_of(kind).len())
    }

    /// PLI/FIR received from the other side.
    pub fn keyframe_requests(&self) -> usize {
        self.with_state(|s| s.keyframe_requests.len())
    }

    /// Error that ended the thread, if any.
    pub fn error(&self) -> Option<String> {
        self.with_state(|s| s.error.clone())
    }

    /// Sends a text message on the data channel (dropped if it is not open).
    pub fn send_data(&self, text: &str) {
        let _ = self.commands.send(Command::SendData(text.to_string()));
    }

    /// Text messages received on the data channel so far.
    pub fn data_received(&self) -> Vec<String> {
        self.with_state(|s| s.data_received.clone())
    }

    /// Sends a PLI (or FIR) on every receiving video m-line.
    pub fn request_keyframe(&self, kind: KeyframeRequestKind) {
        let _ = self.commands.send(Command::RequestKeyframe(kind));
    }

    /// Sends audio at this RFC 6464 level (-127 silence to 0 loudest) from now on.
    pub fn set_audio_level(&self, level: i8) {
        let (tx, rx) = mpsc::channel();
        if self.commands.send(Command::AudioLevel(level, tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Stops (or resumes) writing media; the connection stays up. Returns once the
    /// peer thread has done it, so nothing is written after `pause(true)` returns.
    pub fn pause(&self, paused: bool) {
        let (tx, rx) = mpsc::channel();
        if self.commands.send(Command::Pause(paused, tx)).is_ok() {
            // The thread may be gone (stopped or failed): then nothing is written anyway.
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Stops (or resumes) writing simulcast layer `layer` (its index in the
    /// layers' list) only, as a browser does when it pauses an encoding.
    pub fn pause_layer(&self, layer: usize, paused: bool) {
        let (tx, rx) = mpsc::channel();
        if self
            .commands
            .send(Command::PauseLayer(layer, paused, tx))
            .is_ok()
        {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Closes the connection as a client that stops does (str0m sends RTCP BYE
    /// and a DTLS close_notify), then stops the thread.
    pub fn close(&mut self) {
        let (tx, rx) = mpsc::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        self.stop();
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(m: &Mutex<PeerState>) -> MutexGuard<'_, PeerState> {
    // A panic in a test thread must not hide the state from the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the synthetic streams.
struct MediaGen {
    cfg: SendConfig,
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
    audio_counter: u32,
    frame: u32,
    video_seq: u64,
    /// Next sequence number of each simulcast layer (H264 path; one entry without simulcast).
    layer_seq: Vec<u64>,
    first_keyframe_lost: bool,
    audio_seq: u64,
    picture_id: u16,
    force_keyframe: bool,
    frame_interval: Duration,
}

impl MediaGen {
    fn new(cfg: SendConfig) -> Self {
        MediaGen {
            next_audio: None,
            next_video: None,
            audio_counter: 0,
            frame: 0,
            video_seq: u64::from(cfg.video_seq_start),
            layer_seq: vec![u64::from(cfg.video_seq_start); cfg.layers.len().max(1)],
            first_keyframe_lost: false,
            audio_seq: u64::from(cfg.audio_seq_start),
            picture_id: cfg.picture_id_start,
            force_keyframe: false,
            frame_interval: Duration::from_micros(1_000_000 / u64::from(cfg.fps.max(1))),
            cfg,
        }
    }

    /// The video frame due next: its number, whether it is a key frame (which
    /// answers any pending request), and its RTP timestamp.
    fn next_frame(&mut self) -> (u32, bool, u32) {
        let frame = self.frame;
        let keyframe = frame == 0
            || self.force_keyframe
            || self
                .cfg
                .keyframe_interval
                .is_some_and(|n| n > 0 && frame % n == 0);
        self.force_keyframe = false;
        let ts = self
            .cfg
            .video_ts_start
            .wrapping_add(frame.wrapping_mul(VIDEO_TICKS_PER_FRAME));
        (frame, keyframe, ts)
    }

    fn next_due(&self) -> Option<Instant> {
        match (self.next_audio, self.next_video) {
            (Some(a), Some(v)) => Some(a.min(v)),
            (a, v) => a.or(v),
        }
    }
}

struct Driver {
    rtc: Rtc,
    socket: UdpSocket,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    gen: Option<MediaGen>,
    paused: bool,
    /// Simulcast layers not written (their indices).
    paused_layers: Vec<usize>,
    connected: bool,
    /// Told once a close has drained.
    closing: Option<Sender<()>>,
    /// The data channel, once open.
    channel: Option<str0m::channel::ChannelId>,
}

impl Driver {
    fn state(&self) -> MutexGuard<'_, PeerState> {
        lock(&self.shared.state)
    }

    fn run(&mut self) -> Result<(), String> {
        let mut buf = vec![0u8; 2048];
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd);
            }
            self.produce(Instant::now());

            let timeout = self.poll()?;
            if self.closing.is_some() && !self.rtc.is_alive() {
                if let Some(done) = self.closing.take() {
                    let _ = done.send(());
                }
                return Ok(());
            }

            let mut wake = timeout.min(Instant::now() + Duration::from_millis(20));
            if self.connected && !self.paused {
                if let Some(due) = self.gen.as_ref().and_then(MediaGen::next_due) {
                    wake = wake.min(due);
                }
            }
            let now = Instant::now();
            if wake > now {
                let wait = (wake - now).max(Duration::from_micros(100));
                self.socket
                    .set_read_timeout(Some(wait))
                    .map_err(|e| format!("set_read_timeout: {e}"))?;
                match recv_stamped(&self.socket, &mut buf) {
                    Ok((n, source, at)) => self.receive(source, &buf[..n], at)?,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    // ICMP port unreachable after the far end went away, and the like.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(format!("recv_from: {e}")),
                }
            }
            self.rtc
                .handle_input(Input::Timeout(Instant::now()))
                .map_err(|e| format!("handle_input(timeout): {e}"))?;
        }
    }

    fn receive(&mut self, source: SocketAddr, data: &[u8], at: Instant) -> Result<(), String> {
        self.state().datagrams_received += 1;
        let Ok(contents) = data.try_into() else {
            // Not something str0m understands; ignore it like a real client would.
            return Ok(());
        };
        let input = Input::Receive(
            at,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local_addr,
                contents,
            },
        );
        if self.rtc.accepts(&input) {
            self.rtc
                .handle_input(input)
                .map_err(|e| format!("handle_input(receive): {e}"))?;
        }
        Ok(())
    }

    /// Polls str0m until it wants a timeout; sends what it transmits, records events.
    fn poll(&mut self) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Ok(t),
                Ok(Output::Transmit(t)) => {
                    let ok = self.socket.send_to(&t.contents, t.destination).is_ok();
                    let mut st = self.state();
                    st.datagrams_sent += 1;
                    if !ok {
                        st.send_errors += 1;
                    }
                }
                Ok(Output::Event(e)) => self.event(e),
                Err(e) => return Err(format!("poll_output: {e}")),
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.state().connected_at = Some(Instant::now());
            }
            Event::IceConnectionStateChange(s) => {
                self.state().ice_state = Some(s);
            }
            Event::MediaAdded(m) => {
                self.state().mids.insert(m.mid, m.kind);
            }
            Event::ChannelOpen(id, _) => {
                self.channel = Some(id);
                self.state().channel_open = true;
            }
            Event::ChannelData(d) => {
                let text = String::from_utf8_lossy(&d.data).into_owned();
                self.state().data_received.push(text);
            }
            Event::ChannelClose(_) => {
                self.channel = None;
                let mut st = self.state();
                st.channel_open = false;
                st.channel_closed = true;
            }
            Event::KeyframeRequest(r) => {
                self.state()
                    .keyframe_requests
                    .push((Instant::now(), r.kind));
                if let Some(gen) = self.gen.as_mut() {
                    if gen.cfg.answer_keyframe_requests {
                        gen.force_keyframe = true;
                    }
                }
            }
            Event::SenderFeedback(feedback) => {
                let mid = feedback.mid.to_string();
                let at = feedback.received_at;
                self.state()
                    .sender_reports
                    .push((mid, at, feedback.sender_info));
            }
            Event::RtpPacket(p) => {
                let ssrc = p.header.ssrc;
                let mid = self.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid());
                let mut st = self.state();
                let kind = mid
                    .and_then(|m| st.mids.get(&m).copied())
                    .map(|k| match k {
                        MediaKind::Audio => Kind::Audio,
                        MediaKind::Video => Kind::Video,
                    })
                    .or_else(|| identity(&p.payload).map(|i| i.kind));
                st.received.push(ReceivedPacket {
                    kind,
                    mid: mid.map(|m| m.to_string()),
                    ssrc: *ssrc,
                    seq: p.header.sequence_number,
                    ext_seq: *p.seq_no,
                    timestamp: p.header.timestamp,
                    pt: *p.header.payload_type,
                    marker: p.header.marker,
                    payload: p.payload.clone(),
                    at: p.timestamp,
                    extensions: p.header.ext_vals.clone(),
                });
            }
            _ => {}
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AudioLevel(level, done) => {
                if let Some(gen) = &mut self.gen {
                    gen.cfg.audio_extensions.audio_level = Some(level);
                    gen.cfg.audio_extensions.voice_activity = Some(level > -60);
                }
                let _ = done.send(());
            }
            Command::Pause(p, done) => {
                self.paused = p;
                let _ = done.send(());
                if !p {
                    // Resume on schedule from now, not with a burst.
                    if let Some(gen) = self.gen.as_mut() {
                        let now = Instant::now();
                        gen.next_audio = gen.next_audio.map(|_| now);
                        gen.next_video = gen.next_video.map(|_| now);
                    }
                }
            }
            Command::PauseLayer(layer, paused, done) => {
                self.paused_layers.retain(|l| *l != layer);
                if paused {
                    self.paused_layers.push(layer);
                }
                let _ = done.send(());
            }
            Command::SendData(text) => {
                if let Some(mut channel) = self.channel.and_then(|id| self.rtc.channel(id)) {
                    let _ = channel.write(false, text.as_bytes());
                }
            }
            Command::Close(done) => {
                self.paused = true;
                if self.rtc.close().is_err() || !self.rtc.is_alive() {
                    let _ = done.send(());
                    self.shared.stop.store(true, Ordering::SeqCst);
                } else {
                    self.closing = Some(done);
                }
            }
            Command::RequestKeyframe(kind) => {
                let video: Vec<Mid> = self
                    .state()
                    .mids
                    .iter()
                    .filter(|(_, k)| **k == MediaKind::Video)
                    .map(|(m, _)| *m)
                    .collect();
                let mut sent = 0;
                for mid in video {
                    if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(mid, None) {
                        rx.request_keyframe(kind);
                        sent += 1;
                    }
                }
                self.state().keyframe_requests_sent += sent;
            }
        }
    }

    /// The negotiated payload type for `codec` on `mid`.
    fn pt_for(&self, mid: Mid, codec: Codec) -> Option<Pt> {
        let remote = self.rtc.media(mid).map(|m| m.remote_pts().to_vec());
        let params: Vec<_> = self.rtc.codec_config().params().to_vec();
        if let Some(remote) = remote {
            for pt in remote {
                if params
                    .iter()
                    .any(|p| p.pt() == pt && p.spec().codec == codec)
                {
                    return Some(pt);
                }
            }
        }
        params
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    fn send_mid(&mut self, kind: MediaKind) -> Option<Mid> {
        let mids: Vec<Mid> = self
            .state()
            .mids
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(m, _)| *m)
            .collect();
        let mut direct = self.rtc.direct_api();
        mids.into_iter()
            .find(|m| direct.stream_tx_by_mid(*m, None).is_some())
    }

    /// Writes the media that is due.
    fn produce(&mut self, now: Instant) {
        if !self.connected || self.paused || self.gen.is_none() {
            return;
        }
        let (want_audio, want_video) = match &self.gen {
            Some(g) => (g.cfg.audio, g.cfg.video),
            None => return,
        };
        if want_audio {
            if let Some(mid) = self.send_mid(MediaKind::Audio) {
                if let Some(pt) = self.pt_for(mid, Codec::Opus) {
                    self.produce_audio(now, mid, pt);
                }
            }
        }
        if want_video {
            let format = self.gen.as_ref().map(|g| g.cfg.video_format);
            if let Some(mid) = self.send_mid(MediaKind::Video) {
                match format {
                    Some(Format::H264) => {
                        if let Some(pt) = self.pt_for(mid, Codec::H264) {
                            self.produce_h264(now, mid, pt);
                        }
                    }
                    _ => {
                        if let Some(pt) = self.pt_for(mid, Codec::Vp8) {
                            self.produce_video(now, mid, pt);
                        }
                    }
                }
            }
        }
    }

    fn produce_audio(&mut self, now: Instant, mid: Mid, pt: Pt) {
        let Some(gen) = self.gen.as_mut() else { return };
        let due = *gen.next_audio.get_or_insert(now);
        if due > now {
            return;
        }
        let mut written = Vec::new();
        let mut due = due;
        while due <= now {
            let counter = gen.audio_counter;
            let payload: Arc<[u8]> = audio_payload(gen.cfg.tag, counter).into();
            let ts = gen
                .cfg
                .audio_ts_start
                .wrapping_add(counter.wrapping_mul(AUDIO_TICKS_PER_PACKET));
            let seq = gen.audio_seq;
            let marker = counter == 0 || gen.cfg.audio_marker_always;
            written.push(SentPacket {
                kind: Kind::Audio,
                format: Format::Opus,
                rid: None,
                id: identity(&payload).expect("own audio payload has a trailer"),
                seq,
                timestamp: ts,
                marker,
                pt: *pt,
                payload,
                at: now,
                captured: due,
            });
            gen.audio_counter += 1;
            gen.audio_seq += 1;
            due += Duration::from_millis(20);
        }
        gen.next_audio = Some(due);
        self.write(mid, pt, &written);
        self.state().sent_audio.extend(written);
    }

    fn produce_video(&mut self, now: Instant, mid: Mid, pt: Pt) {
        let Some(gen) = self.gen.as_mut() else { return };
        let due = *gen.next_video.get_or_insert(now);
        if due > now {
            return;
        }
        let mut written = Vec::new();
        let mut due = due;
        while due <= now {
            let (frame, keyframe, ts) = gen.next_frame();
            let payloads = video_frame(
                gen.cfg.tag,
                frame,
                keyframe,
                gen.cfg.descriptor,
                gen.picture_id,
            );
            let n = payloads.len();
            for (i, p) in payloads.into_iter().enumerate() {
                let payload: Arc<[u8]> = p.into();
                written.push(SentPacket {
                    kind: Kind::Video,
                    format: Format::Vp8,
                    rid: None,
                    id: identity(&payload).expect("own video payload has a trailer"),
                    seq: gen.video_seq,
                    timestamp: ts,
                    marker: i + 1 == n,
                    pt: *pt,
                    payload,
                    at: now,
                    captured: due.checked_sub(gen.cfg.video_capture_lag).unwrap_or(due),
                });
                gen.video_seq += 1;
            }
            gen.frame += 1;
            gen.picture_id = (gen.picture_id + 1) & 0x7fff;
            due += gen.frame_interval;
        }
        gen.next_video = Some(due);
        self.write(mid, pt, &written);
        self.state().sent_video.extend(written);
    }

    /// Writes the H264 access units that are due, on every simulcast layer.
    fn produce_h264(&mut self, now: Instant, mid: Mid, pt: Pt) {
        let Some(gen) = self.gen.as_mut() else { return };
        let due = *gen.next_video.get_or_insert(now);
        if due > now {
            return;
        }
        let layers: Vec<Option<String>> = if gen.cfg.layers.is_empty() {
            vec![None]
        } else {
            gen.cfg.layers.iter().cloned().map(Some).collect()
        };
        let mut written = Vec::new();
        let mut due = due;
        while due <= now {
            let (frame, keyframe, ts) = gen.next_frame();
            let lost = keyframe && gen.cfg.lose_first_keyframe && !gen.first_keyframe_lost;
            if lost {
                gen.first_keyframe_lost = true;
            }
            for (layer, rid) in layers.iter().enumerate() {
                if lost || self.paused_layers.contains(&layer) {
                    // Never on the wire, so it takes no sequence numbers either.
                    continue;
                }
                let tag = if rid.is_some() {
                    layer_tag(gen.cfg.tag, layer as u8)
                } else {
                    gen.cfg.tag
                };
                let payloads = h264_access_unit(tag, frame, keyframe, layer as u8);
                let n = payloads.len();
                for (i, p) in payloads.into_iter().enumerate() {
                    let payload: Arc<[u8]> = p.into();
                    written.push(SentPacket {
                        kind: Kind::Video,
                        format: Format::H264,
                        rid: rid.clone(),
                        id: identity(&payload).expect("own video payload has a trailer"),
                        seq: gen.layer_seq[layer],
                        timestamp: ts,
                        marker: i + 1 == n,
                        pt: *pt,
                        payload,
                        at: now,
                        captured: due.checked_sub(gen.cfg.video_capture_lag).unwrap_or(due),
                    });
                    gen.layer_seq[layer] += 1;
                }
            }
            gen.frame += 1;
            due += gen.frame_interval;
        }
        gen.next_video = Some(due);
        let every_packet = gen.cfg.mid_rid_on_every_packet;
        let extensions = gen.cfg.video_extensions.clone();
        let mut direct = self.rtc.direct_api();
        for p in &written {
            let rid = p.rid.as_deref().map(Rid::from);
            let Some(tx) = direct.stream_tx_by_mid(mid, rid) else {
                continue;
            };
            let mut values = extensions.clone();
            if every_packet {
                values.mid = Some(mid);
                values.rid = rid;
            }
            let write = RtpWrite::new(pt, p.seq.into(), p.timestamp, p.captured, p.payload.clone())
                .marker(p.marker)
                .nackable(true)
                .ext_vals(values);
            tx.write_rtp(write);
        }
        self.state().sent_video.extend(written);
    }

    fn write(&mut self, mid: Mid, pt: Pt, packets: &[SentPacket]) {
        let (video_extensions, audio_extensions) = match &self.gen {
            Some(gen) => (
                gen.cfg.video_extensions.clone(),
                gen.cfg.audio_extensions.clone(),
            ),
            None => Default::default(),
        };
        let mut direct = self.rtc.direct_api();
        let Some(tx) = direct.stream_tx_by_mid(mid, None) else {
            return;
        };
        for p in packets {
            // str0m's sender reports map RTP time to this wallclock: the capture time.
            tx.write_rtp(
                RtpWrite::new(pt, p.seq.into(), p.timestamp, p.captured, p.payload.clone())
                    .marker(p.marker)
                    .nackable(p.kind == Kind::Video)
                    .ext_vals(match p.kind {
                        Kind::Video => video_extensions.clone(),
                        Kind::Audio => audio_extensions.clone(),
                    }),
            );
        }
    }
}

/// One datagram, its sender, and when the kernel received it (now, if the kernel
/// did not say).
fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Instant)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<SockaddrIn>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let source = msg
        .address
        .map(|a| SocketAddr::V4(a.into()))
        .ok_or_else(|| std::io::Error::other("a datagram without a source"))?;
    let (now, wall_now) = (Instant::now(), std::time::SystemTime::now());
    let mut at = now;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
            let stamped =
                std::time::UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
            let age = wall_now.duration_since(stamped).unwrap_or_default();
            at = now.checked_sub(age).unwrap_or(now);
        }
    }
    Ok((msg.bytes, source, at))
}
