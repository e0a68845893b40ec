//! The io_uring engine: one ring owned by one thread.
//!
//! Application threads queue commands on the engine's [`EngineShared`]; the
//! engine turns them into SQEs, submits them in one batch per turn, reaps
//! CQEs and turns them into [`Completion`] packets for the user-space port.
//!
//! * this file — the engine: its state, its turn, commands, shutdown;
//! * [`slot`] — an operation in flight, its name in SQEs, its life after
//!   each CQE;
//! * [`sqe`] — building and pushing SQEs, and the memory they point to;
//! * [`cqe`] — reaping CQEs and handing each to its operation;
//! * [`ops`] — the operations by family: each one's SQEs and the meaning
//!   of its CQEs, side by side;
//! * [`poll`] — pooled receive without a buffer ring, and pool buffers
//!   coming back;
//! * [`probe`], [`bufring`] — ring set-up and the provided-buffer ring.

mod bufring;
mod cqe;
mod driven;
mod ops;
mod poll;
mod probe;
mod slot;
mod sqe;
#[cfg(test)]
mod tests;
mod ud;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, squeue, types, IoUring};

use crate::error;
use crate::kit::lanes::Lanes;
use crate::kit::phase::{Park, Phase, Stop};
use crate::kit::run::{Drive, TimerItem};
use crate::kit::starved::Starved;
use crate::op::Completion;
use crate::queue::Queue;
use crate::sys::common::{
    is_stream, take_commands, Core, EngineCounters, EngineFd, EngineShared, HandleMap, Kind,
    LinuxEngine, OpMeta, OpReq, Slab,
};

pub(crate) use crate::config::UringFeatures;
use bufring::BufRing;
pub(crate) use driven::UringWait;
use ops::UOp;
pub(crate) use probe::{RingMode, ENV_SWITCHES};
use slot::Slot;
use sqe::Enter;
use ud::WAKE_UD;

/// A socket the engine owns.
struct HState {
    fd: EngineFd,
    /// Its operations in flight (slots).
    ops: Vec<usize>,
    lanes: Lanes<usize>,
    /// Closing: its operations are being stopped; it goes after the last.
    closing: bool,
}

impl HState {
    fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// The engine. Either it lives on one thread for its whole life (an engine
/// thread, or an inline port's owner: the ring is created with
/// `SINGLE_ISSUER` when the kernel has it, and any other thread that stops
/// or drops it [`abandon`](Self::abandon)s it instead), or the threads
/// waiting on its port drive it one at a time (`driven`: a shared ring, see
/// [`probe::RingMode`]).
pub(crate) struct UringEngine {
    // `shutdown` reaps every request the kernel holds (operations and the
    // eventfd read) before anything is freed, or leaks what it could not
    // reap; the ring is still declared first so it is closed before the
    // slots and the buffer ring go. A driven ring is shared with its
    // drivers, which only enter it (never touch its queues): it closes when
    // the last of them lets go.
    ring: Arc<IoUring>,
    bufring: Option<BufRing>,
    ops: Slab<Slot>,
    handles: HandleMap<HState>,
    core: Core,
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// The time of the last timeout armed for the engine's earliest timer
    /// (boxed: an SQE points to it until the kernel takes the SQE in).
    timer_ts: Box<types::Timespec>,
    cqes: Vec<(u64, i32, u32)>,
    /// Pooled receives waiting for pool buffers.
    starved: Starved,
    /// Starved receives re-armed since the last reap: each may take one of
    /// the buffers the pool has, so the next re-arms count them off.
    starve_claims: usize,
    /// Pool buffers free in user space (poll-mode pooled receive).
    free_bufs: Vec<u16>,
    feats: UringFeatures,
    draining: bool,
    /// How long `shutdown` waits for the kernel to give back what it holds
    /// before it leaks it (10 s; tests shorten it).
    drain_limit: Duration,
    /// The thread that created the ring: the only one that may enter it
    /// (a `SINGLE_ISSUER` ring refuses every other with `EEXIST`).
    owner: std::thread::ThreadId,
    /// The port's waiting threads drive the engine (any of them may enter
    /// the ring): nothing is bound to one thread, so no eventfd read is
    /// armed in the ring (it would complete through the thread that armed
    /// it, and die with it); the engine is woken by a message posted into
    /// its ring instead.
    driven: bool,
    /// How many times the SQ was handed to the kernel, all through
    /// [`UringEngine::enter`]. A slot whose last SQE was pushed at the
    /// current count has not reached the kernel (see
    /// [`UringEngine::free_unsubmitted`]).
    submissions: u64,
}

impl UringEngine {
    /// Builds the ring on the calling thread: its only issuer (`mode`
    /// `Owned`), or shared by the threads that will drive it.
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        queue: Option<Queue<Completion>>,
        cfg: &crate::config::Config,
        mode: RingMode,
    ) -> io::Result<UringEngine> {
        let (ring, mut feats) = probe::build_ring(cfg, mode)?;
        let pool = shared.pool.clone();
        let mut bufring = None;
        let mut free_bufs = Vec::new();
        if feats.buf_ring && feats.multishot_recv {
            match BufRing::new(&ring, pool.clone(), 0) {
                Ok(br) => bufring = Some(br),
                Err(e) => {
                    tracing::info!("io_uring: buffer ring unavailable ({e}); pooled receive polls");
                    feats.buf_ring = false;
                    feats.multishot_recv = false;
                }
            }
        }
        if bufring.is_none() {
            free_bufs = (0..pool.count as u16).rev().collect();
        }
        let mut core = Core::new(shared, queue, cfg.inline);
        if mode == RingMode::Owned {
            // One thread enters the ring: its timeouts report to it. (On a
            // ring its waiters drive, a timeout's report would go through
            // the thread that armed it, which may be gone.)
            core.timers.in_kernel();
        }
        Ok(UringEngine {
            ring: Arc::new(ring),
            bufring,
            ops: Slab::new(),
            handles: HandleMap::default(),
            core,
            wake_buf: Box::new(0),
            wake_armed: false,
            timer_ts: Box::new(types::Timespec::new()),
            cqes: Vec::with_capacity(256),
            starved: Starved::default(),
            starve_claims: 0,
            free_bufs,
            feats,
            draining: false,
            drain_limit: Duration::from_secs(10),
            owner: std::thread::current().id(),
            driven: !matches!(mode, RingMode::Owned),
            submissions: 0,
        })
    }

