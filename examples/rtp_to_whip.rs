//! An OBS-like WHIP publisher fed with real encoded media: FFmpeg sends plain RTP to a
//! local UDP port, and every packet (payload, marker, timestamp, sequence number) is
//! forwarded unchanged into a WHIP session, the way OBS Studio's WHIP output
//! (libdatachannel) does it on the wire:
//!
//! - the offer has OBS's shape (audio mid `0` + video mid `1`, both `sendonly`, BUNDLE,
//!   `a=group:LS`, ICE and DTLS attributes at session level, `a=setup:actpass`,
//!   `a=ice-options:ice2,trickle`, one video codec on PT 96 with `nack`, `nack pli`,
//!   `goog-remb`, Opus on PT 111, `a=ssrc` lines, no extmaps, no RTX, no FEC, no
//!   transport-cc) and NO candidates (port 9, `c=IN IP4 0.0.0.0`): the server learns
//!   our address as a peer-reflexive candidate from our checks, which leave from a
//!   single 127.0.0.1 host candidate known only to our side;
//! - it never trickles, never PATCHes, and never answers PLI or FIR: keyframes come
//!   only when FFmpeg makes them;
//! - on exit it closes the connection, then sends `DELETE` to the session's Location.
//!
//! One difference from OBS: OBS answers NACKs on the same SSRC; str0m resends only
//! over RTX, which OBS does not offer, so this publisher resends nothing (on loopback
//! nothing is lost on the way in).
//!
//! ```sh
//! cargo run --example rtp_to_whip -- --whip http://127.0.0.1:8080/whip/room --rtp-port 5004 --codec vp8
//! ffmpeg -re -f lavfi -i testsrc2=size=640x360:rate=30 -c:v libvpx -deadline realtime \
//!     -cpu-used 8 -g 240 -keyint_min 240 -b:v 800k -pkt_size 1200 -f rtp rtp://127.0.0.1:5004
//! ```
//!
//! or H264 (`--codec h264`): `-c:v libx264 -profile:v baseline -bf 0 -g 240
//! -x264-params keyint=240:min-keyint=240:scenecut=0 -payload_type 96 -pkt_size 1200 -f rtp`.
//! Audio is optional: `--audio-rtp-port M` with e.g. `-c:a libopus -f rtp rtp://127.0.0.1:M`
//! (FFmpeg's payload types are ignored: each port carries one kind, sent on the
//! negotiated payload type). FFmpeg's RTCP (to port + 1) is read and discarded.
//!
//! Flags: `--whip URL` `--rtp-port N` `--codec vp8|h264` `[--audio-rtp-port M]`
//! `[--video-only]` (offer only the video m-line, mid `0`) `[--ignore-stdin]` (by
//! default the program ends when its standard input closes) `[--quiet]`
//! `[--log-keyframes]` (a line with the wall-clock time of every keyframe sent)
//! `[--log-gaps MS]` (a line for every pause longer than MS in the video FFmpeg sends).
//! It prints `connected ...` once ICE and DTLS are up, and a summary on exit.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use str0m::config::Fingerprint;
use str0m::format::{Codec, FormatParams};
use str0m::ice::IceCreds;
use str0m::media::{Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

const OPUS_PT: u8 = 111;
const VIDEO_PT: u8 = 96;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Give up if ICE + DTLS are not up by then.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    Vp8,
    H264,
}

