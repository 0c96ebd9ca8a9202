//! The crypto every `Rtc` uses: aws-lc-rs for SRTP, the STUN HMAC and hashes (the
//! per-packet work, as fast as before), OpenSSL for the DTLS handshake, because
//! str0m's own DTLS (dimpl) accepts ECDSA peer certificates only and GStreamer's
//! webrtcbin presents RSA ones.

mod dtls;

use str0m::crypto::CryptoProvider;

pub use dtls::{generate_certificate, OpensslDtlsProvider};

/// The provider: str0m's aws-lc-rs parts with OpenSSL's DTLS in place of dimpl.
pub fn provider() -> CryptoProvider {
    static DTLS: OpensslDtlsProvider = OpensslDtlsProvider::new();
    CryptoProvider {
        dtls_provider: &DTLS,
        ..str0m::crypto::from_feature_flags()
    }
}

/// Installs [`provider`] as the process default (the first install wins) and returns
/// the one in force.
pub fn install() -> Option<&'static CryptoProvider> {
    provider().install_process_default();
    CryptoProvider::get_default()
}
