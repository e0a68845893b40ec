//! How a waiting thread sleeps: parked with the queue's lock let go, until
//! a packet is handed to it, the queue closes or its deadline passes (the
//! parked waiters and the driver's standby alike).

use super::*;

impl<T: Packet> Queue<T> {
    /// A parked thread waits with the lock let go (`park` returns whether
    /// its deadline passed). If it timed out and nothing was handed to it
    /// meanwhile, it leaves the stack and its `get` returns the error;
    /// else it looks again, under the lock.
    pub(super) fn wait<'a>(
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
    pub(super) fn leave_stack(&self, st: &mut State<T>, tag: u64) {
        st.unpark_waiter(tag);
        if st.standby == Some(tag) {
            st.standby = None;
            self.inner.cover(st);
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
