//! The room registry: which sessions exist, in which room, on which shard. Read
//! and written by the HTTP layer and by shards when a session ends; never on the
//! packet path. Plain data keyed by global IDs, so it could live in a shared store.

use std::time::Instant;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::peer::{PeerKey, Role};
use crate::router::RoomId;

#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub room: RoomId,
    pub role: Role,
    pub shard: usize,
    pub etag: String,
    pub created: Instant,
}

#[derive(Debug, Default, Clone)]
pub struct RoomEntry {
    pub publisher: Option<PeerKey>,
    /// The video codec the publisher offered first (what it sends).
    pub publisher_video: Option<str0m::format::Codec>,
    pub viewers: usize,
}

#[derive(Debug, Default)]
pub struct Registry {
    rooms: DashMap<RoomId, RoomEntry>,
    sessions: DashMap<PeerKey, SessionEntry>,
    /// Whether each room has a publisher sending (connected), watched by viewers'
    /// event streams. Kept apart from `rooms` so a watcher keeps its channel
    /// while the room empties and fills again.
    live: DashMap<RoomId, tokio::sync::watch::Sender<bool>>,
    /// Sessions the server ended (closed by the client, reaped) that the client
    /// has not DELETEd yet: OBS closes the connection first, then DELETEs, and
    /// expects 200.
    ended: DashMap<PeerKey, (RoomId, Role, Instant)>,
}

/// How long an ended session's resource still answers DELETE with 200.
const ENDED_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(300);

impl Registry {
    /// Claims `room`'s publisher seat for `key`; `Err` with the holder if taken.
    pub fn claim_publisher(&self, room: &RoomId, key: PeerKey) -> Result<(), PeerKey> {
        let mut entry = self.rooms.entry(room.clone()).or_default();
        match entry.publisher {
            Some(holder) => Err(holder),
            None => {
                entry.publisher = Some(key);
                Ok(())
            }
        }
    }

    pub fn set_publisher_video(&self, room: &RoomId, codec: Option<str0m::format::Codec>) {
        if let Some(mut r) = self.rooms.get_mut(room) {
            r.publisher_video = codec;
        }
    }

    pub fn add_session(&self, key: PeerKey, entry: SessionEntry) {
        if entry.role == Role::Viewer {
            self.rooms.entry(entry.room.clone()).or_default().viewers += 1;
        }
        self.sessions.insert(key, entry);
    }

    /// Forgets a session (and frees the publisher seat it held). Also used to
    /// release a claimed seat whose session never started.
    pub fn remove_session(&self, key: PeerKey, room: &RoomId, role: Role) -> Option<SessionEntry> {
        let removed = self.sessions.remove(&key).map(|(_, e)| e);
        if let Entry::Occupied(mut entry) = self.rooms.entry(room.clone()) {
            let r = entry.get_mut();
            match role {
                Role::Publisher if r.publisher == Some(key) => {
                    r.publisher = None;
                    r.publisher_video = None;
                }
                Role::Viewer if removed.is_some() => r.viewers = r.viewers.saturating_sub(1),
                _ => {}
            }
            if r.publisher.is_none() && r.viewers == 0 {
                entry.remove();
                // Nobody watches an empty room's events any more.
                self.live.remove_if(room, |_, tx| tx.receiver_count() == 0);
            }
        }
        removed
    }

    /// A publisher connected to (`true`) or left (`false`) `room`.
    pub fn set_live(&self, room: &RoomId, live: bool) {
        let sender = self
            .live
            .entry(room.clone())
            .or_insert_with(|| tokio::sync::watch::channel(false).0);
        sender.send_replace(live);
    }

    /// Follows whether `room` has a live publisher.
    pub fn watch_live(&self, room: &RoomId) -> tokio::sync::watch::Receiver<bool> {
        self.live
            .entry(room.clone())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .subscribe()
    }

    /// Remembers a session the server ended on its own.
    pub fn remember_ended(&self, key: PeerKey, room: &RoomId, role: Role) {
        if self.ended.len() > 1024 {
            let now = Instant::now();
            self.ended
                .retain(|_, (_, _, at)| now.saturating_duration_since(*at) < ENDED_KEPT_FOR);
        }
        self.ended.insert(key, (room.clone(), role, Instant::now()));
    }

    /// The client DELETEs a session the server already ended: true (once) if it
    /// was ours, in that room and of that role, and recent.
    pub fn take_ended(&self, key: PeerKey, room: &str, role: Role) -> bool {
        match self.ended.remove(&key) {
            Some((_, (r, kind, at))) => {
                &*r == room && kind == role && at.elapsed() < ENDED_KEPT_FOR
            }
            None => false,
        }
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
        }
    }

    #[test]
    fn one_publisher_per_room_and_the_seat_frees_on_removal() {
        let reg = Registry::default();
        let room: RoomId = "a".into();
        assert!(reg.claim_publisher(&room, PeerKey(1)).is_ok());
        assert_eq!(reg.claim_publisher(&room, PeerKey(2)), Err(PeerKey(1)));
        reg.add_session(PeerKey(1), entry(&room, Role::Publisher));
        reg.remove_session(PeerKey(1), &room, Role::Publisher);
        assert!(reg.claim_publisher(&room, PeerKey(2)).is_ok());
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
}
