//! The room registry: which sessions exist, in which room, on which shard. Read
//! and written by the HTTP layer and by shards when a session ends; never on the
//! packet path. Plain data keyed by global IDs, so it could live in a shared store.
//!
//! Every table is bounded: `sessions` and `rooms` by the session caps (each
//! session and each offer being accepted holds a slot, see [`Registry::reserve_slot`]),
//! `live` by rooms and open event streams, `ended` by count and age.
//!
//! Lock order: an entry of `live` may be held while `rooms` is read, never the
//! other way round.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::peer::{PeerKey, Role};
use crate::router::RoomId;

#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub room: RoomId,
    pub role: Role,
    pub shard: usize,
    pub etag: String,
    pub created: Instant,
    /// The participant it belongs to, and its display name.
    pub participant: Arc<str>,
    pub name: Option<Arc<str>>,
    /// A viewer's slots and its room's tracks, as its shard tells them.
    pub news: Option<watch::Receiver<crate::router::slots::ViewerNews>>,
}

#[derive(Debug, Default, Clone)]
pub struct RoomEntry {
    /// The room's publishing sessions, in the order they joined.
    pub publishers: Vec<PublisherSeat>,
    pub viewers: usize,
    /// The participants with a session here: identity, display name, and how
    /// many sessions it has (a participant leaves with its last one).
    pub participants: std::collections::BTreeMap<Arc<str>, (Option<Arc<str>>, usize)>,
}

/// One publishing session of a room.
#[derive(Debug, Clone)]
pub struct PublisherSeat {
    pub key: PeerKey,
    pub participant: Arc<str>,
    /// The video codec it offered first (what it sends).
    pub video: Option<str0m::format::Codec>,
    /// It sends simulcast: its viewers choose layers by their bandwidth estimates.
    pub simulcast: bool,
    /// It is connected (what the `live` channels carry, for any publisher).
    pub live: bool,
}

impl RoomEntry {
    /// Whether any publisher is connected.
    pub fn live(&self) -> bool {
        self.publishers.iter().any(|p| p.live)
    }

    pub fn has_publisher(&self, key: PeerKey) -> bool {
        self.publishers.iter().any(|p| p.key == key)
    }

    /// The video codec a viewer's answer leads with: the first publisher's.
    pub fn video_codec(&self) -> Option<str0m::format::Codec> {
        self.publishers.iter().find_map(|p| p.video)
    }

    /// Whether a viewer's bandwidth must be estimated: some publisher sends layers.
    pub fn any_simulcast(&self) -> bool {
        self.publishers.iter().any(|p| p.simulcast)
    }
}

/// Why a publisher seat was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatRefused {
    /// The room holds `session.max_publishers_per_room` publishers already.
    RoomFull(usize),
    /// The participant publishes in the room already, and the new session may
    /// not replace it (its identity is not authenticated).
    AlreadyPublishing,
}

#[derive(Debug, Default)]
pub struct Registry {
    rooms: DashMap<RoomId, RoomEntry>,
    sessions: DashMap<PeerKey, SessionEntry>,
    /// Whether each room has a publisher sending (connected), watched by viewers'
    /// event streams. Kept apart from `rooms` so a watcher keeps its channel
    /// while the room empties and fills again; a channel exists only while its
    /// room exists or someone watches it.
    live: DashMap<RoomId, watch::Sender<bool>>,
    /// Sessions the server ended (closed by the client, reaped) that the client
    /// has not DELETEd yet: OBS closes the connection first, then DELETEs, and
    /// expects 200.
    ended: Mutex<EndedSessions>,
    /// Who holds the session slots the caps count.
    slots: Mutex<Slots>,
}

/// How many ended sessions are remembered, at most.
pub const ENDED_CAPACITY: usize = 10_000;
/// How long an ended session's resource still answers DELETE with 200.
pub const ENDED_KEPT_FOR: Duration = Duration::from_secs(300);

/// The caps on sessions: in all, and per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    pub total: usize,
    pub per_client: usize,
}

/// Which cap refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    /// The node holds `session.max_sessions` sessions.
    Server,
    /// This client address holds `session.max_sessions_per_ip` sessions.
    Client,
}

/// The sizes of the registry's tables (tests and `/metrics`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableSizes {
    pub rooms: usize,
    pub sessions: usize,
    pub live: usize,
    pub ended: usize,
    pub slots: usize,
    pub slot_clients: usize,
}

