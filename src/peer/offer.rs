//! A light reading of an SDP offer's m-lines, used to decide whether there is
//! anything we can take and, when there is not, to say precisely why.
//! (str0m does the real parsing and negotiation; this only summarises.)

/// One m-line as offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    /// `audio`, `video`, `application`, ...
    pub kind: String,
    pub mid: Option<String>,
    /// `sendonly`, `recvonly`, `sendrecv` or `inactive` (default `sendrecv`).
    pub direction: String,
    /// Codec names from `a=rtpmap`, upper-cased (e.g. `VP8`, `OPUS`).
    pub codecs: Vec<String>,
    /// `m=... 0 ...` with no `a=bundle-only`: the offerer rejected it itself.
    pub rejected: bool,
    /// `a=simulcast:` is offered (several layers, by rid).
    pub simulcast: bool,
}

impl OfferedMedia {
    pub fn is_av(&self) -> bool {
        self.kind == "audio" || self.kind == "video"
    }

    /// The offerer will send on this m-line.
    pub fn sends(&self) -> bool {
        self.direction == "sendonly" || self.direction == "sendrecv"
    }

    /// The offerer will receive on this m-line.
    pub fn receives(&self) -> bool {
        self.direction == "recvonly" || self.direction == "sendrecv"
    }
}

/// Audio, and video, m-lines one offer may have: a viewer's slots of each kind,
/// a publisher's tracks. Each slot costs a viewer work on every packet of its
/// room, so a hostile offer cannot ask for hundreds.
pub const MAX_SLOTS_PER_KIND: usize = 16;

/// Why an offer has too many audio or video m-lines, if it has.
pub fn too_many_lines(media: &[OfferedMedia]) -> Option<String> {
    ["audio", "video"].iter().find_map(|kind| {
        let lines = media
            .iter()
            .filter(|m| m.kind == *kind && !m.rejected)
            .count();
        (lines > MAX_SLOTS_PER_KIND).then(|| {
            format!("the offer has {lines} {kind} m-lines; at most {MAX_SLOTS_PER_KIND} are taken")
        })
    })
}

/// The codecs Switchboard forwards, by `a=rtpmap` name.
pub const FORWARDED_CODECS: &[&str] = &["OPUS", "VP8", "VP9", "H264", "H265", "AV1"];

/// The client offers to send video in simulcast layers.
pub fn sends_simulcast(media: &[OfferedMedia]) -> bool {
    media
        .iter()
        .any(|m| m.kind == "video" && m.sends() && !m.rejected && m.simulcast)
}

/// The first video codec we forward that the client offers to send: what a
/// publisher will send (OBS offers one; browsers send their first).
pub fn first_sent_video_codec(media: &[OfferedMedia]) -> Option<str0m::format::Codec> {
    use str0m::format::Codec;
    media
        .iter()
        .filter(|m| m.kind == "video" && m.sends() && !m.rejected)
        .flat_map(|m| m.codecs.iter())
        .find_map(|name| match name.as_str() {
            "VP8" => Some(Codec::Vp8),
            "VP9" => Some(Codec::Vp9),
            "H264" => Some(Codec::H264),
            "H265" => Some(Codec::H265),
            "AV1" => Some(Codec::Av1),
            _ => None,
        })
}

/// Why an SDP body could not be parsed, for a person: the first line that is not
/// SDP, rather than the parser's internals (which name memory offsets).
pub fn describe_parse_error(sdp: &str, parser_error: &str) -> String {
    if sdp.trim().is_empty() {
        return "the body is empty; send the SDP offer".to_string();
    }
    let mut lines = sdp.lines().map(|l| l.trim_end_matches('\r')).enumerate();
    if let Some((_, first)) = lines.clone().find(|(_, l)| !l.is_empty()) {
        if first != "v=0" {
            return format!(
                "an SDP offer starts with `v=0`, this one starts with `{}`",
                clip(first)
            );
        }
    }
    let not_sdp = lines.find(|(_, l)| {
        let b = l.as_bytes();
        let is_sdp_line = b.len() >= 2 && b[0].is_ascii_lowercase() && b[1] == b'=';
        !l.is_empty() && !is_sdp_line
    });
    if let Some((n, line)) = not_sdp {
        return format!(
            "line {} is not an SDP line (`type=value`): `{}`",
            n + 1,
            clip(line)
        );
    }
    // The parser's own words, without the memory address it names.
    let cleaned: String = match (
        parser_error.find(" at PointerOffset("),
        parser_error.find(')'),
    ) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{}", &parser_error[..start], &parser_error[end + 1..])
        }
        _ => parser_error.to_string(),
    };
    format!(
        "the SDP could not be parsed: {}",
        cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

fn clip(line: &str) -> String {
    let mut s: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        s.push('…');
    }
    s
}

