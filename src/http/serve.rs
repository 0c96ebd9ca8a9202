//! The HTTP server: our own accept loop serving the axum router over hyper's
//! HTTP/1.1 connections, so that no client holds the server's resources for long
//! or in number:
//!
//! - connections are capped in all (`http.max_connections`) and per client
//!   address (`http.max_connections_per_ip`); past a cap a new connection is
//!   answered 503 with `Retry-After` and closed;
//! - a request line and its headers must arrive within `http.header_read_timeout`
//!   (hyper's header-read timer, which also bounds an idle kept-alive connection),
//!   and may not exceed [`HEAD_BUFFER_BYTES`] (hyper answers 431);
//! - the first bytes of a connection must be able to begin an HTTP/1.1 request
//!   line: anything else (binary, TLS, HTTP/2, a token that never ends) is
//!   answered 400 at once ([`RequestLineCheck`]);
//! - bodies are bounded in size and time where handlers read them
//!   (`http.max_body_bytes`, `http.body_read_timeout`);
//! - on shutdown, connections finish the request in progress for up to
//!   [`SHUTDOWN_GRACE`], then are closed.
//!
//! Handlers find the client's address as `ConnectInfo<SocketAddr>` in the
//! request's extensions.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::problem::Problem;
use super::AppState;

/// Largest request line plus headers hyper buffers (431 past it). Also bounds
/// the memory an idle or slow connection holds.
pub const HEAD_BUFFER_BYTES: usize = 16 * 1024;
/// How long connections may finish their request when the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections refused past a cap that are being answered at once; beyond
/// this many, a refused connection is closed without an answer.
const REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection is given to send its request before the 503.
const REFUSAL_READ: Duration = Duration::from_millis(200);
/// `Retry-After` of a refused connection, in seconds.
const REFUSAL_RETRY_AFTER: u32 = 1;

/// Serves `state`'s router on `listener` until `stop` completes, then drains.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, stop: impl Future<Output = ()>) {
    let app = super::router(state.clone());
    let http_config = &state.config.http;
    let metrics = state.metrics.clone();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(http_config.header_read_timeout)
        .max_buf_size(HEAD_BUFFER_BYTES);
    let limits = Arc::new(ConnectionLimits {
        total: http_config.max_connections,
        per_client: http_config.max_connections_per_ip,
        open: Mutex::default(),
        gauge: metrics.http_connections_open.clone(),
    });
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let not_http = metrics
        .http_connection_errors
        .with_label_values(&["not_http"]);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            metrics.http_connections_refused.inc();
            refuse(stream, &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(FirstLine::new(stream, not_http.clone()));
        let app = app.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let errors = metrics.http_connection_errors.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                let reason = if e.is_timeout() {
                    Some("header_timeout")
                } else if e.is_parse() || e.is_parse_too_large() {
                    Some("malformed")
                } else if e.is_incomplete_message() {
                    Some("incomplete")
                } else {
                    None // I/O: a reset, or bytes FirstLine refused (counted there).
                };
                if let Some(reason) = reason {
                    errors.with_label_values(&[reason]).inc();
                }
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP connections still open {SHUTDOWN_GRACE:?} after shutdown began; closing them"
        );
    }
    connections.shutdown().await;
}

/// An `accept` that failed: a connection that went away before we took it is
/// nothing; running out of file descriptors is worth a pause (the connections
/// open now will close).
async fn accept_failed(e: io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => {}
        _ => {
            tracing::warn!(error = %e, "cannot accept HTTP connections (raise ulimit -n, or lower http.max_connections)");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Answers a connection refused past a cap with 503, briefly, off the accept
/// loop; if too many are being answered already, just closes it.
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        // Read what the client sent first, so that closing does not reset the
        // connection before it reads the answer.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSAL_READ, async {
            let mut seen = 0;
            while seen < HEAD_BUFFER_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen += n,
                }
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        let answer = canned(Problem::unavailable(
            "the server has too many open connections (http.max_connections or \
             http.max_connections_per_ip); try again shortly",
            REFUSAL_RETRY_AFTER,
        ));
        let _ = tokio::time::timeout(REFUSAL_READ, async {
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// A whole HTTP/1.1 response carrying `problem`, for a connection that is
/// closed after it (written without hyper: before or instead of a request).
fn canned(problem: Problem) -> Vec<u8> {
    let status = problem.status();
    let body = problem.to_json();
    let retry_after = problem
        .retry_after
        .map(|secs| format!("retry-after: {secs}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         {retry_after}connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}

/// The address a client's caps are counted under: an IPv4 address as is (also
/// when mapped into IPv6), an IPv6 address by its /64, which one subscriber
/// usually gets whole.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Open connections, in all and per client.
struct ConnectionLimits {
    total: usize,
    per_client: usize,
    /// (open connections, open connections per client; a client with none has no entry)
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    gauge: IntGauge,
}

impl ConnectionLimits {
    /// A permit for one more connection from `ip`, unless a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let client = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_client) = &mut *open;
        let held = by_client.get(&client).copied().unwrap_or(0);
        if *total >= self.total || held >= self.per_client {
            return None;
        }
        *total += 1;
        by_client.insert(client, held + 1);
        self.gauge.inc();
        Some(ConnectionPermit {
            limits: Arc::clone(self),
            client,
        })
    }
}

/// One open connection; dropping it frees its place, however the connection ended.
struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    client: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(held) = by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                by_client.remove(&self.client);
            }
        }
        self.limits.gauge.dec();
    }
}

/// A connection as hyper reads it, with the first request line checked on the
/// way in: bytes that cannot begin an HTTP/1.1 request are answered 400 (414
/// for a request target that never ends) and the connection is closed at once,
/// instead of hyper waiting for the end of a head that will never come.
struct FirstLine {
    inner: TcpStream,
    check: RequestLineCheck,
    refused: IntCounter,
}

impl FirstLine {
    fn new(inner: TcpStream, refused: IntCounter) -> Self {
        FirstLine {
            inner,
            check: RequestLineCheck::default(),
            refused,
        }
    }
}

impl AsyncRead for FirstLine {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check.is_done() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        match this.check.feed(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(problem) => {
                this.refused.inc();
                let detail = problem.detail.clone();
                // Best effort: a new connection's send buffer takes this at once.
                let _ = Pin::new(&mut this.inner).poll_write(cx, &canned(problem));
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, detail)))
            }
        }
    }
}

