//! VP8 picture ID and TL0PICIDX continuity across source switches.
//!
//! A VP8 decoder tracks the picture ID; when a viewer's slot moves to another
//! publisher (or layer), the new source's IDs are shifted so they continue from the
//! last ID the viewer saw. The rewrite is a `Vp8Patch` that str0m applies while it
//! serialises the packet, so the shared payload is never copied. A viewer that
//! never switched needs no patch at all.

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

#[derive(Debug, Default, Clone)]
pub struct Vp8Rewriter {
    source: Option<u64>,
    pid_offset: u32,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    /// The last pictures' incoming and outgoing IDs, newest at `recent_next - 1`:
    /// a late packet of one of them keeps its picture's ID although frames
    /// skipped since have moved the offset.
    recent: [(u16, u16); RECENT_PICTURES],
    recent_len: usize,
    recent_next: usize,
    /// The last picture skipped (a repeat of its first packet skips nothing more).
    last_skipped: Option<u16>,
    /// The newest incoming picture ID of the current source: a skip of an older
    /// one (repaired late) must not move the IDs of pictures already sent.
    newest_in: Option<u16>,
}

/// How many pictures back a late packet finds its picture's outgoing ID.
const RECENT_PICTURES: usize = 8;

/// The outgoing values for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
    /// False while the source is the first one: the packet goes out as it came.
    pub changed: bool,
}

impl Vp8Rewriter {
    /// The patch for one packet of `source` (None when nothing needs rewriting).
    /// Must be called for every forwarded VP8 packet, in order.
    pub fn rewrite(&mut self, source: u64, descriptor: &Vp8Descriptor) -> Option<Vp8Patch> {
        let modulus = modulus_of(descriptor);
        let out = self.map(
            source,
            descriptor.picture_id(),
            descriptor.tl0_pic_idx(),
            modulus,
        );
        if !out.changed {
            return None;
        }
        let mut builder = descriptor.patch();
        if let Some(p) = out.picture_id {
            builder = builder.picture_id(p);
        }
        if let Some(t) = out.tl0_pic_idx {
            builder = builder.tl0_pic_idx(t);
        }
        builder.build().ok()
    }

    /// The pure mapping behind [`Vp8Rewriter::rewrite`]; `modulus` is 2^15 or 2^7.
    pub fn map(
        &mut self,
        source: u64,
        pid: Option<u16>,
        tl0: Option<u8>,
        modulus: u32,
    ) -> Rewritten {
        if self.source != Some(source) {
            // Continue right after the last picture the viewer saw.
            self.pid_offset = match (self.last_pid, pid) {
                (Some(last), Some(new)) => {
                    (u32::from(last) + 1 + modulus - u32::from(new) % modulus) % modulus
                }
                _ => 0,
            };
            self.tl0_offset = match (self.last_tl0, tl0) {
                (Some(last), Some(new)) => last.wrapping_add(1).wrapping_sub(new),
                _ => 0,
            };
            self.source = Some(source);
            self.recent_len = 0;
            self.newest_in = None;
        }
        if let Some(p) = pid {
            if self.newest_in.is_none_or(|n| is_newer(p, n, modulus)) {
                self.newest_in = Some(p);
            }
        }
        let picture_id = pid.map(|p| match self.recent_out(p) {
            Some(out) => out,
            None => {
                let out = ((u32::from(p) + self.pid_offset) % modulus) as u16;
                self.remember(p, out);
                out
            }
        });
        let tl0_pic_idx = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        if picture_id.is_some() {
            self.last_pid = picture_id;
        }
        if tl0_pic_idx.is_some() {
            self.last_tl0 = tl0_pic_idx;
        }
        Rewritten {
            picture_id,
            tl0_pic_idx,
            changed: self.pid_offset != 0 || self.tl0_offset != 0,
        }
    }

    /// A picture of the current source is dropped whole (its temporal layer is
    /// not forwarded): the pictures after it take its ID on, so the viewer's
    /// decoder sees no missing picture. Called with the picture's first packet.
    pub fn skip_picture(&mut self, source: u64, pid: Option<u16>, modulus: u32) {
        let Some(pid) = pid else {
            return;
        };
        if self.source != Some(source)
            || self.recent_out(pid).is_some()
            || self.last_skipped == Some(pid)
            || self.newest_in.is_some_and(|n| !is_newer(pid, n, modulus))
        {
            return;
        }
        self.last_skipped = Some(pid);
        self.newest_in = Some(pid);
        self.pid_offset = (self.pid_offset + modulus - 1) % modulus;
    }

    /// [`Vp8Rewriter::skip_picture`] for a packet's descriptor.
    pub fn skip(&mut self, source: u64, descriptor: &Vp8Descriptor) {
        self.skip_picture(source, descriptor.picture_id(), modulus_of(descriptor));
    }

