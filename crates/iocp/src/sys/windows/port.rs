//! The Windows port and handle ([`SysPort`], [`SysHandle`]) on the kernel's
//! own completion port (see `sys::windows` for the packet format and the
//! error table).
//!
//! What a few things mean here:
//!
//! * **Concurrency and wake order** are the kernel's: `concurrency(n)` is
//!   `NumberOfConcurrentThreads`; LIFO wake-up and "a thread blocked on
//!   anything else does not count" are done by Windows itself.
//! * `blocking()` does nothing to scheduling (the kernel notices a blocked
//!   worker by itself); it only steps the thread out of the user-space
//!   `running` statistic, so `stats()` reads the same as on Linux.
//! * Builder settings that describe Linux engines (`engines`, `sq_entries`,
//!   `cq_entries`) are accepted and ignored: the kernel is the engine.
//!   `inline(true)` (the per-core model) means concurrency 1: the kernel then
//!   lets one thread run at a time, which is what per-core handling needs.
//!   `pool_buffers`/`pool_buffer_size` size the port's one receive pool.

use std::io;
use std::os::windows::io::AsRawSocket;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use windows_sys::Win32::Networking::WinSock::SOCKET;
use windows_sys::Win32::System::IO::OVERLAPPED_ENTRY;

use super::cport::{Got, Packet};
use super::engine::{Delivery, HandleShared, Shared, TimerItem, KEY_IO};
use crate::config::{Backend, BackendInfo, Config, Request};
use crate::error::{self, GetError, SubmitError};
use crate::op::{Completion, OpData, OpId, OpKind, OpOptions};
use crate::running::{thread_tag, StepOut};
use crate::stats::{EngineStats, PoolStats, PortStats};
use crate::sys::contract::{Associated, Batch, Kind, OsHandle, SysHandle, SysPort};

pub(crate) struct Port {
    shared: Arc<Shared>,
}

pub(crate) struct Handle {
    h: Arc<HandleShared>,
}

/// How long a `get` may wait.
struct Wait {
    /// `None`: forever.
    deadline: Option<Instant>,
}

