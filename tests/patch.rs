//! WHIP/WHEP PATCH (RFC 9725 §4.4, RFC 8840 fragments): trickled candidates get
//! 204; new ICE credentials restart ICE and get 200 with ours; ETags are checked.

use std::time::Duration;

use switchboard::config::Config;
use switchboard::server::Server;

struct Reply {
    status: u16,
    content_type: String,
    etag: String,
    location: String,
    body: String,
}

async fn send(
    method: reqwest::Method,
    url: String,
    content_type: &str,
    body: String,
    if_match: Option<&str>,
) -> Reply {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("Content-Type", content_type)
        .body(body)
        .timeout(Duration::from_secs(10));
    if let Some(tag) = if_match {
        request = request.header("If-Match", tag);
    }
    let response = request.send().await.expect("the server answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    Reply {
        status: response.status().as_u16(),
        content_type: header("content-type"),
        etag: header("etag"),
        location: header("location"),
        body: response.text().await.expect("a body"),
    }
}

fn attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(name))
        .map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_restart_and_etags() {
    let server = Server::start(Config::for_tests())
        .await
        .expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let offer_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sdp-corpus/obs-janus-videoroom-noncand.sdp");
    let offer = std::fs::read_to_string(offer_path).expect("offer");
    let created = send(
        reqwest::Method::POST,
        format!("{base}/whip/patch"),
        "application/sdp",
        offer.clone(),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let resource = format!("{base}{}", created.location);
    let our_ufrag = attribute(&created.body, "a=ice-ufrag:")
        .expect("answer ufrag")
        .to_string();
    let their_ufrag = attribute(&offer, "a=ice-ufrag:").expect("offer ufrag");
    let their_pwd = attribute(&offer, "a=ice-pwd:").expect("offer pwd");
    let frag = "application/trickle-ice-sdpfrag";

    // Trickle: the fragment names the current ICE session.
    let trickle = format!(
        "a=ice-ufrag:{their_ufrag}\r\na=ice-pwd:{their_pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n"
    );
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle.clone(),
        Some(&created.etag),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);

    // A stale ETag is refused.
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle.clone(),
        Some("\"stale\""),
    )
    .await;
    assert_eq!(r.status, 412);
    assert!(r.content_type.starts_with("application/problem+json"));

    // The wrong content type is refused.
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        "application/sdp",
        trickle,
        None,
    )
    .await;
    assert_eq!(r.status, 415);

    // New credentials: an ICE restart, answered with ours (new) and our candidates.
    let restart = "a=ice-ufrag:newU\r\na=ice-pwd:aNewPasswordOf22Chars0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        restart.to_string(),
        Some("*"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type, frag);
    let new_ufrag = attribute(&r.body, "a=ice-ufrag:").expect("a new ufrag");
    assert_ne!(new_ufrag, our_ufrag, "a restart changes our credentials");
    assert!(attribute(&r.body, "a=ice-pwd:").is_some());
    assert!(r.body.contains("a=candidate:"), "{}", r.body);
    // The ETag names the ICE session (RFC 9725 §4.4): the restart's answer carries a new one.
    let restarted_etag = r.etag.clone();
    assert!(
        restarted_etag.starts_with('"')
            && restarted_etag.ends_with('"')
            && restarted_etag.len() > 2,
        "the restart's 200 carries a strong ETag, got {restarted_etag:?}"
    );
    assert_ne!(restarted_etag, created.etag, "a restart changes the ETag");

    // Trickle for the restarted session (its new ufrag) is a plain trickle again,
    // but only under the new ETag: the old one names the ICE session that ended.
    let trickle = "a=ice-ufrag:newU\r\na=ice-pwd:aNewPasswordOf22Chars0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=candidate:2 1 udp 2130706431 127.0.0.1 10 typ host\r\n";
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle.to_string(),
        Some(&created.etag),
    )
    .await;
    assert_eq!(r.status, 412, "the pre-restart ETag is stale: {}", r.body);
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle.to_string(),
        Some(&restarted_etag),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle.to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);

    // A trickle keeps the ETag; a second restart (If-Match `*`, as RFC 9725 asks of
    // restarts) gets yet another one, and the first restart's tag is stale.
    let restart2 = "a=ice-ufrag:thrd\r\na=ice-pwd:aThirdPasswordOf22Chrs\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        restart2.to_string(),
        Some("*"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.etag.is_empty());
    assert_ne!(
        r.etag, restarted_etag,
        "every restart names a new ICE session"
    );
    assert_ne!(r.etag, created.etag);
    let second_etag = r.etag.clone();
    let trickle2 = format!("{restart2}a=candidate:3 1 udp 2130706431 127.0.0.1 11 typ host\r\n");
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle2.clone(),
        Some(&restarted_etag),
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = send(
        reqwest::Method::PATCH,
        resource.clone(),
        frag,
        trickle2,
        Some(&second_etag),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);

    // After DELETE, the resource is gone.
    let r = send(
        reqwest::Method::DELETE,
        resource.clone(),
        "text/plain",
        String::new(),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        reqwest::Method::PATCH,
        resource,
        frag,
        restart.to_string(),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    server.shutdown().await;
}
