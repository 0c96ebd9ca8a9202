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
}

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
        // A 7-bit picture ID stays 7-bit: the patch keeps the representation.
        let modulus = if descriptor.patch().picture_id(0x80).build().is_ok() {
            1 << 15
        } else {
            1 << 7
        };
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
        }
        let picture_id = pid.map(|p| ((u32::from(p) + self.pid_offset) % modulus) as u16);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
