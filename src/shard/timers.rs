//! When each `Rtc` next wants `handle_input(Timeout)`: a min-heap with lazy
//! deletion, so a quiet peer costs nothing until its own deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::peer::PeerKey;

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, PeerKey)>>,
}

impl Timers {
    /// Schedules `peer` at `at`. Entries superseded by a later schedule stay in the
    /// heap and are recognised as stale when popped (see [`Timers::pop_due`]).
    pub fn schedule(&mut self, peer: PeerKey, at: Instant) {
        self.heap.push(Reverse((at, peer)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops every entry due at `now`, calling `is_current(peer, at)` to skip stale ones.
    pub fn pop_due(
        &mut self,
        now: Instant,
        mut is_current: impl FnMut(PeerKey, Instant) -> bool,
        due: &mut Vec<PeerKey>,
    ) {
        while let Some(Reverse((at, peer))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if is_current(peer, at) && !due.contains(&peer) {
                due.push(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_entries_pop_in_order_and_stale_ones_are_skipped() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(PeerKey(1), t0 + Duration::from_millis(10));
        timers.schedule(PeerKey(2), t0 + Duration::from_millis(5));
        timers.schedule(PeerKey(1), t0 + Duration::from_millis(50)); // supersedes the first
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(5)));
        let mut due = Vec::new();
        let current =
            |p: PeerKey, at: Instant| p != PeerKey(1) || at == t0 + Duration::from_millis(50);
        timers.pop_due(t0 + Duration::from_millis(20), current, &mut due);
        assert_eq!(due, vec![PeerKey(2)]);
        due.clear();
        timers.pop_due(t0 + Duration::from_millis(60), current, &mut due);
        assert_eq!(due, vec![PeerKey(1)]);
        assert_eq!(timers.next_deadline(), None);
    }
}
