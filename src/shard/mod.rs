//! A shard: one thread that owns a set of peers, the UDP sockets they use, and
//! its part of the router. Everything on the packet path happens here without a
//! lock: a datagram is read, handed to its peer's `Rtc`, the packets that come out
//! are fanned out to this shard's viewers (and as one `Arc` to each other shard
//! with viewers), and the viewers' datagrams are sent.
//!
//! Other threads talk to a shard through [`ShardHandle`]: a channel plus a waker.
//!
//! No input may stop a shard. Every per-datagram, per-command and per-timer step
//! runs contained ([`ShardLoop::guarded`]): a panic costs the session the step was
//! about (ended, freed, logged and counted), and a panic outside any session
//! restarts the loop in place, ending only this shard's sessions. If the thread
//! ends anyway, its [`ShardHandle::is_alive`] turns false: `/readyz` says not
//! ready and the `switchboard` binary exits non-zero for its supervisor.

mod command;
pub mod demux;
mod handle;
mod receive;
mod send;
mod socket;
mod timers;

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input};

#[cfg(feature = "fault-injection")]
pub use command::Fault;
pub use command::{AcceptRequest, Command, CommandClass, PatchOutcome, DELETED_BY_CLIENT};
use demux::{Demux, DropReason, Route};
use handle::{AliveGuard, Shared};
pub use handle::{ShardHandle, MEDIA_LIMIT, REQUEST_LIMIT};
use receive::{RecvBatch, Segment};
use send::SendBatch;
pub use socket::default_bind_ips;
use socket::ShardSockets;
use timers::Timers;

use crate::config::Config;
use crate::metrics::{kind_label, ByKind, Metrics};
use crate::peer::{
    panic_message, AcceptError, Peer, PeerEvent, PeerKey, PeerSettings, Role, WriteOutcome,
};
use crate::room::Registry;
use crate::router::{sources, MediaPacket, RoomId, Router};

const WAKER: Token = Token(usize::MAX);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time the loop sleeps with nothing due, so housekeeping still runs.
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Packets of a keyframe-cache replay sent at once: enough for a keyframe.
const REPLAY_FIRST_BURST: usize = 48;
/// The pace of the rest of a replay, per viewer (~40 Mbit/s of 1,200-byte packets).
const REPLAY_PACKETS_PER_SECOND: f64 = 4000.0;
/// How often the loop wakes while a replay is going out.
const REPLAY_TICK: Duration = Duration::from_millis(2);
/// Datagrams read from one socket per loop turn: a flood on one port cannot
/// starve commands, timers and the other sockets. (Reads stop once it is reached;
/// the last batch may pass it, by at most 16 buffers of GRO-coalesced datagrams.)
const READ_BUDGET: usize = 256;
/// Why a session whose offer's HTTP request stopped waiting is ended.
const OFFER_GAVE_UP: &str = "the offer's HTTP request gave up waiting";
/// Commands handled per loop turn, for the same reason.
const COMMAND_BUDGET: usize = 1024;

/// A layer switch starts on that layer's keyframe cache when its keyframe is no
/// older than this (a short burst, no wait); otherwise on a keyframe asked for.
const FRESH_LAYER_CACHE: Duration = Duration::from_millis(1000);

/// A shard built and bound but not yet running.
pub struct Shard {
    index: usize,
    poll: Poll,
    sockets: ShardSockets,
    receive: RecvBatch,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    settings: PeerSettings,
    keyframe_request_interval: Duration,
    keyframe_cache_bytes: usize,
}

impl Shard {
    /// Binds shard `index`'s sockets and creates its channel.
    pub fn bind(
        index: usize,
        config: &Config,
        bind_ips: &[std::net::IpAddr],
        dtls_cert: str0m::config::DtlsCert,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Shard, ShardHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut sockets = ShardSockets::bind(&config.media, index, bind_ips)?;
        for (i, socket) in sockets.sockets.iter_mut().enumerate() {
            poll.registry()
                .register(socket, Token(i), Interest::READABLE)?;
        }
        let receive = RecvBatch::new(&sockets)?;
        // Unbounded as a channel; bounded by what each command may do when it is
        // full (handle.rs).
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::new());
        let settings = PeerSettings {
            dtls_cert,
            local_candidates: sockets.candidates(&config.media.public_ips),
            reap_timeout: config.session.reap_timeout,
            viewer_initial_estimate: match config.media.viewer_initial_estimate_kbps {
                0 => None,
                kbps => Some(str0m::bwe::Bitrate::kbps(kbps)),
            },
        };
        let shard = Shard {
            index,
            poll,
            sockets,
            receive,
            rx,
            shared: shared.clone(),
            settings,
            keyframe_request_interval: config.session.keyframe_request_interval,
            keyframe_cache_bytes: config.media.keyframe_cache_bytes,
        };
        let handle = ShardHandle {
            tx,
            waker,
            shared,
            metrics,
        };
        Ok((shard, handle))
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.sockets.local_addrs
    }

    /// Starts the shard's thread. `shards` holds every shard's handle, this one's included.
    pub fn spawn(
        self,
        shards: Vec<ShardHandle>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> io::Result<JoinHandle<()>> {
        let index = self.index;
        let shard_count = shards.len();
        std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                let _alive = AliveGuard(self.shared.clone());
                let dropped_by = DropReason::ALL
                    .iter()
                    .map(|r| metrics.datagrams_dropped.with_label_values(&[r.as_str()]))
                    .collect();
                let socket_count = self.sockets.sockets.len();
                let media = MediaCounters::new(&metrics);
                let mut state = ShardLoop {
                    index,
                    poll: self.poll,
                    sockets: self.sockets,
                    receive: self.receive,
                    received: Vec::new(),
                    rx: self.rx,
                    shared: self.shared,
                    shards,
                    registry,
                    metrics,
                    settings: self.settings,
                    keyframe_request_interval: self.keyframe_request_interval,
                    keyframe_cache_bytes: self.keyframe_cache_bytes,
                    peers: FxHashMap::default(),
                    demux: Demux::default(),
                    unread: vec![false; socket_count],
                    timers: Timers::default(),
                    router: Router::new(index, shard_count),
                    queue: Vec::new(),
                    events: Vec::new(),
                    due: Vec::new(),
                    outbox: vec![Vec::new(); shard_count],
                    replaying: Vec::new(),
                    last_pace: Instant::now(),
                    sends: SendBatch::new(),
                    fan_out_turn: 0,
                    next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
                    next_sources_tick: Instant::now() + sources::TICK,
                    dropped_by,
                    media,
                    written_arrivals: Vec::new(),
                    dying: false,
                    #[cfg(feature = "fault-injection")]
                    pending_fault: None,
                };
                state.supervise();
            })
    }
}

