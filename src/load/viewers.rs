//! The viewers: WHEP sessions that receive and measure, all driven by a few
//! threads (one mio poll over many sockets each), so a thousand of them cost a
//! fraction of a core. Each viewer measures what it receives: latency from the
//! publisher's timestamp, time to its first video, packets lost, duplicated or
//! reordered (by sequence number), and frames that did not arrive whole.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token, Waker};
use str0m::change::SdpPendingOffer;
use str0m::media::{Direction, MediaKind};
use str0m::{Event, Input, Output, Rtc};

use super::client::{self, Endpoint};
use super::clock_nanos;
use super::payload::{Trailer, VideoCodec};

/// Longest a pool sleeps with nothing due.
const TICK: Duration = Duration::from_millis(20);
const WAKER: Token = Token(usize::MAX);

/// A viewer that made its offer and posted it.
pub struct Joined {
    rtc: Rtc,
    audio_pt: Option<str0m::media::Pt>,
    socket: std::net::UdpSocket,
    local: SocketAddr,
    pub location: Option<String>,
    started: Instant,
}

/// Offers to view `room` (recvonly audio and video) and posts the offer.
pub fn join(
    endpoint: &Endpoint,
    room: &str,
    ip: std::net::IpAddr,
    codec: VideoCodec,
    n: usize,
) -> Result<Joined, String> {
    let started = Instant::now();
    let mut rtc = client::client_rtc(codec, &endpoint.cert);
    let (socket, local) = client::bind(&mut rtc, ip)?;
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending): (_, SdpPendingOffer) = api.apply().ok_or("str0m made no offer")?;
    let created = endpoint.post(
        &format!("/whep/{room}?participant=load-viewer-{n}"),
        &offer.to_sdp_string(),
    )?;
    client::accept_answer(&mut rtc, pending, &created.answer)?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let audio_pt = client::pt_of(&rtc, str0m::format::Codec::Opus);
    Ok(Joined {
        rtc,
        audio_pt,
        socket,
        local,
        location: created.location,
        started,
    })
}

/// One received stream, by SSRC: what arrived against what should have.
#[derive(Debug)]
struct Stream {
    ssrc: u32,
    first: u64,
    highest: u64,
    /// Bit `i`: `highest - i` arrived.
    seen: u128,
    received: u64,
    duplicated: u64,
    reordered: u64,
}

impl Stream {
    fn new(ssrc: u32, seq: u64) -> Self {
        Stream {
            ssrc,
            first: seq,
            highest: seq,
            seen: 1,
            received: 1,
            duplicated: 0,
            reordered: 0,
        }
    }

    fn note(&mut self, seq: u64) {
        if seq > self.highest {
            let ahead = seq - self.highest;
            self.seen = if ahead < 128 {
                (self.seen << ahead) | 1
            } else {
                1
            };
            self.highest = seq;
            self.received += 1;
            return;
        }
        let back = self.highest - seq;
        if back < 128 && self.seen & (1 << back) != 0 {
            self.duplicated += 1;
            return;
        }
        if back < 128 {
            self.seen |= 1 << back;
        }
        self.received += 1;
        self.reordered += 1;
    }

    fn expected(&self) -> u64 {
        self.highest - self.first + 1
    }
}

/// Which video frames arrived whole.
#[derive(Debug, Default)]
struct Frames {
    /// The frame being received: number, packets seen, packets in it.
    current: Option<(u32, u16, u16)>,
    complete: u64,
    incomplete: u64,
    missing: u64,
}

impl Frames {
    fn note(&mut self, t: &Trailer) {
        match &mut self.current {
            Some((frame, seen, _)) if *frame == t.frame => *seen += 1,
            Some((frame, _, _)) if t.frame < *frame => {} // late: counted as reordered
            current => {
                if let Some((frame, seen, count)) = *current {
                    if seen >= count {
                        self.complete += 1;
                    } else {
                        self.incomplete += 1;
                    }
                    self.missing += u64::from(t.frame.saturating_sub(frame + 1));
                }
                *current = Some((t.frame, 1, t.count));
            }
        }
    }
}

struct Viewer {
    rtc: Rtc,
    audio_pt: Option<str0m::media::Pt>,
    socket: mio::net::UdpSocket,
    local: SocketAddr,
    next: Instant,
    started: Instant,
    connected: bool,
    failed: Option<String>,
    first_video: Option<Duration>,
    streams: Vec<Stream>,
    frames: Frames,
    audio: u64,
    video: u64,
}

