//! A bottleneck link for one test viewer: a UDP relay on 127.0.0.1 between the
//! viewer and the server whose server-to-viewer direction is a token bucket of a
//! set rate with a bounded queue (packets that would wait longer than
//! [`MAX_QUEUE_DELAY`] are dropped), as a congested access link behaves. The
//! viewer's answer is rewritten so it sends to the relay; the server learns the
//! relay's address from the checks (peer-reflexive), so nothing else changes.

use std::collections::{HashSet, VecDeque};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most a packet may wait in the bottleneck's queue before it is dropped.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(100);

pub struct Shaper {
    /// Where the viewer sends (the relay's viewer side).
    pub viewer_side: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    /// The server's address, from the answer.
    upstream: Mutex<Option<SocketAddr>>,
    /// The viewer's address, from its first datagram.
    viewer: Mutex<Option<SocketAddr>>,
    /// Bits per second towards the viewer; 0 = unlimited.
    rate_bps: AtomicU64,
    dropped: AtomicU64,
    /// RTP packets towards the viewer whose SSRC and sequence number were
    /// already seen: the same packet sent twice (a retransmission goes on its
    /// own RTX SSRC, so it is not one).
    duplicates: AtomicU64,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shaper({})", self.viewer_side)
    }
}

impl Shaper {
    pub fn start() -> Result<Shaper, String> {
        let viewer_socket =
            UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("shaper bind: {e}"))?;
        let server_socket =
            UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("shaper bind: {e}"))?;
        let viewer_side = viewer_socket
            .local_addr()
            .map_err(|e| format!("shaper addr: {e}"))?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(None),
            viewer: Mutex::new(None),
            rate_bps: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let up = {
            let shared = Arc::clone(&shared);
            let from_viewer = viewer_socket
                .try_clone()
                .map_err(|e| format!("shaper clone: {e}"))?;
            let to_server = server_socket
                .try_clone()
                .map_err(|e| format!("shaper clone: {e}"))?;
            std::thread::spawn(move || relay_up(&shared, &from_viewer, &to_server))
        };
        let down = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || relay_down(&shared, &server_socket, &viewer_socket))
        };
        Ok(Shaper {
            viewer_side,
            shared,
            threads: vec![up, down],
        })
    }

    /// Limits the server-to-viewer direction to `kbps` (`None`: no limit).
    pub fn set_rate_kbps(&self, kbps: Option<u64>) {
        self.shared
            .rate_bps
            .store(kbps.unwrap_or(0) * 1000, Ordering::SeqCst);
    }

    /// Packets dropped at the bottleneck so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// RTP packets the server sent the viewer more than once (SRTP leaves the
    /// header in the clear, so the relay can tell).
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::SeqCst)
    }

    /// Rewrites an answer's candidates to the relay, and remembers the server's
    /// address (the first candidate's) to relay to.
    pub fn rewrite_answer(&self, answer: &str) -> String {
        let mut out = String::with_capacity(answer.len());
        for line in answer.split_inclusive('\n') {
            let trimmed = line.trim_end();
            if let Some(rest) = trimmed.strip_prefix("a=candidate:") {
                // foundation component transport priority address port typ ...
                let mut fields: Vec<String> = rest.split(' ').map(str::to_string).collect();
                if fields.len() > 5 {
                    if let Ok(addr) = format!("{}:{}", fields[4], fields[5]).parse::<SocketAddr>() {
                        let mut upstream = lock(&self.shared.upstream);
                        if upstream.is_none() {
                            *upstream = Some(addr);
                        }
                        if Some(addr) == *upstream {
                            fields[4] = self.viewer_side.ip().to_string();
                            fields[5] = self.viewer_side.port().to_string();
                            out.push_str("a=candidate:");
                            out.push_str(&fields.join(" "));
                            out.push_str("\r\n");
                        }
                        continue;
                    }
                }
            }
            out.push_str(line);
        }
        out
    }
}

/// `offer` without its candidates (see [`Shaper::rewrite_answer`] for the answer).
pub fn without_candidates(offer: &str) -> String {
    offer
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("a=candidate:"))
        .collect()
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Viewer to server: as is.
fn relay_up(shared: &Shared, from_viewer: &UdpSocket, to_server: &UdpSocket) {
    let _ = from_viewer.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 2048];
    while !shared.stop.load(Ordering::SeqCst) {
        match from_viewer.recv_from(&mut buf) {
            Ok((n, source)) => {
                *lock(&shared.viewer) = Some(source);
                if let Some(server) = *lock(&shared.upstream) {
                    let _ = to_server.send_to(&buf[..n], server);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {}
        }
    }
}

/// Server to viewer: through the token bucket.
fn relay_down(shared: &Shared, from_server: &UdpSocket, to_viewer: &UdpSocket) {
    let mut buf = vec![0u8; 2048];
    // (departure time, datagram)
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut link_free_at = Instant::now();
    let mut seen: HashSet<(u32, u16)> = HashSet::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        while queue.front().is_some_and(|(at, _)| *at <= now) {
            if let (Some((_, datagram)), Some(viewer)) = (queue.pop_front(), *lock(&shared.viewer))
            {
                let _ = to_viewer.send_to(&datagram, viewer);
            }
        }
        let wait = queue
            .front()
            .map(|(at, _)| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(20))
            .clamp(Duration::from_micros(200), Duration::from_millis(20));
        let _ = from_server.set_read_timeout(Some(wait));
        match from_server.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(id) = rtp_identity(&buf[..n]) {
                    if !seen.insert(id) {
                        shared.duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let now = Instant::now();
                let rate = shared.rate_bps.load(Ordering::SeqCst);
                if rate == 0 {
                    link_free_at = now;
                    queue.push_back((now, buf[..n].to_vec()));
                    continue;
                }
                let start = link_free_at.max(now);
                if start.saturating_duration_since(now) > MAX_QUEUE_DELAY {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let serialization = Duration::from_secs_f64((n as f64 + 28.0) * 8.0 / rate as f64);
                link_free_at = start + serialization;
                queue.push_back((link_free_at, buf[..n].to_vec()));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {}
        }
    }
}

/// The SSRC and sequence number of an RTP datagram (RFC 7983: first byte
/// 128..=191; RFC 5761: payload types 64..=95 are RTCP's).
fn rtp_identity(datagram: &[u8]) -> Option<(u32, u16)> {
    let header = datagram.get(..12)?;
    let rtcp = (64..=95).contains(&(header[1] & 0x7f));
    if !(128..=191).contains(&header[0]) || rtcp {
        return None;
    }
    let seq = u16::from_be_bytes([header[2], header[3]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Some((ssrc, seq))
}