struct ShardLoop {
    index: usize,
    poll: Poll,
    sockets: ShardSockets,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    shards: Vec<ShardHandle>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    settings: PeerSettings,
    keyframe_request_interval: Duration,
    keyframe_cache_bytes: usize,
    peers: FxHashMap<PeerKey, Peer>,
    /// Which peer a datagram belongs to: by bound address, or STUN by ufrag.
    demux: Demux,
    /// Sockets that still had datagrams when their read budget ran out.
    unread: Vec<bool>,
    timers: Timers,
    router: Router,
    /// Peers that received input or media and must be drained.
    queue: Vec<PeerKey>,
    events: Vec<PeerEvent>,
    due: Vec<PeerKey>,
    /// Packets for other shards, sent once per loop turn as one batch each.
    outbox: Vec<Vec<Arc<MediaPacket>>>,
    /// The datagrams of the last read, many per system call.
    receive: RecvBatch,
    /// Where each datagram of the last read lies in `receive`'s buffers.
    received: Vec<(SocketAddr, Segment)>,
    /// Viewers with a keyframe-cache replay still going out.
    replaying: Vec<PeerKey>,
    last_pace: Instant,
    /// Datagrams to send at the end of this loop turn.
    sends: SendBatch,
    /// Counts fan-outs: where the next one starts among a room's viewers.
    fan_out_turn: usize,
    next_housekeeping: Instant,
    /// When the rooms' sources (levels, mutes, speakers) are next looked at.
    next_sources_tick: Instant,
    /// `udp_datagrams_dropped_total` by [`DropReason`] (its discriminant),
    /// resolved once: a flood is counted without a label lookup per datagram.
    dropped_by: Vec<prometheus::IntCounter>,
    /// The packet path's per-kind counters, resolved once.
    media: MediaCounters,
    /// Arrival times of the packets written to viewers in this loop turn: when
    /// their datagrams leave, the time inside the server is observed.
    written_arrivals: Vec<Instant>,
    /// Set when the loop must not restart after its next panic (test builds).
    dying: bool,
    #[cfg(feature = "fault-injection")]
    pending_fault: Option<Fault>,
}

