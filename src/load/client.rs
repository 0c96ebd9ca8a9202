//! The WebRTC side of a load client: a str0m `Rtc` in RTP mode on its own
//! loopback-or-any UDP socket, and the WHIP/WHEP POST that connects it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::Pt;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc, RtcConfig};

use super::payload::VideoCodec;

/// How long a WHIP/WHEP POST may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A client `Rtc`: RTP mode, Opus and the one video codec.
pub fn client_rtc(video: VideoCodec) -> Rtc {
    let config = RtcConfig::new()
        .set_rtp_mode(true)
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

/// A WHIP/WHEP endpoint and the token offers carry.
#[derive(Clone)]
pub struct Endpoint {
    agent: ureq::Agent,
    pub base: String,
    pub token: Option<String>,
}

/// A created session: its answer and resource URL.
pub struct Created {
    pub answer: String,
    pub location: Option<String>,
}

impl Endpoint {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Endpoint {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
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
            return Err(format!("{status}: {}", detail.trim()));
        }
        Ok(Created {
            answer: body,
            location,
        })
    }

    /// DELETEs a session resource (best effort).
    pub fn delete(&self, location: &str) {
        let mut request = self.agent.delete(location);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let _ = request.call();
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }
}