    fn recent_out(&self, pid: u16) -> Option<u16> {
        (0..self.recent_len)
            .map(|back| {
                self.recent[(self.recent_next + RECENT_PICTURES - 1 - back) % RECENT_PICTURES]
            })
            .find(|(incoming, _)| *incoming == pid)
            .map(|(_, out)| out)
    }

    fn remember(&mut self, incoming: u16, out: u16) {
        self.recent[self.recent_next] = (incoming, out);
        self.recent_next = (self.recent_next + 1) % RECENT_PICTURES;
        self.recent_len = (self.recent_len + 1).min(RECENT_PICTURES);
    }
}

/// `a` comes after `b` among picture IDs counted modulo `modulus`.
fn is_newer(a: u16, b: u16, modulus: u32) -> bool {
    let ahead = (u32::from(a) + modulus - u32::from(b) % modulus) % modulus;
    ahead != 0 && ahead < modulus / 2
}

/// A 7-bit picture ID stays 7-bit: the patch keeps the representation.
fn modulus_of(descriptor: &Vp8Descriptor) -> u32 {
    if descriptor.patch().picture_id(0x80).build().is_ok() {
        1 << 15
    } else {
        1 << 7
    }
}

/// A VP8 packet's place in the temporal layering (RFC 7741 section 4.2: the
/// T bit, then TID and the layer-sync bit Y). str0m's descriptor does not expose
/// these, so they are read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    /// The temporal layer, 0 the base.
    pub id: u8,
    /// The frame depends only on base-layer frames (Y): a decoder that skipped
    /// this layer's earlier frames can take it from here.
    pub sync: bool,
    /// The packet begins a frame (S=1, partition 0).
    pub frame_start: bool,
}

