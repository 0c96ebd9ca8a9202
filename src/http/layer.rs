//! The WHEP layer extension (`urn:ietf:params:whep:ext:core:layer`): a viewer
//! reads which simulcast layers its video track has and which one it is sent,
//! pins one, caps the automatic choice, or returns to it.
//!
//! `GET {session}/layer` answers the report; `POST {session}/layer` with a JSON
//! object sets the preference and answers the report:
//!
//! - `{"encodingId": "h"}` or `{"spatialLayerId": 1}`: pin that layer (spatial
//!   ids count up from the lowest layer);
//! - `{"maxEncodingId": "h"}` or `{"maxSpatialLayerId": 1}`: automatic choice,
//!   never above that layer;
//! - `{}`: automatic choice.
//!
//! - `{"maxTemporalLayerId": 1}` (or `temporalLayerId`), alone or with one of
//!   the above: VP8 frames of temporal layers above it are not forwarded (the
//!   frame rate drops, the sequence numbers and picture IDs stay continuous).
//!
//! `mediaId`, if given, must name the viewer's video m-line. Any other field is a
//! 400. The report says which temporal layer is the highest sent
//! (`sendingTemporalLayerId`, null when all are).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use crate::peer::PeerKey;

use super::events::viewer_session;
use super::problem::Problem;
use super::session::{read_body, require_content_type, SHARD_REPLY_TIMEOUT};
use super::AppState;
use crate::router::layer_select::Preference;
use crate::router::layers::{LayerReport, LayerRequest};
use crate::shard::Command;

/// The `rel` of the Link header that advertises the layer URL.
pub const REL: &str = "urn:ietf:params:whep:ext:core:layer";

/// The request body, by the extension's field names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LayerBody {
    media_id: Option<String>,
    encoding_id: Option<String>,
    spatial_layer_id: Option<u8>,
    temporal_layer_id: Option<u8>,
    max_encoding_id: Option<String>,
    max_spatial_layer_id: Option<u8>,
    max_temporal_layer_id: Option<u8>,
}

/// `GET .../layer`.
pub async fn get_layer(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
) -> Response {
    match ask(&state, &room, &session, None).await {
        Ok(report) => report_response(&report),
        Err(problem) => problem.into_response(),
    }
}

/// `POST .../layer`.
pub async fn post_layer(
    State(state): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    match post(&state, &room, &session, request).await {
        Ok(report) => report_response(&report),
        Err(problem) => problem.into_response(),
    }
}

async fn post(
    state: &Arc<AppState>,
    room: &str,
    session: &str,
    request: Request<Body>,
) -> Result<LayerReport, Problem> {
    viewer_session(state, room, session)?;
    require_content_type(request.headers(), "application/json")?;
    let text = read_body(request.into_body(), &state.config.http).await?;
    let body: LayerBody = if text.trim().is_empty() {
        LayerBody::default()
    } else {
        serde_json::from_str(&text)
            .map_err(|e| Problem::bad_request(format!("the layer request is not valid: {e}")))?
    };
    let max_temporal_layer_id = match (body.temporal_layer_id, body.max_temporal_layer_id) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give temporalLayerId or maxTemporalLayerId, not both",
            ))
        }
        (Some(t), None) | (None, Some(t)) if t > 2 => {
            return Err(Problem::bad_request(format!(
                "temporal layer {t} does not exist: VP8 temporal layers are 0, 1 and 2"
            )))
        }
        (t, None) | (None, t) => t,
    };
    let media_id = body.media_id.clone();
    let request = LayerRequest {
        encoding_id: body.encoding_id,
        spatial_layer_id: body.spatial_layer_id,
        max_encoding_id: body.max_encoding_id,
        max_spatial_layer_id: body.max_spatial_layer_id,
        max_temporal_layer_id,
    };
    if let Some(media_id) = media_id {
        let report = ask(state, room, session, None).await?;
        if report.mid != media_id {
            return Err(Problem::bad_request(format!(
                "mediaId {media_id:?} is not this session's video (mid {:?})",
                report.mid
            )));
        }
    }
    ask(state, room, session, Some(request)).await
}

/// Sends the question to the viewer's shard and waits for its answer.
async fn ask(
    state: &Arc<AppState>,
    room: &str,
    session: &str,
    request: Option<LayerRequest>,
) -> Result<LayerReport, Problem> {
    let (key, shard) = viewer_session(state, room, session)?;
    match ask_shard(state, key, shard, request, SHARD_REPLY_TIMEOUT).await {
        Some(Some(Ok(report))) => Ok(report),
        Some(Some(Err(why))) => Err(Problem::bad_request(why)),
        Some(None) => Err(Problem::not_found("the session has ended")),
        None => Err(Problem::shard_silent()),
    }
}

/// The `Command::Layer` round trip to `key`'s shard: `None` if the shard did not
/// answer within `timeout`; then the shard's answer (`None`: no such viewer there).
pub(super) async fn ask_shard(
    state: &AppState,
    key: PeerKey,
    shard: usize,
    request: Option<LayerRequest>,
    timeout: Duration,
) -> Option<Option<Result<LayerReport, String>>> {
    super::ask_shard(
        state,
        shard,
        |reply| Command::Layer {
            key,
            request,
            reply,
        },
        timeout,
    )
    .await
}

fn report_response(report: &LayerReport) -> Response {
    axum::Json(report_json(report)).into_response()
}

/// The report as the API and the `layers` event give it.
pub fn report_json(report: &LayerReport) -> Value {
    let name = |index: Option<u8>| {
        index
            .and_then(|i| report.layers.iter().find(|l| l.index == i))
            .map(|l| {
                l.rid
                    .clone()
                    .map(Value::from)
                    .unwrap_or_else(|| Value::from(l.spatial_id))
            })
    };
    let layers: Vec<Value> = report
        .layers
        .iter()
        .map(|l| {
            json!({
                "encodingId": l.rid,
                "spatialLayerId": l.spatial_id,
                "active": l.available,
                "bitrate": l.bitrate_bps,
                "width": l.resolution.map(|r| r.width),
                "height": l.resolution.map(|r| r.height),
            })
        })
        .collect();
    let preference = match report.preference {
        Preference::Auto => json!("auto"),
        Preference::Pin(i) => json!({ "pin": name(Some(i)) }),
        Preference::Cap(i) => json!({ "max": name(Some(i)) }),
    };
    json!({
        "mediaId": report.mid,
        "layers": layers,
        "sending": name(report.sending),
        "target": name(report.target),
        "preference": preference,
        "sendingTemporalLayerId": report.sending_temporal,
        "maxTemporalLayerId": report.max_temporal,
        "estimatedBitrate": report.estimate_bps,
    })
}
