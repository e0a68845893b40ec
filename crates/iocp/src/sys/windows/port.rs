//! The public completion port on Windows: [`Port`], [`PortBuilder`],
//! [`Handle`] — the same types and signatures as on Linux, implemented on
//! the kernel's own completion port (see `sys::windows` for the packet
//! format, the error table and the design notes).
//!
//! Windows-specific meaning of a few things:
//!
//! * **Concurrency and wake order** are the kernel's: `concurrency(n)` is
//!   `NumberOfConcurrentThreads`; LIFO wake-up and "a thread blocked on
//!   anything else does not count" are done by Windows itself.
//! * [`Port::blocking`] does nothing to scheduling (the kernel notices a
//!   blocked worker by itself); it only steps the thread out of the
//!   user-space `running` statistic, so `stats()` reads the same as on Linux.
//! * [`PortStats`]: `waiting` counts threads inside
//!   `GetQueuedCompletionStatus(Ex)` called through `get`/`get_many`;
//!   `running` counts threads from a `get` that returned a packet until their
//!   next `get` (or exit, or `blocking`) — the kernel's own count also drops
//!   while such a thread blocks elsewhere, which user space cannot see;
//!   `queued` is the kernel queue's depth (`NtQueryIoCompletion`), which
//!   includes the library's internal packets (a zero-byte receive's
//!   readiness, a close sentinel); `handoffs` counts packets taken by a
//!   thread other than the one that queued them: every operation completion
//!   (the kernel queues it, as a Linux engine thread does — so also with
//!   `inline(true)`), timer packets, and posts from another thread;
//!   `delivered` counts completions returned to the application.
//! * Builder settings that describe Linux engines (`engines`, `sq_entries`,
//!   `cq_entries`) are accepted and ignored: the kernel is the engine.
//!   `inline(true)` (the per-core model) means concurrency 1: the kernel then
//!   lets one thread run at a time, which is what per-core handling needs.
//!   `pool_buffers`/`pool_buffer_size` size the port's one receive pool.

use std::fmt;
use std::io;
use std::os::windows::io::{AsRawSocket, IntoRawSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Networking::WinSock::SOCKET;
use windows_sys::Win32::System::IO::{CreateIoCompletionPort, OVERLAPPED_ENTRY};

pub(crate) use crate::backend::Config;
pub use crate::backend::{Backend, BackendInfo, EngineStats, PortBuilder, PortStats};
use crate::error::{self, GetError, SubmitError};
use crate::op::{Completion, OpId, OpKind, OpOptions};
use crate::pool::PoolStats;
use crate::queue::thread_tag;
use crate::sys::windows::engine::{Got, HandleShared, OpData, Shared, Step, KEY_IO};
use crate::sys::windows::timer::TimerItem;

impl Port {
    pub(crate) fn start(mut cfg: Config, want: Backend, why: String) -> io::Result<Port> {
        if cfg.inline {
            // The per-core model: the kernel lets one thread run at a time.
            cfg.concurrency = 1;
        }
        let reason = match want {
            Backend::Iocp => why,
            Backend::Auto if why.is_empty() => "auto: the kernel's I/O completion port".to_string(),
            Backend::Auto => format!("auto ({why}): the kernel's I/O completion port"),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("backend {other} is only available on Linux (this build has: iocp)"),
                ))
            }
        };
        tracing::debug!(
            "iocp port: concurrency {}, pool {}×{} B (engines {}, sq {}, cq {} ignored on Windows)",
            cfg.concurrency,
            cfg.pool_bufs,
            cfg.pool_buf_size,
            cfg.engines,
            cfg.sq_entries,
            cfg.cq_entries
        );
        // Shared with the Linux queues' ids: a thread's running record
        // names its port by it.
        let id = crate::queue::next_id();
        let shared = Shared::new(id, cfg.concurrency, cfg.pool_bufs, cfg.pool_buf_size)?;
        Ok(Port {
            inner: Arc::new(PortInner {
                shared,
                info: BackendInfo {
                    backend: Backend::Iocp,
                    reason,
                },
            }),
        })
    }
}

