//! Bearer tokens for WHIP and WHEP: JSON Web Tokens signed with HS256 (a shared
//! secret), or RS256/ES256 (public keys in PEM files), checked on every offer.
//!
//! A token names the room it is good for (exactly, or a prefix pattern ending in
//! `*`), the participant's identity and display name, what it may do there
//! (`publish`, `subscribe`, `data`, and `admin` for the room API) and when it
//! expires. No token, or one that does not verify or has expired, is a 401; a good
//! token for another room or without the grant is a 403.
//!
//! The `jsonwebtoken` crate does the signing and verification (aws-lc-rs backend,
//! the one str0m already brings); this module only says which tokens open which
//! doors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant's identity: what links its WHIP and WHEP sessions.
    pub sub: String,
    /// Its display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The room, or a pattern such as `team-*` (a prefix).
    pub room: String,
    #[serde(default)]
    pub publish: bool,
    #[serde(default)]
    pub subscribe: bool,
    #[serde(default)]
    pub data: bool,
    #[serde(default)]
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// What a request wants to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Publish,
    Subscribe,
    Data,
    Admin,
}

impl Grant {
    fn name(self) -> &'static str {
        match self {
            Grant::Publish => "publish",
            Grant::Subscribe => "subscribe",
            Grant::Data => "data",
            Grant::Admin => "admin",
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401: no usable credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: good credentials, not for this.
    #[error("{0}")]
    Forbidden(String),
}

/// The keys tokens are verified with.
pub struct Verifier {
    keys: Vec<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<Algorithm> = self.keys.iter().map(|(_, a)| *a).collect();
        write!(f, "Verifier({algorithms:?})")
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl Verifier {
    /// From an HS256 secret (may be empty: none) and PEM public keys (RSA for
    /// RS256, EC P-256 for ES256).
    pub fn new(hs256_secret: &str, public_keys_pem: &[String]) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        if !hs256_secret.is_empty() {
            if hs256_secret.len() < MIN_SECRET_BYTES {
                return Err(KeyError(format!(
                    "the HS256 secret has {} bytes; at least {MIN_SECRET_BYTES} are needed",
                    hs256_secret.len()
                )));
            }
            keys.push((
                DecodingKey::from_secret(hs256_secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        for (i, pem) in public_keys_pem.iter().enumerate() {
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (k, Algorithm::ES256)
            } else {
                return Err(KeyError(format!(
                    "public key {} is neither an RSA nor an EC public key in PEM",
                    i + 1
                )));
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError(
                "no key to verify tokens with: set auth.hs256_secret or auth.public_key_files"
                    .into(),
            ));
        }
        Ok(Verifier { keys })
    }

    /// The claims of the bearer token in an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Claims, Denied> {
        let header = authorization.ok_or_else(|| {
            Denied::Unauthenticated("a bearer token is required (Authorization: Bearer ...)".into())
        })?;
        let token = bearer_token(header).ok_or_else(|| {
            Denied::Unauthenticated("the Authorization header is not `Bearer <token>`".into())
        })?;
        let mut last = None;
        for (key, algorithm) in &self.keys {
            let mut validation = Validation::new(*algorithm);
            validation.leeway = LEEWAY.as_secs();
            validation.set_required_spec_claims(&["exp", "sub"]);
            match decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        let why = match last.as_ref().map(|e| e.kind()) {
            Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => "the token has expired",
            Some(jsonwebtoken::errors::ErrorKind::InvalidSignature)
            | Some(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm) => {
                "the token's signature does not verify"
            }
            Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_))
            | Some(jsonwebtoken::errors::ErrorKind::Json(_)) => {
                "the token lacks a required claim (sub, room, exp)"
            }
            _ => "the token is not a valid JWT",
        };
        Err(Denied::Unauthenticated(why.into()))
    }
}

/// Whether `claims` allow `grant` in `room`.
pub fn authorize(claims: &Claims, room: &str, grant: Grant) -> Result<(), Denied> {
    if !room_matches(&claims.room, room) {
        return Err(Denied::Forbidden(format!(
            "the token is for room `{}`, not `{room}`",
            claims.room
        )));
    }
    require_grant(claims, grant)
}

/// Whether `claims` grant `grant`, whatever the room.
pub fn require_grant(claims: &Claims, grant: Grant) -> Result<(), Denied> {
    let granted = match grant {
        Grant::Publish => claims.publish,
        Grant::Subscribe => claims.subscribe,
        Grant::Data => claims.data,
        Grant::Admin => claims.admin,
    };
    if granted {
        Ok(())
    } else {
        Err(Denied::Forbidden(format!(
            "the token does not grant `{}`",
            grant.name()
        )))
    }
}

/// `pattern` is a room name, or a prefix followed by `*` (`*` alone: any room).
pub fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Mints an HS256 token (`switchboard token`).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, KeyError> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError(e.to_string()))
}

/// Seconds since the Unix epoch, `ttl` from now.
pub fn expiry_in(ttl: Duration) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl)
        .as_secs()
}

/// How far clocks may disagree about a token's expiry.
const LEEWAY: Duration = Duration::from_secs(30);