impl Registry {
    /// Takes a publisher seat in `room` for `key`, of `participant`. A
    /// participant publishes once per room: with `replace` (an authenticated
    /// identity), its older publishing sessions lose their seats and are returned
    /// for the caller to end (a client that reconnects replaces its stale session
    /// at once; an offer of them still being accepted is dropped by its shard if
    /// the shard has not checked its seat yet); without, the new one is refused.
    pub fn claim_publisher(
        &self,
        room: &RoomId,
        key: PeerKey,
        participant: &Arc<str>,
        max: usize,
        replace: bool,
    ) -> Result<Vec<PeerKey>, SeatRefused> {
        let mut entry = self.rooms.entry(room.clone()).or_default();
        let older: Vec<PeerKey> = entry
            .publishers
            .iter()
            .filter(|p| p.participant == *participant)
            .map(|p| p.key)
            .collect();
        if !older.is_empty() && !replace {
            return Err(SeatRefused::AlreadyPublishing);
        }
        if entry.publishers.len() - older.len() >= max {
            return Err(SeatRefused::RoomFull(max));
        }
        entry.publishers.retain(|p| p.participant != *participant);
        entry.publishers.push(PublisherSeat {
            key,
            participant: Arc::clone(participant),
            video: None,
            simulcast: false,
            live: false,
        });
        Ok(older)
    }

    /// What publisher `key` of `room` sends: its video codec, and whether in layers.
    pub fn set_publisher_media(
        &self,
        room: &RoomId,
        key: PeerKey,
        codec: Option<str0m::format::Codec>,
        simulcast: bool,
    ) {
        if let Some(mut r) = self.rooms.get_mut(room) {
            if let Some(seat) = r.publishers.iter_mut().find(|p| p.key == key) {
                seat.video = codec;
                seat.simulcast = simulcast;
            }
        }
    }

    /// Registers a session the shard has accepted. False (nothing registered) if
    /// the shard already ended it: between its answer and this call it may have
    /// (a panic, a failed start), and its removal then found nothing to remove.
    pub fn add_session(&self, key: PeerKey, entry: SessionEntry) -> bool {
        if lock(&self.ended).contains(key) {
            return false;
        }
        {
            let mut room = self.rooms.entry(entry.room.clone()).or_default();
            if entry.role == Role::Viewer {
                room.viewers += 1;
            }
            room.participants
                .entry(Arc::clone(&entry.participant))
                .or_insert((entry.name.clone(), 0))
                .1 += 1;
        }
        self.sessions.insert(key, entry);
        true
    }

    /// Forgets a session, frees the publisher seat and the session slot it held.
    /// Also used to release a claimed seat and slot whose session never started.
    /// Safe to call more than once.
    pub fn remove_session(&self, key: PeerKey, room: &RoomId, role: Role) -> Option<SessionEntry> {
        let removed = self.sessions.remove(&key).map(|(_, e)| e);
        self.release_slot(key);
        if let Entry::Occupied(mut entry) = self.rooms.entry(room.clone()) {
            let r = entry.get_mut();
            match role {
                Role::Publisher => r.publishers.retain(|p| p.key != key),
                Role::Viewer if removed.is_some() => r.viewers = r.viewers.saturating_sub(1),
                Role::Viewer => {}
            }
            if let Some(gone) = &removed {
                if let Some((_, sessions)) = r.participants.get_mut(&gone.participant) {
                    *sessions = sessions.saturating_sub(1);
                    if *sessions == 0 {
                        r.participants.remove(&gone.participant);
                    }
                }
            }
            if r.publishers.is_empty() && r.viewers == 0 && r.participants.is_empty() {
                entry.remove();
            }
        }
        // Tell the room's watchers, or forget its channel if nobody watches an empty room.
        self.sync_live(room);
        removed
    }

    /// Publisher `key` of `room` connected. The room is live while any of its
    /// publishers is; a publisher that leaves takes its seat, and its part in
    /// that, with it (`remove_session`).
    pub fn set_live(&self, room: &RoomId, key: PeerKey) {
        if let Some(mut r) = self.rooms.get_mut(room) {
            if let Some(seat) = r.publishers.iter_mut().find(|p| p.key == key) {
                seat.live = true;
            }
        }
        self.sync_live(room);
    }