impl ShardLoop {
    /// Runs the loop until shutdown. A panic that escapes every step's own
    /// containment restarts the loop in place: this shard's sessions are ended
    /// (their clients see DELETE answered and viewers' events say inactive), its
    /// sockets and inbox are kept. If even that fails, the thread ends and the
    /// process notices (`ShardHandle::is_alive`).
    fn supervise(&mut self) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.run())) {
                Ok(()) => break,
                Err(payload) => {
                    self.metrics.shard_restarts.inc();
                    tracing::error!(
                        shard = self.index,
                        panic = %panic_message(payload.as_ref()),
                        sessions = self.peers.len(),
                        "shard loop panicked outside any session: restarting it, its sessions end"
                    );
                    if self.dying || catch_unwind(AssertUnwindSafe(|| self.restart())).is_err() {
                        tracing::error!(shard = self.index, "shard could not restart: it stops");
                        return;
                    }
                }
            }
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.guarded("shutdown", Some(key), |s| {
                s.end_peer(key, "server shutting down");
            });
        }
        tracing::debug!(shard = self.index, "shard stopped");
    }

    /// Returns when the shard is told to stop.
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        tracing::debug!(shard = self.index, addrs = ?self.sockets.local_addrs, "shard running");
        loop {
            let now = Instant::now();
            let mut wake_at = self
                .timers
                .next_deadline()
                .unwrap_or(now + MAX_SLEEP)
                .min(self.next_housekeeping)
                .min(self.next_sources_tick)
                .min(now + MAX_SLEEP);
            if !self.replaying.is_empty() {
                wake_at = wake_at.min(now + REPLAY_TICK);
            }
            if self.unread.contains(&true) || !self.rx.is_empty() {
                wake_at = now; // work left from the last turn's budgets
            }
            let timeout = wake_at.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(shard = self.index, error = %e, "poll failed");
                }
            }
            let turn = Instant::now();
            for event in events.iter() {
                if let Some(unread) = self.unread.get_mut(event.token().0) {
                    *unread = true;
                }
            }
            for socket_index in 0..self.unread.len() {
                if self.unread[socket_index] {
                    self.unread[socket_index] = self.read_socket(socket_index);
                }
            }
            if !self.handle_commands() {
                return;
            }
            #[cfg(feature = "fault-injection")]
            self.raise_pending_fault();
            let now = Instant::now();
            self.run_timers(now);
            self.guarded("replay", None, |s| s.pace_replays(now));
            self.drain_queue();
            self.flush_outbox();
            if now >= self.next_sources_tick {
                self.guarded("sources", None, |s| s.tick_sources(now));
                self.drain_queue();
                self.next_sources_tick = now + sources::TICK;
            }
            if now >= self.next_housekeeping {
                self.housekeeping(now);
                self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            }
            self.metrics
                .shard_loop_seconds
                .observe(turn.elapsed().as_secs_f64());
        }
    }

    /// Ends every session of this shard and forgets all routing state, keeping
    /// the sockets and the inbox: the loop starts again clean.
    fn restart(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.abandon(key, "the media shard restarted after an internal error");
        }
        // The router keeps what other shards told it (their publishers and
        // viewer counts, which nobody would send again); this shard's own entries
        // went with its sessions above.
        self.demux.clear();
        self.timers = Timers::default();
        self.queue.clear();
        self.events.clear();
        self.due.clear();
        self.replaying.clear();
        for batch in &mut self.outbox {
            batch.clear();
        }
        self.sends = SendBatch::new();
    }

    /// Runs one step of the loop. A panic inside it is contained: logged,
    /// counted, and charged to `session` (ended and freed), if it concerns one.
    fn guarded<R>(
        &mut self,
        step: &'static str,
        session: Option<PeerKey>,
        f: impl FnOnce(&mut Self) -> R,
    ) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| f(&mut *self))) {
            Ok(r) => Some(r),
            Err(payload) => {
                self.metrics
                    .panics_contained
                    .with_label_values(&[step])
                    .inc();
                let message = panic_message(payload.as_ref());
                match session {
                    Some(key) => {
                        let room = self.peers.get(&key).map(|p| p.room.to_string());
                        tracing::error!(
                            shard = self.index,
                            session = %key,
                            room = room.as_deref().unwrap_or("-"),
                            step,
                            panic = %message,
                            "panic contained: ending the session"
                        );
                        self.abandon(key, crate::peer::ended::INTERNAL_ERROR);
                    }
                    None => tracing::error!(
                        shard = self.index,
                        step,
                        panic = %message,
                        "panic contained"
                    ),
                }
                None
            }
        }
    }

    /// Ends a session after a panic. If ending it normally panics too, it is
    /// dropped from every table by force.
    fn abandon(&mut self, key: PeerKey, reason: &'static str) {
        if catch_unwind(AssertUnwindSafe(|| self.end_peer(key, reason))).is_ok() {
            return;
        }
        tracing::error!(shard = self.index, session = %key, "ending the session panicked: removing it by force");
        let peer = self.peers.remove(&key);
        self.demux.remove_session(key);
        self.queue.retain(|k| *k != key);
        self.replaying.retain(|k| *k != key);
        if let Some(peer) = peer {
            let _ = catch_unwind(AssertUnwindSafe(|| count_session(&self.metrics, &peer, -1)));
            let _ = catch_unwind(AssertUnwindSafe(|| match peer.role {
                Role::Publisher => self.publisher_gone(&peer.room, key),
                Role::Viewer => self.router.remove_local_viewer(&peer.room, key),
            }));
            self.registry.remove_session(key, &peer.room, peer.role);
            self.registry.remember_ended(key, &peer.room, peer.role);
            // Leaking is safer than running a drop that may panic again.
            std::mem::forget(peer);
        }
    }

    // ---- network input -------------------------------------------------------

    /// Reads up to [`READ_BUDGET`] datagrams, in batches; true if the socket may
    /// have more.
    fn read_socket(&mut self, socket_index: usize) -> bool {
        let mut bytes = 0;
        let mut errors = 0;
        let mut read = 0;
        // The list is kept between calls (no allocation per read), out of `self`
        // while its datagrams are handled.
        let mut datagrams = std::mem::take(&mut self.received);
        let more = loop {
            if read >= READ_BUDGET {
                break true;
            }
            match self
                .receive
                .receive(&self.sockets, socket_index, &mut datagrams)
            {
                Ok(drained) => {
                    read += datagrams.len().max(1);
                    for (source, segment) in datagrams.drain(..) {
                        bytes += segment.bytes.len() as u64;
                        self.guarded("datagram", None, |s| {
                            s.on_datagram(socket_index, source, segment)
                        });
                    }
                    if drained {
                        // Edge-triggered: the next datagram raises a new event, so
                        // the call that would only say WouldBlock is saved.
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::NotFound => break false,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    errors += 1;
                    tracing::trace!(error = %e, "recv error");
                    if errors > 64 {
                        break true;
                    }
                }
            }
        };
        self.received = datagrams;
        self.metrics.udp_bytes_received.inc_by(bytes);
        more
    }

    fn on_datagram(&mut self, socket_index: usize, source: SocketAddr, segment: Segment) {
        let data = self.receive.bytes(&segment);
        let path = (source, socket_index);
        let (key, stun) = match self.demux.route(data, path) {
            Route::Stun(key) => (key, true),
            Route::Bound(key) => (key, false),
            Route::Drop(reason) => return self.dropped(reason),
        };
        let kind = demux::kind_of(data);
        self.guarded("datagram", Some(key), |s| {
            s.on_session_datagram(key, socket_index, source, segment, stun, kind)
        });
    }

    fn on_session_datagram(
        &mut self,
        key: PeerKey,
        socket_index: usize,
        source: SocketAddr,
        segment: Segment,
        stun: bool,
        kind: demux::Kind,
    ) {
        let now = Instant::now();
        let data = self.receive.bytes(&segment);
        let Some(peer) = self.peers.get_mut(&key) else {
            return self.dropped(DropReason::UnknownSource);
        };
        let Ok(contents) = data.try_into() else {
            return self.dropped(if stun {
                DropReason::MalformedStun
            } else {
                DropReason::NotWebRtc
            });
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.sockets.local_addrs[socket_index],
                contents,
            },
        );
        if stun {
            // str0m checks the USERNAME, the MESSAGE-INTEGRITY (or, for a
            // response, that it answers one of its checks): only then does the
            // message count, and its address become this session's.
            if !peer.accepts(&input) {
                return self.dropped(DropReason::StunRejected);
            }
            peer.note_alive(now);
            if self.demux.bind(key, (source, socket_index)) {
                tracing::debug!(session = %key, %source, "address bound");
            }
        } else if kind == demux::Kind::Dtls {
            peer.note_alive(now);
        }
        peer.handle_input(input);
        // str0m holds one received RTP packet until the next poll: drain now,
        // before the next datagram for this peer is handed in.
        self.drain_peer(key);
    }

    fn dropped(&self, reason: DropReason) {
        if let Some(counter) = self.dropped_by.get(reason as usize) {
            counter.inc();
        }
    }

    // ---- commands from HTTP and other shards ---------------------------------

    /// Handles up to [`COMMAND_BUDGET`] commands. Returns false when the shard
    /// must stop.
    fn handle_commands(&mut self) -> bool {
        for _ in 0..COMMAND_BUDGET {
            let Ok(command) = self.rx.try_recv() else {
                break;
            };
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            if matches!(command, Command::Shutdown) {
                return false;
            }
            let session = command.session();
            let replay_for = match &command {
                Command::WantReplay { viewer, shard, .. } => Some((*viewer, *shard)),
                _ => None,
            };
            let handled = self.guarded("command", session, |s| s.handle_command(command));
            if let (None, Some((viewer, shard))) = (handled, replay_for) {
                // The viewer on the other shard waits for a replay: an empty one
                // lets it start on the next keyframe instead.
                if let Some(handle) = self.shards.get(shard) {
                    handle.send(Command::Replay {
                        viewer,
                        packets: Vec::new(),
                    });
                }
            }
        }
        true
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Accept(request) => self.accept(*request),
            Command::Patch {
                key,
                credentials,
                candidates,
                reply,
            } => {
                let outcome = self.patch(key, credentials, candidates);
                let _ = reply.send(outcome);
            }
            Command::Layer {
                key,
                request,
                reply,
            } => {
                let now = Instant::now();
                let answer = self.peers.get_mut(&key).map(|peer| match &request {
                    Some(request) => peer.viewer.request_layer(request, now),
                    None => Ok(peer.viewer.layer_report(now)),
                });
                let _ = reply.send(answer);
            }
            Command::Pins { key, pins, reply } => {
                let answer = self.pins(key, pins);
                let _ = reply.send(answer);
            }
            Command::End { key, reason, reply } => {
                let ended = self.end_peer(key, reason);
                if let Some(reply) = reply {
                    let _ = reply.send(ended);
                }
            }
            Command::ViewerCount {
                room,
                shard,
                joined,
            } => self.router.count_viewer(&room, shard, joined),
            Command::Media(batch) => {
                for packet in batch {
                    self.fan_out_local(&packet);
                }
            }
            Command::Data {
                room,
                from,
                message,
            } => self.deliver_data(&room, &from, &message),
            Command::WantKeyframe {
                room,
                publisher,
                layer,
            } => self.request_keyframe_here(&room, publisher, layer, Instant::now()),
            Command::PublisherAt { room, key, shard } => {
                tracing::debug!(shard = self.index, %room, publisher = %key, publisher_shard = shard, "publisher located");
                self.router.publisher_at(&room, key, shard);
            }
            Command::PublisherLeft { room, key } => self.publisher_left_here(&room, key),
            Command::WantReplay {
                room,
                viewer,
                shard,
                track,
                participant,
            } => {
                let now = Instant::now();
                let estimate = self.initial_video_bps();
                let packets = self
                    .router
                    .gop_snapshot(&room, track, &participant, estimate, now);
                // A fresh keyframe keeps the cache, and so later replays, short;
                // without a cache it is what the viewer starts on.
                let publishers: Vec<PeerKey> = match (packets.first(), track) {
                    (Some(first), _) => vec![first.publisher],
                    (None, Some(track)) => self
                        .router
                        .room(&room)
                        .and_then(|r| r.sources.publisher_of(track))
                        .into_iter()
                        .collect(),
                    (None, None) => self.local_publishers_but(&room, &participant),
                };
                for publisher in publishers {
                    self.request_keyframe_here(&room, publisher, None, now);
                }
                if let Some(handle) = self.shards.get(shard) {
                    handle.send(Command::Replay { viewer, packets });
                }
            }
            Command::WantLayer {
                room,
                layer,
                viewer,
                shard,
            } => {
                let publisher = self
                    .router
                    .room(&room)
                    .and_then(|r| r.track_publisher(layer.0));
                if let Some((publisher, _)) = publisher {
                    self.serve_layer(&room, publisher, layer, viewer, shard, Instant::now());
                }
            }
            Command::Replay { viewer, packets } => {
                // The tracks it brings may be news to this shard: the viewer's
                // slots must know them before the packets are written.
                if let Some(first) = packets.first() {
                    let room = first.room.clone();
                    let now = Instant::now();
                    let mut learnt = false;
                    if let Some(r) = self.router.room_mut(&room) {
                        for p in &packets {
                            learnt |=
                                r.sources
                                    .learn(p.track, p.publisher, &p.participant, p.kind, now)
                                    == sources::Observed::New;
                        }
                    }
                    if learnt {
                        self.assign_slots(&room, false);
                    }
                }
                self.replay(viewer, &packets)
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
            #[cfg(feature = "fault-injection")]
            Command::Fault(fault) => self.inject(fault),
            Command::Shutdown => {}
        }
    }

    #[cfg(feature = "fault-injection")]
    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::PanicInCommand(key) => panic!("injected fault: panic in a command for {key}"),
            Fault::PanicOnWrite(key) => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.panic_on_write = true;
                }
            }
            // Raised by the loop itself, outside any step's containment.
            Fault::PanicInLoop | Fault::KillThread => self.pending_fault = Some(fault),
        }
    }

    /// Raises a fault injected for the loop itself (test builds).
    #[cfg(feature = "fault-injection")]
    fn raise_pending_fault(&mut self) {
        match self.pending_fault.take() {
            Some(Fault::PanicInLoop) => panic!("injected fault: panic in the shard loop"),
            Some(Fault::KillThread) => {
                self.dying = true;
                panic!("injected fault: the shard dies")
            }
            _ => {}
        }
    }

    fn patch(
        &mut self,
        key: PeerKey,
        credentials: Option<(String, String)>,
        candidates: Vec<Candidate>,
    ) -> PatchOutcome {
        let Some(peer) = self.peers.get_mut(&key) else {
            return PatchOutcome::Gone;
        };
        let mut outcome = PatchOutcome::Trickled;
        // A fragment names the ICE session it belongs to: new credentials mean the
        // client restarted ICE (RFC 9725 §4.4).
        if let Some((ufrag, pwd)) = credentials.filter(|(u, _)| *u != peer.remote_ufrag) {
            outcome = match peer.ice_restart(&ufrag, &pwd, &self.settings.local_candidates) {
                Ok(fragment) => PatchOutcome::Restarted(fragment),
                Err(e) => PatchOutcome::Failed(e),
            };
            self.demux.set_ufrag(key, &peer.ufrag);
        }
        if !matches!(outcome, PatchOutcome::Failed(_)) {
            peer.add_remote_candidates(candidates);
        }
        enqueue(&mut self.queue, peer);
        outcome
    }

    fn accept(&mut self, request: AcceptRequest) {
        let AcceptRequest {
            key,
            role,
            room,
            offer,
            offer_text,
            preferred_video,
            estimate_bandwidth,
            participant,
            news,
            reply,
        } = request;
        let now = Instant::now();
        // A panic inside the stack on a strange offer must cost this offer only.
        let without_estimation;
        let settings = if role == Role::Viewer && !estimate_bandwidth {
            without_estimation = PeerSettings {
                viewer_initial_estimate: None,
                ..self.settings.clone()
            };
            &without_estimation
        } else {
            &self.settings
        };
        let accepted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Peer::accept(
                key,
                role,
                room.clone(),
                participant,
                offer,
                &offer_text,
                settings,
                preferred_video,
                now,
            )
        }));
        let result = accepted.unwrap_or_else(|_| {
            tracing::error!(session = %key, "the WebRTC stack panicked on this offer");
            Err(AcceptError::Negotiation(
                "the server could not negotiate this offer (internal error, logged)".to_string(),
            ))
        });
        let (mut peer, answer) = match result {
            Ok((mut peer, answer)) => {
                peer.news = news;
                (peer, answer)
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // The seat is claimed before the offer is sent here; if it is no longer
        // this session's, the HTTP request gave up waiting and released it.
        if role == Role::Publisher
            && !self
                .registry
                .room(&room)
                .is_some_and(|r| r.has_publisher(key))
        {
            tracing::info!(session = %key, room = %room, "offer accepted after its request gave up: dropped");
            return;
        }
        self.demux.add_session(key, &peer.ufrag);
        enqueue(&mut self.queue, &mut peer);
        self.peers.insert(key, peer);
        match role {
            Role::Publisher => {
                self.router.add_local_publisher(&room, key);
                let shard = self.index;
                self.tell_others(|| Command::PublisherAt {
                    room: room.clone(),
                    key,
                    shard,
                });
            }
            Role::Viewer => {
                self.router.add_local_viewer(&room, key);
                self.count_viewer_everywhere(&room, true);
            }
        }
        self.metrics
            .sessions_started
            .with_label_values(&[role.as_str()])
            .inc();
        if let Some(peer) = self.peers.get(&key) {
            count_session(&self.metrics, peer, 1);
        }
        if reply.send(Ok(answer)).is_err() {
            // Nobody will ever learn this session's URL or answer.
            self.end_peer(key, OFFER_GAVE_UP);
        }
    }

    /// Sends a command to every other shard (the caller applies it here itself).
    fn tell_others(&self, make: impl Fn() -> Command) {
        for (i, handle) in self.shards.iter().enumerate() {
            if i != self.index {
                handle.send(make());
            }
        }
    }

    /// A viewer of `room` joined or left this shard: every shard keeps count.
    fn count_viewer_everywhere(&mut self, room: &RoomId, joined: bool) {
        let shard = self.index;
        self.router.count_viewer(room, shard, joined);
        self.tell_others(|| Command::ViewerCount {
            room: room.clone(),
            shard,
            joined,
        });
    }

    /// Ends a session and frees everything it held. False if it was not here.
    fn end_peer(&mut self, key: PeerKey, reason: &str) -> bool {
        let Some(mut peer) = self.peers.remove(&key) else {
            return false;
        };
        // Counted at once: a panic further on (contained) leaves no gauge behind.
        self.metrics
            .sessions_ended
            .with_label_values(&[peer.role.as_str()])
            .inc();
        count_session(&self.metrics, &peer, -1);
        self.demux.remove_session(key);
        self.replaying.retain(|k| *k != key);
        peer.disconnect();
        // Frees its publisher seat too, and with it its part in the room's live state.
        self.registry.remove_session(key, &peer.room, peer.role);
        // Remembered so the client's later DELETE answers 200; a client that
        // deleted it, or never learnt its URL, will not ask.
        if reason != DELETED_BY_CLIENT
            && reason != OFFER_GAVE_UP
            && !reason.starts_with("the offer's HTTP request")
        {
            self.registry.remember_ended(key, &peer.room, peer.role);
        }
        let room = peer.room.clone();
        match peer.role {
            Role::Publisher => self.publisher_gone(&room, key),
            Role::Viewer => {
                self.router.remove_local_viewer(&room, key);
                self.count_viewer_everywhere(&room, false);
            }
        }
        tracing::info!(session = %key, room = %room, role = peer.role.as_str(), participant = %peer.participant.identity, reason, "session ended");
        true
    }

    // ---- time ----------------------------------------------------------------

    fn run_timers(&mut self, now: Instant) {
        let peers = &self.peers;
        self.due.clear();
        self.timers.pop_due(
            now,
            |key, at| peers.get(&key).is_some_and(|p| p.next_timeout == Some(at)),
            &mut self.due,
        );
        for key in std::mem::take(&mut self.due) {
            self.guarded("timer", Some(key), |s| {
                if let Some(peer) = s.peers.get_mut(&key) {
                    peer.handle_input(Input::Timeout(now));
                    peer.next_timeout = None;
                    enqueue(&mut s.queue, peer);
                }
            });
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let timeout = self.settings.reap_timeout;
        let doomed: Vec<(PeerKey, &'static str)> = self
            .peers
            .values()
            .filter_map(|p| p.reap_reason(now, timeout).map(|why| (p.key, why)))
            .collect();
        for (key, why) in doomed {
            self.count_reaped(why);
            self.guarded("reap", Some(key), |s| s.end_peer(key, why));
        }
        self.drain_queue();
        let (addrs, ufrags, _) = self.demux.table_sizes();
        let shard = self.index.to_string();
        for (table, size) in [("address", addrs), ("ufrag", ufrags)] {
            self.metrics
                .media_routes
                .with_label_values(&[shard.as_str(), table])
                .set(size as i64);
        }
    }

    // ---- output: drain peers, fan out media ------------------------------------

    /// Drains every queued peer: viewers written to during this loop turn get one
    /// drain each, however many packets they were given (the batching knob).
    fn drain_queue(&mut self) {
        while let Some(key) = self.queue.pop() {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.queued = false;
            }
            self.guarded("drain", Some(key), |s| s.drain_peer(key));
            if self.sends.len() >= 4 * SendBatch::CHUNK {
                self.flush_sends();
            }
        }
        self.flush_sends();
        // The turn's packets have reached their last viewer here.
        if !self.written_arrivals.is_empty() {
            let now = Instant::now();
            for arrival in self.written_arrivals.drain(..) {
                self.metrics
                    .packet_server_seconds
                    .observe(now.saturating_duration_since(arrival).as_secs_f64());
            }
        }
    }

    /// Polls one peer until it has nothing more to say and acts on its events.
    fn drain_peer(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let before = peer.next_timeout;
        let sends = &mut self.sends;
        let mut events = std::mem::take(&mut self.events);
        peer.drain(&mut |t| sends.push(t), &mut events);
        // str0m's pacer releases written packets only on a timeout; when it asks
        // for one now (it does after writes), give it at once so forwarded packets
        // leave in this loop turn rather than the next.
        let now = Instant::now();
        if peer.next_timeout.is_some_and(|at| at <= now) {
            peer.handle_input(Input::Timeout(now));
            peer.drain(&mut |t| sends.push(t), &mut events);
        }
        if let Some(at) = peer.next_timeout {
            if before != Some(at) {
                self.timers.schedule(key, at);
            }
        }
        for event in events.drain(..) {
            self.on_peer_event(key, event);
        }
        self.events = events;
    }

    fn flush_sends(&mut self) {
        let sent = self.sends.flush(&self.sockets);
        self.metrics.datagrams_sent.inc_by(sent.datagrams);
        self.metrics.udp_bytes_sent.inc_by(sent.bytes);
        self.metrics.send_errors.inc_by(sent.failed);
    }

    fn on_peer_event(&mut self, key: PeerKey, event: PeerEvent) {
        match event {
            PeerEvent::Media(packet) => {
                self.media.packets_in.get(packet.kind).inc();
                self.media
                    .bytes_in
                    .get(packet.kind)
                    .inc_by(packet.payload.len() as u64);
                self.router
                    .cache(&packet, self.keyframe_cache_bytes, packet.arrival);
                self.fan_out_local(&packet);
                for shard in self.router.remote_shards(&packet.room) {
                    self.outbox[shard].push(Arc::clone(&packet));
                }
            }
            PeerEvent::Connected => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    let role = peer.role.as_str();
                    let sessions = &self.metrics.sessions;
                    sessions.with_label_values(&[role, "connecting"]).dec();
                    sessions.with_label_values(&[role, "connected"]).inc();
                    peer.counted_connected = true;
                    tracing::info!(session = %key, room = %peer.room, role = peer.role.as_str(), participant = %peer.participant.identity, "connected");
                    if peer.role == Role::Publisher {
                        self.registry.set_live(&peer.room, key);
                    }
                    if peer.role == Role::Viewer {
                        self.start_viewer(key);
                    }
                }
            }
            PeerEvent::KeyframeWanted(mid) => {
                // A viewer's PLIs/FIRs are forwarded at most once per interval:
                // each would otherwise be a command to the publisher's shard.
                // They go to the publisher of what the m-line shows, for its layer.
                let now = Instant::now();
                let interval = self.keyframe_request_interval;
                let wanted = self
                    .peers
                    .get(&key)
                    .and_then(|p| Some((p.room.clone(), p.viewer.forwarded_on(mid)?)));
                if let Some((room, layer)) = wanted {
                    let publisher = self
                        .router
                        .room(&room)
                        .and_then(|r| r.sources.publisher_of(layer.0));
                    let asked = publisher.filter(|publisher| {
                        self.peers
                            .get_mut(&key)
                            .is_some_and(|p| p.may_ask_keyframe(*publisher, now, interval))
                    });
                    if let Some(publisher) = asked {
                        self.request_keyframe_from(&room, publisher, Some(layer), now);
                    }
                }
            }
            PeerEvent::Data(message) => {
                let Some((room, from)) = self
                    .peers
                    .get(&key)
                    .map(|p| (p.room.clone(), Arc::clone(&p.participant.identity)))
                else {
                    return;
                };
                self.deliver_data(&room, &from, &message);
                self.tell_others(|| Command::Data {
                    room: room.clone(),
                    from: Arc::clone(&from),
                    message: Arc::clone(&message),
                });
            }
            PeerEvent::Stats(delta) => self.count_stats(&delta),
            PeerEvent::Gone(why) => {
                self.count_reaped(why);
                self.end_peer(key, why);
            }
            PeerEvent::Failed(why) => {
                self.metrics
                    .panics_contained
                    .with_label_values(&["session"])
                    .inc();
                self.count_reaped(why);
                self.end_peer(key, why);
            }
        }
    }

    /// A session the server ends on its own (reaped, closed, failed), by reason.
    fn count_reaped(&self, why: &str) {
        self.metrics
            .sessions_reaped
            .with_label_values(&[Metrics::reap_label(why)])
            .inc();
    }

    /// Adds one peer's stats report to the metrics.
    fn count_stats(&self, d: &crate::peer::stats::StatsDelta) {
        let m = &self.metrics;
        m.nacks_received.inc_by(d.nacks_received);
        m.nacks_sent.inc_by(d.nacks_sent);
        m.packets_resent.inc_by(d.resent);
        if d.plis_received > 0 {
            m.keyframe_requests_received
                .with_label_values(&["pli"])
                .inc_by(d.plis_received);
        }
        if d.firs_received > 0 {
            m.keyframe_requests_received
                .with_label_values(&["fir"])
                .inc_by(d.firs_received);
        }
        if let Some(loss) = d.loss_out {
            m.loss.with_label_values(&["out"]).observe(f64::from(loss));
        }
        if let Some(loss) = d.loss_in {
            m.loss.with_label_values(&["in"]).observe(f64::from(loss));
        }
        if let Some(bps) = d.estimate_bps {
            m.viewer_estimate.observe(bps as f64 / 8.0);
        }
    }

    /// A data channel message to every participant of `room` on this shard but
    /// its sender (all of the sender's sessions).
    fn deliver_data(&mut self, room: &str, from: &str, message: &str) {
        let Some(local) = self.router.room(room) else {
            return;
        };
        let members: Vec<PeerKey> = local
            .viewers
            .iter()
            .copied()
            .chain(local.local_publishers.iter().copied())
            .collect();
        for key in members {
            if let Some(peer) = self.peers.get_mut(&key) {
                if *peer.participant.identity != *from && peer.data.deliver(&mut peer.rtc, message)
                {
                    enqueue(&mut self.queue, peer);
                }
            }
        }
    }

    /// Writes one packet to every viewer of its room on this shard.
    fn fan_out_local(&mut self, packet: &Arc<MediaPacket>) {
        let Some(room) = self.router.room_mut(&packet.room) else {
            return;
        };
        let level = packet.extensions.audio_level.map(|(level, _)| level);
        let observed = room.sources.observe(
            packet.track,
            packet.publisher,
            &packet.participant,
            packet.kind,
            level,
            packet.arrival,
        );
        match observed {
            sources::Observed::Known => {}
            // A late packet of a publisher that left: its track must not come back.
            sources::Observed::Stray => return,
            // A track appeared: the slots are given out again before its first
            // packet is written.
            sources::Observed::New => self.assign_slots(&packet.room, false),
            // A track came back: slots, and every viewer's events, hear of it.
            sources::Observed::Unmuted => self.assign_slots(&packet.room, true),
        }
        let Some(room) = self.router.room(&packet.room) else {
            return;
        };
        let now = Instant::now();
        let mut wants_keyframe = false;
        let mut written = 0u64;
        let mut layer_wishes: Vec<(PeerKey, (u64, u8))> = Vec::new();
        // Viewers are written (and so drained) in an order that starts at a place
        // moving on with every packet, so no viewer is always the last to get a frame.
        self.fan_out_turn = self.fan_out_turn.wrapping_add(1);
        let first = self.fan_out_turn % room.viewers.len().max(1);
        let (before_first, from_first) = room.viewers.split_at(first);
        for key in from_first.iter().chain(before_first) {
            let Some(peer) = self.peers.get_mut(key) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            if packet.kind == MediaKind::Video {
                if peer.awaits_replay_of(packet.track) {
                    continue; // the cache on its way covers it
                }
                if peer.replays_track(packet.track) {
                    peer.queue_behind_replay(packet);
                    continue;
                }
            }
            let outcome = peer.write(packet);
            if let Some(wishes) = peer.viewer.take_keyframe_wishes() {
                layer_wishes.extend(wishes.into_iter().map(|layer| (*key, layer)));
            }
            let switches = peer.viewer.take_switches();
            if switches > 0 {
                self.metrics.layer_switches.inc_by(u64::from(switches));
            }
            let switches = peer.viewer.take_source_switches();
            if switches > 0 {
                self.metrics.slot_switches.inc_by(u64::from(switches));
            }
            match outcome {
                WriteOutcome::Written => {
                    written += 1;
                    if peer.first_video_at.is_none() && packet.kind == MediaKind::Video {
                        note_first_video(peer, &self.metrics);
                    }
                    enqueue(&mut self.queue, peer);
                }
                WriteOutcome::NeedsKeyframe => {
                    let interval = self.keyframe_request_interval;
                    if peer.may_ask_keyframe(packet.publisher, now, interval) {
                        wants_keyframe = true;
                    }
                }
                WriteOutcome::Skipped => {
                    if peer.has_failed() {
                        enqueue(&mut self.queue, peer); // its drain ends it
                    }
                }
            }
        }
        if written > 0 {
            let bytes = written * packet.payload.len() as u64;
            self.media.written(packet.kind, written, bytes);
            self.written_arrivals.push(packet.arrival);
        }
        if wants_keyframe {
            self.request_keyframe_from(&packet.room, packet.publisher, None, now);
        }
        for (viewer, layer) in layer_wishes {
            self.want_layer(&packet.room, layer, viewer, now);
        }
    }

    /// Gives the slots of `room`'s viewers on this shard to its tracks again
    /// (the slot policy, `router/slots.rs`), after the tracks changed; with
    /// `tell`, every viewer's events hear of the room's tracks (a mute or an
    /// unmute), not only those whose slots changed.
    fn assign_slots(&mut self, room: &str, tell: bool) {
        let Some(r) = self.router.room(room) else {
            return;
        };
        for key in &r.viewers {
            if let Some(peer) = self.peers.get_mut(key) {
                peer.assign_slots(&r.sources, tell);
            }
        }
    }

    /// The room's publishers on this shard but those of `participant`.
    fn local_publishers_but(&self, room: &str, participant: &str) -> Vec<PeerKey> {
        let Some(r) = self.router.room(room) else {
            return Vec::new();
        };
        r.local_publishers
            .iter()
            .copied()
            .filter(|key| {
                self.peers
                    .get(key)
                    .is_some_and(|p| *p.participant.identity != *participant)
            })
            .collect()
    }

    /// Every [`sources::TICK`]: the rooms' loudness, muted tracks and speakers
    /// are brought up to date, and where they changed, the slots and events.
    fn tick_sources(&mut self, now: Instant) {
        for room in self.router.rooms_mut() {
            if room.sources.is_empty() {
                continue;
            }
            let outcome = room.sources.tick(now);
            if !outcome.changed && !outcome.speaking {
                continue;
            }
            let audio_tracks = room.sources.count(MediaKind::Audio);
            for key in &room.viewers {
                let Some(peer) = self.peers.get_mut(key) else {
                    continue;
                };
                if outcome.changed {
                    peer.assign_slots(&room.sources, true);
                } else if peer.viewer.slot_count(MediaKind::Audio) < audio_tracks {
                    // Fewer audio slots than voices: the loudest may have changed.
                    peer.assign_slots(&room.sources, false);
                }
            }
        }
    }

    /// The pin API: sets a viewer's pins (if given) and gives its slots again.
    fn pins(&mut self, key: PeerKey, pins: Option<Vec<Arc<str>>>) -> Option<Vec<Arc<str>>> {
        let peer = self.peers.get_mut(&key)?;
        if let Some(pins) = pins {
            peer.viewer.set_pins(pins);
            if let Some(r) = self.router.room(&peer.room) {
                peer.assign_slots(&r.sources, false);
            }
        }
        Some(peer.viewer.pins().to_vec())
    }

    /// A viewer just connected: its slots are given out, and the first video
    /// slot's track starts at once from the keyframe cache (of this shard or its
    /// publisher's); the others start on the keyframes asked of their publishers.
    fn start_viewer(&mut self, key: PeerKey) {
        let Some((room, participant)) = self
            .peers
            .get(&key)
            .map(|p| (p.room.clone(), Arc::clone(&p.participant.identity)))
        else {
            return;
        };
        let now = Instant::now();
        let Some(r) = self.router.room(&room) else {
            tracing::debug!(session = %key, "no publisher yet");
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        peer.assign_slots(&r.sources, true);
        if peer.viewer.slot_count(MediaKind::Video) == 0 {
            return; // audio starts with the next packet, nothing to replay
        }
        let first_video = peer.viewer.first_video_track();
        // Where the cache is: the first video track's publisher, or, for a track
        // this shard has not seen yet, the room's oldest publisher.
        let holder = match first_video {
            Some(track) => r.track_publisher(track),
            None => r.publishers().first().copied(),
        };
        let Some((publisher, shard)) = holder else {
            // No publisher yet: the viewer starts on the first keyframe of the next one.
            tracing::debug!(session = %key, "no publisher yet");
            return;
        };
        if shard == self.index {
            let estimate = self.initial_video_bps();
            let packets = self
                .router
                .gop_snapshot(&room, first_video, &participant, estimate, now);
            if !packets.is_empty() {
                self.replay(key, &packets);
            }
            // A fresh keyframe keeps the cache, and so later replays, short.
            let interval = self.keyframe_request_interval;
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.may_ask_keyframe(publisher, now, interval);
            }
            self.request_keyframe_from(&room, publisher, None, now);
        } else {
            tracing::debug!(session = %key, publisher_shard = shard, "asking for the keyframe cache");
            let interval = self.keyframe_request_interval;
            if let Some(peer) = self.peers.get_mut(&key) {
                // That shard asks its publisher for a keyframe with the replay.
                peer.awaiting_replay = Some(first_video);
                peer.may_ask_keyframe(publisher, now, interval);
            }
            self.shards[shard].send(Command::WantReplay {
                room,
                viewer: key,
                shard: self.index,
                track: first_video,
                participant,
            });
        }
    }

    /// Starts sending the keyframe cache to a viewer: the first packets (the
    /// keyframe, usually) at once, the rest paced by [`Self::pace_replays`] so a
    /// large group of pictures neither floods the viewer's socket nor holds up
    /// this shard's other work.
    fn replay(&mut self, viewer: PeerKey, packets: &[Arc<MediaPacket>]) {
        let Some(peer) = self.peers.get_mut(&viewer) else {
            return;
        };
        peer.start_replay(packets);
        let (written, bytes) = peer.pace_replay(REPLAY_FIRST_BURST);
        if written > 0 {
            self.media
                .written(MediaKind::Video, written as u64, bytes as u64);
            note_first_video(peer, &self.metrics);
            enqueue(&mut self.queue, peer);
        }
        if peer.is_replaying() && !self.replaying.contains(&viewer) {
            self.replaying.push(viewer);
        }
        tracing::debug!(session = %viewer, packets = packets.len(), "keyframe cache replay started");
    }

    /// Sends the next share of every replay in progress, at
    /// [`REPLAY_PACKETS_PER_SECOND`] per viewer.
    fn pace_replays(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_pace);
        self.last_pace = now;
        if self.replaying.is_empty() {
            return;
        }
        let budget = ((elapsed.as_secs_f64() * REPLAY_PACKETS_PER_SECOND) as usize).clamp(1, 64);
        let mut still = Vec::with_capacity(self.replaying.len());
        for key in std::mem::take(&mut self.replaying) {
            // Each viewer's share runs contained: a panic ends that viewer and
            // the others' replays go on.
            let more = self.guarded("replay", Some(key), |s| {
                let Some(peer) = s.peers.get_mut(&key) else {
                    return false;
                };
                let (written, bytes) = peer.pace_replay(budget);
                if written > 0 {
                    s.media
                        .written(MediaKind::Video, written as u64, bytes as u64);
                    enqueue(&mut s.queue, peer);
                }
                peer.is_replaying()
            });
            if more == Some(true) && self.peers.contains_key(&key) {
                still.push(key);
            }
        }
        self.replaying.extend(still);
    }

    /// The video bitrate a new viewer's estimate starts with (its audio's share
    /// taken off): which simulcast layer's keyframe cache it is given.
    fn initial_video_bps(&self) -> Option<u64> {
        self.settings
            .viewer_initial_estimate
            .map(|b| b.as_u64().saturating_sub(crate::peer::AUDIO_SHARE_BPS))
    }

    /// A viewer switches to `layer` (of a track, maybe another publisher's): it
    /// starts at once on that layer's cache where the cache is fresh, or on the
    /// keyframe asked of the publisher.
    fn want_layer(&mut self, room: &RoomId, layer: (u64, u8), viewer: PeerKey, now: Instant) {
        match self
            .router
            .room(room)
            .and_then(|r| r.track_publisher(layer.0))
        {
            Some((publisher, shard)) if shard == self.index => {
                self.serve_layer(room, publisher, layer, viewer, self.index, now)
            }
            Some((_, shard)) => {
                self.shards[shard].send(Command::WantLayer {
                    room: room.clone(),
                    layer,
                    viewer,
                    shard: self.index,
                });
            }
            None => {}
        }
    }

    /// On the publisher's shard: `layer`'s fresh cache to `viewer` (on `shard`),
    /// or a keyframe request.
    fn serve_layer(
        &mut self,
        room: &RoomId,
        publisher: PeerKey,
        layer: (u64, u8),
        viewer: PeerKey,
        shard: usize,
        now: Instant,
    ) {
        match self
            .router
            .fresh_layer_snapshot(room, layer, now, FRESH_LAYER_CACHE)
        {
            Some(packets) if shard == self.index => {
                self.metrics.layer_cache_switches.inc();
                self.replay(viewer, &packets);
            }
            Some(packets) => {
                self.metrics.layer_cache_switches.inc();
                self.shards[shard].send(Command::Replay { viewer, packets });
            }
            None => self.request_keyframe_here(room, publisher, Some(layer), now),
        }
    }

    /// Asks publisher `publisher` of `room`, wherever it lives, for a keyframe
    /// of `layer` (of every video stream without one).
    fn request_keyframe_from(
        &mut self,
        room: &RoomId,
        publisher: PeerKey,
        layer: Option<(u64, u8)>,
        now: Instant,
    ) {
        match self.router.room(room).and_then(|r| r.shard_of(publisher)) {
            Some(shard) if shard == self.index => {
                self.request_keyframe_here(room, publisher, layer, now)
            }
            Some(shard) => {
                self.shards[shard].send(Command::WantKeyframe {
                    room: room.clone(),
                    publisher,
                    layer,
                });
            }
            None => {} // gone: its tracks leave the slots
        }
    }

    fn request_keyframe_here(
        &mut self,
        room: &str,
        publisher: PeerKey,
        layer: Option<(u64, u8)>,
        now: Instant,
    ) {
        let interval = self.keyframe_request_interval;
        if let Some(peer) = self.peers.get_mut(&publisher) {
            if peer.role == Role::Publisher
                && *peer.room == *room
                && peer.request_keyframe(layer, now, interval)
            {
                self.metrics.keyframe_requests.inc();
                enqueue(&mut self.queue, peer);
            }
        }
    }

    /// This shard's publisher `key` of `room` ended: it leaves here, then every
    /// other shard is told, after its last packets (flushed first).
    fn publisher_gone(&mut self, room: &RoomId, key: PeerKey) {
        self.publisher_left_here(room, key);
        self.flush_outbox();
        self.tell_others(|| Command::PublisherLeft {
            room: room.clone(),
            key,
        });
    }

    /// Publisher `key` of `room` left (here or on another shard): its tracks,
    /// caches and queued replays go, and the viewers' slots are given out again.
    fn publisher_left_here(&mut self, room: &RoomId, key: PeerKey) {
        if !self.router.publisher_left(room, key) {
            return;
        }
        if let Some(r) = self.router.room(room) {
            for viewer in &r.viewers {
                if let Some(peer) = self.peers.get_mut(viewer) {
                    peer.forget_publisher(key);
                }
            }
        }
        self.assign_slots(room, false);
    }

    fn flush_outbox(&mut self) {
        for (shard, batch) in self.outbox.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let packets = std::mem::take(batch);
            self.shards[shard].send(Command::Media(packets));
        }
    }
}

