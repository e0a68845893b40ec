//! The public completion port: [`Port`], [`PortBuilder`], [`Handle`].

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) use crate::backend::Config;
pub use crate::backend::{Backend, BackendInfo, EngineStats, PortBuilder, PortStats};
use crate::error::{self, GetError, SubmitError};
use crate::op::{Completion, OpId, OpKind, OpOptions};
use crate::pool::{PoolShared, PoolStats};
use crate::queue::{thread_tag, BlockingGuard as QueueGuard, Queue};
use crate::sys::{self, Cmd, EngineShared, OpData, OpReq, SocketFd};

static NEXT_PORT: AtomicU64 = AtomicU64::new(1);

struct InlineEngine {
    owner: u64,
    engine: Mutex<Option<sys::Engine>>,
}

pub(crate) struct PortInner {
    id: u64,
    queue: Queue<Completion>,
    engines: Vec<Arc<EngineShared>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    inline: Option<InlineEngine>,
    next_engine: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
    info: BackendInfo,
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
            .field("id", &self.inner.id)
            .field("backend", &self.inner.info.backend)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Returned by [`Port::blocking`]: while it lives, the thread that took it
/// does not count against the concurrency limit.
///
/// The running count stays exact whatever the order of `get`, `blocking()`
/// and drop:
/// * the thread is back in the count when its **last** guard drops (nested
///   guards, dropped in any order);
/// * a `get` or `get_many` inside the guard ends what the guard would
///   restore: the thread runs from that `get` on if it returned packets, and
///   the guard's drop adds nothing;
/// * a thread that exits with a guard alive (dropped during the exit,
///   parked in a thread-local, or forgotten) leaves nothing counted.
///
/// The guard is **not `Send`**: being out of the count is a state of the
/// thread that took the guard (as a worker blocked elsewhere is, on
/// Windows), and only that thread knows whether it has called `get` since.
/// Dropped on another thread it would count a thread that has moved on, or
/// one that never ran.
///
/// ```compile_fail,E0277
/// let port = iocp::Port::new(1).unwrap();
/// let guard = port.blocking();
/// std::thread::spawn(move || drop(guard)); // error: `BlockingGuard` is not `Send`
/// ```
pub struct BlockingGuard {
    _g: QueueGuard<Completion>,
}

impl Port {
    /// `CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, concurrency)`:
    /// a port with the default engine. `concurrency` 0 = number of CPUs.
    pub fn new(concurrency: usize) -> io::Result<Port> {
        Port::builder().concurrency(concurrency).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> PortBuilder {
        PortBuilder::default()
    }

    pub(crate) fn start(mut cfg: Config, want: Backend, why: String) -> io::Result<Port> {
        if cfg.inline {
            // The per-core model: one engine, driven by the building thread.
            cfg.engines = 1;
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
                None => (want, why.clone()),
            };
            if cfg.inline {
                let (engine, bi) = sys::Engine::create(
                    engine_want,
                    engine_why,
                    shared.clone(),
                    queue.clone(),
                    &cfg,
                )?;
                inline = Some(InlineEngine {
                    owner: thread_tag(),
                    engine: Mutex::new(Some(engine)),
                });
                info.get_or_insert(bi);
            } else {
                let (tx, rx) = std::sync::mpsc::channel();
                let (s2, q2, c2) = (shared.clone(), queue.clone(), cfg.clone());
                let t = std::thread::Builder::new()
                    .name(format!("iocp-engine-{i}"))
                    .spawn(move || {
                        match sys::Engine::create(engine_want, engine_why, s2, q2, &c2) {
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
        Ok(Port {
            inner: Arc::new(PortInner {
                id: NEXT_PORT.fetch_add(1, Ordering::Relaxed),
                queue,
                engines,
                threads: Mutex::new(threads),
                inline,
                next_engine: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                info,
            }),
        })
    }

    /// The backend in use and why it was chosen.
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.info
    }

    /// The concurrency limit.
    pub fn concurrency(&self) -> usize {
        self.inner.queue.limit()
    }

    /// `CreateIoCompletionPort(socket, port, key, 0)`: associates a socket
    /// with the port under a completion key. The port owns the socket from
    /// now on and closes it after the handle's last completion.
    pub fn associate(&self, socket: impl Into<socket2::Socket>, key: u64) -> io::Result<Handle> {
        let socket: socket2::Socket = socket.into();
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(error::port_closed());
        }
        socket.set_nonblocking(true)?;
        let n = self.inner.engines.len();
        let e = self.inner.next_engine.fetch_add(1, Ordering::Relaxed) % n;
        let engine = self.inner.engines[e].clone();
        let hid = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sock, fd) = SocketFd::new(socket.into());
        // A refused command is dropped here, which closes the socket.
        engine
            .send(Cmd::Register { hid, fd, key })
            .map_err(|_| error::port_closed())?;
        Ok(Handle {
            inner: Arc::new(HandleInner {
                hid,
                key,
                port: self.inner.id,
                engine,
                sock,
                closed: AtomicBool::new(false),
            }),
        })
    }

    pub(crate) fn start_op(
        &self,
        h: &Handle,
        data: OpData,
        opts: OpOptions,
    ) -> Result<OpId, SubmitError> {
        if h.inner.port != self.inner.id {
            return Err(SubmitError::new(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the handle belongs to another port",
                ),
                data,
            ));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::new(error::port_closed(), data));
        }
        if h.inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::new(error::handle_closed(), data));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let req = OpReq {
            hid: h.inner.hid,
            key: h.inner.key,
            id,
            token: opts.token,
            deadline: opts.deadline,
            data,
        };
        match h.inner.engine.send(Cmd::Start(req)) {
            Ok(()) => Ok(OpId(id)),
            Err(Cmd::Start(req)) => Err(SubmitError::new(error::port_closed(), req.data)),
            Err(_) => Err(SubmitError::with_bufs(
                error::port_closed(),
                None,
                Vec::new(),
            )),
        }
    }

