//! The epoll engine: completions emulated on readiness, for kernels and
//! sandboxes without io_uring (Docker's default seccomp profile, gVisor,
//! `kernel.io_uring_disabled`).
//!
//! One engine owns one epoll set and runs on one thread, exactly like the
//! io_uring engine, and feeds the same user-space port with the same
//! [`Completion`]s:
//!
//! - **Registration.** Each socket is added once, at association, for
//!   `EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`. Edge-triggered, so nothing
//!   is ever re-armed; the engine keeps a `readable` and a `writable` bit
//!   per handle instead. Both start set ("unknown, try it"), a bit is
//!   cleared only when a syscall says `EAGAIN`, and set again by the next
//!   edge (any new data, buffer space, error or hang-up produces one).
//! - **Lanes** ([`crate::kit::lanes`]). Each handle has four FIFOs: read
//!   (`Recv`, `RecvFrom`, `RecvPooled`), write (`Send`, vectored `Send`,
//!   `SendTo`), accept and connect. Only the head of a lane is ever
//!   attempted, so bytes go out and come in in issue order, and a short send
//!   stays at the head until its last byte is out.
//! - **Submit.** A new operation at the head of its lane is tried at once if
//!   its direction is marked ready (a connect is always started at once);
//!   on `EAGAIN` it waits. Its completion is still posted as a packet, as
//!   Windows does without `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`.
//! - **Events.** An edge sets the bits and runs the handle's lanes until
//!   `EAGAIN`, an empty lane, or a budget per lane and turn (the rest of a
//!   busy lane runs next turn, without blocking, so one flooding socket
//!   cannot starve the others).
//! - **Operations** ([`ops`]), by family: each one's attempt and what it
//!   hands back, side by side. A standing accept pausing after running out
//!   of descriptors ([`crate::kit::accept`]) parks at the head of the accept
//!   lane, so the whole lane waits; a starved pooled receive parks at the
//!   head of the read lane.
//! - **Cancel and close** are synchronous: the operation leaves its lane
//!   and completes at once (aborted, or `TimedOut` for a deadline), exactly
//!   once. A close aborts every operation of the handle, then removes the
//!   socket from the set and closes it.
//! - **Pipes** are registered and served as sockets are, with `read(2)` and
//!   `write(2)` ([`ops`]' file family).
//! - **Files** are never "ready": their operations skip the lanes and run
//!   on the engine's file pool ([`files`]: at most `file_threads` threads,
//!   blocking calls). One still waiting for a thread is taken back by a
//!   cancel, a deadline or its handle's close and completes aborted (or
//!   `TimedOut`); one a thread runs completes with its result. The
//!   descriptor closes after the last call on it returned.

mod driven;
#[cfg(test)]
mod engine_tests;
mod files;
mod ops;
mod poller;

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error;
use crate::kit::accept::ACCEPT_BACKOFF;
use crate::kit::lanes::{Lane, Lanes, Next};
use crate::kit::phase::{Park, Phase, Step, Stop};
use crate::kit::run::TimerItem;
use crate::kit::starved::Starved;
use crate::op::Completion;
use crate::queue::Queue;
use crate::sys::common::{
    is_stream, Core, EngineCounters, EngineFd, EngineShared, HandleMap, Kind, LinuxEngine, OpMeta,
    OpReq, Slab, SocketFd,
};

pub(crate) use driven::EpollWait;
use files::{Done, FilePool, Job};
use ops::{Attempt, EOp};
use poller::Poller;

/// `epoll_event.u64` of the wake-up eventfd (handle ids start at 1 and are
/// never this large).
const WAKE: u64 = u64::MAX;
/// Attempts per lane and turn before the rest waits for the next turn.
const BUDGET: usize = 32;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// The slot a deadline names for an operation on a file: none (it is in
/// the file pool, found by its id).
const IN_POOL: usize = usize::MAX;

/// One operation in flight.
struct Op {
    meta: OpMeta,
    phase: Phase,
    op: EOp,
}