#[derive(Debug)]
struct Args {
    whip: String,
    rtp_port: u16,
    audio_rtp_port: Option<u16>,
    codec: VideoCodec,
    video_only: bool,
    ignore_stdin: bool,
    quiet: bool,
    log_keyframes: bool,
    /// Report pauses longer than this in the video FFmpeg sends (a starved encoder).
    log_gaps_ms: Option<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: rtp_to_whip --whip http://127.0.0.1:PORT/whip/ROOM --rtp-port N --codec vp8|h264 \
         [--audio-rtp-port M] [--video-only] [--ignore-stdin] [--quiet] [--log-keyframes] [--log-gaps MS]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut whip = None;
    let mut rtp_port = None;
    let mut audio_rtp_port = None;
    let mut codec = VideoCodec::Vp8;
    let mut video_only = false;
    let mut ignore_stdin = false;
    let mut quiet = false;
    let mut log_keyframes = false;
    let mut log_gaps_ms = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                usage()
            })
        };
        match a.as_str() {
            "--whip" => whip = Some(value("--whip")),
            "--rtp-port" => rtp_port = value("--rtp-port").parse().ok(),
            "--audio-rtp-port" => {
                audio_rtp_port = Some(
                    value("--audio-rtp-port")
                        .parse()
                        .unwrap_or_else(|_| usage()),
                )
            }
            "--codec" => {
                codec = match value("--codec").to_ascii_lowercase().as_str() {
                    "vp8" => VideoCodec::Vp8,
                    "h264" => VideoCodec::H264,
                    other => {
                        eprintln!("unknown codec {other}");
                        usage()
                    }
                }
            }
            "--video-only" => video_only = true,
            "--ignore-stdin" => ignore_stdin = true,
            "--quiet" => quiet = true,
            "--log-keyframes" => log_keyframes = true,
            "--log-gaps" => {
                log_gaps_ms = Some(value("--log-gaps").parse().unwrap_or_else(|_| usage()))
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    let (Some(whip), Some(rtp_port)) = (whip, rtp_port) else {
        usage()
    };
    if video_only && audio_rtp_port.is_some() {
        eprintln!("--video-only and --audio-rtp-port exclude each other");
        usage();
    }
    Args {
        whip,
        rtp_port,
        audio_rtp_port,
        codec,
        video_only,
        ignore_stdin,
        quiet,
        log_keyframes,
        log_gaps_ms,
    }
}

macro_rules! say {
    ($($t:tt)*) => { println!("rtp_to_whip: {}", format!($($t)*)) };
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    switchboard::crypto::install();
    match run(args).await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("rtp_to_whip: error: {e}");
            std::process::exit(1);
        }
    }
}

/// One m-line we send on.
struct Track {
    mid: Mid,
    kind: MediaKind,
    ssrc: Ssrc,
    pt: Pt,
    seq: SeqExtender,
    forwarded: u64,
}

