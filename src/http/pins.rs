//! A viewer's pins: the participants whose video it wants in its video slots
//! first, whoever speaks (`router/slots.rs`).
//!
//! `GET {session}/pins` answers `{"pins": [...]}`; `PUT {session}/pins` with
//! `{"pins": ["alice", "bob"]}` replaces the list (first first; `[]` unpins
//! all) and answers it. At most [`MAX_PINS`] identities, each 1 to 64
//! characters. Pinning somebody not (yet) in the room is allowed: the pin
//! takes effect when they publish.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::events::viewer_session;
use super::problem::Problem;
use super::session::{fits_identity, read_body, require_content_type, SHARD_REPLY_TIMEOUT};
use super::AppState;
use crate::shard::Command;

/// Participants one viewer may pin.
pub const MAX_PINS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsBody {
    pins: Vec<String>,
}

/// `GET .../pins`.
pub async fn get_pins(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
) -> Response {
    respond(ask(&state, &room, &session, None).await)
}

/// `PUT .../pins`.
pub async fn put_pins(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    let pins = async {
        viewer_session(&state, &room, &session)?;
        require_content_type(request.headers(), "application/json")?;
        let text = read_body(request.into_body(), &state.config.http).await?;
        parse_body(&text).map_err(Problem::bad_request)
    };
    match pins.await {
        Ok(pins) => respond(ask(&state, &room, &session, Some(pins)).await),
        Err(problem) => problem.into_response(),
    }
}

/// A `PUT .../pins` body, checked: the pins in force, or why it is a 400.
pub fn parse_body(text: &str) -> Result<Vec<Arc<str>>, String> {
    let body: PinsBody =
        serde_json::from_str(text).map_err(|e| format!("the pins are not valid: {e}"))?;
    parse(body.pins)
}

/// The list checked: bounded, each identity well formed, no repeats.
fn parse(pins: Vec<String>) -> Result<Vec<Arc<str>>, String> {
    if pins.len() > MAX_PINS {
        return Err(format!("at most {MAX_PINS} participants may be pinned"));
    }
    let mut out: Vec<Arc<str>> = Vec::with_capacity(pins.len());
    for pin in pins {
        if !fits_identity(&pin) {
            return Err(
                "a pinned identity is 1 to 64 characters, none of them control characters".into(),
            );
        }
        if !out.iter().any(|p| **p == *pin) {
            out.push(pin.into());
        }
    }
    Ok(out)
}

async fn ask(
    state: &AppState,
    room: &str,
    session: &str,
    pins: Option<Vec<Arc<str>>>,
) -> Result<Vec<Arc<str>>, Problem> {
    let (key, shard) = viewer_session(state, room, session)?;
    let make = |reply| Command::Pins { key, pins, reply };
    match super::ask_shard(state, shard, make, SHARD_REPLY_TIMEOUT).await {
        Some(Some(pins)) => Ok(pins),
        Some(None) => Err(Problem::not_found("the session has ended")),
        None => Err(Problem::shard_silent()),
    }
}

fn respond(pins: Result<Vec<Arc<str>>, Problem>) -> Response {
    match pins {
        Ok(pins) => {
            let list: Vec<&str> = pins.iter().map(|p| &**p).collect();
            axum::Json(json!({ "pins": list })).into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_bounded_checked_and_deduplicated() {
        let ok = parse(vec!["a".into(), "b".into(), "a".into()]).expect("valid");
        assert_eq!(ok.len(), 2);
        assert!(parse(vec![String::new()]).is_err());
        assert!(parse(vec!["x".repeat(65)]).is_err());
        assert!(parse(vec!["a\nb".into()]).is_err());
        assert!(parse((0..17).map(|i| i.to_string()).collect()).is_err());
        assert!(parse(Vec::new()).is_ok_and(|p| p.is_empty()));
    }
}
