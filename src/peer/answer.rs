//! Our SDP answer, as a viewer's browser needs it for lip sync.
//!
//! str0m gives every m-line of an answer its own random media stream id (`msid`)
//! and CNAME. A browser plays audio and video in sync only when they belong to
//! one media stream (libwebrtc's sync group is the msid stream id), so a viewer
//! answered as str0m writes it never uses the sender reports that carry the
//! publisher's clock. A viewer's tracks show one publisher: they are put in one
//! stream with one CNAME here, by replacing the ids str0m chose (random tokens
//! of our own answer, so a whole-token replacement is exact).

/// `sdp` with every m-line's stream id and CNAME made the first m-line's.
pub fn one_media_stream(sdp: &str) -> String {
    let mut stream_ids: Vec<&str> = Vec::new();
    let mut cnames: Vec<&str> = Vec::new();
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("a=msid:") {
            if let Some(id) = rest.split(' ').next().filter(|id| !id.is_empty()) {
                stream_ids.push(id);
            }
        } else if let Some(rest) = line.strip_prefix("a=ssrc:") {
            if let Some(cname) = rest
                .split(' ')
                .nth(1)
                .and_then(|a| a.strip_prefix("cname:"))
            {
                cnames.push(cname);
            }
        }
    }
    let (Some(stream_id), Some(cname)) = (stream_ids.first(), cnames.first()) else {
        return sdp.to_string();
    };
    fn stream<'a>(id: &'a str, ids: &[&str], first: &'a str) -> &'a str {
        if ids.contains(&id) {
            first
        } else {
            id
        }
    }
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if body.starts_with("a=msid-semantic:") {
            out.push_str("a=msid-semantic: WMS ");
            out.push_str(stream_id);
        } else if let Some(rest) = body.strip_prefix("a=msid:") {
            // a=msid:<stream> <track>
            let (id, track) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str("a=msid:");
            out.push_str(stream(id, &stream_ids, stream_id));
            if !track.is_empty() {
                out.push(' ');
                out.push_str(track);
            }
        } else if let Some(rest) = body.strip_prefix("a=ssrc:") {
            // a=ssrc:<ssrc> cname:<cname>, or a=ssrc:<ssrc> msid:<stream> <track>
            let (ssrc, attribute) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str("a=ssrc:");
            out.push_str(ssrc);
            if let Some(c) = attribute.strip_prefix("cname:") {
                out.push_str(" cname:");
                out.push_str(if cnames.contains(&c) { cname } else { c });
            } else if let Some(msid) = attribute.strip_prefix("msid:") {
                let (id, track) = msid.split_once(' ').unwrap_or((msid, ""));
                out.push_str(" msid:");
                out.push_str(stream(id, &stream_ids, stream_id));
                if !track.is_empty() {
                    out.push(' ');
                    out.push_str(track);
                }
            } else if !attribute.is_empty() {
                out.push(' ');
                out.push_str(attribute);
            }
        } else {
            out.push_str(body);
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The media part of an answer str0m 0.25 wrote to Chromium's WHEP offer.
    const ANSWER: &str = "v=0\r\n\
        a=msid-semantic: WMS SYitFFjyETndtsOToXdjhEQAeH8aSQ JpzsRvJLfpVO6SpVEgRuHO7RvzQzxl\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
        a=msid:SYitFFjyETndtsOToXdjhEQAeH8aSQ HexOti9c9NUM1CscCGldvtAXbbAjQQ\r\n\
        a=ssrc:2942599373 cname:u241nNZ1z5fSTZx36xVh\r\n\
        a=ssrc:2942599373 msid:SYitFFjyETndtsOToXdjhEQAeH8aSQ HexOti9c9NUM1CscCGldvtAXbbAjQQ\r\n\
        a=ssrc-group:FID 2942599373 3178382951\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=msid:JpzsRvJLfpVO6SpVEgRuHO7RvzQzxl qhEcuUL3pf8zEsPifv6fFeQUun72Fj\r\n\
        a=ssrc:3185063814 cname:gmsYbOxpgtdeTalRz1Ib\r\n\
        a=ssrc:3185063814 msid:JpzsRvJLfpVO6SpVEgRuHO7RvzQzxl qhEcuUL3pf8zEsPifv6fFeQUun72Fj\r\n";

    #[test]
    fn every_track_joins_the_first_stream_and_cname_track_ids_stay() {
        let out = one_media_stream(ANSWER);
        assert!(!out.contains("JpzsRvJLfpVO6SpVEgRuHO7RvzQzxl"), "{out}");
        assert!(!out.contains("gmsYbOxpgtdeTalRz1Ib"), "{out}");
        assert!(out.contains("a=msid-semantic: WMS SYitFFjyETndtsOToXdjhEQAeH8aSQ\r\n"));
        assert!(out
            .contains("a=msid:SYitFFjyETndtsOToXdjhEQAeH8aSQ qhEcuUL3pf8zEsPifv6fFeQUun72Fj\r\n"));
        assert!(out.contains("a=ssrc:3185063814 cname:u241nNZ1z5fSTZx36xVh\r\n"));
        assert!(out.contains(
            "a=ssrc:3185063814 msid:SYitFFjyETndtsOToXdjhEQAeH8aSQ qhEcuUL3pf8zEsPifv6fFeQUun72Fj\r\n"
        ));
        assert!(out.contains("a=ssrc-group:FID 2942599373 3178382951\r\n"));
        assert_eq!(out.lines().count(), ANSWER.lines().count());
    }

    #[test]
    fn an_answer_without_streams_is_left_alone() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";
        assert_eq!(one_media_stream(sdp), sdp);
        assert_eq!(one_media_stream(""), "");
    }
}