async fn run(args: Args) -> Result<(), String> {
    // Sockets first, so FFmpeg can start at once and nothing is lost to "port closed".
    let loopback = Ipv4Addr::LOCALHOST;
    let video_in = bind_pair(loopback, args.rtp_port).await?;
    let audio_in = match args.audio_rtp_port {
        Some(p) => Some(bind_pair(loopback, p).await?),
        None => None,
    };
    let socket = UdpSocket::bind((loopback, 0))
        .await
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let local_addr = socket.local_addr().map_err(|e| e.to_string())?;

    // ----- the Rtc: RTP mode, OBS's codecs and payload types, no header extensions -----
    let mut config = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .clear_extension_map();
    config.codec_config().add_config(
        Pt::from(OPUS_PT),
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        FormatParams {
            min_p_time: Some(10),
            stereo: Some(true),
            sprop_stereo: Some(true),
            use_inband_fec: Some(true),
            ..Default::default()
        },
    );
    let (video_codec, video_fmtp) = match args.codec {
        VideoCodec::Vp8 => (Codec::Vp8, FormatParams::default()),
        VideoCodec::H264 => (
            Codec::H264,
            FormatParams {
                level_asymmetry_allowed: Some(true),
                packetization_mode: Some(1),
                profile_level_id: Some(0x42e01f),
                ..Default::default()
            },
        ),
    };
    config.codec_config().add_config(
        Pt::from(VIDEO_PT),
        None,
        video_codec,
        Frequency::NINETY_KHZ,
        None,
        video_fmtp,
    );
    let now = Instant::now();
    let mut rtc = config.build(now);

    // Our only local candidate: checks leave from 127.0.0.1. It is never signalled.
    let host = Candidate::host(local_addr, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(host)
        .ok_or("str0m refused the 127.0.0.1 host candidate")?;

    let (audio_mid, video_mid) = if args.video_only {
        (None, "0")
    } else {
        (Some("0"), "1")
    };
    let mut tracks: Vec<Track> = Vec::new();
    {
        let mut api = rtc.direct_api();
        api.set_ice_controlling(true); // the offerer, full ICE (libdatachannel/libjuice)
        let mut declare = |mid: &str, kind: MediaKind, pt: u8| {
            let mid = Mid::from(mid);
            api.declare_media(mid, kind);
            let ssrc = api.new_ssrc();
            api.declare_stream_tx(ssrc, None, mid, None);
            tracks.push(Track {
                mid,
                kind,
                ssrc,
                pt: Pt::from(pt),
                seq: SeqExtender::default(),
                forwarded: 0,
            });
        };
        if let Some(mid) = audio_mid {
            declare(mid, MediaKind::Audio, OPUS_PT);
        }
        declare(video_mid, MediaKind::Video, VIDEO_PT);
    }
    let creds = rtc.direct_api().local_ice_credentials();
    let fingerprint = rtc.direct_api().local_dtls_fingerprint().to_string();
    let offer = obs_offer(&creds, &fingerprint, &tracks, args.codec);

    // ----- WHIP: POST the offer -----
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .user_agent("rtp_to_whip (OBS-like; libdatachannel shape)")
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .post(&args.whip)
        .header("Content-Type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .map_err(|e| format!("POST {}: {e}", args.whip))?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.map_err(|e| e.to_string())?;
    // OBS: success is exactly 201, with a body and a Location.
    if status.as_u16() != 201 {
        return Err(format!(
            "POST {}: status {status} (OBS wants 201): {body}",
            args.whip
        ));
    }
    let location = location.ok_or("201 without a Location header")?;
    let resource = resolve(&args.whip, &location)?;
    if body.trim().is_empty() {
        return Err("201 with an empty body".into());
    }
    let answer = parse_answer(&body)?;

    // ----- apply the answer (what libdatachannel takes from it) -----
    {
        let mut api = rtc.direct_api();
        api.set_remote_ice_credentials(IceCreds {
            ufrag: answer.ufrag.clone(),
            pass: answer.pwd.clone(),
        });
        let fp: Fingerprint = answer
            .fingerprint
            .parse()
            .map_err(|e| format!("answer fingerprint {:?}: {e}", answer.fingerprint))?;
        api.set_remote_fingerprint(fp);
        // We offered actpass: the answer decides. passive (or none) -> we are the DTLS client.
        let active = answer.setup.as_deref() != Some("active");
        api.start_dtls(active).map_err(|e| e.to_string())?;
    }
    let mut remote_candidates = 0;
    for line in &answer.candidates {
        match Candidate::from_sdp_string(line) {
            // Loopback only: never check anything else.
            Ok(c) if c.addr().ip().is_loopback() => {
                rtc.add_remote_candidate(c);
                remote_candidates += 1;
            }
            Ok(c) => say!("ignoring non-loopback candidate {}", c.addr()),
            Err(e) => say!("ignoring candidate {line:?}: {e}"),
        }
    }
    if remote_candidates == 0 {
        return Err(format!("the answer has no loopback candidate:\n{body}"));
    }
    for t in &tracks {
        if answer.rejected_mids.iter().any(|m| m == &*t.mid) {
            say!("the answer rejected mid {} ({:?})", t.mid, t.kind);
        }
    }
    if !args.quiet {
        say!("POST {} -> 201, Location {location}", args.whip);
    }

    // ----- run -----
    let stop = stop_signal(args.ignore_stdin);
    tokio::pin!(stop);
    let started = Instant::now();
    let mut connected_at: Option<Instant> = None;
    let mut keyframe_requests_ignored = 0u64;
    let mut dropped_before_connect = 0u64;
    let mut buf = vec![0u8; 2048];
    let mut vbuf = vec![0u8; 2048];
    let mut abuf = vec![0u8; 2048];
    let mut rtcp_buf = vec![0u8; 2048];
    let mut rtcp_buf2 = vec![0u8; 2048];
    let mut first_keyframe_logged = false;
    let mut keyframes_sent = 0u64;
    let mut last_video_in: Option<Instant> = None;
    let reason: String = loop {
        // Drain everything str0m wants to do now.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Ok(t),
                Ok(Output::Transmit(t)) => {
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        connected_at = Some(Instant::now());
                        say!(
                            "connected in {} ms (ICE+DTLS), resource {resource}",
                            started.elapsed().as_millis()
                        );
                    }
                    Event::IceConnectionStateChange(s) => {
                        if !args.quiet {
                            say!("ICE {s:?}");
                        }
                        if s == IceConnectionState::Disconnected && connected_at.is_some() {
                            // Keep going: str0m may recover; the server may come back.
                        }
                    }
                    // OBS never honours PLI or FIR.
                    Event::KeyframeRequest(_) => keyframe_requests_ignored += 1,
                    _ => {}
                },
                Err(e) => break Err(format!("str0m: {e}")),
            }
        };
        let timeout = match timeout {
            Ok(t) => t,
            Err(why) => break why,
        };
        if !rtc.is_alive() {
            break "the connection closed".into();
        }
        if connected_at.is_none() && started.elapsed() > CONNECT_TIMEOUT {
            break format!("not connected after {} s", CONNECT_TIMEOUT.as_secs());
        }
        let sleep =
            tokio::time::sleep_until(tokio::time::Instant::from_std(timeout.max(Instant::now())));
        tokio::select! {
            biased;
            why = &mut stop => break why,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, source)) = r else { continue };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local_addr,
                    contents,
                });
                if let Err(e) = rtc.handle_input(input) {
                    if !args.quiet { say!("input refused: {e}"); }
                }
            }
            r = video_in.0.recv_from(&mut vbuf) => {
                let Ok((n, _)) = r else { continue };
                let Some(t) = tracks.iter_mut().find(|t| t.kind == MediaKind::Video) else { continue };
                if connected_at.is_none() {
                    dropped_before_connect += 1; // like OBS: what comes before the track opens is lost
                    continue;
                }
                if is_keyframe(args.codec, &vbuf[..n]) {
                    keyframes_sent += 1;
                    if !first_keyframe_logged {
                        first_keyframe_logged = true;
                        if !args.quiet { say!("first keyframe sent {} ms after connecting", connected_at.map(|c| c.elapsed().as_millis()).unwrap_or(0)); }
                    }
                    if args.log_keyframes {
                        say!("keyframe at {} (unix ms)", unix_ms());
                    }
                }
                if let Some(limit) = args.log_gaps_ms {
                    let now = Instant::now();
                    if let Some(last) = last_video_in {
                        let gap = now.saturating_duration_since(last).as_millis() as u64;
                        if gap > limit {
                            say!("input gap {gap} ms (no video from FFmpeg), ended at {} (unix ms)", unix_ms());
                        }
                    }
                    last_video_in = Some(now);
                }
                forward(&mut rtc, t, &vbuf[..n]);
            }
            r = recv_opt(audio_in.as_ref().map(|a| &a.0), &mut abuf) => {
                let Some(n) = r else { continue };
                let Some(t) = tracks.iter_mut().find(|t| t.kind == MediaKind::Audio) else { continue };
                if connected_at.is_none() { continue; }
                forward(&mut rtc, t, &abuf[..n]);
            }
            // FFmpeg's RTCP: read and dropped.
            _ = video_in.1.recv_from(&mut rtcp_buf) => {}
            _ = recv_opt(audio_in.as_ref().map(|a| &a.1), &mut rtcp_buf2) => {}
            _ = sleep => {}
        }
        if let Err(e) = rtc.handle_input(Input::Timeout(Instant::now())) {
            if !args.quiet {
                say!("timeout refused: {e}");
            }
        }
    };

    // ----- stop like OBS: close the connection, then DELETE -----
    rtc.disconnect();
    while let Ok(Output::Transmit(t)) = rtc.poll_output() {
        let _ = socket.try_send_to(&t.contents, t.destination);
    }
    let summary: Vec<String> = tracks
        .iter()
        .map(|t| format!("{:?} mid {} {} packets", t.kind, t.mid, t.forwarded))
        .collect();
    say!(
        "stopping ({reason}): forwarded {}; {keyframes_sent} keyframes; {dropped_before_connect} video packets dropped before connecting; \
         {keyframe_requests_ignored} keyframe requests (PLI/FIR) ignored",
        summary.join(", ")
    );
    match http.delete(&resource).send().await {
        Ok(r) if r.status().as_u16() == 200 => say!("DELETE {resource} -> 200"),
        Ok(r) => say!(
            "warning: DELETE {resource} -> {} (OBS expects 200)",
            r.status()
        ),
        Err(e) => say!("warning: DELETE {resource} failed: {e}"),
    }
    Ok(())
}

