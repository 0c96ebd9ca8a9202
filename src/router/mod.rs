//! The router: who in a room receives a publisher's packet, on this shard and on
//! the others. It owns room membership as seen by one shard; it never touches an
//! `Rtc` (the shard applies its decisions), so it is plain data and unit-tested.
//!
//! The packet path through it: a publisher's [`MediaPacket`] is built once (one
//! allocation, payload shared), handed to every local viewer of the room, and sent
//! as one `Arc` to every other shard that has viewers of the room.

pub mod bitrate;
pub mod clock;
pub mod extensions;
pub mod forward;
pub mod gop_cache;
pub mod keyframe;
pub mod layer_select;
pub mod layer_switch;
pub mod layers;
pub mod payload_type;
pub mod probe;
pub mod resolution;
pub mod simulcast;
pub mod slots;
pub mod sources;
pub mod temporal;
pub mod vp8;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use str0m::format::CodecSpec;
use str0m::media::MediaKind;

use crate::ids::PeerKey;
use gop_cache::GopCache;

pub use crate::ids::RoomId;

/// One packet from a publisher, shared by every subscriber that receives it.
#[derive(Debug)]
pub struct MediaPacket {
    pub room: RoomId,
    /// The publishing session: where keyframe requests for it go.
    pub publisher: PeerKey,
    /// The publishing participant's identity: its own viewing sessions skip it.
    pub participant: Arc<str>,
    pub kind: MediaKind,
    /// The publisher stream (one SSRC) it belongs to; unique in this process.
    pub source: u64,
    /// The publisher track (m-line) it belongs to; its simulcast layers share it.
    pub track: u64,
    /// Its simulcast layer: the index of its rid in the track (0 without simulcast).
    pub layer: u8,
    /// The track's layers as they stand (shared by every packet of the track), from
    /// which each viewer chooses its layer.
    pub layers: Arc<layers::TrackLayers>,
    /// The codec and its parameters, as the publisher negotiated them.
    pub codec: CodecSpec,
    /// Extended sequence number from the publisher.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub keyframe: bool,
    /// The VP8 payload descriptor, parsed once here for every viewer's rewrite.
    pub vp8: Option<str0m::rtp::Vp8Descriptor>,
    /// Its VP8 temporal layer, where the publisher layers them.
    pub temporal: Option<vp8::Temporal>,
    pub arrival: Instant,
    /// When it was captured, by the publisher's sender reports, on the server's clock
    /// (see [`clock`]): what viewers' sender reports are built from, for lip sync.
    pub wallclock: Instant,
    /// The header extensions that describe the media, as the publisher sent them.
    pub extensions: extensions::ForwardedExtensions,
    pub payload: Arc<[u8]>,
}

/// Room membership on one shard.
#[derive(Debug, Default)]
pub struct LocalRoom {
    /// Viewers of this room whose `Rtc` lives on this shard.
    pub viewers: Vec<PeerKey>,
    /// The room's publishers whose `Rtc` lives on this shard.
    pub local_publishers: Vec<PeerKey>,
    /// The room's publishers as shards announced them, oldest first, with the
    /// shard each lives on.
    publishers: Vec<(PeerKey, usize)>,
    /// Number of the room's viewers on each shard (index = shard), this one included.
    viewers_per_shard: Vec<u32>,
    /// Keyframe caches of the local publishers' video layers.
    gops: Vec<LayerCache>,
    /// The room's tracks as this shard sees them: mute, loudness, speakers.
    pub sources: sources::RoomSources,
}

/// The keyframe cache of one layer of a track, filled from its current stream.
#[derive(Debug)]
struct LayerCache {
    publisher: PeerKey,
    participant: Arc<str>,
    track: u64,
    layer: u8,
    source: u64,
    layers: Arc<layers::TrackLayers>,
    gop: GopCache,
}

impl LocalRoom {
    /// The shard publisher `key` lives on.
    pub fn shard_of(&self, key: PeerKey) -> Option<usize> {
        self.publishers
            .iter()
            .find(|(p, _)| *p == key)
            .map(|(_, shard)| *shard)
    }

    /// The publisher of `track` (a track this shard has seen) and its shard.
    pub fn track_publisher(&self, track: u64) -> Option<(PeerKey, usize)> {
        let key = self.sources.publisher_of(track)?;
        Some((key, self.shard_of(key)?))
    }

    /// The room's publishers, oldest first, with their shards.
    pub fn publishers(&self) -> &[(PeerKey, usize)] {
        &self.publishers
    }
}

#[derive(Debug)]
pub struct Router {
    shard: usize,
    shard_count: usize,
    rooms: HashMap<RoomId, LocalRoom>,
}

impl Router {
    pub fn new(shard: usize, shard_count: usize) -> Self {
        Router {
            shard,
            shard_count,
            rooms: HashMap::new(),
        }
    }

    pub fn room(&self, room: &str) -> Option<&LocalRoom> {
        self.rooms.get(room)
    }

