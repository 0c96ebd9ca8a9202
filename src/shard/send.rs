//! Outgoing datagrams of one loop turn, sent with `sendmmsg` (up to
//! [`SendBatch::CHUNK`] messages per system call) rather than one `sendto` each:
//! fan-out sends to many destinations at once, which is what `sendmmsg` is for.
//!
//! A viewer given several packets in one turn (a frame's, a keyframe's) gets them
//! as one message where the kernel can split it (UDP GSO, `UDP_SEGMENT`, Linux
//! 4.18+): consecutive datagrams to one destination, all but the last of one size.
//! The network stack is then walked once per message instead of once per datagram,
//! and what leaves is the same datagrams. If the kernel has no GSO, the shard sends
//! one datagram per message from then on; a segmented message the kernel finds too
//! large goes again as single datagrams. (The sockets do not fragment: quinn-udp,
//! which reads them, sets `IP_PMTUDISC_PROBE`; str0m's datagrams stay under ~1,200
//! bytes.)

use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

use str0m::net::Transmit;

use super::socket::ShardSockets;

/// What a flush did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    /// UDP payload bytes of the datagrams sent.
    pub bytes: u64,
    pub failed: u64,
}

pub struct SendBatch {
    pending: Vec<Transmit>,
    /// The messages of one `sendmmsg` call (ranges of `pending`), kept between calls.
    messages: Vec<Range<usize>>,
    /// Whether segmented messages may be sent (until the kernel refuses one).
    gso: bool,
}

/// The most datagrams in one segmented message (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// The most bytes in one segmented message (a UDP datagram's limit, headers aside).
const MAX_MESSAGE_BYTES: usize = 65_000;
/// `UDP_SEGMENT` from `linux/udp.h` (not exported by libc for every Linux target).
const UDP_SEGMENT: libc::c_int = 103;

impl SendBatch {
    pub const CHUNK: usize = 32;

    pub fn new() -> Self {
        SendBatch {
            pending: Vec::with_capacity(256),
            messages: Vec::with_capacity(Self::CHUNK),
            gso: cfg!(target_os = "linux"),
        }
    }