/// The first `a=ice-ufrag` of an SDP (session or first m-line).
pub fn first_ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
}

pub fn summarize(sdp: &str) -> Vec<OfferedMedia> {
    let mut media: Vec<OfferedMedia> = Vec::new();
    let mut bundle_only = false;
    let mut port_zero = false;
    let close = |media: &mut Vec<OfferedMedia>, port_zero: bool, bundle_only: bool| {
        if let Some(last) = media.last_mut() {
            last.rejected = port_zero && !bundle_only;
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            close(&mut media, port_zero, bundle_only);
            let mut fields = rest.split_whitespace();
            let kind = fields.next().unwrap_or_default().to_ascii_lowercase();
            port_zero = fields.next() == Some("0");
            bundle_only = false;
            media.push(OfferedMedia {
                kind,
                mid: None,
                direction: "sendrecv".to_string(),
                codecs: Vec::new(),
                rejected: false,
                simulcast: false,
            });
            continue;
        }
        let Some(m) = media.last_mut() else {
            continue;
        };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            m.mid = Some(mid.trim().to_string());
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            if let Some(name) = map
                .split_whitespace()
                .nth(1)
                .and_then(|enc| enc.split('/').next())
            {
                let name = name.to_ascii_uppercase();
                if !m.codecs.contains(&name) {
                    m.codecs.push(name);
                }
            }
        } else if line == "a=bundle-only" {
            bundle_only = true;
        } else if line.starts_with("a=simulcast:") {
            m.simulcast = true;
        } else if let Some(dir) = line
            .strip_prefix("a=")
            .filter(|d| matches!(*d, "sendonly" | "recvonly" | "sendrecv" | "inactive"))
        {
            m.direction = dir.to_string();
        }
    }
    close(&mut media, port_zero, bundle_only);
    media
}

/// The offer has a data channel (an SCTP m-line not rejected).
pub fn has_data_channel(media: &[OfferedMedia]) -> bool {
    media.iter().any(|m| m.kind == "application" && !m.rejected)
}

/// The offer has an audio or video m-line not rejected.
pub fn has_av(media: &[OfferedMedia]) -> bool {
    media.iter().any(|m| m.is_av() && !m.rejected)
}

/// Why an offer has nothing we can take, in words a person can act on; `None` when
/// it has something. `publishing` is true for WHIP (we need media the client sends)
/// and false for WHEP (we need media the client receives).
pub fn nothing_usable(media: &[OfferedMedia], publishing: bool) -> Option<String> {
    if media.is_empty() {
        return Some("the offer has no m-lines".to_string());
    }
    let av: Vec<&OfferedMedia> = media.iter().filter(|m| m.is_av() && !m.rejected).collect();
    if av.is_empty() {
        if !publishing && has_data_channel(media) {
            return None; // a data-only participant
        }
        let kinds: Vec<&str> = media.iter().map(|m| m.kind.as_str()).collect();
        return Some(format!(
            "the offer has no audio or video m-line (it has: {}); {}",
            kinds.join(", "),
            if publishing {
                "WHIP publishing needs audio and/or video (a participant with only a data channel joins with WHEP)"
            } else {
                "WHEP needs audio, video or a data channel"
            }
        ));
    }
    let right_way: Vec<&&OfferedMedia> = av
        .iter()
        .filter(|m| if publishing { m.sends() } else { m.receives() })
        .collect();
    if right_way.is_empty() {
        let want = if publishing {
            "sendonly or sendrecv"
        } else {
            "recvonly or sendrecv"
        };
        let dirs: Vec<String> = av
            .iter()
            .map(|m| format!("{} {}", m.kind, m.direction))
            .collect();
        return Some(format!(
            "no audio or video m-line is {want} (offered: {})",
            dirs.join(", ")
        ));
    }
    let forwardable = right_way.iter().any(|m| {
        m.codecs
            .iter()
            .any(|c| FORWARDED_CODECS.contains(&c.as_str()))
    });
    if !forwardable {
        let offered: Vec<String> = right_way
            .iter()
            .map(|m| {
                format!(
                    "{}: {}",
                    m.kind,
                    if m.codecs.is_empty() {
                        "none".to_string()
                    } else {
                        m.codecs.join(" ")
                    }
                )
            })
            .collect();
        return Some(format!(
            "no codec we can forward was offered (offered {}; we forward {})",
            offered.join("; "),
            FORWARDED_CODECS.join(", ")
        ));
    }
    None
}

