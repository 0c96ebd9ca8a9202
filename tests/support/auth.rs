//! Tokens for the tests that turn auth on: one secret, one way to mint.

use std::time::Duration;

use switchboard::auth::{expiry_in, mint_hs256, Claims};
use switchboard::config::Config;

/// The HS256 secret of every auth-on test server.
pub const SECRET: &str = "a test secret of at least 32 bytes!";

/// `config` with auth on, tokens signed with [`SECRET`].
pub fn auth_on(mut config: Config) -> Config {
    config.auth.enabled = true;
    config.auth.hs256_secret = SECRET.into();
    config
}

/// Claims for `sub` in `room` (or a pattern), no grant yet, good for 10 minutes:
/// callers grant what they need with struct update.
pub fn claims(sub: &str, room: &str) -> Claims {
    Claims {
        sub: sub.into(),
        name: None,
        room: room.into(),
        publish: false,
        subscribe: false,
        data: false,
        admin: false,
        exp: expiry_in(Duration::from_secs(600)),
    }
}

/// A token for `claims`, signed with [`SECRET`].
pub fn mint(claims: &Claims) -> String {
    mint_hs256(SECRET, claims).expect("mint")
}