    pub fn push(&mut self, transmit: Transmit) {
        self.pending.push(transmit);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Sends everything queued, each datagram from the socket bound to its source.
    pub fn flush(&mut self, sockets: &ShardSockets) -> Sent {
        let mut sent = Sent::default();
        // Group by socket so each sendmmsg goes out of one file descriptor (the
        // sort is stable: each peer's datagrams keep their order).
        self.pending
            .sort_by_key(|t| sockets.index_of(t.source).unwrap_or(0));
        let mut start = 0;
        // Datagrams before this index go one per message: their segmented message
        // was refused as too large for its path.
        let mut singles_until = 0;
        while start < self.pending.len() {
            let socket_index = sockets.index_of(self.pending[start].source).unwrap_or(0);
            let same_socket = self.pending[start..]
                .iter()
                .position(|t| sockets.index_of(t.source).unwrap_or(0) != socket_index)
                .map_or(self.pending.len(), |n| start + n);
            let max_segments = if self.gso && start >= singles_until {
                MAX_SEGMENTS
            } else {
                1
            };
            let messages = &mut self.messages;
            messages.clear();
            messages.extend(
                self::messages(&self.pending[..same_socket], start, max_segments).take(Self::CHUNK),
            );
            let Some(socket) = sockets.sockets.get(socket_index) else {
                sent.failed += (same_socket - start) as u64;
                start = same_socket;
                continue;
            };
            match send_messages(socket.as_raw_fd(), &self.pending, messages) {
                Ok(n) => {
                    // The kernel took `n` whole messages (at least one is counted as
                    // handled so a stubborn socket cannot stall the loop).
                    let taken = messages[..n.clamp(1, messages.len())].iter();
                    for range in taken {
                        sent.datagrams += range.len() as u64;
                        sent.bytes += self.pending[range.clone()]
                            .iter()
                            .map(|t| t.contents.len() as u64)
                            .sum::<u64>();
                        start = range.end;
                    }
                }
                Err(e) if messages[0].len() > 1 && too_large_for_its_path(&e) => {
                    singles_until = messages[0].end;
                }
                Err(e) if messages[0].len() > 1 && has_no_segmentation(&e) => {
                    tracing::info!(error = %e, "the kernel has no UDP segmentation offload; sending one datagram per message");
                    self.gso = false;
                }
                Err(e) => {
                    // The first message failed (unreachable, buffer full): drop it
                    // and go on with the rest.
                    tracing::trace!(error = %e, to = %self.pending[start].destination, "send failed");
                    sent.failed += messages[0].len() as u64;
                    start = messages[0].end;
                }
            }
        }
        self.pending.clear();
        sent
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// The errors with which a kernel or a device without UDP GSO refuses a segmented
/// message (EIO as quinn-udp reads it: a device that cannot checksum it).
fn has_no_segmentation(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

/// The errors with which the kernel refuses a segmented message whose segments do
/// not fit the MTU (EINVAL on older kernels, EMSGSIZE on newer ones): sent one by
/// one, each datagram gets its own answer.
fn too_large_for_its_path(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE))
}

/// Splits `pending[start..]` into messages, in order: each a run of consecutive
/// datagrams from one source to one destination, all but the last of the first
/// one's size, at most `max_segments` of them and [`MAX_MESSAGE_BYTES`] together.
fn messages(
    pending: &[Transmit],
    start: usize,
    max_segments: usize,
) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut next = start;
    std::iter::from_fn(move || {
        let first = pending.get(next)?;
        let size = first.contents.len();
        let mut end = next + 1;
        let mut bytes = size;
        // A run continues while the previous datagram had the first one's size
        // (only the last may be shorter) and the next one goes the same way.
        while end < pending.len()
            && end - next < max_segments
            && pending[end - 1].contents.len() == size
            && pending[end].destination == first.destination
            && pending[end].source == first.source
            && pending[end].contents.len() <= size
            && bytes + pending[end].contents.len() <= MAX_MESSAGE_BYTES
        {
            bytes += pending[end].contents.len();
            end += 1;
        }
        let run = next..end;
        next = end;
        Some(run)
    })
}

/// Room for one `UDP_SEGMENT` control message, as `u64`s for its alignment.
const CONTROL_WORDS: usize = 4;

/// One `sendmmsg` call for `messages` (ranges of `pending`); returns how many
/// messages the kernel took. (nix's wrapper only reports the count through an
/// iterator meant for `recvmmsg` results, so the call is made here directly.)
pub(super) fn send_messages(
    fd: RawFd,
    pending: &[Transmit],
    messages: &[Range<usize>],
) -> std::io::Result<usize> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};

    let addrs: Vec<SockaddrStorage> = messages
        .iter()
        .map(|m| SockaddrStorage::from(pending[m.start].destination))
        .collect();
    let mut iovecs: Vec<libc::iovec> = messages
        .iter()
        .flat_map(|m| &pending[m.clone()])
        .map(|t| libc::iovec {
            iov_base: t.contents.as_ptr() as *mut libc::c_void,
            iov_len: t.contents.len(),
        })
        .collect();
    let mut controls: Vec<[u64; CONTROL_WORDS]> = vec![[0; CONTROL_WORDS]; messages.len()];
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(messages.len());
    // One pointer for all messages: each message's iovecs start `first_iovec` on.
    let iovecs_base = iovecs.as_mut_ptr();
    let mut first_iovec = 0;
    for ((message, addr), control) in messages.iter().zip(&addrs).zip(controls.iter_mut()) {
        // SAFETY: mmsghdr is plain data (pointers and integers) for which all
        // zeroes is a valid value; the fields that matter are set below.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = addr.len();
        // SAFETY: `first_iovec` plus this message's length is at most the number of
        // iovecs (they were made from these very messages), so the pointer is in
        // bounds of `iovecs`.
        h.msg_hdr.msg_iov = unsafe { iovecs_base.add(first_iovec) };
        h.msg_hdr.msg_iovlen = message.len() as _;
        first_iovec += message.len();
        if message.len() > 1 {
            let segment = u16::try_from(pending[message.start].contents.len()).unwrap_or(u16::MAX);
            set_segment_size(&mut h.msg_hdr, control, segment);
        }
        headers.push(h);
    }
    // SAFETY: every header points at an address, iovecs and a control buffer that
    // live in `addrs`, `iovecs` and `controls` until after the call (none of them
    // is resized after the pointers were taken), and each iovec at a datagram in
    // `pending`, which the kernel only reads. The count matches the headers' length.
    let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Attaches a `UDP_SEGMENT` control message (the segment size) to `header`, in
