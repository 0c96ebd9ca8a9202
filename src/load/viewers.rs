//! The viewers: WHEP sessions that receive and measure, all driven by a few
//! threads (one mio poll over many sockets each), so a thousand of them cost a
//! fraction of a core. Each viewer measures what it receives: latency from the
//! publisher's timestamp, time to its first video, packets lost, duplicated or
//! reordered (by sequence number), and frames that did not arrive whole.

use std::collections::VecDeque;
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
    loss: LossSim,
}

/// Offers to view `room` (recvonly audio and video) and posts the offer.
pub fn join(
    endpoint: &Endpoint,
    room: &str,
    ip: std::net::IpAddr,
    codec: VideoCodec,
    n: usize,
    loss_percent: f64,
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
        loss: LossSim::new(loss_percent, n as u64),
    })
}

/// Drops a share of a viewer's incoming RTP packets (SRTP, told apart from RTCP,
/// STUN and DTLS by their first two bytes, RFC 7983 and RFC 5761), as a lossy
/// last mile would; never a stream's first packet, which a receiver cannot ask for
/// (it does not know the stream yet).
#[derive(Debug)]
struct LossSim {
    /// Out of `u32::MAX`.
    threshold: u32,
    state: u64,
    /// SSRCs (in clear in SRTP) whose first packet went through.
    known: Vec<u32>,
}

impl LossSim {
    fn new(percent: f64, seed: u64) -> Self {
        let share = (percent / 100.0).clamp(0.0, 1.0);
        LossSim {
            threshold: (share * f64::from(u32::MAX)) as u32,
            // Any odd start works for xorshift; each viewer gets its own sequence.
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            known: Vec::new(),
        }
    }

    fn drops(&mut self, datagram: &[u8]) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let is_rtp = matches!(datagram, [128..=191, second, ..] if !(192..=223).contains(second));
        let Some(ssrc) = datagram.get(8..12).filter(|_| is_rtp) else {
            return false;
        };
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        if !self.known.contains(&ssrc) {
            self.known.push(ssrc);
            return false;
        }
        // xorshift64: cheap and good enough to pick packets.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        ((self.state >> 32) as u32) < self.threshold
    }
}

/// One received stream, by SSRC: what arrived against what should have.
#[derive(Debug)]
struct Stream {
    ssrc: u32,
    /// Audio is not resent (Opus has no NACKs), so its losses are told apart.
    audio: bool,
    first: u64,
    highest: u64,
    /// Bit `i`: `highest - i` arrived.
    seen: u128,
    received: u64,
    duplicated: u64,
    reordered: u64,
}

impl Stream {
    fn new(ssrc: u32, audio: bool, seq: u64) -> Self {
        Stream {
            ssrc,
            audio,
            first: seq,
            highest: seq,
            seen: 1,
            received: 1,
            duplicated: 0,
            reordered: 0,
        }
    }

    /// Counts `seq`; false if it is a duplicate.
    fn note(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            let ahead = seq - self.highest;
            self.seen = if ahead < 128 {
                (self.seen << ahead) | 1
            } else {
                1
            };
            self.highest = seq;
            self.received += 1;
            return true;
        }
        let back = self.highest - seq;
        if back < 128 && self.seen & (1 << back) != 0 {
            self.duplicated += 1;
            return false;
        }
        if back < 128 {
            self.seen |= 1 << back;
        }
        self.received += 1;
        self.reordered += 1;
        true
    }

    fn expected(&self) -> u64 {
        self.highest - self.first + 1
    }

    /// What should have arrived and what did, leaving out the newest
    /// [`UNSETTLED`] sequence numbers: a packet missing there may still be resent.
    fn settled(&self) -> (u64, u64) {
        // UNSETTLED < 128: the bitmap covers the newest packets it leaves out.
        let recent = UNSETTLED.min(self.expected());
        let mask = (1u128 << recent) - 1;
        let arrived_recently = u64::from((self.seen & mask).count_ones());
        (
            self.expected() - recent,
            self.received.saturating_sub(arrived_recently),
        )
    }
}

/// How many of a stream's newest packets are not counted yet (about 350 ms of
/// 1.5 Mbit/s video): a NACK and its resend take a few round trips.
const UNSETTLED: u64 = 64;

/// Which video frames arrived whole. A frame is judged once [`FRAME_WINDOW`] newer
/// ones were seen, so packets resent after a loss still count for it.
#[derive(Debug, Default)]
struct Frames {
    /// Frames not judged yet, oldest first: number, packets seen, packets in it
    /// (0 while none of its packets arrived).
    open: VecDeque<(u32, u16, u16)>,
    complete: u64,
    incomplete: u64,
    missing: u64,
}

/// About a second of video at 30 frames a second.
const FRAME_WINDOW: usize = 32;

