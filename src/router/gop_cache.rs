//! The keyframe (GOP) cache: per publisher video stream, the packets since its last
//! keyframe, so a viewer who joins starts decoding at once instead of waiting for
//! the publisher's next keyframe (OBS ignores PLI and sends one every ~8 s).
//!
//! It holds shared handles (`Arc`), never copies of payloads, and is bounded in
//! bytes: a group of pictures larger than the bound is not cached (the viewer then
//! waits for a keyframe as without a cache). Only the publisher's shard keeps one.

use std::collections::VecDeque;
use std::sync::Arc;

use super::MediaPacket;

#[derive(Debug)]
pub struct GopCache {
    max_bytes: usize,
    bytes: usize,
    /// Starts with a keyframe's first packet when non-empty.
    packets: VecDeque<Arc<MediaPacket>>,
    /// The current group outgrew `max_bytes`: wait for the next keyframe.
    overflowed: bool,
}

impl GopCache {
    pub fn new(max_bytes: usize) -> Self {
        GopCache {
            max_bytes,
            bytes: 0,
            packets: VecDeque::new(),
            overflowed: false,
        }
    }

    /// Records a packet of the stream. A keyframe starts a new group.
    pub fn push(&mut self, packet: &Arc<MediaPacket>) {
        if self.max_bytes == 0 {
            return;
        }
        if packet.keyframe {
            self.clear();
        } else if self.packets.is_empty() || self.overflowed {
            return; // no keyframe seen yet for this group
        }
        let size = packet.payload.len();
        if self.bytes + size > self.max_bytes {
            self.clear();
            self.overflowed = true;
            return;
        }
        self.bytes += size;
        self.packets.push_back(Arc::clone(packet));
    }

    /// When its keyframe arrived (`None` while empty).
    pub fn keyframe_arrival(&self) -> Option<std::time::Instant> {
        self.packets.front().map(|p| p.arrival)
    }

    /// The packets a new viewer needs, keyframe first, in arrival order.
    pub fn snapshot(&self) -> Vec<Arc<MediaPacket>> {
        self.packets.iter().cloned().collect()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.overflowed = false;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;
    use str0m::format::{Codec, CodecSpec, FormatParams};
    use str0m::media::{Frequency, MediaKind};

    pub(crate) fn packet(seq: u64, keyframe: bool, size: usize) -> Arc<MediaPacket> {
        Arc::new(MediaPacket {
            room: "r".into(),
            publisher: crate::ids::PeerKey(1),
            participant: "publisher".into(),
            kind: MediaKind::Video,
            source: 1,
            track: 1,
            layer: 0,
            layers: Arc::new(crate::router::layers::TrackLayers::new(&[])),
            codec: CodecSpec {
                codec: Codec::Vp8,
                clock_rate: Frequency::NINETY_KHZ,
                channels: None,
                format: FormatParams::default(),
            },
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            keyframe,
            vp8: None,
            temporal: None,
            arrival: Instant::now(),
            wallclock: Instant::now(),
            extensions: Default::default(),
            payload: vec![0u8; size].into(),
        })
    }

    #[test]
    fn keeps_packets_from_the_last_keyframe() {
        let mut cache = GopCache::new(10_000);
        cache.push(&packet(1, false, 100)); // before any keyframe: not cached
        assert!(cache.is_empty());
        cache.push(&packet(2, true, 100));
        cache.push(&packet(3, false, 100));
        cache.push(&packet(4, true, 100));
        cache.push(&packet(5, false, 100));
        let seqs: Vec<u64> = cache.snapshot().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(cache.bytes(), 200);
    }

    #[test]
    fn a_group_larger_than_the_bound_is_dropped_until_the_next_keyframe() {
        let mut cache = GopCache::new(250);
        cache.push(&packet(1, true, 100));
        cache.push(&packet(2, false, 100));
        cache.push(&packet(3, false, 100)); // 300 > 250
        assert!(cache.is_empty());
        cache.push(&packet(4, false, 10));
        assert!(cache.is_empty(), "no partial group without its keyframe");
        cache.push(&packet(5, true, 100));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn zero_bytes_disables_it() {
        let mut cache = GopCache::new(0);
        cache.push(&packet(1, true, 10));
        assert!(cache.is_empty());
    }

    #[test]
    fn the_snapshot_shares_payloads() {
        let mut cache = GopCache::new(1000);
        let p = packet(1, true, 10);
        cache.push(&p);
        assert!(Arc::ptr_eq(&cache.snapshot()[0], &p));
    }
}
