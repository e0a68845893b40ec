//! The user-space completion queue: the part of a Windows completion port that
//! lives in the kernel's `KQUEUE` object, rebuilt in user space.
//!
//! * packets are queued FIFO;
//! * waiting threads sit on a **stack**: a packet goes to the most recent
//!   waiter (LIFO), one waiter per packet, handed over directly into the
//!   waiter's own slot (the waiter is woken with the packet already its
//!   own, so no other thread can steal it, and takes it without the lock);
//! * a **concurrency limit** counts running threads: a thread runs from the
//!   moment `get`/`get_many` hands it a packet (a batch counts once) until it
//!   next calls `get`, exits, or steps out with a blocking guard (the
//!   per-thread record of all that is [`crate::running`]);
//! * **strands**: packets that name a strand ([`Packet::strand`], a pooled
//!   receive's completions) are never handed to two threads at once: the
//!   thread that took one holds its strand until its next `get` (or its
//!   exit), and the strand's later packets wait for it, in order;
//! * `close` wakes every waiter with `Abandoned`;
//! * the queue may be fed by a [`Kernel`] its waiting threads drive
//!   themselves, with no engine thread: see [`drive`].
//!
//! The type is generic over the packet (and the kernel is a trait) so the
//! `loom` model in `tests/loom.rs` can drive it with plain integers and a
//! modelled kernel: built with `--cfg loom` this module is public (and swaps
//! its sync primitives for loom's), otherwise it is the Linux port's private
//! queue. It depends on nothing in the crate but the running record.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(loom)]
use loom::thread::{self, Thread};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::thread::{self, Thread};

#[cfg(loom)]
use crate::running::is_running_on;
use crate::running::{
    begin_get, next_id, run_on, thread_tag, GetStart, OwnerRef, SlotOwner, StepOut,
};

use crate::batch::Batch;
use crate::kit::lock;

mod drive;
mod park;
pub use drive::Kernel;
use park::{park, MySlot};

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
    /// Threads blocked in `get`/`get_many` (the driver among them).
    pub waiting: usize,
    /// Threads counted as running against the concurrency limit.
    pub running: usize,
    /// Packets queued and not yet taken.
    pub queued: usize,
    /// Packets taken by a thread other than the one that queued them.
    pub handoffs: u64,
    /// Packets delivered in total.
    pub delivered: u64,
    /// Times the standby took over the driver role because the kernel
    /// signalled it (a completion arrived while nobody drove).
    pub takeovers: u64,
}

/// What the queue needs to know about a packet.
pub trait Packet: Send + 'static {
    /// The strand the packet belongs to (0: none). Packets of one strand
    /// are never handed to two threads at once.
    fn strand(&self) -> u64;
}

/// For the loom models: a `u32` packet names strand `p >> 16` (0 below
/// 65536).
#[cfg(loom)]
impl Packet for u32 {
    fn strand(&self) -> u64 {
        u64::from(*self >> 16)
    }
}

/// What a thread taken off the waiters' stack finds in its [`Slot`].
enum Given<T> {
    /// A packet: counted delivered, and the thread counted running, when
    /// it was handed over.
    Packet(T),
    /// The thread is promoted to driver.
    Drive,
    /// The queue closed.
    Closed,
}

/// A waiting thread's own slot. Whoever takes the thread off the stack (a
/// dispatch handing it a packet, a promotion to driver, a close) fills the
/// slot under the queue's lock and then wakes the thread, which reads the
/// slot without taking the queue's lock again. Each thread keeps one slot
/// from one `get` to the next (see [`park::MySlot`]), so waiting allocates
/// nothing.
struct Slot<T> {
    thread: Thread,
    given: Mutex<Option<Given<T>>>,
}

impl<T> Slot<T> {
    fn give(&self, g: Given<T>) {
        *lock(&self.given) = Some(g);
    }

    fn take(&self) -> Option<Given<T>> {
        lock(&self.given).take()
    }
}

/// A thread parked in `get`.
struct Parked<T> {
    tag: u64,
    slot: std::sync::Arc<Slot<T>>,
}

/// The thread in the driver role.
struct DriverRole {
    tag: u64,
    /// A `get` that takes packets (not a turn made on the way by a poll or
    /// by a thread that started work while nobody drove).
    waits: bool,
    /// A packet was handed to it.
    handed: bool,
}

