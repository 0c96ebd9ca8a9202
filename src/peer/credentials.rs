//! ICE credentials from the operating system's cryptographic RNG. str0m's
//! defaults come from a non-cryptographic generator, and the ufrag and password
//! are all that stands between a stranger and a session's media port, so ours
//! are set through its API (`RtcConfig::set_local_ice_credentials`, and again
//! after an ICE restart).

use rand::distr::{Alphanumeric, Distribution};
use rand::rngs::OsRng;
use rand::TryRngCore;
use str0m::IceCreds;

/// Characters in a ufrag: 96 bits of entropy (RFC 8445 §5.3 asks at least 24).
const UFRAG_LEN: usize = 16;
/// Characters in a password: about 190 bits (RFC 8445 asks at least 128).
const PASSWORD_LEN: usize = 32;

pub fn random_ice_credentials() -> IceCreds {
    // `unwrap_err` panics only if the OS cannot give randomness; the caller
    // (accepting an offer) runs contained, so that costs the one offer.
    let mut rng = OsRng.unwrap_err();
    let mut text = |len| -> String {
        Alphanumeric
            .sample_iter(&mut rng)
            .take(len)
            .map(char::from)
            .collect()
    };
    IceCreds {
        ufrag: text(UFRAG_LEN),
        pass: text(PASSWORD_LEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_long_ice_chars_and_differ() {
        let a = random_ice_credentials();
        let b = random_ice_credentials();
        assert_eq!(a.ufrag.len(), UFRAG_LEN);
        assert_eq!(a.pass.len(), PASSWORD_LEN);
        assert!(a
            .ufrag
            .chars()
            .chain(a.pass.chars())
            .all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.ufrag, b.ufrag);
        assert_ne!(a.pass, b.pass);
    }
}
