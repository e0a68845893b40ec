//! One turn of an engine, the loop of a dedicated engine thread, and the
//! timers an engine schedules.
//!
//! Every engine turns the same way: take in what arrived (commands, pool
//! buffers given back, due timers), hand what was started to the kernel —
//! waiting, if nothing is ready, until the kernel has news, a timer is due
//! or another thread wakes it — then handle what the kernel reported. Who
//! drives the turns is separate ([`Drive`]): a thread of the engine's own,
//! or the owner thread of an inline port from inside `get`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::op::Completion;
use crate::timers::{OpTimer, Role, TimerSet};

/// What an engine did, for tests and operators: written by the thread that
/// turns the engine, read by anyone.
#[derive(Default)]
pub(crate) struct EngineCounters {
    /// Completions produced.
    pub completions: AtomicU64,
    /// Kernel entries (`io_uring_enter`, `epoll_wait`).
    pub enters: AtomicU64,
    /// Pooled receives that ran out of buffers and waited for some.
    pub starved: AtomicU64,
    /// Times the kernel reported completions held back by a full CQ.
    pub cq_overflows: AtomicU64,
    /// Sends and receives the kernel ended with EAGAIN, re-issued.
    pub eagain_retries: AtomicU64,
    /// Timers pending, as of the engine's last turn (a gauge).
    pub timers: AtomicU64,
    /// File operations waiting for a pool thread (a gauge).
    pub file_queue: AtomicU64,
    /// File pool threads running (a gauge).
    pub file_threads: AtomicU64,
}

impl EngineCounters {
    /// Adds `n` to counter `c`.
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        // Several threads may turn an engine (one at a time) and wake it.
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge (such as `timers`).
    pub(crate) fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }
}

/// An engine, as the kit turns it.
pub(crate) trait Engine: TimerTarget {
    /// Takes in what arrived since the last turn — commands, pool buffers
    /// given back, due timers — and does whatever needs no waiting.
    fn intake(&mut self);
    /// Whether work is ready that must not wait for the kernel
    /// (completions made but not handed over, operations left for the next
    /// turn).
    fn busy(&self) -> bool;
    /// Announces that the engine may block; `false` if work arrived in the
    /// meantime, in which case it must not.
    fn prepare_sleep(&mut self) -> bool;
    /// Says the engine is awake again (after [`Engine::prepare_sleep`]).
    fn woke(&mut self);
    /// Hands what was started to the kernel; blocks up to `wait` (`None`:
    /// until something happens) if `block`, otherwise only polls. Returns
    /// whether it entered the kernel (a poll with nothing to hand over and
    /// nothing pending may skip the call).
    fn enter(&mut self, block: bool, wait: Option<Duration>) -> bool;
    /// Handles what the kernel reported, then what that made possible.
    fn reap(&mut self);
    /// Completions made and not yet handed to the port.
    fn made(&self) -> usize;
    /// The engine's counters.
    fn counters(&self) -> &EngineCounters;
    /// Hands the completions made so far to the port's queue.
    fn flush_to_queue(&mut self);
    /// Whether the port asked the engine to stop.
    fn stop_requested(&self) -> bool;
    /// Stops on the engine's own thread: ends every operation and lets go of
    /// everything the kernel held.
    fn shutdown(&mut self);
}

/// How an engine is driven: turn by turn by whoever drives it (an inline
/// port's owner, from inside `get`), or by a thread of its own.
pub(crate) trait Drive: Engine + Sized {
    /// One turn: take in, hand to the kernel — waiting only if `block`,
    /// nothing is ready, and no one woke the engine meanwhile: at most
    /// `timeout`, and never past the next timer — and handle what came
    /// back.
    fn turn(&mut self, timeout: Option<Duration>, block: bool) {
        self.turn_at(None, timeout, block);
    }

    /// [`Drive::turn`], with the clock read just before by the caller
    /// (`None`: the turn reads it if a timer is pending). The turn's
    /// timers and its wait go by that reading.
    fn turn_at(&mut self, now: Option<Instant>, timeout: Option<Duration>, block: bool) {
        let before = self.made();
        take_in_at(self, now);
        let sleep = block && !self.busy() && self.prepare_sleep();
        let entered = if sleep {
            let wait = self.timers().bound(timeout);
            let entered = self.enter(true, wait);
            self.woke();
            entered
        } else {
            self.enter(false, Some(Duration::ZERO))
        };
        if entered {
            EngineCounters::bump(&self.counters().enters, 1);
        }
        self.reap();
        after_reap(self, sleep, before);
    }

    /// The first half of a turn whose wait happens without the engine (a
    /// driver waits in the kernel while other threads may hand the engine
    /// work): takes in and hands over what is ready, and says how long the
    /// wait may last — `None` if it must not wait (work is ready, a timer
    /// is due, someone woke the engine, or `timeout` is zero), in which case
    /// the engine has already handed its work to the kernel. After the wait
    /// (or none), [`Drive::turn_end`] takes what came back.
    fn turn_begin(&mut self, timeout: Option<Duration>) -> Option<Option<Duration>> {
        take_in(self);
        let wait = timeout != Some(Duration::ZERO) && !self.busy() && self.prepare_sleep();
        if !wait {
            if self.enter(false, Some(Duration::ZERO)) {
                EngineCounters::bump(&self.counters().enters, 1);
            }
            return None;
        }
        Some(self.timers().bound(timeout))
    }

