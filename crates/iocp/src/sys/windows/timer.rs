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
//! The items are the engine's (`engine::TimerItem`: post a timer packet,
//! cancel an operation whose deadline passed, resume a standing accept
//! after its back-off); the thread hands each fired one to the port
//! ([`Fire`]). The set is [`crate::timers::TimerSet`]: an operation's
//! deadline and resume leave it when the operation completes (`op_done`),
//! so it holds the live operations' timers and the pending `post_after`
//! packets, not every deadline ever set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::kit::lock;
use crate::timers::{OpTimer, TimerSet};

/// What a fired item does: the port's part (`engine::Shared`).
pub(crate) trait Fire<T>: Send + Sync {
    /// Carries out `item`, whose time came.
    fn fire(&self, item: T);
}

struct State<T> {
    set: TimerSet<T>,
    shutdown: bool,
}

struct TimersInner<T> {
    st: Mutex<State<T>>,
    cv: Condvar,
    /// Timers that belong to an operation, so a completion with nothing to
    /// remove skips the lock (written under it).
    owned: AtomicUsize,
}

/// A port's timers: the set, and the thread that fires them.
pub(crate) struct Timers<T> {
    inner: Arc<TimersInner<T>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Whom fired items go to (held weakly: the port owns its timers).
    target: Weak<dyn Fire<T>>,
}

impl<T: OpTimer + Send + 'static> Timers<T> {
    /// Timers whose items `target` carries out; the thread starts with the
    /// first item.
    pub(crate) fn new(target: Weak<dyn Fire<T>>) -> Self {
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
            target,
        }
    }

    /// Schedules `item` at `at`; `false` if the timers were shut down.
    pub(crate) fn add(&self, at: Instant, item: T) -> bool {
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
            let target = self.target.clone();
            match std::thread::Builder::new()
                .name("iocp-timer".into())
                .spawn(move || run(inner, target))
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

fn run<T: OpTimer>(inner: Arc<TimersInner<T>>, target: Weak<dyn Fire<T>>) {
    let mut due = Vec::new();
    let mut st = lock(&inner.st);
    loop {
        if st.shutdown {
            return;
        }
        st.set.expired(Instant::now(), &mut due);
        inner.owned.store(st.set.owned(), Ordering::Release);
        if !due.is_empty() {
            // Fired without the lock: an item takes a handle's lock, and
            // operations add their timers under theirs.
            drop(st);
            match target.upgrade() {
                Some(t) => due.drain(..).for_each(|it| t.fire(it)),
                None => due.clear(),
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