impl DriverRole {
    /// The role taken by thread `tag`; nothing handed to it yet.
    fn new(tag: u64, waits: bool) -> Self {
        DriverRole {
            tag,
            waits,
            handed: false,
        }
    }
}

/// The queued packets, FIFO, and the tag of the thread that queued each.
/// Two rings rather than one of pairs: a packet (a `Completion` is large)
/// then moves in and out of the queue in one copy each way.
struct Packets<T> {
    items: VecDeque<T>,
    from: VecDeque<u64>,
}

impl<T> Packets<T> {
    fn push(&mut self, p: T, from: u64) {
        self.items.push_back(p);
        self.from.push_back(from);
    }

    /// Queues every packet of `pkts` (queued by `from`), leaving it empty.
    /// Onto an empty ring the vector's buffer itself becomes the ring (the
    /// ring's empty buffer goes back in `pkts`), so no packet moves.
    fn append(&mut self, pkts: &mut Vec<T>, from: u64) {
        self.from.extend(std::iter::repeat_n(from, pkts.len()));
        if self.items.is_empty() {
            let ring = std::mem::replace(&mut self.items, VecDeque::from(std::mem::take(pkts)));
            *pkts = Vec::from(ring);
        } else {
            self.items.extend(pkts.drain(..));
        }
    }

    fn remove(&mut self, i: usize) -> Option<(T, u64)> {
        let p = self.items.remove(i)?;
        Some((p, self.from.remove(i).unwrap_or(0)))
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn take_all(&mut self) -> Vec<T> {
        self.from.clear();
        self.items.drain(..).collect()
    }
}

struct State<T> {
    packets: Packets<T>,
    /// Parked threads, most recent last (the standby among them).
    waiters: Vec<Parked<T>>,
    /// A packet handed to the driver (by its tag) until it comes for it, and
    /// the tag of the thread that queued it (a parked thread's packet goes
    /// in its own slot instead). One entry at most but for a driver gone
    /// with the kernel's shutdown; a vector (its buffer reused) rather than
    /// an option, so the state does not grow by a packet.
    handed: Vec<(u64, T, u64)>,
    driver: Option<DriverRole>,
    /// The tag of the parked thread that is the standby.
    standby: Option<u64>,
    /// Strands held: (strand, thread tag). A thread that takes a strand it
    /// holds already lists it again (recording a take costs one push, not a
    /// search); a thread lets go of its strands all at once, by tag.
    held: Vec<(u64, u64)>,
    running: usize,
    closed: bool,
    handoffs: u64,
    delivered: u64,
    takeovers: u64,
}

impl<T: Packet> State<T> {
    /// The index of the first packet `tag` may take (its strand is free).
    fn next_for(&self, tag: u64) -> Option<usize> {
        if self.held.is_empty() {
            return (!self.packets.is_empty()).then_some(0);
        }
        self.packets.items.iter().position(|p| {
            let s = p.strand();
            s == 0 || !self.held.iter().any(|&(h, t)| h == s && t != tag)
        })
    }

    /// `tag` took a packet of strand `s` (0: none): it holds the strand.
    #[inline(always)]
    fn hold(&mut self, s: u64, tag: u64) {
        if s != 0 {
            self.held.push((s, tag));
        }
    }

    /// Takes packet `i` for `tag`: the thread now holds its strand.
    fn take_at(&mut self, i: usize, tag: u64) -> (T, u64) {
        let (p, from) = self.packets.remove(i).expect("index in range");
        self.hold(p.strand(), tag);
        (p, from)
    }

    /// Claims the first packet `tag` may take, if the limit lets it run:
    /// the thread is counted running and the packet delivered, and the
    /// packet is left at the front of the ring for the caller to pop under
    /// the same lock (the tags' ring is one shorter until then). Returns
    /// whether the packet names a strand.
    #[inline(always)]
    fn claim_first(&mut self, limit: usize, tag: u64) -> Option<bool> {
        if self.running >= limit {
            return None;
        }
        let s = if self.held.is_empty() {
            // The common case: bookkeeping only, so the packet moves once.
            let s = self.packets.items.front()?.strand();
            // No strand is held: this thread holds it now.
            self.hold(s, tag);
            let from = self.packets.from.pop_front().unwrap_or(0);
            self.count(from, tag);
            s
        } else {
            let i = self.next_for(tag)?;
            let (p, from) = self.take_at(i, tag);
            self.count(from, tag);
            let s = p.strand();
            self.packets.items.push_front(p);
            s
        };
        self.running += 1;
        Some(s != 0)
    }