struct PortInner {
    shared: Arc<Shared>,
    info: BackendInfo,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// A completion port: a queue of completion packets that any number of
/// threads wait on (`GetQueuedCompletionStatus`), fed by the operations
/// started on the handles associated with it.
///
/// `Port` is cheap to clone; every clone is the same port. Dropping the last
/// clone closes it.
#[derive(Clone)]
pub struct Port {
    inner: Arc<PortInner>,
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.inner.shared.id)
            .field("backend", &self.inner.info.backend)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Returned by [`Port::blocking`]. On Windows the kernel already stops
/// counting a worker that blocks on anything else, so this guard changes no
/// scheduling; it only steps the thread out of the `running` statistic, with
/// the same rules as on Linux: the thread is back when its last guard drops,
/// a `get` inside the guard makes it run from that `get` on (the drop then
/// adds nothing), and a thread that exits with a guard alive leaves nothing
/// counted.
///
/// Not `Send`: being out of the count is a state of the thread that took the
/// guard, and only that thread knows whether it has called `get` since.
pub struct BlockingGuard {
    _step: Option<crate::queue::StepOut>,
}

/// Milliseconds for GQCS until `deadline` (`INFINITE` for none).
fn ms_until(deadline: Option<Instant>) -> u32 {
    match deadline {
        None => u32::MAX, // INFINITE
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so a wait never ends before the deadline.
            let ms = left.as_nanos().div_ceil(1_000_000);
            ms.min(u32::MAX as u128 - 1) as u32
        }
    }
}

