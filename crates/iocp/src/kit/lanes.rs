//! Per-handle ordering: lanes.
//!
//! Winsock keeps a socket's overlapped sends (and receives) in issue order.
//! Two sends in flight at once on one TCP socket may interleave, so each
//! handle has a lane per direction with one operation in flight (its head);
//! the others wait behind it in issue order and go one by one as the head
//! completes. A send finishes its short writes while it holds the lane, so
//! nothing overtakes the rest of a message.
//!
//! When a send fails after part of it went out, the stream holds part of a
//! message and nothing may follow it: on a stream socket the write side
//! breaks. The writes waiting behind it complete aborted, and the lane
//! refuses every later one, until the handle is closed. The read side and
//! datagram sockets are not affected.

use std::collections::VecDeque;

/// Which lane of its handle an operation waits in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Lane {
    /// Receives.
    Read = 0,
    /// Sends.
    Write = 1,
    /// Accepts, where an engine serialises them.
    Accept = 2,
    /// Connects, where an engine gives them a lane of their own.
    Connect = 3,
}

impl Lane {
    /// Every lane, in the order an engine runs them after an event.
    pub(crate) const ALL: [Lane; 4] = [Lane::Connect, Lane::Write, Lane::Read, Lane::Accept];
}

/// What follows when an operation leaves its lane.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<T> {
    /// Nothing to start.
    Idle,
    /// This operation now heads the lane: start it.
    Start(T),
    /// The write side broke: these writes waited behind the one that broke
    /// it and now complete aborted, in this order.
    Abort(VecDeque<T>),
}

/// The lanes of one handle; `T` names an operation (an engine's slot).
pub(crate) struct Lanes<T> {
    q: [VecDeque<T>; 4],
    stream: bool,
    write_broken: bool,
}

impl<T: Copy + PartialEq> Lanes<T> {
    /// Lanes for a stream socket (`stream`) or a datagram socket.
    pub(crate) fn new(stream: bool) -> Self {
        Lanes {
            q: Default::default(),
            stream,
            write_broken: false,
        }
    }

    /// Whether the socket is a stream: a vectored send may then go out in
    /// several calls, and a send cut part-way breaks the write side.
    pub(crate) fn is_stream(&self) -> bool {
        self.stream
    }

    /// Whether `lane` refuses new operations: the write side, once broken.
    pub(crate) fn refuses(&self, lane: Lane) -> bool {
        lane == Lane::Write && self.write_broken
    }

    /// Queues `op` behind the others in `lane`; `true` when it heads the
    /// lane (nothing else was in it), so it may start now.
    pub(crate) fn push(&mut self, lane: Lane, op: T) -> bool {
        let q = &mut self.q[lane as usize];
        q.push_back(op);
        q.len() == 1
    }

    /// The operation heading `lane`.
    pub(crate) fn head(&self, lane: Lane) -> Option<T> {
        self.q[lane as usize].front().copied()
    }

    /// The head of `lane` goes to the back (a standing operation taking
    /// turns with those queued behind it).
    pub(crate) fn rotate(&mut self, lane: Lane) {
        self.q[lane as usize].rotate_left(1.min(self.q[lane as usize].len()));
    }

    /// A send failed after `sent` of its bytes went out: on a stream with
    /// `sent > 0` the write side breaks (see the module doc).
    pub(crate) fn send_failed(&mut self, sent: usize) {
        self.write_broken |= self.stream && sent > 0;
    }

    /// `op` is over, or ends before it started: it leaves `lane`. If it
    /// headed the lane, the next one heads it now — or, once the write side
    /// broke, every write still waiting is handed back to be aborted.
    pub(crate) fn leave(&mut self, lane: Lane, op: T) -> Next<T> {
        let refuses = self.refuses(lane);
        let q = &mut self.q[lane as usize];
        if q.front() == Some(&op) {
            // The common case: the head completed.
            q.pop_front();
        } else {
            // One waiting behind the head ends before it started.
            if let Some(at) = q.iter().position(|&o| o == op) {
                q.remove(at);
            }
            return Next::Idle;
        }
        if refuses && !q.is_empty() {
            return Next::Abort(std::mem::take(q));
        }
        q.front().map_or(Next::Idle, |&n| Next::Start(n))
    }

    /// Every operation in every lane.
    pub(crate) fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.q.iter().flatten().copied()
    }

    /// Takes every operation out of every lane (the handle closes).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.q.iter_mut().flat_map(|q| q.drain(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_flight_the_rest_in_order() {
        let mut l = Lanes::new(true);
        assert!(l.push(Lane::Write, 1));
        assert!(!l.push(Lane::Write, 2));
        assert!(!l.push(Lane::Write, 3));
        assert!(l.push(Lane::Read, 9), "lanes are independent");
        // A waiting one leaves (cancelled): nothing starts.
        assert_eq!(l.leave(Lane::Write, 2), Next::Idle);
        assert_eq!(l.leave(Lane::Write, 1), Next::Start(3));
        assert_eq!(l.head(Lane::Write), Some(3));
        assert_eq!(l.leave(Lane::Write, 3), Next::Idle);
        assert_eq!(l.leave(Lane::Write, 3), Next::Idle, "twice: no effect");
        assert_eq!(l.iter().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_send_cut_part_way_breaks_a_stream() {
        let mut l = Lanes::new(true);
        for op in 1..=3 {
            l.push(Lane::Write, op);
        }
        l.push(Lane::Read, 7);
        l.send_failed(0);
        assert!(!l.refuses(Lane::Write), "nothing went out: still whole");
        l.send_failed(10);
        assert!(l.refuses(Lane::Write) && !l.refuses(Lane::Read));
        assert_eq!(l.leave(Lane::Write, 1), Next::Abort(VecDeque::from([2, 3])));
        assert_eq!(l.head(Lane::Write), None);
        assert_eq!(l.head(Lane::Read), Some(7), "the read side goes on");
    }

    #[test]
    fn datagrams_never_break() {
        let mut l = Lanes::new(false);
        l.push(Lane::Write, 1);
        l.push(Lane::Write, 2);
        l.send_failed(10);
        assert!(!l.refuses(Lane::Write));
        assert_eq!(l.leave(Lane::Write, 1), Next::Start(2));
    }

    #[test]
    fn rotate_takes_turns() {
        let mut l = Lanes::new(true);
        l.rotate(Lane::Accept);
        for op in 1..=3 {
            l.push(Lane::Accept, op);
        }
        l.rotate(Lane::Accept);
        assert_eq!(l.head(Lane::Accept), Some(2));
        assert_eq!(l.drain().collect::<Vec<_>>(), [2, 3, 1]);
        assert_eq!(l.iter().count(), 0);
    }
}
