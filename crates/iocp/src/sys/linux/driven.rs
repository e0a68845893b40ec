//! The engine of a port its waiting threads drive ([`Kernel`] for the
//! queue): no engine thread; the thread in the driver role turns the engine
//! — under the engine's lock, except for the wait in the kernel itself, so
//! other threads can hand the engine work meanwhile — and the standby
//! sleeps on a channel the kernel signals while nobody drives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::kit::lock;
use crate::op::Completion;
use crate::queue::{Kernel, WeakQueue};
use crate::running::{defer_work, is_running_on};
use crate::sys::common::{Cmd, EngineShared, Work};
use crate::sys::epoll::EpollWait;
use crate::sys::uring::UringWait;

/// How the engine's kernel is waited on without the engine.
enum Wait {
    Uring(Arc<UringWait>),
    Epoll(EpollWait),
}

/// "No instant" in the nanosecond clocks below.
const NEVER: u64 = u64::MAX;

pub(crate) struct Driven {
    /// `None` once the port closed.
    engine: Mutex<Option<Engine>>,
    shared: Arc<EngineShared>,
    wait: Wait,
    /// The standby channel is armed (changed under the engine's lock).
    armed: AtomicBool,
    /// A running thread applied a command to the engine that no turn has
    /// handed to the kernel yet (see [`Driven::start_now`]; set and
    /// cleared under the engine's lock).
    applied: AtomicBool,
    /// A turn let go of the engine to wait in the kernel (set and cleared
    /// under the engine's lock).
    in_wait: AtomicBool,
    /// The port's queue's owner id (see [`is_running_on`]).
    queue_id: u64,
    /// The earliest timer, in nanoseconds since `base` (`NEVER`: none), as
    /// of the last time a thread held the engine.
    next_timer: AtomicU64,
    /// When the driver asleep in the kernel wakes by itself (`NEVER`: no
    /// limit, or nobody sleeps there).
    driver_until: AtomicU64,
    /// When the standby wakes by itself.
    standby_until: AtomicU64,
    base: Instant,
}

impl Driven {
    /// Makes `engine` one its port's waiting threads drive. `queue` is the
    /// port's (work queued by a thread that runs on it waits for its next
    /// `get`; anyone else's is taken in at once).
    pub(crate) fn new(
        mut engine: Engine,
        shared: Arc<EngineShared>,
        queue: WeakQueue<Completion>,
        queue_id: u64,
    ) -> std::io::Result<Arc<Driven>> {
        let wait = match &mut engine {
            Engine::Uring(e) => Wait::Uring(Arc::new(UringWait::new(e)?)),
            Engine::Epoll(e) => Wait::Epoll(EpollWait::new(e)?),
        };
        let signal: Option<Box<dyn Fn(()) + Send + Sync>> = match &wait {
            Wait::Uring(w) => {
                let (w, s) = (w.clone(), Arc::downgrade(&shared));
                Some(Box::new(move |()| {
                    if let Some(s) = Weak::upgrade(&s) {
                        w.wake_driver(&s.counters);
                    }
                }))
            }
            // The engine's own eventfd, which its set watches.
            Wait::Epoll(_) => None,
        };
        let on_work = Box::new(move |work: Work| {
            if work != Work::Close && is_running_on(queue_id) {
                // A handler's work goes in at its thread's next `get` (or
                // when it steps out with `blocking()`, or exits).
                defer_work(queue_id);
            } else if let Some(q) = queue.upgrade() {
                // A command may start a turn of the caller's own if nobody
                // waits (a close always may: the peer must see it now, not
                // at the handler's next `get`); a buffer given back (from a
                // `Drop`) never does.
                q.nudge(work != Work::Buffers);
            }
        });
        shared.drive_with(signal, on_work);
        Ok(Arc::new(Driven {
            engine: Mutex::new(Some(engine)),
            shared,
            wait,
            armed: AtomicBool::new(false),
            applied: AtomicBool::new(false),
            in_wait: AtomicBool::new(false),
            queue_id,
            next_timer: AtomicU64::new(NEVER),
            driver_until: AtomicU64::new(NEVER),
            standby_until: AtomicU64::new(NEVER),
            base: Instant::now(),
        }))
    }

    fn nanos(&self, t: Option<Instant>) -> u64 {
        t.map_or(NEVER, |t| {
            t.saturating_duration_since(self.base)
                .as_nanos()
                .min(u128::from(NEVER - 1)) as u64
        })
    }

    fn instant(&self, n: u64) -> Option<Instant> {
        (n != NEVER).then(|| self.base + Duration::from_nanos(n))
    }

    /// Publishes the engine's earliest timer; returns it.
    fn publish_timer(&self, e: &mut Engine) -> u64 {
        let n = self.nanos(e.next_timer());
        self.next_timer.store(n, Ordering::SeqCst);
        n
    }

    fn set_standby(&self, e: &mut Engine, on: bool) -> bool {
        match (&self.wait, e) {
            (Wait::Uring(_), Engine::Uring(u)) => u.set_standby(on),
            (Wait::Epoll(w), _) => {
                w.set_standby(on);
                false
            }
            _ => false,
        }
    }