    /// `PostQueuedCompletionStatus`: queues a packet of the application's
    /// own and wakes one waiter.
    pub fn post(&self, key: u64, bytes: usize, token: u64) -> io::Result<()> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let c = Completion::new(OpKind::Post, key, token, OpId(id), Ok(bytes));
        self.inner.queue.post(c).map_err(|_| error::port_closed())?;
        if let Some(inl) = &self.inner.inline {
            if thread_tag() != inl.owner {
                self.inner.engines[0].wake();
            }
        }
        Ok(())
    }

    /// Queues a packet (kind [`OpKind::Timer`], `bytes` 0) after `after`.
    pub fn post_after(&self, after: Duration, key: u64, token: u64) -> io::Result<OpId> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let c = Completion::new(OpKind::Timer, key, token, OpId(id), Ok(0));
        let at = Instant::now().checked_add(after).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "timer too far in the future")
        })?;
        self.inner.engines[0]
            .send(Cmd::Timer { at, pkt: c })
            .map_err(|_| error::port_closed())?;
        Ok(OpId(id))
    }

    /// `GetQueuedCompletionStatus`: waits up to `timeout` (`None` = forever,
    /// `Some(ZERO)` = poll) for one packet. A failed operation is `Ok` with
    /// an error `result`; no packet is `Err`.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion, GetError> {
        if let Some(inl) = self.owned_inline() {
            let mut v = Vec::with_capacity(1);
            self.get_inline(inl, &mut v, 1, timeout)?;
            return Ok(v.pop().expect("one packet"));
        }
        Ok(self.inner.queue.get(timeout)?)
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
        if let Some(inl) = self.owned_inline() {
            return self.get_inline(inl, batch, max, timeout);
        }
        Ok(self.inner.queue.get_many(batch, max, timeout)?)
    }

    fn owned_inline(&self) -> Option<&InlineEngine> {
        self.inner
            .inline
            .as_ref()
            .filter(|i| i.owner == thread_tag())
    }

    fn get_inline(
        &self,
        inl: &InlineEngine,
        batch: &mut Vec<Completion>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, GetError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            match self.inner.queue.get_many(batch, max, Some(Duration::ZERO)) {
                Ok(n) => return Ok(n),
                Err(crate::queue::Empty::Abandoned) => return Err(GetError::Abandoned),
                Err(crate::queue::Empty::TimedOut) => {}
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d && timeout != Some(Duration::ZERO) {
                        return Err(GetError::TimedOut);
                    }
                    Some(d.saturating_duration_since(now))
                }
                None => None,
            };
            let mut g = inl.engine.lock().unwrap_or_else(|p| p.into_inner());
            let Some(engine) = g.as_mut() else {
                return Err(GetError::Abandoned);
            };
            let poll = timeout == Some(Duration::ZERO);
            // Posts from other threads go straight to the queue and wake the
            // engine only if it announced a sleep. So announce it first, then
            // look at the queue once more: a post either lands before this
            // look or sees the announcement and wakes the engine. (Pending
            // commands: take them without blocking and come round again.)
            let shared = &self.inner.engines[0];
            let block = !poll
                && shared.prepare_sleep()
                && (self.inner.queue.stats().queued == 0 || {
                    shared.woke();
                    false
                });
            engine.turn(left, block);
            engine.flush_to_queue();
            drop(g);
            if poll {
                return match self.inner.queue.get_many(batch, max, Some(Duration::ZERO)) {
                    Ok(n) => Ok(n),
                    Err(e) => Err(e.into()),
                };
            }
        }
    }

    /// Steps the calling thread out of the concurrency count while it blocks
    /// on something other than the port (Windows notices such waits by
    /// itself; user space cannot, so a handler that blocks says so). Changes
    /// nothing on a thread that is not running on this port. See
    /// [`BlockingGuard`] for nesting, `get` inside a guard, and thread exit.
    pub fn blocking(&self) -> BlockingGuard {
        BlockingGuard {
            _g: self.inner.queue.blocking(),
        }
    }

    /// Waiting, running, queued and hand-off counters.
    pub fn stats(&self) -> PortStats {
        self.inner.queue.stats()
    }

    /// Engine counters, summed over the port's engines.
    pub fn engine_stats(&self) -> EngineStats {
        let mut s = EngineStats::default();
        for e in &self.inner.engines {
            let c = &e.counters;
            s.completions += c.completions.load(Ordering::Relaxed);
            s.enters += c.enters.load(Ordering::Relaxed);
            s.starved += c.starved.load(Ordering::Relaxed);
            s.cq_overflows += c.cq_overflows.load(Ordering::Relaxed);
            s.eagain_retries += c.eagain_retries.load(Ordering::Relaxed);
            s.timers += c.timers.load(Ordering::Relaxed);
        }
        s
    }

    /// Pool counters, summed over the port's engines.
    pub fn pool_stats(&self) -> PoolStats {
        let mut s = PoolStats::default();
        for e in &self.inner.engines {
            let p = e.pool.stats();
            s.total += p.total;
            s.buf_size = p.buf_size;
            s.in_use += p.in_use;
            s.in_kernel += p.in_kernel;
        }
        s
    }

    /// `CloseHandle(port)`: every waiter returns [`GetError::Abandoned`];
    /// queued packets are dropped; operations in flight are cancelled and
    /// their buffers released once the kernel lets go; engine threads are
    /// joined. To get buffers back, close handles and drain with `get`
    /// before closing the port.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

