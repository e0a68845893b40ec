//! The public completion port, written once for every platform: [`Port`],
//! [`PortBuilder`] and [`BlockingGuard`]. Each call checks what is the same
//! everywhere and hands the rest to the platform's backend (`sys::Port`,
//! through the contract in `sys`).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Backend, BackendInfo, Config};
use crate::error::{self, GetError, SubmitError};
use crate::handle::{FileHandle, Handle, PipeHandle};
use crate::op::{Completion, OpData, OpId, OpOptions};
use crate::running::StepOut;
use crate::stats::{EngineStats, PoolStats, PortStats};
use crate::sys::{self, Kind, OsHandle, SysHandle, SysPort};

/// A completion port: a queue of completion packets that any number of
/// threads wait on (`GetQueuedCompletionStatus`), fed by the operations
/// started on the handles associated with it.
///
/// `Port` is cheap to clone; every clone is the same port. Dropping the last
/// clone closes it.
///
/// On Linux the queue lives in user space and is fed by engines (io_uring or
/// epoll, see [`Backend`]); on Windows the port is the kernel's own
/// completion port, which does the LIFO wake-up and the concurrency limit
/// by itself.
#[derive(Clone)]
pub struct Port {
    inner: Arc<PortInner>,
}

struct PortInner {
    imp: sys::Port,
    info: BackendInfo,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        self.imp.close();
    }
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.inner.imp.id())
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
/// A guard that is forgotten (`mem::forget`, an `Rc` cycle) is never
/// dropped, so the thread stays out of the count until its next `get` or
/// `get_many` on the port, which ends every step-out. A guard taken before
/// that joins the forgotten one, as a nested guard joins a live outer guard
/// (the library cannot tell the two apart), so its drop puts nothing back
/// either. Until that `get`, the port may run one thread more than its
/// limit; nothing else is affected (no count goes below zero, no other
/// thread's state changes), and from the `get` on the count is exact again.
///
/// The guard is **not `Send`**: being out of the count is a state of the
/// thread that took the guard (as a worker blocked elsewhere is, on
/// Windows), and only that thread knows whether it has called `get` since.
/// Dropped on another thread it would count a thread that has moved on, or
/// one that never ran.
///
/// On Windows the kernel already stops counting a worker that blocks on
/// anything else, so there the guard changes no scheduling; it only steps
/// the thread out of the `running` statistic, with the same rules.
///
/// ```compile_fail,E0277
/// let port = completion_port::Port::new(1).unwrap();
/// let guard = port.blocking();
/// std::thread::spawn(move || drop(guard)); // error: `BlockingGuard` is not `Send`
/// ```
pub struct BlockingGuard {
    _step: Option<StepOut>,
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

