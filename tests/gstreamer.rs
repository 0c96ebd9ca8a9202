//! Real GStreamer through the server: webrtcbin (libnice ICE, OpenSSL DTLS with an RSA
//! certificate) publishes over WHIP and plays over WHEP, VP8 and H264, each session
//! longer than a minute. The client is `scripts/webrtcbin_client.py` on
//! Debian's GStreamer 1.22 packages (`.ci/run` installs them).
//!
//! Without GStreamer the test says so and passes, unless `SWITCHBOARD_REQUIRE_GSTREAMER`
//! is set, as `scripts/test` does: there a missing GStreamer fails the suite.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::flow::start_server;
use support::{init_logging, with_timeout};
use switchboard::config::Config;
use tokio::process::Command;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/webrtcbin_client.py");
/// Debian's Python, which has python3-gi (a pyenv `python3` first on PATH may not).
const PYTHON: &str = "/usr/bin/python3";
/// How long each player plays: over a minute, so DTLS, SRTP and RTCP run long enough
/// to show what a short test would not. `SWITCHBOARD_GSTREAMER_SECONDS` overrides it.
const DEFAULT_PLAY_SECONDS: u64 = 65;

fn play_seconds() -> u64 {
    std::env::var("SWITCHBOARD_GSTREAMER_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_PLAY_SECONDS)
}

/// True when the GStreamer client can run here; panics when it cannot but must.
async fn gstreamer_available() -> bool {
    let output = Command::new(PYTHON).arg(CLIENT).arg("check").output().await;
    let problem = match output {
        Ok(output) if output.status.success() => return true,
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        Err(error) => format!("{PYTHON}: {error}"),
    };
    if std::env::var_os("SWITCHBOARD_REQUIRE_GSTREAMER").is_some() {
        panic!("GStreamer is required here but cannot run: {problem}");
    }
    eprintln!("SKIPPED: GStreamer cannot run here ({problem}); `.ci/run` installs it");
    false
}

/// Runs the client to its end (its own `--seconds`, bounded by `limit`) and returns its
/// JSON summary; the client's log goes to the test's stderr.
async fn run_client(args: &[String], limit: Duration) -> serde_json::Value {
    let child = Command::new(PYTHON)
        .arg(CLIENT)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the GStreamer client starts");
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not end within {limit:?}"))
        .expect("the GStreamer client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(summary)
        .unwrap_or_else(|error| panic!("{args:?}: no JSON summary ({error}): {stdout:?}"))
}

/// A GStreamer publisher and a GStreamer player of one room, with `codec`: the player
/// decodes about every frame sent for the whole session, and audio throughout.
async fn publish_and_play(base: String, codec: &str) {
    let seconds = play_seconds();
    let room = format!("gst-{codec}");
    // The player first: it waits for the publisher, as a real viewer may.
    let player_args: Vec<String> = vec![
        "play".into(),
        format!("{base}/whep/{room}"),
        "--codec".into(),
        codec.into(),
        "--local-address".into(),
        "127.0.0.1".into(),
        "--seconds".into(),
        seconds.to_string(),
    ];
    let publisher_args: Vec<String> = vec![
        "publish".into(),
        format!("{base}/whip/{room}"),
        "--codec".into(),
        codec.into(),
        "--local-address".into(),
        "127.0.0.1".into(),
        "--seconds".into(),
        (seconds + 5).to_string(),
    ];
    let limit = Duration::from_secs(seconds + 40);
    let (player, publisher) = tokio::join!(
        run_client(&player_args, limit),
        run_client(&publisher_args, limit)
    );
    eprintln!("{codec} player: {player}\n{codec} publisher: {publisher}");
    assert_eq!(publisher["failure"], serde_json::Value::Null, "{publisher}");
    assert_eq!(player["failure"], serde_json::Value::Null, "{player}");
    assert_eq!(player["size"], serde_json::json!([320, 240]), "{player}");
    let first_frame = player["first_frame_seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(
        first_frame < 5.0,
        "{codec}: first frame after {first_frame} s"
    );
    // 30 frames and 50 Opus packets a second are sent; allow for the start and for
    // the two clients starting a little apart.
    let playing = seconds as f64 - first_frame - 2.0;
    let frames = player["video_frames"].as_f64().unwrap_or(0.0);
    let audio = player["audio_buffers"].as_f64().unwrap_or(0.0);
    assert!(
        frames >= 0.9 * 30.0 * playing,
        "{codec}: {frames} video frames in {playing:.0} s of playing"
    );
    assert!(
        audio >= 0.9 * 50.0 * playing,
        "{codec}: {audio} audio buffers in {playing:.0} s of playing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_publishes_and_plays_vp8_and_h264() {
    init_logging();
    if !gstreamer_available().await {
        return;
    }
    let limit = Duration::from_secs(play_seconds() + 60);
    with_timeout(limit, async {
        let server = start_server(Config::for_tests()).await;
        let base = format!("http://{}", server.http_addr());
        tokio::join!(
            publish_and_play(base.clone(), "vp8"),
            publish_and_play(base, "h264")
        );
        server.shutdown().await;
    })
    .await;
}
