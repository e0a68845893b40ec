//! The Windows engine: the kernel's completion port runs the operations;
//! this is the state around them and the translation of its packets.
//!
//! * this module: the port's state ([`Shared`]: counters, the receive pool,
//!   the handles, the timers, close), the handle's state ([`HandleShared`]),
//!   and the timer items;
//! * `handle`: a handle's operations — start, lanes, cancel, close;
//! * `complete`: a dequeued packet → what the application sees;
//! * `opbox`: the objects a packet's `lpOverlapped` points to (the
//!   operation box with its `OVERLAPPED`, the posted packet);
//! * `ops`: the operations by family — each one's Winsock call and the
//!   meaning of its packets side by side.
//!
//! # Ownership of an operation
//!
//! Every operation is one heap box (`OpBox`) whose first field is its
//! `OVERLAPPED`. From the moment it is handed to Winsock (or posted with
//! `PostQueuedCompletionStatus`) until its packet is dequeued, the kernel
//! owns it: nothing touches its operation, nothing frees it — not a cancel,
//! not a close, not a port close. The thread that dequeues its packet owns
//! it again, under its handle's lock: it issues it again (standing
//! operations, the rest of a short send), parks it, or turns it into a
//! `Completion` and frees it. The handle's state lists every live operation
//! under that lock, so that `cancel`, `close` and deadlines can find it;
//! while the kernel holds one they only pass its address to `CancelIoEx`.
//!
//! # No `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`
//!
//! The flag is deliberately **not** set. Every started operation queues
//! exactly one packet, whether it completed synchronously or not, and every
//! completion the application sees is a packet some `get` dequeued. Reasons:
//! (1) with a non-IFS LSP installed, sockets with the flag never get their
//! completions (KB 2568167), and checking `XP1_IFS_HANDLES` per provider is
//! one more thing to get wrong; (2) the public contract is that completions
//! come out of `get`, through the kernel's LIFO wake-up and concurrency
//! limit — an inline success would have to be re-posted with
//! `PostQueuedCompletionStatus`, costing the same system call the kernel
//! spends queueing it; (3) one code path: an inline result can be neither
//! handled twice (once inline, once from its packet) nor lost. Synchronous
//! *failures* queue no packet in either mode; the library posts those
//! itself (`KEY_LOCAL`).
//!
//! # Order
//!
//! As on Linux, each handle has a read lane (recv, pooled recv, recv_from)
//! and a write lane (send, vectored send, send_to) — [`crate::kit::lanes`] —
//! each with one operation in the kernel at a time; the next one is issued
//! by the thread that dequeues the previous one's packet. Winsock keeps
//! overlapped sends in issue order by itself, but issue order across
//! application threads is not the order of the `send` calls, and a stream
//! send that completes short (which WSASend on TCP does not do, but a
//! layered provider may) must be finished before the next starts.

mod complete;
mod handle;
mod opbox;
mod ops;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use windows_sys::Win32::Networking::WinSock::SOCKET;
use windows_sys::Win32::System::IO::OVERLAPPED_ENTRY;

use super::cport::{CompletionPort, Got};
use super::timer::{Fire, Timers};
use crate::kit::lanes::{Lane, Lanes};
use crate::kit::lock;
use crate::kit::phase::{Park, Phase};
use crate::kit::starved::Starved;
use crate::op::{Completion, OpKind};
use crate::pool::{PoolShared, ReturnWaker};
use crate::running::{thread_tag, SlotOwner};
use crate::timers::{OpTimer, Role};
use opbox::{PostPacket, Slot};
use ops::Local;

/// Kernel completion keys (the table in `sys::windows`).
pub(crate) const KEY_IO: usize = 1;
const KEY_LOCAL: usize = 2;
const KEY_POST: usize = 3;
const KEY_ABANDON: usize = 4;

/// The "posting thread" of operation completions: no thread has this tag
/// (thread tags start at 1), so each one counts as a hand-off, as from a
/// Linux engine thread.
const KERNEL_TAG: u64 = 0;

/// What a dequeued packet means for the application.
pub(crate) enum Delivery {
    /// A completion to hand out, with the tag of the thread that queued it
    /// ([`KERNEL_TAG`] for operation completions).
    Deliver(Completion, u64),
    /// Internal work only (an operation issued again, a readiness that
    /// found nothing).
    Nothing,
    /// The port was closed (a sentinel).
    Abandon,
}

