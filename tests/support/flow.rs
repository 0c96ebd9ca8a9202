//! The steps the end-to-end media tests share: start a server, publish, view,
//! wait for media, drain the publisher and check what each viewer received.

use std::time::Duration;

use switchboard::config::Config;
use switchboard::server::Server;

use super::check::{check_stream_with, StreamReport, Timestamps};
use super::media::{Kind, SentPacket};
use super::obs::ObsPublisher;
use super::{wait_until, Publisher, PublisherOptions, Viewer, ViewerOptions};

pub async fn start_server(config: Config) -> Server {
    Server::start(config).await.expect("server starts")
}

/// Publishes over WHIP to `room` and waits until the publisher is connected.
pub async fn publish(server: &Server, room: &str, options: PublisherOptions) -> Publisher {
    let publisher = Publisher::start(server.http_addr(), room, options)
        .await
        .expect("WHIP publish");
    wait_until("publisher connected", Duration::from_secs(5), || {
        publisher.connected()
    })
    .await
    .expect("publisher connects");
    publisher
}

/// Views `room` over WHEP and waits until the viewer is connected.
pub async fn view(server: &Server, room: &str, options: ViewerOptions) -> Viewer {
    let viewer = Viewer::start(server.http_addr(), room, options)
        .await
        .expect("WHEP view");
    wait_until("viewer connected", Duration::from_secs(5), || {
        viewer.connected()
    })
    .await
    .expect("viewer connects");
    viewer
}

/// Waits until `viewer` has received at least `video` video and `audio` audio packets.
pub async fn wait_for_media(viewer: &Viewer, video: usize, audio: usize, within: Duration) {
    wait_until(
        &format!("{video} video and {audio} audio packets"),
        within,
        || viewer.count(Kind::Video) >= video && viewer.count(Kind::Audio) >= audio,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: got {} video and {} audio packets",
            viewer.count(Kind::Video),
            viewer.count(Kind::Audio)
        )
    });
}

/// A publisher [`drain`] can pause and ask what it sent.
pub trait Source {
    fn pause(&self);
    fn sent(&self, kind: Kind) -> Vec<SentPacket>;
}

impl Source for Publisher {
    fn pause(&self) {
        Publisher::pause(self)
    }

    fn sent(&self, kind: Kind) -> Vec<SentPacket> {
        Publisher::sent(self, kind)
    }
}

impl Source for ObsPublisher {
    fn pause(&self) {
        ObsPublisher::pause(self)
    }

    fn sent(&self, kind: Kind) -> Vec<SentPacket> {
        ObsPublisher::sent(self, kind)
    }
}

/// Pauses `publisher` and waits until every viewer has the last packet it sent of each kind.
pub async fn drain<P: Source>(
    publisher: &P,
    viewers: &[&Viewer],
) -> (Vec<SentPacket>, Vec<SentPacket>) {
    drain_with(publisher, viewers, |p| p.sent(Kind::Video)).await
}

/// Like [`drain`], for the video `video` picks (the layer the viewers should get).
pub async fn drain_with<P: Source>(
    publisher: &P,
    viewers: &[&Viewer],
    video: impl Fn(&P) -> Vec<SentPacket>,
) -> (Vec<SentPacket>, Vec<SentPacket>) {
    publisher.pause();
    let video = video(publisher);
    let audio = publisher.sent(Kind::Audio);
    for (i, viewer) in viewers.iter().enumerate() {
        for sent in [&video, &audio] {
            if let Some(last) = sent.last() {
                wait_until(
                    &format!("viewer {i} to receive the last {:?} packet", last.kind),
                    Duration::from_secs(3),
                    || viewer.has_received(last),
                )
                .await
                .expect("the tail of the stream arrives");
            }
        }
    }
    (video, audio)
}

/// Timestamps must step exactly as the publisher's for packets sent once `viewer`
/// was surely live (200 ms after it connected); earlier ones may come from the
/// server's key frame cache, whose replay may compress timestamps.
pub fn live_from(viewer: &Viewer) -> Timestamps {
    let connected = viewer
        .peer
        .with_state(|s| s.connected_at)
        .expect("viewer connected");
    Timestamps::ExactFrom(connected + Duration::from_millis(200))
}

/// What `viewer` received of `kind` is `sources`, one after the other, with
/// timestamps exactly as sent.
pub fn check(viewer: &Viewer, kind: Kind, sources: &[&[SentPacket]]) -> StreamReport {
    check_with(viewer, kind, sources, Timestamps::Exact)
}

pub fn check_with(
    viewer: &Viewer,
    kind: Kind,
    sources: &[&[SentPacket]],
    timestamps: Timestamps,
) -> StreamReport {
    let received = viewer.received(kind);
    check_stream_with(
        kind,
        sources,
        &received,
        viewer.expected_pt(kind),
        timestamps,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{kind:?} stream of the viewer with {:?} (PT {}): {e}",
            viewer.options.codecs,
            viewer.expected_pt(kind)
        )
    })
}
