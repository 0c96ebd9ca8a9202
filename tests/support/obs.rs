//! OBS mode: a WHIP publisher that looks like OBS Studio 30-32 on the wire
//! (libdatachannel; see `CLIENTS.md`, "OBS Studio").
//!
//! The offer is written here, as libdatachannel writes it: audio mid `0` (Opus
//! 111) and video mid `1` (one codec, H264 96 with `nack`, `nack pli`,
//! `goog-remb`), both `sendonly`, ICE and DTLS attributes at session level,
//! `a=group:LS`, `a=ice-options:ice2,trickle`, and no candidates at all (port 9,
//! `c=IN IP4 0.0.0.0`). OBS never trickles, so the server learns its address only
//! from its connectivity checks (peer-reflexive). Locally the str0m peer still
//! has its 127.0.0.1 host candidate, so the checks go out from loopback.
//!
//! With simulcast (OBS 32.1+) the video m-line has `a=rid:0 send` ..
//! `a=rid:2 send`, `a=simulcast:send 0;1;2`, extmap 1 `sdes:mid` and 2
//! `rtp-stream-id`, and no `a=ssrc` lines: the server learns the layers' SSRCs
//! from the rid extension, which every video packet carries.
//!
//! The str0m side is driven through its direct API (no SDP negotiation): the
//! answer is read for the server's ICE credentials, fingerprint, DTLS role and
//! candidates, and the m-lines and streams are declared by hand with the mids
//! and SSRCs the offer names.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::crypto::Fingerprint;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{Extension, Ssrc};
use str0m::{Candidate, IceCreds, Rtc, RtcConfig};

use super::http;
use super::media::{layer_tag, Format, Kind, SentPacket};
use super::peer::{self, add_opus_h264, Peer, SendConfig};
use super::Session;

/// The rids OBS 32.1 uses for three layers; `0` is the largest.
pub const OBS_RIDS: [&str; 3] = ["0", "1", "2"];

/// Options for [`ObsPublisher::start`].
#[derive(Debug, Clone)]
pub struct ObsOptions {
    pub send: SendConfig,
    /// OBS 32.1+ simulcast with three layers.
    pub simulcast: bool,
}

impl ObsOptions {
    /// An OBS 30/31 publisher (no simulcast), tag `tag`, a key frame every 2 s.
    pub fn new(tag: u32) -> Self {
        ObsOptions {
            send: SendConfig::obs(tag),
            simulcast: false,
        }
    }

    /// Key frames every `every` (rounded to frames); never on request.
    pub fn keyframe_every(mut self, every: Duration) -> Self {
        let frames = (every.as_millis() as u64 * u64::from(self.send.fps) / 1000).max(1);
        self.send.keyframe_interval = Some(frames as u32);
        self
    }

    /// Drop the first key frame before it reaches the wire, as OBS usually does.
    pub fn lose_first_keyframe(mut self, yes: bool) -> Self {
        self.send.lose_first_keyframe = yes;
        self
    }

    /// OBS 32.1+ simulcast: layers `0`, `1`, `2` (largest first), mid and rid
    /// extensions on every video packet.
    pub fn simulcast(mut self) -> Self {
        self.simulcast = true;
        self.send.layers = OBS_RIDS.iter().map(|r| r.to_string()).collect();
        self.send.mid_rid_on_every_packet = true;
        self
    }

    pub fn audio(mut self, yes: bool) -> Self {
        self.send.audio = yes;
        self
    }
}

/// The str0m `Rtc` of an OBS publisher: Opus 111, H264 96 only, no RTX; header
/// extensions only with simulcast (mid 1, rid 2), as the offer says.
pub fn build_obs_rtc(simulcast: bool) -> Rtc {
    let mut cfg = RtcConfig::new()
        .set_crypto_provider(peer::crypto())
        .set_rtp_mode(true)
        .clear_codecs()
        .clear_extension_map();
    if simulcast {
        cfg = cfg
            .set_extension(1, Extension::RtpMid)
            .set_extension(2, Extension::RtpStreamId);
    }
    add_opus_h264(cfg.codec_config(), 111, 96, 0x42e01f);
    cfg.build(Instant::now())
}