/// What a timer does when it fires.
pub(crate) enum TimerItem {
    /// `post_after`: queue a timer packet.
    Post { key: u64, token: u64, id: u64 },
    /// Operation `op`'s deadline passed.
    Deadline { h: Weak<HandleShared>, op: u64 },
    /// A parked standing operation's back-off is over.
    Resume { h: Weak<HandleShared>, op: u64 },
}

impl OpTimer for TimerItem {
    fn owner(&self) -> Option<(u64, Role)> {
        match *self {
            TimerItem::Post { .. } => None,
            TimerItem::Deadline { op, .. } => Some((op, Role::Deadline)),
            TimerItem::Resume { op, .. } => Some((op, Role::Retry)),
        }
    }
}

/// The free pool buffers and the pooled receives waiting for one.
///
/// A starved receive is resumed through a `KEY_LOCAL` packet, read by
/// whichever thread dequeues it; until then one free buffer is *kept* for
/// it. Receives are resumed oldest first while free buffers are left that
/// are not kept, so no more resume than there are buffers for; a receive
/// that comes with new data takes a buffer only beyond the kept ones (or
/// parks behind the older ones).
struct PoolState {
    free: Vec<u16>,
    /// Starved receives: their handle and operation id.
    starved: Starved<Weak<HandleShared>>,
    /// Free buffers kept for resumed receives whose packet has not been
    /// read yet (never more than `free.len()`).
    kept: usize,
}

/// Everything of a port that handles and operations share.
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) cport: CompletionPort,
    pub(crate) limit: usize,
    pub(crate) closed: AtomicBool,
    /// Threads inside GQCS(Ex) through `get`/`get_many`.
    pub(crate) waiting: AtomicUsize,
    /// Threads between a `get` that returned a packet and their next `get`.
    pub(crate) running: AtomicUsize,
    pub(crate) handoffs: AtomicU64,
    pub(crate) delivered: AtomicU64,
    /// Operation packets processed (`EngineStats::completions`).
    pub(crate) completions: AtomicU64,
    /// GQCS(Ex) calls (`EngineStats::enters`).
    pub(crate) enters: AtomicU64,
    /// Pooled receives that found the pool empty and parked.
    pub(crate) starved: AtomicU64,
    /// Operation boxes and posted-packet boxes alive (close drains to 0).
    live: AtomicUsize,
    pub(crate) next_id: AtomicU64,
    pub(crate) pool: Arc<PoolShared>,
    pool_state: Mutex<PoolState>,
    handles: Mutex<HashMap<u64, Weak<HandleShared>>>,
    pub(crate) timers: Timers<TimerItem>,
}

/// Pool buffers came back: resume the pooled receives that starved for
/// them. The pool holds this weakly (the port owns the pool, not the other
/// way round).
impl ReturnWaker for Shared {
    fn buffers_returned(&self) {
        self.resume_starved();
    }
}

impl Fire<TimerItem> for Shared {
    fn fire(&self, item: TimerItem) {
        match item {
            TimerItem::Post { key, token, id } => {
                let _ = self.post_packet(OpKind::Timer, key, token, id, 0);
            }
            TimerItem::Deadline { h, op } => {
                if let Some(h) = h.upgrade() {
                    h.cancel_op(op, true);
                }
            }
            TimerItem::Resume { h, op } => {
                if let Some(h) = h.upgrade() {
                    h.resume_parked(op, Park::BackOff);
                }
            }
        }
    }
}

impl Shared {
    pub(crate) fn new(
        id: u64,
        limit: usize,
        pool_bufs: usize,
        pool_buf_size: usize,
    ) -> io::Result<Arc<Shared>> {
        let cport = CompletionPort::new(limit)?;
        let pool = PoolShared::new(pool_bufs, pool_buf_size);
        let free = (0..pool.count as u16).rev().collect();
        let s = Arc::new_cyclic(|me: &Weak<Shared>| Shared {
            id,
            cport,
            limit,
            closed: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            handoffs: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            enters: AtomicU64::new(0),
            starved: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            pool,
            pool_state: Mutex::new(PoolState {
                free,
                starved: Starved::default(),
                kept: 0,
            }),
            handles: Mutex::new(HashMap::new()),
            timers: Timers::new(me.clone()),
        });
        let weak: Weak<Shared> = Arc::downgrade(&s);
        let waker: Weak<dyn ReturnWaker> = weak;
        s.pool.set_waker(waker);
        Ok(s)
    }