    /// When no other thread holds a strand (every queued packet is free
    /// for `tag`): moves up to `max` packets from the front of the ring
    /// straight into `out`, as [`Taker::deliver`] would hand them one by
    /// one, and returns how many and whether one named a strand.
    /// `None` (nothing taken) when another thread holds a strand.
    ///
    /// The whole ring into an empty `out` (a driver taking what it reaped,
    /// most often) moves no packet: the ring's buffer becomes `out`'s, and
    /// `out`'s empty one the ring's.
    fn drain_free(&mut self, tag: u64, max: usize, out: &mut Vec<T>) -> Option<(usize, bool)> {
        if self.held.iter().any(|&(_, t)| t != tag) {
            return None;
        }
        let n = max.min(self.packets.len());
        let mut strands = false;
        let held = &mut self.held;
        for p in self.packets.items.range(..n) {
            let s = p.strand();
            if s != 0 {
                strands = true;
                held.push((s, tag));
            }
        }
        self.delivered += n as u64;
        self.handoffs += self.packets.from.drain(..n).filter(|&f| f != tag).count() as u64;
        if n == self.packets.items.len() && out.is_empty() {
            let ring =
                std::mem::replace(&mut self.packets.items, VecDeque::from(std::mem::take(out)));
            *out = Vec::from(ring);
        } else {
            out.extend(self.packets.items.drain(..n));
        }
        Some((n, strands))
    }

    fn count(&mut self, from: u64, tag: u64) {
        self.delivered += 1;
        if from != tag {
            self.handoffs += 1;
        }
    }

    /// The packet handed to driver `tag`, if any.
    fn take_handed(&mut self, tag: u64) -> Option<Took<T>> {
        let i = self.handed.iter().position(|(t, _, _)| *t == tag)?;
        let (_, p, from) = self.handed.swap_remove(i);
        Some((p, from))
    }

    fn unpark_waiter(&mut self, tag: u64) {
        self.waiters.retain(|w| w.tag != tag);
    }

    /// Whether a waiter or a driver could take a packet now queued.
    fn someone_waits(&self) -> bool {
        !self.waiters.is_empty() || self.driver.is_some()
    }

    fn is_driver(&self, tag: u64) -> bool {
        self.driver.as_ref().is_some_and(|d| d.tag == tag)
    }
}

pub(crate) struct Inner<T> {
    id: u64,
    limit: usize,
    state: Mutex<State<T>>,
    /// Set once, before the queue is shared, on a queue its waiters drive.
    kernel: OnceLock<std::sync::Arc<dyn Kernel<T>>>,
    /// Set once, before the queue is shared, on a queue whose packets a
    /// thread takes without waiting on the stack (see
    /// [`Queue::set_outside_taker`]).
    outside: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// A standby was handed a packet (set under the lock, before its slot
    /// is filled) and has not read its slot yet (it clears this without
    /// the lock, once it has read it). Meanwhile nobody else becomes the
    /// standby: the wake on the kernel's channel is that thread's, and a
    /// new standby waiting on the same channel could take it, leaving the
    /// thread asleep with its packet.
    standby_waking: AtomicBool,
}

/// A completion queue with IOCP's wake order and concurrency accounting.
pub struct Queue<T> {
    inner: Arc<Inner<T>>,
}

/// A [`Queue`] that does not keep it alive.
#[cfg(not(loom))]
pub(crate) struct WeakQueue<T>(std::sync::Weak<Inner<T>>);

/// Under loom (whose `Arc` has no weak references) the reference is a
/// strong one: the ports built into a loom build never run, only the
/// models of the queue do.
#[cfg(loom)]
pub(crate) struct WeakQueue<T>(Queue<T>);

impl<T> WeakQueue<T> {
    /// The queue, if it is still alive.
    pub(crate) fn upgrade(&self) -> Option<Queue<T>> {
        #[cfg(not(loom))]
        {
            self.0.upgrade().map(|inner| Queue { inner })
        }
        #[cfg(loom)]
        {
            Some(self.0.clone())
        }
    }
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
impl<T: Packet> SlotOwner for LoomOwner<T> {
    fn release(&self) {
        self.0.release()
    }
    fn reacquire(&self) {
        self.0.reacquire()
    }
    fn thread_gone(&self, tag: u64, running: bool) {
        self.0.thread_gone(tag, running)
    }
}

impl<T: Packet> SlotOwner for Inner<T> {
    fn release(&self) {
        // A blocking() step-out: the thread goes on with its handler.
        let mut st = lock(&self.state);
        st.running = st.running.saturating_sub(1);
        self.dispatch(&mut st);
        let tell = self.outside_may_take(&st);
        let turn = self.hand_over_work(&mut st, true);
        drop(st);
        self.tell_outside(tell);
        if turn {
            self.turn_once();
        }
    }
    fn reacquire(&self) {
        let mut st = lock(&self.state);
        st.running += 1;
    }
    fn thread_gone(&self, tag: u64, running: bool) {
        let mut st = lock(&self.state);
        if running {
            st.running = st.running.saturating_sub(1);
        }
        st.held.retain(|&(_, t)| t != tag);
        self.dispatch(&mut st);
        let tell = self.outside_may_take(&st);
        // An exiting thread never turns the kernel itself: its pending
        // work goes to whoever waits, else to the next `get`.
        self.hand_over_work(&mut st, false);
        drop(st);
        self.tell_outside(tell);
    }
}

impl<T: Packet> Inner<T> {
    fn kernel(&self) -> Option<&dyn Kernel<T>> {
        self.kernel.get().map(|k| &**k)
    }