/// A socket, pipe or file the engine owns.
struct HState {
    fd: EngineFd,
    kind: Kind,
    /// `epoll_ctl(ADD)` refused the descriptor: every operation fails with
    /// this errno.
    reg_err: Option<i32>,
    readable: bool,
    writable: bool,
    /// On the engine's list of handles whose lanes ran out of budget.
    deferred: bool,
    lanes: Lanes<usize>,
}

impl HState {
    /// Whether an operation in `phase`, at the head of `lane`, may be
    /// attempted now.
    fn ready(&self, lane: Lane, phase: Phase) -> bool {
        match (lane, phase) {
            (_, Phase::Parked(_)) => false,
            (Lane::Read | Lane::Accept, _) => self.readable,
            (Lane::Write, _) => self.writable,
            // A connect starts at once.
            (Lane::Connect, _) => self.writable || phase == Phase::Queued,
        }
    }

    fn clear_ready(&mut self, lane: Lane) {
        match lane {
            Lane::Read | Lane::Accept => self.readable = false,
            Lane::Write | Lane::Connect => self.writable = false,
        }
    }
}

/// The engine. Lives on one thread (it may move between threads only as a
/// whole, e.g. an inline port shut down from elsewhere).
pub(crate) struct EpollEngine {
    /// Shared with a driver that waits in it without the engine.
    poller: Arc<Poller>,
    ops: Slab<Op>,
    handles: HandleMap<HState>,
    core: Core,
    events: Vec<libc::epoll_event>,
    /// Pool buffers the engine owns (free to read into).
    free_bufs: Vec<u16>,
    /// Pooled receives waiting for a buffer.
    starved: Starved,
    /// Handles whose lanes ran out of budget this turn.
    deferred: Vec<u64>,
    /// Where operations on files run.
    files: FilePool,
    /// Results of the file pool, taken each turn.
    done: Vec<Done>,
}

