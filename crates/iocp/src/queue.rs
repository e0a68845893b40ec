//! The user-space completion queue: the part of a Windows completion port that
//! lives in the kernel's `KQUEUE` object, rebuilt in user space.
//!
//! * packets are queued FIFO;
//! * waiting threads sit on a **stack**: a packet goes to the most recent
//!   waiter (LIFO), one waiter per packet, handed over directly into that
//!   waiter's slot so no other thread can steal it;
//! * a **concurrency limit** counts running threads: a thread runs from the
//!   moment `get`/`get_many` hands it a packet (a batch counts once) until it
//!   next calls `get`, exits, or steps out with a blocking guard (the
//!   per-thread record of all that is [`crate::running`]);
//! * `close` wakes every waiter with `Abandoned`.
//!
//! The type is generic over the packet so the `loom` model in `tests/loom.rs`
//! can drive it with plain integers: built with `--cfg loom` this module is
//! public (and swaps its sync primitives for loom's), otherwise it is the
//! Linux port's private queue. It depends on nothing in the crate but the
//! running record.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(loom)]
use crate::running::is_running_on;
use crate::running::{
    enter_running, leave_running, next_id, thread_tag, OwnerRef, SlotOwner, StepOut,
};

use crate::kit::lock;

/// Why a `get` returned without a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// The timeout passed; nothing was consumed.
    TimedOut,
    /// The queue was closed.
    Abandoned,
}

/// A point-in-time snapshot of a queue's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Threads blocked in `get`/`get_many`.
    pub waiting: usize,
    /// Threads counted as running against the concurrency limit.
    pub running: usize,
    /// Packets queued and not yet taken.
    pub queued: usize,
    /// Packets taken by a thread other than the one that queued them.
    pub handoffs: u64,
    /// Packets delivered in total.
    pub delivered: u64,
}

enum Slot<T> {
    Waiting,
    Packet(T, u64),
    Abandoned,
}

struct Waiter<T> {
    cv: Condvar,
    slot: Mutex<Slot<T>>,
}

struct State<T> {
    packets: VecDeque<(T, u64)>,
    waiters: Vec<Arc<Waiter<T>>>,
    running: usize,
    closed: bool,
    handoffs: u64,
    delivered: u64,
}

pub(crate) struct Inner<T> {
    id: u64,
    limit: usize,
    state: Mutex<State<T>>,
}

/// A completion queue with IOCP's wake order and concurrency accounting.
pub struct Queue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
        }
    }
}

#[cfg(loom)]
struct LoomOwner<T>(Arc<Inner<T>>);

#[cfg(loom)]
impl<T: Send + 'static> SlotOwner for LoomOwner<T> {
    fn release(&self) {
        self.0.release()
    }
    fn reacquire(&self) {
        self.0.reacquire()
    }
}

impl<T: Send + 'static> SlotOwner for Inner<T> {
    fn release(&self) {
        let mut st = lock(&self.state);
        st.running = st.running.saturating_sub(1);
        self.dispatch(&mut st);
    }
    fn reacquire(&self) {
        let mut st = lock(&self.state);
        st.running += 1;
    }
}

impl<T: Send + 'static> Inner<T> {
    /// Hands queued packets to waiters while the limit allows. Called with the
    /// lock held whenever `running` drops or packets arrive.
    fn dispatch(&self, st: &mut State<T>) {
        while st.running < self.limit && !st.packets.is_empty() {
            let Some(w) = st.waiters.pop() else { break };
            let pkt = st.packets.pop_front().expect("checked non-empty");
            st.running += 1;
            *lock(&w.slot) = Slot::Packet(pkt.0, pkt.1);
            w.cv.notify_one();
        }
    }
}

