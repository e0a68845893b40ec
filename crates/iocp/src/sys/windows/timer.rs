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
//! accept (after a transient failure to create the accept socket).
//! Deadlines of operations that finished early are left in the heap and do
//! nothing when they fire (as on Linux).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use super::engine::{HandleShared, Shared};

pub(crate) enum TimerItem {
    /// `post_after`: queue a timer packet.
    Post { key: u64, token: u64, id: u64 },
    /// Operation `op`'s deadline passed.
    Deadline { h: Weak<HandleShared>, op: u64 },
    /// Try a parked standing operation again.
    Resume { h: Weak<HandleShared>, op: u64 },
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    items: HashMap<u64, TimerItem>,
    seq: u64,
    shutdown: bool,
}

#[derive(Default)]
struct TimersInner {
    st: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
pub(crate) struct Timers {
    inner: Arc<TimersInner>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
            st.seq += 1;
            let seq = st.seq;
            st.heap.push(Reverse((at, seq)));
            st.items.insert(seq, item);
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

    /// Stops the thread and drops every pending item.
    pub(crate) fn shutdown(&self) {
        {
            let mut st = lock(&self.inner.st);
            st.shutdown = true;
            st.heap.clear();
            st.items.clear();
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
        let now = Instant::now();
        while let Some(Reverse((t, seq))) = st.heap.peek().copied() {
            if t > now {
                break;
            }
            st.heap.pop();
            if let Some(it) = st.items.remove(&seq) {
                due.push(it);
            }
        }
        if !due.is_empty() {
            drop(st);
            for it in due.drain(..) {
                fire(&port, it);
            }
            st = lock(&inner.st);
            continue;
        }
        st = match st.heap.peek().map(|Reverse((t, _))| *t) {
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
