//! The operations of a port — `AcceptEx`, `ConnectEx`, `WSARecv`,
//! `WSASend` and friends — written once for every platform: each builds an
//! `OpData` that owns its memory and hands it to [`Port`]'s `start_op`,
//! which checks the handle and passes it to the backend.

use std::io;

use crate::addr::Addr;
use crate::buf::{Buf, IoBuf};
use crate::error::SubmitError;
use crate::handle::Handle;
use crate::op::{OpData, OpId, OpOptions};
use crate::port::Port;

impl Port {
    /// `AcceptEx`: one incoming connection on a listening handle. The
    /// completion carries the new socket ([`crate::Completion::take_accepted`]),
    /// which is not associated with any port yet.
    pub fn accept(
        &self,
        listener: &Handle,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        self.start_op(listener, OpData::Accept, opts.into())
    }
    /// A standing accept: a completion (with `more == true`) for every
    /// incoming connection until it is cancelled or the handle closes, then
    /// one final completion with `more == false`. On io_uring this is a
    /// multishot accept, re-armed whenever the kernel ends it; transient
    /// errors (`EMFILE`, `ENFILE`, `ECONNABORTED`, …) arrive as `more == true`
    /// completions carrying the error, and the stream goes on.
    pub fn accept_stream(
        &self,
        listener: &Handle,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        self.start_op(listener, OpData::AcceptMulti, opts.into())
    }
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
    /// `WSARecv` into an owned buffer (see [`Buf`] for where the bytes go).
    /// One completion; 0 bytes means the peer closed its side.
    pub fn recv(
        &self,
        h: &Handle,
        buf: impl IoBuf,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        self.start_op(h, OpData::Recv(buf.into()), opts.into())
    }
    /// A pooled, standing receive: a stream of completions, each with a
    /// buffer lent by the library's pool (`more == true`), ending with
    /// exactly one final completion (`more == false`: 0 bytes at the peer's
    /// FIN, or the error). An idle connection holds no buffer. On io_uring a
    /// multishot receive into a provided-buffer ring; on epoll a read on
    /// readiness; on Windows a zero-byte `WSARecv`, then a non-blocking read
    /// into a pool buffer.
    pub fn recv_pooled(&self, h: &Handle, opts: impl Into<OpOptions>) -> Result<OpId, SubmitError> {
        self.start_op(h, OpData::RecvPooled, opts.into())
    }
    /// `WSASend`: completes when every byte is sent (short writes are
    /// finished inside the library, in order), or with an error. A send
    /// that fails part-way reports what went out in
    /// [`crate::Completion::transferred`], and on TCP every later send on
    /// the handle then completes aborted (see there).
    pub fn send(
        &self,
        h: &Handle,
        buf: impl IoBuf,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        self.start_op(h, OpData::Send(buf.into()), opts.into())
    }
    /// `WSASend` with several buffers, sent in order as one operation
    /// whatever their number (on a datagram socket: one datagram); they
    /// come back with [`crate::Completion::take_bufs`].
    pub fn send_vectored(
        &self,
        h: &Handle,
        bufs: Vec<Buf>,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        self.start_op(h, OpData::SendV(bufs), opts.into())
    }
    /// `WSARecvFrom` (UDP, or a Unix datagram socket): one datagram; the
    /// sender is [`crate::Completion::addr`] ([`crate::Completion::from_addr`]
    /// for its IP address).
    pub fn recv_from(
        &self,
        h: &Handle,
        buf: impl IoBuf,
        opts: impl Into<OpOptions>,
    ) -> Result<OpId, SubmitError> {
        self.start_op(h, OpData::RecvFrom(buf.into()), opts.into())
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
            return Err(data.refuse(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "send_to on a stream socket (handle key {}, to {addr}): a stream sends \
                     only to its peer; use send",
                    h.key()
                ),
            )));
        }
        self.start_op(h, data, opts.into())
    }
}
