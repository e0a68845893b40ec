//! Operations on the kernel's completion port: the heap objects that embed
//! an `OVERLAPPED`, the per-handle state (lanes, pending operations, close),
//! and the translation of dequeued packets into [`Completion`]s.
//!
//! # Ownership of an operation (iocp-semantics.md B.9)
//!
//! Every operation is one `Box<OpBox>` whose first field is its
//! `OVERLAPPED`. From the moment it is handed to Winsock (or posted with
//! `PostQueuedCompletionStatus`) until its packet is dequeued, the kernel
//! owns it: the box is reachable only as a raw pointer, nothing reads or
//! writes it, nothing frees it — not a cancel, not a close, not a port
//! close. The thread that dequeues its packet owns it again; it either
//! re-issues it (standing operations, unfinished sends) or turns it into a
//! `Completion` and frees it. The handle's state lists every live operation
//! (`OpCtl`) under a mutex so that `cancel`, `close` and deadlines can find
//! it; they never touch the box itself while the kernel holds it, except to
//! pass its address to `CancelIoEx`.
//!
//! # No FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
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
//! spends queueing it; (3) one code path: no double processing, no lost
//! inline result (B.5's classic bugs). Synchronous *failures* queue no
//! packet in either mode; the library posts those itself (`KEY_LOCAL`).
//!
//! # Order
//!
//! As on Linux, each handle has a read lane (recv, pooled recv, recv_from)
//! and a write lane (send, vectored send, send_to), each with one operation
//! in the kernel at a time; the next one is issued by the thread that
//! dequeues the previous one's packet. Winsock keeps overlapped sends in
//! issue order by itself, but issue order across application threads is not
//! the order of the `send` calls, and a stream send that completes short
//! (which WSASend on TCP does not do, but a layered provider may) must be
//! finished before the next starts.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Type};
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, RtlNtStatusToDosError, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{
    closesocket, recv, WSAGetLastError, WSARecv, WSARecvFrom, WSASend, WSASendTo, AF_INET6,
    SOCKADDR, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR, WSABUF, WSAEMSGSIZE, WSAEWOULDBLOCK,
    WSA_IO_PENDING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetQueuedCompletionStatus, GetQueuedCompletionStatusEx,
    PostQueuedCompletionStatus, OVERLAPPED, OVERLAPPED_ENTRY,
};

use super::map_win32;
use super::net::{self, ACCEPT_ADDR_LEN};
use super::timer::{TimerItem, Timers};
use crate::buf::Buf;
use crate::error::{self, SubmitError};
use crate::op::{Completion, Extra, OpId, OpKind};
use crate::pool::{PoolShared, ReturnWaker};
use crate::running::{thread_tag, SlotOwner};

/// Kernel completion keys (see the module doc of `sys::windows`).
pub(crate) const KEY_IO: usize = 1;
const KEY_LOCAL: usize = 2;
const KEY_POST: usize = 3;
const KEY_ABANDON: usize = 4;

/// The "posting thread" of operation completions: no thread has this tag
/// (thread tags start at 1), so each one counts as a hand-off.
const KERNEL_TAG: u64 = 0;

const ERROR_MORE_DATA: u32 = 234;
const ERROR_ABANDONED_WAIT_0: u32 = 735;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use crate::op::OpData;

// ---------------------------------------------------------------------------
// The port

/// The port's kernel handle.
pub(crate) struct PortHandle(pub(crate) HANDLE);

// SAFETY: a completion port handle may be used from any thread; the value is
// only closed in `Shared::drop`, when no other reference exists.
unsafe impl Send for PortHandle {}
// SAFETY: as above; every API used on it is thread-safe.
unsafe impl Sync for PortHandle {}

/// A packet as dequeued.
pub(crate) struct Raw {
    key: usize,
    ov: *mut OVERLAPPED,
    bytes: u32,
    /// `None` for success, else the Win32 code.
    status: Option<u32>,
}

/// What `get` got from the kernel.
pub(crate) enum Got {
    Packet(Raw),
    TimedOut,
    Abandoned,
}

/// What a dequeued packet means for the application.
pub(crate) enum Step {
    /// A completion to hand out, with the tag of the thread that queued it
    /// (`KERNEL_TAG` for operation completions).
    Deliver(Completion, Option<u64>),
    /// Internal work only (a re-issue, a readiness that found nothing).
    Nothing,
    /// The port was closed (a sentinel).
    Abandon,
}

struct PostPacket {
    kind: OpKind,
    key: u64,
    token: u64,
    id: u64,
    bytes: usize,
    from: u64,
}

struct PoolState {
    free: Vec<u16>,
    starved: Vec<(Weak<HandleShared>, u64)>,
}

/// Everything of a port that handles and operations share.
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) iocp: PortHandle,
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
    pub(crate) timers: Timers,
}

/// Pool buffers came back: resume the pooled receives that starved. The
/// pool holds this weakly (the port owns the pool, not the other way round).
impl ReturnWaker for Shared {
    fn buffers_returned(&self) {
        let starved = {
            let mut ps = lock(&self.pool_state);
            let PoolState { free, starved } = &mut *ps;
            self.pool.take_returned(free);
            std::mem::take(starved)
        };
        for (h, op) in starved {
            if let Some(h) = h.upgrade() {
                h.resume_parked(op);
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
        // SAFETY: creates a new port; no pointers are passed.
        let h = unsafe {
            CreateIoCompletionPort(
                INVALID_HANDLE_VALUE,
                std::ptr::null_mut(),
                0,
                limit.min(u32::MAX as usize) as u32,
            )
        };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        let pool = PoolShared::new(pool_bufs, pool_buf_size);
        let free = (0..pool.count as u16).rev().collect();
        let s = Arc::new(Shared {
            id,
            iocp: PortHandle(h),
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
                starved: Vec::new(),
            }),
            handles: Mutex::new(HashMap::new()),
            timers: Timers::default(),
        });
        let weak: Weak<Shared> = Arc::downgrade(&s);
        let waker: Weak<dyn ReturnWaker> = weak;
        s.pool.set_waker(waker);
        Ok(s)
    }