/// One FFmpeg RTP packet out on the track: same payload, marker, timestamp and
/// sequence number (extended to 64 bits), our SSRC and the negotiated payload type.
fn forward(rtc: &mut Rtc, track: &mut Track, datagram: &[u8]) {
    let Some(p) = parse_rtp(datagram) else {
        return;
    };
    let seq = track.seq.extend(p.seq);
    let mut api = rtc.direct_api();
    let Some(stream) = api.stream_tx(&track.ssrc) else {
        return;
    };
    let write = RtpWrite::new(
        track.pt,
        SeqNo::from(seq),
        p.timestamp,
        Instant::now(),
        p.payload.to_vec(),
    )
    .marker(p.marker)
    .nackable(track.kind == MediaKind::Video);
    stream.write_rtp(write);
    track.forwarded += 1;
}

struct RtpView<'a> {
    marker: bool,
    seq: u16,
    timestamp: u32,
    payload: &'a [u8],
}

fn parse_rtp(b: &[u8]) -> Option<RtpView<'_>> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let pt = b[1] & 0x7f;
    if (72..=79).contains(&pt) {
        return None; // RTCP on the RTP port
    }
    let cc = (b[0] & 0x0f) as usize;
    let mut start = 12 + 4 * cc;
    if b[0] & 0x10 != 0 {
        if b.len() < start + 4 {
            return None;
        }
        let words = u16::from_be_bytes([b[start + 2], b[start + 3]]) as usize;
        start += 4 + 4 * words;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        let pad = *b.last()? as usize;
        end = end.checked_sub(pad)?;
    }
    if start >= end {
        return None;
    }
    Some(RtpView {
        marker: b[1] & 0x80 != 0,
        seq: u16::from_be_bytes([b[2], b[3]]),
        timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        payload: &b[start..end],
    })
}

