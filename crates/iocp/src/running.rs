//! The per-thread running record: which port a thread runs on, and its
//! [`BlockingGuard`](crate::BlockingGuard) step-outs. Shared by every
//! backend, so `get`, `blocking()` and thread exit count the same way
//! everywhere: the user-space queue keeps its concurrency count with it, and
//! the Windows port keeps its `running` statistic with it next to the
//! kernel's own count.
//!
//! Which port a thread runs on is a property of the thread, so it lives in a
//! thread-local record: `get` ends the running period (the caller takes the
//! thread off its count), a packet starts one, `blocking()` steps out of it
//! and the last of its guards steps back in.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Weak,
};

/// Something a thread can be "running on" (a queue, or a Windows port): lets
/// a thread-local record give its slot back without knowing the packet type.
pub(crate) trait SlotOwner: Send + Sync {
    /// Takes one thread off the running count (and lets a waiter run).
    fn release(&self);
    /// Puts one thread back on the running count (a blocking guard's last
    /// drop; the count may exceed the limit for a while, as on Windows).
    fn reacquire(&self);
    /// Thread `tag` is gone from this owner (it exited, or moved to another
    /// one): its slot is released if it was `running`, and so is whatever
    /// else it held there (the strands it took packets of, see [`run_on`]).
    fn thread_gone(&self, tag: u64, running: bool) {
        let _ = tag;
        if running {
            self.release();
        }
    }
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

struct Running {
    owner_id: u64,
    owner: Option<OwnerRef>,
    /// Whether the thread currently holds a running slot. A record stays in
    /// place between `get`s with `armed` toggled, so the hot path touches no
    /// reference count (shared counters bounce between cores).
    armed: bool,
    /// The thread holds more than its slot on the owner until its next `get`
    /// (the strands of the pooled receives it took packets of).
    strands: bool,
    /// The thread's tag (read once: the tag's own thread-local may be gone
    /// when the record drops at thread exit).
    tag: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.armed && !self.strands {
            return;
        }
        // Thread exit, or the thread moved to another queue: the slot and
        // the strands are freed.
        if let Some(owner) = self.owner.take().as_ref().and_then(upgrade) {
            owner.thread_gone(self.tag, self.armed);
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
    /// The owner this thread left work for (operations it started while
    /// running there, handed to the kernel at its next `get`); 0: none.
    /// (Linux only: on Windows the kernel takes work at once.)
    #[cfg_attr(not(any(loom, target_os = "linux")), allow(dead_code))]
    deferred: u64,
    /// The thread's tag, copied here on first use so a `get` reads it with
    /// the rest of the record (0: not yet).
    tag: u64,
}

#[cfg(loom)]
loom::thread_local! {
    // loom's macro takes a plain expression (no `const { }` block).
    static THREAD: std::cell::RefCell<ThreadRec> = std::cell::RefCell::new(ThreadRec {
        running: None,
        stepped_out: None,
        steps: 0,
        deferred: 0,
        tag: 0,
    });
}
#[cfg(not(loom))]
std::thread_local! {
    static THREAD: std::cell::RefCell<ThreadRec> = const {
        std::cell::RefCell::new(ThreadRec {
            running: None,
            stepped_out: None,
            steps: 0,
            deferred: 0,
            tag: 0,
        })
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

/// What a `get` on a user-space queue learns from the calling thread's
/// record, in one look (the `get` path's only thread-local access before it
/// takes a packet).
#[cfg_attr(not(any(loom, target_os = "linux")), allow(dead_code))]
pub(crate) struct GetStart {
    /// The thread's tag ([`thread_tag`]).
    pub(crate) tag: u64,
    /// The thread was counted running on the owner: the caller takes it off
    /// its count.
    pub(crate) was_running: bool,
    /// The thread left work for the owner's kernel (see [`defer_work`])
    /// since it last asked.
    pub(crate) deferred: bool,
}

/// The start of a `get` on `owner_id`: the thread's running period ends (a
/// record of another owner is dropped, which releases that slot: a thread is
/// associated with one port at a time, as on Windows; a step-out ends too:
/// what its guards would have restored is over), the work it left for the
/// owner's kernel is claimed (and forgotten), and its tag is read, all in
/// one look at the record.
pub(crate) fn begin_get(owner_id: u64) -> GetStart {
    let r = THREAD.try_with(|t| {
        let mut t = t.borrow_mut();
        let t = &mut *t;
        if t.tag == 0 {
            t.tag = thread_tag();
        }
        let deferred = t.deferred == owner_id;
        if deferred {
            t.deferred = 0;
        }
        t.stepped_out = None;
        let (was_running, old) = match t.running.as_mut() {
            Some(rec) if rec.owner_id == owner_id => {
                let was = std::mem::replace(&mut rec.armed, false);
                // The caller lets go of the thread's strands too.
                rec.strands = false;
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
        };
        let start = GetStart {
            tag: t.tag,
            was_running,
            deferred,
        };
        (start, old)
    });
    match r {
        Ok((start, old)) => {
            // Outside the borrow: dropping an armed record of another owner
            // releases that owner's slot.
            drop(old);
            start
        }
        Err(_) => GetStart {
            tag: thread_tag(),
            was_running: false,
            deferred: false,
        },
    }
}

/// The calling thread calls `get` on `owner_id` (see [`begin_get`]). Returns
/// whether it was counted there, so the caller takes it off its count.
#[cfg_attr(any(loom, target_os = "linux"), allow(dead_code))]
pub(crate) fn leave_running(owner_id: u64) -> bool {
    begin_get(owner_id).was_running
}

/// The calling thread now runs on `owner_id` (the caller has counted it).
/// Returns `false` if the thread-local record is gone (the thread is
/// exiting): the caller then takes the thread off its count again.
pub(crate) fn enter_running(owner_id: u64, owner: impl FnOnce() -> OwnerRef) -> bool {
    run_on(owner_id, false, owner)
}

/// [`enter_running`]; with `strands` the thread also holds the strands of
/// the packets it took until its next `get` or its exit. One look at the
/// record when the thread ran on `owner_id` before (the usual case).
pub(crate) fn run_on(owner_id: u64, strands: bool, owner: impl FnOnce() -> OwnerRef) -> bool {
    let rearmed = THREAD.try_with(|t| match t.borrow_mut().running.as_mut() {
        Some(rec) if rec.owner_id == owner_id => {
            rec.armed = true;
            rec.strands |= strands;
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
    let tag = thread_tag();
    let old = THREAD.try_with(|t| {
        t.borrow_mut().running.replace(Running {
            owner_id,
            owner: Some(owner()),
            armed: true,
            strands,
            tag,
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

/// The calling thread left work for `owner_id`'s kernel (an operation
/// started while it runs there): it goes in at the thread's next `get`.
#[cfg_attr(not(any(loom, target_os = "linux")), allow(dead_code))]
pub(crate) fn defer_work(owner_id: u64) {
    let _ = THREAD.try_with(|t| t.borrow_mut().deferred = owner_id);
}

/// Whether the calling thread counts as running on `owner_id`.
#[cfg_attr(not(any(loom, target_os = "linux")), allow(dead_code))]
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

/// What [`BlockingGuard`](crate::BlockingGuard)s of every port hold: one step of the calling
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

// Under loom every model thread runs on one OS thread, so the tag is one of
// loom's thread-locals there.
#[cfg(not(loom))]
std::thread_local! {
    static THREAD_TAG: u64 = next_tag();
}
#[cfg(loom)]
loom::thread_local! {
    static THREAD_TAG: u64 = next_tag();
}

fn next_tag() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A small number naming the current thread (cheaper than `ThreadId` to
/// compare); 0 once the thread's locals are gone (it is exiting).
pub(crate) fn thread_tag() -> u64 {
    THREAD_TAG.try_with(|t| *t).unwrap_or(0)
}