    pub fn room_mut(&mut self, room: &str) -> Option<&mut LocalRoom> {
        self.rooms.get_mut(room)
    }

    /// Every room this shard knows, for the periodic look at their sources.
    pub fn rooms_mut(&mut self) -> impl Iterator<Item = &mut LocalRoom> {
        self.rooms.values_mut()
    }

    fn entry(&mut self, room: &RoomId) -> &mut LocalRoom {
        let shard_count = self.shard_count;
        self.rooms.entry(room.clone()).or_insert_with(|| LocalRoom {
            viewers_per_shard: vec![0; shard_count],
            ..LocalRoom::default()
        })
    }

    pub fn add_local_viewer(&mut self, room: &RoomId, peer: PeerKey) {
        self.entry(room).viewers.push(peer);
    }

    pub fn remove_local_viewer(&mut self, room: &RoomId, peer: PeerKey) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.viewers.retain(|p| *p != peer);
        }
        self.forget_if_empty(room);
    }

    /// `peer`, on this shard, now publishes to `room`.
    pub fn add_local_publisher(&mut self, room: &RoomId, peer: PeerKey) {
        let r = self.entry(room);
        if !r.local_publishers.contains(&peer) {
            r.local_publishers.push(peer);
        }
        self.publisher_at(room, peer, self.shard);
    }

    /// `room`'s publisher `peer` lives on `shard` (told by every shard that gets one).
    pub fn publisher_at(&mut self, room: &RoomId, peer: PeerKey, shard: usize) {
        let r = self.entry(room);
        r.publishers.retain(|(p, _)| *p != peer);
        r.publishers.push((peer, shard));
        r.sources.publisher_joined(peer);
    }

    /// Publisher `peer` left `room`: its tracks, caches and routing go. Returns
    /// whether any of its tracks were known here (the room's viewers must then
    /// be given other sources).
    pub fn publisher_left(&mut self, room: &RoomId, peer: PeerKey) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        r.publishers.retain(|(p, _)| *p != peer);
        r.local_publishers.retain(|p| *p != peer);
        r.gops.retain(|c| c.publisher != peer);
        let had_tracks = r.sources.remove_publisher(peer);
        self.forget_if_empty(room);
        had_tracks
    }

    /// Keeps a local publisher's video packet for viewers who join later, or who
    /// switch to its layer. A layer's new stream (a new SSRC) replaces its cache;
    /// the caches of layers that stopped are freed.
    pub fn cache(&mut self, packet: &Arc<MediaPacket>, max_bytes: usize, now: Instant) {
        if packet.kind != MediaKind::Video || max_bytes == 0 {
            return;
        }
        let Some(r) = self.rooms.get_mut(&packet.room) else {
            return;
        };
        r.gops.retain(|c| {
            (c.track == packet.track && c.layer == packet.layer)
                || c.layers.is_available(c.layer, now)
        });
        match r
            .gops
            .iter_mut()
            .find(|c| c.track == packet.track && c.layer == packet.layer)
        {
            Some(c) if c.source == packet.source => c.gop.push(packet),
            Some(c) => {
                c.source = packet.source;
                c.gop = GopCache::new(max_bytes);
                c.gop.push(packet);
            }
            None => {
                let mut gop = GopCache::new(max_bytes);
                gop.push(packet);
                r.gops.push(LayerCache {
                    publisher: packet.publisher,
                    participant: Arc::clone(&packet.participant),
                    track: packet.track,
                    layer: packet.layer,
                    source: packet.source,
                    layers: Arc::clone(&packet.layers),
                    gop,
                });
            }
        }
    }

    /// What a new viewer of `room` needs to start at once: the cached group of
    /// `track` (without one: of the first cached track not of the viewer's own
    /// participant `viewer`), in the best layer that fits `estimate_bps` (any
    /// layer without an estimate), or the best cached layer if none fits; empty
    /// if nothing is cached.
    pub fn gop_snapshot(
        &self,
        room: &str,
        track: Option<u64>,
        viewer: &str,
        estimate_bps: Option<u64>,
        now: Instant,
    ) -> Vec<Arc<MediaPacket>> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let cached: Vec<&LayerCache> = r
            .gops
            .iter()
            .filter(|c| !c.gop.is_empty() && &*c.participant != viewer)
            .filter(|c| track.is_none_or(|t| c.track == t))
            .collect();
        let Some(first) = cached.first() else {
            return Vec::new();
        };
        let views = first.layers.views(now);
        let order = layer_select::quality_order(&views);
        let ranked = |c: &LayerCache| {
            order
                .iter()
                .position(|v| v.index == c.layer)
                .unwrap_or(usize::MAX)
        };
        let fits = |c: &LayerCache| {
            estimate_bps.is_none_or(|e| {
                views
                    .iter()
                    .find(|v| v.index == c.layer)
                    .is_some_and(|v| v.bitrate_bps <= e)
            })
        };
        let same_track = cached.iter().filter(|c| c.track == first.track);
        same_track
            .clone()
            .filter(|c| fits(c))
            .min_by_key(|c| ranked(c))
            .or_else(|| same_track.min_by_key(|c| ranked(c)))
            .map(|c| c.gop.snapshot())
            .unwrap_or_default()
    }

    /// The cached group of one layer, if its keyframe arrived within `max_age`
    /// of `now`: a layer switch can start on it at once.
    pub fn fresh_layer_snapshot(
        &self,
        room: &str,
        (track, layer): (u64, u8),
        now: Instant,
        max_age: std::time::Duration,
    ) -> Option<Vec<Arc<MediaPacket>>> {
        let cache = self
            .rooms
            .get(room)?
            .gops
            .iter()
            .find(|c| c.track == track && c.layer == layer)?;
        let keyframe = cache.gop.keyframe_arrival()?;
        (now.saturating_duration_since(keyframe) <= max_age).then(|| cache.gop.snapshot())
    }

    /// A viewer of `room` joined (`+1`) or left (`-1`) on `shard`. Every shard
    /// hears of every change, so the publisher's shard knows where to send.
    pub fn count_viewer(&mut self, room: &RoomId, shard: usize, joined: bool) {
        let r = self.entry(room);
        if let Some(count) = r.viewers_per_shard.get_mut(shard) {
            *count = if joined {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
        }
        self.forget_if_empty(room);
    }

    /// Other shards that have viewers of `room`: each gets one `Arc` per packet.
    pub fn remote_shards<'a>(&'a self, room: &str) -> impl Iterator<Item = usize> + 'a {
        let me = self.shard;
        self.rooms.get(room).into_iter().flat_map(move |r| {
            r.viewers_per_shard
                .iter()
                .enumerate()
                .filter(move |(shard, count)| *shard != me && **count > 0)
                .map(|(shard, _)| shard)
        })
    }

    fn forget_if_empty(&mut self, room: &RoomId) {
        let empty = self.rooms.get(room).is_some_and(|r| {
            r.viewers.is_empty()
                && r.local_publishers.is_empty()
                && r.publishers.is_empty()
                && r.viewers_per_shard.iter().all(|c| *c == 0)
        });
        if empty {
            self.rooms.remove(room);
        }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

/// A small deterministic generator (xorshift32) for the property tests of the
/// router's pure logic: a failure replays from its seed.
#[cfg(test)]
pub(crate) fn test_random(seed: u32) -> impl FnMut() -> u32 {
    let mut state = seed.max(1);
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_cross_only_to_shards_with_viewers() {
        let room: RoomId = "r".into();
        let mut router = Router::new(0, 3);
        router.add_local_publisher(&room, PeerKey(1));
        assert_eq!(router.remote_shards("r").count(), 0);
        router.count_viewer(&room, 2, true);
        router.count_viewer(&room, 0, true);
        assert_eq!(router.remote_shards("r").collect::<Vec<_>>(), vec![2]);
        router.count_viewer(&room, 2, false);
        assert_eq!(router.remote_shards("r").count(), 0);
    }

    #[test]
    fn a_remote_publisher_keeps_the_room_known() {
        let room: RoomId = "r".into();
        let mut router = Router::new(1, 2);
        router.publisher_at(&room, PeerKey(5), 0);
        assert_eq!(
            router.room("r").and_then(|r| r.shard_of(PeerKey(5))),
            Some(0)
        );
        router.publisher_left(&room, PeerKey(5));
        assert_eq!(router.room_count(), 0);
    }

    #[test]
    fn publishers_come_and_go_independently() {
        let room: RoomId = "r".into();
        let mut router = Router::new(1, 2);
        router.publisher_at(&room, PeerKey(9), 0);
        router.add_local_publisher(&room, PeerKey(7));
        router.publisher_at(&room, PeerKey(3), 0);
        router.publisher_left(&room, PeerKey(9));
        let r = router.room("r").expect("room still known");
        assert_eq!(r.local_publishers, vec![PeerKey(7)]);
        assert_eq!(r.publishers(), &[(PeerKey(7), 1), (PeerKey(3), 0)]);
        // A late, repeated leave changes nothing more.
        router.publisher_left(&room, PeerKey(9));
        assert_eq!(router.room("r").map(|r| r.publishers().len()), Some(2));
    }

    #[test]
    fn an_empty_room_is_forgotten() {
        let room: RoomId = "r".into();
        let mut router = Router::new(0, 2);
        router.add_local_viewer(&room, PeerKey(7));
        router.count_viewer(&room, 0, true);
        assert_eq!(
            router.room("r").map(|r| r.viewers.clone()),
            Some(vec![PeerKey(7)])
        );
        router.remove_local_viewer(&room, PeerKey(7));
        router.count_viewer(&room, 0, false);
        assert_eq!(router.room_count(), 0);
    }
}
