//! The operations of a port — `AcceptEx`, `ConnectEx`, `WSARecv`,
//! `WSASend` and friends on sockets, `ReadFile`, `WriteFile` and
//! `FlushFileBuffers` on files and pipes — written once for every platform:
//! each builds an `OpData` that owns its memory and hands it to [`Port`]'s
//! `start_op`, which checks the handle and passes it to the backend.

use std::io;

use crate::addr::Addr;
use crate::buf::{Buf, IoBuf};
use crate::error::SubmitError;
use crate::handle::{FileHandle, Handle, PipeHandle};
use crate::op::{OpData, OpId, OpOptions};
use crate::port::Port;

/// Writes the operations that only build their `OpData` and start it: each
/// line names the method, its arguments after the handle, and the `OpData`;
/// the method takes `opts` last and carries the docs written above its line.
macro_rules! op_methods {
    ($(
        $(#[$attr:meta])*
        fn $name:ident($h:ident: &$H:ty $(, $arg:ident: $T:ty)*) => $data:expr;
    )*) => {
        impl Port {$(
            $(#[$attr])*
            pub fn $name(
                &self,
                $h: &$H,
                $($arg: $T,)*
                opts: impl Into<OpOptions>,
            ) -> Result<OpId, SubmitError> {
                Target::start($h, self, $data, opts.into())
            }
        )*}
    };
}

/// What an operation starts on: a socket's or a pipe's handle, or a file,
/// whose reads and writes at an offset are checked first.
trait Target {
    fn start(&self, port: &Port, data: OpData, opts: OpOptions) -> Result<OpId, SubmitError>;
}

impl Target for Handle {
    fn start(&self, port: &Port, data: OpData, opts: OpOptions) -> Result<OpId, SubmitError> {
        port.start_op(self, data, opts)
    }
}

impl Target for PipeHandle {
    fn start(&self, port: &Port, data: OpData, opts: OpOptions) -> Result<OpId, SubmitError> {
        port.start_op(self.handle(), data, opts)
    }
}

impl Target for FileHandle {
    fn start(&self, port: &Port, data: OpData, opts: OpOptions) -> Result<OpId, SubmitError> {
        port.start_on_file(self, data, opts)
    }
}

op_methods! {
    /// `AcceptEx`: one incoming connection on a listening handle. The
    /// completion carries the new socket ([`crate::Completion::take_accepted`]),
    /// which is not associated with any port yet.
    fn accept(listener: &Handle) => OpData::Accept;

    /// A standing accept: a completion (with `more == true`) for every
    /// incoming connection until it is cancelled or the handle closes, then
    /// one final completion with `more == false`. On io_uring this is a
    /// multishot accept, re-armed whenever the kernel ends it; transient
    /// errors (`EMFILE`, `ENFILE`, `ECONNABORTED`, …) arrive as `more == true`
    /// completions carrying the error, and the stream goes on.
    fn accept_stream(listener: &Handle) => OpData::AcceptMulti;

    /// `WSARecv` into an owned buffer (see [`Buf`] for where the bytes go).
    /// One completion; 0 bytes means the peer closed its side.
    fn recv(h: &Handle, buf: impl IoBuf) => OpData::Recv(buf.into());

    /// A pooled, standing receive: a stream of completions, each with a
    /// buffer lent by the library's pool (`more == true`), ending with
    /// exactly one final completion (`more == false`: 0 bytes at the peer's
    /// FIN, or the error). An idle connection holds no buffer. On io_uring a
    /// multishot receive into a provided-buffer ring; on epoll a read on
    /// readiness; on Windows a zero-byte `WSARecv`, then a non-blocking read
    /// into a pool buffer.
    fn recv_pooled(h: &Handle) => OpData::RecvPooled;

    /// `WSASend`: completes when every byte is sent (short writes are
    /// finished inside the library, in order), or with an error. A send
    /// that fails part-way reports what went out in
    /// [`crate::Completion::transferred`], and on TCP every later send on
    /// the handle then completes aborted (see there).
    fn send(h: &Handle, buf: impl IoBuf) => OpData::Send(buf.into());

    /// `WSASend` with several buffers, sent in order as one operation
    /// whatever their number (on a datagram socket: one datagram); they
    /// come back with [`crate::Completion::take_bufs`].
    fn send_vectored(h: &Handle, bufs: Vec<Buf>) => OpData::SendV(bufs);

    /// `ReadFile` at an offset: reads into the buffer's spare room (see
    /// [`Buf`]) from the file at `offset`. It completes with the bytes read:
    /// all the room asked for, or fewer when the file ends first; a read at
    /// or past the end of the file completes with 0 bytes (not an error).
    /// (One read moves at most 2 GiB − 4 KiB on Linux.) The file's own
    /// position is neither used nor moved.
    fn read_at(f: &FileHandle, buf: impl IoBuf, offset: u64) => OpData::Read(buf.into(), Some(offset));

    /// `WriteFile` at an offset: writes every byte of the buffer to the
    /// file at `offset` (short writes are finished inside, as for
    /// [`Port::send`]); a write past the end extends the file. A write that
    /// fails part-way (the disk full, …) reports what was written in
    /// [`crate::Completion::transferred`]. Writes in flight at once may
    /// complete in any order; two that overlap leave either's bytes.
    fn write_at(f: &FileHandle, buf: impl IoBuf, offset: u64) => OpData::Write(buf.into(), Some(offset));

    /// `FlushFileBuffers` (`fsync`): the file's data and metadata reach the
    /// disk. It covers the writes that completed before it started, not
    /// those still in flight.
    fn fsync(f: &FileHandle) => OpData::Flush(false);

    /// `fdatasync`: as [`Port::fsync`], without the metadata a later read
    /// does not need (times). On Windows the same as `fsync`.
    fn fdatasync(f: &FileHandle) => OpData::Flush(true);

    /// `ReadFile` on a pipe: reads what the pipe holds into the buffer's
    /// spare room, waiting until there is something; 0 bytes means every
    /// writer closed its end (EOF). Reads complete in issue order.
    fn read(p: &PipeHandle, buf: impl IoBuf) => OpData::Read(buf.into(), None);

    /// `WriteFile` on a pipe: completes when every byte is written (short
    /// writes are finished inside, in issue order, as for [`Port::send`]),
    /// or with an error (`BrokenPipe` once the reader closed; like
    /// `write(2)` it also raises `SIGPIPE`, which Rust programs ignore).
    fn write(p: &PipeHandle, buf: impl IoBuf) => OpData::Write(buf.into(), None);

    /// `ConnectNamedPipe` (Windows): waits for a client to open the server
    /// end of a named pipe ([`crate::fs::create_named_pipe`]); completes
    /// with 0 bytes once one has (also when it connected before the call).
    #[cfg(windows)]
    fn connect_named_pipe(p: &PipeHandle) => OpData::ConnectNamedPipe;
}

impl Port {
    /// `ConnectEx`: connects an associated, unconnected socket to an IP
    /// address or, for a Unix domain socket, a path (on Windows an IP
    /// socket is first bound to the unspecified address if it is not
    /// bound). A path that cannot be a socket address is refused here.
    pub fn connect(
        &self,
        h: &Handle,
        addr: impl Into<Addr>,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        let to = addr
            .into()
            .to_sockaddr()
            .map_err(|e| SubmitError::with_bufs(e, None, Vec::new()))?;
        self.start_op(h, OpData::Connect(Box::new(to)), opts.into())
    }

    /// `WSARecvFrom` (UDP, or a Unix datagram socket): one datagram; the
    /// sender is [`crate::Completion::addr`] ([`crate::Completion::from_addr`]
    /// for its IP address). Refused on a stream socket (TCP, a Unix stream),
    /// which receives only from its peer and has no datagram boundaries
    /// (use [`Port::recv`]), with an `InvalidInput` error and the buffer
    /// handed back, as [`Port::send_to`] is.
    pub fn recv_from(
        &self,
        h: &Handle,
        buf: impl IoBuf,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        let data = OpData::RecvFrom(buf.into());
        if h.is_stream() {
            return Err(datagram_op_on_stream(
                data,
                format_args!("recv_from on a stream socket (handle key {})", h.key()),
                "receives only from its peer; use recv",
            ));
        }
        self.start_op(h, data, opts.into())
    }

    /// `WSASendTo` (UDP, or a Unix datagram socket): one datagram to
    /// `addr`, an IP address or a Unix socket's path. Refused on a stream
    /// socket (TCP), which sends only to its peer (use [`Port::send`]: it
    /// sends the whole buffer or fails), and for a path that cannot be a
    /// socket address, with an `InvalidInput` error and the buffer handed
    /// back.
    pub fn send_to(
        &self,
        h: &Handle,
        buf: impl IoBuf,
        addr: impl Into<Addr>,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        let addr = addr.into();
        let buf = buf.into();
        let to = match addr.to_sockaddr() {
            Ok(to) => to,
            Err(e) => return Err(SubmitError::with_bufs(e, Some(buf), Vec::new())),
        };
        let data = OpData::SendTo(buf, Box::new(to));
        if h.is_stream() {
            return Err(datagram_op_on_stream(
                data,
                format_args!(
                    "send_to on a stream socket (handle key {}, to {addr})",
                    h.key()
                ),
                "sends only to its peer; use send",
            ));
        }
        self.start_op(h, data, opts.into())
    }
}

/// The largest file offset (`off_t` is signed).
const MAX_OFFSET: u64 = i64::MAX as u64;

impl Port {
    /// Starts an operation on a file. A read or write at an offset no file
    /// can have, or one that direct I/O cannot do, is refused, naming why.
    fn start_on_file(
        &self,
        f: &FileHandle,
        data: OpData,
        opts: OpOptions,
    ) -> Result<OpId, SubmitError> {
        let direct = f.handle().direct_io();
        let refusal = match (&data, direct) {
            (OpData::Read(_, Some(offset)) | OpData::Write(_, Some(offset)), _)
                if *offset > MAX_OFFSET =>
            {
                Some(format!(
                    "file offset {offset} is past the largest a file can have ({MAX_OFFSET})"
                ))
            }
            (OpData::Read(b, Some(offset)), Some(d)) => {
                let (addr, len) = b.room();
                d.refusal("read_at", addr, len, *offset)
            }
            (OpData::Write(b, Some(offset)), Some(d)) => {
                let s = b.as_slice();
                d.refusal("write_at", s.as_ptr() as usize, s.len(), *offset)
            }
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(data.refuse(io::Error::new(io::ErrorKind::InvalidInput, why)));
        }
        self.start_op(f.handle(), data, opts)
    }
}

/// Refuses a datagram operation (`recv_from`, `send_to`) on a stream
/// socket before it starts, on every backend alike: `InvalidInput`, the
/// message `<what>: a stream <instead>`, the buffer handed back.
fn datagram_op_on_stream(
    data: OpData,
    what: std::fmt::Arguments<'_>,
    instead: &str,
) -> SubmitError {
    data.refuse(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}: a stream {instead}"),
    ))
}
