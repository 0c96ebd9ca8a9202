//! How other threads reach a shard, and how they know it is alive.
//!
//! The inbox is one channel, so commands and media keep their order, and it is
//! bounded by what each kind of command may do when it is full
//! ([`CommandClass`]): media batches are dropped past [`MEDIA_LIMIT`] queued
//! commands, new offers and PATCHes are refused past [`REQUEST_LIMIT`] (HTTP
//! answers 503), and control commands are never dropped: their number is bounded
//! by the sessions that exist.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use super::command::{Command, CommandClass};
use crate::metrics::Metrics;

/// Queued commands beyond which media batches from other shards are dropped.
pub const MEDIA_LIMIT: usize = 1024;
/// Queued commands beyond which new offers and PATCHes are refused.
pub const REQUEST_LIMIT: usize = 2048;

/// What a shard shares with the threads that talk to it.
#[derive(Debug)]
pub struct Shared {
    /// Commands sent and not yet taken by the shard.
    pub queued: AtomicUsize,
    /// False once the shard's thread has ended.
    pub alive: AtomicBool,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            queued: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks the shard dead when its thread ends, however it ends.
pub struct AliveGuard(pub Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

/// How other threads reach a shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub(super) tx: Sender<Command>,
    pub(super) waker: Arc<Waker>,
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: Arc<Metrics>,
}

impl ShardHandle {
    /// Queues a command and wakes the shard. False if the shard has stopped, or
    /// if the inbox is full and the command is one that may be dropped (media)
    /// or refused (a new offer, a PATCH).
    pub fn send(&self, command: Command) -> bool {
        let queued = self.shared.queued.load(Ordering::Relaxed);
        let class = command.class();
        let full = match class {
            CommandClass::Media => queued >= MEDIA_LIMIT,
            CommandClass::Request => queued >= REQUEST_LIMIT,
            CommandClass::Control => false,
        };
        if full {
            let label = match class {
                CommandClass::Media => "media",
                _ => "request",
            };
            self.metrics.inbox_dropped.with_label_values(&[label]).inc();
            return false;
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(command).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "cannot wake shard");
        }
        true
    }

    /// Whether the shard's thread is still running.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Commands waiting in the inbox.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Asks the shard to answer at once; true if it did within `deadline`.
    pub async fn ping(&self, deadline: Duration) -> bool {
        if !self.is_alive() {
            return false;
        }
        let (reply, answered) = tokio::sync::oneshot::channel();
        if !self.send(Command::Ping(reply)) {
            return false;
        }
        matches!(tokio::time::timeout(deadline, answered).await, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerKey;

    fn handle() -> (ShardHandle, crossbeam_channel::Receiver<Command>, mio::Poll) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let handle = ShardHandle {
            tx,
            waker,
            shared: Arc::new(Shared::new()),
            metrics: Arc::new(Metrics::new()),
        };
        (handle, rx, poll)
    }

    fn end(key: u64) -> Command {
        Command::End {
            key: PeerKey(key),
            reason: "test",
            reply: None,
        }
    }

    fn offer_like() -> Command {
        let (reply, _) = tokio::sync::oneshot::channel();
        Command::Patch {
            key: PeerKey(1),
            credentials: None,
            candidates: Vec::new(),
            reply,
        }
    }

    #[test]
    fn a_full_inbox_drops_media_refuses_requests_and_keeps_control() {
        let (handle, rx, _poll) = handle();
        assert!(handle.send(Command::Media(Vec::new())));
        assert!(handle.send(offer_like()));
        assert_eq!(handle.queued(), 2);

        handle.shared.queued.store(MEDIA_LIMIT, Ordering::Relaxed);
        assert!(!handle.send(Command::Media(Vec::new())), "media dropped");
        assert!(handle.send(offer_like()), "requests still taken");
        handle.shared.queued.store(REQUEST_LIMIT, Ordering::Relaxed);
        assert!(!handle.send(offer_like()), "requests refused");
        handle
            .shared
            .queued
            .store(10 * REQUEST_LIMIT, Ordering::Relaxed);
        assert!(handle.send(end(7)), "control is never dropped");

        let dropped = |kind: &str| {
            handle
                .metrics
                .inbox_dropped
                .with_label_values(&[kind])
                .get()
        };
        assert_eq!((dropped("media"), dropped("request")), (1, 1));
        // What was taken is there, in order.
        let kinds: Vec<CommandClass> = rx.try_iter().map(|c| c.class()).collect();
        assert_eq!(
            kinds,
            vec![
                CommandClass::Media,
                CommandClass::Request,
                CommandClass::Request,
                CommandClass::Control
            ]
        );
    }
}