/// The SSRCs an OBS publisher sends with: audio, then one per video layer.
#[derive(Debug, Clone)]
pub struct ObsSsrcs {
    pub audio: u32,
    pub video: Vec<u32>,
}

impl ObsSsrcs {
    /// OBS: a random base for audio, base + 1 (+ layer) for video.
    pub fn from_base(base: u32, layers: usize) -> Self {
        ObsSsrcs {
            audio: base,
            video: (0..layers.max(1) as u32)
                .map(|i| base.wrapping_add(1 + i))
                .collect(),
        }
    }
}

fn random_token(rtc: &mut Rtc, len: usize) -> String {
    const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let direct = rtc.direct_api();
    (0..len)
        .map(|_| CHARS[(*direct.new_ssrc() as usize) % CHARS.len()] as char)
        .collect()
}

/// The offer libdatachannel writes for OBS (see the module docs), with `rtc`'s
/// ICE credentials and DTLS fingerprint.
pub fn obs_offer(rtc: &mut Rtc, ssrcs: &ObsSsrcs, audio: bool, simulcast: bool) -> String {
    let creds = rtc.direct_api().local_ice_credentials();
    let fingerprint = rtc.direct_api().local_dtls_fingerprint().to_string();
    let msid = random_token(rtc, 16);
    let cname = random_token(rtc, 16);
    let session_id = *rtc.direct_api().new_ssrc() & 0x7fff_ffff;
    let mids = if audio { "0 1" } else { "1" };

    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push_str("\r\n");
    };
    line("v=0");
    line(&format!("o=rtc {session_id} 0 IN IP4 127.0.0.1"));
    line("s=-");
    line("t=0 0");
    line(&format!("a=group:BUNDLE {mids}"));
    line(&format!("a=group:LS {mids}"));
    line("a=msid-semantic:WMS *");
    line("a=setup:actpass");
    line(&format!("a=ice-ufrag:{}", creds.ufrag));
    line(&format!("a=ice-pwd:{}", creds.pass));
    line("a=ice-options:ice2,trickle");
    line(&format!("a=fingerprint:{fingerprint}"));
    if audio {
        line("m=audio 9 UDP/TLS/RTP/SAVPF 111");
        line("c=IN IP4 0.0.0.0");
        line("a=mid:0");
        line("a=sendonly");
        line(&format!("a=ssrc:{} cname:{cname}", ssrcs.audio));
        line(&format!("a=ssrc:{} msid:{msid} {msid}-audio", ssrcs.audio));
        line(&format!("a=msid:{msid} {msid}-audio"));
        line("a=rtcp-mux");
        line("a=rtpmap:111 opus/48000/2");
        line(
            "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        );
    }
    line("m=video 9 UDP/TLS/RTP/SAVPF 96");
    line("c=IN IP4 0.0.0.0");
    line("a=mid:1");
    line("a=sendonly");
    if simulcast {
        line("a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid");
        line("a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id");
    } else {
        let v = ssrcs.video[0];
        line(&format!("a=ssrc:{v} cname:{cname}"));
        line(&format!("a=ssrc:{v} msid:{msid} {msid}-video"));
    }
    line(&format!("a=msid:{msid} {msid}-video"));
    line("a=rtcp-mux");
    line("a=rtpmap:96 H264/90000");
    line("a=rtcp-fb:96 nack");
    line("a=rtcp-fb:96 nack pli");
    line("a=rtcp-fb:96 goog-remb");
    line("a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1");
    if simulcast {
        for rid in OBS_RIDS {
            line(&format!("a=rid:{rid} send"));
        }
        line(&format!("a=simulcast:send {}", OBS_RIDS.join(";")));
    }
    s
}

/// What an OBS publisher needs from the server's answer.
#[derive(Debug, Clone)]
pub struct ObsAnswer {
    pub ufrag: String,
    pub pwd: String,
    pub fingerprint: String,
    /// `a=setup` of the answer (`passive` or `active`).
    pub setup: String,
    pub candidates: Vec<String>,
    /// `a=simulcast` of the video m-line, if any.
    pub simulcast: Option<String>,
    /// The mids of the m-lines, in order, and whether each was accepted (port != 0).
    pub mlines: Vec<(String, bool)>,
}

