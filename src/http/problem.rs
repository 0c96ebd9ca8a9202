//! HTTP errors as problem details (RFC 9457): a status, a short title and a
//! detail sentence a person can act on.
//!
//! Handlers answer with a [`Problem`]; [`ensure_problem`] turns every other
//! error response (axum's own 404, 405 and extractor rejections) into one too.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Seconds for a `Retry-After` header (503).
    #[serde(skip)]
    pub retry_after: Option<u32>,
    /// Close the connection after answering (the rest of the request is not read).
    #[serde(skip)]
    pub close: bool,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
            close: false,
        }
    }

    /// The media shard did not answer a request in time (503, try again).
    pub fn shard_silent() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the media shard did not answer in time; try again",
        )
    }

    /// 401 (no token, or a bad one) or 403 (a good token, not for this), with the
    /// bearer challenge on a 401. The offer's body is not read: the connection
    /// closes.
    pub fn denied(denied: crate::auth::Denied) -> Self {
        let mut problem = match denied {
            crate::auth::Denied::Unauthenticated(why) => {
                Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", why)
            }
            crate::auth::Denied::Forbidden(why) => {
                Self::new(StatusCode::FORBIDDEN, "Forbidden", why)
            }
        };
        problem.close = true;
        problem
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", detail)
    }

    /// 503: try again in `retry_after` seconds.
    pub fn unavailable(detail: impl Into<String>, retry_after: u32) -> Self {
        let mut problem = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            detail,
        );
        problem.retry_after = Some(retry_after);
        problem
    }

    /// 413 for a body above `limit` bytes; the connection closes (the body is not read).
    pub fn too_large(limit: usize) -> Self {
        let mut problem = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content Too Large",
            format!("the body is larger than {limit} bytes (http.max_body_bytes)"),
        );
        problem.close = true;
        problem
    }

    /// The status's own title, for statuses we did not name ourselves.
    pub fn for_status(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::new(status, status.canonical_reason().unwrap_or("Error"), detail)
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED.as_u16() {
            // The bearer challenge of a 401 (RFC 6750): only tokens are asked for.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
        }
        response
    }
}

const PROBLEM_JSON: &str = "application/problem+json";

/// Longest error body of axum's kept as the problem's detail.
const DETAIL_LIMIT: usize = 1024;

/// Middleware: an error response (4xx, 5xx) that is not a problem already
/// becomes one, keeping its status and headers (`Allow` on a 405) and using its
/// text, if any, as the detail.
pub async fn ensure_problem(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = shorten(request.uri().path(), 200);
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, DETAIL_LIMIT)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .unwrap_or("none");
            format!("{method} is not allowed on {path}; allowed: {allowed}")
        }
        StatusCode::NOT_FOUND if text.is_none() => format!("nothing at {method} {path}"),
        _ => text.unwrap_or_else(|| {
            format!(
                "{method} {path}: {}",
                status.canonical_reason().unwrap_or("error")
            )
        }),
    };
    let problem = Problem::for_status(status, detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(problem.to_json())
    };
    Response::from_parts(parts, body)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
