//! WHIP (RFC 9725) and WHEP sessions: they share one shape. `POST` an offer to
//! the room's endpoint to create a session resource; `PATCH` it for trickle ICE
//! or an ICE restart; `DELETE` it to end the session.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use str0m::change::SdpOffer;
use str0m::Candidate;
use tokio::sync::oneshot;

use super::problem::Problem;
use super::{sdpfrag, AppState};
use crate::config::HttpConfig;
use crate::metrics::client_family;
use crate::peer::{offer, AcceptError, Participant, PeerKey, Role};
use crate::room::{CapReached, SeatRefused, SessionCaps, SessionEntry};
use crate::router::slots::ViewerNews;
use crate::router::RoomId;
use crate::shard::{AcceptRequest, Command, PatchOutcome, DELETED_BY_CLIENT};

/// How long an HTTP request waits for a shard's answer.
pub(super) const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` when the session caps are reached or a shard is busy, in seconds.
const RETRY_AFTER: u32 = 5;
/// The reason a shard logs for a session whose offer's request ended (timed
/// out, or the client went away) before the session was created.
const OFFER_ABANDONED: &str = "the offer's HTTP request ended before the session was created";

pub fn endpoint(role: Role) -> &'static str {
    match role {
        Role::Publisher => "whip",
        Role::Viewer => "whep",
    }
}

pub async fn post_whip(
    state: State<Arc<AppState>>,
    room: Path<String>,
    request: Request<Body>,
) -> Response {
    post_offer(Role::Publisher, state, room, request).await
}

pub async fn post_whep(
    state: State<Arc<AppState>>,
    room: Path<String>,
    request: Request<Body>,
) -> Response {
    post_offer(Role::Viewer, state, room, request).await
}

pub async fn delete_whip(state: State<Arc<AppState>>, path: Path<(String, String)>) -> Response {
    delete_session(Role::Publisher, state, path).await
}

pub async fn delete_whep(state: State<Arc<AppState>>, path: Path<(String, String)>) -> Response {
    delete_session(Role::Viewer, state, path).await
}

pub async fn patch_whip(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    patch_session(Role::Publisher, state, path, request).await
}

pub async fn patch_whep(
    state: State<Arc<AppState>>,
    path: Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    patch_session(Role::Viewer, state, path, request).await
}

async fn post_offer(
    role: Role,
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    request: Request<Body>,
) -> Response {
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Unknown only when the router is served without `serve` (then all share one cap).
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| super::serve::client_key(addr.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match create_session(role, &state, &room, client, request).await {
        Ok(response) => response,
        Err(problem) => {
            let client = client_family(&user_agent);
            state
                .metrics
                .offers_refused
                .with_label_values(&[endpoint(role), client, &problem.status.to_string()])
                .inc();
            tracing::warn!(
                endpoint = endpoint(role),
                room = %room,
                status = problem.status,
                client,
                user_agent = %user_agent,
                reason = %problem.detail,
                "offer refused"
            );
            problem.into_response()
        }
    }
}

/// Why a publisher session is ended when its participant publishes again.
const REPLACED: &str = "replaced by a newer session of the same participant";

/// An offer on its way to becoming a session. It holds a session slot (and,
/// for a publisher, the room's seat) from before it goes to a shard until the
/// session is created. Dropped before that (refused, timed out, or the request
/// abandoned when the client went away), it frees both, and if the shard may
/// still accept it, tells the shard to end it: an accept that finishes late
/// leaves nothing behind.
struct PendingOffer<'a> {
    state: &'a AppState,
    key: PeerKey,
    room: RoomId,
    role: Role,
    /// The shard that may still create the session.
    shard: Option<usize>,
    created: bool,
}

impl Drop for PendingOffer<'_> {
    fn drop(&mut self) {
        if self.created {
            return;
        }
        if let Some(shard) = self.shard {
            // After the Accept in the same inbox, so it ends what the Accept made.
            self.state.shards[shard].send(Command::End {
                key: self.key,
                reason: OFFER_ABANDONED,
                reply: None,
            });
        }
        self.state
            .registry
            .remove_session(self.key, &self.room, self.role);
    }
}

/// An identity or display name: 1 to 64 characters, no control characters (they
/// go into logs and events).
pub(super) fn fits_identity(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control)
}

/// The `participant` (and `name`) query parameters of an offer, checked.
fn participant_query(uri: &axum::http::Uri) -> Result<Option<(String, Option<String>)>, Problem> {
    #[derive(serde::Deserialize)]
    struct Asked {
        participant: Option<String>,
        name: Option<String>,
    }
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let asked: Asked = serde_urlencoded::from_str(query)
        .map_err(|e| Problem::bad_request(format!("the query is not valid: {e}")))?;
    match asked.participant {
        None => Ok(None),
        Some(identity)
            if fits_identity(&identity) && asked.name.as_deref().is_none_or(fits_identity) =>
        {
            Ok(Some((identity, asked.name)))
        }
        Some(_) => Err(Problem::bad_request(
            "participant and name must be 1 to 64 characters, none of them control characters",
        )),
    }
}

/// With auth on: the offer's bearer token must grant `role` in `room`. Answers
/// the token's claims, if auth is on.
fn authorize_offer(
    state: &AppState,
    role: Role,
    room: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Option<crate::auth::Claims>, Problem> {
    let Some(claims) = state.bearer_claims(headers)? else {
        return Ok(None);
    };
    if !fits_identity(&claims.sub) || !claims.name.as_deref().is_none_or(fits_identity) {
        return Err(Problem::denied(crate::auth::Denied::Unauthenticated(
            "the token's sub and name must be 1 to 64 characters, none of them control characters"
                .into(),
        )));
    }
    let grant = match role {
        Role::Publisher => crate::auth::Grant::Publish,
        // A token that grants only `data` joins with a data channel alone: the
        // offer is checked for that once it is read.
        Role::Viewer if !claims.subscribe && claims.data => crate::auth::Grant::Data,
        Role::Viewer => crate::auth::Grant::Subscribe,
    };
    crate::auth::authorize(&claims, room, grant).map_err(Problem::denied)?;
    Ok(Some(claims))
}

async fn create_session(
    role: Role,
    state: &Arc<AppState>,
    room: &str,
    client: IpAddr,
    request: Request<Body>,
) -> Result<Response, Problem> {
    if state.is_draining() {
        return Err(Problem::unavailable(
            "the server is shutting down (draining); try again to reach another instance",
            super::DRAIN_RETRY_AFTER,
        ));
    }
    check_room_name(room)?;
    let token = authorize_offer(state, role, room, request.headers())?;
    let asked = participant_query(request.uri())?;
    require_content_type(request.headers(), "application/sdp")?;
    let text = read_body(request.into_body(), &state.config.http).await?;
    let offer = SdpOffer::from_sdp_string(&text)
        .map_err(|e| Problem::bad_request(offer::describe_parse_error(&text, &e.to_string())))?;

    let room: RoomId = room.into();
    let key = PeerKey::random();
    // The token's identity when auth is on; else the one asked for; else the
    // session's own.
    let data_only_token = token.as_ref().is_some_and(|c| !c.subscribe);
    let authenticated = token.is_some();
    let (identity, name, may_send_data) = match (token, asked) {
        (Some(claims), _) => (claims.sub, claims.name, claims.data),
        (None, Some((identity, name))) => (identity, name, true),
        (None, None) => (key.to_string(), None, true),
    };
    let participant = Participant {
        identity: identity.into(),
        name: name.map(Into::into),
        may_send_data,
    };
    let caps = SessionCaps {
        total: state.config.session.max_sessions,
        per_client: state.config.session.max_sessions_per_ip,
    };
    if let Err(reached) = state.registry.reserve_slot(key, client, caps) {
        let (scope, detail) = match reached {
            CapReached::Server => (
                "server",
                format!(
                    "the server holds its maximum of {} sessions (session.max_sessions); try again later",
                    caps.total
                ),
            ),
            CapReached::Client => (
                "client",
                format!(
                    "your address holds its maximum of {} sessions (session.max_sessions_per_ip); \
                     DELETE one or try again later",
                    caps.per_client
                ),
            ),
        };
        state
            .metrics
            .session_cap_refusals
            .with_label_values(&[scope])
            .inc();
        return Err(Problem::unavailable(detail, RETRY_AFTER));
    }
    let mut pending = PendingOffer {
        state,
        key,
        room: room.clone(),
        role,
        shard: None,
        created: false,
    };
    let summary = offer::summarize(&text);
    if role == Role::Viewer && data_only_token && offer::has_av(&summary) {
        return Err(Problem::denied(crate::auth::Denied::Forbidden(
            "the token grants `data` but not `subscribe`: offer a data channel only".into(),
        )));
    }
    let (preferred_video, simulcast) = match role {
        Role::Publisher => (
            offer::first_sent_video_codec(&summary),
            offer::sends_simulcast(&summary),
        ),
        Role::Viewer => state
            .registry
            .room(&room)
            .map(|r| (r.video_codec(), r.any_simulcast()))
            .unwrap_or((None, false)),
    };
    // A participant publishes once per room. An authenticated identity (a token's)
    // replaces its older session, as a reconnecting client needs; a claimed one
    // (`?participant=`) cannot end somebody else's session: 409.
    let replaces = match role {
        Role::Publisher => {
            let max = state.config.session.max_publishers_per_room;
            let replace = authenticated;
            state
                .registry
                .claim_publisher(&room, key, &participant.identity, max, replace)
                .map_err(|refused| {
                    let detail = match refused {
                        SeatRefused::RoomFull(max) => format!(
                            "room `{room}` holds its maximum of {max} publishers \
                             (session.max_publishers_per_room); one must leave first"
                        ),
                        SeatRefused::AlreadyPublishing => format!(
                            "participant `{}` already publishes in room `{room}`; DELETE that \
                             session first (with a token, a new session replaces it)",
                            participant.identity
                        ),
                    };
                    Problem::new(StatusCode::CONFLICT, "Conflict", detail)
                })?
        }
        Role::Viewer => Vec::new(),
    };
    let shard = state.next_shard.fetch_add(1, Ordering::Relaxed) % state.shards.len();
    let (reply, answer) = oneshot::channel();
    // A viewer's slots and the room's tracks, told by its shard to its events stream.
    let (news, news_rx) = match role {
        Role::Viewer => {
            let (tx, rx) = tokio::sync::watch::channel(ViewerNews::default());
            (Some(tx), Some(rx))
        }
        Role::Publisher => (None, None),
    };
    let request = AcceptRequest {
        key,
        role,
        room: room.clone(),
        offer,
        offer_text: text,
        preferred_video,
        estimate_bandwidth: simulcast,
        participant: participant.clone(),
        news,
        reply,
    };
    if !state.shards[shard].send(Command::Accept(Box::new(request))) {
        return Err(Problem::unavailable(
            "the media shard is busy; try again",
            RETRY_AFTER,
        ));
    }
    pending.shard = Some(shard);
    let reply = tokio::time::timeout(SHARD_REPLY_TIMEOUT, answer)
        .await
        .ok()
        .and_then(Result::ok);
    let answer = match reply {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => {
            // The shard refused the offer: it holds nothing for it.
            pending.shard = None;
            return Err(match e {
                AcceptError::Unusable(why) => Problem::bad_request(why),
                e @ AcceptError::Negotiation(_) => Problem::bad_request(e.to_string()),
            });
        }
        None => {
            return Err(Problem::unavailable(
                "the media shard did not answer in time; try again",
                RETRY_AFTER,
            ))
        }
    };
    if role == Role::Publisher {
        state
            .registry
            .set_publisher_media(&room, key, preferred_video, simulcast);
    }
    let etag = new_etag();
    let registered = state.registry.add_session(
        key,
        SessionEntry {
            room: room.clone(),
            role,
            shard,
            etag: etag.clone(),
            created: Instant::now(),
            participant: Arc::clone(&participant.identity),
            name: participant.name.clone(),
            news: news_rx,
        },
    );
    if !registered {
        return Err(Problem::unavailable(
            "the session ended as it started; try again",
            RETRY_AFTER,
        ));
    }
    pending.created = true;
    tracing::info!(session = %key, room = %room, role = role.as_str(), shard, participant = %participant.identity, "session created");
    for old in replaces {
        // The participant published again (a reconnect): its old session goes.
        // One still being accepted is dropped by its shard if that has not checked
        // the seat yet (a narrow window remains where it was checked but the
        // session is not registered here yet: then it is not ended).
        if let Some(entry) = state.registry.session(old) {
            tracing::info!(session = %old, room = %room, participant = %participant.identity, "publisher replaced by the participant's new session");
            state.shards[entry.shard].send(Command::End {
                key: old,
                reason: REPLACED,
                reply: None,
            });
        }
    }

    let location = format!("/{}/{}/{}", endpoint(role), room, key);
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    insert_header(headers, header::LOCATION, &location);
    insert_header(headers, header::ETAG, &etag);
    state.add_link_headers(headers);
    if role == Role::Viewer {
        let events = format!(
            "<{location}/events>; rel=\"{}\"; events=\"{}\"",
            super::events::REL,
            super::events::EVENTS.join(",")
        );
        if let Ok(v) = HeaderValue::from_str(&events) {
            headers.append(header::LINK, v);
        }
        let layer = format!("<{location}/layer>; rel=\"{}\"", super::layer::REL);
        if let Ok(v) = HeaderValue::from_str(&layer) {
            headers.append(header::LINK, v);
        }
    }
    Ok(response)
}

async fn delete_session(
    role: Role,
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
) -> Response {
    let (key, entry) = match find_session(&state, role, &room, &session) {
        Ok(found) => found,
        Err(problem) => {
            // Ended by the server already (the client closed the connection
            // first, as OBS does, or it was reaped): the DELETE still succeeds.
            let ended =
                PeerKey::parse(&session).is_some_and(|k| state.registry.take_ended(k, &room, role));
            if ended {
                return StatusCode::OK.into_response();
            }
            return problem.into_response();
        }
    };
    end_sessions(&state, &[(key, entry)], DELETED_BY_CLIENT).await;
    StatusCode::OK.into_response()
}

/// Ends `sessions` on their shards for `reason`, waiting a moment for each to
/// confirm, and frees their registry entries (the shard does, but they must be
/// gone even if it did not answer). Answers how many there were.
pub(super) async fn end_sessions(
    state: &AppState,
    sessions: &[(PeerKey, SessionEntry)],
    reason: &'static str,
) -> usize {
    let mut waits = Vec::with_capacity(sessions.len());
    for (key, entry) in sessions {
        let (reply, ended) = oneshot::channel();
        let command = Command::End {
            key: *key,
            reason,
            reply: Some(reply),
        };
        if state
            .shards
            .get(entry.shard)
            .is_some_and(|s| s.send(command))
        {
            waits.push(ended);
        }
    }
    for ended in waits {
        let _ = tokio::time::timeout(SHARD_REPLY_TIMEOUT, ended).await;
    }
    for (key, entry) in sessions {
        state.registry.remove_session(*key, &entry.room, entry.role);
    }
    sessions.len()
}

async fn patch_session(
    role: Role,
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    match patch(role, &state, &room, &session, request).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn patch(
    role: Role,
    state: &Arc<AppState>,
    room: &str,
    session: &str,
    request: Request<Body>,
) -> Result<Response, Problem> {
    let (key, entry) = find_session(state, role, room, session)?;
    require_content_type(request.headers(), "application/trickle-ice-sdpfrag")?;
    if let Some(if_match) = request.headers().get(header::IF_MATCH) {
        let value = if_match.to_str().unwrap_or("");
        if value != "*" && value != entry.etag {
            return Err(Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "Precondition Failed",
                format!(
                    "If-Match {value} does not match the session's ETag {}",
                    entry.etag
                ),
            ));
        }
    }
    let body = read_body(request.into_body(), &state.config.http).await?;
    let frag = sdpfrag::parse(&body);

    let mut candidates = Vec::new();
    for line in &frag.candidates {
        match Candidate::from_sdp_string(line) {
            Ok(c) => candidates.push(c),
            Err(e) => {
                tracing::debug!(session = %key, candidate = %line, error = %e, "trickled candidate ignored")
            }
        }
    }
    let credentials = frag.ufrag.zip(frag.pwd);
    let outcome = super::ask_shard(
        state,
        entry.shard,
        |reply| Command::Patch {
            key,
            credentials,
            candidates,
            reply,
        },
        SHARD_REPLY_TIMEOUT,
    )
    .await;
    match outcome {
        Some(PatchOutcome::Trickled) => {}
        Some(PatchOutcome::Restarted(fragment)) => {
            // The ETag names the ICE session (RFC 9725 §4.4): a restart starts a
            // new one, so a PATCH still naming the old one gets 412.
            let etag = new_etag();
            if !state.registry.set_etag(key, &etag) {
                return Err(Problem::not_found("the session has ended"));
            }
            let mut response = (StatusCode::OK, fragment).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
            insert_header(headers, header::ETAG, &etag);
            return Ok(response);
        }
        Some(PatchOutcome::Failed(e)) => {
            return Err(Problem::bad_request(format!("ICE restart failed: {e}")))
        }
        Some(PatchOutcome::Gone) => return Err(Problem::not_found("the session has ended")),
        None => return Err(Problem::shard_silent()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A strong entity tag naming a session's current ICE session.
fn new_etag() -> String {
    format!("\"{:016x}\"", rand::random::<u64>())
}

fn find_session(
    state: &AppState,
    role: Role,
    room: &str,
    session: &str,
) -> Result<(PeerKey, SessionEntry), Problem> {
    let unknown = || {
        Problem::not_found(format!(
            "no {} session `{session}` in room `{room}`",
            endpoint(role)
        ))
    };
    let key = PeerKey::parse(session).ok_or_else(unknown)?;
    let entry = state.registry.session(key).ok_or_else(unknown)?;
    if entry.role != role || &*entry.room != room {
        return Err(unknown());
    }
    Ok((key, entry))
}

fn check_room_name(room: &str) -> Result<(), Problem> {
    let ok = !room.is_empty()
        && room.len() <= 128
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(
            "a room name is 1 to 128 characters of letters, digits, '-', '_', '.' or '~'",
        ))
    }
}

pub(super) fn require_content_type(
    headers: &HeaderMap,
    wanted: &'static str,
) -> Result<(), Problem> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(wanted) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            format!(
                "the body must be sent as Content-Type: {wanted} (got {})",
                if given.is_empty() { "none" } else { given }
            ),
        ))
    }
}

/// Reads a whole body of at most `http.max_body_bytes` within
/// `http.body_read_timeout`: 413 above the size, 408 past the time, 400 if it
/// cannot be read (a malformed chunked encoding, the client went away).
pub(super) async fn read_body(body: Body, http: &HttpConfig) -> Result<String, Problem> {
    let limit = http.max_body_bytes;
    let timeout = http.body_read_timeout;
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let bytes = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Problem::too_large(limit))
        }
        Ok(Err(e)) => {
            let mut problem =
                Problem::bad_request(format!("the request body could not be read: {e}"));
            problem.close = true;
            return Err(problem);
        }
        Err(_) => {
            let mut problem = Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout",
                format!(
                    "the body did not arrive within {} s (http.body_read_timeout)",
                    timeout.as_secs_f64()
                ),
            );
            problem.close = true;
            return Err(problem);
        }
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Problem::bad_request("the body is not UTF-8 text"))
}

fn insert_header(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}