/// Reads an answer the way libdatachannel does: attributes at session or media
/// level, the first one wins.
pub fn parse_answer(sdp: &str) -> Result<ObsAnswer, String> {
    let mut ufrag = None;
    let mut pwd = None;
    let mut fingerprint = None;
    let mut setup = None;
    let mut simulcast = None;
    let mut candidates = Vec::new();
    let mut mlines: Vec<(String, bool)> = Vec::new();
    let mut kind = String::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            kind = parts.next().unwrap_or("").to_string();
            let accepted = parts.next().is_some_and(|p| p != "0");
            mlines.push((String::new(), accepted));
            continue;
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        let (name, value) = attr.split_once(':').unwrap_or((attr, ""));
        match name {
            "ice-ufrag" => {
                ufrag.get_or_insert_with(|| value.to_string());
            }
            "ice-pwd" => {
                pwd.get_or_insert_with(|| value.to_string());
            }
            "fingerprint" => {
                fingerprint.get_or_insert_with(|| value.to_string());
            }
            "setup" => {
                setup.get_or_insert_with(|| value.to_string());
            }
            "candidate" if !candidates.iter().any(|c| c == attr) => {
                candidates.push(attr.to_string());
            }
            "mid" => {
                if let Some(last) = mlines.last_mut() {
                    last.0 = value.to_string();
                }
            }
            "simulcast" if kind == "video" => simulcast = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(ObsAnswer {
        ufrag: ufrag.ok_or("answer has no a=ice-ufrag")?,
        pwd: pwd.ok_or("answer has no a=ice-pwd")?,
        fingerprint: fingerprint.ok_or("answer has no a=fingerprint")?,
        setup: setup.ok_or("answer has no a=setup")?,
        candidates,
        simulcast,
        mlines,
    })
}

/// An OBS WHIP publisher writing synthetic Opus + H264.
pub struct ObsPublisher {
    pub peer: Peer,
    pub session: Session,
    pub options: ObsOptions,
    pub ssrcs: ObsSsrcs,
    pub parsed_answer: ObsAnswer,
}

impl ObsPublisher {
    /// POSTs the OBS offer to `/whip/{room}`; success is exactly 201 with a body
    /// and a `Location`, as OBS requires. Starts sending once connected.
    pub async fn start(
        http_addr: SocketAddr,
        room: &str,
        options: ObsOptions,
    ) -> Result<ObsPublisher, String> {
        let mut rtc = build_obs_rtc(options.simulcast);
        // The host candidate is only local: it is not in the offer.
        let socket = peer::bind_loopback(&mut rtc)?;
        let base = *rtc.direct_api().new_ssrc();
        let ssrcs = ObsSsrcs::from_base(base, options.send.layers.len());
        let offer = obs_offer(&mut rtc, &ssrcs, options.send.audio, options.simulcast);

        let path = format!("/whip/{room}");
        let resp = http::post(http_addr, &path, "application/sdp", offer.clone()).await?;
        if resp.status != 201 {
            return Err(format!(
                "POST {path}: status {} (OBS accepts only 201), body {:?}",
                resp.status, resp.body
            ));
        }
        if resp.body.trim().is_empty() {
            return Err(format!("POST {path}: 201 with an empty body"));
        }
        let session = Session::created(http_addr, &path, offer, resp)?;
        let answer = parse_answer(&session.answer).map_err(|e| format!("POST {path}: {e}"))?;
        configure(&mut rtc, &answer, &ssrcs, &options)
            .map_err(|e| format!("POST {path}: {e}; answer {:?}", session.answer))?;

        let mut mids = vec![(Mid::from("1"), MediaKind::Video)];
        if options.send.audio {
            mids.push((Mid::from("0"), MediaKind::Audio));
        }
        let name = format!("obs{}", options.send.tag);
        let peer = Peer::spawn(&name, rtc, socket, mids, Some(options.send.clone()))?;
        Ok(ObsPublisher {
            peer,
            session,
            options,
            ssrcs,
            parsed_answer: answer,
        })
    }

    /// What OBS does on stop: close the connection, then DELETE the resource.
    /// Returns the DELETE status (OBS expects exactly 200).
    pub async fn stop(&mut self) -> Result<u16, String> {
        self.peer.close();
        self.session.delete().await
    }

    pub async fn delete(&self) -> Result<u16, String> {
        self.session.delete().await
    }

    pub fn connected(&self) -> bool {
        self.peer.connected()
    }

    pub fn tag(&self) -> u32 {
        self.options.send.tag
    }

    /// The tag in the payloads of simulcast layer `layer`.
    pub fn layer_tag(&self, layer: u8) -> u32 {
        layer_tag(self.tag(), layer)
    }

    pub fn pause(&self) {
        self.peer.pause(true);
    }

    pub fn resume(&self) {
        self.peer.pause(false);
    }

    /// Stops (or resumes) sending one simulcast layer, by rid.
    pub fn pause_layer(&self, rid: &str, paused: bool) {
        if let Some(layer) = OBS_RIDS.iter().position(|r| *r == rid) {
            self.peer.pause_layer(layer, paused);
        }
    }

    /// Everything sent of `kind` (all layers for simulcast video).
    pub fn sent(&self, kind: Kind) -> Vec<SentPacket> {
        self.peer.sent(kind)
    }

    pub fn sent_count(&self, kind: Kind) -> usize {
        self.peer.sent_count(kind)
    }

    /// The video sent on the layer with rid `rid`.
    pub fn sent_layer(&self, rid: &str) -> Vec<SentPacket> {
        self.peer.with_state(|s| {
            s.sent_video
                .iter()
                .filter(|p| p.rid.as_deref() == Some(rid))
                .cloned()
                .collect()
        })
    }

    /// Sent video packets that begin a key frame (one per layer per key frame).
    pub fn keyframes_sent(&self) -> Vec<SentPacket> {
        self.peer.with_state(|s| {
            s.sent_video
                .iter()
                .filter(|p| p.format == Format::H264 && p.id.keyframe && p.id.packet == 0)
                .cloned()
                .collect()
        })
    }

    /// PLI/FIR received from the server (OBS counts them and does nothing).
    pub fn keyframe_requests(&self) -> usize {
        self.peer.keyframe_requests()
    }
}

/// Sets up `rtc` from the answer through the direct API: remote credentials,
/// fingerprint and candidates, DTLS role, the two m-lines and their streams.
fn configure(
    rtc: &mut Rtc,
    answer: &ObsAnswer,
    ssrcs: &ObsSsrcs,
    options: &ObsOptions,
) -> Result<(), String> {
    let fingerprint: Fingerprint = answer
        .fingerprint
        .parse()
        .map_err(|e| format!("answer fingerprint {:?}: {e}", answer.fingerprint))?;
    let active = match answer.setup.as_str() {
        "passive" => true,
        "active" => false,
        other => return Err(format!("answer has a=setup:{other}")),
    };
    for c in &answer.candidates {
        let candidate =
            Candidate::from_sdp_string(c).map_err(|e| format!("answer candidate {c:?}: {e}"))?;
        // Only loopback IPv4 is reachable from the test client.
        if candidate.addr().ip().is_loopback() && candidate.addr().is_ipv4() {
            rtc.add_remote_candidate(candidate);
        }
    }
    let mut api = rtc.direct_api();
    // The offerer is the controlling agent (libdatachannel / libjuice).
    api.set_ice_controlling(true);
    api.set_remote_ice_credentials(IceCreds {
        ufrag: answer.ufrag.clone(),
        pass: answer.pwd.clone(),
    });
    api.set_remote_fingerprint(fingerprint);
    if options.send.audio {
        api.declare_media(Mid::from("0"), MediaKind::Audio);
        api.declare_stream_tx(Ssrc::from(ssrcs.audio), None, Mid::from("0"), None);
    }
    api.declare_media(Mid::from("1"), MediaKind::Video);
    if options.send.layers.is_empty() {
        api.declare_stream_tx(Ssrc::from(ssrcs.video[0]), None, Mid::from("1"), None);
    } else {
        for (i, rid) in options.send.layers.iter().enumerate() {
            api.declare_stream_tx(
                Ssrc::from(ssrcs.video[i]),
                None,
                Mid::from("1"),
                Some(Rid::from(rid.as_str())),
            );
        }
    }
    api.start_dtls(active)
        .map_err(|e| format!("start DTLS: {e}"))?;
    Ok(())
}
