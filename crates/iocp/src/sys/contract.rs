//! The backend contract: what the platform-free front (`port.rs`,
//! `handle.rs`, `ops.rs`) calls, and every backend implements —
//! `sys::Port: SysPort`, `sys::Handle: SysHandle`. A module of its own, so
//! a backend that implements it and `sys` that names the backend's types do
//! not use each other.

use std::io;
use std::time::{Duration, Instant};

use crate::config::{BackendInfo, Config, Request};
use crate::error::{GetError, SubmitError};
use crate::op::{Completion, OpData, OpId, OpOptions};
use crate::running::StepOut;
use crate::stats::{EngineStats, PoolStats, PortStats};

/// An owned operating-system handle of a file or a pipe: a descriptor on
/// Unix, a `HANDLE` on Windows. Every `std` type that owns a file or a pipe
/// converts into it (`File`, `PipeReader`, `PipeWriter`, `ChildStdin`,
/// `ChildStdout`, `ChildStderr`).
#[cfg(unix)]
pub type OsHandle = std::os::fd::OwnedFd;
/// An owned operating-system handle of a file or a pipe: a descriptor on
/// Unix, a `HANDLE` on Windows. Every `std` type that owns a file or a pipe
/// converts into it (`File`, `PipeReader`, `PipeWriter`, `ChildStdin`,
/// `ChildStdout`, `ChildStderr`).
#[cfg(windows)]
pub type OsHandle = std::os::windows::io::OwnedHandle;

/// What an associated handle is, which says which operations it takes and
/// how a backend runs them.
// The Windows backend builds no `Socket` kind: it associates sockets with
// their own call.
#[cfg_attr(windows, allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A socket: accept, connect, send and receive (IP or Unix domain).
    Socket,
    /// A file with offsets (a regular file or a block device): reads and
    /// writes at offsets, flushes.
    File,
    /// A pipe or FIFO (or, on Windows, a named pipe): a stream of reads and
    /// writes.
    Pipe,
}

impl Kind {
    /// The `InvalidInput` error of a handle given to this kind's call that
    /// is something else: `what` it is (in words, "a directory"), and
    /// `is`, the kind it would be associated as, if any.
    pub(crate) fn refusal(self, what: &str, is: Option<Kind>) -> io::Error {
        let call = match self {
            Kind::File => "associate_file",
            Kind::Pipe => "associate_pipe",
            Kind::Socket => "associate",
        };
        let instead = match is {
            Some(Kind::File) => ": associate it with associate_file (reads and writes at offsets)",
            Some(Kind::Pipe) => ": associate it with associate_pipe (a stream, no offsets)",
            Some(Kind::Socket) => ": associate it with associate (sockets, Unix domain ones too)",
            None => ": a port serves regular files, block devices, pipes, FIFOs and sockets only",
        };
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{call} refused the handle: it is {what}{instead}"),
        )
    }
}

/// What [`SysPort::associate_os`] gives back: the backend's handle and, for
/// a file opened for direct I/O, the alignment its operations need.
pub(crate) type Associated<H> = (H, Option<DirectIo>);

/// Where [`SysPort::get_many`] appends its completions, and how many it
/// takes at the most (at least 1).
pub(crate) type Batch<'a> = crate::batch::Batch<'a, Completion>;

