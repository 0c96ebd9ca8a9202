//! Checks a received RTP stream against what the publisher(s) sent.

use std::collections::HashMap;
use std::time::Instant;

use super::media::{body, parse_vp8, starts_keyframe, Format, Kind, ReceivedPacket, SentPacket};

/// A run of received packets that came, in order and complete, from one publisher.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Index of the source in the `sources` given to [`check_stream`].
    pub source: usize,
    /// The publisher's tag.
    pub tag: u32,
    /// Index in the source's sent list of the first packet of the run.
    pub first_sent: usize,
    /// Number of packets in the run.
    pub len: usize,
    /// Arrival of the first packet of the run.
    pub first_at: Instant,
}

impl Segment {
    /// One past the index in the source's sent list of the last packet of the run.
    pub fn end_sent(&self) -> usize {
        self.first_sent + self.len
    }
}

/// What [`check_stream`] found.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub kind: Kind,
    pub segments: Vec<Segment>,
    /// Exact duplicates (same extended sequence number and payload) that were skipped.
    pub duplicates: usize,
    /// Distinct packets checked.
    pub packets: usize,
}

fn describe(p: &ReceivedPacket) -> String {
    match p.identity() {
        Some(id) => format!(
            "seq {} ts {} pt {} marker {} [tag {} #{} pkt {}/{}{}]",
            p.seq,
            p.timestamp,
            p.pt,
            p.marker,
            id.tag,
            id.index,
            id.packet,
            id.packets,
            if id.keyframe { " key" } else { "" }
        ),
        None => format!(
            "seq {} ts {} pt {} marker {} [unrecognised payload of {} bytes]",
            p.seq,
            p.timestamp,
            p.pt,
            p.marker,
            p.payload.len()
        ),
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "lengths {} vs {}, first difference at byte {at}",
        a.len(),
        b.len()
    )
}

/// Checks a received stream of one kind.
///
/// `sources` are the sent lists of the publishers the stream may come from, in
/// any order. The received stream must be a sequence of runs, each an exact,
/// in-order, gap-free run of one source's packets (payload bytes identical, VP8
/// payload descriptors aside from the picture id identical, H264 payloads
/// identical byte for byte, markers identical,
/// timestamp steps identical); for video every run starts on the first packet
/// of a key frame (H264: the SPS that opens an IDR access unit). Across the
/// whole stream: one SSRC, the payload type
/// `expected_pt`, consecutive sequence numbers, timestamps moving forward, and
/// (video) VP8 picture ids increasing by one per frame.
pub fn check_stream(
    kind: Kind,
    sources: &[&[SentPacket]],
    received: &[ReceivedPacket],
    expected_pt: u8,
) -> Result<StreamReport, String> {
    check_stream_with(kind, sources, received, expected_pt, Timestamps::Exact)
}

/// How [`check_stream_with`] judges RTP timestamps inside a run from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// Every step equals the publisher's step (live forwarding).
    Exact,
    /// Packets of one frame share a timestamp and each new frame moves forward,
    /// by any amount (a server may compress the timestamps of a replayed
    /// key frame cache so that the player does not start behind).
    Increasing,
    /// `Exact` between packets the publisher sent from this instant on,
    /// `Increasing` before (packets sent before a viewer was there can only have
    /// reached it from the server's key frame cache).
    ExactFrom(Instant),
}

