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

    /// One socket on 127.0.0.1, on a port the kernel picks (tests).
    #[cfg(test)]
    pub fn loopback() -> Self {
        let config = MediaConfig {
            udp_port_min: 0,
            udp_port_max: 0,
            ..Default::default()
        };
        Self::bind(&config, 0, &[IpAddr::from([127, 0, 0, 1])]).expect("bind on loopback")
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
