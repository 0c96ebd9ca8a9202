//! The WebRTC side of a load client: a str0m `Rtc` in RTP mode on its own
//! loopback-or-any UDP socket, and the WHIP/WHEP POST that connects it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::Pt;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc, RtcConfig};

use super::payload::VideoCodec;

/// How long a WHIP/WHEP POST may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a DELETE at the end may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of an error body a join failure keeps.
const DETAIL_LIMIT: usize = 300;

/// A client `Rtc`: RTP mode, Opus and the one video codec, on the run's DTLS
/// certificate (one for every client: making one each would cost every join).
pub fn client_rtc(video: VideoCodec, cert: &DtlsCert) -> Rtc {
    let config = RtcConfig::new()
        .set_rtp_mode(true)
        .set_dtls_cert(cert.clone())
        .clear_codecs()
        .enable_opus(true, false);
    let config = match video {
        VideoCodec::Vp8 => config.enable_vp8(true),
        VideoCodec::H264 => config.enable_h264(true),
    };
    config.build(Instant::now())
}

/// A UDP socket on `ip` (ephemeral port), its host candidate added to `rtc`.
pub fn bind(rtc: &mut Rtc, ip: IpAddr) -> Result<(UdpSocket, SocketAddr), String> {
    let socket = UdpSocket::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    let local = socket
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?;
    let candidate = Candidate::host(local, "udp").map_err(|e| format!("candidate: {e}"))?;
    rtc.add_local_candidate(candidate)
        .ok_or("str0m refused the host candidate")?;
    Ok((socket, local))
}

pub fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) -> Result<(), String> {
    let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| format!("the answer: {e}"))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| format!("accept_answer: {e}"))
}

/// A received datagram as str0m input.
pub fn receive_input(
    data: &[u8],
    source: SocketAddr,
    destination: SocketAddr,
) -> Option<Input<'_>> {
    let contents = data.try_into().ok()?;
    Some(Input::Receive(
        Instant::now(),
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents,
        },
    ))
}

/// The payload type the client configured for `codec`.
pub fn pt_of(rtc: &Rtc, codec: Codec) -> Option<Pt> {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

/// A WHIP/WHEP endpoint, the token offers carry, and the clients' DTLS
/// certificate.
pub struct Endpoint {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    pub cert: DtlsCert,
}

/// A created session: its answer and resource URL.
pub struct Created {
    pub answer: String,
    pub location: Option<String>,
}

impl Endpoint {
    /// `base` is `http://host[:port][/prefix]`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        // The clients' DTLS is the server's own (OpenSSL), whose certificates
        // these are: installed as the process default if nothing else was.
        crate::crypto::install();
        let cert = crate::crypto::generate_certificate()
            .map_err(|e| format!("a DTLS certificate: {e}"))?;
        Ok(Endpoint {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token,
            cert,
        })
    }

    /// POSTs `offer` to `path`; the answer, or why not (status and problem detail).
    pub fn post(&self, path: &str, offer: &str) -> Result<Created, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/sdp");
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .send(offer)
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(l));
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("POST {path}: the body: {e}"))?;
        if status != 201 {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|p| p["detail"].as_str().map(str::to_string))
                .unwrap_or(body);
            let detail: String = detail.trim().chars().take(DETAIL_LIMIT).collect();
            return Err(format!("{status}: {detail}"));
        }
        Ok(Created {
            answer: body,
            location,
        })
    }

    /// DELETEs a session resource (best effort, briefly). The token goes only to
    /// the server it was given for.
    pub fn delete(&self, location: &str) {
        let mut request = self
            .agent
            .delete(location)
            .config()
            .timeout_global(Some(DELETE_TIMEOUT))
            .build();
        if let Some(token) = self
            .token
            .as_ref()
            .filter(|_| location.starts_with(&self.origin()))
        {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let _ = request.call();
    }

    /// `scheme://host[:port]` of the base URL.
    fn origin(&self) -> String {
        origin_of(&self.base)
    }

    /// A `Location` made absolute (RFC 3986 reference resolution, for the forms
    /// servers use: absolute, origin-relative, path-relative).
    fn absolute(&self, location: &str) -> String {
        resolve(&self.base, location)
    }
}

fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_string(),
        None => url.to_string(),
    }
}

/// `location` resolved against the POST's URL `base` + `/whip/...`.
fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin_of(base))
    } else {
        // Relative to the POSTed resource's directory: {base}/whip/ or /whep/.
        format!("{}/{location}", base.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_server() {
        let base = "http://127.0.0.1:8080/sfu";
        assert_eq!(resolve(base, "/whep/r/1"), "http://127.0.0.1:8080/whep/r/1");
        assert_eq!(resolve(base, "http://other:1/x"), "http://other:1/x");
        assert_eq!(resolve(base, "r/1"), "http://127.0.0.1:8080/sfu/r/1");
        assert_eq!(origin_of("http://h:1"), "http://h:1");
        assert_eq!(origin_of("http://h:1/a/b"), "http://h:1");
    }
}
