//! DTLS interop: the server's OpenSSL DTLS accepts peers whose certificate is RSA
//! (GStreamer's webrtcbin presents RSA-2048) as well as ECDSA (browsers, str0m's dimpl).

mod support;

use std::time::Duration;

use support::flow::{check_with, drain, live_from, publish, start_server, view, wait_for_media};
use support::{init_logging, with_timeout, ClientDtls, Kind, PublisherOptions, ViewerOptions};
use switchboard::config::Config;

const TEST_LIMIT: Duration = Duration::from_secs(40);

/// A publisher and a viewer with RSA certificates, and a viewer with an ECDSA one:
/// both viewers receive every packet, intact, from the first key frame on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_peers_publish_and_play() {
    init_logging();
    with_timeout(TEST_LIMIT, async {
        let server = start_server(Config::for_tests()).await;
        let publisher = publish(
            &server,
            "rsa",
            PublisherOptions::new(1).dtls(ClientDtls::RsaOpenssl),
        )
        .await;
        let rsa_viewer = view(
            &server,
            "rsa",
            ViewerOptions::default().dtls(ClientDtls::RsaOpenssl),
        )
        .await;
        let ecdsa_viewer = view(&server, "rsa", ViewerOptions::default()).await;
        for viewer in [&rsa_viewer, &ecdsa_viewer] {
            wait_for_media(viewer, 100, 120, Duration::from_secs(8)).await;
        }
        let (sent_video, sent_audio) = drain(&publisher, &[&rsa_viewer, &ecdsa_viewer]).await;
        for viewer in [&rsa_viewer, &ecdsa_viewer] {
            for (kind, sent) in [(Kind::Video, &sent_video), (Kind::Audio, &sent_audio)] {
                let report = check_with(viewer, kind, &[sent], live_from(viewer));
                assert_eq!(report.segments.len(), 1, "{kind:?}: {report:?}");
                assert_eq!(
                    report.segments[0].end_sent(),
                    sent.len(),
                    "{kind:?}: {report:?}"
                );
            }
        }
        drop((rsa_viewer, ecdsa_viewer, publisher));
        server.shutdown().await;
    })
    .await;
}
