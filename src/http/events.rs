//! Viewer events as server-sent events (the WHEP server-sent-events extension):
//! `active` when the room has a publisher sending, `inactive` when it has none,
//! so a player can show "waiting for the stream" instead of a frozen picture;
//! `viewercount` when the room's number of viewers changes; `layers` when the
//! simulcast layers of the viewer's track, or the one it is sent, change (the
//! same JSON as the layer extension's `GET`, without the estimate);
//! `participant-joined` (`{"identity", "name"}`) and `participant-left`
//! (`{"identity"}`) as the room's other participants come and go (those present
//! when the stream opens are announced first); `draining` (`{"retryAfter"}`) when
//! the server starts shutting down: the session goes on for now, and a new one
//! should be made elsewhere.
//!
//! For conferences: `slots` (`{"slots": [{"mid", "kind", "participant", "name",
//! "track"}]}`, every slot of the viewer's offer in m-line order, `participant`
//! null when it shows nothing) whenever what a slot shows changes, so a page can
//! label its tiles; `active-speaker` (`{"participant", "name"}`); `track-muted`
//! and `track-unmuted` (`{"participant", "track", "kind"}`) when a track has had
//! no media for a while, and when it has again.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::problem::Problem;
use super::AppState;
use crate::metrics::kind_label;
use crate::peer::{PeerKey, Role};
use crate::room::LiveWatch;
use crate::router::slots::ViewerNews;

/// The events this stream sends (its Link header lists them).
pub const EVENTS: [&str; 11] = [
    "active",
    "inactive",
    "layers",
    "viewercount",
    "participant-joined",
    "participant-left",
    "slots",
    "active-speaker",
    "track-muted",
    "track-unmuted",
    "draining",
];

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
        Ok((key, _)) => key,
        Err(problem) => return problem.into_response(),
    };
    let live = state.registry.watch_live(&room.as_str().into());
    let entry = state.registry.session(key);
    let own = entry.as_ref().map(|e| Arc::clone(&e.participant));
    let news = entry.and_then(|e| e.news);
    Sse::new(events(state, key, room, live, news, own))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// How often the viewer's layers and the room's viewer count are looked at.
const POLL: Duration = Duration::from_secs(1);

/// What the stream remembers between events.
struct Watch {
    state: Arc<AppState>,
    key: PeerKey,
    room: String,
    live: LiveWatch,
    /// The viewer's slots and the room's tracks, from its shard.
    news: Option<watch::Receiver<ViewerNews>>,
    /// The viewer's own participant: never announced to itself.
    own: Option<Arc<str>>,
    last_news: ViewerNews,
    /// Events found and not yet sent.
    pending: VecDeque<Event>,
    last_layers: Option<Value>,
    last_count: Option<usize>,
    /// The other participants in the room, as last told.
    participants: BTreeMap<Arc<str>, Option<Arc<str>>>,
    /// `draining` was sent.
    told_draining: bool,
    /// When the room and the viewer's layers are next looked at.
    next_poll: tokio::time::Instant,
    first: bool,
}

