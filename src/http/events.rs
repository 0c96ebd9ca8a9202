//! Viewer events as server-sent events (the WHEP server-sent-events extension):
//! `active` when the room has a publisher sending, `inactive` when it has none,
//! so a player can show "waiting for the stream" instead of a frozen picture.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};

use super::problem::Problem;
use super::AppState;
use crate::peer::{PeerKey, Role};
use crate::room::LiveWatch;

/// The `rel` of the Link header that advertises the event stream.
pub const REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";

/// `POST .../events` (the extension's subscription step): the stream is at the
/// same URL, whatever events were asked for.
pub async fn subscribe(state: State<Arc<AppState>>, path: Path<(String, String)>) -> Response {
    if let Err(problem) = viewer_session(&state, &path.0 .0, &path.0 .1) {
        return problem.into_response();
    }
    let location = format!("/whep/{}/{}/events", path.0 .0, path.0 .1);
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// `GET .../events`: the stream itself. It ends when the session does.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
) -> Response {
    let key = match viewer_session(&state, &room, &session) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };
    let live = state.registry.watch_live(&room.as_str().into());
    Sse::new(events(state, key, live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn events(
    state: Arc<AppState>,
    key: PeerKey,
    live: LiveWatch,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The first item is the current state; then one per change. The stream owns
    // the watch: when it ends or the client goes, the room's channel may go too.
    stream::unfold(
        (state, live, true),
        move |(state, mut live, first)| async move {
            if !first {
                loop {
                    // Wake at least every few seconds to notice the session has ended.
                    match tokio::time::timeout(Duration::from_secs(2), live.changed()).await {
                        Ok(true) => break,
                        Ok(false) => return None,
                        Err(_) if state.registry.session(key).is_none() => return None,
                        Err(_) => continue,
                    }
                }
            }
            let active = live.borrow_and_update();
            let event = Event::default()
                .event(if active { "active" } else { "inactive" })
                .data("{}");
            Some((Ok(event), (state, live, false)))
        },
    )
}

fn viewer_session(state: &AppState, room: &str, session: &str) -> Result<PeerKey, Problem> {
    let unknown = || Problem::not_found(format!("no whep session `{session}` in room `{room}`"));
    let key = PeerKey::parse(session).ok_or_else(unknown)?;
    match state.registry.session(key) {
        Some(entry) if entry.role == Role::Viewer && &*entry.room == room => Ok(key),
        _ => Err(unknown()),
    }
}
