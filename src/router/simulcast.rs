//! Simulcast layers. Until per-viewer layer choice exists, every viewer gets the
//! best layer a publisher sends; this module says which rid that is.
//!
//! Rids carry no quality by themselves, so the order comes from the conventions of
//! real clients (CLIENTS.md): OBS sends `0..N-1` with `0` the largest; Chrome uses
//! `q;h;f` (quarter, half, full) or `h;m;l` (high, medium, low), listed in any order.

/// Quality rank of `rid` among `all` the rids of its m-line: 0 is the best.
/// A stream without a rid (no simulcast) ranks 0.
pub fn rank(rid: Option<&str>, all: &[String]) -> u8 {
    let Some(rid) = rid else {
        return 0;
    };
    let has = |r: &str| all.iter().any(|x| x == r);
    let conventional = if has("f") || has("q") {
        ["f", "h", "q"].iter().position(|r| *r == rid)
    } else if has("l") || has("m") {
        ["h", "m", "l"].iter().position(|r| *r == rid)
    } else {
        None
    };
    if let Some(p) = conventional {
        return p as u8;
    }
    if let Ok(n) = rid.parse::<u8>() {
        return n;
    }
    // Unknown names: the order they were offered in.
    all.iter()
        .position(|r| r == rid)
        .unwrap_or(all.len())
        .min(u8::MAX as usize) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn obs_numbers_zero_is_best() {
        let all = rids(&["0", "1", "2"]);
        assert_eq!(rank(Some("0"), &all), 0);
        assert_eq!(rank(Some("2"), &all), 2);
    }

    #[test]
    fn chrome_q_h_f_full_is_best_whatever_the_order() {
        let all = rids(&["q", "h", "f"]);
        assert_eq!(rank(Some("f"), &all), 0);
        assert_eq!(rank(Some("h"), &all), 1);
        assert_eq!(rank(Some("q"), &all), 2);
    }

    #[test]
    fn chrome_h_m_l_high_is_best() {
        let all = rids(&["l", "m", "h"]);
        assert_eq!(rank(Some("h"), &all), 0);
        assert_eq!(rank(Some("l"), &all), 2);
    }

    #[test]
    fn unknown_names_keep_the_offered_order_and_no_rid_is_best() {
        let all = rids(&["hi", "lo"]);
        assert_eq!(rank(Some("hi"), &all), 0);
        assert_eq!(rank(Some("lo"), &all), 1);
        assert_eq!(rank(None, &all), 0);
    }
}