    /// Hands queued packets to waiters while the limit allows: the most
    /// recent parked thread first, then a driver that waits for packets.
    /// Called with the lock held whenever `running` drops, packets arrive or
    /// a strand is let go. Ends by making sure someone watches the kernel.
    fn dispatch(&self, st: &mut State<T>) {
        while st.running < self.limit {
            let to = match st.waiters.last() {
                Some(w) => w.tag,
                None => match &st.driver {
                    Some(d) if d.waits && !d.handed => d.tag,
                    _ => break,
                },
            };
            let Some(i) = st.next_for(to) else { break };
            let (p, from) = st.take_at(i, to);
            st.running += 1;
            match st.waiters.pop() {
                Some(w) => {
                    st.count(from, to);
                    if st.standby == Some(w.tag) {
                        st.standby = None;
                        // Set before the slot is filled: the standby may
                        // wake for another reason (deadline, a due timer, a
                        // stale signal) and read its slot without the lock
                        // at any moment after `give`; the slot's mutex then
                        // orders this store before the standby's clear. Set
                        // after, it could land on top of that clear and keep
                        // every thread from becoming the standby for good.
                        self.standby_waking.store(true, Ordering::SeqCst);
                        w.slot.give(Given::Packet(p));
                        if let Some(k) = self.kernel() {
                            k.wake_standby();
                        }
                    } else {
                        w.slot.give(Given::Packet(p));
                        w.slot.thread.unpark();
                    }
                }
                None => {
                    st.handed.push((to, p, from));
                    if let Some(d) = st.driver.as_mut() {
                        d.handed = true;
                    }
                    if let Some(k) = self.kernel() {
                        k.wake_driver();
                    }
                }
            }
        }
        self.cover(st);
    }

    /// Whether the outside taker must hear that it may take packets now:
    /// a thread left the count (or let go of its strands) and the dispatch
    /// that followed left packets queued that the limit lets run. The
    /// outside taker is on no stack, so no dispatch wakes it; without this
    /// it would sleep on with packets waiting for it.
    fn outside_may_take(&self, st: &State<T>) -> bool {
        self.outside.get().is_some() && st.running < self.limit && !st.packets.is_empty()
    }

    /// Tells the outside taker (with the lock let go), if `tell`.
    fn tell_outside(&self, tell: bool) {
        if let Some(f) = self.outside.get().filter(|_| tell) {
            f();
        }
    }

