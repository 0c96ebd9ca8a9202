//! The room API (JSON), for the backend that runs the meetings:
//!
//! - `GET /rooms`: every room with its participant and session counts;
//! - `GET /rooms/{room}`: its participants and their sessions, its publisher's
//!   track, and how many watch;
//! - `DELETE /rooms/{room}/participants/{identity}`: ends that participant's
//!   sessions;
//! - `DELETE /rooms/{room}`: ends every session of the room.
//!
//! With auth on, each request needs a bearer token with the `admin` grant for
//! the room (a pattern such as `*` covers every room; `GET /rooms` lists only the
//! rooms the token covers). With auth off the two `GET`s answer anyone (as anyone
//! may publish), but nothing can be removed: ending other people's sessions
//! needs an admin token. Session keys are never shown: they are what a session's
//! own requests (DELETE, PATCH, layer, events) are authorized by.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::problem::Problem;
use super::AppState;
use crate::auth::{self, Grant};
use crate::peer::{PeerKey, Role};
use crate::room::SessionEntry;

/// Why the shard ends a session the room API removed.
pub const REMOVED_BY_API: &str = "removed through the room API";

/// `GET /rooms`.
pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let scope = match admin_scope(&state, &headers, None) {
        Ok(scope) => scope,
        Err(problem) => return problem.into_response(),
    };
    let mut rooms: BTreeMap<String, Vec<SessionEntry>> = BTreeMap::new();
    for (_, entry) in state.registry.sessions_in(None) {
        if scope
            .as_deref()
            .is_none_or(|p| auth::room_matches(p, &entry.room))
        {
            rooms.entry(entry.room.to_string()).or_default().push(entry);
        }
    }
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|(room, sessions)| {
            let mut participants: Vec<&str> = sessions.iter().map(|s| &*s.participant).collect();
            participants.sort_unstable();
            participants.dedup();
            let count = |role| sessions.iter().filter(|s| s.role == role).count();
            json!({
                "room": room,
                "participants": participants.len(),
                "publishers": count(Role::Publisher),
                "viewers": count(Role::Viewer),
            })
        })
        .collect();
    axum::Json(json!({ "rooms": rooms })).into_response()
}

/// `GET /rooms/{room}`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(problem) = admin_scope(&state, &headers, Some(&room)) {
        return problem.into_response();
    }
    let sessions = state.registry.sessions_in(Some(&room));
    if sessions.is_empty() {
        return Problem::not_found(format!("room `{room}` has no sessions")).into_response();
    }
    let mut participants: BTreeMap<&str, (Option<&str>, Vec<Value>)> = BTreeMap::new();
    for (_, entry) in &sessions {
        let p = participants
            .entry(&entry.participant)
            .or_insert((entry.name.as_deref(), Vec::new()));
        p.1.push(json!({
            "role": entry.role.as_str(),
            "connectedForSecs": entry.created.elapsed().as_secs(),
        }));
    }
    let participants: Vec<Value> = participants
        .into_iter()
        .map(|(identity, (name, sessions))| {
            json!({ "identity": identity, "name": name, "sessions": sessions })
        })
        .collect();
    let entry = state.registry.room(&room).unwrap_or_default();
    let publishers: Vec<Value> = entry
        .publishers
        .iter()
        .map(|seat| {
            json!({
                "identity": &*seat.participant,
                "video": seat.video.map(|c| c.to_string()),
                "simulcast": seat.simulcast,
                "live": seat.live,
            })
        })
        .collect();
    axum::Json(json!({
        "room": room,
        "participants": participants,
        "publishers": publishers,
        "viewers": entry.viewers,
    }))
    .into_response()
}

/// `DELETE /rooms/{room}/participants/{identity}`.
pub async fn remove_participant(
    State(state): State<Arc<AppState>>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(problem) = admin_to_remove(&state, &headers, &room) {
        return problem.into_response();
    }
    let sessions: Vec<(PeerKey, SessionEntry)> = state
        .registry
        .sessions_in(Some(&room))
        .into_iter()
        .filter(|(_, e)| *e.participant == *identity)
        .collect();
    if sessions.is_empty() {
        return Problem::not_found(format!("`{identity}` has no session in room `{room}`"))
            .into_response();
    }
    let ended = super::session::end_sessions(&state, &sessions, REMOVED_BY_API).await;
    tracing::info!(%room, participant = %identity, sessions = ended, "participant removed through the room API");
    axum::Json(json!({ "room": room, "participant": identity, "sessionsEnded": ended }))
        .into_response()
}

/// `DELETE /rooms/{room}`.
pub async fn close(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(problem) = admin_to_remove(&state, &headers, &room) {
        return problem.into_response();
    }
    let sessions = state.registry.sessions_in(Some(&room));
    if sessions.is_empty() {
        return Problem::not_found(format!("room `{room}` has no sessions")).into_response();
    }
    let ended = super::session::end_sessions(&state, &sessions, REMOVED_BY_API).await;
    tracing::info!(%room, sessions = ended, "room closed through the room API");
    axum::Json(json!({ "room": room, "sessionsEnded": ended })).into_response()
}

/// With auth on, the token must grant `admin` for `room` (for the room list: on
/// any room; the answer is the token's room pattern, to filter by). `Ok(None)`:
/// auth is off, everything is in scope.
fn admin_scope(
    state: &AppState,
    headers: &HeaderMap,
    room: Option<&str>,
) -> Result<Option<String>, Problem> {
    let Some(claims) = state.bearer_claims(headers)? else {
        return Ok(None);
    };
    match room {
        Some(room) => auth::authorize(&claims, room, Grant::Admin),
        None => auth::require_grant(&claims, Grant::Admin),
    }
    .map_err(Problem::denied)?;
    Ok(Some(claims.room))
}

/// Removing needs auth on and an admin token for `room`.
fn admin_to_remove(state: &AppState, headers: &HeaderMap, room: &str) -> Result<(), Problem> {
    if state.verifier.is_none() {
        return Err(Problem::denied(auth::Denied::Forbidden(
            "removing participants or closing rooms needs auth (auth.enabled) and an admin token"
                .into(),
        )));
    }
    admin_scope(state, headers, Some(room)).map(|_| ())
}