    /// The submission queue. Only the engine borrows the ring's queues, and
    /// `&mut self` (the engine's thread, or its driver's lock) makes this
    /// borrow the only one.
    fn sq(&mut self) -> squeue::SubmissionQueue<'_> {
        // SAFETY: no other `SubmissionQueue` of this ring exists: the engine
        // is the only code that makes one, each lives inside one `&mut self`
        // call, and a driven ring's drivers only enter the kernel with it.
        unsafe { self.ring.submission_shared() }
    }

    /// The completion queue (see [`UringEngine::sq`]).
    fn cq(&mut self) -> cqueue::CompletionQueue<'_> {
        // SAFETY: as in `sq`, for the completion queue.
        unsafe { self.ring.completion_shared() }
    }

    /// The ring, for a driver that waits in it without the engine.
    pub(crate) fn ring(&self) -> Arc<IoUring> {
        self.ring.clone()
    }

    /// SQEs pushed and not yet handed to the kernel.
    pub(crate) fn sq_pending(&mut self) -> u32 {
        self.sq().len() as u32
    }

    /// Hands what reaping queued (a lane's next operation, a re-arm) to the
    /// kernel at once and takes what that completed on the spot: on a
    /// driven ring nothing may wait in the SQ while nobody drives.
    pub(crate) fn flush_sq(&mut self) {
        for _ in 0..4 {
            if !self.submit_sq() {
                return;
            }
            self.reap_cq();
            self.recycle();
        }
    }

    /// Hands the pushed SQEs to the kernel, if there are any; returns
    /// whether there were.
    pub(crate) fn submit_sq(&mut self) -> bool {
        if self.sq().is_empty() {
            return false;
        }
        self.enter(Enter::Submit);
        EngineCounters::bump(&self.core.shared.counters.enters, 1);
        true
    }

    /// Arms (or disarms) the standby's eventfd: the kernel signals it for
    /// completions posted while armed. Returns whether completions already
    /// wait in the CQ (posted before the arming: nobody was signalled).
    pub(crate) fn set_standby(&mut self, on: bool) -> bool {
        let mut cq = self.cq();
        if on {
            cq.enable_eventfd();
            // The kernel orders its CQ tail store and its read of the flag
            // with a full barrier; the flag's read-modify-write above is
            // one on our side, so either it sees the flag or we see the CQE.
            cq.sync();
            !cq.is_empty()
        } else {
            cq.disable_eventfd();
            false
        }
    }

    pub(crate) fn features(&self) -> UringFeatures {
        self.feats
    }

    /// A completion for an operation that never reached a slot.
    fn refuse(&mut self, meta: OpMeta, op: UOp, e: io::Error) {
        let mut c = meta.completion(op.kind(), Err(e));
        op.complete(&mut c);
        self.core.out.push(c);
    }

    /// Stops: aborts every operation, waits until the kernel has returned
    /// every buffer, closes every descriptor. Off the owner thread this is
    /// [`abandon`](Self::abandon): it never enters the ring from there.
    pub(crate) fn shutdown(&mut self) {
        if !self.driven && std::thread::current().id() != self.owner {
            self.abandon();
            return;
        }
        // Commands queued before the shutdown flag went up (none can come
        // after) go first: a handle registered at the last moment must be
        // closed below too, or its operations would outlive the drain.
        take_commands(self);
        let hids: Vec<u64> = self.handles.keys().copied().collect();
        for hid in hids {
            LinuxEngine::close(self, hid);
        }
        self.core.timers.clear();
        self.draining = true;
        let give_up = Instant::now() + self.drain_limit;
        while !self.ops.is_empty() && Instant::now() < give_up {
            self.core.out.clear();
            self.turn(Some(Duration::from_millis(50)), true);
        }
        self.core.out.clear();
        // The eventfd read is the last request the kernel holds: cancel it
        // and reap its CQE, so closing the ring leaves nothing in flight
        // (the kernel cancels requests of a closed ring asynchronously).
        if self.ops.is_empty() && self.wake_armed {
            self.push_cancel(WAKE_UD);
            let until = Instant::now() + Duration::from_secs(2);
            while self.wake_armed && Instant::now() < until {
                self.enter_kernel(true, Some(Duration::from_millis(50)));
                self.reap_cq();
                self.core.out.clear();
            }
        }
        if !self.ops.is_empty() || self.wake_armed {
            tracing::error!(
                "io_uring engine: {} operations still held by the kernel after {:?}; leaking their buffers",
                self.ops.len(),
                self.drain_limit
            );
            self.leak_kernel_memory();
        }
        self.handles.clear();
        EngineCounters::set(&self.core.shared.counters.timers, 0);
    }

    /// Frees, before the rest is leaked, the operations the kernel holds
    /// nothing of: waiting in a lane, parked between two arms, or issued
    /// since the ring was last entered — an operation an inline port's
    /// owner started between turns, or the next one of a lane the last
    /// reap started. Their SQEs wait in the SQ, which is never handed to
    /// the kernel again. Sound only because every hand-off of the SQ goes
    /// through [`UringEngine::enter`], which counts it (why, there). Only
    /// on a ring the engine alone enters (a driven ring's drivers submit
    /// in their wait, uncounted); returns how many.
    fn free_unsubmitted(&mut self) -> usize {
        if self.driven {
            return 0;
        }
        let mut freed = 0;
        for idx in 0..self.ops.slots() {
            let Some(s) = self.ops.get(idx) else {
                continue;
            };
            let in_kernel = match s.phase {
                Phase::Queued | Phase::Parked(_) => false,
                Phase::Issued | Phase::Stopping(_) => s.pushed_at != self.submissions,
            };
            if !in_kernel {
                self.ops.remove(idx);
                freed += 1;
            }
        }
        freed
    }

    /// Gives up on memory the kernel may still write (operation slots, the
    /// buffer ring and its pool, the wake-up buffer): leaked, never freed
    /// under it. The engine never enters the ring again: nothing is left to
    /// wait for, so `Drop` does not stop it a second time, and SQEs still
    /// waiting in the SQ (a last re-issue, a cancel) are never submitted —
    /// they may name descriptors closed right after this, whose numbers
    /// another socket may already have. Dropping the ring discards them.
    fn leak_kernel_memory(&mut self) {
        std::mem::forget(std::mem::replace(&mut self.ops, Slab::new()));
        std::mem::forget(self.bufring.take());
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        self.wake_armed = false;
    }

    /// Gives up from a thread that does not own the ring. Nothing may be
    /// submitted or reaped from here, so whatever the kernel may still hold
    /// is leaked rather than freed under it: the operation slots (buffers,
    /// addresses, iovecs), the buffer ring with its pool, the eventfd read's
    /// buffer. Descriptors are released (a request the kernel holds keeps
    /// its own reference to the socket, so the number may be reused safely),
    /// and dropping the ring afterwards closes it: the kernel then cancels
    /// what is left on its own and writes only into the leaked memory.
    /// Commands still queued (none reached the kernel) are dropped: a
    /// handle registered since the last turn closes its socket now, and a
    /// queued start frees its buffers. So are the operations the kernel
    /// holds nothing of (see [`UringEngine::free_unsubmitted`]).
    pub(crate) fn abandon(&mut self) {
        let freed = self.free_unsubmitted();
        if self.ops.is_empty() {
            tracing::debug!(
                "io_uring engine stopped off its thread; leaking its buffer pool \
                 ({freed} operations the kernel never saw freed)"
            );
        } else {
            tracing::warn!(
                "io_uring engine stopped off its thread with {} operations in flight; leaking their buffers \
                 ({freed} operations the kernel never saw freed)",
                self.ops.len()
            );
        }
        self.leak_kernel_memory();
        self.core.discard_commands();
        self.core.timers.clear();
        EngineCounters::set(&self.core.shared.counters.timers, 0);
        self.core.out.clear();
        self.handles.clear();
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        if !self.ops.is_empty() || self.wake_armed {
            // Abandons instead when dropped off the owner thread.
            self.shutdown();
        }
    }
}

