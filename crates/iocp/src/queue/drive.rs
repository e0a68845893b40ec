//! The driver's side of the queue: a thread that waits on a queue fed by a
//! [`Kernel`] becomes the driver, the standby or a parked waiter.
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
//! standby, the most recent waiter is promoted to driver. A standby handed
//! a packet is woken on its channel, and nobody else becomes the standby
//! until it has read its slot: a new one on the same channel could take
//! that wake-up.

use super::*;

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

impl<T: Packet> Inner<T> {
    /// A thread leaves the running count (`blocking()`, or its exit) and
    /// may have left work for the kernel: make sure a turn takes it in —
    /// the driver's, the standby's (woken to drive), or (if `may_turn` and
    /// nobody waits) a turn by the caller, which the caller then makes.
    pub(super) fn hand_over_work(&self, st: &mut State<T>, may_turn: bool) -> bool {
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
            st.driver = Some(DriverRole::new(thread_tag(), false));
            return true;
        }
        false
    }

    /// One turn without waiting by a thread that took the driver role on
    /// the way (`driver.waits == false`), taking no packet.
    pub(super) fn turn_once(&self) {
        let Some(k) = self.kernel.get() else {
            return;
        };
        let tag = thread_tag();
        k.turn(Some(Duration::ZERO), &mut |batch, _| {
            let mut st = lock(&self.state);
            st.packets.append(batch, tag);
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
    pub(super) fn leave_driver(&self, st: &mut State<T>) -> bool {
        st.driver = None;
        self.dispatch(st);
        st.driver.is_none() && st.standby.is_some() && !st.closed
    }
}

/// How a wait on the stack ended.
enum Standby<'a, T> {
    /// Something was put in the thread's slot.
    Given(Given<T>),
    /// The standby takes over the driver role (the lock held, the thread
    /// off the stack).
    TakeOver(MutexGuard<'a, State<T>>),
}

impl<T: Packet> Queue<T> {
    /// Hands this thread's deferred work to the kernel if a driver sleeps
    /// there (what the hand-over completed goes to the queue).
    pub(super) fn submit_deferred(&self, k: &dyn Kernel<T>) {
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
            st.packets.append(batch, tag);
            self.inner.dispatch(&mut st);
        });
    }

    /// Waits on a queue whose waiters drive the kernel: as the driver, the
    /// standby, or a parked thread (see the module docs).
    pub(super) fn wait_driven<'a>(
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
        let slot = MySlot::<T>::new();
        st.waiters.push(slot.parked(tag));
        let given = if st.standby.is_none() && !self.inner.standby_waking.load(Ordering::SeqCst) {
            st.standby = Some(tag);
            let given = self.stand_by(st, k, &slot, tag, deadline)?;
            if matches!(given, Standby::Given(_)) {
                // What was given to the standby came with its wake: the role
                // may go to someone else now.
                self.inner.standby_waking.store(false, Ordering::SeqCst);
            }
            given
        } else {
            // A parked thread never becomes the standby later (a vacant
            // role goes to a promoted driver): it only sleeps.
            drop(st);
            Standby::Given(self.sleep(&slot, tag, || park(deadline))?)
        };
        match given {
            Standby::Given(Given::Packet(p)) => Ok(self.took_given(t, p)),
            Standby::Given(Given::Drive) => self.drive(k, t, deadline),
            Standby::Given(Given::Closed) => Err(Empty::Abandoned),
            Standby::TakeOver(st) => {
                // Nobody drives and the kernel (or a hand-over of work)
                // woke the standby: it takes over.
                self.start_driving(st, k, t, true, deadline)
            }
        }
    }

    /// The standby (on the stack, the lock held) sleeps on the kernel's
    /// channel until its slot is filled or, with nobody driving, the
    /// kernel wakes it to take over.
    fn stand_by<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        k: &dyn Kernel<T>,
        slot: &Slot<T>,
        tag: u64,
        deadline: Option<Instant>,
    ) -> Result<Standby<'a, T>, Empty> {
        loop {
            if let Some(g) = slot.take() {
                return Ok(Standby::Given(g));
            }
            if st.standby == Some(tag) && st.driver.is_none() {
                st.standby = None;
                st.unpark_waiter(tag);
                st.takeovers += 1;
                return Ok(Standby::TakeOver(st));
            }
            drop(st);
            let timed_out = k.standby_wait(deadline);
            if let Some(g) = slot.take() {
                return Ok(Standby::Given(g));
            }
            st = lock(&self.inner.state);
            if timed_out {
                return self.timed_out(&mut st, slot, tag).map(Standby::Given);
            }
        }
    }

    /// This thread becomes the driver and turns the kernel (see
    /// [`Self::drive`]); `waits` is false for a poll.
    pub(super) fn start_driving<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        k: &dyn Kernel<T>,
        t: Taker<'_, T>,
        waits: bool,
        deadline: Option<Instant>,
    ) -> Result<usize, Empty> {
        st.driver = Some(DriverRole::new(t.tag, waits));
        drop(st);
        self.drive(k, t, deadline)
    }

    /// Turns the kernel as the driver until a packet is this thread's, the
    /// deadline passes (`Some(now)`: one turn) or the queue closes.
    pub(super) fn drive(
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
                st.packets.append(batch, tag);
                let waits = st.driver.as_ref().is_some_and(|d| d.waits);
                // `Some(first)`: this thread takes packets, beginning with
                // `first` if one was handed to it, else with the first it
                // may take (taken by `deliver`, with the rest in one move
                // when it can).
                let mut takes = None;
                if let Some(h) = st.take_handed(tag) {
                    takes = Some(Some(h));
                } else if st.running < self.inner.limit && st.next_for(tag).is_some() {
                    st.running += 1;
                    takes = Some(None);
                }
                if let Some(first) = takes {
                    let (n, strands) = t.deliver(&mut st, first);
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
            if let Some((p, from)) = st.take_handed(tag) {
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
        st.driver = Some(DriverRole::new(thread_tag(), false));
        drop(st);
        self.inner.turn_once();
    }
}
