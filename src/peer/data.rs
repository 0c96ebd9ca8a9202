//! The data channel side of a peer: a participant's messages go to every other
//! participant in the room, tagged with who sent them, within size and rate
//! limits.
//!
//! A relayed message is one JSON text message:
//! `{"from": "<identity>", "name": "<display name>"|null, "text": "..."}`, or with
//! `"binary": "<base64>"` instead of `text` for a binary message. A participant
//! past a limit is told why (`{"error": "..."}`) and its channel is closed.

use std::time::{Duration, Instant};

use base64::Engine;
use str0m::channel::ChannelId;
use str0m::Rtc;

/// The largest message relayed (RFC 8831 section 6.6: 16 KiB is what every
/// implementation takes without fragmenting; larger is not interoperable).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Messages a participant may send per second, sustained...
pub const MESSAGES_PER_SECOND: f64 = 20.0;
/// ...and at once.
pub const MESSAGE_BURST: f64 = 40.0;
/// Bytes a participant may send per second, sustained (and at once: twice that).
pub const BYTES_PER_SECOND: f64 = 64.0 * 1024.0;

/// Why a participant's channel is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    TooLarge(usize),
    TooFast,
}

impl Refused {
    pub fn reason(&self) -> String {
        match self {
            Refused::TooLarge(n) => format!(
                "a message of {n} bytes is over the limit of {MAX_MESSAGE_BYTES}: the channel is closed"
            ),
            Refused::TooFast => format!(
                "more than {MESSAGES_PER_SECOND} messages or {} KiB per second: the channel is closed",
                BYTES_PER_SECOND as usize / 1024
            ),
        }
    }
}

/// Two token buckets: messages and bytes. Pure, time passed in.
#[derive(Debug, Clone)]
pub struct RateLimit {
    messages: f64,
    bytes: f64,
    at: Option<Instant>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            messages: MESSAGE_BURST,
            bytes: 2.0 * BYTES_PER_SECOND,
            at: None,
        }
    }
}

impl RateLimit {
    /// Takes one message of `len` bytes, or says why not.
    pub fn take(&mut self, len: usize, now: Instant) -> Result<(), Refused> {
        if len > MAX_MESSAGE_BYTES {
            return Err(Refused::TooLarge(len));
        }
        let elapsed = self
            .at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
            .as_secs_f64();
        self.at = Some(now);
        self.messages = (self.messages + elapsed * MESSAGES_PER_SECOND).min(MESSAGE_BURST);
        self.bytes = (self.bytes + elapsed * BYTES_PER_SECOND).min(2.0 * BYTES_PER_SECOND);
        if self.messages < 1.0 || self.bytes < len as f64 {
            return Err(Refused::TooFast);
        }
        self.messages -= 1.0;
        self.bytes -= len as f64;
        Ok(())
    }
}

/// One peer's data channel.
#[derive(Debug, Default)]
pub struct DataSide {
    /// The channel messages go out on: the first the client opened.
    channel: Option<ChannelId>,
    limit: RateLimit,
    /// Closed for exceeding a limit: nothing more is taken from it.
    closed: bool,
    /// The participant may send (its token grants `data`, or auth is off).
    may_send: bool,
}

impl DataSide {
    pub fn new(may_send: bool) -> Self {
        DataSide {
            may_send,
            ..DataSide::default()
        }
    }

    /// The client opened a channel.
    pub fn opened(&mut self, id: ChannelId) {
        if self.channel.is_none() && !self.closed {
            self.channel = Some(id);
        }
    }

    /// The channel closed.
    pub fn channel_closed(&mut self, id: ChannelId) {
        if self.channel == Some(id) {
            self.channel = None;
        }
    }