    /// Follows whether `room` has a live publisher, starting from its current
    /// state. The channel is forgotten when the last watch of an empty room is dropped.
    pub fn watch_live(self: &Arc<Self>, room: &RoomId) -> LiveWatch {
        let rx = self
            .live
            .entry(room.clone())
            .or_insert_with(|| watch::channel(self.room_is_live(room)).0)
            .subscribe();
        LiveWatch {
            registry: Arc::clone(self),
            room: room.clone(),
            rx: Some(rx),
        }
    }

    fn room_is_live(&self, room: &RoomId) -> bool {
        self.rooms.get(room).is_some_and(|r| r.live())
    }

    /// Brings `room`'s channel, if any, in line with the room: sends its live
    /// state, or removes the channel when the room is gone and nobody watches.
    fn sync_live(&self, room: &RoomId) {
        if let Entry::Occupied(entry) = self.live.entry(room.clone()) {
            let state = self.rooms.get(room).map(|r| r.live());
            match state {
                None if entry.get().receiver_count() == 0 => {
                    entry.remove();
                }
                state => {
                    let live = state.unwrap_or(false);
                    entry.get().send_if_modified(|current| {
                        let changed = *current != live;
                        *current = live;
                        changed
                    });
                }
            }
        }
    }

    /// Remembers a session the server ended on its own.
    pub fn remember_ended(&self, key: PeerKey, room: &RoomId, role: Role) {
        lock(&self.ended).insert(key, room.clone(), role, Instant::now());
    }

    /// The client DELETEs a session the server already ended: true (once) if it
    /// was ours, in that room and of that role, and recent.
    pub fn take_ended(&self, key: PeerKey, room: &str, role: Role) -> bool {
        lock(&self.ended).take(key, room, role, Instant::now())
    }

    /// Takes a session slot for `key` (an offer about to go to a shard) on
    /// behalf of `client`, unless a cap is reached. The slot is freed by
    /// [`remove_session`](Self::remove_session) (or [`release_slot`](Self::release_slot)).
    pub fn reserve_slot(
        &self,
        key: PeerKey,
        client: IpAddr,
        caps: SessionCaps,
    ) -> Result<(), CapReached> {
        lock(&self.slots).reserve(key, client, caps)
    }

    /// Frees `key`'s session slot, if it holds one.
    pub fn release_slot(&self, key: PeerKey) {
        lock(&self.slots).release(key);
    }

    /// A new ETag for `key`'s session (after an ICE restart: the tag names the
    /// current ICE session). False if the session is gone.
    pub fn set_etag(&self, key: PeerKey, etag: &str) -> bool {
        match self.sessions.get_mut(&key) {
            Some(mut entry) => {
                entry.etag = etag.to_string();
                true
            }
            None => false,
        }
    }

    /// The sessions of `room` (every room: `None`), in no particular order.
    pub fn sessions_in(&self, room: Option<&str>) -> Vec<(PeerKey, SessionEntry)> {
        self.sessions
            .iter()
            .filter(|e| room.is_none_or(|r| &*e.value().room == r))
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }

    pub fn session(&self, key: PeerKey) -> Option<SessionEntry> {
        self.sessions.get(&key).map(|e| e.clone())
    }

    pub fn room(&self, room: &str) -> Option<RoomEntry> {
        self.rooms.get(room).map(|e| e.clone())
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    #[doc(hidden)]
    pub fn table_sizes(&self) -> TableSizes {
        let (slots, slot_clients) = {
            let slots = lock(&self.slots);
            (slots.holders.len(), slots.by_client.len())
        };
        TableSizes {
            rooms: self.rooms.len(),
            sessions: self.sessions.len(),
            live: self.live.len(),
            ended: lock(&self.ended).len(),
            slots,
            slot_clients,
        }
    }
}

/// A mutex that a panic elsewhere cannot make unusable: the tables it guards
/// stay consistent at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A viewer's view of its room's live state. Dropping the last one of a room
/// that is gone forgets the room's channel.
pub struct LiveWatch {
    registry: Arc<Registry>,
    room: RoomId,
    /// Always `Some` until dropped: taken in `drop` so the channel sees one
    /// receiver fewer before it is checked.
    rx: Option<watch::Receiver<bool>>,
}

impl LiveWatch {
    /// Waits for a change; false if the channel is closed.
    pub async fn changed(&mut self) -> bool {
        match &mut self.rx {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        }
    }