    /// With threads parked, someone must watch the kernel: the driver, or
    /// the standby. If neither is left, the most recent waiter becomes the
    /// driver.
    fn cover(&self, st: &mut State<T>) {
        if self.kernel.get().is_none() || st.driver.is_some() || st.standby.is_some() {
            return;
        }
        if let Some(w) = st.waiters.pop() {
            st.driver = Some(DriverRole::new(w.tag, true));
            w.slot.give(Given::Drive);
            w.slot.thread.unpark();
        }
    }
}

/// A `get` that claimed a packet without blocking (it counted itself
/// running). Its drop ends the `get`: the rest goes to whoever waits, the
/// lock is let go and the thread runs on the queue. A guard, so the packet
/// moves from the ring straight into the caller's result before that runs.
struct Claimed<'a, T: Packet> {
    queue: &'a Queue<T>,
    st: Option<MutexGuard<'a, State<T>>>,
    tag: u64,
    deferred: bool,
    strands: bool,
}

impl<T: Packet> Claimed<'_, T> {
    /// The packet [`State::claim_first`] claimed.
    fn pop(&mut self) -> T {
        let st = self.st.as_mut().expect("held until drop");
        st.packets.items.pop_front().expect("claimed")
    }
}

impl<T: Packet> Drop for Claimed<'_, T> {
    fn drop(&mut self) {
        let Some(mut st) = self.st.take() else { return };
        let inner = &self.queue.inner;
        if st.someone_waits() {
            // Letting go of strands may have freed packets for them.
            inner.dispatch(&mut st);
        }
        // What this thread left for the kernel must not wait until the
        // queue runs dry: the standby takes it in, else (nobody waits on
        // the kernel) this thread turns it once without waiting, its
        // completions queueing behind these packets. Otherwise a lone
        // worker would hold every reply of a batch back until it had
        // handled the whole batch, and the load would come back as one wave
        // needing a pool buffer per connection.
        let turn = self.deferred && inner.hand_over_work(&mut st, true);
        drop(st);
        self.queue.set_running(self.tag, self.strands);
        if turn {
            inner.turn_once();
        }
    }
}

/// A packet `get` took for the caller, and the thread that queued it.
type Took<T> = (T, u64);

/// Where the packets a `get` takes go.
enum Sink<'p, T> {
    /// `get`: one packet.
    One(&'p mut Option<T>),
    /// `get_many`: appended to the caller's batch.
    Many(&'p mut Vec<T>),
}

impl<T> Sink<'_, T> {
    fn put(&mut self, p: T) {
        match self {
            Sink::One(one) => **one = Some(p),
            Sink::Many(out) => out.push(p),
        }
    }
}

/// A `get` in progress: the calling thread's tag, how many packets it may
/// take, and where they go.
struct Taker<'p, T> {
    tag: u64,
    max: usize,
    sink: Sink<'p, T>,
}

impl<T: Packet> Taker<'_, T> {
    /// Moves `first` (if any) and then up to `max` packets in all that the
    /// calling thread may take into the sink, counting them delivered; the
    /// caller has counted the thread running. Returns how many, and whether
    /// one of them named a strand. When no other thread holds a strand, a
    /// batch takes its packets in one move ([`State::drain_free`]), else
    /// one at a time, past the packets of strands others hold.
    fn deliver(&mut self, st: &mut State<T>, first: Option<Took<T>>) -> (usize, bool) {
        let tag = self.tag;
        let mut n = 0;
        let mut strands = false;
        if let Some((p, from)) = first {
            st.count(from, tag);
            strands = p.strand() != 0;
            self.sink.put(p);
            n = 1;
        }
        if n < self.max {
            if let Sink::Many(out) = &mut self.sink {
                if let Some((k, s)) = st.drain_free(tag, self.max - n, out) {
                    return (n + k, strands | s);
                }
            }
        }
        while n < self.max {
            let Some(i) = st.next_for(tag) else { break };
            let (p, from) = st.take_at(i, tag);
            st.count(from, tag);
            strands |= p.strand() != 0;
            self.sink.put(p);
            n += 1;
        }
        (n, strands)
    }
}

impl<T: Packet> Queue<T> {
    /// A queue whose concurrency limit is `limit` (at least 1).
    pub fn new(limit: usize) -> Self {
        Queue {
            inner: Arc::new(Inner {
                id: next_id(),
                limit: limit.max(1),
                state: Mutex::new(State {
                    packets: Packets {
                        items: VecDeque::new(),
                        from: VecDeque::new(),
                    },
                    waiters: Vec::new(),
                    handed: Vec::new(),
                    driver: None,
                    standby: None,
                    held: Vec::new(),
                    running: 0,
                    closed: false,
                    handoffs: 0,
                    delivered: 0,
                    takeovers: 0,
                }),
                kernel: OnceLock::new(),
                outside: OnceLock::new(),
                standby_waking: AtomicBool::new(false),
            }),
        }
    }

