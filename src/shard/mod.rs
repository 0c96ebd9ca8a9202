//! A shard: one thread that owns a set of peers, the UDP sockets they use, and
//! its part of the router. Everything on the packet path happens here without a
//! lock: a datagram is read, handed to its peer's `Rtc`, the packets that come out
//! are fanned out to this shard's viewers (and as one `Arc` to each other shard
//! with viewers), and the viewers' datagrams are sent.
//!
//! Other threads talk to a shard through [`ShardHandle`]: a channel plus a waker.

mod command;
mod socket;
mod timers;

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use str0m::ice::StunMessage;
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input};

pub use command::{AcceptRequest, Command, PatchOutcome, DELETED_BY_CLIENT};
pub use socket::default_bind_ips;
use socket::{SendBatch, ShardSockets};
use timers::Timers;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peer::{AcceptError, Peer, PeerEvent, PeerKey, PeerSettings, Role, WriteOutcome};
use crate::room::Registry;
use crate::router::{MediaPacket, RoomId, Router};

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

/// How other threads reach a shard.
#[derive(Clone)]
pub struct ShardHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl ShardHandle {
    /// Queues a command and wakes the shard. False if the shard has stopped.
    pub fn send(&self, command: Command) -> bool {
        let sent = self.tx.send(command).is_ok();
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "cannot wake shard");
        }
        sent
    }
}

/// A shard built and bound but not yet running.
pub struct Shard {
    index: usize,
    poll: Poll,
    sockets: ShardSockets,
    rx: Receiver<Command>,
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
    ) -> io::Result<(Shard, ShardHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut sockets = ShardSockets::bind(&config.media, index, bind_ips)?;
        for (i, socket) in sockets.sockets.iter_mut().enumerate() {
            poll.registry()
                .register(socket, Token(i), Interest::READABLE)?;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let settings = PeerSettings {
            dtls_cert,
            local_candidates: sockets.candidates(&config.media.public_ips),
            reap_timeout: config.session.reap_timeout,
        };
        let shard = Shard {
            index,
            poll,
            sockets,
            rx,
            settings,
            keyframe_request_interval: config.session.keyframe_request_interval,
            keyframe_cache_bytes: config.media.keyframe_cache_bytes,
        };
        Ok((shard, ShardHandle { tx, waker }))
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
                let mut state = ShardLoop {
                    index,
                    poll: self.poll,
                    sockets: self.sockets,
                    rx: self.rx,
                    shards,
                    registry,
                    metrics,
                    settings: self.settings,
                    keyframe_request_interval: self.keyframe_request_interval,
                    keyframe_cache_bytes: self.keyframe_cache_bytes,
                    peers: FxHashMap::default(),
                    by_addr: FxHashMap::default(),
                    by_ufrag: HashMap::new(),
                    timers: Timers::default(),
                    router: Router::new(index, shard_count),
                    queue: Vec::new(),
                    events: Vec::new(),
                    due: Vec::new(),
                    outbox: vec![Vec::new(); shard_count],
                    buf: vec![0; 2048],
                    replaying: Vec::new(),
                    last_pace: Instant::now(),
                    sends: SendBatch::new(),
                    next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
                };
                state.run();
            })
    }
}

struct ShardLoop {
    index: usize,
    poll: Poll,
    sockets: ShardSockets,
    rx: Receiver<Command>,
    shards: Vec<ShardHandle>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    settings: PeerSettings,
    keyframe_request_interval: Duration,
    keyframe_cache_bytes: usize,
    peers: FxHashMap<PeerKey, Peer>,
    /// (remote address, local socket index) → peer: one lookup per datagram.
    by_addr: FxHashMap<(SocketAddr, usize), PeerKey>,
    /// Our ICE ufrag → peer, for STUN from an address not seen yet.
    by_ufrag: HashMap<String, PeerKey>,
    timers: Timers,
    router: Router,
    /// Peers that received input or media and must be drained.
    queue: Vec<PeerKey>,
    events: Vec<PeerEvent>,
    due: Vec<PeerKey>,
    /// Packets for other shards, sent once per loop turn as one batch each.
    outbox: Vec<Vec<Arc<MediaPacket>>>,
    buf: Vec<u8>,
    /// Viewers with a keyframe-cache replay still going out.
    replaying: Vec<PeerKey>,
    last_pace: Instant,
    /// Datagrams to send at the end of this loop turn.
    sends: SendBatch,
    next_housekeeping: Instant,
}