fn events(
    state: Arc<AppState>,
    key: PeerKey,
    room: String,
    live: LiveWatch,
    news: Option<watch::Receiver<ViewerNews>>,
    own: Option<Arc<str>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // First the current state (live or not, viewers, layers once known); then
    // one event per change. The stream owns the watch: when it ends or the client
    // goes, the room's channel may go too.
    let watch = Watch {
        state,
        key,
        room,
        live,
        news,
        own,
        last_news: ViewerNews::default(),
        pending: VecDeque::new(),
        last_layers: None,
        last_count: None,
        participants: BTreeMap::new(),
        told_draining: false,
        next_poll: tokio::time::Instant::now() + POLL,
        first: true,
    };
    stream::unfold(watch, |mut w| async move {
        loop {
            if let Some(event) = w.pending.pop_front() {
                return Some((Ok(event), w));
            }
            if w.first {
                w.first = false;
                let active = w.live.borrow_and_update();
                w.pending.push_back(live_event(active));
                w.poll().await;
                w.read_news();
                continue;
            }
            let news_changed = async {
                match &mut w.news {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = w.live.changed() => {
                    if !alive {
                        return None;
                    }
                    let active = w.live.borrow_and_update();
                    w.pending.push_back(live_event(active));
                }
                told = news_changed => {
                    if !told {
                        // The session ended on its shard.
                        w.news = None;
                    }
                    w.read_news();
                }
                // A deadline kept across turns: frequent news cannot starve the poll.
                _ = tokio::time::sleep_until(w.next_poll) => {
                    w.next_poll = tokio::time::Instant::now() + POLL;
                    // The stream ends with the session.
                    w.state.registry.session(w.key)?;
                    w.poll().await;
                }
            }
        }
    })
}

fn live_event(active: bool) -> Event {
    Event::default()
        .event(if active { "active" } else { "inactive" })
        .data("{}")
}

impl Watch {
    /// Queues `slots`, `active-speaker`, `track-muted` and `track-unmuted` for
    /// what the shard last told.
    fn read_news(&mut self) {
        let Some(rx) = &mut self.news else {
            return;
        };
        let news = rx.borrow_and_update().clone();
        let names = self
            .state
            .registry
            .room(&self.room)
            .map(|r| r.participants)
            .unwrap_or_default();
        let name = |p: &str| {
            names
                .get(p)
                .and_then(|(n, _)| n.as_deref().map(str::to_string))
        };
        if news.slots != self.last_news.slots {
            let slots: Vec<Value> = news
                .slots
                .iter()
                .map(|s| {
                    let participant = s.track.as_ref().map(|t| &*t.participant);
                    json!({
                        "mid": s.mid,
                        "kind": kind_label(s.kind),
                        "participant": participant,
                        "name": participant.and_then(name),
                        "track": s.track.as_ref().map(|t| t.track.to_string()),
                    })
                })
                .collect();
            self.pending.push_back(
                Event::default()
                    .event("slots")
                    .data(json!({ "slots": slots }).to_string()),
            );
        }
        if news.active_speaker != self.last_news.active_speaker {
            if let Some(p) = &news.active_speaker {
                self.pending.push_back(
                    Event::default()
                        .event("active-speaker")
                        .data(json!({ "participant": &**p, "name": name(p) }).to_string()),
                );
            }
        }
        for (track, muted) in &news.tracks {
            let before = self
                .last_news
                .tracks
                .iter()
                .find(|(t, _)| t.track == track.track)
                .map(|(_, m)| *m);
            let event = match (before, *muted) {
                (Some(false) | None, true) => "track-muted",
                (Some(true), false) => "track-unmuted",
                _ => continue,
            };
            self.pending.push_back(
                Event::default().event(event).data(
                    json!({
                        "participant": &*track.participant,
                        "track": track.track.to_string(),
                        "kind": kind_label(track.kind),
                    })
                    .to_string(),
                ),
            );
        }
        self.last_news = news;
    }

    /// Queues `participant-joined`/`participant-left`, `viewercount` and `layers`
    /// events for what changed.
    async fn poll(&mut self) {
        if self.state.is_draining() && !self.told_draining {
            self.told_draining = true;
            self.pending.push_back(
                Event::default()
                    .event("draining")
                    .data(json!({ "retryAfter": super::DRAIN_RETRY_AFTER }).to_string()),
            );
        }
        let room = self.state.registry.room(&self.room);
        let now: BTreeMap<Arc<str>, Option<Arc<str>>> = room
            .as_ref()
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|(identity, _)| self.own.as_ref() != Some(*identity))
                    .map(|(identity, (name, _))| (Arc::clone(identity), name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (identity, name) in &now {
            if !self.participants.contains_key(identity) {
                self.pending.push_back(
                    Event::default().event("participant-joined").data(
                        json!({ "identity": &**identity, "name": name.as_deref() }).to_string(),
                    ),
                );
            }
        }
        for identity in self.participants.keys() {
            if !now.contains_key(identity) {
                self.pending.push_back(
                    Event::default()
                        .event("participant-left")
                        .data(json!({ "identity": &**identity }).to_string()),
                );
            }
        }
        self.participants = now;
        let count = room.map(|r| r.viewers);
        if let Some(count) = count.filter(|c| Some(*c) != self.last_count) {
            self.last_count = Some(count);
            self.pending.push_back(
                Event::default()
                    .event("viewercount")
                    .data(json!({ "viewercount": count }).to_string()),
            );
        }
        let Some(entry) = self.state.registry.session(self.key) else {
            return;
        };
        let answer = super::layer::ask_shard(&self.state, self.key, entry.shard, None, POLL).await;
        if let Some(Some(Ok(report))) = answer {
            let mut layers = super::layer::report_json(&report);
            // The estimate moves all the time: not a change worth an event.
            if let Some(object) = layers.as_object_mut() {
                object.remove("estimatedBitrate");
                // Bitrates are rounded to 50 kbit/s steps for the same reason.
                if let Some(Value::Array(list)) = object.get_mut("layers") {
                    for layer in list {
                        if let Some(bitrate) = layer.get_mut("bitrate") {
                            let bps = bitrate.as_u64().unwrap_or(0);
                            *bitrate = Value::from((bps + 25_000) / 50_000 * 50_000);
                        }
                    }
                }
            }
            // Nothing shown yet and nothing said: nothing to say.
            let empty = report.layers.is_empty() && self.last_layers.is_none();
            if !empty && Some(&layers) != self.last_layers.as_ref() {
                self.pending
                    .push_back(Event::default().event("layers").data(layers.to_string()));
                self.last_layers = Some(layers);
            }
        }
    }
}

/// The viewer session `session` of `room`, and the shard it lives on.
pub(super) fn viewer_session(
    state: &AppState,
    room: &str,
    session: &str,
) -> Result<(PeerKey, usize), Problem> {
    let unknown = || Problem::not_found(format!("no whep session `{session}` in room `{room}`"));
    let key = PeerKey::parse(session).ok_or_else(unknown)?;
    match state.registry.session(key) {
        Some(entry) if entry.role == Role::Viewer && &*entry.room == room => Ok((key, entry.shard)),
        _ => Err(unknown()),
    }
}
