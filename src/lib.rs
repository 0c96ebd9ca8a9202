//! Switchboard: a WebRTC Selective Forwarding Unit. Publishers send media in over
//! WHIP, viewers pull it out over WHEP; RTP packets are forwarded, never decoded.
//!
//! Follow one packet: [`shard`] reads the datagram and hands it to the publisher's
//! [`peer`] (`str0m::Rtc`), which yields a [`router::MediaPacket`]; the shard fans
//! it out to the room's viewers ([`router`]), each [`peer`] rewrites headers
//! ([`router::forward`]) and writes it to its `Rtc`, whose datagrams the shard sends.

pub mod auth;
pub mod config;
pub mod crypto;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod load;
pub mod metrics;
pub mod peer;
pub mod room;
pub mod router;
pub mod server;
pub mod shard;