    /// A message from the client: whether to relay it. Without the grant, or past
    /// a limit, the client is told why and the channel is closed.
    pub fn received(&mut self, rtc: &mut Rtc, id: ChannelId, len: usize, now: Instant) -> bool {
        if self.closed || self.channel != Some(id) {
            return false;
        }
        if !self.may_send {
            self.refuse(rtc, id, "the token does not grant `data`");
            return false;
        }
        match self.limit.take(len, now) {
            Ok(()) => true,
            Err(refused) => {
                self.refuse(rtc, id, &refused.reason());
                false
            }
        }
    }

    /// Tells the client why its messages are refused, and closes the channel.
    fn refuse(&mut self, rtc: &mut Rtc, id: ChannelId, reason: &str) {
        if self.closed || self.channel != Some(id) {
            return;
        }
        tracing::info!(reason = %reason, "data channel closed");
        self.deliver(rtc, &serde_json::json!({ "error": reason }).to_string());
        rtc.direct_api().close_data_channel(id);
        self.channel = None;
        self.closed = true;
    }

    /// Sends a relayed message to the client, if its channel is open (and has
    /// room: a client that does not read loses messages, not memory).
    pub fn deliver(&mut self, rtc: &mut Rtc, message: &str) -> bool {
        let Some(id) = self.channel else {
            return false;
        };
        rtc.channel(id)
            .and_then(|mut c| c.write(false, message.as_bytes()).ok())
            .unwrap_or(false)
    }
}

/// The JSON a message is relayed as.
pub fn envelope(from: &str, name: Option<&str>, binary: bool, data: &[u8]) -> String {
    let mut out = serde_json::json!({ "from": from, "name": name });
    if binary {
        out["binary"] = base64::engine::general_purpose::STANDARD
            .encode(data)
            .into();
    } else {
        out["text"] = String::from_utf8_lossy(data).into();
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut limit = RateLimit::default();
        for i in 0..MESSAGE_BURST as usize {
            assert!(limit.take(10, t0).is_ok(), "message {i} of the burst");
        }
        assert_eq!(limit.take(10, t0), Err(Refused::TooFast));
        // A second later, a second's worth again.
        let mut limit = RateLimit::default();
        for _ in 0..MESSAGE_BURST as usize {
            limit.take(10, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(1);
        for i in 0..MESSAGES_PER_SECOND as usize {
            assert!(limit.take(10, later).is_ok(), "message {i} after a second");
        }
        assert!(limit.take(10, later).is_err());
    }

    #[test]
    fn bytes_are_limited_too_and_one_message_has_a_ceiling() {
        let t0 = Instant::now();
        let mut limit = RateLimit::default();
        assert_eq!(
            limit.take(MAX_MESSAGE_BYTES + 1, t0),
            Err(Refused::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
        let big = MAX_MESSAGE_BYTES;
        let fit = (2.0 * BYTES_PER_SECOND) as usize / big;
        for _ in 0..fit {
            limit.take(big, t0).unwrap();
        }
        assert_eq!(limit.take(big, t0), Err(Refused::TooFast));
        assert!(Refused::TooFast.reason().contains("per second"));
    }

    #[test]
    fn envelopes_name_the_sender_and_carry_text_or_base64() {
        let text: serde_json::Value =
            serde_json::from_str(&envelope("alice", Some("Alice"), false, b"hi \"there\""))
                .unwrap();
        assert_eq!(text["from"], "alice");
        assert_eq!(text["name"], "Alice");
        assert_eq!(text["text"], "hi \"there\"");
        let binary: serde_json::Value =
            serde_json::from_str(&envelope("bob", None, true, &[0, 255, 1])).unwrap();
        assert_eq!(binary["binary"], "AP8B");
        assert_eq!(binary["name"], serde_json::Value::Null);
        // Invalid UTF-8 as text is replaced, not refused or passed raw.
        let odd: serde_json::Value =
            serde_json::from_str(&envelope("c", None, false, &[0xff, b'a'])).unwrap();
        assert_eq!(odd["text"], "\u{fffd}a");
    }
}
