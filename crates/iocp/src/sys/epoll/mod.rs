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
//! - **Lanes.** Each handle has four FIFOs: read (`Recv`, `RecvFrom`,
//!   `RecvPooled`), write (`Send`, vectored `Send`, `SendTo`), accept and
//!   connect. Only the head of a lane is ever attempted, so bytes go out and
//!   come in in issue order, and a short send stays at the head until its
//!   last byte is out.
//! - **Submit.** A new operation at the head of its lane is tried at once if
//!   its direction is marked ready (a connect is always started at once);
//!   on `EAGAIN` it waits. Its completion is still posted as a packet, as
//!   Windows does without `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`.
//! - **Events.** An edge sets the bits and runs the handle's lanes until
//!   `EAGAIN`, an empty lane, or a budget per lane and turn (the rest of a
//!   busy lane runs next turn, without blocking, so one flooding socket
//!   cannot starve the others).
//! - **Standing accept** yields one `more` completion per connection and
//!   takes turns with accepts queued behind it. Per-connection errors
//!   (`ECONNABORTED`, `EPROTO`, …) are reported with `more` and accepting
//!   goes on. Resource errors (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) are
//!   reported with `more` too, but the connection stays in the backlog and
//!   the listener stays readable, so the lane pauses for
//!   [`ACCEPT_BACKOFF`] before trying again instead of spinning.
//! - **Pooled receive** takes a free pool buffer only when the socket is
//!   readable and gives it back on `EAGAIN`, so an idle connection holds
//!   none; with no free buffer it is starved and resumes when the
//!   application drops one (the pool's waker wakes the engine). The pool's
//!   `in_kernel` count stays 0: no buffer is ever lent to the kernel.
//! - **Cancel and close** are synchronous: the operation leaves its lane
//!   and completes at once (aborted, or `TimedOut` for a deadline), exactly
//!   once. A close aborts every operation of the handle, then removes the
//!   socket from the set and closes it.

mod ops;
mod poller;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error;
use crate::op::{Completion, Extra, OpId, OpKind};
use crate::port::Config;
use crate::queue::Queue;
use crate::sys::common::{
    Cmd, EngineCounters, EngineFd, EngineShared, HandleMap, OpData, OpReq, Slab, TimerItem, Timers,
};

use ops::{Ctx, Lane, Mem, Op, Step};
use poller::Poller;

/// `epoll_event.u64` of the wake-up eventfd (handle ids start at 1 and are
/// never this large).
const WAKE: u64 = u64::MAX;
/// Attempts per lane and turn before the rest waits for the next turn.
const BUDGET: usize = 32;
/// How long a standing accept pauses after `EMFILE` and friends.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// A socket the engine owns.
struct HState {
    fd: EngineFd,
    /// `epoll_ctl(ADD)` refused the descriptor: every operation fails with
    /// this errno.
    reg_err: Option<i32>,
    readable: bool,
    writable: bool,
    /// The accept lane is pausing after a resource error.
    backoff: bool,
    /// On the engine's list of handles whose lanes ran out of budget.
    deferred: bool,
    /// A stream socket (vectored sends split at `IOV_MAX`; a send cut
    /// part-way breaks the write side).
    stream: bool,
    /// A send failed part-way: every later send completes aborted.
    send_broken: bool,
    lanes: [VecDeque<usize>; 4],
}