/// An HS256 secret shorter than this is refused (RFC 7518 section 3.2: at least
/// the hash's size, 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 9110).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn claims(room: &str) -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            room: room.into(),
            publish: true,
            subscribe: false,
            data: true,
            admin: false,
            exp: expiry_in(Duration::from_secs(3600)),
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(SECRET, &[]).expect("verifier")
    }

    #[test]
    fn a_minted_token_verifies_and_grants_what_it_says() {
        let c = claims("standup");
        let token = mint_hs256(SECRET, &c).unwrap();
        let got = verifier().verify(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(got, c);
        assert!(authorize(&got, "standup", Grant::Publish).is_ok());
        assert!(authorize(&got, "standup", Grant::Data).is_ok());
        assert!(matches!(
            authorize(&got, "standup", Grant::Subscribe),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&got, "other", Grant::Publish),
            Err(Denied::Forbidden(_))
        ));
        assert!(verifier()
            .verify(Some(&format!("bearer  {token} ")))
            .is_ok());
    }

    #[test]
    fn bad_credentials_are_unauthenticated_with_a_reason() {
        let v = verifier();
        let good = mint_hs256(SECRET, &claims("r")).unwrap();
        let other_secret = mint_hs256("another secret, long enough to use!", &claims("r")).unwrap();
        let mut expired = claims("r");
        expired.exp = 1_000;
        let expired = mint_hs256(SECRET, &expired).unwrap();
        for (header, why) in [
            (None, "required"),
            (Some("Basic abc".to_string()), "Bearer"),
            (Some("Bearer".to_string()), "Bearer"),
            (Some(format!("Bearer {good} x")), "Bearer"),
            (Some("Bearer not.a.jwt".to_string()), "valid"),
            (Some(format!("Bearer {other_secret}")), "signature"),
            (Some(format!("Bearer {expired}")), "expired"),
            (Some(format!("Bearer {}", tamper(&good))), "signature"),
            (Some(format!("Bearer {}", &good[..good.len() - 2])), "valid"),
        ] {
            match v.verify(header.as_deref()) {
                Err(Denied::Unauthenticated(reason)) => {
                    assert!(reason.contains(why), "{header:?}: {reason}")
                }
                other => panic!("{header:?}: {other:?}"),
            }
        }
    }

    /// The token with one character of its signature changed.
    fn tamper(token: &str) -> String {
        let at = token.len() - 10;
        let c = if &token[at..=at] == "A" { "B" } else { "A" };
        format!("{}{c}{}", &token[..at], &token[at + 1..])
    }

    #[test]
    fn a_token_without_a_room_or_subject_is_refused() {
        #[derive(Serialize)]
        struct NoRoom {
            sub: String,
            exp: u64,
        }
        let token = encode(
            &Header::new(Algorithm::HS256),
            &NoRoom {
                sub: "x".into(),
                exp: expiry_in(Duration::from_secs(60)),
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            verifier().verify(Some(&format!("Bearer {token}"))),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn an_alg_none_token_is_refused() {
        // {"alg":"none"} . claims . (no signature)
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let body = "eyJzdWIiOiJhIiwicm9vbSI6IioiLCJwdWJsaXNoIjp0cnVlLCJleHAiOjQxMDI0NDQ4MDB9";
        let token = format!("Bearer {header}.{body}.");
        assert!(matches!(
            verifier().verify(Some(&token)),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn room_patterns_match_by_prefix_only_with_a_star() {
        assert!(room_matches("standup", "standup"));
        assert!(!room_matches("standup", "standup2"));
        assert!(room_matches("team-*", "team-a"));
        assert!(!room_matches("team-*", "teams"));
        assert!(room_matches("*", "anything"));
    }

    #[test]
    fn es256_and_rs256_tokens_verify_against_their_public_keys() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        let ec =
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
        let ec = PKey::from_ec_key(ec).unwrap();
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let c = claims("r");
        for (key, algorithm) in [(ec, Algorithm::ES256), (rsa, Algorithm::RS256)] {
            let private = key.private_key_to_pem_pkcs8().unwrap();
            let public = String::from_utf8(key.public_key_to_pem().unwrap()).unwrap();
            let signing = match algorithm {
                Algorithm::ES256 => EncodingKey::from_ec_pem(&private).unwrap(),
                _ => EncodingKey::from_rsa_pem(&private).unwrap(),
            };
            let token = encode(&Header::new(algorithm), &c, &signing).unwrap();
            let v = Verifier::new(SECRET, &[public]).unwrap();
            assert_eq!(
                v.verify(Some(&format!("Bearer {token}"))).unwrap(),
                c,
                "{algorithm:?}"
            );
            // An HS256 token made with the public key as the secret (the classic
            // confusion) does not pass.
            let forged = mint_hs256(
                &String::from_utf8_lossy(&key.public_key_to_pem().unwrap()),
                &c,
            )
            .unwrap();
            assert!(v.verify(Some(&format!("Bearer {forged}"))).is_err());
        }
    }

    #[test]
    fn keys_that_cannot_verify_are_refused_at_start() {
        assert!(Verifier::new("", &[]).is_err());
        assert!(Verifier::new("short", &[]).is_err());
        assert!(Verifier::new("", &["not a pem".into()]).is_err());
    }
}