    /// A start by a thread that runs on the port's queue (a handler):
    /// carried out on the engine now, as a turn's take-in would, if no
    /// thread is in a turn (none holds the engine or sleeps in the kernel)
    /// and no command waits before it — instead of a trip through the
    /// command queue. Like a queued command of a handler it reaches the
    /// kernel at the thread's next `get`, `blocking()` or exit (until then
    /// [`Kernel::pending`] says so). Gives the command back otherwise (for
    /// the queue).
    pub(crate) fn start_now(&self, cmd: Cmd) -> Option<Cmd> {
        if !is_running_on(self.queue_id) || self.shared.has_cmds() || self.shared.is_shutdown() {
            return Some(cmd);
        }
        // Held: a turn is under way (it takes the queued command in).
        let Ok(mut g) = self.engine.try_lock() else {
            return Some(cmd);
        };
        // A driver in the kernel (its turn let go of the engine for the
        // wait): its turn counts what the engine made since it began, so
        // the command waits in the queue for it.
        if self.in_wait.load(Ordering::SeqCst) {
            return Some(cmd);
        }
        let Some(e) = g.as_mut() else {
            return Some(cmd);
        };
        e.command(cmd);
        self.applied.store(true, Ordering::SeqCst);
        drop(g);
        defer_work(self.queue_id);
        None
    }

    /// Stops the engine (the port closed): aborts everything and waits for
    /// the kernel to let go, on the calling thread (any thread may enter a
    /// shared ring). Drivers that come back find no engine.
    pub(crate) fn shutdown(&self) {
        let engine = lock(&self.engine).take();
        if let Some(mut e) = engine {
            e.shutdown();
        }
    }
}

impl Kernel<Completion> for Driven {
    fn turn(
        &self,
        timeout: Option<Duration>,
        done: &mut dyn FnMut(&mut Vec<Completion>, bool) -> bool,
    ) {
        let started = Instant::now();
        let mut g = lock(&self.engine);
        let Some(e) = g.as_mut() else {
            return;
        };
        if self.armed.swap(false, Ordering::SeqCst) {
            self.set_standby(e, false);
        }
        // The turn hands what was applied to the kernel.
        self.applied.store(false, Ordering::SeqCst);
        let before = e.made();
        let waited = match e.turn_begin(timeout) {
            None => false,
            Some(wait) => {
                let until = wait.and_then(|w| started.checked_add(w));
                self.driver_until.store(self.nanos(until), Ordering::SeqCst);
                self.in_wait.store(true, Ordering::SeqCst);
                g = match &self.wait {
                    Wait::Uring(w) => {
                        let n = match g.as_mut() {
                            Some(Engine::Uring(u)) => u.sq_pending(),
                            _ => 0,
                        };
                        drop(g);
                        w.wait(n, wait, &self.shared.counters);
                        lock(&self.engine)
                    }
                    Wait::Epoll(w) => {
                        drop(g);
                        let events = w.wait(wait, &self.shared.counters);
                        let mut g = lock(&self.engine);
                        if let Some(Engine::Epoll(e)) = g.as_mut() {
                            events.give(e);
                        }
                        g
                    }
                };
                self.driver_until.store(NEVER, Ordering::SeqCst);
                self.in_wait.store(false, Ordering::SeqCst);
                true
            }
        };
        let Some(e) = g.as_mut() else {
            // The port closed while the driver waited.
            return;
        };
        e.turn_end(waited, before);
        e.flush_sq();
        let ran_out = timeout.is_some_and(|t| started.elapsed() >= t);
        let arm = done(e.out(), ran_out);
        let next = self.publish_timer(e);
        if arm {
            self.armed.store(true, Ordering::SeqCst);
            let pending = self.set_standby(e, true);
            // The standby also wakes for the engine's timers: one due before
            // it meant to wake must wake it now.
            if pending || next < self.standby_until.load(Ordering::SeqCst) {
                self.wake_standby();
            }
        }
    }

    fn submit(&self, done: &mut dyn FnMut(&mut Vec<Completion>)) {
        if !self.shared.is_sleeping() {
            // Nobody sleeps in the kernel: a driver takes the work in
            // before it sleeps.
            return;
        }
        let mut g: MutexGuard<'_, Option<Engine>> = match self.engine.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // A turn (or another hand-over) is under way: it takes the work
            // in.
            Err(TryLockError::WouldBlock) => return,
        };
        let Some(e) = g.as_mut() else {
            return;
        };
        e.submit_only();
        self.applied.store(false, Ordering::SeqCst);
        if !e.out().is_empty() {
            done(e.out());
        }
        let next = self.publish_timer(e);
        drop(g);
        // A timer sooner than the sleeping driver's wake-up: it must wake.
        if next < self.driver_until.load(Ordering::SeqCst) {
            self.shared.signal_now();
        }
    }

    fn pending(&self) -> bool {
        self.shared.has_work() || self.applied.load(Ordering::SeqCst)
    }

    fn wake_driver(&self) {
        self.shared.signal_now();
    }

    fn kick(&self) {
        self.shared.wake();
    }

    fn standby_wait(&self, deadline: Option<Instant>) -> bool {
        let d = self.nanos(deadline);
        self.standby_until.store(d, Ordering::SeqCst);
        let t = self.next_timer.load(Ordering::SeqCst);
        let until = self.instant(d.min(t));
        match &self.wait {
            Wait::Uring(w) => {
                w.standby_wait(until);
            }
            Wait::Epoll(w) => {
                w.standby_wait(until);
            }
        }
        self.standby_until.store(NEVER, Ordering::SeqCst);
        deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn wake_standby(&self) {
        match &self.wait {
            Wait::Uring(w) => w.wake_standby(),
            Wait::Epoll(w) => w.wake_standby(),
        }
    }
}
