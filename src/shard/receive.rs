//! Incoming datagrams, many per system call: `recvmmsg`, and UDP GRO where the
//! kernel has it (a publisher's burst from one address arrives as one buffer of
//! equal-sized datagrams), through quinn-udp, which knows each platform's calls
//! and control messages.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;

use quinn_udp::{RecvMeta, UdpSocketState};

use super::socket::ShardSockets;

/// Buffers filled per call.
const BATCH: usize = 16;
/// One buffer holds the largest GRO list the kernel may hand over (64 KiB, what
/// one UDP datagram or one coalesced list can be at most).
const BUFFER_BYTES: usize = 1 << 16;

/// Where one datagram of a batch lies: its buffer and its bytes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub buffer: usize,
    pub bytes: Range<usize>,
}

pub struct RecvBatch {
    /// quinn-udp's state for each of the shard's sockets, in their order.
    states: Vec<UdpSocketState>,
    buffers: Vec<Box<[u8]>>,
    meta: Vec<RecvMeta>,
}

impl RecvBatch {
    /// Prepares every socket of the shard (quinn-udp sets the options it reads
    /// with: packet info, GRO where there is one, no fragmentation).
    pub fn new(sockets: &ShardSockets) -> io::Result<Self> {
        let states = sockets
            .sockets
            .iter()
            .map(|socket| {
                let state = UdpSocketState::new(socket.into())?;
                // quinn-udp asks for kernel receive timestamps, which nothing here
                // reads: each would cost a control message per datagram (and turns
                // timestamping on for the whole host).
                let _ = nix::sys::socket::setsockopt(
                    socket,
                    nix::sys::socket::sockopt::ReceiveTimestampns,
                    &false,
                );
                Ok(state)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(RecvBatch {
            states,
            buffers: (0..BATCH)
                .map(|_| vec![0u8; BUFFER_BYTES].into_boxed_slice())
                .collect(),
            meta: vec![RecvMeta::default(); BATCH],
        })
    }

    /// Receives what socket `index` has, up to a batch, into `datagrams` (emptied
    /// first): each with its source, its bytes staying until the next call. True
    /// when the socket is drained (the batch was not full). `WouldBlock` when there
    /// is none.
    pub fn receive(
        &mut self,
        sockets: &ShardSockets,
        index: usize,
        datagrams: &mut Vec<(SocketAddr, Segment)>,
    ) -> io::Result<bool> {
        datagrams.clear();
        let (Some(socket), Some(state)) = (sockets.sockets.get(index), self.states.get(index))
        else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let mut buffers = self.buffers.iter_mut();
        let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| {
            IoSliceMut::new(buffers.next().map_or(&mut [][..], |b| &mut b[..]))
        });
        let messages = state.recv(socket.into(), &mut slices, &mut self.meta)?;
        datagrams.extend(
            self.meta[..messages]
                .iter()
                .enumerate()
                .flat_map(|(buffer, meta)| {
                    split(meta.len, meta.stride)
                        .map(move |bytes| (meta.addr, Segment { buffer, bytes }))
                }),
        );
        Ok(messages < BATCH)
    }

    /// The bytes of `segment` from the last receive.
    pub fn bytes(&self, segment: &Segment) -> &[u8] {
        self.buffers
            .get(segment.buffer)
            .and_then(|b| b.get(segment.bytes.clone()))
            .unwrap_or(&[])
    }
}

/// The datagrams of a buffer of `len` bytes holding datagrams of `stride` bytes
/// each (GRO), the last maybe shorter; one datagram when `stride` covers it all,
/// and one empty datagram for an empty one (it is input too: dropped and counted).
fn split(len: usize, stride: usize) -> impl Iterator<Item = Range<usize>> {
    let stride = if stride == 0 { len.max(1) } else { stride };
    (0..len.max(1))
        .step_by(stride)
        .map(move |start| start..(start + stride).min(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives on the shard's first socket until `count` datagrams came, or 2 s
    /// passed: each with its source and bytes.
    fn receive_at_least(
        batch: &mut RecvBatch,
        sockets: &ShardSockets,
        count: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let mut datagrams = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < count && std::time::Instant::now() < deadline {
            match batch.receive(sockets, 0, &mut datagrams) {
                Ok(_) => got.extend(
                    datagrams
                        .iter()
                        .map(|(source, segment)| (*source, batch.bytes(segment).to_vec())),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("receive: {e}"),
            }
        }
        got
    }

    #[test]
    fn a_coalesced_buffer_splits_at_its_stride() {
        assert_eq!(
            split(3000, 1200).collect::<Vec<_>>(),
            vec![0..1200, 1200..2400, 2400..3000]
        );
        assert_eq!(
            split(2400, 1200).collect::<Vec<_>>(),
            vec![0..1200, 1200..2400]
        );
        assert_eq!(split(500, 500).collect::<Vec<_>>(), vec![0..500]);
        assert_eq!(split(500, 0).collect::<Vec<_>>(), vec![0..500]);
        assert_eq!(split(0, 1200).collect::<Vec<_>>(), vec![0..0]);
        assert_eq!(split(0, 0).collect::<Vec<_>>(), vec![0..0]);
    }

    #[test]
    fn a_batch_brings_several_datagrams_with_their_sources() {
        let sockets = ShardSockets::loopback();
        let mut batch = RecvBatch::new(&sockets).expect("prepare");
        let to = sockets.local_addrs[0];
        let senders: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let plan = [
            (0, 1200, 1u8),
            (0, 1200, 2),
            (1, 80, 3),
            (1, 0, 7),
            (0, 700, 4),
            (1, 90, 5),
        ];
        for (from, len, fill) in plan {
            senders[from].send_to(&vec![fill; len], to).expect("send");
        }
        let got = receive_at_least(&mut batch, &sockets, plan.len());
        // Each sender's datagrams in order, whole, from the right address.
        for (i, sender) in senders.iter().enumerate() {
            let from = sender.local_addr().expect("addr");
            let mine: Vec<&Vec<u8>> = got
                .iter()
                .filter(|(s, _)| *s == from)
                .map(|(_, d)| d)
                .collect();
            let sent: Vec<Vec<u8>> = plan
                .iter()
                .filter(|(f, ..)| *f == i)
                .map(|(_, len, fill)| vec![*fill; *len])
                .collect();
            assert_eq!(mine, sent.iter().collect::<Vec<_>>(), "from sender {i}");
        }
        let mut more = Vec::new();
        assert!(
            matches!(batch.receive(&sockets, 0, &mut more), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        );
    }

    #[test]
    fn a_segmented_burst_arrives_as_its_datagrams() {
        use std::os::fd::AsRawFd;
        let sockets = ShardSockets::loopback();
        let mut batch = RecvBatch::new(&sockets).expect("prepare");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let from = sender.local_addr().expect("addr");
        let sizes = [(1200, 1u8), (1200, 2), (1200, 3), (500, 4)];
        let burst: Vec<str0m::net::Transmit> = sizes
            .iter()
            .map(|(len, fill)| str0m::net::Transmit {
                proto: str0m::net::Protocol::Udp,
                source: from,
                destination: sockets.local_addrs[0],
                contents: vec![*fill; *len].into(),
            })
            .collect();
        // One UDP GSO message: on loopback a GRO socket gets it whole, with its
        // stride; without GRO the kernel splits it first. The same four either way.
        let one_message = [Range {
            start: 0,
            end: burst.len(),
        }];
        let sent = super::super::send::send_messages(sender.as_raw_fd(), &burst, &one_message)
            .expect("sendmmsg");
        assert_eq!(sent, 1);
        let got = receive_at_least(&mut batch, &sockets, sizes.len());
        let expected: Vec<(SocketAddr, Vec<u8>)> = sizes
            .iter()
            .map(|(len, fill)| (from, vec![*fill; *len]))
            .collect();
        assert_eq!(got, expected);
    }
}