    /// Makes the queue one whose waiters drive `kernel` (see the module
    /// docs). Set once, before the queue is shared.
    pub fn set_kernel(&self, kernel: std::sync::Arc<dyn Kernel<T>>) {
        let _ = self.inner.kernel.set(kernel);
    }

    /// Gives the queue an outside taker: a thread that takes its packets
    /// without waiting on the stack (an inline port's owner, which waits
    /// in its engine instead). `tell` runs, without the queue's lock, when
    /// a thread leaving the count (`blocking()`, its exit) lets packets
    /// that were held back by the limit run, and nobody on the stack took
    /// them — as a `post` must wake that thread, so must this. Set once,
    /// before the queue is shared.
    pub fn set_outside_taker(&self, tell: Box<dyn Fn() + Send + Sync>) {
        let _ = self.inner.outside.set(tell);
    }

    /// A reference that does not keep the queue alive.
    pub(crate) fn downgrade(&self) -> WeakQueue<T> {
        #[cfg(not(loom))]
        {
            WeakQueue(Arc::downgrade(&self.inner))
        }
        #[cfg(loom)]
        {
            WeakQueue(self.clone())
        }
    }

    /// The concurrency limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Queues one packet and hands it to the most recent waiter if the
    /// limit allows. Returns the packet back if the queue is closed.
    pub fn post(&self, pkt: T) -> Result<(), T> {
        let tag = thread_tag();
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Err(pkt);
        }
        st.packets.push(pkt, tag);
        if st.someone_waits() {
            self.inner.dispatch(&mut st);
        }
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
        st.packets.append(pkts, tag);
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
    /// the caller under the lock), holding the strands it took.
    fn set_running(&self, tag: u64, strands: bool) {
        if !run_on(self.inner.id, strands, || self.owner_ref()) {
            // Thread-local storage is gone (the thread is exiting).
            self.inner.thread_gone(tag, true);
        }
    }