impl HState {
    /// Whether `op`, at the head of `lane`, may be attempted now.
    fn ready(&self, lane: Lane, op: &Op) -> bool {
        match lane {
            Lane::Read => self.readable && !op.starved,
            Lane::Accept => self.readable && !self.backoff,
            Lane::Write => self.writable,
            Lane::Connect => self.writable || matches!(op.mem, Mem::Connect(_, false)),
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
    poller: Poller,
    ops: Slab<Op>,
    handles: HandleMap<HState>,
    shared: Arc<EngineShared>,
    queue: Queue<Completion>,
    timers: Timers,
    /// Accept lanes pausing after a resource error: (until, handle).
    backoffs: BinaryHeap<Reverse<(Instant, u64)>>,
    events: Vec<libc::epoll_event>,
    out: Vec<Completion>,
    cmds: Vec<Cmd>,
    expired: Vec<TimerItem>,
    returned: Vec<u16>,
    /// Pool buffers the engine owns (free to read into).
    free_bufs: Vec<u16>,
    /// Pooled receives waiting for a buffer: (slot, op id).
    starved: Vec<(usize, u64)>,
    /// Handles whose lanes ran out of budget this turn.
    deferred: Vec<u64>,
}

impl EpollEngine {
    /// Creates the epoll set and registers the engine's wake-up eventfd.
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        queue: Queue<Completion>,
        _cfg: &Config,
    ) -> io::Result<EpollEngine> {
        let poller = Poller::new()?;
        poller.add(shared.wake_fd(), libc::EPOLLIN as u32, WAKE)?;
        let count = shared.pool.count;
        Ok(EpollEngine {
            poller,
            ops: Slab::new(),
            handles: HandleMap::default(),
            shared,
            queue,
            timers: Timers::new(),
            backoffs: BinaryHeap::new(),
            events: Vec::with_capacity(EVENTS),
            out: Vec::with_capacity(256),
            cmds: Vec::with_capacity(256),
            expired: Vec::new(),
            returned: Vec::new(),
            free_bufs: (0..count as u16).rev().collect(),
            starved: Vec::new(),
            deferred: Vec::new(),
        })
    }

    /// The engine thread's loop: turn until shut down, posting packets.
    pub(crate) fn run(mut self) {
        loop {
            self.turn(None, true);
            self.flush_to_queue();
            if self.shared.is_shutdown() {
                break;
            }
        }
        self.shutdown();
    }

    /// Moves completions made so far into the port's queue.
    pub(crate) fn flush_to_queue(&mut self) {
        if !self.out.is_empty() && !self.queue.post_batch(&mut self.out) {
            self.out.clear();
        }
    }

    /// One round: take commands, run what is ready, wait (if `block` and
    /// nothing is ready) up to `timeout` or the next timer, handle events.
    pub(crate) fn turn(&mut self, timeout: Option<Duration>, block: bool) {
        let before = self.out.len();
        self.commands();
        self.recycle();
        self.fire_timers();
        self.run_deferred();
        EngineCounters::set(&self.shared.counters.timers, self.timers.len() as u64);
        let may_block = block && self.out.is_empty() && self.deferred.is_empty();
        // `prepare_sleep` refuses while commands or returned pool buffers
        // wait, so nothing that arrived before `sleeping` was set is missed.
        if may_block && self.shared.prepare_sleep() {
            let ms = self.wait_ms(timeout);
            self.poll(ms);
            self.shared.woke();
        } else {
            self.poll(0);
        }
        self.recycle();
        self.fire_timers();
        EngineCounters::bump(
            &self.shared.counters.completions,
            self.out.len().saturating_sub(before) as u64,
        );
        EngineCounters::set(&self.shared.counters.timers, self.timers.len() as u64);
    }

    /// How long `epoll_wait` may block: the caller's timeout, the next
    /// timer, the next accept back-off; rounded up so it never wakes early
    /// and spins.
    fn wait_ms(&self, timeout: Option<Duration>) -> i32 {
        let now = Instant::now();
        let mut wait = timeout;
        let next_backoff = self.backoffs.peek().map(|Reverse((t, _))| *t);
        for t in [self.timers.next(), next_backoff].into_iter().flatten() {
            let d = t.saturating_duration_since(now);
            wait = Some(wait.map_or(d, |w| w.min(d)));
        }
        match wait {
            None => -1,
            Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        }
    }

    fn poll(&mut self, timeout_ms: i32) {
        EngineCounters::bump(&self.shared.counters.enters, 1);
        if let Err(e) = self.poller.wait(&mut self.events, timeout_ms) {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!("epoll_wait: {e}");
            }
            return;
        }
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let (bits, data) = (ev.events, ev.u64);
            if data == WAKE {
                self.shared.drain_wake();
            } else {
                self.on_event(data, bits);
            }
        }
        self.events = events;
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

