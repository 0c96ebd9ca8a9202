//! A published video track's simulcast layers as every shard sees them: whether
//! each runs, its bitrate and its picture size. Written only by the publisher's
//! shard as packets arrive, read by any shard whose viewers choose a layer, through
//! relaxed atomics: no lock, and a reader at worst sees a value one packet old.
//!
//! A layer is one rid of the m-line (one stream, if the track is not simulcast); a
//! new SSRC for the same rid is the same layer. A layer with no packet for
//! [`STOPPED_AFTER`] is not available: viewers on it move to one that runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::layer_select::{quality_order, LayerView, Preference};
use super::resolution::Resolution;

/// A layer with no packet for this long has stopped.
pub const STOPPED_AFTER: Duration = Duration::from_millis(1000);

/// The most layers a track has (rids beyond it are not received as layers).
pub const MAX_LAYERS: usize = 4;

#[derive(Debug)]
pub struct TrackLayers {
    layers: Box<[SharedLayer]>,
}

#[derive(Debug)]
struct SharedLayer {
    rid: Option<Box<str>>,
    hint_rank: u8,
    /// Milliseconds since [`epoch`] of the last packet, plus one (0: none yet).
    last_packet: AtomicU64,
    bitrate_bps: AtomicU64,
    /// Width << 32 | height from the last keyframe that stated one (0: unknown).
    resolution: AtomicU64,
    /// The bitrate of its frames of temporal layer `t` and below (VP8 temporal
    /// layering; 0: not measured).
    up_to_temporal_bps: [AtomicU64; 3],
}

/// A layer's state at one moment, for events and the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerState {
    pub index: u8,
    /// Its place by quality, counting up from the lowest (as SVC spatial ids do).
    pub spatial_id: u8,
    pub rid: Option<String>,
    pub available: bool,
    pub bitrate_bps: u64,
    pub resolution: Option<Resolution>,
}

/// What one viewer gets of a track: the layers, the one sent, the one chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerReport {
    /// The viewer's m-line the track is shown on.
    pub mid: String,
    pub layers: Vec<LayerState>,
    /// The layer forwarded now (index), and the one chosen (a switch waits for its
    /// keyframe while they differ).
    pub sending: Option<u8>,
    pub target: Option<u8>,
    pub preference: Preference,
    /// The highest temporal layer forwarded, when not every one is.
    pub sending_temporal: Option<u8>,
    /// The temporal cap the viewer asked for.
    pub max_temporal: Option<u8>,
    pub estimate_bps: Option<u64>,
}

/// What the WHEP layer extension asks for, by the draft's field names: a layer to
/// pin (by rid, `encodingId`, or by spatial id, 0 the lowest) or a cap (the same,
/// as a maximum); nothing at all returns to automatic choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerRequest {
    pub encoding_id: Option<String>,
    pub spatial_layer_id: Option<u8>,
    pub max_encoding_id: Option<String>,
    pub max_spatial_layer_id: Option<u8>,
    /// The highest VP8 temporal layer to forward (`temporalLayerId` or
    /// `maxTemporalLayerId`: frames of that layer and below).
    pub max_temporal_layer_id: Option<u8>,
}

impl LayerRequest {
    /// The preference it stands for on `layers`, or why it cannot be met.
    pub fn resolve(&self, layers: &TrackLayers, now: Instant) -> Result<Preference, String> {
        let pin = self.one_layer(
            layers,
            now,
            self.encoding_id.as_deref(),
            self.spatial_layer_id,
            "encodingId",
            "spatialLayerId",
        )?;
        let cap = self.one_layer(
            layers,
            now,
            self.max_encoding_id.as_deref(),
            self.max_spatial_layer_id,
            "maxEncodingId",
            "maxSpatialLayerId",
        )?;
        match (pin, cap) {
            (Some(_), Some(_)) => Err("give a layer to pin or a maximum, not both".into()),
            (Some(index), None) => Ok(Preference::Pin(index)),
            (None, Some(index)) => Ok(Preference::Cap(index)),
            (None, None) => Ok(Preference::Auto),
        }
    }

    fn one_layer(
        &self,
        layers: &TrackLayers,
        now: Instant,
        rid: Option<&str>,
        spatial: Option<u8>,
        rid_field: &str,
        spatial_field: &str,
    ) -> Result<Option<u8>, String> {
        match (rid, spatial) {
            (Some(_), Some(_)) => Err(format!("give {rid_field} or {spatial_field}, not both")),
            (Some(rid), None) => layers.index_of(rid).map(Some).ok_or_else(|| {
                let rids: Vec<&str> = layers
                    .layers
                    .iter()
                    .filter_map(|l| l.rid.as_deref())
                    .collect();
                if rids.is_empty() {
                    format!("{rid_field} {rid:?}: the track is not simulcast")
                } else {
                    format!(
                        "{rid_field} {rid:?} is not one of the track's: {}",
                        rids.join(", ")
                    )
                }
            }),
            (None, Some(spatial)) => {
                // Spatial ids count up from the lowest layer, as in SVC.
                let views = layers.views(now);
                let order = quality_order(&views);
                order
                    .iter()
                    .rev()
                    .nth(usize::from(spatial))
                    .map(|l| Some(l.index))
                    .ok_or_else(|| {
                        format!(
                            "{spatial_field} {spatial}: the track has {} layer(s), 0 to {}",
                            order.len(),
                            order.len().saturating_sub(1)
                        )
                    })
            }
            (None, None) => Ok(None),
        }
    }
}

