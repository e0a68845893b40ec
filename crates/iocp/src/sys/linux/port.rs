//! The Linux port and handle ([`SysPort`], [`SysHandle`]): a user-space
//! queue, the engines that feed it (on their own threads, or one engine
//! driven from the owner thread's `get`), and the handles spread over them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::driven::Driven;
use super::engine::{CannotDrive, Engine};
use super::files::check_kind;
use crate::config::{BackendInfo, Config, Request};
use crate::error::{self, GetError, SubmitError};
use crate::op::{Completion, OpData, OpId, OpKind, OpOptions};
use crate::pool::PoolShared;
use crate::queue::{Empty, Queue};
use crate::running::{thread_tag, StepOut};
use crate::stats::{EngineStats, PoolStats, PortStats};
use crate::sys::common::direct_io;
use crate::sys::common::{Cmd, EngineShared, OpReq, SocketFd};
use crate::sys::contract::{Associated, Batch, DirectIo, Kind, OsHandle, SysHandle, SysPort};
use crate::sys::uring::RingMode;

/// The engine of an inline port, driven by the thread that built the port.
struct InlineEngine {
    owner: u64,
    engine: Mutex<Option<Engine>>,
    /// The port's queue may hold packets for the owner (shared with the
    /// queue, which rings it when a thread leaving the count lets packets
    /// run).
    bell: Arc<OwnerBell>,
}

/// How an inline port's owner learns that its queue holds packets it may
/// take: the owner waits in its engine, not on the queue's stack.
struct OwnerBell {
    owner: u64,
    /// The port's queue may hold packets: one was posted to it (set after
    /// queuing it, by any thread), the owner's last `get` left some there,
    /// or a thread left the count while the limit held packets back. Clear,
    /// the owner's `get` turns the engine without looking at the queue
    /// first.
    queued: AtomicBool,
    engine: Arc<EngineShared>,
}

impl OwnerBell {
    /// Packets wait in the queue (set after queuing them, or after the
    /// limit let them run): the owner takes them at its next look, and
    /// another thread wakes its engine — the flag first, so an owner that
    /// misses this finds the engine's flag as it prepares to sleep, or is
    /// woken.
    fn ring(&self) {
        self.queued.store(true, Ordering::SeqCst);
        if thread_tag() != self.owner {
            self.engine.posted();
        }
    }
}

pub(crate) struct Port {
    queue: Queue<Completion>,
    engines: Vec<Arc<EngineShared>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    inline: Option<InlineEngine>,
    /// The engine the port's waiting threads drive (no engine thread).
    driven: Option<Arc<Driven>>,
    next_engine: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
}

pub(crate) struct Handle {
    hid: u64,
    key: u64,
    port: u64,
    engine: Arc<EngineShared>,
    /// The descriptor, shared with the engine, which closes it after the
    /// handle's last operation (or at the port's close) and after the last
    /// `with_socket` borrow.
    sock: Arc<SocketFd>,
    /// `close` was called (or the front's last clone dropped).
    closed: AtomicBool,
}

/// How many operation ids a thread takes from a port's counter at once.
const ID_BLOCK: u64 = 256;