impl EpollEngine {
    /// Creates the epoll set and registers the engine's wake-up eventfd.
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        queue: Option<Queue<Completion>>,
        cfg: &Config,
    ) -> io::Result<EpollEngine> {
        let poller = Arc::new(Poller::new()?);
        poller.add(shared.wake_fd(), libc::EPOLLIN as u32, WAKE)?;
        let count = shared.pool.count;
        let files = FilePool::new(shared.clone(), cfg.file_threads);
        Ok(EpollEngine {
            poller,
            ops: Slab::new(),
            handles: HandleMap::default(),
            core: Core::new(shared, queue, cfg.inline),
            events: Vec::with_capacity(EVENTS),
            free_bufs: (0..count as u16).rev().collect(),
            starved: Starved::default(),
            deferred: Vec::new(),
            files,
            done: Vec::new(),
        })
    }

    /// Hands the engine the events a driver waited for without it (they
    /// are handled by the turn's end).
    pub(crate) fn take_events(&mut self, events: &mut Vec<libc::epoll_event>) {
        std::mem::swap(&mut self.events, events);
    }

    fn on_event(&mut self, hid: u64, bits: u32) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        let failed = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if failed || bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI) as u32 != 0 {
            h.readable = true;
        }
        if failed || bits & libc::EPOLLOUT as u32 != 0 {
            h.writable = true;
        }
        self.run_lanes(hid);
    }

    fn run_lanes(&mut self, hid: u64) {
        for lane in Lane::ALL {
            self.run_lane(hid, lane);
        }
    }

    /// Attempts the head of `hid`'s `lane` while it is ready and makes
    /// progress.
    fn run_lane(&mut self, hid: u64, lane: Lane) {
        let mut budget = BUDGET;
        loop {
            let Some(h) = self.handles.get_mut(&hid) else {
                return;
            };
            let Some(idx) = h.lanes.head(lane) else {
                return;
            };
            let Some(op) = self.ops.get_mut(idx) else {
                debug_assert!(false, "lane holds a free slot");
                return;
            };
            if !h.ready(lane, op.phase) {
                return;
            }
            if budget == 0 {
                self.defer(hid);
                return;
            }
            budget -= 1;
            let mut cx = Attempt {
                meta: &op.meta,
                first: op.phase == Phase::Queued,
                stream: h.lanes.is_stream(),
                pool: &self.core.shared.pool,
                free: &mut self.free_bufs,
                out: &mut self.core.out,
            };
            let step = op.op.attempt(h.fd.as_fd(), &mut cx);
            op.phase = Phase::Issued;
            match step {
                Step::Done(r) => {
                    self.finish(idx, r);
                }
                // A standing accept takes turns with the accepts queued
                // behind it.
                Step::Again if lane == Lane::Accept && op.op.standing() => h.lanes.rotate(lane),
                Step::Again => {}
                Step::Wait => return,
                Step::WouldBlock => {
                    h.clear_ready(lane);
                    return;
                }
                Step::Starved => {
                    op.phase = Phase::Parked(Park::Starved);
                    self.starved.push(idx, op.meta.id);
                    EngineCounters::bump(&self.core.shared.counters.starved, 1);
                    return;
                }
                Step::BackOff => {
                    op.phase = Phase::Parked(Park::BackOff);
                    let item = TimerItem::Rearm {
                        slot: idx,
                        op: op.meta.id,
                    };
                    self.core.timers.add(Instant::now() + ACCEPT_BACKOFF, item);
                    return;
                }
            }
        }
    }

    fn defer(&mut self, hid: u64) {
        if let Some(h) = self.handles.get_mut(&hid) {
            if !h.deferred {
                h.deferred = true;
                self.deferred.push(hid);
            }
        }
    }

    fn run_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let hids = std::mem::take(&mut self.deferred);
        for &hid in &hids {
            if let Some(h) = self.handles.get_mut(&hid) {
                h.deferred = false;
                self.run_lanes(hid);
            }
        }
    }

    /// A completion for an operation that never reached a lane.
    fn refuse(&mut self, meta: OpMeta, op: EOp, e: io::Error) {
        let mut c = meta.completion(op.kind(), Err(e));
        op.complete(&mut c);
        self.core.out.push(c);
    }

    /// Completes slot `idx` with `result`, handing back what it owned; it
    /// leaves its lane (aborting the writes behind a send that broke the
    /// stream). Says what heads the lane now.
    fn finish(&mut self, idx: usize, result: io::Result<usize>) -> Next<usize> {
        let Some(op) = self.ops.remove(idx) else {
            return Next::Idle;
        };
        self.core.timers.op_done(op.meta.id);
        let lane = op.op.lane();
        let mut c = op.meta.completion(op.op.kind(), result);
        let h = self.handles.get_mut(&op.meta.hid);
        if c.result.is_err() {
            // What a send sent before it failed (0 for anything else).
            c.partial = op.op.sent();
        }
        op.op.complete(&mut c);
        let next = h.map_or(Next::Idle, |h| {
            h.lanes.send_failed(c.partial);
            h.lanes.leave(lane, idx)
        });
        self.core.out.push(c);
        match next {
            Next::Abort(queued) => {
                for i in queued {
                    self.finish(i, Err(error::aborted()));
                }
                Next::Idle
            }
            next => next,
        }
    }

    /// Ends slot `idx` early (a cancel or a deadline): out of its lane,
    /// completed now, and the lane moves on.
    fn stop(&mut self, idx: usize, why: Stop) {
        let Some(op) = self.ops.get_mut(idx) else {
            return;
        };
        op.phase = Phase::Stopping(why);
        let (hid, lane, e) = (op.meta.hid, op.op.lane(), op.phase.abort_error());
        if let Next::Start(_) = self.finish(idx, Err(e)) {
            self.run_lane(hid, lane);
        }
    }

    /// Hands operation `op` on a file to the file pool (with its deadline).
    fn start_on_pool(
        &mut self,
        meta: OpMeta,
        deadline: Option<Instant>,
        op: EOp,
        fd: Arc<SocketFd>,
    ) {
        match self.files.submit(Job { meta, fd, op }) {
            Ok(()) => {
                if let Some(d) = deadline {
                    let item = TimerItem::Deadline {
                        slot: IN_POOL,
                        op: meta.id,
                    };
                    self.core.timers.add(d, item);
                }
            }
            Err((job, e)) => self.complete_pooled(job.meta, job.op, Err(e)),
        }
    }

    /// Completes an operation that ran on (or was taken back from) the
    /// file pool.
    fn complete_pooled(&mut self, meta: OpMeta, op: EOp, result: io::Result<usize>) {
        self.core.timers.op_done(meta.id);
        let mut c = meta.completion(op.kind(), result);
        if c.result.is_err() {
            // What a write wrote before it failed (0 for anything else).
            c.partial = op.sent();
        }
        op.complete(&mut c);
        self.core.out.push(c);
    }

    /// Ends operation `op` in the file pool early, if no thread has started
    /// it (a started one completes with its result).
    fn stop_pooled(&mut self, op: u64, why: Stop) {
        if let Some(job) = self.files.take_waiting(op) {
            let e = Phase::Stopping(why).abort_error();
            self.complete_pooled(job.meta, job.op, Err(e));
        }
    }

    /// Completes what the file pool ran since the last turn.
    fn take_file_results(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        self.files.take_done(&mut done);
        for d in done.drain(..) {
            self.complete_pooled(d.meta, d.op, d.result);
        }
        self.done = done;
    }

    /// Takes back pool buffers the application dropped; resumes pooled
    /// receives that starved for them.
    fn recycle(&mut self) {
        self.core.take_returned();
        if self.core.returned.is_empty() {
            return;
        }
        self.free_bufs.append(&mut self.core.returned);
        // Oldest first, while buffers are left: a resumed receive reads at
        // once, taking a buffer if its socket has data (and none if not).
        // Resuming them all would make the rest starve again at once.
        while !self.free_bufs.is_empty() {
            let ops = &self.ops;
            let Some(idx) = self
                .starved
                .pop_live(|i| ops.get(i).map(|o| (o.meta.id, o.phase)))
            else {
                break;
            };
            let op = self
                .ops
                .get_mut(idx)
                .expect("a live entry names a live slot");
            op.phase = Phase::Issued;
            let hid = op.meta.hid;
            self.run_lane(hid, Lane::Read);
        }
    }

    /// Stops: aborts every operation and closes every descriptor. Nothing
    /// is held by the kernel, so this never waits.
    pub(crate) fn shutdown(&mut self) {
        // Commands that raced with the shutdown: dropping them closes their
        // descriptors and frees their buffers.
        self.core.discard_commands();
        let hids: Vec<u64> = self.handles.keys().copied().collect();
        for hid in hids {
            LinuxEngine::close(self, hid);
        }
        self.files.shutdown();
        self.core.timers.clear();
        EngineCounters::set(&self.core.shared.counters.timers, 0);
        self.starved.clear();
        self.deferred.clear();
        self.core.out.clear();
    }
}