    /// Queues an application (or timer) packet.
    pub(crate) fn post_packet(
        &self,
        kind: OpKind,
        key: u64,
        token: u64,
        id: u64,
        bytes: usize,
    ) -> io::Result<()> {
        // Count first, then check `closed`: a close that set `closed` before
        // this load sees the count and drains the packet (see `close`).
        self.live.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(crate::error::port_closed());
        }
        let p = PostPacket {
            kind,
            key,
            token,
            id,
            bytes,
            from: thread_tag(),
        };
        p.post(&self.cport, KEY_POST).inspect_err(|_| {
            self.live.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Queues operation `slot` with a result the library decided
    /// (`KEY_LOCAL`). From here the kernel owns it until the packet is
    /// dequeued.
    fn post_local(&self, slot: &mut Slot) {
        slot.post(&self.cport, KEY_LOCAL);
    }

    /// Wakes one waiter with a sentinel.
    pub(crate) fn post_abandon(&self) {
        let _ = self.cport.post(KEY_ABANDON, 0, std::ptr::null_mut());
    }

    /// One packet within `ms` milliseconds.
    pub(crate) fn wait_one(&self, ms: u32) -> Got {
        self.enters.fetch_add(1, Ordering::Relaxed);
        self.cport.wait_one(ms)
    }

    /// Up to `entries.len()` packets within `ms` milliseconds.
    pub(crate) fn wait_many(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        ms: u32,
    ) -> Result<usize, Got> {
        self.enters.fetch_add(1, Ordering::Relaxed);
        self.cport.wait_many(entries, ms)
    }

    pub(crate) fn register(&self, h: &Arc<HandleShared>) -> io::Result<()> {
        let mut m = lock(&self.handles);
        if self.closed.load(Ordering::SeqCst) {
            return Err(crate::error::port_closed());
        }
        m.insert(h.hid, Arc::downgrade(h));
        Ok(())
    }

    fn unregister(&self, hid: u64) {
        lock(&self.handles).remove(&hid);
    }

    /// A pool buffer for operation `op` of `h` — the one kept for it if
    /// `kept` (which this clears), else one nobody is promised — or `None`
    /// after queueing it as starved (it is resumed when a buffer comes
    /// back). One lock makes "no buffer" and "wake me" atomic against
    /// `PooledBuf::drop`.
    fn take_buf_or_park(&self, h: &Arc<HandleShared>, op: u64, kept: &mut bool) -> Option<u16> {
        let mut ps = lock(&self.pool_state);
        if std::mem::take(kept) {
            ps.kept -= 1;
        }
        if ps.free.len() <= ps.kept {
            let PoolState { free, .. } = &mut *ps;
            self.pool.take_returned(free);
        }
        if ps.free.len() > ps.kept {
            return ps.free.pop();
        }
        ps.starved.push(Arc::downgrade(h), op);
        None
    }

    /// Buffer `bid`, taken but not filled, is free again.
    fn give_back(&self, bid: u16) {
        lock(&self.pool_state).free.push(bid);
    }

    /// The buffer kept for a resumed receive is free again: its packet
    /// ended it before it read.
    fn unkeep(&self) {
        lock(&self.pool_state).kept -= 1;
    }

    /// Resumes starved receives, oldest first, while free buffers are left
    /// that are not kept for an earlier one; keeps one for each. Called
    /// with no handle's lock held (it takes theirs).
    fn resume_starved(&self) {
        loop {
            let (h, op) = {
                let mut ps = lock(&self.pool_state);
                let PoolState {
                    free,
                    starved,
                    kept,
                } = &mut *ps;
                self.pool.take_returned(free);
                if free.len() <= *kept {
                    return;
                }
                let Some(next) = starved.pop_first(|h, _| h.strong_count() > 0) else {
                    return;
                };
                *kept += 1;
                next
            };
            // Its handle's lock is taken only now (handle, then pool, is the
            // order everywhere): an entry whose operation ended or is being
            // stopped meanwhile gives its buffer up again.
            let resumed = h
                .upgrade()
                .is_some_and(|h| h.resume_parked(op, Park::Starved));
            if !resumed {
                self.unkeep();
            }
        }
    }

    // ---- the user-space `running` statistic ------------------------------
    //
    // The thread-local record is the one the Linux queue uses
    // (`crate::running`), so `get`, `blocking()` and thread exit count the same
    // way on every backend.

    /// The calling thread stops counting as running on this port. Returns
    /// whether it was.
    pub(crate) fn leave_running(&self) -> bool {
        let was = crate::running::leave_running(self.id);
        if was {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        was
    }

    pub(crate) fn enter_running(self: &Arc<Self>) {
        self.running.fetch_add(1, Ordering::SeqCst);
        // Thread-local storage being torn down: do not count.
        if !crate::running::enter_running(self.id, || self.owner_ref()) {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// How a thread's running record refers to this port (weakly).
    pub(crate) fn owner_ref(self: &Arc<Self>) -> crate::running::OwnerRef {
        let strong: Arc<dyn SlotOwner> = self.clone();
        Arc::downgrade(&strong)
    }

    // ---- close --------------------------------------------------------------

    /// `CloseHandle(port)`, done so it works under Wine too: mark closed,
    /// stop the timers, close every handle (cancelling its operations), post
    /// one sentinel per waiting thread, then drain the queue until every
    /// operation's packet has come back and its memory is freed.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.timers.shutdown();
        let hs: Vec<Weak<HandleShared>> = lock(&self.handles).drain().map(|(_, w)| w).collect();
        for w in hs {
            if let Some(h) = w.upgrade() {
                h.user_closed.store(true, Ordering::SeqCst);
                h.close();
            }
        }
        // Windows wakes every waiter with ERROR_ABANDONED_WAIT_0 when the
        // port handle is closed, but Wine never does, and closing the handle
        // now would let the kernel drop packets whose memory we still must
        // reclaim. So: one sentinel per thread inside GQCS. A thread counts
        // itself in `waiting` *before* it checks `closed`, so every thread
        // that may block is either counted here or sees `closed` and stays
        // out.
        let n = self.waiting.load(Ordering::SeqCst);
        for _ in 0..n {
            self.post_abandon();
        }
        self.drain();
    }

    fn drain(&self) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.live.load(Ordering::SeqCst) > 0 && Instant::now() < give_up {
            match self.wait_one(50) {
                Got::Packet(pkt) if pkt.key == KEY_ABANDON => {
                    // Meant for a waiter: put it back if one may still need it.
                    if self.waiting.load(Ordering::SeqCst) > 0 {
                        self.post_abandon();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Got::Packet(pkt) => drop(self.process(pkt)),
                Got::TimedOut => {}
                Got::Abandoned => break,
            }
        }
        let left = self.live.load(Ordering::SeqCst);
        if left > 0 {
            tracing::error!("iocp: {left} operations still held by the kernel 10 s after close; leaking their memory");
        }
    }
}

/// A thread's running record gives its slot back through this (thread exit,
/// or the thread moved to another port).
impl SlotOwner for Shared {
    fn release(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
    fn reacquire(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handle's record of one live operation.
struct OpCtl {
    id: u64,
    lane: Option<Lane>,
    phase: Phase,
    /// Its box, and whether the kernel holds it.
    slot: Slot,
    /// The library packet queued for it carries this (`None`: none is
    /// queued, or its packet is the kernel's).
    local: Option<Local>,
}

/// A handle's live operations and their order.
struct HState {
    ops: Vec<OpCtl>,
    lanes: Lanes<u64>,
    closing: bool,
}

impl HState {
    fn find(&self, id: u64) -> Option<usize> {
        self.ops.iter().position(|c| c.id == id)
    }
}

/// What a handle owns: a socket, or a file's or a pipe's `HANDLE` (held
/// only to be closed when dropped).
#[allow(dead_code)]
pub(crate) enum Owned {
    Socket(socket2::Socket),
    Os(crate::sys::contract::OsHandle),
}

/// Who uses the socket besides the operations: `with_socket` borrowers.
struct SockUse {
    /// The socket (or file, or pipe), until it is closed.
    owned: Option<Owned>,
    readers: usize,
    /// The last operation is done; the last borrower closes the socket.
    close_pending: bool,
}

/// A socket, a file or a pipe associated with the port.
pub(crate) struct HandleShared {
    pub(crate) hid: u64,
    pub(crate) key: u64,
    /// The socket's value for Winsock calls (a file's or a pipe's `HANDLE`
    /// value, for `ReadFile`, `WriteFile` and `CancelIoEx`); open while an
    /// operation or a borrower may use it (`sock_use`).
    pub(crate) sock: SOCKET,
    pub(crate) port: Arc<Shared>,
    /// A stream socket: a vectored send may go out in several calls, and a
    /// send cut part-way breaks the write side.
    stream: bool,
    /// `Handle::close` was called (or the port closed it).
    pub(crate) user_closed: AtomicBool,
    state: Mutex<HState>,
    sock_use: Mutex<SockUse>,
    /// The address family it is bound to (what an accept socket needs).
    family: OnceLock<u16>,
}
