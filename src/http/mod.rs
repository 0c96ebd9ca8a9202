//! The HTTP side: WHIP and WHEP session resources, the demo page, metrics.
//! Handlers never touch media state; they talk to shards through commands.

mod events;
mod layer;
pub(crate) mod pins;
mod problem;
mod rooms;
mod sdpfrag;
mod serve;
mod session;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use problem::Problem;
pub use serve::serve;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::room::Registry;
use crate::shard::ShardHandle;

pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub shards: Vec<ShardHandle>,
    pub next_shard: AtomicUsize,
    /// Checks offers' bearer tokens (`None`: auth is off).
    pub verifier: Option<Arc<crate::auth::Verifier>>,
    /// The server is shutting down: no new sessions, the running ones keep going.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// With auth on, the verified claims of the request's bearer token (a 401
    /// problem without a good one); `Ok(None)` with auth off.
    pub fn bearer_claims(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<crate::auth::Claims>, problem::Problem> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        verifier
            .verify(authorization)
            .map(Some)
            .map_err(problem::Problem::denied)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What a client is told to wait before trying again while the server drains
/// (a load balancer has taken it out by then).
pub const DRAIN_RETRY_AFTER: u32 = 5;

impl AppState {
    /// `Link` headers advertising the configured STUN/TURN servers (RFC 9725 §4.6).
    fn add_link_headers(&self, headers: &mut HeaderMap) {
        for server in &self.config.ice.servers {
            let mut value = format!("<{}>; rel=\"ice-server\"", server.url);
            if let Some(user) = &server.username {
                value.push_str(&format!("; username=\"{user}\""));
            }
            if let Some(credential) = &server.credential {
                value.push_str(&format!(
                    "; credential=\"{credential}\"; credential-type=\"password\""
                ));
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(header::LINK, v);
            }
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/conference.js", get(conference_js))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/whip/{room}", post(session::post_whip).options(options))
        .route(
            "/whip/{room}/{session}",
            axum::routing::delete(session::delete_whip)
                .patch(session::patch_whip)
                .options(options),
        )
        .route("/whep/{room}", post(session::post_whep).options(options))
        .route(
            "/whep/{room}/{session}/layer",
            get(layer::get_layer)
                .post(layer::post_layer)
                .options(options),
        )
        .route(
            "/whep/{room}/{session}/pins",
            get(pins::get_pins).put(pins::put_pins).options(options),
        )
        .route(
            "/whep/{room}/{session}/events",
            get(events::stream).post(events::subscribe).options(options),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::delete(session::delete_whep)
                .patch(session::patch_whep)
                .options(options),
        )
        .route("/rooms", get(rooms::list))
        .route("/rooms/{room}", get(rooms::show).delete(rooms::close))
        .route(
            "/rooms/{room}/participants/{identity}",
            axum::routing::delete(rooms::remove_participant),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), count_request))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), body_limit))
        .layer(middleware::from_fn(problem::ensure_problem))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../../static/index.html"))
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/app.js"),
    )
        .into_response()
}

async fn conference_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/conference.js"),
    )
        .into_response()
}

/// One request to a shard and its answer: `make` builds the command around the
/// reply channel. `None` when the shard did not answer within `timeout` (or
/// dropped the reply).
pub(super) async fn ask_shard<T>(
    state: &AppState,
    shard: usize,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> crate::shard::Command,
    timeout: std::time::Duration,
) -> Option<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.shards.get(shard)?.send(make(reply));
    tokio::time::timeout(timeout, answer).await.ok()?.ok()
}

/// How long a shard has to answer the readiness ping.
const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// `/readyz`: every shard's loop answered a ping within its deadline. (`/healthz`
/// only says the process is alive.)
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        return Problem::unavailable("draining: the server is shutting down", DRAIN_RETRY_AFTER)
            .into_response();
    }
    let pings = state.shards.iter().map(|s| s.ping(READY_DEADLINE));
    let answers = futures_util::future::join_all(pings).await;
    let silent: Vec<String> = answers
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .map(|(i, _)| i.to_string())
        .collect();
    if silent.is_empty() {
        return "ready\n".into_response();
    }
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        format!(
            "media shard(s) {} did not answer within {READY_DEADLINE:?}",
            silent.join(", ")
        ),
    )
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .sessions_active
        .set(state.registry.session_count() as i64);
    let tables = state.registry.table_sizes();
    state.metrics.rooms.set(tables.rooms as i64);
    for (table, size) in [
        ("rooms", tables.rooms),
        ("sessions", tables.sessions),
        ("live_channels", tables.live),
        ("ended_sessions", tables.ended),
        ("session_slots", tables.slots),
        ("session_slot_clients", tables.slot_clients),
    ] {
        state
            .metrics
            .registry_entries
            .with_label_values(&[table])
            .set(size as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts each request routed, by its route template (never the room or session
/// itself: the label set stays bounded) and status.
async fn count_request(
    State(state): State<Arc<AppState>>,
    route: axum::extract::MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    Problem::not_found(format!("nothing at {method} {}", uri.path())).into_response()
}

/// A body announced (`Content-Length`) larger than `http.max_body_bytes` is
/// refused before any of it is read; a longer body sent without a length is cut
/// off where it is read.
async fn body_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.config.http.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Problem::too_large(limit).into_response();
    }
    next.run(request).await
}

/// `OPTIONS`: CORS preflight, and what WHIP clients read before posting.
async fn options(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "content-type, authorization, if-match",
        ));
    out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    out.insert(
        HeaderName::from_static("accept-post"),
        HeaderValue::from_static("application/sdp"),
    );
    out.insert(
        HeaderName::from_static("accept-patch"),
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    state.add_link_headers(out);
    response
}

/// Every response may be read by a page on another origin (a WHIP/WHEP player).
async fn cors(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(&state.config.http.cors_allow_origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Post, Accept-Patch"),
    );
    response
}
