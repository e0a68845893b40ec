//! The user-space completion queue: the part of a Windows completion port that
//! lives in the kernel's `KQUEUE` object, rebuilt in user space.
//!
//! * packets are queued FIFO;
//! * waiting threads sit on a **stack**: a packet goes to the most recent
//!   waiter (LIFO), one waiter per packet, handed over directly (the waiter
//!   is woken with the packet already its own, so no other thread can steal
//!   it);
//! * a **concurrency limit** counts running threads: a thread runs from the
//!   moment `get`/`get_many` hands it a packet (a batch counts once) until it
//!   next calls `get`, exits, or steps out with a blocking guard (the
//!   per-thread record of all that is [`crate::running`]);
//! * **strands**: packets that name a strand ([`Packet::strand`], a pooled
//!   receive's completions) are never handed to two threads at once: the
//!   thread that took one holds its strand until its next `get` (or its
//!   exit), and the strand's later packets wait for it, in order;
//! * `close` wakes every waiter with `Abandoned`.
//!
//! # Waiters that drive the kernel
//!
//! A queue may be fed by a [`Kernel`] its waiters drive themselves, instead
//! of an engine thread: a thread that would block in `get` on an empty queue
//! while nobody drives becomes the **driver**. It turns the kernel (hands
//! over what was started, waits in the kernel with its own timeout, takes
//! what came back) and the completions go through the normal dispatch. The
//! driver keeps the first completion it reaped when the limit allows (it is
//! awake already); the rest go to the parked waiters, most recent first, one
//! wake per packet. A packet *posted* by another thread goes to the most
//! recent parked waiter, and wakes the driver out of the kernel only when
//! nobody else waits: so for what it reaps the driver stands at the top of
//! the stack, and for posts at the bottom (it arrived first: nobody drove
//! then).
//!
//! A driver that leaves with a packet leaves nobody in the kernel. The
//! first thread that parked while a driver drove is the **standby**: it
//! sleeps on a channel the kernel signals when a completion arrives while
//! nobody drives (armed only then), and takes over the driver role. So a
//! completion that arrives while the only driver runs a handler is taken by
//! a parked thread, as on Windows, and a parked thread is woken only when a
//! packet is left for it. When the role is vacant with threads parked and no
//! standby, the most recent waiter is promoted to driver.
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
use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(loom)]
use loom::thread::{self, Thread};
#[cfg(not(loom))]
use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::thread::{self, Thread};

#[cfg(loom)]
use crate::running::is_running_on;
use crate::running::{
    enter_running, leave_running, next_id, note_strands, take_deferred, thread_tag, OwnerRef,
    SlotOwner, StepOut,
};

use crate::kit::lock;
use crate::sys::Batch;

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

/// The kernel side of a queue whose waiters drive it (see the module docs).
///
/// Only the thread in the driver role turns the kernel, and it holds the
/// role until its turn's `done` lets it go: so no two turns wait or reap at
/// once. The next driver's turn may begin while the last one is still
/// finishing after `done` (arming the standby's channel): the kernel
/// serializes that part itself, and [`Kernel::submit`] must exclude turns
/// by itself too.
pub trait Kernel<T>: Send + Sync {
    /// One turn, by the driver: hand the kernel what is pending, wait up to
    /// `timeout` (`None`: until something happens; `ZERO`: not at all) for
    /// completions, timers or [`Kernel::wake_driver`], and take what came
    /// back. The turn disarms the standby channel before it waits. `done`
    /// runs once at the end, before another turn can start, with the
    /// completions and whether the wait ran out (`timeout` passed; always
    /// for `ZERO`); it returns whether the channel must be armed (the
    /// driver is leaving with a standby parked), which the turn does before
    /// it ends, signalling the standby at once if completions (or a due
    /// timer) already wait. `done` is not called if the kernel has shut
    /// down.
    fn turn(&self, timeout: Option<Duration>, done: &mut dyn FnMut(&mut Vec<T>, bool) -> bool);
    /// Hands pending work to the kernel now if a driver is asleep in it
    /// (so the driver need not be woken for it), without waiting or taking
    /// completions; `done` takes what the hand-over completed on the spot.
    /// Does nothing if a turn is under way (it takes the work in).
    fn submit(&self, done: &mut dyn FnMut(&mut Vec<T>));
    /// Work handed to the engine that no turn has taken in yet.
    fn pending(&self) -> bool;
    /// Makes the driver's turn return soon (a packet was handed to it, or
    /// the queue closed). The signal persists until a turn consumes it, so
    /// a driver that has not entered the kernel yet does not miss it.
    fn wake_driver(&self);
    /// Makes a driver asleep in the kernel take in pending work (nothing if
    /// none is asleep: a driver takes it in before it sleeps).
    fn kick(&self);
    /// Blocks the standby until the armed channel fires, `wake_standby` is
    /// called, a timer of the kernel is due, or `deadline` passes. Returns
    /// whether the deadline passed.
    fn standby_wait(&self, deadline: Option<Instant>) -> bool;
    /// Wakes the standby (the signal persists until it waits again).
    fn wake_standby(&self);
}

