//! How a waiting thread sleeps: parked with the queue's lock let go, until
//! a packet is handed to it through its own slot, it is promoted to driver,
//! the queue closes or its deadline passes (the parked waiters and the
//! driver's standby alike).

use super::*;

impl<T: Packet> Queue<T> {
    /// A parked thread (not the standby) sleeps with the lock let go until
    /// its slot is filled, or `park` (which returns whether its deadline
    /// passed) times out. A wake reads the slot without the queue's lock; a
    /// timeout takes the lock, and either finds the slot filled at the last
    /// moment (the thread was off the stack by then) or leaves the stack,
    /// so a packet is never handed to a thread that has gone.
    pub(super) fn sleep(
        &self,
        slot: &Slot<T>,
        tag: u64,
        mut park: impl FnMut() -> bool,
    ) -> Result<Given<T>, Empty> {
        loop {
            if let Some(g) = slot.take() {
                return Ok(g);
            }
            if park() {
                let mut st = lock(&self.inner.state);
                return self.timed_out(&mut st, slot, tag);
            }
        }
    }

    /// A waiter's deadline passed (the lock is held): what its slot holds,
    /// else it leaves the stack and its `get` returns the error.
    pub(super) fn timed_out(
        &self,
        st: &mut State<T>,
        slot: &Slot<T>,
        tag: u64,
    ) -> Result<Given<T>, Empty> {
        if let Some(g) = slot.take() {
            return Ok(g);
        }
        self.leave_stack(st, tag);
        // A close fills every parked thread's slot; this is for safety.
        Err(if st.closed {
            Empty::Abandoned
        } else {
            Empty::TimedOut
        })
    }

    /// A parked thread leaves the stack without a packet (timed out, or the
    /// queue closed): if it was the standby, someone else must watch.
    pub(super) fn leave_stack(&self, st: &mut State<T>, tag: u64) {
        st.unpark_waiter(tag);
        if st.standby == Some(tag) {
            st.standby = None;
            self.inner.cover(st);
        }
    }
}

/// The calling thread's [`Slot`], taken from the thread's keeping for one
/// `get` and given back when this drops: a thread allocates a slot once,
/// not per `get`, while it waits on queues of one packet type (the thread
/// keeps one slot of any type; a `get` on a queue of another type drops it
/// and allocates its own — the crate has one packet type per build). A
/// slot is empty whenever it is given back: a `get` returns only once its
/// slot was read, or once it left the stack with nothing in it.
pub(super) struct MySlot<T: Packet>(Option<std::sync::Arc<Slot<T>>>);

type AnySlot = std::sync::Arc<dyn std::any::Any + Send + Sync>;

#[cfg(not(loom))]
std::thread_local! {
    static SLOT: std::cell::Cell<Option<AnySlot>> = const { std::cell::Cell::new(None) };
}
// Under loom every model thread runs on one OS thread.
#[cfg(loom)]
loom::thread_local! {
    static SLOT: std::cell::Cell<Option<AnySlot>> = std::cell::Cell::new(None);
}

impl<T: Packet> MySlot<T> {
    /// The thread's kept slot if it is of this packet type, else a new one.
    pub(super) fn new() -> Self {
        let kept = SLOT.try_with(|s| s.take()).ok().flatten();
        let slot = kept
            .and_then(|s| s.downcast::<Slot<T>>().ok())
            .unwrap_or_else(|| {
                std::sync::Arc::new(Slot {
                    thread: thread::current(),
                    given: Mutex::new(None),
                })
            });
        MySlot(Some(slot))
    }

    /// The thread's entry on the waiters' stack.
    pub(super) fn parked(&self, tag: u64) -> Parked<T> {
        Parked {
            tag,
            slot: self.0.clone().expect("held until drop"),
        }
    }
}

impl<T: Packet> std::ops::Deref for MySlot<T> {
    type Target = Slot<T>;
    fn deref(&self) -> &Slot<T> {
        self.0.as_ref().expect("held until drop")
    }
}

impl<T: Packet> Drop for MySlot<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let s: AnySlot = s;
            // Gone at thread exit: the slot is then simply dropped.
            let _ = SLOT.try_with(|k| k.set(Some(s)));
        }
    }
}

/// Parks the calling thread until it is unparked or `deadline` passes;
/// returns whether the deadline passed. May return early (a stray unpark):
/// callers look at their state again.
#[cfg(not(loom))]
pub(super) fn park(deadline: Option<Instant>) -> bool {
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
pub(super) fn park(deadline: Option<Instant>) -> bool {
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