impl Viewer {
    fn drain(&mut self, latency: &mut Histogram<u64>) {
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
                    let ssrc = *p.header.ssrc;
                    let seq = *p.seq_no;
                    match self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
                        Some(s) => s.note(seq),
                        None => self.streams.push(Stream::new(ssrc, seq)),
                    }
                    let Some(t) = Trailer::decode(&p.payload) else {
                        continue; // H264 parameter sets
                    };
                    let now = clock_nanos();
                    let _ = latency.record(now.saturating_sub(t.sent_nanos) / 1000);
                    if Some(p.header.payload_type) == self.audio_pt {
                        self.audio += 1;
                    } else {
                        self.video += 1;
                        if self.first_video.is_none() {
                            self.first_video = Some(self.started.elapsed());
                        }
                        self.frames.note(&t);
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(e) => {
                    self.failed = Some(format!("the stack failed: {e}"));
                    return;
                }
            }
        }
    }
}

/// What a pool's viewers have done so far.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub connected: usize,
    pub failed: Vec<String>,
    pub audio: u64,
    pub video: u64,
    pub expected: u64,
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub frames_complete: u64,
    pub frames_incomplete: u64,
    pub frames_missing: u64,
    /// Each viewer's time from its POST to its first video packet.
    pub first_video: Vec<Duration>,
    /// Latency through the server, µs, since the last reset.
    pub latency: Histogram<u64>,
}

impl PoolSnapshot {
    /// Nothing yet, with `latency` as the latency so far.
    fn empty(latency: Histogram<u64>) -> Self {
        PoolSnapshot {
            connected: 0,
            failed: Vec::new(),
            audio: 0,
            video: 0,
            expected: 0,
            received: 0,
            duplicated: 0,
            reordered: 0,
            frames_complete: 0,
            frames_incomplete: 0,
            frames_missing: 0,
            first_video: Vec::new(),
            latency,
        }
    }

    /// What happened between `begin` and this snapshot: counts are differences;
    /// first-video times and latency (reset at `begin`) are kept as they are.
    pub fn since(mut self, begin: &PoolSnapshot) -> Self {
        self.audio -= begin.audio.min(self.audio);
        self.video -= begin.video.min(self.video);
        self.expected -= begin.expected.min(self.expected);
        self.received -= begin.received.min(self.received);
        self.duplicated -= begin.duplicated.min(self.duplicated);
        self.reordered -= begin.reordered.min(self.reordered);
        self.frames_complete -= begin.frames_complete.min(self.frames_complete);
        self.frames_incomplete -= begin.frames_incomplete.min(self.frames_incomplete);
        self.frames_missing -= begin.frames_missing.min(self.frames_missing);
        self
    }

    /// Two pools' snapshots together.
    pub fn merge(mut self, other: PoolSnapshot) -> Self {
        self.connected += other.connected;
        self.failed.extend(other.failed);
        self.audio += other.audio;
        self.video += other.video;
        self.expected += other.expected;
        self.received += other.received;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.frames_complete += other.frames_complete;
        self.frames_incomplete += other.frames_incomplete;
        self.frames_missing += other.frames_missing;
        self.first_video.extend(other.first_video);
        let _ = self.latency.add(&other.latency);
        self
    }
}

/// 1 µs to 60 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

enum Command {
    Add(Box<Joined>),
    Snapshot(mpsc::Sender<PoolSnapshot>),
    ResetLatency,
}

/// Threads driving viewers; viewers are spread over them in turn.
pub struct Pools {
    pools: Vec<Pool>,
    next: usize,
}

struct Pool {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pools {
    pub fn start(threads: usize) -> Result<Self, String> {
        let pools = (0..threads.max(1))
            .map(Pool::start)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pools { pools, next: 0 })
    }

    pub fn add(&mut self, viewer: Joined) -> Result<(), String> {
        let pool = &self.pools[self.next % self.pools.len()];
        self.next += 1;
        pool.commands
            .send(Command::Add(Box::new(viewer)))
            .map_err(|_| "a viewers' thread has stopped".to_string())?;
        let _ = pool.waker.wake();
        Ok(())
    }

    /// Every pool's viewers together; an error if a pool does not answer (its
    /// counts would be missing from the sum).
    pub fn snapshot(&self) -> Result<PoolSnapshot, String> {
        let mut answers = Vec::with_capacity(self.pools.len());
        for p in &self.pools {
            let (tx, rx) = mpsc::channel();
            p.commands
                .send(Command::Snapshot(tx))
                .map_err(|_| "a viewers' thread has stopped".to_string())?;
            let _ = p.waker.wake();
            answers.push(rx);
        }
        answers
            .into_iter()
            .try_fold(PoolSnapshot::empty(latency_histogram()), |sum, rx| {
                rx.recv_timeout(Duration::from_secs(5))
                    .map(|s| sum.merge(s))
                    .map_err(|_| "a viewers' thread did not answer within 5 s".to_string())
            })
    }