impl<T: Send + 'static> Queue<T> {
    /// A queue whose concurrency limit is `limit` (at least 1).
    pub fn new(limit: usize) -> Self {
        Queue {
            inner: Arc::new(Inner {
                id: next_id(),
                limit: limit.max(1),
                state: Mutex::new(State {
                    packets: VecDeque::new(),
                    waiters: Vec::new(),
                    running: 0,
                    closed: false,
                    handoffs: 0,
                    delivered: 0,
                }),
            }),
        }
    }

    /// The concurrency limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Queues one packet and wakes the most recent waiter if the limit allows.
    /// Returns the packet back if the queue is closed.
    pub fn post(&self, pkt: T) -> Result<(), T> {
        let tag = thread_tag();
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Err(pkt);
        }
        st.packets.push_back((pkt, tag));
        self.inner.dispatch(&mut st);
        Ok(())
    }

    /// Queues a batch under one lock (what an engine does after reaping).
    /// Returns `false`, leaving the packets in `pkts`, if the queue is closed.
    pub fn post_batch(&self, pkts: &mut Vec<T>) -> bool {
        if pkts.is_empty() {
            return true;
        }
        let tag = thread_tag();
        let mut st = lock(&self.inner.state);
        if st.closed {
            return false;
        }
        st.packets.extend(pkts.drain(..).map(|p| (p, tag)));
        self.inner.dispatch(&mut st);
        true
    }

    fn owner_ref(&self) -> OwnerRef {
        #[cfg(not(loom))]
        {
            let strong: Arc<dyn SlotOwner> = self.inner.clone();
            Arc::downgrade(&strong)
        }
        #[cfg(loom)]
        {
            std::sync::Arc::new(LoomOwner(self.inner.clone()))
        }
    }

    /// The calling thread took packets: it runs on this queue (counted by
    /// the caller under the lock).
    fn set_running(&self) {
        if !enter_running(self.inner.id, || self.owner_ref()) {
            self.inner.release();
        }
    }

    /// Waits for one packet. `None` waits forever; `Some(ZERO)` polls.
    pub fn get(&self, timeout: Option<Duration>) -> Result<T, Empty> {
        let mut out = self.get_inner(1, timeout)?;
        Ok(out.pop_front().expect("get_inner returns at least one"))
    }

    /// Takes up to `max` packets into `batch` (appending), waiting only while
    /// none are queued. Returns how many were taken.
    pub fn get_many(
        &self,
        batch: &mut Vec<T>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, Empty> {
        let out = self.get_inner(max.max(1), timeout)?;
        let n = out.len();
        batch.extend(out);
        Ok(n)
    }

    fn get_inner(&self, max: usize, timeout: Option<Duration>) -> Result<VecDeque<T>, Empty> {
        let was_running = leave_running(self.inner.id);
        let tag = thread_tag();
        let mut st = lock(&self.inner.state);
        if was_running {
            st.running = st.running.saturating_sub(1);
        }
        if st.closed {
            return Err(Empty::Abandoned);
        }
        if !st.packets.is_empty() && st.running < self.inner.limit {
            // A thread that calls `get` while packets are queued takes one at
            // once, without blocking.
            let mut out = VecDeque::new();
            while out.len() < max {
                let Some((p, from)) = st.packets.pop_front() else {
                    break;
                };
                st.delivered += 1;
                if from != tag {
                    st.handoffs += 1;
                }
                out.push_back(p);
            }
            st.running += 1;
            drop(st);
            self.set_running();
            return Ok(out);
        }
        // Our own slot may have been what blocked a queued packet; if so the
        // packet goes to the most recent waiter before we join the stack.
        self.inner.dispatch(&mut st);
        if timeout == Some(Duration::ZERO) {
            return Err(Empty::TimedOut);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let me = Arc::new(Waiter {
            cv: Condvar::new(),
            slot: Mutex::new(Slot::Waiting),
        });
        st.waiters.push(me.clone());
        loop {
            // Check the slot (filled under the state lock by `dispatch`/`close`).
            let taken = std::mem::replace(&mut *lock(&me.slot), Slot::Waiting);
            match taken {
                Slot::Packet(p, from) => {
                    let mut out = VecDeque::with_capacity(max.min(64));
                    st.delivered += 1;
                    if from != tag {
                        st.handoffs += 1;
                    }
                    out.push_back(p);
                    while out.len() < max {
                        let Some((p, from)) = st.packets.pop_front() else {
                            break;
                        };
                        st.delivered += 1;
                        if from != tag {
                            st.handoffs += 1;
                        }
                        out.push_back(p);
                    }
                    drop(st);
                    self.set_running();
                    return Ok(out);
                }
                Slot::Abandoned => return Err(Empty::Abandoned),
                Slot::Waiting => {}
            }
            let timed_out;
            (st, timed_out) = wait(&me.cv, &self.inner.state, st, deadline);
            if timed_out {
                // Re-check the slot under the lock: a packet handed over just
                // before the timeout is ours and must not be lost.
                let taken = std::mem::replace(&mut *lock(&me.slot), Slot::Waiting);
                match taken {
                    Slot::Waiting => {
                        st.waiters.retain(|w| !Arc::ptr_eq(w, &me));
                        return Err(Empty::TimedOut);
                    }
                    other => *lock(&me.slot) = other,
                }
            }
        }
    }

    /// Closes the queue: every waiter returns `Abandoned`, later calls return
    /// `Abandoned`, and the queued packets are returned to the caller (so it
    /// can release their buffers).
    pub fn close(&self) -> Vec<T> {
        let mut st = lock(&self.inner.state);
        st.closed = true;
        for w in st.waiters.drain(..) {
            *lock(&w.slot) = Slot::Abandoned;
            w.cv.notify_one();
        }
        st.packets.drain(..).map(|(p, _)| p).collect()
    }

    /// Steps the calling thread out of the running count until the returned
    /// step-out drops (what Windows does by itself when a worker blocks on
    /// anything else); `None` if the thread does not run on this queue.
    /// Nested step-outs keep the thread out until the last one drops; a
    /// `get` inside one makes the thread run again from that `get` on, and
    /// the drop then changes nothing.
    pub(crate) fn step_out(&self) -> Option<StepOut> {
        StepOut::new(self.inner.id, self.owner_ref())
    }

    /// [`Queue::step_out`] as a guard, for the loom models.
    #[cfg(loom)]
    pub fn blocking(&self) -> BlockingGuard<T> {
        BlockingGuard {
            _step: self.step_out(),
            _queue: std::marker::PhantomData,
        }
    }

    /// Whether the calling thread currently counts as running on this queue.
    #[cfg(loom)]
    pub fn is_running_here(&self) -> bool {
        is_running_on(self.inner.id)
    }

    /// The queue's owner id in the running record (unique among queues and
    /// Windows ports).
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Counters, read under the lock.
    pub fn stats(&self) -> QueueStats {
        let st = lock(&self.inner.state);
        QueueStats {
            waiting: st.waiters.len(),
            running: st.running,
            queued: st.packets.len(),
            handoffs: st.handoffs,
            delivered: st.delivered,
        }
    }
}

/// Returned by [`Queue::blocking`] (loom models only); re-enters the running count when the
/// last guard of the thread drops, unless the thread called `get` since (the
/// count may then exceed the limit for a while, as on Windows). Not `Send`:
/// it stands for the thread that took it.
#[cfg(loom)]
pub struct BlockingGuard<T: Send + 'static> {
    _step: Option<StepOut>,
    _queue: std::marker::PhantomData<fn() -> T>,
}

#[cfg(not(loom))]
fn wait<'a, S>(
    cv: &Condvar,
    _m: &'a Mutex<S>,
    guard: MutexGuard<'a, S>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, S>, bool) {
    match deadline {
        None => match cv.wait(guard) {
            Ok(g) => (g, false),
            Err(p) => (p.into_inner(), false),
        },
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return (guard, true);
            }
            match cv.wait_timeout(guard, d - now) {
                Ok((g, r)) => (g, r.timed_out() || Instant::now() >= d),
                Err(p) => {
                    let (g, r) = p.into_inner();
                    (g, r.timed_out())
                }
            }
        }
    }
}

/// Under loom time is abstract: a timed wait lets other threads run, then
/// reports a timeout, so the model explores a timeout firing at any point.
#[cfg(loom)]
fn wait<'a, S>(
    cv: &Condvar,
    m: &'a Mutex<S>,
    guard: MutexGuard<'a, S>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, S>, bool) {
    match deadline {
        None => (cv.wait(guard).unwrap(), false),
        Some(_) => {
            drop(guard);
            loom::thread::yield_now();
            (m.lock().unwrap(), true)
        }
    }
}