impl LinuxEngine for UringEngine {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    fn core_ref(&self) -> &Core {
        &self.core
    }

    fn recycle(&mut self) {
        UringEngine::recycle(self);
    }

    fn settle(&mut self) {
        if !self.wake_armed && !self.driven {
            self.arm_wake();
        }
        if let Some(at) = self.core.timers.arm_next() {
            self.arm_timer(at);
        }
    }

    fn draining(&self) -> bool {
        // At shutdown nothing else will wake the engine, and the caller
        // bounds the wait with a timeout.
        self.draining
    }

    fn enter_kernel(&mut self, block: bool, wait: Option<Duration>) -> bool {
        let how = match (block, wait) {
            (false, _) if self.driven && self.sq().is_empty() => {
                // Nothing to hand over. Another thread's completions need no
                // call to be seen; this thread's own deferred task work is
                // flagged when there is any (TASKRUN_FLAG).
                let sq = self.sq();
                let needed = sq.taskrun() || sq.cq_overflow();
                drop(sq);
                if !needed {
                    return false;
                }
                Enter::Submit
            }
            (false, _) => Enter::Submit,
            (true, wait) => Enter::WaitOne(wait),
        };
        self.enter(how);
        true
    }

    fn reap_kernel(&mut self) {
        self.reap_cq();
    }