impl Frames {
    fn note(&mut self, t: &Trailer) {
        // The window holds consecutive frame numbers (skipped ones wait in it too),
        // so a frame's place is its distance from the oldest.
        let place = self
            .open
            .front()
            .and_then(|(oldest, ..)| t.frame.checked_sub(*oldest));
        if let Some(open) = place.and_then(|i| self.open.get_mut(i as usize)) {
            open.1 += 1;
            open.2 = t.count;
            return;
        }
        match self.open.back().map(|(frame, ..)| *frame) {
            Some(newest) if t.frame < newest => {} // older than the window: too late
            newest => {
                let skipped = newest.map_or(0, |n| t.frame.saturating_sub(n + 1));
                // Frames skipped wholly wait in the window too: resends may bring them.
                let waiting = skipped.min(FRAME_WINDOW as u32);
                self.missing += u64::from(skipped - waiting);
                for k in (1..=waiting).rev() {
                    self.open.push_back((t.frame - k, 0, 0));
                }
                self.open.push_back((t.frame, 1, t.count));
            }
        }
        while self.open.len() > FRAME_WINDOW {
            if let Some((_, seen, count)) = self.open.pop_front() {
                match count {
                    0 => self.missing += 1,
                    count if seen >= count => self.complete += 1,
                    _ => self.incomplete += 1,
                }
            }
        }
    }
}

struct Viewer {
    rtc: Rtc,
    audio_pt: Option<str0m::media::Pt>,
    socket: mio::net::UdpSocket,
    local: SocketAddr,
    loss: LossSim,
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
                    let audio = Some(p.header.payload_type) == self.audio_pt;
                    let new = match self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
                        Some(s) => s.note(seq),
                        None => {
                            self.streams.push(Stream::new(ssrc, audio, seq));
                            true
                        }
                    };
                    let Some(t) = Trailer::decode(&p.payload) else {
                        continue; // H264 parameter sets
                    };
                    let now = clock_nanos();
                    let _ = latency.record(now.saturating_sub(t.sent_nanos) / 1000);
                    if audio {
                        self.audio += 1;
                    } else {
                        self.video += 1;
                        if self.first_video.is_none() {
                            self.first_video = Some(self.started.elapsed());
                        }
                        if new {
                            // A duplicate does not make up for a lost packet.
                            self.frames.note(&t);
                        }
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

/// What a pool's viewers have counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets with the publisher's trailer, by kind.
    pub audio: u64,
    pub video: u64,
    /// By sequence number: what should have arrived and what did, by kind.
    pub audio_expected: u64,
    pub audio_received: u64,
    pub video_expected: u64,
    pub video_received: u64,
    pub duplicated: u64,
    /// Arrived after a later packet: reordered, or resent after a loss.
    pub reordered: u64,
    pub frames_complete: u64,
    pub frames_incomplete: u64,
    pub frames_missing: u64,
}

impl Counts {
    fn fields(&mut self) -> [&mut u64; 11] {
        [
            &mut self.audio,
            &mut self.video,
            &mut self.audio_expected,
            &mut self.audio_received,
            &mut self.video_expected,
            &mut self.video_received,
            &mut self.duplicated,
            &mut self.reordered,
            &mut self.frames_complete,
            &mut self.frames_incomplete,
            &mut self.frames_missing,
        ]
    }

    /// Each count combined with the other's by `f`.
    fn zip_with(mut self, mut other: Counts, f: impl Fn(u64, u64) -> u64) -> Counts {
        for (mine, theirs) in self.fields().into_iter().zip(other.fields()) {
            *mine = f(*mine, *theirs);
        }
        self
    }

    pub fn expected(&self) -> u64 {
        self.audio_expected + self.video_expected
    }

    pub fn received(&self) -> u64 {
        self.audio_received + self.video_received
    }

    pub fn audio_lost(&self) -> u64 {
        self.audio_expected.saturating_sub(self.audio_received)
    }

    pub fn video_lost(&self) -> u64 {
        self.video_expected.saturating_sub(self.video_received)
    }
}