/// The packet path's counters by media kind.
struct MediaCounters {
    packets_in: ByKind,
    bytes_in: ByKind,
    packets_out: ByKind,
    bytes_out: ByKind,
}

impl MediaCounters {
    fn new(metrics: &Metrics) -> Self {
        MediaCounters {
            packets_in: ByKind::new(&metrics.packets_in),
            bytes_in: ByKind::new(&metrics.bytes_in),
            packets_out: ByKind::new(&metrics.packets_out),
            bytes_out: ByKind::new(&metrics.bytes_out),
        }
    }

    fn written(&self, kind: MediaKind, packets: u64, bytes: u64) {
        if packets > 0 {
            self.packets_out.get(kind).inc_by(packets);
            self.bytes_out.get(kind).inc_by(bytes);
        }
    }
}

/// A session starts (`+1`) or ends (`-1`): the gauges of open sessions by role
/// and state, and of published tracks and viewer slots by kind.
fn count_session(metrics: &Metrics, peer: &Peer, change: i64) {
    // The state it is counted in (the shard moves it when it handles `Connected`).
    let state = if peer.counted_connected {
        "connected"
    } else {
        "connecting"
    };
    metrics
        .sessions
        .with_label_values(&[peer.role.as_str(), state])
        .add(change);
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let (gauge, count) = match peer.role {
            Role::Publisher => (&metrics.tracks, peer.publisher.track_count(kind)),
            Role::Viewer => (&metrics.subscriptions, peer.viewer.slot_count(kind)),
        };
        gauge
            .with_label_values(&[kind_label(kind)])
            .add(change * count as i64);
    }
}

/// Records the time from a viewer's offer to its first video packet.
fn note_first_video(peer: &mut Peer, metrics: &Metrics) {
    if peer.first_video_at.is_none() {
        let now = Instant::now();
        peer.first_video_at = Some(now);
        metrics
            .first_video_seconds
            .observe(now.saturating_duration_since(peer.created).as_secs_f64());
    }
}

/// Puts a peer on the drain list once.
fn enqueue(queue: &mut Vec<PeerKey>, peer: &mut Peer) {
    if !peer.queued {
        peer.queued = true;
        queue.push(peer.key);
    }
}
