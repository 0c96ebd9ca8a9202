//! A shard's UDP sockets: one per local address, all on the shard's port, so the
//! kernel delivers every datagram to the thread that owns its peer and str0m sees
//! the exact local address it arrived on.

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::UdpSocket;
use str0m::Candidate;

use crate::config::MediaConfig;

pub struct ShardSockets {
    pub sockets: Vec<UdpSocket>,
    pub local_addrs: Vec<SocketAddr>,
}

impl ShardSockets {
    /// Binds shard `index` on every address in `ips`.
    pub fn bind(config: &MediaConfig, index: usize, ips: &[IpAddr]) -> io::Result<Self> {
        let mut port = if config.udp_port_min == 0 {
            0
        } else {
            config.udp_port_min + index as u16
        };
        let mut sockets = Vec::new();
        let mut local_addrs = Vec::new();
        for ip in ips {
            let socket = match UdpSocket::bind(SocketAddr::new(*ip, port)) {
                Ok(s) => s,
                // An OS-chosen port may be taken on another address: take any.
                Err(_) if config.udp_port_min == 0 => UdpSocket::bind(SocketAddr::new(*ip, 0))?,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot bind media port {ip}:{port} (media.udp_port_min/max): {e}"),
                    ))
                }
            };
            enlarge_buffers(&socket);
            let addr = socket.local_addr()?;
            if port == 0 {
                port = addr.port();
            }
            sockets.push(socket);
            local_addrs.push(addr);
        }
        Ok(ShardSockets {
            sockets,
            local_addrs,
        })
    }

    /// The candidates a peer of this shard announces: a host candidate per bound
    /// address, and a server-reflexive one per public address (1:1 NAT).
    pub fn candidates(&self, public_ips: &[IpAddr]) -> Vec<Candidate> {
        let mut out = Vec::new();
        for addr in &self.local_addrs {
            match Candidate::host(*addr, "udp") {
                Ok(c) => out.push(c),
                Err(e) => tracing::warn!(%addr, error = %e, "address cannot be a host candidate"),
            }
        }
        for ip in public_ips {
            let base = self
                .local_addrs
                .iter()
                .find(|a| a.is_ipv4() == ip.is_ipv4() && !a.ip().is_loopback());
            if let Some(base) = base {
                let addr = SocketAddr::new(*ip, base.port());
                if let Ok(c) = Candidate::server_reflexive(addr, *base, "udp") {
                    out.push(c);
                }
            }
        }
        out
    }

    pub fn index_of(&self, local: SocketAddr) -> Option<usize> {
        self.local_addrs.iter().position(|a| *a == local)
    }
}

/// The addresses to bind when none are configured: every interface address (IPv4,
/// and IPv6 that is not link-local, which would need a scope id), then loopback.
/// Loopback goes last because candidates are announced in this order and some
/// clients (FFmpeg's WHIP muxer) use only the first host candidate of an answer.
pub fn default_bind_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    match if_addrs::get_if_addrs() {
        Ok(ifaces) => {
            for iface in ifaces {
                let ip = iface.ip();
                let usable = match ip {
                    IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                    IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
                };
                if usable && !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list network interfaces; media on loopback only")
        }
    }
    ips.push(IpAddr::from([127, 0, 0, 1]));
    ips
}

/// Outgoing datagrams of one loop turn, sent with `sendmmsg` (up to
/// [`SendBatch::CHUNK`] datagrams per system call) rather than one `sendto` each:
/// fan-out sends to many destinations at once, which is what `sendmmsg` is for.
pub struct SendBatch {
    pending: Vec<str0m::net::Transmit>,
}

/// What a flush did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    /// UDP payload bytes of the datagrams sent.
    pub bytes: u64,
    pub failed: u64,
}

impl SendBatch {
    pub const CHUNK: usize = 32;

    pub fn new() -> Self {
        SendBatch {
            pending: Vec::with_capacity(256),
        }
    }

    pub fn push(&mut self, transmit: str0m::net::Transmit) {
        self.pending.push(transmit);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Sends everything queued, each datagram from the socket bound to its source.
    pub fn flush(&mut self, sockets: &ShardSockets) -> Sent {
        use std::os::fd::AsRawFd;

        let mut sent = Sent::default();
        // Group by socket so each sendmmsg goes out of one file descriptor (the
        // sort is stable: each peer's datagrams keep their order).
        self.pending
            .sort_by_key(|t| sockets.index_of(t.source).unwrap_or(0));
        let mut start = 0;
        while start < self.pending.len() {
            let socket_index = sockets.index_of(self.pending[start].source).unwrap_or(0);
            let mut end = start + 1;
            while end < self.pending.len()
                && end - start < Self::CHUNK
                && sockets.index_of(self.pending[end].source).unwrap_or(0) == socket_index
            {
                end += 1;
            }
            let Some(socket) = sockets.sockets.get(socket_index) else {
                sent.failed += (end - start) as u64;
                start = end;
                continue;
            };
            let chunk = &self.pending[start..end];
            match send_chunk(socket.as_raw_fd(), chunk) {
                Ok(n) => {
                    let n = n.max(1);
                    sent.datagrams += n as u64;
                    sent.bytes += chunk[..n.min(chunk.len())]
                        .iter()
                        .map(|t| t.contents.len() as u64)
                        .sum::<u64>();
                    start += n;
                }
                Err(e) => {
                    // The first datagram of the chunk failed (unreachable, buffer
                    // full): drop it and go on with the rest.
                    tracing::trace!(error = %e, to = %chunk[0].destination, "send failed");
                    sent.failed += 1;
                    start += 1;
                }
            }
        }
        self.pending.clear();
        sent
    }
}

/// One `sendmmsg` call for up to [`SendBatch::CHUNK`] datagrams; returns how many
/// the kernel took. (nix's wrapper only reports the count through an iterator
/// meant for `recvmmsg` results, so the call is made here directly.)
fn send_chunk(fd: std::os::fd::RawFd, chunk: &[str0m::net::Transmit]) -> std::io::Result<usize> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};

    let addrs: Vec<SockaddrStorage> = chunk
        .iter()
        .map(|t| SockaddrStorage::from(t.destination))
        .collect();
    let mut iovecs: Vec<libc::iovec> = chunk
        .iter()
        .map(|t| libc::iovec {
            iov_base: t.contents.as_ptr() as *mut libc::c_void,
            iov_len: t.contents.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .zip(&addrs)
        .map(|(iov, addr)| {
            // SAFETY: mmsghdr is plain data (pointers and integers) for which all
            // zeroes is a valid value; the fields that matter are set below.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addr.len();
            h.msg_hdr.msg_iov = iov as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: every header points at an address and an iovec that live in `addrs`
    // and `iovecs` until after the call, and each iovec at a datagram in `chunk`,
    // which the kernel only reads. The count matches the headers' length.
    let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// What we ask the kernel to buffer per media socket, each way. A keyframe burst
/// for many viewers, or a flood of junk, must not overflow the default ~200 KB
/// while the shard is busy; the kernel caps it at `net.core.rmem_max`/`wmem_max`.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Best effort: a smaller buffer than asked for is logged, not fatal.
fn enlarge_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot set SO_RCVBUF");
    }
    if let Err(e) = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot set SO_SNDBUF");
    }
}