    fn deadline(&mut self, slot: usize, op: u64) {
        if self.ops.get(slot).is_some_and(|s| s.meta.id == op) {
            self.stop(slot, Stop::Deadline);
        }
    }

    fn rearm(&mut self, slot: usize, op: u64) {
        let parked = |s: &Slot| s.meta.id == op && s.phase == Phase::Parked(Park::BackOff);
        if self.ops.get(slot).is_some_and(parked) {
            self.again(slot);
        }
    }

    fn stop_engine(&mut self) {
        self.shutdown();
    }

    fn register(&mut self, hid: u64, fd: EngineFd, _key: u64, _kind: Kind) {
        // io_uring waits by itself (FAST_POLL); a non-blocking socket or
        // pipe would only turn a retry the kernel runs in io-wq into a
        // spurious EAGAIN (on a pipe, a READ or WRITE the kernel does not
        // retry). Files ignore the flag.
        let _ = socket2::SockRef::from(&fd).set_nonblocking(false);
        let lanes = Lanes::new(is_stream(&fd));
        let h = HState {
            fd,
            ops: Vec::new(),
            lanes,
            closing: false,
        };
        self.handles.insert(hid, h);
    }

    fn start(&mut self, req: OpReq) {
        let (meta, deadline, data) = req.split();
        let op = UOp::new(data);
        let lane = op.lane();
        let Some(h) = self.handles.get_mut(&meta.hid) else {
            // Closed (and its last operation done) after the port let this
            // start: it still completes once, under the handle's key.
            return self.refuse(meta, op, error::handle_closed());
        };
        if h.closing || lane.is_some_and(|l| h.lanes.refuses(l)) {
            return self.refuse(meta, op, error::aborted());
        }
        let idx = self.ops.insert(Slot {
            meta,
            phase: Phase::Queued,
            poll_first: false,
            reissues: 0,
            pushed_at: 0,
            op,
        });
        h.ops.push(idx);
        let go = lane.is_none_or(|l| h.lanes.push(l, idx));
        if let Some(d) = deadline {
            let item = TimerItem::Deadline {
                slot: idx,
                op: meta.id,
            };
            self.core.timers.add(d, item);
        }
        if go {
            self.issue(idx);
        }
    }

    fn cancel(&mut self, hid: u64, op: u64) {
        let found = self.handles.get(&hid).and_then(|h| {
            h.ops
                .iter()
                .copied()
                .find(|&i| self.ops.get(i).is_some_and(|s| s.meta.id == op))
        });
        if let Some(i) = found {
            self.stop(i, Stop::Cancel);
        }
    }

    fn close(&mut self, hid: u64) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        h.closing = true;
        if h.ops.is_empty() {
            self.handles.remove(&hid);
            return;
        }
        // Operations the kernel does not hold first (so lanes do not start
        // them), then the ones it holds.
        let mut ops = h.ops.clone();
        let in_kernel = |s: &Slot| matches!(s.phase, Phase::Issued | Phase::Stopping(_));
        ops.sort_by_key(|&i| self.ops.get(i).is_some_and(in_kernel));
        for i in ops {
            self.stop(i, Stop::Cancel);
        }
    }
}