/// Replaces every `a=ice-ufrag`/`a=ice-pwd` of an offer with new credentials: the
/// offer as it would look after the client's ICE restart.
pub fn with_credentials(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len() + 64);
    for line in offer.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        let ending = &line[bare.len()..];
        if bare.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
            out.push_str(if ending.is_empty() { "\r\n" } else { ending });
        } else if bare.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
            out.push_str(if ending.is_empty() { "\r\n" } else { ending });
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBS: &str = "v=0\r\no=rtc 1 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 H264/90000\r\n";

    #[test]
    fn an_offer_may_ask_for_a_bounded_number_of_slots() {
        let lines = |n: usize, kind: &str| {
            let mut sdp = String::from("v=0\r\no=- 1 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
            for i in 0..n {
                sdp.push_str(&format!(
                    "m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n"
                ));
            }
            summarize(&sdp)
        };
        assert_eq!(too_many_lines(&lines(MAX_SLOTS_PER_KIND, "video")), None);
        let why = too_many_lines(&lines(MAX_SLOTS_PER_KIND + 1, "video")).expect("too many");
        assert!(why.contains("17 video m-lines"), "{why}");
        assert!(too_many_lines(&lines(500, "audio")).is_some());
        assert_eq!(too_many_lines(&[]), None);
    }

    #[test]
    fn reads_kinds_mids_directions_and_codecs() {
        let m = summarize(OBS);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].kind, "audio");
        assert_eq!(m[0].mid.as_deref(), Some("0"));
        assert_eq!(m[0].direction, "sendonly");
        assert_eq!(m[0].codecs, vec!["OPUS"]);
        assert_eq!(m[1].codecs, vec!["H264"]);
        assert_eq!(nothing_usable(&m, true), None);
        assert!(nothing_usable(&m, false).unwrap().contains("recvonly"));
    }

    #[test]
    fn parse_errors_name_the_line_and_no_memory_address() {
        assert!(describe_parse_error("", "x").contains("empty"));
        assert!(describe_parse_error("hello", "x").contains("starts with `hello`"));
        let why = describe_parse_error("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nnonsense here\r\n", "x");
        assert!(why.contains("line 3"), "{why}");
        let why = describe_parse_error(
            "v=0\r\nm=audio\r\n",
            "SDP parse: Parse error at PointerOffset(0x7f00)\nUnexpected `x`",
        );
        assert!(!why.contains("PointerOffset"), "{why}");
        assert!(why.contains("Unexpected"), "{why}");
    }

    #[test]
    fn data_channel_only_is_named() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        let why = nothing_usable(&summarize(sdp), true).unwrap();
        assert!(why.contains("no audio or video"), "{why}");
        assert!(why.contains("application"), "{why}");
        assert!(
            why.contains("WHEP"),
            "says where a data-only participant joins: {why}"
        );
        // On WHEP it is a participant that only talks.
        assert_eq!(nothing_usable(&summarize(sdp), false), None);
        let rejected = "v=0\r\nm=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        assert!(nothing_usable(&summarize(rejected), false).is_some());
    }

    #[test]
    fn unknown_codecs_are_listed() {
        let sdp =
            "v=0\r\nm=video 9 RTP/SAVPF 34\r\na=mid:v\r\na=sendonly\r\na=rtpmap:34 H263/90000\r\n";
        let why = nothing_usable(&summarize(sdp), true).unwrap();
        assert!(why.contains("H263"), "{why}");
    }

    #[test]
    fn bundle_only_port_zero_is_not_rejected() {
        let sdp = "v=0\r\nm=audio 0 RTP/SAVPF 111\r\na=bundle-only\r\na=mid:a\r\na=rtpmap:111 OPUS/48000/2\r\n\
m=video 0 RTP/SAVPF 96\r\na=mid:v\r\na=rtpmap:96 VP8/90000\r\n";
        let m = summarize(sdp);
        assert!(!m[0].rejected);
        assert!(m[1].rejected);
    }

    #[test]
    fn credentials_are_replaced_everywhere() {
        let offer =
            "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=audio 9 X 0\r\na=ice-ufrag:old\r\n";
        let new = with_credentials(offer, "nu", "np");
        assert_eq!(
            new,
            "v=0\r\na=ice-ufrag:nu\r\na=ice-pwd:np\r\nm=audio 9 X 0\r\na=ice-ufrag:nu\r\n"
        );
    }
}