    /// `PostQueuedCompletionStatus` of an application (or timer) packet.
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
            return Err(error::port_closed());
        }
        let p = Box::into_raw(Box::new(PostPacket {
            kind,
            key,
            token,
            id,
            bytes,
            from: thread_tag(),
        }));
        // SAFETY: the port handle is open while `self` lives; `p` is an opaque
        // value to the kernel (never dereferenced by it) that we reclaim when
        // the packet is dequeued.
        let ok =
            unsafe { PostQueuedCompletionStatus(self.iocp.0, 0, KEY_POST, p as *const OVERLAPPED) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the post failed, so the kernel never saw `p`.
            drop(unsafe { Box::from_raw(p) });
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }

    /// Queues operation `p` with a result the library decided (`KEY_LOCAL`).
    /// From here the kernel owns the box until the packet is dequeued.
    fn post_local(&self, p: *mut OpBox) {
        for attempt in 0..100 {
            // SAFETY: the port handle is open (an OpBox holds a reference to
            // `Shared`); `p` is a live op box, opaque to the kernel.
            let ok = unsafe {
                PostQueuedCompletionStatus(self.iocp.0, 0, KEY_LOCAL, p as *const OVERLAPPED)
            };
            if ok != 0 {
                return;
            }
            if attempt == 0 {
                tracing::warn!(
                    "iocp: PostQueuedCompletionStatus failed: {}; retrying",
                    io::Error::last_os_error()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Out of kernel memory for 1 s: the operation's completion is lost;
        // its box is leaked (never freed under anyone).
        tracing::error!("iocp: could not queue a completion for 1 s; an operation is lost");
    }

    pub(crate) fn post_abandon(&self) {
        // SAFETY: a packet with a NULL overlapped; the handle is open.
        unsafe { PostQueuedCompletionStatus(self.iocp.0, 0, KEY_ABANDON, std::ptr::null()) };
    }

    /// `GetQueuedCompletionStatus` with `ms` milliseconds.
    pub(crate) fn wait_one(&self, ms: u32) -> Got {
        let mut bytes = 0u32;
        let mut key = 0usize;
        let mut ov: *mut OVERLAPPED = std::ptr::null_mut();
        self.enters.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the out-parameters are live locals; the handle is open.
        let ok =
            unsafe { GetQueuedCompletionStatus(self.iocp.0, &mut bytes, &mut key, &mut ov, ms) };
        if ok != 0 {
            return Got::Packet(Raw {
                key,
                ov,
                bytes,
                status: None,
            });
        }
        // SAFETY: no preconditions.
        let err = unsafe { GetLastError() };
        if ov.is_null() {
            // No packet: the out-parameters are stale and ignored (B.3).
            return match err {
                WAIT_TIMEOUT => Got::TimedOut,
                ERROR_ABANDONED_WAIT_0 => Got::Abandoned,
                other => {
                    tracing::error!(
                        "iocp: GetQueuedCompletionStatus failed: {}",
                        io::Error::from_raw_os_error(other as i32)
                    );
                    Got::Abandoned
                }
            };
        }
        Got::Packet(Raw {
            key,
            ov,
            bytes,
            status: Some(err),
        })
    }

    /// `GetQueuedCompletionStatusEx` into `entries` (its length is the max).
    pub(crate) fn wait_many(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        ms: u32,
    ) -> Result<usize, Got> {
        let mut n = 0u32;
        self.enters.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `entries` is a live, writable slice of the given length.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.iocp.0,
                entries.as_mut_ptr(),
                entries.len().min(u32::MAX as usize) as u32,
                &mut n,
                ms,
                0,
            )
        };
        if ok == 0 {
            // SAFETY: no preconditions.
            let err = unsafe { GetLastError() };
            // `n` is not trustworthy on FALSE (Wine leaves it at 1).
            return Err(match err {
                WAIT_TIMEOUT => Got::TimedOut,
                ERROR_ABANDONED_WAIT_0 => Got::Abandoned,
                other => {
                    tracing::error!(
                        "iocp: GetQueuedCompletionStatusEx failed: {}",
                        io::Error::from_raw_os_error(other as i32)
                    );
                    Got::Abandoned
                }
            });
        }
        Ok((n as usize).min(entries.len()))
    }

    /// One entry of a GQCSEx batch; its status is the packet's NTSTATUS
    /// (`OVERLAPPED_ENTRY.Internal`), which GQCSEx does not turn into a
    /// per-call error (B.4, B.9 #10).
    pub(crate) fn raw_from_entry(e: &OVERLAPPED_ENTRY) -> Raw {
        let st = e.Internal as u32 as i32;
        let status = if st < 0 {
            // SAFETY: a pure conversion function.
            Some(unsafe { RtlNtStatusToDosError(st) })
        } else {
            None
        };
        Raw {
            key: e.lpCompletionKey,
            ov: e.lpOverlapped,
            bytes: e.dwNumberOfBytesTransferred,
            status,
        }
    }

    /// Turns a dequeued packet into what the application sees. After the
    /// port is closed, packets are released (their memory freed) instead.
    pub(crate) fn process(&self, raw: Raw) -> Step {
        match raw.key {
            KEY_ABANDON => Step::Abandon,
            KEY_POST => {
                // SAFETY: KEY_POST packets carry a box made by `post_packet`,
                // and this thread dequeued it, so it is the only owner.
                let p = unsafe { Box::from_raw(raw.ov as *mut PostPacket) };
                self.live.fetch_sub(1, Ordering::SeqCst);
                let c = Completion::new(p.kind, p.key, p.token, OpId(p.id), Ok(p.bytes));
                Step::Deliver(c, Some(p.from))
            }
            KEY_IO | KEY_LOCAL if !raw.ov.is_null() => {
                let input = if raw.key == KEY_IO {
                    Input::Kernel {
                        status: raw.status,
                        bytes: raw.bytes,
                    }
                } else {
                    Input::Local
                };
                self.completions.fetch_add(1, Ordering::Relaxed);
                // SAFETY: KEY_IO/KEY_LOCAL packets carry an OpBox that the
                // kernel held until this dequeue.
                match unsafe { HandleShared::complete(raw.ov as *mut OpBox, input) } {
                    // Operation completions are queued by the kernel (the
                    // engine), never by the thread that takes them: each is a
                    // hand-off, as from a Linux engine thread.
                    Step::Deliver(c, _) => Step::Deliver(c, Some(KERNEL_TAG)),
                    other => other,
                }
            }
            other => {
                tracing::error!("iocp: packet with unknown kernel key {other}; ignored");
                Step::Nothing
            }
        }
    }

    pub(crate) fn register(&self, h: &Arc<HandleShared>) -> io::Result<()> {
        let mut m = lock(&self.handles);
        if self.closed.load(Ordering::SeqCst) {
            return Err(error::port_closed());
        }
        m.insert(h.hid, Arc::downgrade(h));
        Ok(())
    }

    fn unregister(&self, hid: u64) {
        lock(&self.handles).remove(&hid);
    }

    /// A pool buffer, or `None` after recording `(h, op)` as starved (it is
    /// resumed when a buffer comes back). One lock makes "no buffer" and
    /// "wake me" atomic against `PooledBuf::drop`.
    fn take_buf_or_park(&self, h: &Arc<HandleShared>, op: u64) -> Option<u16> {
        let mut ps = lock(&self.pool_state);
        if ps.free.is_empty() {
            self.pool.take_returned(&mut ps.free);
        }
        let b = ps.free.pop();
        if b.is_none() {
            ps.starved.push((Arc::downgrade(h), op));
        }
        b
    }

    fn give_back(&self, bid: u16) {
        lock(&self.pool_state).free.push(bid);
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
                Got::Packet(raw) if raw.key == KEY_ABANDON => {
                    // Meant for a waiter: put it back if one may still need it.
                    if self.waiting.load(Ordering::SeqCst) > 0 {
                        self.post_abandon();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Got::Packet(raw) => drop(self.process(raw)),
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

impl Drop for Shared {
    fn drop(&mut self) {
        // Every operation box holds a reference to `Shared`, so none is in
        // the kernel any more.
        // SAFETY: the handle is ours and nothing else uses it now.
        unsafe { CloseHandle(self.iocp.0) };
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

// ---------------------------------------------------------------------------
// Operations

enum Mem {
    None,
    Accept {
        sock: Option<socket2::Socket>,
        out: Box<[u8; 2 * ACCEPT_ADDR_LEN]>,
    },
    Connect(Box<SockAddr>),
    Buf(Buf),
    Vectored(Vec<Buf>),
    To(Buf, Box<SockAddr>),
}

/// A result the library decided, delivered through a `KEY_LOCAL` packet.
enum Local {
    Done(io::Result<usize>),
    /// Resume a standing operation (pooled receive after buffers came back,
    /// standing accept after a retry delay).
    Resume,
}

enum Input {
    Kernel { status: Option<u32>, bytes: u32 },
    Local,
}

/// One operation: pinned on the heap, `OVERLAPPED` first so the pointer the
/// kernel hands back is the box.
#[repr(C)]
pub(crate) struct OpBox {
    ov: OVERLAPPED,
    id: u64,
    token: u64,
    kind: OpKind,
    standing: bool,
    h: Arc<HandleShared>,
    mem: Mem,
    local: Option<Local>,
    /// Bytes sent so far.
    done: usize,
    flags: u32,
    from_len: i32,
    from: SOCKADDR_STORAGE,
    wsabufs: Vec<WSABUF>,
    zero: u8,
}

impl Drop for OpBox {
    fn drop(&mut self) {
        self.h.port.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The error of an operation that could not start, with every buffer it
/// owned.
fn refused(error: io::Error, mem: Mem) -> SubmitError {
    match mem {
        Mem::Buf(b) | Mem::To(b, _) => SubmitError::with_bufs(error, Some(b), Vec::new()),
        Mem::Vectored(v) => SubmitError::with_bufs(error, None, v),
        Mem::None | Mem::Accept { .. } | Mem::Connect(_) => {
            SubmitError::with_bufs(error, None, Vec::new())
        }
    }
}

/// WSABUFs per `WSASend`: a longer vectored send goes out in several
/// calls, still as one operation. Wine turns one `WSASend` into one
/// `sendmsg(2)`, which takes at most 1024 iovecs and fails past that.
const MAX_WSABUFS: usize = 1024;

/// Whether a Winsock call that returned failure still queues a packet:
/// pending (`WSA_IO_PENDING`), or `WSAEMSGSIZE`, which is the warning status
/// `STATUS_BUFFER_OVERFLOW` (a datagram larger than the receive buffer, too
/// many buffers for one send under Wine): the call returns the error *and*
/// queues a packet with `ERROR_MORE_DATA`, so posting a failure of our own
/// would complete the operation twice.
fn pending_or(ok: bool) -> io::Result<()> {
    if ok {
        return Ok(());
    }
    // SAFETY: no preconditions.
    let e = unsafe { WSAGetLastError() };
    if e == WSA_IO_PENDING || e == WSAEMSGSIZE {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(e))
    }
}

fn wsabuf(p: *const u8, n: usize) -> WSABUF {
    WSABUF {
        len: n.min(u32::MAX as usize) as u32,
        buf: p as *mut u8,
    }
}

impl OpBox {
    /// Starts the operation in the kernel: `Ok` means a packet will be
    /// queued (pending or completed synchronously — no skip-on-success).
    ///
    /// # Safety
    /// `p` must be a live op box owned by the caller (not in the kernel), and
    /// the caller must hold its handle's state lock with the handle not
    /// closing (so the socket is open).
    unsafe fn issue(p: *mut OpBox) -> io::Result<()> {
        // SAFETY: the caller owns the box exclusively.
        let op = unsafe { &mut *p };
        // SAFETY: all-zero is a valid, unused OVERLAPPED.
        op.ov = unsafe { std::mem::zeroed() };
        let s = op.h.sock;
        let ovp: *mut OVERLAPPED = &mut op.ov;
        op.flags = 0;
        // SAFETY (every Winsock call below): `s` is an open socket associated
        // with the port; every pointer passed points into this box or into a
        // buffer it owns, all of which stay alive and unmoved until the
        // packet is dequeued (the box is pinned on the heap and owned by the
        // kernel meanwhile). WSABUF arrays may be transient, but they live in
        // the box anyway.
        match (op.kind, &mut op.mem) {
            (OpKind::Accept, Mem::Accept { sock, out }) => {
                let domain = if op.h.family()? == AF_INET6 {
                    Domain::IPV6
                } else {
                    Domain::IPV4
                };
                let ns = socket2::Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
                let raw = std::os::windows::io::AsRawSocket::as_raw_socket(&ns) as SOCKET;
                *sock = Some(ns);
                let ext = net::ext(s)?;
                let mut bytes = 0u32;
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let ok = unsafe {
                    (ext.accept_ex)(
                        s,
                        raw,
                        out.as_mut_ptr() as *mut _,
                        0,
                        ACCEPT_ADDR_LEN as u32,
                        ACCEPT_ADDR_LEN as u32,
                        &mut bytes,
                        ovp,
                    )
                };
                pending_or(ok != 0)
            }
            (OpKind::Connect, Mem::Connect(a)) => {
                let target = a.as_socket().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "not an IP address")
                })?;
                net::ensure_bound(s, &target)?;
                let ext = net::ext(s)?;
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let ok = unsafe {
                    (ext.connect_ex)(
                        s,
                        a.as_ptr() as *const SOCKADDR,
                        a.len(),
                        std::ptr::null(),
                        0,
                        std::ptr::null_mut(),
                        ovp,
                    )
                };
                pending_or(ok != 0)
            }
            (OpKind::Recv, Mem::Buf(b)) => {
                let (ptr, n) = b.spare();
                op.wsabufs.clear();
                op.wsabufs.push(wsabuf(ptr, n));
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let r = unsafe {
                    WSARecv(
                        s,
                        op.wsabufs.as_ptr(),
                        1,
                        std::ptr::null_mut(),
                        &mut op.flags,
                        ovp,
                        None,
                    )
                };
                pending_or(r != SOCKET_ERROR)
            }
            (OpKind::RecvPooled, _) => {
                // The zero-byte receive: completes when data (or FIN, or an
                // error) arrives, without consuming anything and without
                // pinning a buffer (B.7).
                op.wsabufs.clear();
                op.wsabufs.push(WSABUF {
                    len: 0,
                    buf: &mut op.zero,
                });
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let r = unsafe {
                    WSARecv(
                        s,
                        op.wsabufs.as_ptr(),
                        1,
                        std::ptr::null_mut(),
                        &mut op.flags,
                        ovp,
                        None,
                    )
                };
                pending_or(r != SOCKET_ERROR)
            }
            (OpKind::Send, Mem::Buf(b)) => {
                let rest = &b.as_slice()[op.done.min(b.len())..];
                op.wsabufs.clear();
                op.wsabufs.push(wsabuf(rest.as_ptr(), rest.len()));
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let r = unsafe {
                    WSASend(
                        s,
                        op.wsabufs.as_ptr(),
                        1,
                        std::ptr::null_mut(),
                        0,
                        ovp,
                        None,
                    )
                };
                pending_or(r != SOCKET_ERROR)
            }
            (OpKind::Send, Mem::Vectored(bufs)) => {
                op.wsabufs.clear();
                let mut skip = op.done;
                for b in bufs.iter() {
                    let sl = b.as_slice();
                    if skip >= sl.len() {
                        skip -= sl.len();
                        continue;
                    }
                    if op.h.stream && op.wsabufs.len() == MAX_WSABUFS {
                        // The rest goes out as the remainder of a short
                        // send (a datagram is never split).
                        break;
                    }
                    op.wsabufs
                        .push(wsabuf(sl[skip..].as_ptr(), sl.len() - skip));
                    skip = 0;
                }
                if op.wsabufs.is_empty() {
                    op.wsabufs.push(WSABUF {
                        len: 0,
                        buf: &mut op.zero,
                    });
                }
                let n = op.wsabufs.len().min(u32::MAX as usize) as u32;
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let r = unsafe {
                    WSASend(
                        s,
                        op.wsabufs.as_ptr(),
                        n,
                        std::ptr::null_mut(),
                        0,
                        ovp,
                        None,
                    )
                };
                pending_or(r != SOCKET_ERROR)
            }
            (OpKind::RecvFrom, Mem::Buf(b)) => {
                let (ptr, n) = b.spare();
                op.wsabufs.clear();
                op.wsabufs.push(wsabuf(ptr, n));
                op.from_len = std::mem::size_of::<SOCKADDR_STORAGE>() as i32;
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let r = unsafe {
                    WSARecvFrom(
                        s,
                        op.wsabufs.as_ptr(),
                        1,
                        std::ptr::null_mut(),
                        &mut op.flags,
                        &mut op.from as *mut SOCKADDR_STORAGE as *mut SOCKADDR,
                        &mut op.from_len,
                        ovp,
                        None,
                    )
                };
                pending_or(r != SOCKET_ERROR)
            }
            (OpKind::SendTo, Mem::To(b, a)) => {
                let sl = b.as_slice();
                op.wsabufs.clear();
                op.wsabufs.push(wsabuf(sl.as_ptr(), sl.len()));
                // SAFETY: see the comment above the match: open, associated socket;
                // every pointer is into this pinned box or a buffer it owns.
                let r = unsafe {
                    WSASendTo(
                        s,
                        op.wsabufs.as_ptr(),
                        1,
                        std::ptr::null_mut(),
                        0,
                        a.as_ptr() as *const SOCKADDR,
                        a.len(),
                        ovp,
                        None,
                    )
                };
                pending_or(r != SOCKET_ERROR)
            }
            _ => Err(io::Error::other("iocp: operation and memory do not match")),
        }
    }

    fn total(&self) -> usize {
        match &self.mem {
            Mem::Buf(b) | Mem::To(b, _) => b.len(),
            Mem::Vectored(v) => v.iter().map(|b| b.len()).sum(),
            _ => 0,
        }
    }

    /// Frees the box and builds its final completion.
    fn into_completion(mut self: Box<Self>, mut result: io::Result<usize>) -> Completion {
        let key = self.h.key;
        let mem = std::mem::replace(&mut self.mem, Mem::None);
        let mut extra = Extra::None;
        let mut buf = None;
        match mem {
            Mem::Accept { sock, out } => {
                if result.is_ok() {
                    match sock {
                        Some(sock) => match accepted(&self.h, sock, &out) {
                            Ok((sock, peer)) => {
                                extra = Extra::Accepted(sock, peer);
                                result = Ok(0);
                            }
                            Err(e) => result = Err(e),
                        },
                        None => result = Err(io::Error::other("iocp: accept without a socket")),
                    }
                }
            }
            Mem::Connect(_) => {
                if result.is_ok() {
                    result = net::update_connect_context(self.h.sock).map(|()| 0);
                }
            }
            Mem::Buf(mut b) => {
                if matches!(self.kind, OpKind::Recv | OpKind::RecvFrom) {
                    if let Ok(n) = result {
                        // SAFETY: the kernel wrote `n` bytes at `b.spare()`,
                        // which is where this receive pointed it.
                        unsafe { b.advance(n) };
                        if self.kind == OpKind::RecvFrom {
                            // SAFETY: `from` is a SOCKADDR_STORAGE and
                            // `from_len` (written by the kernel) is at most
                            // its size.
                            let a = unsafe {
                                net::sockaddr_to_std(
                                    &self.from as *const SOCKADDR_STORAGE as *const SOCKADDR,
                                    self.from_len
                                        .min(std::mem::size_of::<SOCKADDR_STORAGE>() as i32),
                                )
                            };
                            extra = Extra::From(a);
                        }
                    }
                }
                buf = Some(b);
            }
            Mem::Vectored(v) => extra = Extra::Vectored(v),
            Mem::To(b, _) => buf = Some(b),
            Mem::None => {}
        }
        let mut c = Completion::new(self.kind, key, self.token, OpId(self.id), result);
        c.buf = buf;
        c.extra = extra;
        if c.result.is_err() {
            // What a send sent before it failed (0 for anything else).
            c.partial = self.done;
        }
        c
    }
}

/// Finishes an `AcceptEx`: `SO_UPDATE_ACCEPT_CONTEXT` and the peer's
/// address from `GetAcceptExSockaddrs`.
fn accepted(
    listener: &HandleShared,
    sock: socket2::Socket,
    out: &[u8; 2 * ACCEPT_ADDR_LEN],
) -> io::Result<(socket2::Socket, Option<std::net::SocketAddr>)> {
    let raw = std::os::windows::io::AsRawSocket::as_raw_socket(&sock) as SOCKET;
    net::update_accept_context(raw, listener.sock)?;
    let ext = net::ext(listener.sock)?;
    let (mut lp, mut rp): (*mut SOCKADDR, *mut SOCKADDR) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    let (mut ll, mut rl) = (0i32, 0i32);
    // SAFETY: `out` is the buffer AcceptEx filled, with the same lengths;
    // the function only writes the four out-parameters (pointers into `out`).
    unsafe {
        (ext.get_accept_ex_sockaddrs)(
            out.as_ptr() as *const _,
            0,
            ACCEPT_ADDR_LEN as u32,
            ACCEPT_ADDR_LEN as u32,
            &mut lp,
            &mut ll,
            &mut rp,
            &mut rl,
        )
    };
    let in_out = |p: *mut SOCKADDR, l: i32| {
        let start = out.as_ptr() as usize;
        let p = p as usize;
        !(p < start || l < 0 || p + l as usize > start + out.len())
    };
    let peer = if !rp.is_null() && in_out(rp, rl) {
        // SAFETY: checked above that `rl` bytes at `rp` lie inside `out`.
        unsafe { net::sockaddr_to_std(rp, rl) }
    } else {
        None
    };
    // The kernel-reported peer is authoritative; getpeername works too now.
    let peer = peer.or_else(|| sock.peer_addr().ok().and_then(|a| a.as_socket()));
    Ok((sock, peer))
}

// ---------------------------------------------------------------------------
// Handles

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lane {
    None,
    Read,
    Write,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// Waiting in its lane; never issued yet.
    Queued,
    /// Held by the kernel (issued, packet not yet dequeued).
    Kernel,
    /// A standing operation waiting for a pool buffer or a retry timer.
    Parked,
    /// A `KEY_LOCAL` packet for it is queued.
    Posted,
    /// Its packet was dequeued; a thread is working on it.
    Owned,
}

struct OpCtl {
    id: u64,
    ptr: *mut OpBox,
    lane: Lane,
    holds_lane: bool,
    state: St,
    cancelled: bool,
    timed_out: bool,
}

struct HState {
    ops: Vec<OpCtl>,
    readq: VecDeque<u64>,
    read_busy: bool,
    writeq: VecDeque<u64>,
    write_busy: bool,
    closing: bool,
    /// A send on this stream failed part-way: every later send completes
    /// aborted.
    send_broken: bool,
}

// SAFETY: the raw `OpBox` pointers are only dereferenced under the rules in
// the module doc (by the owner of the box, with this state's mutex held);
// the state itself moves between threads only inside its mutex.
unsafe impl Send for HState {}

impl HState {
    fn find(&self, id: u64) -> Option<usize> {
        self.ops.iter().position(|c| c.id == id)
    }
}

struct SockUse {
    open: bool,
    readers: usize,
    close_pending: bool,
}

/// A socket associated with the port.
pub(crate) struct HandleShared {
    pub(crate) hid: u64,
    pub(crate) key: u64,
    pub(crate) sock: SOCKET,
    pub(crate) port: Arc<Shared>,
    /// A stream socket (vectored sends split at `MAX_WSABUFS`; a send cut
    /// part-way breaks the write side).
    stream: bool,
    /// `Handle::close` was called (or the port closed it).
    pub(crate) user_closed: AtomicBool,
    state: Mutex<HState>,
    sock_use: Mutex<SockUse>,
    family: OnceLock<u16>,
}

impl Drop for HandleShared {
    fn drop(&mut self) {
        let open = std::mem::replace(&mut lock(&self.sock_use).open, false);
        if open {
            // SAFETY: we own the socket and no operation or borrower is left
            // (they hold references to `self`).
            unsafe { closesocket(self.sock) };
        }
    }
}

impl HandleShared {
    pub(crate) fn new(hid: u64, key: u64, sock: SOCKET, port: Arc<Shared>) -> Arc<HandleShared> {
        let stream =
            net::with_sockref(sock, |s| s.r#type()).map_or(true, |t| t == socket2::Type::STREAM);
        Arc::new(HandleShared {
            hid,
            key,
            sock,
            port,
            stream,
            user_closed: AtomicBool::new(false),
            state: Mutex::new(HState {
                ops: Vec::new(),
                readq: VecDeque::new(),
                read_busy: false,
                writeq: VecDeque::new(),
                write_busy: false,
                closing: false,
                send_broken: false,
            }),
            sock_use: Mutex::new(SockUse {
                open: true,
                readers: 0,
                close_pending: false,
            }),
            family: OnceLock::new(),
        })
    }

    fn family(&self) -> io::Result<u16> {
        if let Some(f) = self.family.get() {
            return Ok(*f);
        }
        let f = net::bound_family(self.sock)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "accept on an unbound socket")
        })?;
        Ok(*self.family.get_or_init(|| f))
    }

    /// Runs `f` with the socket, which stays open meanwhile.
    pub(crate) fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        {
            let mut u = lock(&self.sock_use);
            if !u.open || u.close_pending {
                return Err(error::handle_closed());
            }
            u.readers += 1;
        }
        struct Release<'a>(&'a HandleShared);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut u = lock(&self.0.sock_use);
                u.readers -= 1;
                if u.readers == 0 && u.close_pending {
                    u.close_pending = false;
                    u.open = false;
                    // SAFETY: the last borrower is gone and the handle's last
                    // operation completed (that is what set `close_pending`).
                    unsafe { closesocket(self.0.sock) };
                    drop(u);
                    self.0.port.unregister(self.0.hid);
                }
            }
        }
        let _r = Release(self);
        net::with_sockref(self.sock, f)
    }

    /// Closes the socket now that no operation is left (or as soon as the
    /// last `with_socket` borrower is done).
    fn final_close(&self) {
        {
            let mut u = lock(&self.sock_use);
            if !u.open {
                return;
            }
            if u.readers > 0 {
                u.close_pending = true;
                return;
            }
            u.open = false;
            // SAFETY: the handle is closing and its last operation's packet
            // was dequeued, so neither the kernel nor another thread uses the
            // socket; no `with_socket` borrower is active.
            unsafe { closesocket(self.sock) };
        }
        self.port.unregister(self.hid);
    }

    /// Starts an operation.
    pub(crate) fn start(
        self: &Arc<Self>,
        data: OpData,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        let port = &self.port;
        let id = port.next_id.fetch_add(1, Ordering::Relaxed);
        let (kind, standing, lane, mem) = match data {
            OpData::Accept => (
                OpKind::Accept,
                false,
                Lane::None,
                Mem::Accept {
                    sock: None,
                    out: Box::new([0; 2 * ACCEPT_ADDR_LEN]),
                },
            ),
            OpData::AcceptMulti => (
                OpKind::Accept,
                true,
                Lane::None,
                Mem::Accept {
                    sock: None,
                    out: Box::new([0; 2 * ACCEPT_ADDR_LEN]),
                },
            ),
            OpData::Connect(a) => (OpKind::Connect, false, Lane::None, Mem::Connect(a)),
            OpData::Recv(b) => (OpKind::Recv, false, Lane::Read, Mem::Buf(b)),
            OpData::RecvPooled => (OpKind::RecvPooled, true, Lane::Read, Mem::None),
            OpData::Send(b) => (OpKind::Send, false, Lane::Write, Mem::Buf(b)),
            OpData::SendV(v) => (OpKind::Send, false, Lane::Write, Mem::Vectored(v)),
            OpData::RecvFrom(b) => (OpKind::RecvFrom, false, Lane::Read, Mem::Buf(b)),
            OpData::SendTo(b, a) => (OpKind::SendTo, false, Lane::Write, Mem::To(b, a)),
        };
        // Count first, then check `closed` (see `Shared::post_packet`).
        port.live.fetch_add(1, Ordering::SeqCst);
        let mut b = Box::new(OpBox {
            // SAFETY: all-zero is a valid OVERLAPPED.
            ov: unsafe { std::mem::zeroed() },
            id,
            token,
            kind,
            standing,
            h: self.clone(),
            mem,
            local: None,
            done: 0,
            flags: 0,
            from_len: 0,
            // SAFETY: all-zero is a valid SOCKADDR_STORAGE.
            from: unsafe { std::mem::zeroed() },
            wsabufs: Vec::with_capacity(1),
            zero: 0,
        });
        if port.closed.load(Ordering::SeqCst) {
            let mem = std::mem::replace(&mut b.mem, Mem::None);
            return Err(refused(error::port_closed(), mem));
        }
        let p = Box::into_raw(b);
        let mut st = lock(&self.state);
        if st.closing || (lane == Lane::Write && st.send_broken) {
            if st.closing && port.closed.load(Ordering::SeqCst) {
                drop(st);
                // SAFETY: `p` was never handed to the kernel.
                let mut b = unsafe { Box::from_raw(p) };
                let mem = std::mem::replace(&mut b.mem, Mem::None);
                return Err(refused(error::port_closed(), mem));
            }
            // Closed between the caller's check and now (or a send broke the
            // stream): it still completes once, aborted, like any operation
            // caught by a close.
            // SAFETY: we own `p` (not yet visible to anyone else).
            unsafe { (*p).local = Some(Local::Done(Err(error::aborted()))) };
            st.ops.push(OpCtl {
                id,
                ptr: p,
                lane,
                holds_lane: false,
                state: St::Posted,
                cancelled: true,
                timed_out: false,
            });
            port.post_local(p);
            return Ok(OpId(id));
        }
        let go = match lane {
            Lane::None => true,
            Lane::Read if st.read_busy => {
                st.readq.push_back(id);
                false
            }
            Lane::Read => {
                st.read_busy = true;
                true
            }
            Lane::Write if st.write_busy => {
                st.writeq.push_back(id);
                false
            }
            Lane::Write => {
                st.write_busy = true;
                true
            }
        };
        st.ops.push(OpCtl {
            id,
            ptr: p,
            lane,
            holds_lane: go && lane != Lane::None,
            state: St::Queued,
            cancelled: false,
            timed_out: false,
        });
        if go {
            let i = st.ops.len() - 1;
            self.issue_ctl(&mut st, i);
        }
        if let Some(d) = deadline {
            // Under the handle's lock: the operation cannot complete (and
            // `finish` take its timers away) before the deadline is in.
            port.timers.add(
                port,
                d,
                TimerItem::Deadline {
                    h: Arc::downgrade(self),
                    op: id,
                },
            );
        }
        drop(st);
        Ok(OpId(id))
    }

    /// Issues `st.ops[i]`; a synchronous failure becomes a `KEY_LOCAL`
    /// packet carrying the error.
    fn issue_ctl(&self, st: &mut HState, i: usize) {
        let p = st.ops[i].ptr;
        // SAFETY: the op is ours (queued, or its packet was just dequeued),
        // we hold the state lock, and the handle is not closing (callers
        // check), so the socket is open.
        match unsafe { OpBox::issue(p) } {
            Ok(()) => st.ops[i].state = St::Kernel,
            Err(e) => {
                // SAFETY: the failed call queued no packet; we still own `p`.
                unsafe { (*p).local = Some(Local::Done(Err(e))) };
                st.ops[i].state = St::Posted;
                self.port.post_local(p);
            }
        }
    }

    /// Cancels operation `op` (`CancelIoEx(socket, ov)`), or its deadline
    /// passed (`timed_out`). It still completes exactly once.
    pub(crate) fn cancel_op(&self, op: u64, timed_out: bool) {
        let mut st = lock(&self.state);
        let Some(i) = st.find(op) else { return };
        self.cancel_at(&mut st, i, timed_out);
    }

    fn cancel_at(&self, st: &mut HState, i: usize, timed_out: bool) {
        let c = &mut st.ops[i];
        if c.cancelled {
            return;
        }
        c.cancelled = true;
        c.timed_out = timed_out;
        let (p, id, state) = (c.ptr, c.id, c.state);
        match state {
            St::Queued => {
                st.readq.retain(|&x| x != id);
                st.writeq.retain(|&x| x != id);
                st.ops[i].state = St::Posted;
                let e = if timed_out {
                    error::timed_out()
                } else {
                    error::aborted()
                };
                // SAFETY: a queued op was never issued; we own it under the lock.
                unsafe { (*p).local = Some(Local::Done(Err(e))) };
                self.port.post_local(p);
            }
            St::Kernel => {
                // SAFETY: `p` stays allocated until its packet is dequeued and
                // the dequeuing thread removes it from this state (under the
                // lock we hold); CancelIoEx only compares the address. A
                // "not found" (it already completed) is fine.
                unsafe { CancelIoEx(self.sock as HANDLE, p as *const OVERLAPPED) };
            }
            St::Parked => {
                st.ops[i].state = St::Posted;
                // SAFETY: a parked op is in no kernel queue; we own it under the lock.
                unsafe { (*p).local = Some(Local::Resume) };
                self.port.post_local(p);
            }
            St::Posted | St::Owned => {} // its processing sees the flag
        }
    }

    /// Resumes a parked standing operation (buffers came back, or its retry
    /// timer fired).
    pub(crate) fn resume_parked(&self, op: u64) {
        let mut st = lock(&self.state);
        let Some(i) = st.find(op) else { return };
        if st.ops[i].state != St::Parked {
            return;
        }
        st.ops[i].state = St::Posted;
        let p = st.ops[i].ptr;
        // SAFETY: a parked op is in no kernel queue; we own it under the lock.
        unsafe { (*p).local = Some(Local::Resume) };
        self.port.post_local(p);
    }

    /// `closesocket` done safely: mark closing, abort queued operations,
    /// `CancelIoEx(socket, NULL)` for the issued ones, and close the socket
    /// only after the last packet came back.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        if st.closing {
            return;
        }
        st.closing = true;
        let mut any_kernel = false;
        for i in 0..st.ops.len() {
            if st.ops[i].state == St::Kernel {
                any_kernel = true;
                let c = &mut st.ops[i];
                c.cancelled = true;
                c.timed_out = false;
            } else {
                self.cancel_at(&mut st, i, false);
            }
        }
        st.readq.clear();
        st.writeq.clear();
        if any_kernel {
            // SAFETY: the socket is open (closing only now); NULL cancels
            // every operation this process issued on it.
            unsafe { CancelIoEx(self.sock as HANDLE, std::ptr::null()) };
        }
        let empty = st.ops.is_empty();
        drop(st);
        if empty {
            self.final_close();
        }
    }

    /// Handles the dequeued packet of op box `p`.
    ///
    /// # Safety
    /// `p` must be an op box whose packet this thread just dequeued.
    unsafe fn complete(p: *mut OpBox, input: Input) -> Step {
        // SAFETY: the kernel let go of the box and no other thread writes it
        // while its state is Kernel/Posted; `h` and `id` never change.
        let (h, id) = unsafe { ((*p).h.clone(), (*p).id) };
        let mut st = lock(&h.state);
        let Some(i) = st.find(id) else {
            tracing::error!("iocp: completion for an operation the handle does not know; dropped");
            return Step::Nothing;
        };
        st.ops[i].state = St::Owned;
        let (cancelled, timed_out) = (st.ops[i].cancelled, st.ops[i].timed_out);
        let stop = cancelled || st.closing || h.port.closed.load(Ordering::SeqCst);
        let abort = || {
            if timed_out {
                error::timed_out()
            } else {
                error::aborted()
            }
        };
        // SAFETY: see above; we hold the state lock and own the box.
        let op = unsafe { &mut *p };
        let map = |code: u32| {
            if timed_out && matches!(code, 995 | 676) {
                error::timed_out()
            } else {
                map_win32(code)
            }
        };
        let local = match input {
            Input::Local => op.local.take().or(Some(Local::Resume)),
            Input::Kernel { .. } => None,
        };

        match op.kind {
            OpKind::RecvPooled => {
                match (input, local) {
                    (
                        Input::Kernel {
                            status: Some(code), ..
                        },
                        _,
                    ) => return h.finish(st, i, Err(map(code))),
                    (_, Some(Local::Done(Err(e)))) => return h.finish(st, i, Err(e)),
                    _ => {} // readable (or resumed): read below
                }
                if stop {
                    return h.finish(st, i, Err(abort()));
                }
                let Some(bid) = h.port.take_buf_or_park(&h, id) else {
                    h.port.starved.fetch_add(1, Ordering::Relaxed);
                    st.ops[i].state = St::Parked;
                    return Step::Nothing;
                };
                let pool = &h.port.pool;
                // SAFETY: buffer `bid` is free (owned by us), `buf_size`
                // writable bytes at its address; the socket is non-blocking.
                let n = unsafe {
                    recv(
                        h.sock,
                        pool.addr(bid),
                        pool.buf_size.min(i32::MAX as usize) as i32,
                        0,
                    )
                };
                if n > 0 {
                    // SAFETY: `recv` wrote `n` bytes into buffer `bid`, ours.
                    let pb = unsafe { pool.lend(bid, n as usize) };
                    let mut c = Completion::new(
                        OpKind::RecvPooled,
                        h.key,
                        op.token,
                        OpId(id),
                        Ok(n as usize),
                    );
                    c.more = true;
                    c.buf = Some(Buf::Pooled(pb));
                    h.issue_ctl(&mut st, i);
                    return Step::Deliver(c, None);
                }
                h.port.give_back(bid);
                if n == 0 {
                    return h.finish(st, i, Ok(0));
                }
                // SAFETY: no preconditions.
                let e = unsafe { WSAGetLastError() };
                if e == WSAEWOULDBLOCK {
                    // Readiness without data (or it was taken): wait again.
                    h.issue_ctl(&mut st, i);
                    return Step::Nothing;
                }
                h.finish(st, i, Err(io::Error::from_raw_os_error(e)))
            }
            OpKind::Accept if op.standing => match (input, local) {
                (Input::Kernel { status: None, .. }, _) => {
                    // One connection: hand it out, keep the AcceptEx going.
                    let sock = match &mut op.mem {
                        Mem::Accept { sock, .. } => sock.take(),
                        _ => None,
                    };
                    let out = match &op.mem {
                        Mem::Accept { out, .. } => **out,
                        _ => [0; 2 * ACCEPT_ADDR_LEN],
                    };
                    let mut c = Completion::new(OpKind::Accept, h.key, op.token, OpId(id), Ok(0));
                    c.more = true;
                    match sock.map(|s| accepted(&h, s, &out)) {
                        Some(Ok((s, peer))) => c.extra = Extra::Accepted(s, peer),
                        Some(Err(e)) => c.result = Err(e),
                        None => c.result = Err(io::Error::other("iocp: accept without a socket")),
                    }
                    if stop {
                        // The final completion follows through the port.
                        op.local = Some(Local::Done(Err(abort())));
                        st.ops[i].state = St::Posted;
                        h.port.post_local(p);
                    } else {
                        h.issue_ctl(&mut st, i);
                    }
                    Step::Deliver(c, None)
                }
                (
                    Input::Kernel {
                        status: Some(code), ..
                    },
                    _,
                ) => {
                    if stop || matches!(code, 995 | 676) {
                        h.finish(st, i, Err(if stop { abort() } else { map(code) }))
                    } else if matches!(code, 64 | 1236 | 10053 | 10054 | 10055) {
                        // The peer gave up before we took it: report, go on.
                        let mut c = Completion::new(
                            OpKind::Accept,
                            h.key,
                            op.token,
                            OpId(id),
                            Err(map_win32(code)),
                        );
                        c.more = true;
                        h.issue_ctl(&mut st, i);
                        Step::Deliver(c, None)
                    } else {
                        h.finish(st, i, Err(map_win32(code)))
                    }
                }
                (_, Some(Local::Done(Err(e)))) => {
                    if stop {
                        h.finish(st, i, Err(abort()))
                    } else if matches!(
                        e.raw_os_error(),
                        Some(10024) | Some(10055) | Some(10053) | Some(10054)
                    ) {
                        // Out of sockets (WSAEMFILE, WSAENOBUFS): report it as
                        // a `more` completion and retry after a pause.
                        let mut c =
                            Completion::new(OpKind::Accept, h.key, op.token, OpId(id), Err(e));
                        c.more = true;
                        st.ops[i].state = St::Parked;
                        h.port.timers.add(
                            &h.port,
                            Instant::now() + Duration::from_millis(50),
                            TimerItem::Resume {
                                h: Arc::downgrade(&h),
                                op: id,
                            },
                        );
                        drop(st);
                        Step::Deliver(c, None)
                    } else {
                        h.finish(st, i, Err(e))
                    }
                }
                _ => {
                    // Resume (after a retry pause, or to deliver a cancel).
                    if stop {
                        h.finish(st, i, Err(abort()))
                    } else {
                        h.issue_ctl(&mut st, i);
                        Step::Nothing
                    }
                }
            },
            _ => {
                let mut result = match (input, local) {
                    (
                        Input::Kernel {
                            status: None,
                            bytes,
                        },
                        _,
                    ) => Ok(bytes as usize),
                    (
                        Input::Kernel {
                            status: Some(ERROR_MORE_DATA),
                            bytes,
                        },
                        _,
                    ) if matches!(op.kind, OpKind::Recv | OpKind::RecvFrom) => {
                        // A datagram larger than the buffer: truncated, as
                        // Linux's recvmsg does.
                        Ok(bytes as usize)
                    }
                    (
                        Input::Kernel {
                            status: Some(code),
                            bytes,
                        },
                        _,
                    ) => {
                        if op.kind == OpKind::Send {
                            // A send cancelled (or failed) part-way: the
                            // packet still counts what the stack took of it.
                            op.done += bytes as usize;
                        }
                        Err(map(code))
                    }
                    (_, Some(Local::Done(r))) => r,
                    _ => Err(abort()),
                };
                if op.kind == OpKind::Send {
                    if let Ok(n) = result {
                        op.done += n;
                        let total = op.total();
                        if op.done < total {
                            if n == 0 {
                                result = Err(io::Error::from(io::ErrorKind::WriteZero));
                            } else if stop {
                                result = Err(abort());
                            } else {
                                // A short send: finish it before anything else
                                // in the lane.
                                h.issue_ctl(&mut st, i);
                                return Step::Nothing;
                            }
                        } else {
                            result = Ok(op.done);
                        }
                    }
                }
                h.finish(st, i, result)
            }
        }
    }

    /// Ends operation `st.ops[i]` with `result`: frees its box, hands its
    /// lane to the next operation, closes the socket after the last one.
    fn finish(&self, mut st: MutexGuard<'_, HState>, i: usize, result: io::Result<usize>) -> Step {
        let ctl = st.ops.swap_remove(i);
        // SAFETY: `finish` runs on the thread that dequeued the box's packet
        // (see `complete`), under the state lock: the box is ours.
        let (kind, done) = unsafe { ((*ctl.ptr).kind, (*ctl.ptr).done) };
        if result.is_err() && kind == OpKind::Send && done > 0 && self.stream && !st.send_broken {
            // Part of a message is on the wire: nothing more may follow it
            // (see `Completion::transferred`). Every queued write completes
            // aborted; later ones do in `start`.
            st.send_broken = true;
            let queued: Vec<u64> = st.writeq.drain(..).collect();
            for id in queued {
                if let Some(j) = st.find(id) {
                    self.cancel_at(&mut st, j, false);
                }
            }
        }
        if ctl.holds_lane {
            let next = match ctl.lane {
                Lane::Read => {
                    let n = st.readq.pop_front();
                    st.read_busy = n.is_some();
                    n
                }
                Lane::Write => {
                    let n = st.writeq.pop_front();
                    st.write_busy = n.is_some();
                    n
                }
                Lane::None => None,
            };
            if let Some(next) = next {
                if let Some(j) = st.find(next) {
                    st.ops[j].holds_lane = true;
                    if st.closing || self.port.closed.load(Ordering::SeqCst) {
                        self.cancel_at(&mut st, j, false);
                    } else {
                        self.issue_ctl(&mut st, j);
                    }
                }
            }
        }
        let last = st.closing && st.ops.is_empty();
        // SAFETY: the box's packet was dequeued by this thread and it is no
        // longer listed in the handle's state, so we are its only owner.
        let b = unsafe { Box::from_raw(ctl.ptr) };
        let mut c = b.into_completion(result);
        c.more = false;
        drop(st);
        self.port.timers.op_done(ctl.id);
        if last {
            self.final_close();
        }
        Step::Deliver(c, None)
    }
}
