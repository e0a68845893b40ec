//! The timer set behind every backend's timers (the Linux engines' and the
//! Windows timer thread's): pending items in due order, plus an index of the
//! ones that belong to an operation, so that they leave with it. A deadline
//! of an operation that completed is not kept until it would have fired, so
//! the set holds at most the live operations' timers plus the pending
//! `post_after` packets, however many operations ran.

use std::collections::BTreeMap;
use std::time::Instant;

/// Which of an operation's timers an item is (an operation may have one of
/// each at a time: a standing accept with a deadline, backing off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// The operation's deadline.
    Deadline,
    /// A retry of a standing operation after a pause.
    Retry,
}

/// An item that may belong to an operation.
pub(crate) trait OpTimer {
    /// The operation id and role, or `None` for a timer of its own
    /// (`post_after`).
    fn owner(&self) -> Option<(u64, Role)>;
}

/// Timers in due order, with the operations' ones indexed by operation.
pub(crate) struct TimerSet<T> {
    /// (due, sequence number) → item; the sequence keeps equal due times
    /// in the order they were added.
    due: BTreeMap<(Instant, u64), T>,
    by_op: BTreeMap<(u64, Role), (Instant, u64)>,
    seq: u64,
    /// When the earliest timer is due (kept beside the map: an engine asks
    /// several times a turn, and the map changes far less often).
    first: Option<Instant>,
}

impl<T: OpTimer> TimerSet<T> {
    pub(crate) fn new() -> Self {
        TimerSet {
            due: BTreeMap::new(),
            by_op: BTreeMap::new(),
            seq: 0,
            first: None,
        }
    }

    /// Schedules `item` at `at`. An operation's earlier timer of the same
    /// role is replaced.
    pub(crate) fn add(&mut self, at: Instant, item: T) {
        self.seq += 1;
        let k = (at, self.seq);
        if let Some(owner) = item.owner() {
            if let Some(old) = self.by_op.insert(owner, k) {
                self.due.remove(&old);
            }
        }
        self.due.insert(k, item);
        self.refresh_first();
    }

    /// Operation `op` is over: its timers go with it.
    pub(crate) fn op_done(&mut self, op: u64) {
        if self.by_op.is_empty() {
            return;
        }
        let mut removed = false;
        for role in [Role::Deadline, Role::Retry] {
            if let Some(k) = self.by_op.remove(&(op, role)) {
                self.due.remove(&k);
                removed = true;
            }
        }
        if removed {
            self.refresh_first();
        }
    }

    /// Caches when the earliest timer is due (after the set changed).
    fn refresh_first(&mut self) {
        self.first = self.due.first_key_value().map(|(k, _)| k.0);
    }

    /// When the earliest timer is due.
    #[inline]
    pub(crate) fn next(&self) -> Option<Instant> {
        self.first
    }

    /// Takes every timer due at `now` into `out`, earliest first.
    pub(crate) fn expired(&mut self, now: Instant, out: &mut Vec<T>) {
        while let Some(e) = self.due.first_entry() {
            if e.key().0 > now {
                break;
            }
            let item = e.remove();
            if let Some(owner) = item.owner() {
                self.by_op.remove(&owner);
            }
            out.push(item);
        }
        self.refresh_first();
    }

    /// Drops every timer (on shutdown).
    pub(crate) fn clear(&mut self) {
        self.due.clear();
        self.by_op.clear();
        self.first = None;
    }

    /// Timers pending.
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }

    /// Timers pending that belong to an operation.
    #[cfg_attr(not(windows), allow(dead_code))] // the Windows timer thread's
    pub(crate) fn owned(&self) -> usize {
        self.by_op.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct It(u32, Option<(u64, Role)>);

    impl OpTimer for It {
        fn owner(&self) -> Option<(u64, Role)> {
            self.1
        }
    }

    #[test]
    fn operations_take_their_timers_along() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = TimerSet::new();
        s.add(at(30), It(1, None));
        s.add(at(10), It(2, Some((7, Role::Deadline))));
        s.add(at(20), It(3, Some((7, Role::Retry))));
        s.add(at(20), It(4, Some((8, Role::Deadline))));
        assert_eq!((s.len(), s.owned(), s.next()), (4, 3, Some(at(10))));
        s.op_done(7);
        assert_eq!((s.len(), s.owned(), s.next()), (2, 1, Some(at(20))));
        // A second timer of the same role replaces the first.
        s.add(at(25), It(5, Some((8, Role::Deadline))));
        assert_eq!(s.len(), 2);
        let mut out = Vec::new();
        s.expired(at(25), &mut out);
        assert_eq!(out, [It(5, Some((8, Role::Deadline)))]);
        assert_eq!((s.len(), s.owned()), (1, 0));
        s.op_done(8); // nothing left of it: no effect
        s.expired(at(100), &mut out);
        assert_eq!(out[1], It(1, None));
        assert_eq!((s.len(), s.next()), (0, None));
    }
}