impl PortInner {
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(self.queue.close());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        stop_engines(&self.engines, threads);
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

impl Drop for PortInner {
    fn drop(&mut self) {
        self.close();
    }
}

struct HandleInner {
    hid: u64,
    key: u64,
    port: u64,
    engine: Arc<EngineShared>,
    /// The descriptor, shared with the engine, which closes it after the
    /// handle's last operation (or at the port's close) and after the last
    /// `with_socket` borrow.
    sock: Arc<SocketFd>,
    /// `close` was called or the last clone dropped.
    closed: AtomicBool,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.engine.send(Cmd::Close { hid: self.hid });
        }
    }
}

/// A socket associated with a port. Clones share the socket; it is closed
/// when [`Handle::close`] is called, the last clone is dropped, or the port
/// is closed (or dropped); its descriptor is released only after its last
/// operation completed and no [`with_socket`](Handle::with_socket) call is
/// running.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("key", &self.inner.key)
            .field("id", &self.inner.hid)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Handle {
    /// The completion key given at association.
    pub fn key(&self) -> u64 {
        self.inner.key
    }

    /// `CancelIoEx(socket, op)`: asks the operation to end early. It still
    /// completes exactly once — aborted, or with its normal result if the
    /// cancel lost the race. Cancelling a finished operation does nothing.
    /// A TCP send cancelled after part of it went out ends the handle's
    /// sends (see [`crate::Completion::transferred`]).
    pub fn cancel(&self, op: OpId) -> io::Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(error::handle_closed());
        }
        self.inner
            .engine
            .send(Cmd::Cancel {
                hid: self.inner.hid,
                op: op.0,
            })
            .map_err(|_| error::port_closed())
    }

    /// `closesocket`: aborts every pending operation (each still completes
    /// once) and closes the socket after the last of them.
    pub fn close(&self) {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            let _ = self.inner.engine.send(Cmd::Close {
                hid: self.inner.hid,
            });
        }
    }

    /// Whether `close` was called (or the port was closed).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.inner.engine.is_shutdown()
    }

    /// Runs `f` with a borrowed view of the socket (for socket options,
    /// addresses, `shutdown`). Fails once the handle or its port is closed.
    /// The socket stays open while `f` runs, even if another thread closes
    /// the handle or the port meanwhile (the close of the descriptor then
    /// waits for `f`), so `f` never acts on a descriptor number that was
    /// closed or handed to another socket.
    pub fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        let closed = || {
            if self.inner.engine.is_shutdown() {
                error::port_closed()
            } else {
                error::handle_closed()
            }
        };
        if self.is_closed() {
            return Err(closed());
        }
        self.inner
            .sock
            .borrow(|fd| f(&socket2::SockRef::from(&fd)))
            .unwrap_or_else(|| Err(closed()))
    }
}