/// Does this RTP packet start a keyframe (for the log only)?
fn is_keyframe(codec: VideoCodec, datagram: &[u8]) -> bool {
    let Some(p) = parse_rtp(datagram) else {
        return false;
    };
    let d = p.payload;
    match codec {
        VideoCodec::Vp8 => {
            // RFC 7741 descriptor, then the VP8 payload header (P bit 0 = keyframe).
            if d.is_empty() || d[0] & 0x10 == 0 || d[0] & 0x07 != 0 {
                return false;
            }
            let mut i = 1;
            if d[0] & 0x80 != 0 {
                let Some(&x) = d.get(1) else { return false };
                i = 2;
                if x & 0x80 != 0 {
                    i += if d.get(2).is_some_and(|b| b & 0x80 != 0) {
                        2
                    } else {
                        1
                    };
                }
                if x & 0x40 != 0 {
                    i += 1;
                }
                if x & 0x30 != 0 {
                    i += 1;
                }
            }
            d.get(i).is_some_and(|b| b & 0x01 == 0)
        }
        VideoCodec::H264 => {
            let nal = |b: u8| b & 0x1f;
            match d.first().map(|b| nal(*b)) {
                Some(5) | Some(7) => true,
                Some(28) => d.get(1).is_some_and(|b| b & 0x80 != 0 && nal(*b) == 5),
                Some(24) => {
                    // STAP-A: any SPS/IDR inside.
                    let mut i = 1;
                    while i + 2 < d.len() {
                        let len = u16::from_be_bytes([d[i], d[i + 1]]) as usize;
                        if matches!(nal(d[i + 2]), 5 | 7) {
                            return true;
                        }
                        i += 2 + len;
                    }
                    false
                }
                _ => false,
            }
        }
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// 16-bit RTP sequence numbers to str0m's 64-bit ones (rollover counter 0 at start).
#[derive(Default)]
struct SeqExtender {
    last: Option<u64>,
}

impl SeqExtender {
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(last) = self.last else {
            self.last = Some(seq as u64);
            return seq as u64;
        };
        let base = last & !0xffff;
        let candidates = [
            base.wrapping_sub(0x1_0000) | seq as u64,
            base | seq as u64,
            (base + 0x1_0000) | seq as u64,
        ];
        let out = candidates
            .into_iter()
            .filter(|c| *c < u64::MAX / 2)
            .min_by_key(|c| c.abs_diff(last))
            .unwrap_or(base | seq as u64);
        if out > last {
            self.last = Some(out);
        }
        out
    }
}

/// The RTP socket on `port` and the RTCP one on `port + 1` (FFmpeg's convention).
async fn bind_pair(ip: Ipv4Addr, port: u16) -> Result<(UdpSocket, UdpSocket), String> {
    let rtp = UdpSocket::bind((ip, port))
        .await
        .map_err(|e| format!("bind {ip}:{port}: {e}"))?;
    let rtcp = UdpSocket::bind((ip, port.wrapping_add(1)))
        .await
        .map_err(|e| format!("bind {ip}:{} (FFmpeg's RTCP): {e}", port.wrapping_add(1)))?;
    Ok((rtp, rtcp))
}

async fn recv_opt(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<usize> {
    match socket {
        Some(s) => s.recv_from(buf).await.ok().map(|(n, _)| n),
        None => std::future::pending().await,
    }
}

/// Resolves when the program should stop: SIGINT, SIGTERM, or stdin closing.
async fn stop_signal(ignore_stdin: bool) -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let stdin_closed = async {
        if ignore_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut b = [0u8; 256];
        loop {
            match stdin.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".into(),
        _ = int.recv() => "SIGINT".into(),
        _ = stdin_closed => "stdin closed".into(),
    }
}

/// The offer OBS (libdatachannel) makes, field for field (see CLIENTS.md).
fn obs_offer(creds: &IceCreds, fingerprint: &str, tracks: &[Track], codec: VideoCodec) -> String {
    let session_id: u32 = rand::random::<u32>() & 0x7fff_ffff;
    let cname = random_token(16);
    let stream = random_token(16);
    let mids: Vec<String> = tracks.iter().map(|t| t.mid.to_string()).collect();
    let mut s = String::new();
    let mut l = |line: String| {
        s.push_str(&line);
        s.push_str("\r\n");
    };
    l("v=0".into());
    l(format!("o=rtc {session_id} 0 IN IP4 127.0.0.1"));
    l("s=-".into());
    l("t=0 0".into());
    l(format!("a=group:BUNDLE {}", mids.join(" ")));
    l(format!("a=group:LS {}", mids.join(" ")));
    l("a=msid-semantic:WMS *".into());
    l("a=setup:actpass".into());
    l(format!("a=ice-ufrag:{}", creds.ufrag));
    l(format!("a=ice-pwd:{}", creds.pass));
    l("a=ice-options:ice2,trickle".into());
    l(format!("a=fingerprint:{fingerprint}"));
    for t in tracks {
        let (kind, suffix) = match t.kind {
            MediaKind::Audio => ("audio", "audio"),
            MediaKind::Video => ("video", "video"),
        };
        l(format!("m={kind} 9 UDP/TLS/RTP/SAVPF {}", *t.pt));
        l("c=IN IP4 0.0.0.0".into());
        l(format!("a=mid:{}", t.mid));
        l("a=sendonly".into());
        l(format!("a=ssrc:{} cname:{cname}", *t.ssrc));
        l(format!(
            "a=ssrc:{} msid:{stream} {stream}-{suffix}",
            *t.ssrc
        ));
        l(format!("a=msid:{stream} {stream}-{suffix}"));
        l("a=rtcp-mux".into());
        match t.kind {
            MediaKind::Audio => {
                l(format!("a=rtpmap:{OPUS_PT} opus/48000/2"));
                l(format!(
                    "a=fmtp:{OPUS_PT} minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1"
                ));
            }
            MediaKind::Video => {
                let name = match codec {
                    VideoCodec::Vp8 => "VP8",
                    VideoCodec::H264 => "H264",
                };
                l(format!("a=rtpmap:{VIDEO_PT} {name}/90000"));
                l(format!("a=rtcp-fb:{VIDEO_PT} nack"));
                l(format!("a=rtcp-fb:{VIDEO_PT} nack pli"));
                l(format!("a=rtcp-fb:{VIDEO_PT} goog-remb"));
                if codec == VideoCodec::H264 {
                    // OBS always says baseline 3.1, whatever x264 really sends.
                    l(format!(
                        "a=fmtp:{VIDEO_PT} profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1"
                    ));
                }
            }
        }
    }
    s
}

fn random_token(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// What we take from the answer.
struct Answer {
    ufrag: String,
    pwd: String,
    fingerprint: String,
    setup: Option<String>,
    /// `candidate:...` (without `a=`).
    candidates: Vec<String>,
    rejected_mids: Vec<String>,
}

fn parse_answer(sdp: &str) -> Result<Answer, String> {
    let mut ufrag = None;
    let mut pwd = None;
    let mut fingerprint = None;
    let mut setup = None;
    let mut candidates = Vec::new();
    let mut rejected_mids = Vec::new();
    let mut port_zero = false;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            port_zero = m.split_whitespace().nth(1) == Some("0");
        } else if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert_with(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert_with(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("a=fingerprint:") {
            fingerprint.get_or_insert_with(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("a=setup:") {
            setup.get_or_insert_with(|| v.to_string());
        } else if let Some(v) = line.strip_prefix("a=") {
            if v.starts_with("candidate:") && !candidates.iter().any(|c| c == v) {
                candidates.push(v.to_string());
            } else if let Some(mid) = v.strip_prefix("mid:") {
                if port_zero {
                    rejected_mids.push(mid.to_string());
                }
            }
        }
    }
    Ok(Answer {
        ufrag: ufrag.ok_or("the answer has no a=ice-ufrag")?,
        pwd: pwd.ok_or("the answer has no a=ice-pwd")?,
        fingerprint: fingerprint.ok_or("the answer has no a=fingerprint")?,
        setup,
        candidates,
        rejected_mids,
    })
}

/// The session URL from the POST URL and its (maybe relative) Location.
fn resolve(base: &str, location: &str) -> Result<String, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let scheme_end = base.find("://").ok_or("--whip is not an http URL")? + 3;
    let origin_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    if location.starts_with('/') {
        Ok(format!("{}{location}", &base[..origin_end]))
    } else {
        let dir_end = base
            .rfind('/')
            .filter(|i| *i >= origin_end)
            .unwrap_or(origin_end);
        Ok(format!("{}/{location}", &base[..dir_end]))
    }
}