impl TrackLayers {
    /// The layers of a track with these rids and convention ranks, in offer order
    /// (one unnamed layer when `rids` is empty).
    pub fn new(rids: &[(String, u8)]) -> Self {
        let layer = |rid: Option<Box<str>>, hint_rank: u8| SharedLayer {
            rid,
            hint_rank,
            last_packet: AtomicU64::new(0),
            bitrate_bps: AtomicU64::new(0),
            resolution: AtomicU64::new(0),
            up_to_temporal_bps: Default::default(),
        };
        let layers: Box<[SharedLayer]> = if rids.is_empty() {
            vec![layer(None, 0)].into()
        } else {
            rids.iter()
                .take(MAX_LAYERS)
                .map(|(rid, rank)| layer(Some(rid.as_str().into()), *rank))
                .collect()
        };
        TrackLayers { layers }
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Whether the track has more than one layer to choose from.
    pub fn is_simulcast(&self) -> bool {
        self.layers.len() > 1
    }

    /// The layer index of `rid`.
    pub fn index_of(&self, rid: &str) -> Option<u8> {
        self.layers
            .iter()
            .position(|l| l.rid.as_deref() == Some(rid))
            .map(|i| i as u8)
    }

    /// The publisher's shard: a packet of layer `index` arrived at `now`, the layer
    /// now measures `bitrate_bps`, and a keyframe stated `resolution`.
    pub fn record(
        &self,
        index: u8,
        now: Instant,
        bitrate_bps: u64,
        resolution: Option<Resolution>,
    ) {
        let Some(layer) = self.layers.get(usize::from(index)) else {
            return;
        };
        let at = millis(now) + 1;
        layer.last_packet.store(at, Ordering::Relaxed);
        layer.bitrate_bps.store(bitrate_bps, Ordering::Relaxed);
        if let Some(r) = resolution {
            let packed = (u64::from(r.width) << 32) | u64::from(r.height);
            layer.resolution.store(packed, Ordering::Relaxed);
        }
    }

    /// Layer `index`'s bitrate up to each temporal layer (see
    /// [`TrackLayers::up_to_temporal_bps`]).
    pub fn record_temporal(&self, index: u8, up_to_bps: [u64; 3]) {
        if let Some(layer) = self.layers.get(usize::from(index)) {
            for (slot, bps) in layer.up_to_temporal_bps.iter().zip(up_to_bps) {
                slot.store(bps, Ordering::Relaxed);
            }
        }
    }

    /// Layer `index`'s measured bitrate (0 until measured).
    pub fn bitrate_bps(&self, index: u8) -> u64 {
        self.layers
            .get(usize::from(index))
            .map_or(0, |l| l.bitrate_bps.load(Ordering::Relaxed))
    }

    /// Layer `index`'s bitrate with frames of temporal layer 0, 0-1, and 0-2
    /// (zeros when the layer has no temporal layering).
    pub fn up_to_temporal_bps(&self, index: u8) -> [u64; 3] {
        self.layers
            .get(usize::from(index))
            .map(|l| {
                l.up_to_temporal_bps
                    .each_ref()
                    .map(|b| b.load(Ordering::Relaxed))
            })
            .unwrap_or_default()
    }

    /// Whether layer `index` had a packet within [`STOPPED_AFTER`] of `now`.
    pub fn is_available(&self, index: u8, now: Instant) -> bool {
        self.layers
            .get(usize::from(index))
            .is_some_and(|l| running(l, now))
    }

    /// Every layer as a selector sees it at `now`.
    pub fn views(&self, now: Instant) -> Vec<LayerView> {
        self.layers
            .iter()
            .enumerate()
            .map(|(index, l)| LayerView {
                index: index as u8,
                available: running(l, now),
                bitrate_bps: if running(l, now) {
                    l.bitrate_bps.load(Ordering::Relaxed)
                } else {
                    0
                },
                resolution: resolution(l),
                hint_rank: l.hint_rank,
            })
            .collect()
    }

    /// Every layer's state at `now`, for events and the API.
    pub fn states(&self, now: Instant) -> Vec<LayerState> {
        let views = self.views(now);
        let order = quality_order(&views);
        // Spatial ids count up from the lowest layer.
        let spatial_id = |index: u8| {
            order
                .iter()
                .rev()
                .position(|v| v.index == index)
                .unwrap_or(0) as u8
        };
        views
            .iter()
            .zip(self.layers.iter())
            .map(|(v, l)| LayerState {
                index: v.index,
                spatial_id: spatial_id(v.index),
                rid: l.rid.as_deref().map(str::to_string),
                available: v.available,
                bitrate_bps: v.bitrate_bps,
                resolution: v.resolution,
            })
            .collect()
    }
}

fn running(layer: &SharedLayer, now: Instant) -> bool {
    match layer.last_packet.load(Ordering::Relaxed).checked_sub(1) {
        Some(at) => millis(now).saturating_sub(at) < STOPPED_AFTER.as_millis() as u64,
        None => false,
    }
}

fn resolution(layer: &SharedLayer) -> Option<Resolution> {
    let packed = layer.resolution.load(Ordering::Relaxed);
    let (width, height) = ((packed >> 32) as u32, packed as u32);
    (width > 0 && height > 0).then_some(Resolution { width, height })
}

/// The instant every stored time counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        // An hour back, so test instants a little before "now" still count.
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// `now` in milliseconds since [`epoch`] (0 for anything before it).
fn millis(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids() -> Vec<(String, u8)> {
        vec![("q".into(), 2), ("h".into(), 1), ("f".into(), 0)]
    }

    #[test]
    fn a_layer_runs_while_packets_come_and_stops_a_second_after_the_last() {
        let layers = TrackLayers::new(&rids());
        let t0 = Instant::now();
        assert!(!layers.is_available(2, t0), "no packet yet");
        layers.record(2, t0, 1_500_000, None);
        assert!(layers.is_available(2, t0 + Duration::from_millis(999)));
        assert!(!layers.is_available(2, t0 + Duration::from_millis(1001)));
        let views = layers.views(t0 + Duration::from_millis(1001));
        assert_eq!(views[2].bitrate_bps, 0, "a stopped layer carries nothing");
        layers.record(2, t0 + Duration::from_millis(1500), 800_000, None);
        assert!(layers.is_available(2, t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn sizes_are_kept_per_layer() {
        let layers = TrackLayers::new(&rids());
        let t0 = Instant::now();
        let size = Resolution {
            width: 1280,
            height: 720,
        };
        layers.record(2, t0, 1_000_000, Some(size));
        layers.record(2, t0 + Duration::from_millis(40), 1_000_000, None);
        let views = layers.views(t0 + Duration::from_millis(40));
        assert_eq!(views[2].resolution, Some(size));
        assert_eq!(views[0].resolution, None);
        assert_eq!(views[2].hint_rank, 0);
        assert_eq!(layers.index_of("h"), Some(1));
        assert_eq!(layers.index_of("x"), None);
        // Out of range indices are ignored.
        layers.record(9, t0, 1, Some(size));
        assert!(!layers.is_available(9, t0));
    }

    #[test]
    fn layer_requests_resolve_by_rid_or_spatial_id_and_bad_ones_say_why() {
        let layers = TrackLayers::new(&rids());
        let t0 = Instant::now();
        for (index, kbps) in [(0u8, 150u64), (1, 500), (2, 1500)] {
            layers.record(index, t0, kbps * 1000, None);
        }
        let request = |f: fn(&mut LayerRequest)| {
            let mut r = LayerRequest::default();
            f(&mut r);
            r.resolve(&layers, t0)
        };
        assert_eq!(request(|_| {}), Ok(Preference::Auto));
        assert_eq!(
            request(|r| r.encoding_id = Some("h".into())),
            Ok(Preference::Pin(1))
        );
        // Spatial 0 is the lowest layer: q, offered first here.
        assert_eq!(
            request(|r| r.spatial_layer_id = Some(0)),
            Ok(Preference::Pin(0))
        );
        assert_eq!(
            request(|r| r.spatial_layer_id = Some(2)),
            Ok(Preference::Pin(2))
        );
        assert_eq!(
            request(|r| r.max_encoding_id = Some("h".into())),
            Ok(Preference::Cap(1))
        );
        let unknown = request(|r| r.encoding_id = Some("x".into()));
        assert!(unknown.is_err_and(|e| e.contains("q, h, f")));
        assert!(request(|r| r.spatial_layer_id = Some(3)).is_err());
        assert!(request(|r| {
            r.encoding_id = Some("h".into());
            r.max_encoding_id = Some("f".into());
        })
        .is_err());
        assert!(request(|r| {
            r.encoding_id = Some("h".into());
            r.spatial_layer_id = Some(1);
        })
        .is_err());
        let single = TrackLayers::new(&[]);
        let r = LayerRequest {
            encoding_id: Some("h".into()),
            ..LayerRequest::default()
        };
        assert!(r
            .resolve(&single, t0)
            .is_err_and(|e| e.contains("not simulcast")));
    }

    #[test]
    fn a_track_without_rids_is_one_layer_and_rids_beyond_the_limit_are_dropped() {
        assert_eq!(TrackLayers::new(&[]).len(), 1);
        assert!(!TrackLayers::new(&[]).is_simulcast());
        let many: Vec<(String, u8)> = (0..9).map(|i| (i.to_string(), i)).collect();
        assert_eq!(TrackLayers::new(&many).len(), MAX_LAYERS);
    }
}