    /// The current state, marked as seen.
    pub fn borrow_and_update(&mut self) -> bool {
        self.rx.as_mut().is_some_and(|rx| *rx.borrow_and_update())
    }
}

impl Drop for LiveWatch {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.registry.sync_live(&self.room);
    }
}

/// Who holds the session slots: one per session and per offer being accepted.
#[derive(Debug, Default)]
struct Slots {
    holders: HashMap<PeerKey, IpAddr>,
    /// Slots held per client address; an address holding none has no entry.
    by_client: HashMap<IpAddr, usize>,
}

impl Slots {
    fn reserve(
        &mut self,
        key: PeerKey,
        client: IpAddr,
        caps: SessionCaps,
    ) -> Result<(), CapReached> {
        if self.holders.contains_key(&key) {
            return Ok(());
        }
        if self.holders.len() >= caps.total {
            return Err(CapReached::Server);
        }
        let held = self.by_client.get(&client).copied().unwrap_or(0);
        if held >= caps.per_client {
            return Err(CapReached::Client);
        }
        self.by_client.insert(client, held + 1);
        self.holders.insert(key, client);
        Ok(())
    }

    fn release(&mut self, key: PeerKey) {
        let Some(client) = self.holders.remove(&key) else {
            return;
        };
        if let std::collections::hash_map::Entry::Occupied(mut held) = self.by_client.entry(client)
        {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

/// Sessions the server ended, remembered for a while so that the client's
/// DELETE still succeeds. Bounded in count and age; an insert does O(1) work:
/// entries leave from the front of the insertion order (the oldest), at most
/// two expired ones per insert plus the oldest when full.
#[derive(Debug)]
pub struct EndedSessions {
    /// Insertion order. May hold keys already taken: those are skipped when
    /// they reach the front.
    order: VecDeque<(PeerKey, Instant)>,
    by_key: HashMap<PeerKey, (RoomId, Role, Instant)>,
    capacity: usize,
    kept_for: Duration,
}

impl Default for EndedSessions {
    fn default() -> Self {
        EndedSessions::new(ENDED_CAPACITY, ENDED_KEPT_FOR)
    }
}

impl EndedSessions {
    pub fn new(capacity: usize, kept_for: Duration) -> Self {
        EndedSessions {
            order: VecDeque::new(),
            by_key: HashMap::new(),
            capacity: capacity.max(1),
            kept_for,
        }
    }

    pub fn insert(&mut self, key: PeerKey, room: RoomId, role: Role, now: Instant) {
        for _ in 0..2 {
            match self.order.front() {
                Some(&(_, at)) if now.saturating_duration_since(at) >= self.kept_for => {
                    self.pop_front()
                }
                _ => break,
            }
        }
        // `order` never holds more than `capacity`, so this pops at most once.
        while self.order.len() >= self.capacity {
            self.pop_front();
        }
        self.order.push_back((key, now));
        self.by_key.insert(key, (room, role, now));
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: PeerKey) -> bool {
        self.by_key.contains_key(&key)
    }

    /// True (once) if `key` was remembered, in `room`, with `role`, and is recent.
    pub fn take(&mut self, key: PeerKey, room: &str, role: Role, now: Instant) -> bool {
        match self.by_key.remove(&key) {
            Some((r, kind, at)) => {
                &*r == room && kind == role && now.saturating_duration_since(at) < self.kept_for
            }
            None => false,
        }
    }

    /// Entries held (including taken ones not yet evicted).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn pop_front(&mut self) {
        if let Some((key, at)) = self.order.pop_front() {
            // Only if this entry is still the remembered one for `key`.
            if self.by_key.get(&key).is_some_and(|&(_, _, t)| t == at) {
                self.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &RoomId, role: Role) -> SessionEntry {
        SessionEntry {
            room: room.clone(),
            role,
            shard: 0,
            etag: "\"x\"".into(),
            created: Instant::now(),
            participant: "p".into(),
            name: None,
            news: None,
        }
    }

    const CAPS: SessionCaps = SessionCaps {
        total: 3,
        per_client: 2,
    };

    #[test]
    fn publishers_share_a_room_up_to_its_cap_and_a_participant_replaces_itself() {
        let reg = Registry::default();
        let room: RoomId = "a".into();
        let (alice, bob, carol): (Arc<str>, Arc<str>, Arc<str>) =
            ("alice".into(), "bob".into(), "carol".into());
        assert_eq!(
            reg.claim_publisher(&room, PeerKey(1), &alice, 2, true),
            Ok(vec![])
        );
        assert_eq!(
            reg.claim_publisher(&room, PeerKey(2), &bob, 2, true),
            Ok(vec![])
        );
        assert_eq!(
            reg.claim_publisher(&room, PeerKey(3), &carol, 2, true),
            Err(SeatRefused::RoomFull(2))
        );
        // Alice again, unauthenticated: refused; authenticated: her old seat goes.
        assert_eq!(
            reg.claim_publisher(&room, PeerKey(4), &alice, 2, false),
            Err(SeatRefused::AlreadyPublishing)
        );
        assert_eq!(
            reg.claim_publisher(&room, PeerKey(4), &alice, 2, true),
            Ok(vec![PeerKey(1)])
        );
        let seats: Vec<PeerKey> = reg
            .room("a")
            .map(|r| r.publishers.iter().map(|p| p.key).collect())
            .unwrap_or_default();
        assert_eq!(seats, vec![PeerKey(2), PeerKey(4)]);
        // The old session ending later takes nothing of the new one's.
        reg.add_session(PeerKey(1), entry(&room, Role::Publisher));
        reg.remove_session(PeerKey(1), &room, Role::Publisher);
        assert!(reg.room("a").is_some_and(|r| r.has_publisher(PeerKey(4))));
        reg.set_publisher_media(&room, PeerKey(4), Some(str0m::format::Codec::H264), true);
        let r = reg.room("a").expect("room");
        assert_eq!(r.video_codec(), Some(str0m::format::Codec::H264));
        assert!(r.any_simulcast());
        assert!(!r.live());
        reg.set_live(&room, PeerKey(2));
        assert!(reg.room("a").is_some_and(|r| r.live()));
    }

    #[test]
    fn viewers_are_counted_and_empty_rooms_vanish() {
        let reg = Registry::default();
        let room: RoomId = "a".into();
        reg.add_session(PeerKey(3), entry(&room, Role::Viewer));
        assert_eq!(reg.room("a").map(|r| r.viewers), Some(1));
        reg.remove_session(PeerKey(3), &room, Role::Viewer);
        assert!(reg.room("a").is_none());
        assert_eq!(reg.session_count(), 0);
    }

    #[test]
    fn set_live_on_a_room_that_is_gone_creates_nothing() {
        let reg = Registry::default();
        let room: RoomId = "gone".into();
        let p: Arc<str> = "p".into();
        reg.claim_publisher(&room, PeerKey(1), &p, 8, true).unwrap();
        reg.add_session(PeerKey(1), entry(&room, Role::Publisher));
        reg.set_live(&room, PeerKey(1));
        reg.remove_session(PeerKey(1), &room, Role::Publisher);
        // A late "connected" for the session that is gone.
        reg.set_live(&room, PeerKey(1));
        assert_eq!(reg.table_sizes(), TableSizes::default());
    }

    #[test]
    fn a_watcher_starts_from_the_current_state_and_its_channel_goes_with_the_room() {
        let reg = Arc::new(Registry::default());
        let room: RoomId = "r".into();
        let p: Arc<str> = "p".into();
        reg.claim_publisher(&room, PeerKey(1), &p, 8, true).unwrap();
        reg.add_session(PeerKey(1), entry(&room, Role::Publisher));
        reg.add_session(PeerKey(2), entry(&room, Role::Viewer));
        // Live before anyone watched: no channel yet, but the state is kept.
        reg.set_live(&room, PeerKey(1));
        assert_eq!(reg.table_sizes().live, 0);
        let mut watch = reg.watch_live(&room);
        assert!(watch.borrow_and_update());
        reg.remove_session(PeerKey(1), &room, Role::Publisher);
        assert!(!watch.borrow_and_update(), "the publisher left");
        // The viewer leaves: the room is gone but its watcher still holds the channel.
        reg.remove_session(PeerKey(2), &room, Role::Viewer);
        assert_eq!(reg.table_sizes().live, 1);
        drop(watch);
        assert_eq!(reg.table_sizes(), TableSizes::default());
    }

    #[test]
    fn a_watched_room_keeps_its_channel_while_it_lives() {
        let reg = Arc::new(Registry::default());
        let room: RoomId = "r".into();
        reg.add_session(PeerKey(2), entry(&room, Role::Viewer));
        let first = reg.watch_live(&room);
        drop(first);
        // The room still exists: the channel stays (it goes with the room).
        assert_eq!(reg.table_sizes().live, 1);
        reg.remove_session(PeerKey(2), &room, Role::Viewer);
        assert_eq!(reg.table_sizes().live, 0);
    }

    #[test]
    fn slots_are_capped_in_all_and_per_client_and_freed_by_removal() {
        let reg = Registry::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let room: RoomId = "r".into();
        assert_eq!(reg.reserve_slot(PeerKey(1), a, CAPS), Ok(()));
        assert_eq!(reg.reserve_slot(PeerKey(2), a, CAPS), Ok(()));
        assert_eq!(
            reg.reserve_slot(PeerKey(3), a, CAPS),
            Err(CapReached::Client)
        );
        assert_eq!(reg.reserve_slot(PeerKey(3), b, CAPS), Ok(()));
        assert_eq!(
            reg.reserve_slot(PeerKey(4), b, CAPS),
            Err(CapReached::Server)
        );
        // Reserving again for the same key takes nothing more.
        assert_eq!(reg.reserve_slot(PeerKey(3), b, CAPS), Ok(()));
        // A session ends for any reason: its slot is free; removing twice is harmless.
        reg.remove_session(PeerKey(1), &room, Role::Viewer);
        reg.remove_session(PeerKey(1), &room, Role::Viewer);
        assert_eq!(reg.reserve_slot(PeerKey(4), b, CAPS), Ok(()));
        assert_eq!(
            reg.reserve_slot(PeerKey(5), a, CAPS),
            Err(CapReached::Server)
        );
        for key in [2, 3, 4] {
            reg.release_slot(PeerKey(key));
        }
        assert_eq!(reg.table_sizes(), TableSizes::default());
    }

    #[test]
    fn ended_sessions_answer_once_for_the_right_room_and_role() {
        let mut ended = EndedSessions::new(10, Duration::from_secs(300));
        let now = Instant::now();
        ended.insert(PeerKey(1), "a".into(), Role::Publisher, now);
        ended.insert(PeerKey(2), "a".into(), Role::Viewer, now);
        assert!(ended.take(PeerKey(1), "a", Role::Publisher, now));
        assert!(
            !ended.take(PeerKey(1), "a", Role::Publisher, now),
            "only once"
        );
        assert!(
            !ended.take(PeerKey(2), "b", Role::Viewer, now),
            "wrong room"
        );
        assert!(
            !ended.take(PeerKey(3), "a", Role::Viewer, now),
            "never ended"
        );
    }

    #[test]
    fn ended_sessions_are_bounded_in_count() {
        let mut ended = EndedSessions::new(100, Duration::from_secs(300));
        let now = Instant::now();
        for i in 0..10_000 {
            ended.insert(PeerKey(i), "a".into(), Role::Viewer, now);
            assert!(ended.len() <= 100);
            assert!(ended.by_key.len() <= 100);
        }
        // The newest are remembered, the oldest forgotten.
        assert!(ended.take(PeerKey(9_999), "a", Role::Viewer, now));
        assert!(ended.take(PeerKey(9_900), "a", Role::Viewer, now));
        assert!(!ended.take(PeerKey(9_899), "a", Role::Viewer, now));
        // Taken entries leave the map at once and the queue when they reach its front.
        for i in 10_000..10_100 {
            ended.insert(PeerKey(i), "a".into(), Role::Viewer, now);
        }
        assert_eq!(ended.len(), 100);
        assert_eq!(ended.by_key.len(), 100);
    }

    #[test]
    fn ended_sessions_expire_with_age() {
        let kept_for = Duration::from_secs(300);
        let mut ended = EndedSessions::new(10_000, kept_for);
        let start = Instant::now();
        for i in 0..1_000 {
            ended.insert(PeerKey(i), "a".into(), Role::Viewer, start);
        }
        let later = start + kept_for;
        assert!(!ended.take(PeerKey(5), "a", Role::Viewer, later), "too old");
        // New inserts push the expired ones out, two per insert.
        for i in 1_000..1_500 {
            ended.insert(PeerKey(i), "a".into(), Role::Viewer, later);
        }
        assert_eq!(ended.len(), 500, "the 1000 expired ones left, 2 per insert");
        assert_eq!(ended.by_key.len(), 500);
        assert!(ended.take(PeerKey(1_200), "a", Role::Viewer, later));
    }
}