    /// Waits for one packet. `None` waits forever; `Some(ZERO)` polls.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn get(&self, timeout: Option<Duration>) -> Result<T, Empty> {
        self.get_or(timeout, |e| e)
    }

    /// [`Queue::get`], its error turned into the caller's by `err` (so the
    /// packet, which may be large, is not moved once more to map it).
    #[inline]
    pub(crate) fn get_or<E>(
        &self,
        timeout: Option<Duration>,
        err: impl FnOnce(Empty) -> E,
    ) -> Result<T, E> {
        let (mut st, g) = match self.begin_get() {
            Ok(x) => x,
            Err(e) => return Err(err(e)),
        };
        if let Some(strands) = st.claim_first(self.inner.limit, g.tag) {
            // The fast path: no closure, and the packet moves straight from
            // the ring into the result (the guard finishes after that).
            let mut took = self.took(st, &g, strands);
            return Ok(took.pop());
        }
        let mut one = None;
        if let Err(e) = self.wait_for(st, g, 1, Sink::One(&mut one), timeout) {
            return Err(err(e));
        }
        Ok(one.expect("wait_for returns at least one"))
    }

    /// Takes up to `batch.max` packets into `batch.out` (appending), waiting
    /// only while none are queued. Returns how many were taken.
    pub(crate) fn get_many(
        &self,
        batch: &mut Batch<'_, T>,
        timeout: Option<Duration>,
    ) -> Result<usize, Empty> {
        let (st, g) = self.begin_get()?;
        let max = batch.max.max(1);
        let out = &mut *batch.out;
        let st = match self.take_now(st, &g, out, max) {
            Ok((n, _)) => return Ok(n),
            Err(st) => st,
        };
        self.wait_for(st, g, max, Sink::Many(out), timeout)
    }

    /// A `get_many` that never waits, by a thread that made packets of its
    /// own to take (an inline port's owner, after turning its engine):
    /// `fresh` goes behind what is queued already. When nothing is queued
    /// and the limit lets the thread run, they move straight into the batch
    /// without passing through the queue; what does not fit is queued (so
    /// is everything, if the thread may not run now). Returns how many the
    /// caller took and whether packets are left queued; `Abandoned`, with
    /// `fresh` as it was, if the queue is closed.
    pub(crate) fn poll_with(
        &self,
        batch: &mut Batch<'_, T>,
        fresh: &mut Vec<T>,
    ) -> Result<(usize, bool), Empty> {
        let (mut st, g) = self.begin_get()?;
        let max = batch.max.max(1);
        if st.packets.is_empty() {
            if fresh.is_empty() {
                // Nothing at all: nobody waits for a packet this thread held
                // back (it held none), so there is nothing to dispatch.
                return Ok((0, false));
            }
            if st.held.is_empty() && st.running < self.inner.limit {
                let n = fresh.len().min(max);
                let mut strands = false;
                for p in &fresh[..n] {
                    let s = p.strand();
                    strands |= s != 0;
                    st.hold(s, g.tag);
                }
                st.delivered += n as u64;
                st.running += 1;
                if n == fresh.len() {
                    batch.out.append(fresh);
                } else {
                    batch.out.extend(fresh.drain(..n));
                    st.packets.append(fresh, g.tag);
                }
                let more = !st.packets.is_empty();
                // The guard's drop dispatches the rest (if anyone waits) and
                // makes the thread run on the queue.
                drop(self.took(st, &g, strands));
                return Ok((n, more));
            }
        }
        st.packets.append(fresh, g.tag);
        let mut st = match self.take_now(st, &g, batch.out, max) {
            Ok(x) => return Ok(x),
            Err(st) => st,
        };
        // Nothing for the caller: what it queued goes to whoever waits.
        self.inner.dispatch(&mut st);
        Ok((0, !st.packets.is_empty()))
    }

    /// Takes up to `max` packets the caller may take now into `out`, if
    /// the limit lets it run: how many, and whether packets are left
    /// queued. Otherwise gives the lock back.
    fn take_now<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        g: &GetStart,
        out: &mut Vec<T>,
        max: usize,
    ) -> Result<(usize, bool), MutexGuard<'a, State<T>>> {
        if st.running >= self.inner.limit || st.next_for(g.tag).is_none() {
            return Err(st);
        }
        st.running += 1;
        let mut took = self.took(st, g, false);
        let st = took.st.as_mut().expect("held until drop");
        // At least the packet `next_for` found.
        let (n, strands) = Taker {
            tag: g.tag,
            max,
            sink: Sink::Many(out),
        }
        .deliver(st, None);
        let more = !st.packets.is_empty();
        took.strands = strands;
        Ok((n, more))
    }

    /// The start of every `get`: the thread's running period ends (it
    /// leaves the count and lets go of its strands), and work it left for
    /// the kernel goes in. Returns the locked state, or `Abandoned`.
    fn begin_get(&self) -> Result<(MutexGuard<'_, State<T>>, GetStart), Empty> {
        let g = begin_get(self.inner.id);
        // Work this thread started while running (operations, buffers given
        // back) goes to the kernel at its next get: now, if a driver sleeps
        // there; else in the turn this get is about to make, or with the
        // driver's next one.
        if g.deferred {
            if let Some(k) = self.inner.kernel() {
                self.submit_deferred(k);
            }
        }
        let mut st = lock(&self.inner.state);
        if g.was_running {
            st.running = st.running.saturating_sub(1);
        }
        if !st.held.is_empty() {
            st.held.retain(|&(_, t)| t != g.tag);
        }
        if st.closed {
            return Err(Empty::Abandoned);
        }
        Ok((st, g))
    }

    /// The guard that ends a `get` that claimed a packet (see [`Claimed`]).
    fn took<'a>(
        &'a self,
        st: MutexGuard<'a, State<T>>,
        g: &GetStart,
        strands: bool,
    ) -> Claimed<'a, T> {
        Claimed {
            queue: self,
            st: Some(st),
            tag: g.tag,
            deferred: g.deferred,
            strands,
        }
    }

    /// Nothing for the caller now: wait for packets (see [`Self::get_many`]).
    fn wait_for(
        &self,
        mut st: MutexGuard<'_, State<T>>,
        g: GetStart,
        max: usize,
        sink: Sink<'_, T>,
        timeout: Option<Duration>,
    ) -> Result<usize, Empty> {
        let t = Taker {
            tag: g.tag,
            max,
            sink,
        };
        // Our own slot may have been what blocked a queued packet; if so the
        // packet goes to the most recent waiter before we join the stack.
        self.inner.dispatch(&mut st);
        match self.inner.kernel() {
            None => self.wait_parked(st, t, timeout),
            Some(k) => self.wait_driven(st, k, t, timeout),
        }
    }

    /// Waits on its own (no kernel to drive): park until a packet is handed
    /// over, the queue closes, or the timeout passes.
    fn wait_parked<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        t: Taker<'_, T>,
        timeout: Option<Duration>,
    ) -> Result<usize, Empty> {
        let tag = t.tag;
        if timeout == Some(Duration::ZERO) {
            return Err(Empty::TimedOut);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let slot = MySlot::<T>::new();
        st.waiters.push(slot.parked(tag));
        drop(st);
        match self.sleep(&slot, tag, || park(deadline))? {
            Given::Packet(p) => Ok(self.took_given(t, p)),
            Given::Closed => Err(Empty::Abandoned),
            Given::Drive => unreachable!("only a driven queue promotes a driver"),
        }
    }

    /// A packet was handed to this thread through its slot (it was counted
    /// running then): the caller takes it, and a `get_many` more, up to
    /// its `max`, under the lock. Returns how many.
    fn took_given(&self, mut t: Taker<'_, T>, p: T) -> usize {
        let mut strands = p.strand() != 0;
        t.sink.put(p);
        let mut n = 1;
        if t.max > 1 {
            let mut st = lock(&self.inner.state);
            t.max -= 1;
            let (more, s) = t.deliver(&mut st, None);
            n += more;
            strands |= s;
        }
        self.set_running(t.tag, strands);
        n
    }

    /// Closes the queue: every waiter returns `Abandoned`, later calls return
    /// `Abandoned`, and the queued packets are returned to the caller (so it
    /// can release their buffers), with a packet handed to the driver that
    /// it has not taken yet (it returns `Abandoned` instead).
    pub fn close(&self) -> Vec<T> {
        let mut st = lock(&self.inner.state);
        st.closed = true;
        let k = self.inner.kernel();
        let standby = st.standby.take();
        for w in st.waiters.drain(..) {
            w.slot.give(Given::Closed);
            // The standby sleeps on the kernel's channel, woken below.
            if standby != Some(w.tag) {
                w.slot.thread.unpark();
            }
        }
        if let Some(k) = k {
            if standby.is_some() {
                k.wake_standby();
            }
            if st.driver.is_some() {
                k.wake_driver();
            }
        }
        let mut left = st.packets.take_all();
        // A packet handed to the driver counted it running; the driver
        // returns `Abandoned` instead, so nobody runs with it.
        st.running = st.running.saturating_sub(st.handed.len());
        for (_, p, _) in st.handed.drain(..).rev() {
            left.insert(0, p);
        }
        left
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
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// What is wrong with the queue's roles once every thread has left
    /// it, if anything (loom models only): no driver, no standby, nobody
    /// on the stack, no packet handed to a driver, and no standby's wake
    /// outstanding.
    #[cfg(loom)]
    pub fn unsettled(&self) -> Option<&'static str> {
        let st = lock(&self.inner.state);
        if st.driver.is_some() {
            Some("a driver is left")
        } else if st.standby.is_some() {
            Some("a standby is left")
        } else if !st.waiters.is_empty() {
            Some("a thread is left on the stack")
        } else if !st.handed.is_empty() {
            Some("a packet is left handed to a driver")
        } else if self.inner.standby_waking.load(Ordering::SeqCst) {
            Some("standby_waking is left set: no thread can become the standby again")
        } else {
            None
        }
    }

    /// Counters, read under the lock.
    pub fn stats(&self) -> QueueStats {
        let st = lock(&self.inner.state);
        let driver_waits = st.driver.as_ref().is_some_and(|d| d.waits && !d.handed);
        QueueStats {
            waiting: st.waiters.len() + usize::from(driver_waits),
            running: st.running,
            queued: st.packets.len(),
            handoffs: st.handoffs,
            delivered: st.delivered,
            takeovers: st.takeovers,
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