std::thread_local! {
    /// The block of operation ids the thread took last: (port id, next,
    /// end).
    static IDS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

fn no_packet(e: Empty) -> GetError {
    match e {
        Empty::TimedOut => GetError::TimedOut,
        Empty::Abandoned => GetError::Abandoned,
    }
}

impl SysPort for Port {
    type Handle = Handle;

    fn start(mut cfg: Config, req: Request) -> io::Result<(Port, BackendInfo)> {
        if cfg.inline {
            // The per-core model: one engine, driven by the building thread.
            cfg.engines = 1;
        } else if cfg.engines == 1 {
            // One engine, and threads that wait on the port: they drive it.
            if let Some(started) = Port::start_driven(&cfg, &req)? {
                return Ok(started);
            }
        }
        let queue = Queue::new(cfg.concurrency);
        // Dropped on an early return, this stops the engines started so far:
        // a failed build leaves no thread, ring, epoll set or descriptor.
        let mut started = Started::default();
        let mut inline = None;
        let mut info = None;
        for i in 0..cfg.engines {
            let pool = PoolShared::new(cfg.pool_bufs, cfg.pool_buf_size);
            let shared = EngineShared::new(pool)?;
            let (engine_want, engine_why) = match &info {
                // Every engine of a port uses the backend the first one got.
                Some(BackendInfo { backend, .. }) => (*backend, "same as engine 0".to_string()),
                None => (req.backend, req.why.clone()),
            };
            if cfg.inline {
                // The owner takes the turns' completions from the engine
                // itself (see `get_inline`).
                let (engine, bi) = Engine::create(
                    engine_want,
                    engine_why,
                    shared.clone(),
                    None,
                    &cfg,
                    RingMode::Owned,
                )?;
                let bell = Arc::new(OwnerBell {
                    owner: thread_tag(),
                    queued: AtomicBool::new(false),
                    engine: shared.clone(),
                });
                let b = bell.clone();
                queue.set_outside_taker(Box::new(move || b.ring()));
                inline = Some(InlineEngine {
                    owner: bell.owner,
                    engine: Mutex::new(Some(engine)),
                    bell,
                });
                info.get_or_insert(bi);
            } else {
                let (tx, rx) = std::sync::mpsc::channel();
                let (s2, q2, c2) = (shared.clone(), queue.clone(), cfg.clone());
                let t = std::thread::Builder::new()
                    .name(format!("iocp-engine-{i}"))
                    .spawn(move || {
                        match Engine::create(
                            engine_want,
                            engine_why,
                            s2,
                            Some(q2),
                            &c2,
                            RingMode::Owned,
                        ) {
                            Ok((engine, bi)) => {
                                let _ = tx.send(Ok(bi));
                                engine.run();
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    })?;
                let reply = rx
                    .recv()
                    .unwrap_or_else(|_| Err(io::Error::other("engine thread died while starting")));
                let bi = match reply {
                    Ok(bi) => bi,
                    Err(e) => {
                        // The thread is ending: wait for it.
                        let _ = t.join();
                        return Err(e);
                    }
                };
                info.get_or_insert(bi);
                started.threads.push(t);
            }
            started.engines.push(shared);
        }
        let engines = std::mem::take(&mut started.engines);
        let threads = std::mem::take(&mut started.threads);
        let info = info.expect("at least one engine");
        tracing::debug!("iocp port: backend {info}");
        let port = Port {
            queue,
            engines,
            threads: Mutex::new(threads),
            inline,
            driven: None,
            next_engine: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        };
        Ok((port, info))
    }

    fn id(&self) -> u64 {
        self.queue.id()
    }

    fn concurrency(&self) -> usize {
        self.queue.limit()
    }

    fn associate(&self, socket: socket2::Socket, key: u64) -> io::Result<Handle> {
        self.register(socket.into(), Kind::Socket, key)
    }

    fn associate_os(&self, h: OsHandle, kind: Kind, key: u64) -> io::Result<Associated<Handle>> {
        let fd = check_kind(h, kind)?;
        let direct = match kind {
            Kind::File => direct_io(fd.as_fd())?.map(|(mem, offset)| DirectIo { mem, offset }),
            Kind::Socket | Kind::Pipe => None,
        };
        Ok((self.register(fd, kind, key)?, direct))
    }

    fn start_op(&self, h: &Handle, data: OpData, opts: OpOptions) -> Result<OpId, SubmitError> {
        let id = self.op_id();
        let req = OpReq {
            hid: h.hid,
            key: h.key,
            id,
            token: opts.token,
            deadline: opts.deadline,
            data,
        };
        let cmd = match self.apply_now(&h.engine, Cmd::Start(req)) {
            None => return Ok(OpId(id)),
            Some(cmd) => cmd,
        };
        match h.engine.send(cmd) {
            Ok(()) => Ok(OpId(id)),
            Err(Cmd::Start(req)) => Err(req.data.refuse(error::port_closed())),
            Err(_) => Err(SubmitError::with_bufs(
                error::port_closed(),
                None,
                Vec::new(),
            )),
        }
    }

    fn post(&self, key: u64, bytes: usize, token: u64) -> io::Result<()> {
        let id = self.op_id();
        let c = Completion::new(OpKind::Post, key, token, OpId(id), Ok(bytes));
        self.queue.post(c).map_err(|_| error::port_closed())?;
        if let Some(inl) = &self.inline {
            inl.bell.ring();
        }
        Ok(())
    }

    fn post_after(&self, at: Instant, key: u64, token: u64) -> io::Result<OpId> {
        let id = self.op_id();
        let c = Completion::new(OpKind::Timer, key, token, OpId(id), Ok(0));
        self.engines[0]
            .send(Cmd::Timer { at, pkt: c })
            .map_err(|_| error::port_closed())?;
        Ok(OpId(id))
    }

    fn get(&self, timeout: Option<Duration>) -> Result<Completion, GetError> {
        if let Some(inl) = self.owned_inline() {
            let mut v = Vec::with_capacity(1);
            let mut one = Batch {
                out: &mut v,
                max: 1,
            };
            self.get_inline(inl, &mut one, timeout)?;
            return Ok(v.pop().expect("one packet"));
        }
        self.queue.get_or(timeout, no_packet)
    }

    fn get_many(&self, mut batch: Batch<'_>, timeout: Option<Duration>) -> Result<usize, GetError> {
        if let Some(inl) = self.owned_inline() {
            return self.get_inline(inl, &mut batch, timeout);
        }
        self.queue.get_many(&mut batch, timeout).map_err(no_packet)
    }

    fn step_out(&self) -> Option<StepOut> {
        self.queue.step_out()
    }

    fn stats(&self) -> PortStats {
        let q = self.queue.stats();
        PortStats {
            waiting: q.waiting,
            running: q.running,
            queued: q.queued,
            handoffs: q.handoffs,
            delivered: q.delivered,
        }
    }

    fn engine_stats(&self) -> EngineStats {
        let mut s = EngineStats::default();
        for e in &self.engines {
            let c = &e.counters;
            s.completions += c.completions.load(Ordering::Relaxed);
            s.enters += c.enters.load(Ordering::Relaxed);
            s.starved += c.starved.load(Ordering::Relaxed);
            s.cq_overflows += c.cq_overflows.load(Ordering::Relaxed);
            s.eagain_retries += c.eagain_retries.load(Ordering::Relaxed);
            s.timers += c.timers.load(Ordering::Relaxed);
            s.file_queue += c.file_queue.load(Ordering::Relaxed);
            s.file_threads += c.file_threads.load(Ordering::Relaxed);
        }
        s
    }

    fn pool_stats(&self) -> PoolStats {
        let mut s = PoolStats::default();
        for e in &self.engines {
            let p = e.pool.stats();
            s.total += p.total;
            s.buf_size = p.buf_size;
            s.in_use += p.in_use;
            s.in_kernel += p.in_kernel;
        }
        s
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(self.queue.close());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        stop_engines(&self.engines, threads);
        if let Some(d) = &self.driven {
            d.shutdown();
        }
        if let Some(inl) = &self.inline {
            let engine = inl.engine.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(mut engine) = engine {
                if inl.owner == thread_tag() {
                    engine.shutdown();
                } else {
                    engine.abandon();
                }
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Port {
    /// A fresh operation id. Each thread takes ids from the port's counter
    /// a block at a time, so posts and starts from several threads do not
    /// all write one shared counter (whose cache line also holds what every
    /// `get` and `post` reads). Ids stay unique for the port's lifetime, but
    /// do not tell in which order operations started.
    fn op_id(&self) -> u64 {
        let port = self.queue.id();
        IDS.try_with(|ids| {
            let (p, next, end) = ids.get();
            if p == port && next < end {
                ids.set((p, next + 1, end));
                return next;
            }
            let start = self.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed);
            ids.set((port, start + 1, start + ID_BLOCK));
            start
        })
        .unwrap_or_else(|_| self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands `fd` (of `kind`) to the next engine, round-robin.
    fn register(&self, fd: OwnedFd, kind: Kind, key: u64) -> io::Result<Handle> {
        let n = self.engines.len();
        let e = self.next_engine.fetch_add(1, Ordering::Relaxed) % n;
        let engine = self.engines[e].clone();
        let hid = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sock, fd) = SocketFd::new(fd);
        // A refused command is dropped here, which closes the descriptor.
        engine
            .send(Cmd::Register { hid, fd, key, kind })
            .map_err(|_| error::port_closed())?;
        Ok(Handle {
            hid,
            key,
            port: self.id(),
            engine,
            sock,
            closed: AtomicBool::new(false),
        })
    }

    /// A port whose waiting threads drive its one engine, or `None` if the
    /// kernel cannot have several threads drive an io_uring (the port then
    /// gets an engine thread).
    fn start_driven(cfg: &Config, req: &Request) -> io::Result<Option<(Port, BackendInfo)>> {
        let pool = PoolShared::new(cfg.pool_bufs, cfg.pool_buf_size);
        let shared = EngineShared::new(pool)?;
        // Limit 1: one thread runs at a time, so a completion that waits
        // for a busy thread's next kernel entry could not go to another
        // anyway.
        let mode = RingMode::Shared {
            coop: cfg.concurrency == 1,
        };
        let created = Engine::create(
            req.backend,
            req.why.clone(),
            shared.clone(),
            None,
            cfg,
            mode,
        );
        let (engine, info) = match created {
            Ok(x) => x,
            Err(e) if CannotDrive::is(&e) => {
                tracing::debug!("iocp port: {e}; an engine thread drives it");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let queue = Queue::new(cfg.concurrency);
        let driven = Driven::new(engine, shared.clone(), queue.downgrade(), queue.id())?;
        queue.set_kernel(driven.clone());
        tracing::debug!("iocp port: backend {info}, driven by its waiting threads");
        let port = Port {
            queue,
            engines: vec![shared],
            threads: Mutex::new(Vec::new()),
            inline: None,
            driven: Some(driven),
            next_engine: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        };
        Ok(Some((port, info)))
    }

    /// The inline engine, if this port has one and the caller owns it.
    fn owned_inline(&self) -> Option<&InlineEngine> {
        self.inline.as_ref().filter(|i| i.owner == thread_tag())
    }

    /// On an inline port's owner thread, between turns, with no command
    /// queued before it: carries out `cmd` (for `engine`) at once, instead
    /// of queuing it for the next turn to take in — the owner is the one
    /// that would take it in anyway. On a driven port, by a thread running
    /// on it, see [`Driven::start_now`]. Gives it back otherwise.
    fn apply_now(&self, engine: &Arc<EngineShared>, cmd: Cmd) -> Option<Cmd> {
        if let Some(d) = &self.driven {
            // Its one engine is `engine`.
            return d.start_now(cmd);
        }
        let Some(inl) = self.owned_inline() else {
            return Some(cmd);
        };
        // A command queued earlier (another thread's registration, say)
        // must go first; a shut-down engine refuses it in `send`.
        if engine.has_cmds() || engine.is_shutdown() || !Arc::ptr_eq(engine, &self.engines[0]) {
            return Some(cmd);
        }
        // Held (a start made from inside a turn) or poisoned: queued, the
        // next turn takes it in.
        let Ok(mut g) = inl.engine.try_lock() else {
            return Some(cmd);
        };
        match g.as_mut() {
            Some(e) => {
                e.command(cmd);
                None
            }
            None => Some(cmd),
        }
    }

    /// Takes what is queued into the owner's batch (see `get_inline`).
    fn take_queued(&self, inl: &InlineEngine, batch: &mut Batch<'_>) -> Result<usize, GetError> {
        // Cleared first: a post after this sets it again.
        inl.bell.queued.store(false, Ordering::SeqCst);
        let (n, more) = self
            .queue
            .poll_with(batch, &mut Vec::new())
            .map_err(no_packet)?;
        if more {
            inl.bell.queued.store(true, Ordering::SeqCst);
        }
        Ok(n)
    }

    /// `get_many` on the owner thread of an inline port: take what is
    /// queued (if anything may be), else turn the engine with the caller's
    /// timeout and take what is queued and what the turn produced, in that
    /// order — the turn's completions straight from the engine into the
    /// batch when nothing is queued (the owner is the port's only getter).
    fn get_inline(
        &self,
        inl: &InlineEngine,
        batch: &mut Batch<'_>,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        let poll = timeout == Some(Duration::ZERO);
        // A finite timeout reads the clock once per turn, here; the turn
        // fires its timers and bounds its wait by this reading instead of
        // one of its own.
        let mut now = timeout.map(|_| Instant::now());
        let deadline = timeout.and_then(|t| now?.checked_add(t));
        loop {
            if inl.bell.queued.load(Ordering::SeqCst) {
                let n = self.take_queued(inl, batch)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            let left = match deadline {
                Some(d) => {
                    let now = *now.get_or_insert_with(Instant::now);
                    // Never on the first pass: `now` is then the reading
                    // the deadline was made from, so every `get` turns the
                    // engine at least once — and that turn hands over what
                    // the owner's own starts completed in the engine
                    // between turns (epoll's first attempt), so no `get`
                    // times out with one of those ready.
                    if now >= d && !poll {
                        // Through the queue all the same: a `get` that
                        // times out ends the thread's running period too.
                        return match self.take_queued(inl, batch)? {
                            0 => Err(GetError::TimedOut),
                            n => Ok(n),
                        };
                    }
                    Some(d.saturating_duration_since(now))
                }
                None => None,
            };
            let mut g = inl.engine.lock().unwrap_or_else(|p| p.into_inner());
            let Some(engine) = g.as_mut() else {
                return Err(GetError::Abandoned);
            };
            // The turn takes in what is pending (commands, buffers given
            // back) and then blocks only if nothing else is ready — a packet
            // another thread posted included (an inline engine looks at the
            // post flag once it announced its sleep) — so an
            // operation started by the last handler is submitted in the same
            // `io_uring_enter` that waits.
            engine.turn(now.take(), left, !poll);
            let out = engine.out();
            let took = self.queue.poll_with(batch, out);
            if took.is_err() {
                // The port closed: nobody takes these any more.
                out.clear();
            }
            drop(g);
            let (n, more) = took.map_err(no_packet)?;
            if more {
                inl.bell.queued.store(true, Ordering::SeqCst);
            }
            if n > 0 {
                return Ok(n);
            }
            if poll {
                return Err(GetError::TimedOut);
            }
        }
    }
}

/// The engines a starting port has started so far.
#[derive(Default)]
struct Started {
    engines: Vec<Arc<EngineShared>>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Started {
    fn drop(&mut self) {
        stop_engines(&self.engines, std::mem::take(&mut self.threads));
    }
}

/// Asks every engine to stop and joins their threads (each engine closes
/// what it holds on its own thread before it ends).
fn stop_engines(engines: &[Arc<EngineShared>], threads: Vec<JoinHandle<()>>) {
    for e in engines {
        e.begin_shutdown();
    }
    for t in threads {
        if t.thread().id() != std::thread::current().id() {
            let _ = t.join();
        }
    }
}

impl SysHandle for Handle {
    fn id(&self) -> u64 {
        self.hid
    }

    fn key(&self) -> u64 {
        self.key
    }

    fn port_id(&self) -> u64 {
        self.port
    }

    fn cancel(&self, op: OpId) -> io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(error::handle_closed());
        }
        self.engine
            .send(Cmd::Cancel {
                hid: self.hid,
                op: op.0,
            })
            .map_err(|_| error::port_closed())
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.engine.send(Cmd::Close { hid: self.hid });
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.engine.is_shutdown()
    }

    fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        let closed = || {
            if self.engine.is_shutdown() {
                error::port_closed()
            } else {
                error::handle_closed()
            }
        };
        if self.is_closed() {
            return Err(closed());
        }
        self.sock
            .borrow(|fd| f(&socket2::SockRef::from(&fd)))
            .unwrap_or_else(|| Err(closed()))
    }
}
