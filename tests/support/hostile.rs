//! Crafted input for the hardening tests: STUN messages of every odd shape, and
//! reading a value out of the Prometheus text.

pub const USERNAME: u16 = 0x0006;
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
pub const PRIORITY: u16 = 0x0024;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_INDICATION: u16 = 0x0011;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;

/// A STUN message of type `typ` with `attrs` (type, value), each padded to 4 bytes.
pub fn stun(typ: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut out = typ.to_be_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    out.extend_from_slice(&rand::random::<[u8; 12]>());
    out.extend_from_slice(&body);
    out
}

/// A binding request with `username`, a priority and a MESSAGE-INTEGRITY that
/// is not the HMAC of anything (a forged check).
pub fn forged_check(username: &[u8]) -> Vec<u8> {
    stun(
        BINDING_REQUEST,
        &[
            (USERNAME, username),
            (PRIORITY, &[0x6e, 0, 0x1e, 0xff]),
            (MESSAGE_INTEGRITY, &[0xab; 20]),
        ],
    )
}

/// The family of the datagram that once stopped a shard (a Binding indication
/// with USERNAME `:x`): odd usernames in every STUN class, repeated and
/// overrunning attributes, unknown types, truncations. `ufrag` is a live
/// session's, so some of them name a real session.
pub fn stun_family(ufrag: &str) -> Vec<Vec<u8>> {
    let long = vec![b'a'; 600];
    let named = format!("{ufrag}:x");
    let usernames: Vec<&[u8]> = vec![
        b"",
        b":",
        b":x",
        b"x:",
        b"::",
        &[0xff, 0xfe, b':', 0x80],
        &long,
        named.as_bytes(),
        ufrag.as_bytes(),
    ];
    let mut out = Vec::new();
    for typ in [
        BINDING_REQUEST,
        BINDING_INDICATION,
        BINDING_SUCCESS,
        BINDING_ERROR,
        0x0003, // Allocate (TURN)
        0x3eef, // unknown method
    ] {
        for username in &usernames {
            out.push(stun(typ, &[(USERNAME, username)]));
            out.push(stun(
                typ,
                &[
                    (USERNAME, username),
                    (PRIORITY, &[0, 0, 0, 1]),
                    (MESSAGE_INTEGRITY, &[0; 20]),
                ],
            ));
            // Two USERNAME attributes, a real one second.
            out.push(stun(
                typ,
                &[
                    (USERNAME, username),
                    (USERNAME, named.as_bytes()),
                    (PRIORITY, &[0, 0, 0, 1]),
                    (MESSAGE_INTEGRITY, &[0; 20]),
                ],
            ));
        }
        // An attribute length that overruns the message, and a message length
        // that overruns the datagram.
        let mut overrun = stun(typ, &[(USERNAME, named.as_bytes())]);
        overrun[22..24].copy_from_slice(&0xfff0u16.to_be_bytes());
        out.push(overrun);
        let mut too_long = stun(typ, &[(USERNAME, b":x")]);
        too_long[2..4].copy_from_slice(&0x0400u16.to_be_bytes());
        out.push(too_long);
    }
    // Truncations of a well-formed request, and bare headers.
    let whole = forged_check(named.as_bytes());
    for len in 0..whole.len() {
        out.push(whole[..len].to_vec());
    }
    out.push(vec![
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    out
}

/// The value of the sample `name` (with its labels, as rendered) in a
/// Prometheus text exposition; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(n, _)| *n == name)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// The sum of every sample whose name starts with `prefix` (all label sets).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// The server's ICE ufrag in an SDP answer.
pub fn answer_ufrag(answer: &str) -> Option<String> {
    answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_string)
}

/// The last path segment of a `Location`: the session id.
pub fn session_id(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or("")
}

/// The server's `/metrics` text.
pub async fn metrics_text(server: &switchboard::server::Server) -> String {
    reqwest::get(format!("http://{}/metrics", server.http_addr()))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}
