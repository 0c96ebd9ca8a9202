//! WHIP (RFC 9725) and WHEP sessions: they share one shape. `POST` an offer to
//! the room's endpoint to create a session resource; `PATCH` it for trickle ICE
//! or an ICE restart; `DELETE` it to end the session.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use str0m::change::SdpOffer;
use str0m::Candidate;
use tokio::sync::oneshot;

use super::problem::Problem;
use super::{sdpfrag, AppState};
use crate::metrics::client_family;
use crate::peer::{offer, AcceptError, PeerKey, Role};
use crate::room::SessionEntry;
use crate::router::RoomId;
use crate::shard::{AcceptRequest, Command, PatchOutcome, DELETED_BY_CLIENT};

/// How long an HTTP request waits for a shard's answer.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

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
    match create_session(role, &state, &room, request).await {
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

async fn create_session(
    role: Role,
    state: &Arc<AppState>,
    room: &str,
    request: Request<Body>,
) -> Result<Response, Problem> {
    check_room_name(room)?;
    require_content_type(request.headers(), "application/sdp")?;
    let text = read_body(request.into_body(), state.config.http.max_body_bytes).await?;
    let offer = SdpOffer::from_sdp_string(&text)
        .map_err(|e| Problem::bad_request(offer::describe_parse_error(&text, &e.to_string())))?;

    let room: RoomId = room.into();
    let key = PeerKey::random();
    let preferred_video = match role {
        Role::Publisher => offer::first_sent_video_codec(&offer::summarize(&text)),
        Role::Viewer => state.registry.room(&room).and_then(|r| r.publisher_video),
    };
    if role == Role::Publisher {
        state.registry.claim_publisher(&room, key).map_err(|_| {
            Problem::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("room `{room}` already has a publisher; DELETE that session first or publish to another room"),
            )
        })?;
    }
    let shard = state.next_shard.fetch_add(1, Ordering::Relaxed) % state.shards.len();
    let (reply, answer) = oneshot::channel();
    let request = AcceptRequest {
        key,
        role,
        room: room.clone(),
        offer,
        offer_text: text,
        preferred_video,
        reply,
    };
    let sent = state.shards[shard].send(Command::Accept(Box::new(request)));
    let reply = match sent {
        true => tokio::time::timeout(SHARD_REPLY_TIMEOUT, answer)
            .await
            .ok()
            .and_then(Result::ok),
        false => None,
    };
    let answer = match reply {
        Some(Ok(answer)) => answer,
        other => {
            state.registry.remove_session(key, &room, role);
            return Err(match other {
                Some(Err(AcceptError::Unusable(why))) => Problem::bad_request(why),
                Some(Err(e @ AcceptError::Negotiation(_))) => Problem::bad_request(e.to_string()),
                _ => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                    "the media shard did not answer in time; try again",
                ),
            });
        }
    };
    if role == Role::Publisher {
        state.registry.set_publisher_video(&room, preferred_video);
    }
    let etag = format!("\"{:016x}\"", rand::random::<u64>());
    state.registry.add_session(
        key,
        SessionEntry {
            room: room.clone(),
            role,
            shard,
            etag: etag.clone(),
            created: Instant::now(),
        },
    );
    tracing::info!(session = %key, room = %room, role = role.as_str(), shard, "session created");

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
            "<{location}/events>; rel=\"{}\"; events=\"active,inactive\"",
            super::events::REL
        );
        if let Ok(v) = HeaderValue::from_str(&events) {
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
    let (reply, ended) = oneshot::channel();
    let command = Command::End {
        key,
        reason: DELETED_BY_CLIENT,
        reply: Some(reply),
    };
    if state.shards[entry.shard].send(command) {
        let _ = tokio::time::timeout(SHARD_REPLY_TIMEOUT, ended).await;
    }
    // The shard removes the registry entry; make sure it is gone even if it did not answer.
    state.registry.remove_session(key, &entry.room, role);
    StatusCode::OK.into_response()
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
    let body = read_body(request.into_body(), state.config.http.max_body_bytes).await?;
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
    let (reply, outcome) = oneshot::channel();
    state.shards[entry.shard].send(Command::Patch {
        key,
        credentials: frag.ufrag.zip(frag.pwd),
        candidates,
        reply,
    });
    match tokio::time::timeout(SHARD_REPLY_TIMEOUT, outcome).await {
        Ok(Ok(PatchOutcome::Trickled)) => {}
        Ok(Ok(PatchOutcome::Restarted(fragment))) => {
            let mut response = (StatusCode::OK, fragment).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
            insert_header(headers, header::ETAG, &entry.etag);
            return Ok(response);
        }
        Ok(Ok(PatchOutcome::Failed(e))) => {
            return Err(Problem::bad_request(format!("ICE restart failed: {e}")))
        }
        Ok(Ok(PatchOutcome::Gone)) => return Err(Problem::not_found("the session has ended")),
        _ => {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "the media shard did not answer in time; try again",
            ))
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
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

fn require_content_type(headers: &HeaderMap, wanted: &'static str) -> Result<(), Problem> {
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

async fn read_body(body: Body, limit: usize) -> Result<String, Problem> {
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content Too Large",
            format!("the body is larger than {limit} bytes (http.max_body_bytes)"),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Problem::bad_request("the body is not UTF-8 text"))
}

fn insert_header(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}
