//! `switchboard load` against the real server: its viewers drop 5 % of the media
//! packets that reach them, and every lost video packet must come back through
//! NACKs and the server's resend history (audio is not resent, as in browsers).

mod support;

use std::time::Duration;

use clap::Parser;
use support::flow::start_server;
use support::{init_logging, with_timeout};
use switchboard::config::Config;
use switchboard::load::{self, LoadArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_lost_on_the_way_to_viewers_is_resent_in_full() {
    init_logging();
    with_timeout(Duration::from_secs(60), async {
        let server = start_server(Config::for_tests()).await;
        let url = format!("http://{}", server.http_addr());
        let cli = Cli::parse_from([
            "load",
            &url,
            "--room",
            "lossy",
            "--viewers",
            "3",
            "--seconds",
            "5",
            "--warmup",
            "2",
            "--bitrate",
            "800",
            "--loss",
            "5",
        ]);
        let report = tokio::task::spawn_blocking(move || load::run(cli.load))
            .await
            .expect("the load run panicked")
            .expect("the load run failed");
        let counts = report.end.counts;
        eprintln!("{}", report.to_json());
        assert_eq!(
            report.joined, 3,
            "join failures: {:?}",
            report.join_failures
        );
        assert!(report.end.failed.is_empty(), "{:?}", report.end.failed);
        // The drops happened: audio, which nobody resends, shows them...
        assert!(counts.audio_lost() > 0, "no audio was dropped: {counts:?}");
        // ...and video came late, resent: about the 5 % dropped (2 % is a bound
        // no fair draw misses at these counts).
        assert!(counts.video_expected > 1000, "{counts:?}");
        assert!(
            counts.reordered * 50 > counts.video_expected,
            "too little was resent: {counts:?}"
        );
        // Every video packet arrived in the end, every frame whole.
        assert_eq!(counts.video_lost(), 0, "{counts:?}");
        assert_eq!(
            (counts.frames_incomplete, counts.frames_missing),
            (0, 0),
            "{counts:?}"
        );
        assert!(counts.frames_complete > 3 * 30 * 4, "{counts:?}");
        server.shutdown().await;
    })
    .await;
}