std::thread_local! {
    static ENTRIES: std::cell::RefCell<Vec<OVERLAPPED_ENTRY>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Port {
    /// `CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, concurrency)`.
    /// `concurrency` 0 = number of CPUs.
    pub fn new(concurrency: usize) -> io::Result<Port> {
        Port::builder().concurrency(concurrency).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> PortBuilder {
        PortBuilder::default()
    }

    /// The backend in use and why it was chosen (always IOCP here).
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.info
    }

    /// The concurrency limit.
    pub fn concurrency(&self) -> usize {
        self.inner.shared.limit
    }

    /// `CreateIoCompletionPort(socket, port, key, 0)`: associates a socket
    /// with the port under a completion key. The port owns the socket from
    /// now on and closes it after the handle's last completion. The socket is
    /// put in non-blocking mode (overlapped operations ignore the mode; the
    /// pooled receive's follow-up read needs it).
    pub fn associate(&self, socket: impl Into<socket2::Socket>, key: u64) -> io::Result<Handle> {
        let socket: socket2::Socket = socket.into();
        let s = &self.inner.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(error::port_closed());
        }
        socket.set_nonblocking(true)?;
        let raw = socket.as_raw_socket() as SOCKET;
        if socket.r#type().is_ok_and(|t| t == socket2::Type::DGRAM) {
            if let Err(e) = crate::sys::windows::net::disable_udp_connreset(raw) {
                tracing::debug!("iocp: SIO_UDP_CONNRESET off failed: {e}");
            }
        }
        // SAFETY: `raw` is an open overlapped socket we own; the port handle
        // is open. The kernel key is KEY_IO; the application's key lives in
        // the handle.
        let r = unsafe { CreateIoCompletionPort(raw as HANDLE, s.iocp.0, KEY_IO, 0) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        let raw = socket.into_raw_socket() as SOCKET;
        let hid = s.next_id.fetch_add(1, Ordering::Relaxed);
        let h = HandleShared::new(hid, key, raw, s.clone());
        s.register(&h)?;
        Ok(Handle {
            inner: Arc::new(HandleInner { h }),
        })
    }

    pub(crate) fn start_op(
        &self,
        h: &Handle,
        data: OpData,
        opts: OpOptions,
    ) -> Result<OpId, SubmitError> {
        if h.inner.h.port.id != self.inner.shared.id {
            return Err(SubmitError::new(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the handle belongs to another port",
                ),
                data,
            ));
        }
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(SubmitError::new(error::port_closed(), data));
        }
        if h.is_closed() {
            return Err(SubmitError::new(error::handle_closed(), data));
        }
        h.inner.h.start(data, opts.token, opts.deadline)
    }

    /// `PostQueuedCompletionStatus`: queues a packet of the application's
    /// own and wakes one waiter.
    pub fn post(&self, key: u64, bytes: usize, token: u64) -> io::Result<()> {
        let s = &self.inner.shared;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        s.post_packet(OpKind::Post, key, token, id, bytes)
    }

    /// Queues a packet (kind [`OpKind::Timer`], `bytes` 0) after `after`
    /// (from the port's timer thread, started on first use).
    pub fn post_after(&self, after: Duration, key: u64, token: u64) -> io::Result<OpId> {
        let s = &self.inner.shared;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now().checked_add(after).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "timer too far in the future")
        })?;
        if s.closed.load(Ordering::Acquire)
            || !s.timers.add(s, at, TimerItem::Post { key, token, id })
        {
            return Err(error::port_closed());
        }
        Ok(OpId(id))
    }

    /// `GetQueuedCompletionStatus`: waits up to `timeout` (`None` = forever,
    /// `Some(ZERO)` = poll) for one packet. A failed operation is `Ok` with
    /// an error `result`; no packet is `Err`.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion, GetError> {
        let s = &self.inner.shared;
        s.leave_running();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let forever = timeout.is_none() || deadline.is_none();
        loop {
            let ms = if forever {
                u32::MAX
            } else {
                ms_until(deadline)
            };
            // Count in `waiting` before checking `closed` (see Shared::close).
            s.waiting.fetch_add(1, Ordering::SeqCst);
            if s.closed.load(Ordering::SeqCst) {
                s.waiting.fetch_sub(1, Ordering::SeqCst);
                return Err(GetError::Abandoned);
            }
            let got = s.wait_one(ms);
            s.waiting.fetch_sub(1, Ordering::SeqCst);
            let raw = match got {
                Got::Packet(raw) => raw,
                Got::TimedOut => return Err(GetError::TimedOut),
                Got::Abandoned => return Err(GetError::Abandoned),
            };
            match s.process(raw) {
                Step::Deliver(c, from) => {
                    if s.closed.load(Ordering::SeqCst) {
                        drop(c);
                        return Err(GetError::Abandoned);
                    }
                    self.count(from);
                    s.enter_running();
                    return Ok(c);
                }
                Step::Nothing => {
                    if s.closed.load(Ordering::SeqCst) {
                        return Err(GetError::Abandoned);
                    }
                }
                Step::Abandon => return Err(GetError::Abandoned),
            }
        }
    }

    fn count(&self, from: Option<u64>) {
        let s = &self.inner.shared;
        s.delivered.fetch_add(1, Ordering::Relaxed);
        if from.is_some_and(|t| t != thread_tag()) {
            s.handoffs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `GetQueuedCompletionStatusEx`: appends up to `max` packets to `batch`,
    /// waiting only while none are queued. The thread counts as one running
    /// thread however many it took.
    pub fn get_many(
        &self,
        batch: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        let s = &self.inner.shared;
        s.leave_running();
        let max = max.clamp(1, 1024);
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let forever = timeout.is_none() || deadline.is_none();
        let mut entries = ENTRIES.with(|e| std::mem::take(&mut *e.borrow_mut()));
        entries.resize(max, OVERLAPPED_ENTRY::default());
        let start = batch.len();
        let r = loop {
            let ms = if forever {
                u32::MAX
            } else {
                ms_until(deadline)
            };
            s.waiting.fetch_add(1, Ordering::SeqCst);
            if s.closed.load(Ordering::SeqCst) {
                s.waiting.fetch_sub(1, Ordering::SeqCst);
                break Err(GetError::Abandoned);
            }
            let got = s.wait_many(&mut entries[..max], ms);
            s.waiting.fetch_sub(1, Ordering::SeqCst);
            let n = match got {
                Ok(n) => n,
                Err(Got::TimedOut) => break Err(GetError::TimedOut),
                Err(_) => break Err(GetError::Abandoned),
            };
            // Every dequeued entry is ours to process, even after a sentinel.
            let mut sentinels = 0usize;
            for e in &entries[..n] {
                match s.process(Shared::raw_from_entry(e)) {
                    Step::Deliver(c, from) => {
                        self.count(from);
                        batch.push(c);
                    }
                    Step::Nothing => {}
                    Step::Abandon => sentinels += 1,
                }
            }
            // `close` posts one sentinel per waiting thread, but one GQCSEx
            // can take several: one is ours, the others go back for the
            // waiters they were meant for (else those would wait forever).
            for _ in 1..sentinels {
                s.post_abandon();
            }
            if sentinels > 0 || s.closed.load(Ordering::SeqCst) {
                batch.truncate(start);
                break Err(GetError::Abandoned);
            }
            if batch.len() > start {
                s.enter_running();
                break Ok(batch.len() - start);
            }
        };
        ENTRIES.with(|e| *e.borrow_mut() = entries);
        r
    }

    /// Steps the calling thread out of the `running` statistic while it
    /// blocks on something other than the port. Windows itself already stops
    /// counting a blocked worker against the concurrency limit, so this does
    /// not change scheduling here.
    pub fn blocking(&self) -> BlockingGuard {
        let s = &self.inner.shared;
        BlockingGuard {
            _step: crate::queue::StepOut::new(s.id, s.owner_ref()),
        }
    }

    /// Waiting, running, queued and hand-off counters (see the module doc
    /// for what each means on Windows).
    pub fn stats(&self) -> PortStats {
        let s = &self.inner.shared;
        PortStats {
            waiting: s.waiting.load(Ordering::SeqCst),
            running: s.running.load(Ordering::SeqCst),
            queued: crate::sys::windows::queue_depth(s.iocp.0).unwrap_or(0),
            handoffs: s.handoffs.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
        }
    }

    /// Engine counters (see [`EngineStats`]).
    pub fn engine_stats(&self) -> EngineStats {
        let s = &self.inner.shared;
        EngineStats {
            completions: s.completions.load(Ordering::Relaxed),
            enters: s.enters.load(Ordering::Relaxed),
            starved: s.starved.load(Ordering::Relaxed),
            cq_overflows: 0,
            eagain_retries: 0,
            timers: s.timers.len() as u64,
        }
    }

    /// Pool counters (`in_kernel` is always 0 on Windows: a zero-byte
    /// receive holds no buffer).
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.shared.pool.stats()
    }

    /// `CloseHandle(port)`: every waiter returns [`GetError::Abandoned`];
    /// queued packets are dropped; operations in flight are cancelled and
    /// their buffers released once the kernel lets go. On Windows the port
    /// posts one sentinel packet per waiting thread (Wine never wakes
    /// waiters on `CloseHandle`), then drains the port until every cancelled
    /// operation's packet is back (at most 10 s; then their memory is leaked,
    /// never freed under the kernel). The kernel handle itself is closed when
    /// the last handle or operation referring to the port is gone.
    pub fn close(&self) {
        self.inner.shared.close();
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }
}