    fn commands(&mut self) {
        self.shared.take_cmds(&mut self.cmds);
        let mut cmds = std::mem::take(&mut self.cmds);
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Register { hid, fd, key } => self.register(hid, fd, key),
                Cmd::Start(req) => self.start(req),
                Cmd::Cancel { hid, op } => {
                    let found = self.handles.get(&hid).and_then(|h| {
                        h.lanes
                            .iter()
                            .flatten()
                            .copied()
                            .find(|&i| self.ops.get(i).is_some_and(|o| o.id == op))
                    });
                    if let Some(i) = found {
                        self.cancel(i, false);
                    }
                }
                Cmd::Close { hid } => self.close_handle(hid),
                Cmd::Timer { at, pkt } => self.timers.add(at, TimerItem::Post(pkt)),
            }
        }
        self.cmds = cmds;
    }

    fn register(&mut self, hid: u64, fd: EngineFd, key: u64) {
        let stream = socket2::SockRef::from(&fd)
            .r#type()
            .map_or(true, |t| t == socket2::Type::STREAM);
        let reg_err = match self.poller.add(fd.as_raw_fd(), poller::SOCKET_EVENTS, hid) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(
                    "epoll: cannot watch handle {hid} (key {key}): {e}; its operations will fail"
                );
                Some(e.raw_os_error().unwrap_or(libc::EINVAL))
            }
        };
        self.handles.insert(
            hid,
            HState {
                fd,
                reg_err,
                readable: true,
                writable: true,
                backoff: false,
                deferred: false,
                stream,
                send_broken: false,
                lanes: Default::default(),
            },
        );
    }

    fn start(&mut self, req: OpReq) {
        let OpReq {
            hid,
            key,
            id,
            token,
            deadline,
            data,
        } = req;
        let (kind, lane, mem, multishot) = match data {
            OpData::Accept => (OpKind::Accept, Lane::Accept, Mem::None, false),
            OpData::AcceptMulti => (OpKind::Accept, Lane::Accept, Mem::None, true),
            OpData::Connect(a) => (
                OpKind::Connect,
                Lane::Connect,
                Mem::Connect(a, false),
                false,
            ),
            OpData::Recv(b) => (OpKind::Recv, Lane::Read, Mem::Buf(b), false),
            OpData::RecvPooled => (OpKind::RecvPooled, Lane::Read, Mem::None, true),
            OpData::RecvFrom(b) => (OpKind::RecvFrom, Lane::Read, Mem::Buf(b), false),
            OpData::Send(b) => (OpKind::Send, Lane::Write, Mem::Buf(b), false),
            OpData::SendV(v) => (OpKind::Send, Lane::Write, Mem::Vectored(v), false),
            OpData::SendTo(b, a) => (OpKind::SendTo, Lane::Write, Mem::SendTo(b, a), false),
        };
        let Some(h) = self.handles.get_mut(&hid) else {
            // Closed after the port let this start: it still completes
            // once, under the handle's key.
            self.out
                .push(unstarted(kind, key, token, id, error::handle_closed(), mem));
            return;
        };
        if let Some(errno) = h.reg_err {
            let e = io::Error::from_raw_os_error(errno);
            self.out.push(unstarted(kind, key, token, id, e, mem));
            return;
        }
        if lane == Lane::Write && h.send_broken {
            let e = error::aborted();
            self.out.push(unstarted(kind, key, token, id, e, mem));
            return;
        }
        let idx = self.ops.insert(Op {
            hid,
            id,
            token,
            key,
            kind,
            lane,
            mem,
            done: 0,
            multishot,
            starved: false,
        });
        let q = &mut h.lanes[lane as usize];
        q.push_back(idx);
        let head = q.len() == 1;
        if let Some(d) = deadline {
            self.timers
                .add(d, TimerItem::Deadline { slot: idx, op: id });
        }
        if head {
            self.run_lane(hid, lane);
        }
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
            let Some(h) = self.handles.get(&hid) else {
                return;
            };
            let Some(&idx) = h.lanes[lane as usize].front() else {
                return;
            };
            let Some(op) = self.ops.get_mut(idx) else {
                debug_assert!(false, "lane holds a free slot");
                return;
            };
            if lane == Lane::Write && h.send_broken {
                // A send failed part-way: what waits behind it writes nothing.
                let h = self.handles.get_mut(&hid).expect("looked up above");
                h.lanes[lane as usize].pop_front();
                self.finish(idx, Err(error::aborted()), Extra::None);
                continue;
            }
            if !h.ready(lane, op) {
                return;
            }
            if budget == 0 {
                self.defer(hid);
                return;
            }
            budget -= 1;
            let mut cx = Ctx {
                pool: &self.shared.pool,
                free: &mut self.free_bufs,
                out: &mut self.out,
                stream: h.stream,
            };
            let step = ops::attempt(op, h.fd.as_fd(), &mut cx);
            let (op_id, multishot) = (op.id, op.multishot);
            let h = self.handles.get_mut(&hid).expect("looked up above");
            match step {
                Step::Done(r, extra) => {
                    h.lanes[lane as usize].pop_front();
                    self.finish(idx, r, extra);
                }
                Step::Again => {
                    // A standing accept takes turns with the accepts queued
                    // behind it.
                    if lane == Lane::Accept && multishot {
                        h.lanes[lane as usize].rotate_left(1);
                    }
                }
                Step::WouldBlock => {
                    h.clear_ready(lane);
                    return;
                }
                Step::Starved => {
                    if let Some(op) = self.ops.get_mut(idx) {
                        op.starved = true;
                    }
                    self.starved.push((idx, op_id));
                    EngineCounters::bump(&self.shared.counters.starved, 1);
                    return;
                }
                Step::BackOff => {
                    h.backoff = true;
                    self.backoffs
                        .push(Reverse((Instant::now() + ACCEPT_BACKOFF, hid)));
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

    /// Completes slot `idx` (already out of its lane) with `result`, handing
    /// back what it owned.
    fn finish(&mut self, idx: usize, result: io::Result<usize>, extra: Extra) {
        let Some(op) = self.ops.remove(idx) else {
            return;
        };
        self.timers.op_done(op.id);
        let mut c = Completion::new(op.kind, op.key, op.token, OpId(op.id), result);
        if c.result.is_err() {
            // What a send sent before it failed (0 for anything else).
            c.partial = op.done;
            if op.done > 0 && op.kind == OpKind::Send {
                if let Some(h) = self.handles.get_mut(&op.hid) {
                    // Part of a message is on the wire: nothing more may
                    // follow it (see `Completion::transferred`).
                    h.send_broken |= h.stream;
                }
            }
        }
        match op.mem {
            Mem::Buf(b) | Mem::SendTo(b, _) => c.buf = Some(b),
            Mem::Vectored(v) => c.extra = Extra::Vectored(v),
            Mem::Connect(..) | Mem::None => {}
        }
        if !matches!(extra, Extra::None) {
            c.extra = extra;
        }
        self.out.push(c);
    }

    /// Ends slot `idx` early (a cancel or a deadline): out of its lane,
    /// completed now, and the lane moves on.
    fn cancel(&mut self, idx: usize, timed_out: bool) {
        let Some(op) = self.ops.get(idx) else { return };
        let (hid, lane) = (op.hid, op.lane);
        let mut was_head = false;
        if let Some(h) = self.handles.get_mut(&hid) {
            let q = &mut h.lanes[lane as usize];
            was_head = q.front() == Some(&idx);
            if let Some(p) = q.iter().position(|&i| i == idx) {
                q.remove(p);
            }
        }
        let e = if timed_out {
            error::timed_out()
        } else {
            error::aborted()
        };
        self.finish(idx, Err(e), Extra::None);
        if was_head {
            self.run_lane(hid, lane);
        }
    }

    /// `closesocket`: aborts every operation of the handle (in the order
    /// they were started), then takes the socket out of the set and closes
    /// it — after its last completion, so the descriptor cannot be reused
    /// early.
    fn close_handle(&mut self, hid: u64) {
        let Some(mut h) = self.handles.remove(&hid) else {
            return;
        };
        let mut idxs: Vec<usize> = h.lanes.iter_mut().flat_map(|q| q.drain(..)).collect();
        idxs.sort_by_key(|&i| self.ops.get(i).map_or(0, |o| o.id));
        for i in idxs {
            self.finish(i, Err(error::aborted()), Extra::None);
        }
        if h.reg_err.is_none() {
            if let Err(e) = self.poller.delete(h.fd.as_raw_fd()) {
                tracing::debug!("epoll: EPOLL_CTL_DEL for handle {hid}: {e}");
            }
        }
        drop(h);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.timers.next().is_some_and(|t| t <= now) {
            let mut items = std::mem::take(&mut self.expired);
            self.timers.expired(now, &mut items);
            for it in items.drain(..) {
                match it {
                    TimerItem::Post(p) => self.out.push(p),
                    TimerItem::Deadline { slot, op } => {
                        if self.ops.get(slot).is_some_and(|o| o.id == op) {
                            self.cancel(slot, true);
                        }
                    }
                    // This engine backs off per handle (`backoffs`).
                    TimerItem::Rearm { .. } => {}
                }
            }
            self.expired = items;
        }
        while let Some(&Reverse((t, hid))) = self.backoffs.peek() {
            if t > now {
                break;
            }
            self.backoffs.pop();
            if let Some(h) = self.handles.get_mut(&hid) {
                h.backoff = false;
                self.run_lane(hid, Lane::Accept);
            }
        }
    }

    /// Takes back pool buffers the application dropped; resumes pooled
    /// receives that starved for them.
    fn recycle(&mut self) {
        self.shared.pool.take_returned(&mut self.returned);
        if self.returned.is_empty() {
            return;
        }
        self.free_bufs.append(&mut self.returned);
        let starved = std::mem::take(&mut self.starved);
        for (idx, id) in starved {
            let Some(op) = self.ops.get_mut(idx) else {
                continue;
            };
            if op.id != id || !op.starved {
                continue;
            }
            op.starved = false;
            let hid = op.hid;
            self.run_lane(hid, Lane::Read);
        }
    }

    /// Stops: aborts every operation and closes every descriptor. Nothing
    /// is held by the kernel, so this never waits.
    pub(crate) fn shutdown(&mut self) {
        // Commands that raced with the shutdown: dropping them closes their
        // descriptors and frees their buffers.
        self.shared.take_cmds(&mut self.cmds);
        self.cmds.clear();
        let hids: Vec<u64> = self.handles.keys().copied().collect();
        for hid in hids {
            self.close_handle(hid);
        }
        self.timers.clear();
        EngineCounters::set(&self.shared.counters.timers, 0);
        self.backoffs.clear();
        self.starved.clear();
        self.deferred.clear();
        self.out.clear();
    }
}

impl Drop for EpollEngine {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.shutdown();
        }
    }
}

/// The completion of an operation that never reached a lane.
fn unstarted(kind: OpKind, key: u64, token: u64, id: u64, e: io::Error, mem: Mem) -> Completion {
    let mut c = Completion::new(kind, key, token, OpId(id), Err(e));
    match mem {
        Mem::Buf(b) | Mem::SendTo(b, _) => c.buf = Some(b),
        Mem::Vectored(v) => c.extra = Extra::Vectored(v),
        Mem::Connect(..) | Mem::None => {}
    }
    c
}