/// [`check_stream`] with a choice of how strictly timestamps are checked.
pub fn check_stream_with(
    kind: Kind,
    sources: &[&[SentPacket]],
    received: &[ReceivedPacket],
    expected_pt: u8,
    timestamps: Timestamps,
) -> Result<StreamReport, String> {
    let mut index: HashMap<(u32, u32, u8), (usize, usize)> = HashMap::new();
    for (s, sent) in sources.iter().enumerate() {
        for (i, p) in sent.iter().enumerate() {
            index.insert((p.id.tag, p.id.index, p.id.packet), (s, i));
        }
    }

    let mut report = StreamReport {
        kind,
        segments: Vec::new(),
        duplicates: 0,
        packets: 0,
    };
    let mut seen: HashMap<u64, &ReceivedPacket> = HashMap::new();
    let mut prev: Option<(&ReceivedPacket, usize, usize)> = None;
    let mut ssrc: Option<u32> = None;
    let mut frame_picture_id: Option<(u16, bool)> = None;

    for (n, r) in received.iter().enumerate() {
        let ctx = || format!("{kind:?} packet #{n} ({})", describe(r));
        if let Some(first) = seen.get(&r.ext_seq) {
            if first.payload == r.payload {
                report.duplicates += 1;
                continue;
            }
            return Err(format!(
                "{}: sequence number seen before with another payload ({})",
                ctx(),
                describe(first)
            ));
        }
        seen.insert(r.ext_seq, r);

        if r.pt != expected_pt {
            return Err(format!(
                "{}: payload type {} but the viewer negotiated {expected_pt}",
                ctx(),
                r.pt
            ));
        }
        match ssrc {
            None => ssrc = Some(r.ssrc),
            Some(s) if s != r.ssrc => {
                return Err(format!("{}: SSRC changed from {s} to {}", ctx(), r.ssrc))
            }
            _ => {}
        }
        let id = r
            .identity()
            .ok_or_else(|| format!("{}: payload has no identity trailer", ctx()))?;
        if id.kind != kind {
            return Err(format!("{}: carries {:?} media", ctx(), id.kind));
        }
        let (src, pos) = *index
            .get(&(id.tag, id.index, id.packet))
            .ok_or_else(|| format!("{}: was never sent by any source", ctx()))?;
        let s = &sources[src][pos];

        // Only VP8 has a payload descriptor a server may rewrite; H264 and Opus
        // payloads must arrive exactly as sent.
        let (rb, sb) = match s.format {
            Format::Vp8 => (body(kind, &r.payload), body(kind, &s.payload)),
            Format::H264 | Format::Opus => (&r.payload[..], &s.payload[..]),
        };
        if rb != sb {
            return Err(format!(
                "{}: payload differs from what was sent ({})",
                ctx(),
                first_difference(rb, sb)
            ));
        }
        if r.marker != s.marker {
            return Err(format!(
                "{}: marker {} but sent with marker {}",
                ctx(),
                r.marker,
                s.marker
            ));
        }
        if kind == Kind::Video && s.format == Format::Vp8 {
            let rh = parse_vp8(&r.payload)
                .ok_or_else(|| format!("{}: bad VP8 payload descriptor", ctx()))?;
            let sh = parse_vp8(&s.payload).expect("own VP8 descriptor parses");
            if (rh.start, rh.pid, rh.picture_id.is_some(), rh.keyframe)
                != (sh.start, sh.pid, sh.picture_id.is_some(), sh.keyframe)
            {
                return Err(format!("{}: VP8 descriptor {rh:?} but sent {sh:?}", ctx()));
            }
            if let Some((pic, wide)) = rh.picture_id {
                let frame_start = rh.start && rh.pid == 0;
                match (frame_start, frame_picture_id) {
                    (true, Some((last, last_wide))) => {
                        let modulo = if last_wide { 0x8000 } else { 0x80 };
                        let want = (last + 1) % modulo;
                        if wide != last_wide || pic != want {
                            return Err(format!(
                                "{}: VP8 picture id {pic} follows {last} (want {want})",
                                ctx()
                            ));
                        }
                    }
                    (false, Some((last, _))) if pic != last => {
                        return Err(format!(
                            "{}: VP8 picture id {pic} inside a frame with picture id {last}",
                            ctx()
                        ));
                    }
                    _ => {}
                }
                if frame_start || frame_picture_id.is_none() {
                    frame_picture_id = Some((pic, wide));
                }
            }
        }

        let new_segment = match prev {
            None => true,
            Some((_, psrc, _)) => psrc != src,
        };
        if let Some((p, psrc, ppos)) = prev {
            let want_seq = p.seq.wrapping_add(1);
            if r.seq != want_seq {
                return Err(format!(
                    "{}: sequence number {} follows {} (want {want_seq}); previous packet {}",
                    ctx(),
                    r.seq,
                    p.seq,
                    describe(p)
                ));
            }
            if psrc == src {
                if pos != ppos + 1 {
                    return Err(format!(
                        "{}: is sent packet #{pos} of source {src}, but the previous one was #{ppos} \
                         ({} sent packets missing or reordered); previous packet {}",
                        ctx(),
                        pos as i64 - ppos as i64 - 1,
                        describe(p)
                    ));
                }
                let sent_step = s.timestamp.wrapping_sub(sources[src][ppos].timestamp);
                let recv_step = r.timestamp.wrapping_sub(p.timestamp);
                let exact = match timestamps {
                    Timestamps::Exact => true,
                    Timestamps::Increasing => false,
                    Timestamps::ExactFrom(t) => sources[src][ppos].at >= t,
                };
                let ok = if exact {
                    sent_step == recv_step
                } else if sent_step == 0 {
                    recv_step == 0
                } else {
                    (recv_step as i32) > 0
                };
                if !ok {
                    return Err(format!(
                        "{}: timestamp step {recv_step} but the publisher's step was {sent_step}",
                        ctx()
                    ));
                }
            } else {
                let step = r.timestamp.wrapping_sub(p.timestamp) as i32;
                if step <= 0 {
                    return Err(format!(
                        "{}: timestamp goes back by {} at the switch to source {src}",
                        ctx(),
                        -(step as i64)
                    ));
                }
            }
        }
        if new_segment {
            if kind == Kind::Video
                && !(starts_keyframe(s.format, &r.payload) && s.id.keyframe && s.id.packet == 0)
            {
                return Err(format!(
                    "{}: video from source {src} (tag {}) does not start on a key frame",
                    ctx(),
                    id.tag
                ));
            }
            report.segments.push(Segment {
                source: src,
                tag: id.tag,
                first_sent: pos,
                len: 1,
                first_at: r.at,
            });
        } else if let Some(seg) = report.segments.last_mut() {
            seg.len += 1;
        }
        report.packets += 1;
        prev = Some((r, src, pos));
    }
    Ok(report)
}