    /// Latency is measured from now on (the join's burst left out).
    pub fn reset_latency(&self) {
        for p in &self.pools {
            let _ = p.commands.send(Command::ResetLatency);
            let _ = p.waker.wake();
        }
    }

    pub fn stop(self) {
        for mut p in self.pools {
            p.stop.store(true, Ordering::Relaxed);
            let _ = p.waker.wake();
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Pool {
    fn start(index: usize) -> Result<Self, String> {
        let poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| format!("mio waker: {e}"))?);
        let (commands, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("load-viewers-{index}"))
            .spawn(move || drive(poll, &rx, &thread_stop))
            .map_err(|e| format!("spawn a viewers' thread: {e}"))?;
        Ok(Pool {
            commands,
            waker,
            stop,
            thread: Some(thread),
        })
    }
}

fn drive(mut poll: Poll, commands: &mpsc::Receiver<Command>, stop: &AtomicBool) {
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    let mut latency = latency_histogram();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // A failed viewer is never polled again: its `next` must not spin the loop.
        let wake = viewers
            .iter()
            .filter(|v| v.failed.is_none())
            .map(|v| v.next)
            .min()
            .unwrap_or(now + TICK)
            .min(now + TICK);
        let _ = poll.poll(&mut events, Some(wake.saturating_duration_since(now)));
        for event in events.iter() {
            let Some(v) = viewers.get_mut(event.token().0) else {
                continue;
            };
            // Edge-triggered: read until the socket is empty.
            loop {
                match v.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        if v.failed.is_some() {
                            continue;
                        }
                        if let Some(input) = client::receive_input(&buf[..n], source, v.local) {
                            if let Err(e) = v.rtc.handle_input(input) {
                                v.failed = Some(format!("handle_input: {e}"));
                            }
                        }
                        // str0m holds one RTP packet until polled: drain each time.
                        v.drain(&mut latency);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        for v in viewers
            .iter_mut()
            .filter(|v| v.next <= now && v.failed.is_none())
        {
            if let Err(e) = v.rtc.handle_input(Input::Timeout(now)) {
                v.failed = Some(format!("handle_input: {e}"));
            }
            v.drain(&mut latency);
        }
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Add(joined) => {
                    let Joined {
                        rtc,
                        audio_pt,
                        socket,
                        local,
                        started,
                        ..
                    } = *joined;
                    let mut v = Viewer {
                        rtc,
                        audio_pt,
                        socket: mio::net::UdpSocket::from_std(socket),
                        local,
                        next: Instant::now(),
                        started,
                        connected: false,
                        failed: None,
                        first_video: None,
                        streams: Vec::new(),
                        frames: Frames::default(),
                        audio: 0,
                        video: 0,
                    };
                    let token = Token(viewers.len());
                    if let Err(e) =
                        poll.registry()
                            .register(&mut v.socket, token, Interest::READABLE)
                    {
                        v.failed = Some(format!("register its socket: {e}"));
                    }
                    v.drain(&mut latency);
                    viewers.push(v);
                }
                Command::ResetLatency => latency.reset(),
                Command::Snapshot(reply) => {
                    let mut s = PoolSnapshot::empty(latency.clone());
                    for v in &viewers {
                        s.connected += usize::from(v.connected);
                        if let Some(why) = &v.failed {
                            s.failed.push(why.clone());
                        }
                        s.audio += v.audio;
                        s.video += v.video;
                        for st in &v.streams {
                            s.expected += st.expected();
                            s.received += st.received;
                            s.duplicated += st.duplicated;
                            s.reordered += st.reordered;
                        }
                        s.frames_complete += v.frames.complete;
                        s.frames_incomplete += v.frames.incomplete;
                        s.frames_missing += v.frames.missing;
                        s.first_video.extend(v.first_video);
                    }
                    let _ = reply.send(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_losses_duplicates_and_reorders() {
        let mut s = Stream::new(1, 100);
        for seq in [101, 103, 102, 103, 104] {
            s.note(seq);
        }
        assert_eq!(s.expected(), 5);
        assert_eq!((s.received, s.duplicated, s.reordered), (5, 1, 1));
        s.note(110); // 105..=109 lost
        assert_eq!(s.expected() - s.received, 5);
    }

    #[test]
    fn frames_are_whole_incomplete_or_missing() {
        let mut f = Frames::default();
        let t = |frame, count| Trailer {
            frame,
            index: 0,
            count,
            sent_nanos: 0,
            keyframe: false,
        };
        f.note(&t(0, 2));
        f.note(&t(0, 2)); // frame 0 whole
        f.note(&t(1, 3)); // frame 1: one of three
        f.note(&t(4, 1)); // 2 and 3 never came
        f.note(&t(5, 1));
        assert_eq!((f.complete, f.incomplete, f.missing), (2, 1, 2));
    }
}