/// `control`.
fn set_segment_size(header: &mut libc::msghdr, control: &mut [u64; CONTROL_WORDS], segment: u16) {
    let payload = std::mem::size_of::<u16>() as libc::c_uint;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    debug_assert!(space <= std::mem::size_of_val(control));
    header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    header.msg_controllen = space as _;
    // SAFETY: the header's control buffer is `control`, large enough for one
    // control message with a u16 (checked above), and aligned for cmsghdr (u64s):
    // CMSG_FIRSTHDR returns its start, and CMSG_DATA a place inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use str0m::net::Protocol;

    fn transmit(to: u16, len: usize) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: SocketAddr::from(([127, 0, 0, 1], 5000)),
            destination: SocketAddr::from(([127, 0, 0, 1], to)),
            contents: vec![0u8; len].into(),
        }
    }

    fn runs(pending: &[Transmit], max_segments: usize) -> Vec<Range<usize>> {
        messages(pending, 0, max_segments).collect()
    }

    #[test]
    fn a_viewers_equal_datagrams_go_as_one_message_the_last_may_be_shorter() {
        let pending = [
            transmit(1, 1200),
            transmit(1, 1200),
            transmit(1, 1200),
            transmit(1, 700), // the frame's last packet
            transmit(1, 1200),
        ];
        assert_eq!(runs(&pending, MAX_SEGMENTS), vec![0..4, 4..5]);
    }

    #[test]
    fn other_destinations_sizes_and_larger_datagrams_start_a_new_message() {
        let pending = [
            transmit(1, 1200),
            transmit(2, 1200), // another viewer
            transmit(2, 1000),
            transmit(2, 1000), // after a shorter one: a new run
            transmit(2, 1100), // larger than the run's size
            transmit(2, 90),
        ];
        assert_eq!(runs(&pending, MAX_SEGMENTS), vec![0..1, 1..3, 3..4, 4..6]);
    }

    #[test]
    fn runs_are_bounded_by_segments_and_bytes_and_gso_off_sends_singles() {
        let many: Vec<Transmit> = (0..100).map(|_| transmit(1, 1000)).collect();
        let r = runs(&many, MAX_SEGMENTS);
        // 64 segments at most...
        assert_eq!(r[0], 0..64);
        assert_eq!(r[1], 64..100);
        let big: Vec<Transmit> = (0..100).map(|_| transmit(1, 1400)).collect();
        // ...and 65,000 bytes: 46 × 1400 fit, 47 do not.
        assert_eq!(runs(&big, MAX_SEGMENTS)[0], 0..46);
        // Another source is another run, even to the same destination.
        let mut other_source = transmit(1, 1000);
        other_source.source = SocketAddr::from(([127, 0, 0, 1], 5001));
        let mixed = [transmit(1, 1000), other_source, transmit(1, 1000)];
        assert_eq!(runs(&mixed, MAX_SEGMENTS), vec![0..1, 1..2, 2..3]);
        assert_eq!(runs(&many[..3], 1), vec![0..1, 1..2, 2..3]);
        assert!(runs(&[], MAX_SEGMENTS).is_empty());
    }

    #[test]
    fn segmented_messages_arrive_as_the_datagrams_they_were() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("addr");
        let from = sender.local_addr().expect("addr");
        let datagram = |len: usize, fill: u8| Transmit {
            proto: Protocol::Udp,
            source: from,
            destination: to,
            contents: vec![fill; len].into(),
        };
        let pending = vec![
            datagram(1200, 1),
            datagram(1200, 2),
            datagram(1200, 3),
            datagram(500, 4),
        ];
        let all = messages(&pending, 0, MAX_SEGMENTS).collect::<Vec<_>>();
        assert_eq!(all, vec![0..4]);
        // Linux has had UDP GSO since 4.18: a refusal here is a malformed message.
        let sent = send_messages(sender.as_raw_fd(), &pending, &all).expect("sendmmsg");
        assert_eq!(sent, 1);
        let mut buf = [0u8; 2048];
        for (len, fill) in [(1200, 1), (1200, 2), (1200, 3), (500, 4)] {
            let (n, source) = receiver.recv_from(&mut buf).expect("a datagram");
            assert_eq!(source, from);
            assert_eq!(n, len);
            assert!(buf[..n].iter().all(|b| *b == fill));
        }
    }

    #[test]
    fn a_flush_sends_every_datagram_in_order_and_counts_them() {
        let sockets = ShardSockets::loopback();
        let from = sockets.local_addrs[0];
        let receivers: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .expect("timeout");
                r
            })
            .collect();
        let to = |i: usize| receivers[i].local_addr().expect("addr");
        let datagram = |i: usize, len: usize, fill: u8| Transmit {
            proto: Protocol::Udp,
            source: from,
            destination: to(i),
            contents: vec![fill; len].into(),
        };
        // A keyframe's run to viewer 0, one packet to viewer 1, then viewer 0's audio.
        let plan = [
            (0, 1200, 1),
            (0, 1200, 2),
            (0, 1200, 3),
            (0, 500, 4),
            (1, 300, 5),
            (0, 90, 6),
        ];
        let mut batch = SendBatch::new();
        for (i, len, fill) in plan {
            batch.push(datagram(i, len, fill));
        }
        let sent = batch.flush(&sockets);
        let bytes: usize = plan.iter().map(|(_, len, _)| len).sum();
        assert_eq!(
            sent,
            Sent {
                datagrams: 6,
                bytes: bytes as u64,
                failed: 0
            }
        );
        assert_eq!(batch.len(), 0);
        let mut buf = [0u8; 2048];
        for (i, len, fill) in plan {
            let (n, source) = receivers[i].recv_from(&mut buf).expect("a datagram");
            assert_eq!((n, source), (len, from));
            assert!(buf[..n].iter().all(|b| *b == fill), "datagram {fill}");
        }
    }
}
