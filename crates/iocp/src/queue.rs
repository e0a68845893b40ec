//! The user-space completion queue: the part of a Windows completion port that
//! lives in the kernel's `KQUEUE` object, rebuilt in user space.
//!
//! * packets are queued FIFO;
//! * waiting threads sit on a **stack**: a packet goes to the most recent
//!   waiter (LIFO), one waiter per packet, handed over directly into that
//!   waiter's slot so no other thread can steal it;
//! * a **concurrency limit** counts running threads: a thread runs from the
//!   moment `get`/`get_many` hands it a packet (a batch counts once) until it
//!   next calls `get`, exits, or steps out with a [`BlockingGuard`];
//! * `close` wakes every waiter with `Abandoned`.
//!
//! The type is generic over the packet so the `loom` model in `tests/loom.rs`
//! can drive it with plain integers. It is platform independent; the Linux
//! engines feed it, the Windows backend uses the kernel's port instead and
//! shares only the per-thread running record (which port a thread runs on,
//! and its [`BlockingGuard`] step-outs), so `stats().running` counts the same
//! way everywhere.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Condvar, Mutex, MutexGuard, Weak,
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

// ---- per-thread running record -------------------------------------------
//
// Which port a thread runs on is a property of the thread, so it lives in a
// thread-local record: `get` ends the running period (the caller takes the
// thread off its count), a packet starts one, `blocking()` steps out of it
// and the last of its guards steps back in. The record is shared with the
// Windows port, which keeps the same `running` statistic next to the kernel.

/// Something a thread can be "running on" (a queue, or a Windows port): lets
/// a thread-local record give its slot back without knowing the packet type.
pub(crate) trait SlotOwner: Send + Sync {
    /// Takes one thread off the running count (and lets a waiter run).
    fn release(&self);
    /// Puts one thread back on the running count (a blocking guard's last
    /// drop; the count may exceed the limit for a while, as on Windows).
    fn reacquire(&self);
}

/// How a running record refers to its owner: weakly, so a thread-local
/// record does not keep a dropped queue alive. Under loom (whose `Arc` has no
/// `Weak` and no unsized coercion) it is a strong reference wrapped in a std
/// `Arc`; loom drops every thread's locals when the thread ends, so nothing
/// outlives a model run.
#[cfg(not(loom))]
pub(crate) type OwnerRef = Weak<dyn SlotOwner>;
#[cfg(loom)]
pub(crate) type OwnerRef = std::sync::Arc<dyn SlotOwner>;

#[cfg(not(loom))]
fn upgrade(r: &OwnerRef) -> Option<Arc<dyn SlotOwner>> {
    r.upgrade()
}
#[cfg(loom)]
fn upgrade(r: &OwnerRef) -> Option<OwnerRef> {
    Some(r.clone())
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

struct Running {
    owner_id: u64,
    owner: Option<OwnerRef>,
    /// Whether the thread currently holds a running slot. A record stays in
    /// place between `get`s with `armed` toggled, so the hot path touches no
    /// reference count (shared counters bounce between cores).
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Thread exit, or the thread moved to another queue: the slot is freed.
        if let Some(owner) = self.owner.take().as_ref().and_then(upgrade) {
            owner.release();
        }
    }
}

/// The thread stepped out of `owner_id`'s count with `blocking()`; `guards`
/// of that step-out are alive. `step` numbers the step-outs of the thread, so
/// a guard left over from an earlier one (a `get` came in between) restores
/// nothing.
#[derive(Clone, Copy)]
struct SteppedOut {
    owner_id: u64,
    step: u64,
    guards: usize,
}

struct ThreadRec {
    running: Option<Running>,
    stepped_out: Option<SteppedOut>,
    steps: u64,
}

#[cfg(loom)]
loom::thread_local! {
    // loom's macro takes a plain expression (no `const { }` block).
    static THREAD: std::cell::RefCell<ThreadRec> = std::cell::RefCell::new(ThreadRec {
        running: None,
        stepped_out: None,
        steps: 0,
    });
}
#[cfg(not(loom))]
std::thread_local! {
    static THREAD: std::cell::RefCell<ThreadRec> = const {
        std::cell::RefCell::new(ThreadRec { running: None, stepped_out: None, steps: 0 })
    };
}