impl Wait {
    fn new(timeout: Option<Duration>) -> Wait {
        Wait {
            // A timeout too long for an `Instant` is forever.
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    /// Milliseconds for GQCS until the deadline (`INFINITE` for none),
    /// rounded up so a wait never ends before it.
    fn ms(&self) -> u32 {
        match self.deadline {
            None => u32::MAX, // INFINITE
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(u32::MAX as u128 - 1) as u32
            }
        }
    }

    /// Runs `wait` (a GQCS call, given the milliseconds left) counted in
    /// `waiting`, or fails with `Abandoned` if the port is closed. The
    /// thread counts itself before it checks `closed` (see `Shared::close`).
    fn counted<R>(&self, s: &Shared, wait: impl FnOnce(u32) -> R) -> Result<R, GetError> {
        let ms = self.ms();
        s.waiting.fetch_add(1, Ordering::SeqCst);
        if s.closed.load(Ordering::SeqCst) {
            s.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(GetError::Abandoned);
        }
        let r = wait(ms);
        s.waiting.fetch_sub(1, Ordering::SeqCst);
        Ok(r)
    }
}

std::thread_local! {
    static ENTRIES: std::cell::RefCell<Vec<OVERLAPPED_ENTRY>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl SysPort for Port {
    type Handle = Handle;

    fn start(mut cfg: Config, req: Request) -> io::Result<(Port, BackendInfo)> {
        if cfg.inline {
            // The per-core model: the kernel lets one thread run at a time.
            cfg.concurrency = 1;
        }
        let why = req.why;
        let reason = match req.backend {
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
        let id = crate::running::next_id();
        let shared = Shared::new(id, cfg.concurrency, cfg.pool_bufs, cfg.pool_buf_size)?;
        let info = BackendInfo {
            backend: Backend::Iocp,
            reason,
        };
        Ok((Port { shared }, info))
    }

    fn id(&self) -> u64 {
        self.shared.id
    }

    fn concurrency(&self) -> usize {
        self.shared.limit
    }

    fn associate(&self, socket: socket2::Socket, key: u64) -> io::Result<Handle> {
        let s = &self.shared;
        let raw = socket.as_raw_socket() as SOCKET;
        if socket.r#type().is_ok_and(|t| t == socket2::Type::DGRAM) {
            if let Err(e) = super::net::disable_udp_connreset(raw) {
                tracing::debug!("iocp: SIO_UDP_CONNRESET off failed: {e}");
            }
        }
        // The kernel key is KEY_IO; the application's key lives in the
        // handle.
        s.cport.associate(raw, KEY_IO)?;
        let hid = s.next_id.fetch_add(1, Ordering::Relaxed);
        let h = HandleShared::new(hid, key, socket, s.clone());
        s.register(&h)?;
        Ok(Handle { h })
    }

    fn associate_os(&self, h: OsHandle, kind: Kind, key: u64) -> io::Result<Associated<Handle>> {
        let s = &self.shared;
        let (h, direct) = super::files::check_handle(h, kind)?;
        let raw = std::os::windows::io::AsRawHandle::as_raw_handle(&h) as SOCKET;
        s.cport.associate(raw, KEY_IO)?;
        let hid = s.next_id.fetch_add(1, Ordering::Relaxed);
        let h = HandleShared::new_os(hid, key, h, s.clone());
        s.register(&h)?;
        Ok((Handle { h }, direct))
    }

    fn start_op(&self, h: &Handle, data: OpData, opts: OpOptions) -> Result<OpId, SubmitError> {
        h.h.start(data, opts.token, opts.deadline)
    }

    fn post(&self, key: u64, bytes: usize, token: u64) -> io::Result<()> {
        let s = &self.shared;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        s.post_packet(OpKind::Post, key, token, id, bytes)
    }

    fn post_after(&self, at: Instant, key: u64, token: u64) -> io::Result<OpId> {
        let s = &self.shared;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        if s.closed.load(Ordering::Acquire) || !s.timers.add(at, TimerItem::Post { key, token, id })
        {
            return Err(error::port_closed());
        }
        Ok(OpId(id))
    }

    fn get(&self, timeout: Option<Duration>) -> Result<Completion, GetError> {
        let s = &self.shared;
        s.leave_running();
        let wait = Wait::new(timeout);
        loop {
            let pkt = match wait.counted(s, |ms| s.wait_one(ms))? {
                Got::Packet(pkt) => pkt,
                Got::TimedOut => return Err(GetError::TimedOut),
                Got::Abandoned => return Err(GetError::Abandoned),
            };
            match s.process(pkt) {
                Delivery::Deliver(c, from) => {
                    if s.closed.load(Ordering::SeqCst) {
                        drop(c);
                        return Err(GetError::Abandoned);
                    }
                    self.count(from);
                    s.enter_running();
                    return Ok(c);
                }
                Delivery::Nothing => {
                    if s.closed.load(Ordering::SeqCst) {
                        return Err(GetError::Abandoned);
                    }
                }
                Delivery::Abandon => return Err(GetError::Abandoned),
            }
        }
    }

    fn get_many(&self, batch: Batch<'_>, timeout: Option<Duration>) -> Result<usize, GetError> {
        let Batch { out: batch, max } = batch;
        let s = &self.shared;
        s.leave_running();
        let max = max.clamp(1, 1024);
        let wait = Wait::new(timeout);
        let mut entries = ENTRIES.with(|e| std::mem::take(&mut *e.borrow_mut()));
        entries.resize(max, OVERLAPPED_ENTRY::default());
        let start = batch.len();
        let r = loop {
            let n = match wait.counted(s, |ms| s.wait_many(&mut entries[..max], ms)) {
                Ok(Ok(n)) => n,
                Ok(Err(Got::TimedOut)) => break Err(GetError::TimedOut),
                Ok(Err(_)) | Err(_) => break Err(GetError::Abandoned),
            };
            // Every dequeued entry is ours to process, even after a sentinel.
            let mut sentinels = 0usize;
            for e in &entries[..n] {
                match s.process(Packet::from_entry(e)) {
                    Delivery::Deliver(c, from) => {
                        self.count(from);
                        batch.push(c);
                    }
                    Delivery::Nothing => {}
                    Delivery::Abandon => sentinels += 1,
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

    fn step_out(&self) -> Option<StepOut> {
        let s = &self.shared;
        StepOut::new(s.id, s.owner_ref())
    }

    fn stats(&self) -> PortStats {
        let s = &self.shared;
        PortStats {
            waiting: s.waiting.load(Ordering::SeqCst),
            running: s.running.load(Ordering::SeqCst),
            queued: super::queue_depth(s.cport.raw()).unwrap_or(0),
            handoffs: s.handoffs.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
        }
    }

    fn engine_stats(&self) -> EngineStats {
        let s = &self.shared;
        EngineStats {
            completions: s.completions.load(Ordering::Relaxed),
            enters: s.enters.load(Ordering::Relaxed),
            starved: s.starved.load(Ordering::Relaxed),
            cq_overflows: 0,
            eagain_retries: 0,
            timers: s.timers.len() as u64,
            file_queue: 0,
            file_threads: 0,
        }
    }

    fn pool_stats(&self) -> PoolStats {
        self.shared.pool.stats()
    }

    fn close(&self) {
        self.shared.close();
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl Port {
    /// Counts a delivered packet, and a hand-off if another thread (or the
    /// kernel) queued it.
    fn count(&self, from: u64) {
        let s = &self.shared;
        s.delivered.fetch_add(1, Ordering::Relaxed);
        if from != thread_tag() {
            s.handoffs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SysHandle for Handle {
    fn id(&self) -> u64 {
        self.h.hid
    }

    fn key(&self) -> u64 {
        self.h.key
    }

    fn port_id(&self) -> u64 {
        self.h.port.id
    }

    fn cancel(&self, op: OpId) -> io::Result<()> {
        if self.is_closed() {
            return Err(error::handle_closed());
        }
        if self.h.port.closed.load(Ordering::Acquire) {
            return Err(error::port_closed());
        }
        self.h.cancel_op(op.0, false);
        Ok(())
    }

    fn close(&self) {
        if !self.h.user_closed.swap(true, Ordering::AcqRel) {
            self.h.close();
        }
    }

    fn is_closed(&self) -> bool {
        self.h.user_closed.load(Ordering::Acquire)
    }

    fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        if self.h.port.closed.load(Ordering::Acquire) {
            return Err(error::port_closed());
        }
        if self.is_closed() {
            return Err(error::handle_closed());
        }
        self.h.with_socket(f)
    }
}
