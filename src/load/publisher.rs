//! The synthetic publisher: one WHIP session sending video at a set bitrate and
//! frame rate (a keyframe at an interval and on every keyframe request) and
//! Opus-sized audio every 20 ms, on a thread of its own.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::RtpWrite;
use str0m::{Event, Input, Output, Rtc};

use super::client::{self, Endpoint};
use super::clock_nanos;
use super::payload::{self, VideoCodec};

const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Longest the driver sleeps with nothing due.
const TICK: Duration = Duration::from_millis(5);

/// What the publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct PublisherPlan {
    pub codec: VideoCodec,
    pub video_kbps: u64,
    pub fps: u32,
    pub keyframe_interval: Duration,
    pub audio: bool,
}

/// Counts the driver keeps, read by the main thread.
#[derive(Debug, Default)]
pub struct PublisherStats {
    pub connected: AtomicBool,
    pub audio: AtomicU64,
    pub video: AtomicU64,
    pub keyframe_requests: AtomicU64,
}

pub struct Publisher {
    pub stats: Arc<PublisherStats>,
    pub location: Option<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Offers to publish in `room` and starts sending once connected.
    pub fn start(
        endpoint: &Endpoint,
        room: &str,
        ip: IpAddr,
        plan: PublisherPlan,
    ) -> Result<Self, String> {
        let mut rtc = client::client_rtc(plan.codec, &endpoint.cert);
        let (socket, local) = client::bind(&mut rtc, ip)?;
        let mut api = rtc.sdp_api();
        let audio = plan
            .audio
            .then(|| api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().ok_or("str0m made no offer")?;
        let created = endpoint.post(
            &format!("/whip/{room}?participant=load-publisher"),
            &offer.to_sdp_string(),
        )?;
        client::accept_answer(&mut rtc, pending, &created.answer)?;
        let audio_pt = client::pt_of(&rtc, Codec::Opus).ok_or("no Opus payload type")?;
        let video_pt = client::pt_of(&rtc, plan.codec.codec()).ok_or("no video payload type")?;
        let stats = Arc::new(PublisherStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut driver = Driver {
            rtc,
            socket,
            local,
            audio,
            video,
            audio_pt,
            video_pt,
            plan,
            stats: Arc::clone(&stats),
            next_audio: None,
            next_video: None,
            last_keyframe: None,
            audio_seq: 0,
            video_seq: 0,
            frame: 0,
            picture_id: 0,
            keyframe_wanted: true,
        };
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("load-publisher".into())
            .spawn(move || {
                if let Err(e) = driver.run(&thread_stop) {
                    eprintln!("load: the publisher stopped: {e}");
                }
            })
            .map_err(|e| format!("spawn the publisher: {e}"))?;
        Ok(Publisher {
            stats,
            location: created.location,
            stop,
            thread: Some(thread),
        })
    }

    pub fn sent(&self) -> u64 {
        self.stats.audio.load(Ordering::Relaxed) + self.stats.video.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Driver {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    audio: Option<Mid>,
    video: Mid,
    audio_pt: Pt,
    video_pt: Pt,
    plan: PublisherPlan,
    stats: Arc<PublisherStats>,
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
    last_keyframe: Option<Instant>,
    audio_seq: u64,
    video_seq: u64,
    frame: u32,
    picture_id: u16,
    keyframe_wanted: bool,
}

impl Driver {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if self.stats.connected.load(Ordering::Relaxed) {
                self.produce(Instant::now());
            }
            let timeout = self.drain()?;
            let mut wake = timeout.min(Instant::now() + TICK);
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
                        if let Some(input) = client::receive_input(&buf[..n], source, self.local) {
                            self.rtc
                                .handle_input(input)
                                .map_err(|e| format!("handle_input: {e}"))?;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock
                                | ErrorKind::TimedOut
                                | ErrorKind::Interrupted
                                | ErrorKind::ConnectionRefused
                        ) => {}
                    Err(e) => return Err(format!("recv_from: {e}")),
                }
            }
            self.rtc
                .handle_input(Input::Timeout(Instant::now()))
                .map_err(|e| format!("handle_input: {e}"))?;
        }
        Ok(())
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
                    self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    self.keyframe_wanted = true;
                }
                Ok(Output::Event(_)) => {}
                Err(e) => return Err(format!("poll_output: {e}")),
            }
        }
    }

    fn produce(&mut self, now: Instant) {
        let frame_interval = Duration::from_secs_f64(1.0 / f64::from(self.plan.fps.max(1)));
        let frame_bytes =
            (self.plan.video_kbps * 1000 / 8 / u64::from(self.plan.fps.max(1))) as usize;
        let mut direct = self.rtc.direct_api();
        if let Some(audio) = self.audio {
            let mut due = *self.next_audio.get_or_insert(now);
            if let Some(tx) = direct.stream_tx_by_mid(audio, None) {
                while due <= now {
                    let number = self.audio_seq as u32;
                    let payload: Arc<[u8]> = payload::audio_packet(number, clock_nanos()).into();
                    tx.write_rtp(
                        RtpWrite::new(
                            self.audio_pt,
                            self.audio_seq.into(),
                            number.wrapping_mul(960),
                            now,
                            payload,
                        )
                        .marker(self.audio_seq == 0),
                    );
                    self.audio_seq += 1;
                    self.stats.audio.fetch_add(1, Ordering::Relaxed);
                    due += AUDIO_INTERVAL;
                }
            }
            self.next_audio = Some(due);
        }
        let mut due = *self.next_video.get_or_insert(now);
        let Some(tx) = direct.stream_tx_by_mid(self.video, None) else {
            return;
        };
        while due <= now {
            let periodic = self
                .last_keyframe
                .is_none_or(|at| now.saturating_duration_since(at) >= self.plan.keyframe_interval);
            let keyframe = std::mem::take(&mut self.keyframe_wanted) || periodic;
            if keyframe {
                self.last_keyframe = Some(now);
            }
            let ts = (u64::from(self.frame) * 90_000 / u64::from(self.plan.fps.max(1))) as u32;
            let sent = clock_nanos();
            let mut packets = payload::video_frame(
                self.plan.codec,
                self.frame,
                self.picture_id,
                keyframe,
                frame_bytes,
                sent,
            );
            if keyframe && self.plan.codec == VideoCodec::H264 {
                let sets = payload::h264_parameter_sets().map(|s| s.to_vec());
                packets.splice(0..0, sets);
            }
            let count = packets.len();
            for (i, p) in packets.into_iter().enumerate() {
                tx.write_rtp(
                    RtpWrite::new(
                        self.video_pt,
                        self.video_seq.into(),
                        ts,
                        now,
                        Arc::<[u8]>::from(p),
                    )
                    .marker(i + 1 == count)
                    .nackable(true),
                );
                self.video_seq += 1;
                self.stats.video.fetch_add(1, Ordering::Relaxed);
            }
            self.frame += 1;
            self.picture_id = (self.picture_id + 1) & 0x7fff;
            due += frame_interval;
        }
        self.next_video = Some(due);
    }
}