    /// The backend in use and why it was chosen.
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.info
    }

    /// The concurrency limit.
    pub fn concurrency(&self) -> usize {
        self.inner.imp.concurrency()
    }

    /// `CreateIoCompletionPort(socket, port, key, 0)`: associates a socket
    /// with the port under a completion key. The port owns the socket from
    /// now on and closes it after the handle's last completion. The socket is
    /// put in non-blocking mode (the epoll engine and Windows' pooled receive
    /// rely on it; io_uring and overlapped operations ignore the mode).
    pub fn associate(&self, socket: impl Into<socket2::Socket>, key: u64) -> io::Result<Handle> {
        let socket: socket2::Socket = socket.into();
        if self.is_closed() {
            return Err(error::port_closed());
        }
        socket.set_nonblocking(true)?;
        let stream = socket.r#type().map_or(true, |t| t == socket2::Type::STREAM);
        Ok(Handle::new(self.inner.imp.associate(socket, key)?, stream))
    }

    /// `CreateIoCompletionPort(file, port, key, 0)` for a file: a regular
    /// file or a block device, read and written at offsets. The port owns
    /// the file from now on. Open it with [`crate::fs::OpenOptions`], which
    /// sets what each platform needs (on Windows `FILE_FLAG_OVERLAPPED`).
    ///
    /// Anything else is refused with an `InvalidInput` error saying what it
    /// is (a directory, a pipe or FIFO, a socket, a terminal or another
    /// character device), and closed. On the epoll backend file operations
    /// run on a small pool of threads ([`PortBuilder::file_threads`]); on
    /// io_uring the kernel runs them.
    pub fn associate_file(&self, file: std::fs::File, key: u64) -> io::Result<FileHandle> {
        if self.is_closed() {
            return Err(error::port_closed());
        }
        let (imp, direct) = self.inner.imp.associate_os(file.into(), Kind::File, key)?;
        Ok(FileHandle::new(imp, direct))
    }

    /// `CreateIoCompletionPort(pipe, port, key, 0)` for a pipe: an end of
    /// `std::io::pipe()`, a child process's `ChildStdin`, `ChildStdout` or
    /// `ChildStderr`, or a FIFO opened as a `File`. The port owns it from
    /// now on. On Linux it is put in the mode its engine needs
    /// (non-blocking for epoll, blocking for io_uring); the other end, if
    /// another process holds it, is not affected.
    ///
    /// A regular file, a socket, a directory or a terminal is refused with
    /// an `InvalidInput` error saying what it is, and closed. On Windows a
    /// pipe must have been opened with `FILE_FLAG_OVERLAPPED`, else it is
    /// refused with an error naming the flag: the ends of
    /// [`crate::fs::pipe`], a named pipe of `completion_port::fs::create_named_pipe`
    /// (or its client, opened with [`crate::fs::OpenOptions`]) and a child's
    /// piped stdio are; `std::io::pipe`'s (`CreatePipe`) are not.
    pub fn associate_pipe(&self, pipe: impl Into<OsHandle>, key: u64) -> io::Result<PipeHandle> {
        if self.is_closed() {
            return Err(error::port_closed());
        }
        let (imp, direct) = self.inner.imp.associate_os(pipe.into(), Kind::Pipe, key)?;
        Ok(PipeHandle::new(imp, direct))
    }

    /// Starts an operation (every operation in `ops.rs` comes here): the
    /// handle must belong to this port, and neither may be closed; else
    /// the operation does not start and its buffers come back in the error.
    pub(crate) fn start_op(
        &self,
        h: &Handle,
        data: OpData,
        opts: OpOptions,
    ) -> Result<OpId, SubmitError> {
        let imp = h.imp();
        if imp.port_id() != self.inner.imp.id() {
            return Err(data.refuse(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the handle belongs to another port",
            )));
        }
        if self.is_closed() {
            return Err(data.refuse(error::port_closed()));
        }
        if imp.is_closed() {
            return Err(data.refuse(error::handle_closed()));
        }
        self.inner.imp.start_op(imp, data, opts)
    }

    /// `PostQueuedCompletionStatus`: queues a packet of the application's
    /// own and wakes one waiter.
    pub fn post(&self, key: u64, bytes: usize, token: u64) -> io::Result<()> {
        self.inner.imp.post(key, bytes, token)
    }

    /// Queues a packet (kind [`OpKind::Timer`](crate::OpKind::Timer),
    /// `bytes` 0) after `after`. (On Windows from the port's timer thread,
    /// started on first use.)
    pub fn post_after(&self, after: Duration, key: u64, token: u64) -> io::Result<OpId> {
        let at = Instant::now().checked_add(after).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "timer too far in the future")
        })?;
        self.inner.imp.post_after(at, key, token)
    }

    /// `GetQueuedCompletionStatus`: waits up to `timeout` (`None` = forever,
    /// `Some(ZERO)` = poll) for one packet. A failed operation is `Ok` with
    /// an error `result`; no packet is `Err`.
    pub fn get(&self, timeout: Option<Duration>) -> Result<Completion, GetError> {
        self.inner.imp.get(timeout)
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
        let batch = sys::Batch {
            out: batch,
            max: max.max(1),
        };
        self.inner.imp.get_many(batch, timeout)
    }

    /// Steps the calling thread out of the concurrency count while it blocks
    /// on something other than the port (Windows notices such waits by
    /// itself; user space cannot, so a handler that blocks says so). Changes
    /// nothing on a thread that is not running on this port. See
    /// [`BlockingGuard`] for nesting, `get` inside a guard, and thread exit.
    pub fn blocking(&self) -> BlockingGuard {
        BlockingGuard {
            _step: self.inner.imp.step_out(),
        }
    }

    /// Waiting, running, queued and hand-off counters (see [`PortStats`]
    /// for what each means on Windows).
    pub fn stats(&self) -> PortStats {
        self.inner.imp.stats()
    }

    /// Engine counters, summed over the port's engines.
    pub fn engine_stats(&self) -> EngineStats {
        self.inner.imp.engine_stats()
    }

    /// Pool counters, summed over the port's engines.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.imp.pool_stats()
    }

    /// `CloseHandle(port)`: every waiter returns [`GetError::Abandoned`];
    /// queued packets are dropped; every handle is closed; operations in
    /// flight are cancelled and their buffers released once the kernel lets
    /// go; engine threads are joined. To get buffers back, close handles and
    /// drain with `get` before closing the port.
    ///
    /// An inline io_uring port closed (or dropped) on a thread other than
    /// its owner cannot enter its ring from there: the buffers of the
    /// operations the kernel holds and its buffer pool (with its provided-
    /// buffer ring) are leaked for good, never freed under the kernel. The
    /// ring itself is closed (its queues unmapped, SQEs never submitted
    /// discarded); the kernel cancels what it still holds and writes only
    /// into the leaked memory. Its descriptors are still closed, and what
    /// the kernel never saw (new handles, operations started since the
    /// owner's last turn or waiting behind another) is dropped at once.
    /// Close an inline port on its owner thread to get everything back.
    ///
    /// On Windows the port posts one sentinel packet per waiting thread
    /// (Wine never wakes waiters on `CloseHandle`), then drains the port
    /// until every cancelled operation's packet is back (at most 10 s; then
    /// their memory is leaked, never freed under the kernel). The kernel
    /// handle itself is closed when the last handle or operation referring
    /// to the port is gone.
    pub fn close(&self) {
        self.inner.imp.close();
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.inner.imp.is_closed()
    }
}