/// A fresh owner id (queues and Windows ports share the sequence, so a
/// thread's record never mistakes one for the other).
pub(crate) fn next_id() -> u64 {
    #[cfg(loom)]
    {
        loom::lazy_static! { static ref NEXT: AtomicU64 = AtomicU64::new(1); }
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
    #[cfg(not(loom))]
    {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}

/// The calling thread calls `get` on `owner_id`: its running period ends.
/// Returns whether it was counted there, so the caller takes it off its
/// count. A record of another owner is dropped, which releases that slot (a
/// thread is associated with one port at a time, as on Windows). A step-out
/// ends too: what its guards would have restored is over.
pub(crate) fn leave_running(owner_id: u64) -> bool {
    let (was, old) = THREAD
        .try_with(|t| {
            let mut t = t.borrow_mut();
            t.stepped_out = None;
            match t.running.as_mut() {
                Some(rec) if rec.owner_id == owner_id => {
                    let was = std::mem::replace(&mut rec.armed, false);
                    // Under loom no record may outlive the call: loom checks
                    // that every reference is released by the model's end.
                    #[cfg(loom)]
                    let old = t.running.take();
                    #[cfg(not(loom))]
                    let old = None;
                    (was, old)
                }
                Some(_) => (false, t.running.take()),
                None => (false, None),
            }
        })
        .unwrap_or((false, None));
    // Outside the borrow: dropping an armed record of another owner
    // releases that owner's slot.
    drop(old);
    was
}

/// The calling thread now runs on `owner_id` (the caller has counted it).
/// Returns `false` if the thread-local record is gone (the thread is
/// exiting): the caller then takes the thread off its count again.
pub(crate) fn enter_running(owner_id: u64, owner: impl FnOnce() -> OwnerRef) -> bool {
    let rearmed = THREAD.try_with(|t| match t.borrow_mut().running.as_mut() {
        Some(rec) if rec.owner_id == owner_id => {
            rec.armed = true;
            true
        }
        _ => false,
    });
    match rearmed {
        Ok(true) => return true,
        Ok(false) => {}
        Err(_) => return false,
    }
    // The record is made inside the closure: if the thread-local is gone,
    // no armed record exists to release a slot nobody took.
    let old = THREAD.try_with(|t| {
        t.borrow_mut().running.replace(Running {
            owner_id,
            owner: Some(owner()),
            armed: true,
        })
    });
    match old {
        Ok(old) => {
            drop(old);
            true
        }
        Err(_) => false,
    }
}

/// Whether the calling thread counts as running on `owner_id`.
pub(crate) fn is_running_on(owner_id: u64) -> bool {
    THREAD
        .try_with(|t| {
            t.borrow()
                .running
                .as_ref()
                .is_some_and(|r| r.owner_id == owner_id && r.armed)
        })
        .unwrap_or(false)
}

/// What [`BlockingGuard`]s of every port hold: one step of the calling
/// thread out of its owner's running count. The guard is `!Send`: the count
/// is the state of the thread that took the guard, and only that thread can
/// tell whether it has called `get` since (after which the guard has nothing
/// to restore). A guard dropped elsewhere would count the wrong thread, or a
/// thread that has moved on.
pub(crate) struct StepOut {
    owner_id: u64,
    step: u64,
    owner: OwnerRef,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl StepOut {
    /// Steps the calling thread out of `owner_id`'s count if it runs there
    /// (taking it off the count through `owner`), or joins the step-out it
    /// is already in (a nested guard). `None` if it does not run there.
    pub(crate) fn new(owner_id: u64, owner: OwnerRef) -> Option<StepOut> {
        let r = THREAD.try_with(|t| {
            let mut t = t.borrow_mut();
            if let Some(so) = t.stepped_out.as_mut().filter(|so| so.owner_id == owner_id) {
                so.guards += 1;
                return Some((so.step, false, None));
            }
            let rec = t
                .running
                .as_mut()
                .filter(|r| r.owner_id == owner_id && r.armed)?;
            rec.armed = false;
            #[cfg(loom)]
            let old = t.running.take();
            #[cfg(not(loom))]
            let old: Option<Running> = None;
            t.steps += 1;
            let step = t.steps;
            t.stepped_out = Some(SteppedOut {
                owner_id,
                step,
                guards: 1,
            });
            Some((step, true, old))
        });
        let (step, released, old) = r.ok().flatten()?;
        drop(old);
        if released {
            if let Some(o) = upgrade(&owner) {
                o.release();
            }
        }
        Some(StepOut {
            owner_id,
            step,
            owner,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for StepOut {
    fn drop(&mut self) {
        // The last guard of the thread's current step-out puts it back; a
        // `get` since then (or thread-local teardown) leaves nothing to do.
        let last = THREAD
            .try_with(|t| {
                let mut t = t.borrow_mut();
                match t.stepped_out.as_mut() {
                    Some(so) if so.owner_id == self.owner_id && so.step == self.step => {
                        so.guards -= 1;
                        if so.guards == 0 {
                            t.stepped_out = None;
                            return true;
                        }
                        false
                    }
                    _ => false,
                }
            })
            .unwrap_or(false);
        if !last {
            return;
        }
        let Some(owner) = upgrade(&self.owner) else {
            return;
        };
        owner.reacquire();
        if !enter_running(self.owner_id, || self.owner.clone()) {
            owner.release();
        }
    }
}

std::thread_local! {
    static THREAD_TAG: u64 = next_tag();
}

fn next_tag() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A small number naming the current thread (cheaper than `ThreadId` to compare).
pub(crate) fn thread_tag() -> u64 {
    THREAD_TAG.with(|t| *t)
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

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.state).closed
    }

    /// Steps the calling thread out of the running count until the guard drops
    /// (what Windows does by itself when a worker blocks on anything else).
    /// Nested guards keep the thread out until the last one drops; a `get`
    /// inside a guard makes the thread run again from that `get` on, and the
    /// guard's drop then changes nothing.
    pub fn blocking(&self) -> BlockingGuard<T> {
        BlockingGuard {
            _step: StepOut::new(self.inner.id, self.owner_ref()),
            _queue: std::marker::PhantomData,
        }
    }

    /// Whether the calling thread currently counts as running on this queue.
    pub fn is_running_here(&self) -> bool {
        is_running_on(self.inner.id)
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

/// Returned by [`Queue::blocking`]; re-enters the running count when the
/// last guard of the thread drops, unless the thread called `get` since (the
/// count may then exceed the limit for a while, as on Windows). Not `Send`:
/// it stands for the thread that took it.
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
