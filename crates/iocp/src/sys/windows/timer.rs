//! Timers on Windows: one timer thread per port, started on first use.
//!
//! Why a thread and not waitable timers: a waitable timer delivers through
//! an APC (needs an alertable thread of ours anyway) or through a
//! thread-pool wait / `NtAssociateWaitCompletionPacket` (Windows 8+, not in
//! Wine 8). A thread that sleeps on a condition variable until the earliest
//! deadline is portable, costs nothing when no timer is used (it is only
//! spawned by the first `post_after` or deadline), and keeps every
//! timer-made packet an ordinary `PostQueuedCompletionStatus`, so it goes
//! through the kernel's wake-up and concurrency rules like any other.
//!
//! A fired item does one of three things: post a timer packet
//! (`post_after`), cancel an operation whose deadline passed (`CancelIoEx`,
//! its completion then reports `TimedOut`), or resume a parked standing
//! accept (after a transient failure to create the accept socket). An
//! operation's deadline and resume leave the set when the operation
//! completes (`op_done`), so the set holds the live operations' timers and
//! the pending `post_after` packets, not every deadline ever set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use super::engine::{HandleShared, Shared};
use crate::timers::{OpTimer, Role, TimerSet};

pub(crate) enum TimerItem {
    /// `post_after`: queue a timer packet.
    Post { key: u64, token: u64, id: u64 },
    /// Operation `op`'s deadline passed.
    Deadline { h: Weak<HandleShared>, op: u64 },
    /// Try a parked standing operation again.
    Resume { h: Weak<HandleShared>, op: u64 },
}

impl OpTimer for TimerItem {
    fn owner(&self) -> Option<(u64, Role)> {
        match *self {
            TimerItem::Post { .. } => None,
            TimerItem::Deadline { op, .. } => Some((op, Role::Deadline)),
            TimerItem::Resume { op, .. } => Some((op, Role::Retry)),
        }
    }
}

struct State {
    set: TimerSet<TimerItem>,
    shutdown: bool,
}

struct TimersInner {
    st: Mutex<State>,
    cv: Condvar,
    /// Timers that belong to an operation, so a completion with nothing to
    /// remove skips the lock (written under it).
    owned: AtomicUsize,
}

pub(crate) struct Timers {
    inner: Arc<TimersInner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            inner: Arc::new(TimersInner {
                st: Mutex::new(State {
                    set: TimerSet::new(),
                    shutdown: false,
                }),
                cv: Condvar::new(),
                owned: AtomicUsize::new(0),
            }),
            thread: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Timers {
    /// Schedules `item` at `at`; `false` if the timers were shut down.
    pub(crate) fn add(&self, port: &Arc<Shared>, at: Instant, item: TimerItem) -> bool {
        {
            let mut st = lock(&self.inner.st);
            if st.shutdown {
                return false;
            }
            st.set.add(at, item);
            self.inner.owned.store(st.set.owned(), Ordering::Release);
        }
        self.inner.cv.notify_one();
        let mut t = lock(&self.thread);
        if t.is_none() {
            let inner = self.inner.clone();
            let weak = Arc::downgrade(port);
            match std::thread::Builder::new()
                .name("iocp-timer".into())
                .spawn(move || run(inner, weak))
            {
                Ok(h) => *t = Some(h),
                Err(e) => {
                    tracing::error!("iocp: cannot start the timer thread: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Operation `op` completed: its deadline (or resume) goes with it.
    /// Call it after the operation's timers were added, i.e. not before the
    /// operation can complete (callers add them under the handle's lock).
    pub(crate) fn op_done(&self, op: u64) {
        if self.inner.owned.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut st = lock(&self.inner.st);
        st.set.op_done(op);
        self.inner.owned.store(st.set.owned(), Ordering::Release);
    }

    /// Timers pending.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner.st).set.len()
    }

    /// Stops the thread and drops every pending item.
    pub(crate) fn shutdown(&self) {
        {
            let mut st = lock(&self.inner.st);
            st.shutdown = true;
            st.set.clear();
            self.inner.owned.store(0, Ordering::Release);
        }
        self.inner.cv.notify_all();
        let t = lock(&self.thread).take();
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn run(inner: Arc<TimersInner>, port: Weak<Shared>) {
    let mut due = Vec::new();
    let mut st = lock(&inner.st);
    loop {
        if st.shutdown {
            return;
        }
        st.set.expired(Instant::now(), &mut due);
        inner.owned.store(st.set.owned(), Ordering::Release);
        if !due.is_empty() {
            drop(st);
            for it in due.drain(..) {
                fire(&port, it);
            }
            st = lock(&inner.st);
            continue;
        }
        st = match st.set.next() {
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                inner
                    .cv
                    .wait_timeout(st, d)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => inner.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

fn fire(port: &Weak<Shared>, it: TimerItem) {
    match it {
        TimerItem::Post { key, token, id } => {
            if let Some(p) = port.upgrade() {
                let _ = p.post_packet(crate::op::OpKind::Timer, key, token, id, 0);
            }
        }
        TimerItem::Deadline { h, op } => {
            if let Some(h) = h.upgrade() {
                h.cancel_op(op, true);
            }
        }
        TimerItem::Resume { h, op } => {
            if let Some(h) = h.upgrade() {
                h.resume_parked(op);
            }
        }
    }
}