enum Handed<T> {
    /// A packet, and the tag of the thread that queued it.
    Packet(T, u64),
    /// The thread is promoted to driver.
    Drive,
}

/// A thread parked in `get`.
struct Parked {
    tag: u64,
    thread: Thread,
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

struct State<T> {
    packets: VecDeque<(T, u64)>,
    /// Parked threads, most recent last (the standby among them).
    waiters: Vec<Parked>,
    /// What was handed to threads taken off `waiters` (or to the driver),
    /// by thread tag, until they come for it.
    handed: Vec<(u64, Handed<T>)>,
    driver: Option<DriverRole>,
    /// The tag of the parked thread that is the standby.
    standby: Option<u64>,
    /// Strands held: (strand, thread tag).
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
        self.packets.iter().position(|(p, _)| {
            let s = p.strand();
            s == 0 || !self.held.iter().any(|&(h, t)| h == s && t != tag)
        })
    }

    /// Takes packet `i` for `tag`: the thread now holds its strand.
    fn take_at(&mut self, i: usize, tag: u64) -> (T, u64) {
        let (p, from) = self.packets.remove(i).expect("index in range");
        let s = p.strand();
        if s != 0 && !self.held.contains(&(s, tag)) {
            self.held.push((s, tag));
        }
        (p, from)
    }

    fn count(&mut self, from: u64, tag: u64) {
        self.delivered += 1;
        if from != tag {
            self.handoffs += 1;
        }
    }

    fn take_handed(&mut self, tag: u64) -> Option<Handed<T>> {
        let i = self.handed.iter().position(|(t, _)| *t == tag)?;
        Some(self.handed.swap_remove(i).1)
    }