/// Reads [`Temporal`] from a VP8 payload; `None` when the descriptor carries no
/// TID (no temporal layering) or is cut short.
pub fn temporal(payload: &[u8]) -> Option<Temporal> {
    let required = *payload.first()?;
    if required & 0x80 == 0 {
        return None; // no extension byte: no TID
    }
    let extension = *payload.get(1)?;
    let (has_picture_id, has_tl0, has_tid) = (
        extension & 0x80 != 0,
        extension & 0x40 != 0,
        extension & 0x20 != 0,
    );
    if !has_tid {
        return None;
    }
    let mut at = 2;
    if has_picture_id {
        at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
    }
    if has_tl0 {
        at += 1;
    }
    let tid_byte = *payload.get(at)?;
    Some(Temporal {
        id: tid_byte >> 6,
        sync: tid_byte & 0x20 != 0,
        frame_start: required & 0x10 != 0 && required & 0x07 == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_pictures_close_the_id_gap_and_late_packets_keep_their_picture_id() {
        let mut r = Vp8Rewriter::default();
        assert_eq!(r.map(1, Some(10), Some(1), M15).picture_id, Some(10));
        r.skip_picture(1, Some(11), M15);
        let out = r.map(1, Some(12), Some(1), M15);
        assert_eq!(out.picture_id, Some(11));
        assert!(out.changed);
        r.skip_picture(1, Some(13), M15);
        // A late packet of picture 10 and of 12: their pictures' IDs.
        assert_eq!(r.map(1, Some(10), Some(1), M15).picture_id, Some(10));
        assert_eq!(r.map(1, Some(12), Some(1), M15).picture_id, Some(11));
        assert_eq!(r.map(1, Some(14), Some(2), M15).picture_id, Some(12));
        // Skipping a picture already forwarded, or one already skipped, changes nothing.
        r.skip_picture(1, Some(14), M15);
        r.skip_picture(1, Some(13), M15);
        assert_eq!(r.map(1, Some(15), Some(2), M15).picture_id, Some(13));
        // A late skip of a picture older than the newest one moves nothing:
        // picture 15 went out as 13, the repaired 14 is skipped late, 16 is 14.
        r.skip_picture(1, Some(14), M15);
        assert_eq!(r.map(1, Some(16), Some(2), M15).picture_id, Some(14));
        let mut late = Vp8Rewriter::default();
        late.map(1, Some(10), None, M15);
        late.map(1, Some(12), None, M15); // 11 was lost on the way in
        late.skip_picture(1, Some(11), M15); // ...and comes late, above the cap
        assert_eq!(
            late.map(1, Some(13), None, M15).picture_id,
            Some(13),
            "no repeat of 12"
        );
        // Across the 15-bit wrap.
        let mut w = Vp8Rewriter::default();
        w.map(1, Some(0x7ffe), None, M15);
        w.skip_picture(1, Some(0x7fff), M15);
        assert_eq!(w.map(1, Some(0), None, M15).picture_id, Some(0x7fff));
        assert_eq!(w.map(1, Some(1), None, M15).picture_id, Some(0));
    }

    #[test]
    fn temporal_fields_are_read_after_the_optional_ones() {
        // X; I L T; 15-bit picture id; TL0PICIDX; TID=2 Y=1.
        let p = [0x90, 0xe0, 0x80, 0x01, 7, 0b1010_0000, 0x00];
        assert_eq!(
            temporal(&p),
            Some(Temporal {
                id: 2,
                sync: true,
                frame_start: true
            })
        );
        // X; T only; TID=1 Y=0; a continuation packet (S=0).
        assert_eq!(
            temporal(&[0x80, 0x20, 0b0100_0000, 0x00]),
            Some(Temporal {
                id: 1,
                sync: false,
                frame_start: false
            })
        );
        // 7-bit picture id, no TL0PICIDX, T and K; TID=3 (the field allows it).
        assert_eq!(
            temporal(&[0x90, 0xb0, 0x05, 0xc0, 0]).map(|t| t.id),
            Some(3)
        );
        // No TID: no layering.
        assert_eq!(temporal(&[0x90, 0xc0, 0x80, 0x01, 7, 0]), None);
        assert_eq!(temporal(&[0x10, 0x00]), None);
    }

    #[test]
    fn temporal_survives_any_short_or_odd_payload() {
        let mut next = crate::router::test_random(0x51ed_270b);
        for len in 0..12usize {
            for _ in 0..2000 {
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(t) = temporal(&bytes) {
                    assert!(t.id <= 3);
                }
            }
        }
        assert_eq!(temporal(&[]), None);
        assert_eq!(temporal(&[0x80]), None);
        assert_eq!(
            temporal(&[0x80, 0xa0, 0x80]),
            None,
            "cut inside the picture id"
        );
    }

    const M15: u32 = 1 << 15;

    #[test]
    fn the_first_source_passes_unchanged() {
        let mut r = Vp8Rewriter::default();
        let out = r.map(1, Some(500), Some(7), M15);
        assert_eq!(
            out,
            Rewritten {
                picture_id: Some(500),
                tl0_pic_idx: Some(7),
                changed: false
            }
        );
    }

    #[test]
    fn a_switch_continues_picture_id_and_tl0() {
        let mut r = Vp8Rewriter::default();
        r.map(1, Some(27), Some(3), M15);
        let out = r.map(2, Some(32754), Some(200), M15);
        assert_eq!(out.picture_id, Some(28));
        assert_eq!(out.tl0_pic_idx, Some(4));
        assert!(out.changed);
        assert_eq!(r.map(2, Some(32755), Some(200), M15).picture_id, Some(29));
    }

    #[test]
    fn picture_ids_wrap() {
        let mut r = Vp8Rewriter::default();
        r.map(1, Some(0x7fff), None, M15);
        assert_eq!(r.map(2, Some(10), None, M15).picture_id, Some(0));
        let mut short = Vp8Rewriter::default();
        short.map(1, Some(127), None, 128);
        assert_eq!(short.map(2, Some(5), None, 128).picture_id, Some(0));
    }

    #[test]
    fn a_patch_is_built_for_a_real_descriptor_after_a_switch() {
        // X=1 S=1; I=1 L=1 T=1; 15-bit picture id; TL0PICIDX; TID byte; keyframe header.
        let first = [0x90, 0xe0, 0x80, 27, 3, 0x00, 0x00, 0x9d];
        let second = [0x90, 0xe0, 0xff, 0xf2, 200, 0x00, 0x00, 0x9d];
        let mut r = Vp8Rewriter::default();
        assert!(r
            .rewrite(1, &Vp8Descriptor::parse(&first).unwrap())
            .is_none());
        assert!(r
            .rewrite(2, &Vp8Descriptor::parse(&second).unwrap())
            .is_some());
    }

    /// Pictures of three sources near the 15-bit picture ID and 8-bit TL0PICIDX
    /// wraps, the shown source switched at random: the viewer's picture IDs and
    /// TL0PICIDX (every picture a base-layer one here) each go up by one.
    #[test]
    fn any_sequence_of_switches_keeps_picture_ids_continuous_across_wraps() {
        let mut next = crate::router::test_random(0x9e37_79b9);
        let mut r = Vp8Rewriter::default();
        let mut sources: [(u16, u8); 3] = [(0x7ff0, 250), (5, 0), (0x7fff, 255)];
        let mut shown = 0usize;
        let mut last: Option<(u16, u8)> = None;
        for step in 0..10_000 {
            if next() % 7 == 0 {
                shown = (next() % 3) as usize;
            }
            for (source, (pid, tl0)) in sources.iter_mut().enumerate() {
                if source == shown {
                    let out = r.map(source as u64, Some(*pid), Some(*tl0), M15);
                    let (Some(out_pid), Some(out_tl0)) = (out.picture_id, out.tl0_pic_idx) else {
                        panic!("fields lost at step {step}");
                    };
                    if let Some((prev_pid, prev_tl0)) = last {
                        assert_eq!(out_pid, (prev_pid + 1) % M15 as u16, "step {step}");
                        assert_eq!(out_tl0, prev_tl0.wrapping_add(1), "step {step}");
                    }
                    last = Some((out_pid, out_tl0));
                }
                *pid = (*pid + 1) % M15 as u16;
                *tl0 = tl0.wrapping_add(1);
            }
        }
    }
}