impl Drop for EpollEngine {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.shutdown();
        }
    }
}

impl LinuxEngine for EpollEngine {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    fn core_ref(&self) -> &Core {
        &self.core
    }

    fn recycle(&mut self) {
        self.take_file_results();
        EpollEngine::recycle(self);
    }

    fn settle(&mut self) {
        self.run_deferred();
    }

    fn leftovers(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Waits in `epoll_wait`, rounding the wait up to whole milliseconds so
    /// it never wakes early and spins.
    fn enter_kernel(&mut self, block: bool, wait: Option<Duration>) -> bool {
        let ms = match (block, wait) {
            (false, _) => 0,
            (true, None) => -1,
            (true, Some(d)) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        if let Err(e) = self.poller.wait(&mut self.events, ms) {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!("epoll_wait: {e}");
            }
        }
        true
    }

    fn reap_kernel(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            let (bits, data) = (ev.events, ev.u64);
            if data == WAKE {
                self.core.shared.drain_wake();
            } else {
                self.on_event(data, bits);
            }
        }
        self.events = events;
    }

    fn deadline(&mut self, slot: usize, op: u64) {
        if slot == IN_POOL {
            self.stop_pooled(op, Stop::Deadline);
        } else if self.ops.get(slot).is_some_and(|o| o.meta.id == op) {
            self.stop(slot, Stop::Deadline);
        }
    }