impl AsyncWrite for FirstLine {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Longest method token taken (the longest registered method has 17 letters).
const MAX_METHOD: usize = 20;
/// Longest request target taken. Every resource here has a short path.
pub const MAX_TARGET: usize = 4096;
/// Empty lines taken before a request line (RFC 9112 §2.2 allows some).
const MAX_BLANK: usize = 8;
const VERSION: &[u8] = b"HTTP/1.";

/// Checks, byte by byte as they arrive, that a connection begins with a request
/// line `method SP request-target SP HTTP/1.x CRLF` (RFC 9112 §3), so that
/// anything else is refused as soon as a byte gives it away. After the line,
/// hyper parses everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestLineCheck {
    Blank(usize),
    Method(usize),
    Target(usize),
    Version(usize),
    Cr,
    Done,
}

impl Default for RequestLineCheck {
    fn default() -> Self {
        RequestLineCheck::Blank(0)
    }
}

impl RequestLineCheck {
    pub(crate) fn is_done(&self) -> bool {
        *self == RequestLineCheck::Done
    }

    /// Takes the next bytes of the connection; `Err` with the answer if they
    /// cannot be the start of an HTTP/1.1 request.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Problem> {
        use RequestLineCheck::*;
        for &b in bytes {
            *self = match (*self, b) {
                (Done, _) => return Ok(()),
                (Blank(n), b'\r' | b'\n') if n < MAX_BLANK => Blank(n + 1),
                (Blank(_), b) if is_tchar(b) => Method(1),
                (Method(_), b' ') => Target(0),
                (Method(n), b) if is_tchar(b) && n < MAX_METHOD => Method(n + 1),
                (Target(n), b' ') if n > 0 => Version(0),
                (Target(n), b) if is_target_byte(b) => {
                    if n >= MAX_TARGET {
                        return Err(Problem::for_status(
                            StatusCode::URI_TOO_LONG,
                            format!("the request target is longer than {MAX_TARGET} bytes"),
                        ));
                    }
                    Target(n + 1)
                }
                (Version(n), b) if n < VERSION.len() && b == VERSION[n] => Version(n + 1),
                (Version(n), b'0' | b'1') if n == VERSION.len() => Version(n + 1),
                (Version(n), b'\r') if n == VERSION.len() + 1 => Cr,
                (Version(n), b'\n') if n == VERSION.len() + 1 => Done,
                (Cr, b'\n') => Done,
                _ => {
                    return Err(Problem::bad_request(
                        "this is not an HTTP/1.1 request: a request begins with a line like \
                         `POST /whip/room HTTP/1.1`",
                    ))
                }
            };
        }
        Ok(())
    }
}

/// A character of a method token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte of a request target: visible ASCII, or a byte of UTF-8 (which hyper
/// then judges).
fn is_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8]) -> Result<RequestLineCheck, u16> {
        let mut c = RequestLineCheck::default();
        c.feed(bytes).map(|()| c).map_err(|p| p.status)
    }

    #[test]
    fn request_lines_pass_whole_or_in_pieces() {
        for line in [
            &b"POST /whip/room HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n",
            b"\r\nOPTIONS * HTTP/1.1\r\n",
            b"DELETE /whep/r/0123 HTTP/1.1\n",
        ] {
            assert_eq!(check(line), Ok(RequestLineCheck::Done), "{line:?}");
            let mut c = RequestLineCheck::default();
            for b in line {
                c.feed(std::slice::from_ref(b)).expect("byte by byte");
            }
            assert!(c.is_done());
        }
        assert!(matches!(
            check(b"POST /whip/ro"),
            Ok(RequestLineCheck::Target(_))
        ));
        assert!(matches!(check(b"GE"), Ok(RequestLineCheck::Method(2))));
    }

    #[test]
    fn what_is_not_http_is_refused_at_the_first_telling_byte() {
        let long_method = vec![b'A'; 4096];
        let mut long_target = b"GET /".to_vec();
        long_target.extend(std::iter::repeat_n(b'a', MAX_TARGET + 10));
        let cases: [(&[u8], u16); 10] = [
            (&[0x16, 0x03, 0x01, 0x02, 0x00], 400), // TLS ClientHello
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"\x00\x00\x00", 400),
            (&long_method, 400),
            (&long_target, 414),
            (b"GET  / HTTP/1.1\r\n", 400),
            (b"GET /\r\n", 400), // HTTP/0.9
            (b"GET / HTTP/1.1\rX", 400),
            (b"SSH-2.0-OpenSSH_9.6\r\n", 400),
            (b"\r\n\r\n\r\n\r\n\r\n", 400),
        ];
        for (bytes, status) in cases {
            assert_eq!(
                check(bytes),
                Err(status),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn client_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
