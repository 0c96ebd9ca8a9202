//! Plain HTTP helpers for WHIP/WHEP (reqwest, loopback only).

use std::net::SocketAddr;
use std::time::Duration;

pub use reqwest::header::HeaderMap;
use reqwest::Method;

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    /// A header as a string ("" when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| format!("reqwest client: {e}"))
}

/// The URL of `path` (which starts with '/') on the server; absolute URLs are kept.
pub fn url(addr: SocketAddr, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        path.to_string()
    } else {
        format!("http://{addr}{path}")
    }
}

/// Sends one request and reads the whole response.
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response, String> {
    let mut req = client()?.request(method.clone(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("{method} {url}: reading body: {e}"))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A request with the bearer `token` (if any) and a body of `content_type` (if any).
pub async fn request_with_token(
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Response, String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let body = body.map(|(content_type, bytes)| {
        headers.push(("Content-Type", content_type));
        bytes
    });
    request(method, url, &headers, body).await
}

/// POST with a content type.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Result<Response, String> {
    request(
        Method::POST,
        &url(addr, path),
        &[("Content-Type", content_type)],
        Some(body.into()),
    )
    .await
}

/// DELETE a resource (path or absolute URL).
pub async fn delete(addr: SocketAddr, path: &str) -> Result<Response, String> {
    request(Method::DELETE, &url(addr, path), &[], None).await
}

/// A CORS preflight for a POST with an SDP body.
pub async fn preflight(addr: SocketAddr, path: &str) -> Result<Response, String> {
    request(
        Method::OPTIONS,
        &url(addr, path),
        &[
            ("Origin", "http://127.0.0.1:9"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    )
    .await
}

/// Checks that `resp` is an RFC 9457 problem with the given status, and returns
/// its JSON body.
pub fn expect_problem(resp: &Response, status: u16) -> Result<serde_json::Value, String> {
    if resp.status != status {
        return Err(format!(
            "expected status {status}, got {} (content-type {:?}, body {:?})",
            resp.status,
            resp.header("content-type"),
            resp.body
        ));
    }
    let ct = resp.header("content-type");
    if !ct.starts_with("application/problem+json") {
        return Err(format!(
            "status {status}: content-type is {ct:?}, not application/problem+json (body {:?})",
            resp.body
        ));
    }
    let v: serde_json::Value = serde_json::from_str(&resp.body)
        .map_err(|e| format!("status {status}: body is not JSON ({e}): {:?}", resp.body))?;
    if v.get("status").and_then(|s| s.as_u64()) != Some(u64::from(status)) {
        return Err(format!(
            "problem body's \"status\" is not {status}: {}",
            resp.body
        ));
    }
    for key in ["title", "detail"] {
        match v.get(key).and_then(|s| s.as_str()) {
            Some(s) if !s.trim().is_empty() => {}
            _ => {
                return Err(format!(
                    "problem body has no non-empty {key:?}: {}",
                    resp.body
                ))
            }
        }
    }
    Ok(v)
}

/// A WHEP session's server-sent events, read as they come.
pub struct Events {
    response: reqwest::Response,
    /// Everything read so far.
    pub seen: String,
}

impl Events {
    /// Opens the events stream of the WHEP session at `location`.
    pub async fn open(addr: SocketAddr, location: &str) -> Result<Events, String> {
        let response = client()?
            .get(url(addr, &format!("{location}/events")))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| format!("events: {e}"))?;
        Ok(Events {
            response,
            seen: String::new(),
        })
    }

    /// Reads until `done(seen)`; an error after `limit`.
    pub async fn until(
        &mut self,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None)) => return Err(format!("the stream ended: {}", self.seen)),
                Ok(Err(e)) => return Err(format!("the stream failed: {e}: {}", self.seen)),
                Err(_) => return Err(format!("the events did not come: {}", self.seen)),
            }
        }
        Ok(())
    }

    /// The data of every `event` seen so far, as JSON.
    pub fn all(&self, event: &str) -> Vec<serde_json::Value> {
        events_in(&self.seen, event)
    }
}

/// The data of every `event` in a server-sent events text, as JSON.
pub fn events_in(seen: &str, event: &str) -> Vec<serde_json::Value> {
    let marker = format!("event: {event}\ndata: ");
    seen.split("\n\n")
        .filter_map(|block| {
            block
                .trim_start_matches(':')
                .trim_start()
                .strip_prefix(&marker)
        })
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect()
}