    fn rearm(&mut self, slot: usize, op: u64) {
        let Some(o) = self.ops.get_mut(slot) else {
            return;
        };
        if o.meta.id == op && o.phase == Phase::Parked(Park::BackOff) {
            o.phase = Phase::Issued;
            let hid = o.meta.hid;
            self.run_lane(hid, Lane::Accept);
        }
    }

    fn stop_engine(&mut self) {
        self.shutdown();
    }

    fn register(&mut self, hid: u64, fd: EngineFd, key: u64, kind: Kind) {
        if kind == Kind::Pipe {
            // Readiness needs calls that never block (a socket came
            // non-blocking already).
            if let Err(e) = socket2::SockRef::from(&fd).set_nonblocking(true) {
                tracing::warn!("epoll: cannot make pipe {hid} (key {key}) non-blocking: {e}");
            }
        }
        // A file is never in the set: its operations run on the file pool.
        let watched = match kind {
            Kind::File => Ok(()),
            Kind::Socket | Kind::Pipe => {
                self.poller.add(fd.as_raw_fd(), poller::SOCKET_EVENTS, hid)
            }
        };
        let reg_err = match watched {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(
                    "epoll: cannot watch handle {hid} (key {key}): {e}; its operations will fail"
                );
                Some(e.raw_os_error().unwrap_or(libc::EINVAL))
            }
        };
        let lanes = Lanes::new(is_stream(&fd));
        let h = HState {
            fd,
            kind,
            reg_err,
            readable: true,
            writable: true,
            deferred: false,
            lanes,
        };
        self.handles.insert(hid, h);
    }

    fn start(&mut self, req: OpReq) {
        let (meta, deadline, data) = req.split();
        let op = EOp::new(data);
        let lane = op.lane();
        let Some(h) = self.handles.get_mut(&meta.hid) else {
            // Closed after the port let this start: it still completes
            // once, under the handle's key.
            return self.refuse(meta, op, error::handle_closed());
        };
        if let Some(errno) = h.reg_err {
            return self.refuse(meta, op, io::Error::from_raw_os_error(errno));
        }
        if h.kind == Kind::File {
            let fd = h.fd.share();
            return self.start_on_pool(meta, deadline, op, fd);
        }
        if h.lanes.refuses(lane) {
            return self.refuse(meta, op, error::aborted());
        }
        let idx = self.ops.insert(Op {
            meta,
            phase: Phase::Queued,
            op,
        });
        let head = h.lanes.push(lane, idx);
        if let Some(d) = deadline {
            let item = TimerItem::Deadline {
                slot: idx,
                op: meta.id,
            };
            self.core.timers.add(d, item);
        }
        if head {
            self.run_lane(meta.hid, lane);
        }
    }

    fn cancel(&mut self, hid: u64, op: u64) {
        let found = self.handles.get(&hid).and_then(|h| {
            h.lanes
                .iter()
                .find(|&i| self.ops.get(i).is_some_and(|o| o.meta.id == op))
        });
        if let Some(i) = found {
            self.stop(i, Stop::Cancel);
        } else if self.files.holds(hid, op) {
            self.stop_pooled(op, Stop::Cancel);
        }
    }

    /// `closesocket`: aborts every operation of the handle (in the order
    /// they were started), then takes the socket out of the set and closes
    /// it — after its last completion, so the descriptor cannot be reused
    /// early.
    fn close(&mut self, hid: u64) {
        let Some(mut h) = self.handles.remove(&hid) else {
            return;
        };
        let mut idxs: Vec<usize> = h.lanes.drain().collect();
        idxs.sort_by_key(|&i| self.ops.get(i).map_or(0, |o| o.meta.id));
        for i in idxs {
            self.finish(i, Err(error::aborted()));
        }
        for job in self.files.take_waiting_of(hid) {
            self.complete_pooled(job.meta, job.op, Err(error::aborted()));
        }
        if h.reg_err.is_none() && h.kind != Kind::File {
            if let Err(e) = self.poller.delete(h.fd.as_raw_fd()) {
                tracing::debug!("epoll: EPOLL_CTL_DEL for handle {hid}: {e}");
            }
        }
        drop(h);
    }
}