/// Configures a [`Port`] (what `CreateIoCompletionPort`'s arguments and the
/// engine behind it can be).
#[derive(Debug, Clone, Default)]
pub struct PortBuilder {
    cfg: Config,
}

/// Writes [`PortBuilder`]'s setters: each line names the setter, its
/// argument, and the setting it makes of it; the setter carries the docs
/// written above its line.
macro_rules! builder_setters {
    ($($(#[$doc:meta])* fn $name:ident($arg:ident: $T:ty) => $field:ident = $value:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, $arg: $T) -> Self {
            self.cfg.$field = $value;
            self
        }
    )*};
}

impl PortBuilder {
    builder_setters! {
        /// The concurrency limit: how many threads may run at once. 0 means the
        /// number of CPUs, as on Windows.
        fn concurrency(n: usize) => concurrency = n;

        /// How many engine threads feed the port on Linux (sockets are spread
        /// across them round-robin). Default 1. Ignored on Windows, where the
        /// kernel is the engine.
        fn engines(n: usize) => engines = n.max(1);

        /// The backend; overrides `IOCP_BACKEND`. Default: `IOCP_BACKEND`, else `auto`.
        fn backend(b: Backend) => backend = Some(b);

        /// Pool buffers per engine (per port on Windows) for pooled receives
        /// (default 256, at most [`MAX_POOL_BUFFERS`](crate::MAX_POOL_BUFFERS),
        /// 32768).
        fn pool_buffers(n: usize) => pool_bufs = n.clamp(1, crate::MAX_POOL_BUFFERS);

        /// Bytes per pool buffer (default 16 KiB).
        fn pool_buffer_size(n: usize) => pool_buf_size = n.max(1);

        /// Submission queue entries per io_uring (default 256; ignored elsewhere).
        fn sq_entries(n: u32) => sq_entries = n.max(8);

        /// Completion queue entries per io_uring (default 4096; at least 2×SQ;
        /// ignored elsewhere).
        fn cq_entries(n: u32) => cq_entries = n.max(16);

        /// The per-core model: no engine thread; the thread that builds the port
        /// drives its engine from inside `get` and handles its own completions,
        /// with no hand-off. Such a port belongs to that one thread: other
        /// threads may `post` to it (which wakes it) and start operations, but
        /// only the owner should call `get` (another thread's `get` takes only
        /// what is queued, and may wait behind the owner: the owner counts as
        /// running while it waits in the kernel). On Windows it means concurrency 1:
        /// the kernel lets one thread at a time run on the port.
        fn inline(yes: bool) => inline = yes;

        /// The most threads that run file operations on the epoll backend
        /// (default 4, at least 1): regular files are never "ready" for epoll,
        /// so each read, write or flush on a file blocks one of these threads,
        /// and operations beyond `n` wait in a queue
        /// ([`EngineStats::file_queue`]). Threads start when work comes and
        /// stay until the port closes. Per engine; ignored by io_uring (the
        /// kernel runs file operations, no thread of ours) and on Windows.
        fn file_threads(n: usize) => file_threads = n.max(1);
    }

    /// Creates the port and starts its engines.
    pub fn build(self) -> io::Result<Port> {
        let (cfg, req) = self.cfg.resolve()?;
        let (imp, info) = sys::Port::start(cfg, req)?;
        Ok(Port {
            inner: Arc::new(PortInner { imp, info }),
        })
    }
}

#[cfg(test)]
mod tests;
