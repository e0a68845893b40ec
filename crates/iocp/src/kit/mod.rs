//! The engine kit: the parts every engine is built from, whatever the
//! platform, so that each rule exists once.
//!
//! * [`lanes`]: per-handle ordering — one operation in flight per direction,
//!   the rest waiting in issue order, and a write side that refuses
//!   everything after a send was cut part-way on a stream;
//! * [`accept`]: the one policy for errors a standing accept meets (keep
//!   going, pause, or end) and its back-off;
//! * [`phase`]: the lifecycle of an operation in flight, the one mapping
//!   from a phase to the error a stopped operation completes with, and the
//!   outcome of one attempt ([`phase::Step`]);
//! * [`run`]: one turn of an engine and the loop of a dedicated engine
//!   thread, plus the timer items an engine schedules (the timer set itself
//!   is [`crate::timers`]);
//! * [`starved`]: the pooled receives waiting for a buffer, resumed oldest
//!   first and no more than there are buffers;
//! * [`lock`]: a mutex lock that survives poisoning.
//!
//! Nothing here touches the kernel: the kit holds no `unsafe` and builds on
//! every platform.

pub(crate) mod accept;
// The Windows engine uses the read and write lanes only: the accept and
// connect lanes and the walks over every lane are a readiness engine's.
#[cfg_attr(windows, allow(dead_code))]
pub(crate) mod lanes;
pub(crate) mod phase;
// On Windows the kernel runs the operations: there is no engine to turn.
#[cfg_attr(windows, allow(dead_code))]
pub(crate) mod run;
pub(crate) mod starved;

/// A mutex whose guard can be taken whether or not a thread panicked while
/// holding it.
pub(crate) trait Lock {
    /// The guard type.
    type Guard<'a>
    where
        Self: 'a;
    /// Locks, ignoring poisoning.
    fn lock_any(&self) -> Self::Guard<'_>;
}

/// Implements [`Lock`] for the `Mutex` of a module (std's, or loom's).
macro_rules! tolerant {
    ($($module:ident)::+) => {
        impl<T> Lock for $($module)::+::Mutex<T> {
            type Guard<'a>
                = $($module)::+::MutexGuard<'a, T>
            where
                Self: 'a;
            fn lock_any(&self) -> Self::Guard<'_> {
                self.lock().unwrap_or_else(|p| p.into_inner())
            }
        }
    };
}

tolerant!(std::sync);
#[cfg(loom)]
tolerant!(loom::sync);

/// Locks `m`, ignoring poisoning. The library changes the state under each
/// of its mutexes so that it is whole again at every unlock; a panic on one
/// thread (an application callback, a failed assertion) must not turn every
/// later call on the port into a panic too.
pub(crate) fn lock<M: Lock + ?Sized>(m: &M) -> M::Guard<'_> {
    m.lock_any()
}