    /// The second half of a turn begun with [`Drive::turn_begin`]: `waited`
    /// says whether it announced a sleep (the waiter counts its own kernel
    /// entry). Handles what the kernel reported; `before` is what
    /// [`Engine::made`] said before the turn.
    fn turn_end(&mut self, waited: bool, before: usize) {
        if waited {
            self.woke();
        }
        self.reap();
        after_reap(self, waited, before);
    }

    /// The loop of an engine thread: turns (blocking) and hands over what
    /// each turn made, until the port asks the engine to stop; then shuts
    /// it down.
    fn run(mut self) {
        loop {
            self.turn(None, true);
            self.flush_to_queue();
            if self.stop_requested() {
                break;
            }
        }
        self.shutdown();
    }
}

impl<E: Engine> Drive for E {}

/// How every turn begins (and [`Engine::intake`] outside a turn): the
/// clock reading a last turn left is stale, then the engine takes in what
/// arrived ([`Engine::intake`], which fires the due timers) and says how
/// many timers are left.
pub(crate) fn take_in<E: Engine>(e: &mut E) {
    take_in_at(e, None);
}

/// [`take_in`], with `now` (if any) as the turn's clock reading.
fn take_in_at<E: Engine>(e: &mut E, now: Option<Instant>) {
    e.timers().checked = now;
    e.intake();
    publish_timers(e);
}

/// How every turn ends, after [`Engine::reap`] (which fired the timers due
/// by the turn's one clock reading, taken before the wait): counts what
/// the turn made, and — only if it `slept` and made nothing, so the wait
/// may have ended because a timer fell due — reads the clock again and
/// fires what is due. A turn that slept and made completions leaves the
/// timers that fell due during its wait to the next turn's intake, which
/// follows once those completions are handled: they fire a little later,
/// never early, and a turn of a busy engine reads the clock once.
///
/// An engine whose kernel keeps its earliest timer ([`Timers::in_kernel`])
/// reads the clock after reaping only when the kernel said that timer is
/// due (then it fires what is due in the same turn, busy or not), never
/// for a wait that made nothing: a wait the timer ended would have said so.
#[inline]
fn after_reap<E: Engine>(e: &mut E, slept: bool, before: usize) {
    let made = e.made().saturating_sub(before);
    let t = e.timers();
    if (t.kernel.fired || slept && made == 0) && t.next().is_some() && !t.covered() {
        e.timers().checked = None;
        fire_timers(e);
    }
    let made = e.made().saturating_sub(before) as u64;
    EngineCounters::bump(&e.counters().completions, made);
    publish_timers(e);
}

/// Publishes how many timers are pending (`EngineStats::timers`).
fn publish_timers<E: Engine>(e: &mut E) {
    let n = e.timers().len() as u64;
    EngineCounters::set(&e.counters().timers, n);
}

/// What a timer does when it fires.
pub(crate) enum TimerItem {
    /// Queue this packet (`post_after`).
    Post(Completion),
    /// The deadline of operation `op` in slot `slot` passed.
    Deadline { slot: usize, op: u64 },
    /// Re-arm standing operation `op` in slot `slot` after its back-off.
    Rearm { slot: usize, op: u64 },
}

impl OpTimer for TimerItem {
    fn owner(&self) -> Option<(u64, Role)> {
        match *self {
            TimerItem::Post(_) => None,
            TimerItem::Deadline { op, .. } => Some((op, Role::Deadline)),
            TimerItem::Rearm { op, .. } => Some((op, Role::Retry)),
        }
    }
}

/// An engine's timers: the set (a deadline or re-arm leaves with its
/// operation) and room for the ones that fire.
pub(crate) struct Timers {
    set: TimerSet<TimerItem>,
    due: Vec<TimerItem>,
    /// The current turn's clock reading (set as a turn begins, to the
    /// driver's reading or `None`; [`fire_timers`] reads the clock if it is
    /// `None` and a timer is pending): the turn fires its timers and bounds
    /// its wait by that one reading.
    checked: Option<Instant>,
    kernel: KernelTimer,
}

/// The earliest timer, as the kernel keeps it for an engine that asked
/// ([`Timers::in_kernel`]): while the kernel is armed for an instant no
/// later than every pending timer, no timer can be due before the kernel
/// reports, so a turn needs no clock reading and its wait no bound.
#[derive(Default)]
struct KernelTimer {
    /// The engine arms the kernel's timer.
    on: bool,
    /// When the kernel timer armed last is due (`None`: none is, or it
    /// reported).
    armed: Option<Instant>,
    /// A kernel timer reported since the clock was last read for timers.
    fired: bool,
    /// Kernel timers armed and not yet reported (an earlier timer arms a
    /// new one and leaves the later one to report for nothing).
    in_flight: u32,
}