    fn unpark_waiter(&mut self, tag: u64) {
        self.waiters.retain(|w| w.tag != tag);
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
        let turn = self.hand_over_work(&mut st, true);
        drop(st);
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
        // An exiting thread never turns the kernel itself: its pending
        // work goes to whoever waits, else to the next `get`.
        self.hand_over_work(&mut st, false);
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
            st.handed.push((to, Handed::Packet(p, from)));
            match st.waiters.pop() {
                Some(w) if st.standby == Some(w.tag) => {
                    st.standby = None;
                    if let Some(k) = self.kernel() {
                        k.wake_standby();
                    }
                }
                Some(w) => w.thread.unpark(),
                None => {
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

    /// With threads parked, someone must watch the kernel: the driver, or
    /// the standby. If neither is left, the most recent waiter becomes the
    /// driver.
    fn cover(&self, st: &mut State<T>) {
        if self.kernel.get().is_none() || st.driver.is_some() || st.standby.is_some() {
            return;
        }
        if let Some(w) = st.waiters.pop() {
            st.driver = Some(DriverRole {
                tag: w.tag,
                waits: true,
                handed: false,
            });
            st.handed.push((w.tag, Handed::Drive));
            w.thread.unpark();
        }
    }

    /// A thread leaves the running count (`blocking()`, or its exit) and
    /// may have left work for the kernel: make sure a turn takes it in —
    /// the driver's, the standby's (woken to drive), or (if `may_turn` and
    /// nobody waits) a turn by the caller, which the caller then makes.
    fn hand_over_work(&self, st: &mut State<T>, may_turn: bool) -> bool {
        let Some(k) = self.kernel() else {
            return false;
        };
        if st.closed || !k.pending() {
            return false;
        }
        if st.driver.is_some() {
            k.kick();
        } else if st.standby.is_some() {
            k.wake_standby();
        } else if may_turn {
            st.driver = Some(DriverRole {
                tag: thread_tag(),
                waits: false,
                handed: false,
            });
            return true;
        }
        false
    }

    /// One turn without waiting by a thread that took the driver role on
    /// the way (`driver.waits == false`), taking no packet.
    fn turn_once(&self) {
        let Some(k) = self.kernel.get() else {
            return;
        };
        let tag = thread_tag();
        k.turn(Some(Duration::ZERO), &mut |batch, _| {
            let mut st = lock(&self.state);
            st.packets.extend(batch.drain(..).map(|p| (p, tag)));
            self.leave_driver(&mut st)
        });
        // The kernel shut down: the role is vacated all the same.
        let mut st = lock(&self.state);
        if st.is_driver(tag) {
            st.driver = None;
            self.dispatch(&mut st);
        }
    }

    /// The driver leaves the role (the lock is held inside its turn).
    /// Returns whether the standby channel must be armed.
    fn leave_driver(&self, st: &mut State<T>) -> bool {
        st.driver = None;
        self.dispatch(st);
        st.driver.is_none() && st.standby.is_some() && !st.closed
    }
}

/// A packet `get` took for the caller, and the thread that queued it.
type Took<T> = (T, u64);

/// A `get` in progress: the calling thread's tag, how many packets it may
/// take, and where they go.
struct Taker<'p, T> {
    tag: u64,
    max: usize,
    put: &'p mut dyn FnMut(T),
}

impl<T: Packet> Taker<'_, T> {
    /// Moves `first` (if any) and then up to `max` packets in all that the
    /// calling thread may take into `put`, counting them delivered; the
    /// caller has counted the thread running. Returns how many, and whether
    /// one of them named a strand.
    fn deliver(&mut self, st: &mut State<T>, first: Option<Took<T>>) -> (usize, bool) {
        let tag = self.tag;
        let mut n = 0;
        let mut strands = false;
        let mut give = |st: &mut State<T>, (p, from): Took<T>| {
            st.count(from, tag);
            strands |= p.strand() != 0;
            (self.put)(p);
        };
        if let Some(t) = first {
            give(st, t);
            n += 1;
        }
        while n < self.max {
            let Some(i) = st.next_for(tag) else { break };
            let t = st.take_at(i, tag);
            give(st, t);
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
                    packets: VecDeque::new(),
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
            }),
        }
    }

    /// Makes the queue one whose waiters drive `kernel` (see the module
    /// docs). Set once, before the queue is shared.
    pub fn set_kernel(&self, kernel: std::sync::Arc<dyn Kernel<T>>) {
        let _ = self.inner.kernel.set(kernel);
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
        st.packets.push_back((pkt, tag));
        if !st.waiters.is_empty() || st.driver.is_some() {
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
    /// the caller under the lock), holding the strands it took.
    fn set_running(&self, tag: u64, strands: bool) {
        if !enter_running(self.inner.id, || self.owner_ref()) {
            // Thread-local storage is gone (the thread is exiting).
            self.inner.thread_gone(tag, true);
            return;
        }
        if strands {
            note_strands(self.inner.id);
        }
    }

    /// Waits for one packet. `None` waits forever; `Some(ZERO)` polls.
    pub fn get(&self, timeout: Option<Duration>) -> Result<T, Empty> {
        let mut one = None;
        self.get_inner(1, timeout, &mut |p| one = Some(p))?;
        Ok(one.expect("get_inner returns at least one"))
    }

    /// Takes up to `batch.max` packets into `batch.out` (appending), waiting
    /// only while none are queued. Returns how many were taken.
    pub(crate) fn get_many(
        &self,
        batch: &mut Batch<'_, T>,
        timeout: Option<Duration>,
    ) -> Result<usize, Empty> {
        self.get_inner(batch.max.max(1), timeout, &mut |p| batch.out.push(p))
    }

    fn get_inner(
        &self,
        max: usize,
        timeout: Option<Duration>,
        put: &mut dyn FnMut(T),
    ) -> Result<usize, Empty> {
        let kernel = self.inner.kernel();
        // Work this thread started while running (operations, buffers given
        // back) goes to the kernel at its next get: now, if a driver sleeps
        // there; else in the turn this get is about to make, or with the
        // driver's next one.
        let deferred = kernel.is_some() && take_deferred(self.inner.id);
        if deferred {
            if let Some(k) = kernel {
                self.submit_deferred(k);
            }
        }
        let was_running = leave_running(self.inner.id);
        let tag = thread_tag();
        let mut st = lock(&self.inner.state);
        if was_running {
            st.running = st.running.saturating_sub(1);
        }
        if !st.held.is_empty() {
            st.held.retain(|&(_, t)| t != tag);
        }
        if st.closed {
            return Err(Empty::Abandoned);
        }
        let mut t = Taker { tag, max, put };
        if st.running < self.inner.limit && st.next_for(tag).is_some() {
            // A thread that calls `get` while packets are queued takes them
            // at once, without blocking.
            st.running += 1;
            let (n, strands) = t.deliver(&mut st, None);
            self.inner.dispatch(&mut st);
            if deferred && st.driver.is_none() && st.standby.is_some() {
                // What this thread left for the kernel must not wait until
                // it comes back while others wait on the kernel.
                if let Some(k) = kernel {
                    k.wake_standby();
                }
            }
            drop(st);
            self.set_running(tag, strands);
            return Ok(n);
        }
        // Our own slot may have been what blocked a queued packet; if so the
        // packet goes to the most recent waiter before we join the stack.
        self.inner.dispatch(&mut st);
        match kernel {
            None => self.wait_parked(st, t, timeout),
            Some(k) => self.wait_driven(st, k, t, timeout),
        }
    }

    /// Hands this thread's deferred work to the kernel if a driver sleeps
    /// there (what the hand-over completed goes to the queue).
    fn submit_deferred(&self, k: &dyn Kernel<T>) {
        let tag = thread_tag();
        k.submit(&mut |batch| {
            if batch.is_empty() {
                return;
            }
            let mut st = lock(&self.inner.state);
            if st.closed {
                batch.clear();
                return;
            }
            st.packets.extend(batch.drain(..).map(|p| (p, tag)));
            self.inner.dispatch(&mut st);
        });
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
        st.waiters.push(Parked {
            tag,
            thread: thread::current(),
        });
        loop {
            if let Some(h) = st.take_handed(tag) {
                return self.handed(st, t, h);
            }
            if st.closed {
                st.unpark_waiter(tag);
                return Err(Empty::Abandoned);
            }
            st = self.wait(st, tag, || park(deadline))?;
        }
    }

    /// A packet was handed to this thread: take it (and more, up to `max`).
    fn handed<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        mut t: Taker<'_, T>,
        h: Handed<T>,
    ) -> Result<usize, Empty> {
        let Handed::Packet(p, from) = h else {
            unreachable!("only a driven queue promotes a driver");
        };
        // The thread was counted running when the packet was handed over.
        let (n, strands) = t.deliver(&mut st, Some((p, from)));
        drop(st);
        self.set_running(t.tag, strands);
        Ok(n)
    }

    /// Waits on a queue whose waiters drive the kernel: as the driver, the
    /// standby, or a parked thread (see the module docs).
    fn wait_driven<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        k: &dyn Kernel<T>,
        t: Taker<'_, T>,
        timeout: Option<Duration>,
    ) -> Result<usize, Empty> {
        let tag = t.tag;
        if timeout == Some(Duration::ZERO) {
            if st.driver.is_some() {
                return Err(Empty::TimedOut);
            }
            // A poll turns the kernel once, without waiting, if nobody else
            // drives it.
            return self.start_driving(st, k, t, false, Some(Instant::now()));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if st.driver.is_none() {
            return self.start_driving(st, k, t, true, deadline);
        }
        let standby = st.standby.is_none();
        if standby {
            st.standby = Some(tag);
        }
        st.waiters.push(Parked {
            tag,
            thread: thread::current(),
        });
        loop {
            match st.take_handed(tag) {
                Some(Handed::Drive) => {
                    drop(st);
                    return self.drive(k, t, deadline);
                }
                Some(h) => return self.handed(st, t, h),
                None => {}
            }
            if st.closed {
                self.leave_stack(&mut st, tag);
                return Err(Empty::Abandoned);
            }
            let is_standby = st.standby == Some(tag);
            if is_standby && st.driver.is_none() {
                // Nobody drives and the kernel (or a hand-over of work)
                // woke the standby: it takes over.
                st.standby = None;
                st.unpark_waiter(tag);
                st.takeovers += 1;
                return self.start_driving(st, k, t, true, deadline);
            }
            st = self.wait(st, tag, || {
                if is_standby {
                    k.standby_wait(deadline)
                } else {
                    park(deadline)
                }
            })?;
        }
    }

    /// This thread becomes the driver and turns the kernel (see
    /// [`Self::drive`]); `waits` is false for a poll.
    fn start_driving<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        k: &dyn Kernel<T>,
        t: Taker<'_, T>,
        waits: bool,
        deadline: Option<Instant>,
    ) -> Result<usize, Empty> {
        st.driver = Some(DriverRole {
            tag: t.tag,
            waits,
            handed: false,
        });
        drop(st);
        self.drive(k, t, deadline)
    }

    /// A parked thread waits with the lock let go (`park` returns whether
    /// its deadline passed). If it timed out and nothing was handed to it
    /// meanwhile, it leaves the stack and its `get` returns the error;
    /// else it looks again, under the lock.
    fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, State<T>>,
        tag: u64,
        park: impl FnOnce() -> bool,
    ) -> Result<MutexGuard<'a, State<T>>, Empty> {
        drop(st);
        let timed_out = park();
        let mut st = lock(&self.inner.state);
        if timed_out && !st.handed.iter().any(|(t, _)| *t == tag) {
            self.leave_stack(&mut st, tag);
            return Err(if st.closed {
                Empty::Abandoned
            } else {
                Empty::TimedOut
            });
        }
        Ok(st)
    }

    /// A parked thread leaves the stack without a packet (timed out, or the
    /// queue closed): if it was the standby, someone else must watch.
    fn leave_stack(&self, st: &mut State<T>, tag: u64) {
        st.unpark_waiter(tag);
        if st.standby == Some(tag) {
            st.standby = None;
            self.inner.cover(st);
        }
    }

    /// Turns the kernel as the driver until a packet is this thread's, the
    /// deadline passes (`Some(now)`: one turn) or the queue closes.
    fn drive(
        &self,
        k: &dyn Kernel<T>,
        mut t: Taker<'_, T>,
        deadline: Option<Instant>,
    ) -> Result<usize, Empty> {
        let tag = t.tag;
        enum Outcome {
            Took(usize, bool),
            TimedOut,
            Abandoned,
        }
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut outcome = None;
            k.turn(left, &mut |batch, ran_out| {
                let mut st = lock(&self.inner.state);
                if st.closed {
                    batch.clear();
                    outcome = Some(Outcome::Abandoned);
                    return self.inner.leave_driver(&mut st);
                }
                st.packets.extend(batch.drain(..).map(|p| (p, tag)));
                let waits = st.driver.as_ref().is_some_and(|d| d.waits);
                let mut first = None;
                if let Some(h) = st.take_handed(tag) {
                    if let Handed::Packet(p, from) = h {
                        first = Some((p, from));
                    }
                } else if st.running < self.inner.limit && st.next_for(tag).is_some() {
                    st.running += 1;
                    let i = st.next_for(tag).expect("checked");
                    first = Some(st.take_at(i, tag));
                }
                if let Some(f) = first {
                    let (n, strands) = t.deliver(&mut st, Some(f));
                    outcome = Some(Outcome::Took(n, strands));
                } else if !waits || ran_out {
                    outcome = Some(Outcome::TimedOut);
                } else {
                    // Keep driving (the limit holds the packets back, or
                    // nothing came): the rest goes to whoever may take it.
                    self.inner.dispatch(&mut st);
                    return false;
                }
                self.inner.leave_driver(&mut st)
            });
            match outcome {
                Some(Outcome::Took(n, strands)) => {
                    self.set_running(tag, strands);
                    return Ok(n);
                }
                Some(Outcome::TimedOut) => return Err(Empty::TimedOut),
                Some(Outcome::Abandoned) => return Err(Empty::Abandoned),
                None => {}
            }
            let mut st = lock(&self.inner.state);
            if st.closed || !st.is_driver(tag) {
                // The kernel has shut down (the port is closing).
                if st.is_driver(tag) {
                    st.driver = None;
                }
                self.inner.dispatch(&mut st);
                return Err(Empty::Abandoned);
            }
            if let Some(Handed::Packet(p, from)) = st.take_handed(tag) {
                st.driver = None;
                let (n, strands) = t.deliver(&mut st, Some((p, from)));
                let arm = self.inner.leave_driver(&mut st);
                drop(st);
                if arm {
                    // Handed between two turns: the next turn arms instead.
                    k.wake_standby();
                }
                self.set_running(tag, strands);
                return Ok(n);
            }
        }
    }

    /// Closes the queue: every waiter returns `Abandoned`, later calls return
    /// `Abandoned`, and the queued packets are returned to the caller (so it
    /// can release their buffers).
    pub fn close(&self) -> Vec<T> {
        let mut st = lock(&self.inner.state);
        st.closed = true;
        let k = self.inner.kernel();
        let standby = st.standby;
        for w in st.waiters.drain(..) {
            // The standby sleeps on the kernel's channel, woken below.
            if standby != Some(w.tag) {
                w.thread.unpark();
            }
        }
        if let Some(k) = k {
            if st.standby.is_some() {
                k.wake_standby();
            }
            if st.driver.is_some() {
                k.wake_driver();
            }
        }
        st.packets.drain(..).map(|(p, _)| p).collect()
    }

    /// Makes sure work queued for the kernel by a thread that does not run
    /// on this queue is taken in: by the driver (woken if it sleeps), by the
    /// standby (woken to drive), or, if nobody waits and `may_turn`, by a
    /// turn of the caller's own, without waiting (else by the next `get`).
    pub fn nudge(&self, may_turn: bool) {
        let Some(k) = self.inner.kernel() else {
            return;
        };
        let mut st = lock(&self.inner.state);
        if st.closed {
            return;
        }
        if st.driver.is_some() {
            drop(st);
            k.kick();
            return;
        }
        if st.standby.is_some() {
            drop(st);
            k.wake_standby();
            return;
        }
        if !may_turn {
            return;
        }
        st.driver = Some(DriverRole {
            tag: thread_tag(),
            waits: false,
            handed: false,
        });
        drop(st);
        self.inner.turn_once();
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

/// Parks the calling thread until it is unparked or `deadline` passes;
/// returns whether the deadline passed. May return early (a stray unpark):
/// callers look at their state again.
#[cfg(not(loom))]
fn park(deadline: Option<Instant>) -> bool {
    match deadline {
        None => {
            thread::park();
            false
        }
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return true;
            }
            thread::park_timeout(d - now);
            Instant::now() >= d
        }
    }
}

/// Under loom time is abstract: a timed wait lets other threads run, then
/// reports a timeout, so the model explores a timeout firing at any point.
#[cfg(loom)]
fn park(deadline: Option<Instant>) -> bool {
    match deadline {
        None => {
            thread::park();
            false
        }
        Some(_) => {
            thread::yield_now();
            true
        }
    }
}