/// What a pool's viewers have done so far.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub connected: usize,
    pub failed: Vec<String>,
    pub counts: Counts,
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
            counts: Counts::default(),
            first_video: Vec::new(),
            latency,
        }
    }

    /// What happened between `begin` and this snapshot: counts are differences;
    /// first-video times and latency (reset at `begin`) are kept as they are.
    pub fn since(mut self, begin: &PoolSnapshot) -> Self {
        self.counts = self.counts.zip_with(begin.counts, u64::saturating_sub);
        self
    }

    /// Two pools' snapshots together.
    pub fn merge(mut self, other: PoolSnapshot) -> Self {
        self.connected += other.connected;
        self.failed.extend(other.failed);
        self.counts = self.counts.zip_with(other.counts, u64::saturating_add);
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
                        if v.failed.is_some() || v.loss.drops(&buf[..n]) {
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
                        loss,
                        ..
                    } = *joined;
                    let mut v = Viewer {
                        rtc,
                        audio_pt,
                        socket: mio::net::UdpSocket::from_std(socket),
                        local,
                        loss,
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
                        let c = &mut s.counts;
                        c.audio += v.audio;
                        c.video += v.video;
                        for st in &v.streams {
                            let (expected, received) = if st.audio {
                                (&mut c.audio_expected, &mut c.audio_received)
                            } else {
                                (&mut c.video_expected, &mut c.video_received)
                            };
                            let (settled_expected, settled_received) = st.settled();
                            *expected += settled_expected;
                            *received += settled_received;
                            c.duplicated += st.duplicated;
                            c.reordered += st.reordered;
                        }
                        c.frames_complete += v.frames.complete;
                        c.frames_incomplete += v.frames.incomplete;
                        c.frames_missing += v.frames.missing;
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
    fn a_loss_among_the_newest_packets_is_not_counted_yet() {
        let mut s = Stream::new(1, false, 0);
        for seq in (1..100).filter(|seq| *seq != 90 && *seq != 10) {
            s.note(seq);
        }
        // 0..=99 expected, 10 and 90 missing; 90 is among the 64 newest.
        assert_eq!(s.settled(), (100 - 64, 100 - 2 - (64 - 1)));
        s.note(90); // resent
        assert_eq!(s.settled(), (36, 35));
        // A short stream is all unsettled.
        let short = Stream::new(2, false, 5);
        assert_eq!(short.settled(), (0, 0));
    }

    #[test]
    fn a_stream_counts_losses_duplicates_and_reorders() {
        let mut s = Stream::new(1, false, 100);
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
        f.note(&trailer(0, 2));
        f.note(&trailer(0, 2)); // frame 0 whole
        f.note(&trailer(1, 3)); // frame 1: one of three
        f.note(&trailer(4, 1)); // 2 and 3 never come
                                // Nothing is judged while it may still be completed by a resend...
        assert_eq!((f.complete, f.incomplete, f.missing), (0, 0, 0));
        for frame in 5..=(4 + FRAME_WINDOW as u32) {
            f.note(&trailer(frame, 1));
        }
        // ...then frames 0 to 4 are, once 32 newer ones were seen.
        assert_eq!((f.complete, f.incomplete, f.missing), (2, 1, 2));
    }

    #[test]
    fn a_resent_packet_completes_its_frame_and_a_resent_frame_counts() {
        let mut f = Frames::default();
        f.note(&trailer(0, 2)); // the second packet of frame 0 is lost...
        f.note(&trailer(2, 1)); // ...and frame 1 wholly
        f.note(&trailer(0, 2)); // resends bring both
        f.note(&trailer(1, 1));
        for frame in 3..=(2 + FRAME_WINDOW as u32) {
            f.note(&trailer(frame, 1));
        }
        assert_eq!((f.complete, f.incomplete, f.missing), (3, 0, 0));
        // Later than the window: too late to count.
        f.note(&trailer(1, 1));
        assert_eq!((f.complete, f.incomplete, f.missing), (3, 0, 0));
    }

    #[test]
    fn a_long_gap_counts_the_frames_beyond_the_window_as_missing() {
        let mut f = Frames::default();
        f.note(&trailer(0, 1));
        f.note(&trailer(100, 1)); // 99 frames skipped
                                  // The window holds frame 100 and the 31 before it; frame 0 was judged whole.
        assert_eq!(f.open.len(), FRAME_WINDOW);
        assert_eq!((f.complete, f.missing), (1, 99 - (FRAME_WINDOW as u64 - 1)));
    }

    #[test]
    fn the_loss_simulation_drops_about_its_share_of_rtp_only() {
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 0, 0, 0, 0, 7];
        let stun = [0x00, 0x01, 0, 0];
        let dtls = [22, 254, 253];
        let mut none = LossSim::new(0.0, 1);
        assert!(!(0..1000).any(|_| none.drops(&rtp)));
        let mut five = LossSim::new(5.0, 7);
        let dropped = (0..100_000).filter(|_| five.drops(&rtp)).count();
        assert!((4_500..5_500).contains(&dropped), "{dropped} of 100000");
        let mut all = LossSim::new(100.0, 3);
        assert!(!all.drops(&rtp), "a stream's first packet");
        assert!(all.drops(&rtp));
        let mut other_stream = rtp;
        other_stream[11] = 8;
        assert!(!all.drops(&other_stream), "another stream's first packet");
        assert!(!all.drops(&rtcp) && !all.drops(&stun) && !all.drops(&dtls) && !all.drops(&[]));
    }

    fn trailer(frame: u32, count: u16) -> Trailer {
        Trailer {
            frame,
            index: 0,
            count,
            sent_nanos: 0,
            keyframe: false,
        }
    }
}
