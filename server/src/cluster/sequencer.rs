//! One user's numbered messages on one node, put back in `seq` order. Several nodes number
//! a user's messages in one storage, then each publishes what it stored, so another node can
//! receive `n + 2` before `n + 1`; the sequencer holds what comes early, hands on what is
//! next, and says where a gap is, to be filled from storage. Until its position is known
//! (the moment the node began following the user), it hands on whatever comes, as a single
//! node does: a subscription is never promised what was sent before it was effective, and a
//! catch-up waits for that moment (`Relay::ready`). Pure: no I/O, no clock.

use std::collections::BTreeMap;

/// Where one user's messages stand on this node.
#[derive(Debug)]
pub(crate) struct Sequencer<T> {
    /// The next `seq` to hand on; `None` until [`Sequencer::start`].
    next: Option<i64>,
    /// The highest `seq` handed on before [`Sequencer::start`].
    seen: Option<i64>,
    /// Arrived before their predecessors, by `seq`.
    held: BTreeMap<i64, T>,
}

/// Messages held at most per user; past it the oldest held ones go (storage has them, and
/// the next fill reads them back).
const MAX_HELD: usize = 10_000;

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer { next: None, seen: None, held: BTreeMap::new() }
    }
}

impl<T> Sequencer<T> {
    /// From now on messages go in order after `high` (storage's position when this node
    /// began following the user) or after the last one handed on, whichever is later.
    pub(crate) fn start(&mut self, high: i64) {
        if self.next.is_none() {
            self.next = Some(high.max(self.seen.unwrap_or(high)) + 1);
        }
    }

    /// Whether [`Sequencer::start`] ran.
    pub(crate) fn started(&self) -> bool {
        self.next.is_some()
    }

    /// Message `seq` arrived: what can be handed on now, in order (empty when it is an old
    /// one, or is held until its predecessors come).
    pub(crate) fn offer(&mut self, seq: i64, item: T) -> Vec<T> {
        let Some(next) = self.next else {
            self.seen = self.seen.max(Some(seq));
            return vec![item];
        };
        if seq < next {
            return Vec::new();
        }
        self.held.insert(seq, item);
        if self.held.len() > MAX_HELD {
            self.held.pop_first();
        }
        self.drain()
    }

    /// The `seq` after which storage must be read: `Some` when something is held beyond
    /// the next expected message.
    pub(crate) fn gap(&self) -> Option<i64> {
        let next = self.next?;
        (!self.held.is_empty()).then_some(next - 1)
    }

    /// The last `seq` handed on (or known before start).
    pub(crate) fn position(&self) -> Option<i64> {
        self.next.map(|next| next - 1)
    }

    /// `entries` read from storage after [`Sequencer::position`]: what can be handed on now,
    /// in order. A held copy of an entry wins (it came with what storage does not keep).
    pub(crate) fn fill(&mut self, entries: impl IntoIterator<Item = (i64, T)>) -> Vec<T> {
        let Some(next) = self.next else { return Vec::new() };
        let mut newest = None;
        for (seq, item) in entries {
            newest = newest.max(Some(seq));
            if seq >= next {
                self.held.entry(seq).or_insert(item);
            }
        }
        let mut out = self.drain();
        // Storage holds every message up to the newest it returned (they commit in `seq`
        // order): a number below it that it did not return went unused, so the run goes on
        // past it. Numbers above it are not skipped (the read may have been cut short).
        while let (Some(next), Some(newest)) = (self.next, newest) {
            if next > newest || self.held.contains_key(&next) {
                break;
            }
            self.next = Some(next + 1);
            out.extend(self.drain());
        }
        out
    }

    fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(next) = self.next {
            match self.held.remove(&next) {
                Some(item) => {
                    out.push(item);
                    self.next = Some(next + 1);
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn early_messages_wait_for_their_predecessors() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(2, "two"), ["two"], "before the start, what comes goes on");
        s.start(3);
        assert_eq!(s.position(), Some(3));
        assert!(s.offer(5, "five").is_empty());
        assert_eq!(s.gap(), Some(3), "4 is missing");
        assert_eq!(s.offer(4, "four"), ["four", "five"]);
        assert_eq!(s.gap(), None);
        assert!(s.offer(4, "again").is_empty(), "a duplicate is dropped");
        assert_eq!(s.offer(6, "six"), ["six"]);
        assert_eq!(s.position(), Some(6));
    }

    #[test]
    fn the_start_is_after_what_went_on_before_it() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(7, "seven"), ["seven"]);
        s.start(5);
        assert_eq!(s.position(), Some(7), "7 went on already");
        assert!(s.offer(6, "six").is_empty());
        assert_eq!(s.offer(8, "eight"), ["eight"]);
        assert_eq!(s.fill([(9, "nine")]), ["nine"]);
    }

    #[test]
    fn a_fill_skips_numbers_storage_never_had() {
        let mut s = Sequencer::default();
        s.start(0);
        assert!(s.offer(3, "three").is_empty());
        assert_eq!(s.gap(), Some(0));
        // 1 is stored; 2 never was (the number went unused).
        assert_eq!(s.fill([(1, "one"), (3, "three (stored)")]), ["one", "three"]);
        assert_eq!(s.position(), Some(3));
    }

    proptest! {
        /// Whatever order two publishers' messages arrive in, and whichever of them are lost
        /// on the way (to be read back from storage), each is handed on once, in order.
        #[test]
        fn every_message_once_in_order(
            order in Just((1..=40i64).collect::<Vec<_>>()).prop_shuffle(),
            lost in proptest::collection::hash_set(1..=40i64, 0..10),
        ) {
            let mut s = Sequencer::default();
            s.start(0);
            let mut out: Vec<i64> = Vec::new();
            for seq in order {
                if !lost.contains(&seq) {
                    out.extend(s.offer(seq, seq));
                }
                if seq % 7 == 0 && let Some(after) = s.gap() {
                    out.extend(s.fill((after + 1..=40).filter(|n| *n <= seq + 3).map(|n| (n, n))));
                }
            }
            if let Some(after) = s.gap().or(s.position().filter(|p| *p < 40)) {
                out.extend(s.fill((after + 1..=40).map(|n| (n, n))));
            }
            prop_assert_eq!(out, (1..=40).collect::<Vec<_>>());
        }
    }
}
