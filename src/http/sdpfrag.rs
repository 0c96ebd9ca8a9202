//! Trickle ICE and ICE restart fragments (`application/trickle-ice-sdpfrag`,
//! RFC 8840) as WHIP/WHEP PATCH bodies carry them.

/// What a PATCH body says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// Remote credentials, present for an ICE restart.
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `candidate:...` values (without `a=`).
    pub candidates: Vec<String>,
    pub end_of_candidates: bool,
}

pub fn parse(body: &str) -> SdpFrag {
    let mut frag = SdpFrag::default();
    for line in body.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            // The first one wins: a fragment may repeat it per m-line.
            frag.ufrag.get_or_insert_with(|| v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            frag.pwd.get_or_insert_with(|| v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("a=candidate:") {
            let candidate = format!("candidate:{}", v.trim());
            if !frag.candidates.contains(&candidate) {
                frag.candidates.push(candidate);
            }
        } else if line == "a=end-of-candidates" {
            frag.end_of_candidates = true;
        }
    }
    frag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credentials_candidates_and_end() {
        let body = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
a=end-of-candidates\r\n";
        let f = parse(body);
        assert_eq!(f.ufrag.as_deref(), Some("abcd"));
        assert_eq!(f.pwd.as_deref(), Some("0123456789abcdef012345"));
        assert_eq!(
            f.candidates,
            vec!["candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"]
        );
        assert!(f.end_of_candidates);
    }

    #[test]
    fn trickle_without_credentials() {
        let f = parse("a=candidate:2 1 UDP 1 127.0.0.1 9 typ host\n");
        assert_eq!(f.ufrag, None);
        assert_eq!(f.candidates.len(), 1);
    }
}