/// Kernel timers an engine may have armed at once; past that it reads
/// the clock each turn instead, as without them.
const MAX_KERNEL_TIMERS: u32 = 4;

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            set: TimerSet::new(),
            due: Vec::new(),
            checked: None,
            kernel: KernelTimer::default(),
        }
    }

    /// The engine arms its earliest timer in the kernel
    /// ([`Timers::arm_next`]) and says when one reports
    /// ([`Timers::kernel_fired`]).
    pub(crate) fn in_kernel(&mut self) {
        self.kernel.on = true;
    }

    /// Whether no timer can be due before the kernel reports one: the
    /// kernel is armed for an instant no later than the earliest timer (or
    /// none is pending).
    #[inline]
    fn covered(&self) -> bool {
        let k = &self.kernel;
        k.on && !k.fired
            && self
                .set
                .next()
                .is_none_or(|n| k.armed.is_some_and(|a| a <= n))
    }

    /// When the kernel's timer should be armed for, if it needs arming:
    /// the earliest timer, if it is earlier than the one armed (or none
    /// is). The caller arms it (measured from a clock reading made after
    /// this call, so it never reports early).
    #[inline]
    pub(crate) fn arm_next(&mut self) -> Option<Instant> {
        let k = &mut self.kernel;
        if !k.on || k.in_flight >= MAX_KERNEL_TIMERS {
            return None;
        }
        let n = self.set.next()?;
        if k.armed.is_some_and(|a| a <= n) {
            return None;
        }
        k.armed = Some(n);
        k.in_flight += 1;
        Some(n)
    }

    /// A kernel timer reported: the turn reads the clock and fires what is
    /// due. (It cannot tell which one reported: any report makes the turn
    /// look, and the next intake arms the earliest timer again.)
    pub(crate) fn kernel_fired(&mut self) {
        // A reading made before the report is too old to fire by.
        self.checked = None;
        let k = &mut self.kernel;
        k.in_flight = k.in_flight.saturating_sub(1);
        k.armed = None;
        k.fired = true;
    }

    /// Schedules `item` at `at`.
    pub(crate) fn add(&mut self, at: Instant, item: TimerItem) {
        self.set.add(at, item);
    }

    /// Operation `op` is over: its timers go with it.
    pub(crate) fn op_done(&mut self, op: u64) {
        self.set.op_done(op);
    }

    /// When the earliest timer is due.
    #[inline]
    pub(crate) fn next(&self) -> Option<Instant> {
        self.set.next()
    }

    /// `timeout`, shortened to end when the earliest timer is due (measured
    /// from the clock reading this turn's [`fire_timers`] made, if any: the
    /// instants between that reading and the wait only make the timer
    /// fire that much later).
    /// A kernel that keeps the earliest timer ends the wait itself.
    #[inline]
    pub(crate) fn bound(&self, timeout: Option<Duration>) -> Option<Duration> {
        let Some(t) = self.set.next() else {
            return timeout;
        };
        if self.covered() {
            return timeout;
        }
        let now = self.checked.unwrap_or_else(Instant::now);
        let d = t.saturating_duration_since(now);
        Some(timeout.map_or(d, |w| w.min(d)))
    }

    /// Timers pending.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// Drops every timer (on shutdown).
    pub(crate) fn clear(&mut self) {
        self.set.clear();
    }
}

/// What an engine does when its timers fire.
pub(crate) trait TimerTarget {
    /// The engine's timers.
    fn timers(&mut self) -> &mut Timers;
    /// A `post_after` packet is due.
    fn post(&mut self, c: Completion);
    /// The deadline of operation `op` in `slot` passed (it may be gone).
    fn deadline(&mut self, slot: usize, op: u64);
    /// The back-off of standing operation `op` in `slot` is over (it may be
    /// gone).
    fn rearm(&mut self, slot: usize, op: u64);
}

/// Fires every timer that is due, earliest first, by the turn's clock
/// reading: the one made earlier in the turn (or given to it), else a
/// fresh one, kept for the rest of the turn. A reading older than the
/// present only makes a timer fire later, never early. Reads nothing while
/// the kernel keeps the earliest timer and has not reported it.
#[inline]
pub(crate) fn fire_timers<T: TimerTarget>(t: &mut T) {
    let Some(at) = t.timers().next() else {
        return;
    };
    if t.timers().covered() {
        return;
    }
    t.timers().kernel.fired = false;
    let now = match t.timers().checked {
        Some(now) => now,
        None => {
            let now = Instant::now();
            t.timers().checked = Some(now);
            now
        }
    };
    if at <= now {
        fire_due(t, now);
    }
}

/// Fires the timers due at `now` (out of line: most turns fire none).
#[inline(never)]
fn fire_due<T: TimerTarget>(t: &mut T, now: Instant) {
    let mut due = std::mem::take(&mut t.timers().due);
    t.timers().set.expired(now, &mut due);
    for item in due.drain(..) {
        match item {
            TimerItem::Post(c) => t.post(c),
            TimerItem::Deadline { slot, op } => t.deadline(slot, op),
            TimerItem::Rearm { slot, op } => t.rearm(slot, op),
        }
    }
    t.timers().due = due;
}