struct HandleInner {
    h: Arc<HandleShared>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if !self.h.user_closed.swap(true, Ordering::AcqRel) {
            self.h.close();
        }
    }
}

/// A socket associated with a port. Clones share the socket; it is closed
/// when [`Handle::close`] is called or the last clone is dropped, and its
/// descriptor is released only after its last operation completed.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("key", &self.inner.h.key)
            .field("id", &self.inner.h.hid)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Handle {
    /// The completion key given at association.
    pub fn key(&self) -> u64 {
        self.inner.h.key
    }

    /// `CancelIoEx(socket, op)`: asks the operation to end early. It still
    /// completes exactly once — aborted, or with its normal result if the
    /// cancel lost the race. Cancelling a finished operation does nothing.
    /// A TCP send cancelled after part of it went out ends the handle's
    /// sends (see [`crate::Completion::transferred`]).
    pub fn cancel(&self, op: OpId) -> io::Result<()> {
        if self.is_closed() {
            return Err(error::handle_closed());
        }
        if self.inner.h.port.closed.load(Ordering::Acquire) {
            return Err(error::port_closed());
        }
        self.inner.h.cancel_op(op.0, false);
        Ok(())
    }

    /// `closesocket`: aborts every pending operation (each still completes
    /// once) and closes the socket after the last of them
    /// (`CancelIoEx(socket, NULL)`, drain, then `closesocket`).
    pub fn close(&self) {
        if !self.inner.h.user_closed.swap(true, Ordering::AcqRel) {
            self.inner.h.close();
        }
    }

    /// Whether `close` was called (or the port was closed).
    pub fn is_closed(&self) -> bool {
        self.inner.h.user_closed.load(Ordering::Acquire)
    }

    /// Runs `f` with a borrowed view of the socket (for socket options,
    /// addresses, `shutdown`). Fails once the handle or its port is closed.
    /// The socket stays open while `f` runs, even if another thread closes
    /// the handle or the port meanwhile (`closesocket` then waits for `f`).
    /// Do not switch it back to blocking mode: the pooled receive's
    /// follow-up read relies on non-blocking mode.
    pub fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        if self.inner.h.port.closed.load(Ordering::Acquire) {
            return Err(error::port_closed());
        }
        if self.is_closed() {
            return Err(error::handle_closed());
        }
        self.inner.h.with_socket(f)
    }
}