impl ShardLoop {
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
                .min(now + MAX_SLEEP);
            if !self.replaying.is_empty() {
                wake_at = wake_at.min(now + REPLAY_TICK);
            }
            let timeout = wake_at.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(shard = self.index, error = %e, "poll failed");
                }
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.read_socket(event.token().0);
                }
            }
            if !self.handle_commands() {
                break;
            }
            let now = Instant::now();
            self.run_timers(now);
            self.pace_replays(now);
            self.drain_queue();
            self.flush_outbox();
            if now >= self.next_housekeeping {
                self.housekeeping(now);
                self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            }
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.end_peer(key, "server shutting down");
        }
        tracing::debug!(shard = self.index, "shard stopped");
    }

    // ---- network input -------------------------------------------------------

    fn read_socket(&mut self, socket_index: usize) {
        let mut errors = 0;
        loop {
            let Some(socket) = self.sockets.sockets.get(socket_index) else {
                return;
            };
            match socket.recv_from(&mut self.buf) {
                Ok((len, source)) => self.on_datagram(socket_index, source, len),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    errors += 1;
                    tracing::trace!(error = %e, "recv error");
                    if errors > 64 {
                        return;
                    }
                }
            }
        }
    }

    fn on_datagram(&mut self, socket_index: usize, source: SocketAddr, len: usize) {
        let now = Instant::now();
        let data = &self.buf[..len];
        let known = self.by_addr.get(&(source, socket_index)).copied();
        let key = match known {
            Some(key) => key,
            None => match stun_target(data).and_then(|ufrag| self.by_ufrag.get(ufrag)) {
                Some(key) => *key,
                None => {
                    self.metrics.datagrams_dropped.inc();
                    return;
                }
            },
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Ok(contents) = data.try_into() else {
            self.metrics.datagrams_dropped.inc();
            return;
        };
        let destination = self.sockets.local_addrs[socket_index];
        peer.handle_input(Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        ));
        if known.is_none() {
            // Learn the address from its (ufrag-matched) check; str0m verifies the
            // message integrity before it uses the address.
            self.by_addr.insert((source, socket_index), key);
            peer.remote_addrs.push((source, socket_index));
        }
        // str0m holds one received RTP packet until the next poll: drain now,
        // before the next datagram for this peer is handed in.
        self.drain_peer(key);
    }

    // ---- commands from HTTP and other shards ---------------------------------

    /// Returns false when the shard must stop.
    fn handle_commands(&mut self) -> bool {
        while let Ok(command) = self.rx.try_recv() {
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
                Command::WantKeyframe { room } => self.request_keyframe_here(&room, Instant::now()),
                Command::PublisherAt { room, shard } => {
                    tracing::debug!(shard = self.index, %room, publisher_shard = shard, "publisher located");
                    self.router.set_publisher_shard(&room, Some(shard))
                }
                Command::PublisherLeft { room } => {
                    self.router.set_publisher_shard(&room, None);
                    self.publisher_left_here(&room);
                }
                Command::WantReplay {
                    room,
                    viewer,
                    shard,
                } => {
                    let packets = self.router.gop_snapshot(&room);
                    self.request_keyframe_here(&room, Instant::now());
                    if let Some(handle) = self.shards.get(shard) {
                        handle.send(Command::Replay { viewer, packets });
                    }
                }
                Command::Replay { viewer, packets } => self.replay(viewer, &packets),
                Command::Shutdown => return false,
            }
        }
        true
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
            let old = peer.ufrag.clone();
            outcome = match peer.ice_restart(&ufrag, &pwd) {
                Ok(fragment) => PatchOutcome::Restarted(fragment),
                Err(e) => PatchOutcome::Failed(e),
            };
            if peer.ufrag != old {
                self.by_ufrag.remove(&old);
                self.by_ufrag.insert(peer.ufrag.clone(), key);
            }
        }
        if !matches!(outcome, PatchOutcome::Failed(_)) {
            for c in candidates {
                peer.rtc.add_remote_candidate(c);
            }
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
            reply,
        } = request;
        let now = Instant::now();
        // A panic inside the stack on a strange offer must cost this offer only.
        let settings = &self.settings;
        let accepted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Peer::accept(
                key,
                role,
                room.clone(),
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
            Ok(ok) => ok,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.by_ufrag.insert(peer.ufrag.clone(), key);
        enqueue(&mut self.queue, &mut peer);
        self.peers.insert(key, peer);
        match role {
            Role::Publisher => {
                self.router.set_local_publisher(&room, Some(key));
                let shard = self.index;
                self.tell_others(|| Command::PublisherAt {
                    room: room.clone(),
                    shard,
                });
            }
            Role::Viewer => {
                self.router.add_local_viewer(&room, key);
                self.count_viewer_everywhere(&room, true);
            }
        }
        let _ = reply.send(Ok(answer));
        self.metrics
            .sessions_started
            .with_label_values(&[role.as_str()])
            .inc();
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
        self.by_ufrag.remove(&peer.ufrag);
        for addr in &peer.remote_addrs {
            self.by_addr.remove(addr);
        }
        peer.rtc.disconnect();
        self.registry.remove_session(key, &peer.room, peer.role);
        if reason != DELETED_BY_CLIENT {
            self.registry.remember_ended(key, &peer.room, peer.role);
        }
        let room = peer.room.clone();
        match peer.role {
            Role::Publisher => {
                self.registry.set_live(&room, false);
                self.router.set_local_publisher(&room, None);
                self.publisher_left_here(&room);
                self.tell_others(|| Command::PublisherLeft { room: room.clone() });
            }
            Role::Viewer => {
                self.router.remove_local_viewer(&room, key);
                self.count_viewer_everywhere(&room, false);
            }
        }
        self.metrics
            .sessions_ended
            .with_label_values(&[peer.role.as_str()])
            .inc();
        tracing::info!(session = %key, room = %room, role = peer.role.as_str(), reason, "session ended");
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
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.handle_input(Input::Timeout(now));
                peer.next_timeout = None;
                enqueue(&mut self.queue, peer);
            }
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
            self.end_peer(key, why);
        }
        self.drain_queue();
    }

    // ---- output: drain peers, fan out media ------------------------------------

    /// Drains every queued peer: viewers written to during this loop turn get one
    /// drain each, however many packets they were given (the batching knob).
    fn drain_queue(&mut self) {
        while let Some(key) = self.queue.pop() {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.queued = false;
            }
            self.drain_peer(key);
            if self.sends.len() >= 4 * SendBatch::CHUNK {
                self.flush_sends();
            }
        }
        self.flush_sends();
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
        self.metrics.send_errors.inc_by(sent.failed);
    }

    fn on_peer_event(&mut self, key: PeerKey, event: PeerEvent) {
        match event {
            PeerEvent::Media(packet) => {
                let packet = Arc::new(packet);
                self.metrics.packets_in.inc();
                self.router.cache(&packet, self.keyframe_cache_bytes);
                self.fan_out_local(&packet);
                for shard in self.router.remote_shards(&packet.room) {
                    self.outbox[shard].push(Arc::clone(&packet));
                }
            }
            PeerEvent::Connected => {
                if let Some(peer) = self.peers.get(&key) {
                    tracing::info!(session = %key, room = %peer.room, role = peer.role.as_str(), "connected");
                    if peer.role == Role::Publisher {
                        self.registry.set_live(&peer.room, true);
                    }
                    if peer.role == Role::Viewer {
                        self.start_viewer(key);
                    }
                }
            }
            PeerEvent::KeyframeWanted => {
                if let Some(room) = self.peers.get(&key).map(|p| p.room.clone()) {
                    self.ask_keyframe(key, &room, Instant::now());
                }
            }
            PeerEvent::Gone(why) => {
                self.end_peer(key, why);
            }
        }
    }

    /// Writes one packet to every viewer of its room on this shard.
    fn fan_out_local(&mut self, packet: &Arc<MediaPacket>) {
        let Some(room) = self.router.room(&packet.room) else {
            return;
        };
        let now = Instant::now();
        let mut wants_keyframe = false;
        for key in &room.viewers {
            let Some(peer) = self.peers.get_mut(key) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            if packet.kind == MediaKind::Video {
                if peer.awaiting_replay {
                    continue; // the cache on its way covers it
                }
                if peer.is_replaying() {
                    peer.queue_behind_replay(packet);
                    continue;
                }
            }
            match peer.write(packet) {
                WriteOutcome::Written => {
                    self.metrics.packets_out.inc();
                    if peer.first_video_at.is_none() && packet.kind == MediaKind::Video {
                        note_first_video(peer, &self.metrics);
                    }
                    enqueue(&mut self.queue, peer);
                }
                WriteOutcome::NeedsKeyframe => {
                    let interval = self.keyframe_request_interval;
                    if peer
                        .keyframe_asked
                        .is_none_or(|at| now.saturating_duration_since(at) >= interval)
                    {
                        peer.keyframe_asked = Some(now);
                        wants_keyframe = true;
                    }
                }
                WriteOutcome::Skipped => {}
            }
        }
        if wants_keyframe {
            let room = packet.room.clone();
            self.request_keyframe_anywhere(&room, now);
        }
    }

    /// A viewer just connected: give it the keyframe cache (from this shard or
    /// the publisher's), or ask the publisher for a keyframe if there is none.
    fn start_viewer(&mut self, key: PeerKey) {
        let Some(room) = self.peers.get(&key).map(|p| p.room.clone()) else {
            return;
        };
        let now = Instant::now();
        let (local_publisher, publisher_shard) = match self.router.room(&room) {
            Some(r) => (r.publisher, r.publisher_shard),
            None => (None, None),
        };
        // The cache gives a picture at once; a fresh keyframe (from a publisher
        // that honours PLI) also keeps the cache, and so later replays, short.
        if local_publisher.is_some() {
            let packets = self.router.gop_snapshot(&room);
            if !packets.is_empty() {
                self.replay(key, &packets);
            }
            self.ask_keyframe(key, &room, now);
        } else if let Some(shard) = publisher_shard {
            tracing::debug!(session = %key, publisher_shard = shard, "asking for the keyframe cache");
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.awaiting_replay = true;
                peer.keyframe_asked = Some(now);
            }
            self.shards[shard].send(Command::WantReplay {
                room,
                viewer: key,
                shard: self.index,
            });
        }
        // No publisher yet: the viewer starts on the first keyframe of the next one.
        else {
            tracing::debug!(session = %key, "no publisher yet");
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
        let written = peer.pace_replay(REPLAY_FIRST_BURST);
        if written > 0 {
            self.metrics.packets_out.inc_by(written as u64);
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
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            let written = peer.pace_replay(budget);
            if written > 0 {
                self.metrics.packets_out.inc_by(written as u64);
                enqueue(&mut self.queue, peer);
            }
            if peer.is_replaying() {
                still.push(key);
            }
        }
        self.replaying = still;
    }

    /// A viewer needs a keyframe: ask the room's publisher, wherever it lives.
    fn ask_keyframe(&mut self, viewer: PeerKey, room: &RoomId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&viewer) {
            peer.keyframe_asked = Some(now);
        }
        self.request_keyframe_anywhere(room, now);
    }

    fn request_keyframe_anywhere(&mut self, room: &RoomId, now: Instant) {
        match self.router.room(room).and_then(|r| r.publisher_shard) {
            Some(shard) if shard == self.index => self.request_keyframe_here(room, now),
            Some(shard) => {
                self.shards[shard].send(Command::WantKeyframe { room: room.clone() });
            }
            None => {} // no publisher: its first keyframe will come anyway
        }
    }

    fn request_keyframe_here(&mut self, room: &str, now: Instant) {
        let Some(key) = self.router.room(room).and_then(|r| r.publisher) else {
            return;
        };
        let interval = self.keyframe_request_interval;
        if let Some(peer) = self.peers.get_mut(&key) {
            if peer.request_keyframe(now, interval) {
                self.metrics.keyframe_requests.inc();
                enqueue(&mut self.queue, peer);
            }
        }
    }

    fn publisher_left_here(&mut self, room: &str) {
        let Some(r) = self.router.room(room) else {
            return;
        };
        for key in &r.viewers {
            if let Some(peer) = self.peers.get_mut(key) {
                peer.publisher_left();
                peer.awaiting_replay = false;
            }
        }
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

/// The ufrag a STUN binding request is addressed to (ours, before the colon).
fn stun_target(data: &[u8]) -> Option<&str> {
    // STUN starts with two zero bits and carries the magic cookie.
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let message = StunMessage::parse(data).ok()?;
    let (ours, _theirs) = message.split_username()?;
    // Lifetime: the name borrows `data`, which outlives this call.
    let start = data
        .windows(ours.len())
        .position(|w| w == ours.as_bytes())?;
    std::str::from_utf8(&data[start..start + ours.len()]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_stun_has_no_target() {
        assert_eq!(stun_target(&[0x80; 40]), None);
        assert_eq!(stun_target(&[]), None);
        assert_eq!(stun_target(&[0u8; 20]), None);
    }
}