/// What a backend's port provides. Every method may be called from any
/// thread, concurrently, also after `close` (then it fails or does nothing
/// as documented, and never blocks).
pub(crate) trait SysPort: Sized + Send + Sync + 'static {
    /// The backend's handle type.
    type Handle: SysHandle;

    /// Builds a port with these settings (`cfg` already resolved: its
    /// concurrency is at least 1) on the backend `req` asks for. `Auto`
    /// picks what the platform has; a backend this platform lacks is an
    /// `Unsupported` error naming it and the backends the build has. A
    /// failed start leaves nothing behind (no thread, ring, port or
    /// descriptor). Returns the port and which backend it runs, and why.
    fn start(cfg: Config, req: Request) -> io::Result<(Self, BackendInfo)>;

    /// The port's id in the running record (unique among ports); a handle
    /// reports it in [`SysHandle::port_id`].
    fn id(&self) -> u64;

    /// The concurrency limit.
    fn concurrency(&self) -> usize;

    /// Associates `socket` (already non-blocking) under `key`: the port owns
    /// it from now on and closes it after the handle's last completion and
    /// its last `with_socket`. Called only while the port is open (a close
    /// racing it still closes the new handle with the port).
    fn associate(&self, socket: socket2::Socket, key: u64) -> io::Result<Self::Handle>;

    /// Associates a file (`kind` [`Kind::File`]) or a pipe ([`Kind::Pipe`])
    /// under `key`, as `associate` does a socket. Anything that is not of
    /// that kind — a directory, a terminal, a socket, a pipe given as a
    /// file — or that this backend cannot serve is refused with an error
    /// that says what it is and what to do instead, and is closed. For a
    /// file opened for direct I/O it also returns the alignment the file's
    /// operations need (the front refuses the others before they start).
    fn associate_os(
        &self,
        h: OsHandle,
        kind: Kind,
        key: u64,
    ) -> io::Result<Associated<Self::Handle>>;

    /// Starts one operation on `h`, which belongs to this port and was open
    /// (as was the port) when the front checked. Its completion comes out
    /// of `get` exactly once; or it fails to start and every buffer comes
    /// back in the error.
    fn start_op(
        &self,
        h: &Self::Handle,
        data: OpData,
        opts: OpOptions,
    ) -> Result<OpId, SubmitError>;

    /// Queues an application packet (`OpKind::Post`) and wakes one waiter;
    /// fails once the port is closed.
    fn post(&self, key: u64, bytes: usize, token: u64) -> io::Result<()>;

    /// Queues a timer packet (`OpKind::Timer`, 0 bytes) at `at`; fails once
    /// the port is closed.
    fn post_after(&self, at: Instant, key: u64, token: u64) -> io::Result<OpId>;

    /// Waits up to `timeout` (`None`: forever, `Some(ZERO)`: poll) for one
    /// packet, with the port's wake order and concurrency limit: the calling
    /// thread stops running on the port when it calls, and runs again when
    /// it gets a packet.
    fn get(&self, timeout: Option<Duration>) -> Result<Completion, GetError>;

    /// As `get`, appending up to `batch.max` packets to `batch.out` (a batch
    /// counts as one running thread); returns how many.
    fn get_many(&self, batch: Batch<'_>, timeout: Option<Duration>) -> Result<usize, GetError>;

    /// Steps the calling thread out of the port's running count until the
    /// returned step-out drops; `None` if the thread does not run here.
    fn step_out(&self) -> Option<StepOut>;

    /// The port's counters.
    fn stats(&self) -> PortStats;

    /// The engines' counters (summed).
    fn engine_stats(&self) -> EngineStats;

    /// The receive pools' counters (summed).
    fn pool_stats(&self) -> PoolStats;

    /// Closes the port: every waiter returns `Abandoned`, queued packets are
    /// dropped, every handle is closed, operations in flight are cancelled
    /// and their memory released once the kernel lets go. Idempotent; also
    /// called when the front's last clone drops.
    fn close(&self);

    /// Whether `close` was called.
    fn is_closed(&self) -> bool;
}

/// The alignment direct I/O on a file needs (`O_DIRECT`,
/// `FILE_FLAG_NO_BUFFERING`): of the buffer's address, and of each
/// operation's offset and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectIo {
    pub mem: usize,
    pub offset: usize,
}

impl DirectIo {
    /// Why an operation `call` of `len` bytes at `offset`, whose buffer
    /// starts at `addr`, cannot run on such a file; `None` if it can.
    pub(crate) fn refusal(
        &self,
        call: &str,
        addr: usize,
        len: usize,
        offset: u64,
    ) -> Option<String> {
        let head =
            format!("{call} on a file opened for direct I/O (O_DIRECT, FILE_FLAG_NO_BUFFERING)");
        let (mem, off) = (self.mem.max(1), self.offset.max(1));
        if !addr.is_multiple_of(mem) {
            return Some(format!(
                "{head}: the buffer's room starts at {addr:#x}, not at a multiple of {mem} \
                 bytes (completion_port::AlignedBuf::new(len, {mem}) gives one that does)"
            ));
        }
        if !len.is_multiple_of(off) {
            return Some(format!(
                "{head}: the length {len} is not a multiple of {off} bytes"
            ));
        }
        if !offset.is_multiple_of(off as u64) {
            return Some(format!(
                "{head}: the offset {offset} is not a multiple of {off} bytes"
            ));
        }
        None
    }
}

/// What a backend's handle provides.
pub(crate) trait SysHandle: Send + Sync + 'static {
    /// A number naming the handle within its port (for `Debug`).
    fn id(&self) -> u64;

    /// The completion key given at association.
    fn key(&self) -> u64;

    /// The id of the port the handle belongs to ([`SysPort::id`]).
    fn port_id(&self) -> u64;

    /// Asks operation `op` to end early (it still completes once). Fails
    /// with "the handle is closed" after `close`, with "the completion port
    /// is closed" after the port's close.
    fn cancel(&self, op: OpId) -> io::Result<()>;

    /// Aborts every pending operation and closes the socket after the last
    /// of them. Idempotent; also called when the front's last clone drops.
    fn close(&self);

    /// Whether `close` was called or the port was closed.
    fn is_closed(&self) -> bool;

    /// Runs `f` on the socket (only ever called on a [`Kind::Socket`]
    /// handle), which stays open while `f` runs whatever
    /// another thread closes meanwhile; fails once the handle or its port
    /// is closed (naming which).
    fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R>;
}
