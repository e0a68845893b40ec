//! Operations and their completions: what kind an operation is
//! ([`OpKind`]), its options ([`OpOptions`]), what it owns while it runs
//! (`OpData`, the same on every platform), and the [`Completion`] that hands
//! its result and its memory back.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use crate::addr::Addr;
use crate::buf::Buf;
use crate::error::SubmitError;

/// The kind of operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `AcceptEx`: a new connection on a listening handle.
    Accept,
    /// `ConnectEx`: an outbound connection.
    Connect,
    /// `WSARecv` into the caller's buffer.
    Recv,
    /// A standing receive into library pool buffers (see [`crate::Port::recv_pooled`]).
    RecvPooled,
    /// `WSASend`, possibly vectored; completes when every byte is sent.
    Send,
    /// `WSARecvFrom` (UDP).
    RecvFrom,
    /// `WSASendTo` (UDP).
    SendTo,
    /// `ReadFile`: a read from a file at an offset
    /// ([`crate::Port::read_at`]) or from a pipe ([`crate::Port::read`]).
    Read,
    /// `WriteFile`: a write to a file at an offset
    /// ([`crate::Port::write_at`]) or to a pipe ([`crate::Port::write`]);
    /// completes when every byte is written.
    Write,
    /// `FlushFileBuffers`: [`crate::Port::fsync`] or
    /// [`crate::Port::fdatasync`].
    Flush,
    /// `ConnectNamedPipe` (Windows): a client opened the server end of a
    /// named pipe.
    ConnectNamedPipe,
    /// `PostQueuedCompletionStatus`: an application packet.
    Post,
    /// A timer packet from [`crate::Port::post_after`].
    Timer,
}

/// Identifies one started operation on a handle, for [`crate::Handle::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The raw number (unique per port for its lifetime).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Options shared by every operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpOptions {
    /// The application's value for this operation, returned in its
    /// completion (what an `OVERLAPPED` pointer identifies on Windows).
    pub token: u64,
    /// If set and the operation has not completed by then, it is cancelled
    /// and completes with `ErrorKind::TimedOut` (a send cut part-way so:
    /// see [`Completion::transferred`]).
    pub deadline: Option<Instant>,
}

impl From<u64> for OpOptions {
    fn from(token: u64) -> Self {
        OpOptions {
            token,
            deadline: None,
        }
    }
}

impl OpOptions {
    /// Options with a token and a deadline `after` from now.
    pub fn with_timeout(token: u64, after: std::time::Duration) -> Self {
        OpOptions {
            token,
            deadline: Instant::now().checked_add(after),
        }
    }
}

/// A completion packet: what `GetQueuedCompletionStatus` fills in.
///
/// A packet for a **failed** operation is still a `Completion` (with
/// `result` an error, and its key, token and buffer); "no packet" is a
/// [`crate::GetError`] instead, so the two can never be confused.
pub struct Completion {
    /// The completion key the handle was associated with (or the key given
    /// to `post`).
    pub key: u64,
    /// The operation's token (or the token given to `post`).
    pub token: u64,
    /// What kind of operation completed.
    pub kind: OpKind,
    /// Bytes transferred, or the error the operation failed with.
    /// Aborted operations fail with [`crate::error::aborted`]'s kind
    /// (`ECANCELED`), deadlines with `ErrorKind::TimedOut`. A send that
    /// failed part-way still says how much of it went out:
    /// [`Completion::transferred`].
    pub result: io::Result<usize>,
    /// For standing (pooled) receives: `true` while more completions will
    /// follow for the same operation; the last one has `more == false`.
    pub more: bool,
    /// Which operation this was.
    pub op: OpId,
    pub(crate) buf: Option<Buf>,
    /// Boxed: few completions carry one, and every completion moves from
    /// the engine through the queue to the handler, so its size counts.
    extra: Option<Box<Extra>>,
    /// Bytes a failed operation moved before it failed.
    pub(crate) partial: usize,
    /// The strand of the completion (0: none): a pooled receive's
    /// completions name their handle, so the port never hands two of them
    /// to two threads at once.
    // (Read by the Linux queue; the Windows port has no strands.)
    #[cfg_attr(not(any(loom, target_os = "linux")), allow(dead_code))]
    pub(crate) strand: u64,
}

/// Rarely used parts of a completion, kept out of line.
pub(crate) enum Extra {
    Accepted(socket2::Socket, Option<Addr>),
    From(Option<Addr>),
    Vectored(Vec<Buf>),
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("kind", &self.kind)
            .field("result", &self.result)
            .field("transferred", &self.transferred())
            .field("more", &self.more)
            .field("op", &self.op)
            .field("buf", &self.buf)
            .finish()
    }
}

impl Completion {
    pub(crate) fn new(
        kind: OpKind,
        key: u64,
        token: u64,
        op: OpId,
        result: io::Result<usize>,
    ) -> Self {
        Completion {
            key,
            token,
            kind,
            result,
            more: false,
            op,
            buf: None,
            extra: None,
            partial: 0,
            strand: 0,
        }
    }

    /// Attaches the rare part of a completion (an accepted socket, a
    /// sender's address, a vectored send's buffers).
    pub(crate) fn set_extra(&mut self, extra: Extra) {
        self.extra = Some(Box::new(extra));
    }

    /// Whether the operation succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether the operation was aborted by a cancel or a close.
    pub fn is_aborted(&self) -> bool {
        matches!(&self.result, Err(e) if crate::error::is_aborted(e))
    }

    /// Bytes transferred (0 for a failed operation; see
    /// [`Completion::transferred`] for what a failed send moved).
    pub fn bytes(&self) -> usize {
        *self.result.as_ref().unwrap_or(&0)
    }

    /// Bytes the operation moved, whatever its result: `n` for `Ok(n)`;
    /// for a failed send, the bytes of it that went out before it failed
    /// (a send cancelled, timed out or reset part-way); 0 for every other
    /// failure.
    ///
    /// A TCP send that fails with `transferred() > 0` left a partial
    /// message on the wire, so the stream can no longer be trusted: from
    /// then on every send on that handle — those queued behind it and every
    /// later one — completes aborted without writing anything, until the
    /// handle is closed. Receives are not affected, and neither are UDP
    /// sends (a datagram goes out whole or not at all).
    pub fn transferred(&self) -> usize {
        match &self.result {
            Ok(n) => *n,
            Err(_) => self.partial,
        }
    }

    /// The buffer the operation owned, handed back (a pool buffer for
    /// pooled receives).
    pub fn take_buf(&mut self) -> Option<Buf> {
        self.buf.take()
    }

    /// A view of the buffer without taking it.
    pub fn buf(&self) -> Option<&Buf> {
        self.buf.as_ref()
    }

    /// The buffers of a vectored send, handed back in order.
    pub fn take_bufs(&mut self) -> Vec<Buf> {
        match self.take_extra(|e| matches!(e, Extra::Vectored(_))) {
            Some(Extra::Vectored(v)) => v,
            _ => Vec::new(),
        }
    }

    /// For an accept: the new socket (not yet associated with any port, as
    /// with `AcceptEx`) and its peer's IP address (`None` for a Unix socket:
    /// read [`Completion::addr`] first).
    pub fn take_accepted(&mut self) -> Option<(socket2::Socket, Option<SocketAddr>)> {
        match self.take_extra(|e| matches!(e, Extra::Accepted(..))) {
            Some(Extra::Accepted(s, a)) => Some((s, a.and_then(|a| a.as_ip()))),
            _ => None,
        }
    }

    /// Takes the rare part out if `mine` says it is of the caller's kind;
    /// a part of another kind stays in place, untouched (looked at, not
    /// moved out of its box and boxed again).
    fn take_extra(&mut self, mine: impl FnOnce(&Extra) -> bool) -> Option<Extra> {
        if !self.extra.as_deref().is_some_and(mine) {
            return None;
        }
        self.extra.take().map(|b| *b)
    }

    /// For `recv_from`: the sender's IP address (`None` for a Unix socket's
    /// sender: see [`Completion::addr`]).
    pub fn from_addr(&self) -> Option<SocketAddr> {
        self.addr().and_then(Addr::as_ip)
    }

    /// For `recv_from`: the sender's address; for an accept (until
    /// [`Completion::take_accepted`]): the peer's. IP or Unix.
    pub fn addr(&self) -> Option<&Addr> {
        match self.extra.as_deref() {
            Some(Extra::From(a) | Extra::Accepted(_, a)) => a.as_ref(),
            _ => None,
        }
    }
}

/// What an operation does, with the memory it owns until its completion —
/// the same on every platform; each backend turns it into its own requests.
pub(crate) enum OpData {
    Accept,
    AcceptMulti,
    Connect(Box<socket2::SockAddr>),
    Recv(Buf),
    RecvPooled,
    Send(Buf),
    SendV(Vec<Buf>),
    RecvFrom(Buf),
    SendTo(Buf, Box<socket2::SockAddr>),
    /// A read into the buffer's spare room: at an offset (a file), or from
    /// the stream (`None`: a pipe).
    Read(Buf, Option<u64>),
    /// A write of every byte of the buffer: at an offset (a file), or to
    /// the stream (`None`: a pipe).
    Write(Buf, Option<u64>),
    /// `fsync` (`false`) or `fdatasync` (`true`).
    Flush(#[cfg_attr(windows, allow(dead_code))] bool),
    /// Wait for a client on the server end of a named pipe.
    #[cfg(windows)]
    ConnectNamedPipe,
}

impl OpData {
    /// The operation is refused before it started: `error`, with every
    /// buffer it owned handed back untouched.
    pub(crate) fn refuse(self, error: io::Error) -> SubmitError {
        let (buf, bufs) = self.into_bufs();
        SubmitError::with_bufs(error, buf, bufs)
    }

    /// Hands back the buffers of an operation that never started: the one
    /// buffer of a one-buffer operation, or a vectored send's buffers.
    pub(crate) fn into_bufs(self) -> (Option<Buf>, Vec<Buf>) {
        match self {
            OpData::Recv(b)
            | OpData::Send(b)
            | OpData::RecvFrom(b)
            | OpData::SendTo(b, _)
            | OpData::Read(b, _)
            | OpData::Write(b, _) => (Some(b), Vec::new()),
            OpData::SendV(v) => (None, v),
            OpData::Accept
            | OpData::AcceptMulti
            | OpData::Connect(_)
            | OpData::RecvPooled
            | OpData::Flush(_) => (None, Vec::new()),
            #[cfg(windows)]
            OpData::ConnectNamedPipe => (None, Vec::new()),
        }
    }
}

/// The user-space queue orders a pooled receive's completions by their
/// strand.
#[cfg(any(loom, target_os = "linux"))]
impl crate::queue::Packet for Completion {
    fn strand(&self) -> u64 {
        self.strand
    }
}

#[cfg(test)]
mod tests {
    /// Every completion moves from the engine through the queue to the
    /// handler: the rare parts stay boxed so that it stays small.
    #[test]
    fn a_completion_stays_small() {
        let size = std::mem::size_of::<super::Completion>();
        assert!(size <= 128, "Completion is {size} bytes");
    }

    /// Each `take_*` takes only its own kind of rare part and leaves any
    /// other in place.
    #[test]
    fn take_extra_takes_only_its_kind() {
        use super::{Completion, Extra, OpId, OpKind};
        let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut c = Completion::new(OpKind::RecvFrom, 1, 2, OpId(3), Ok(0));
        c.set_extra(Extra::From(Some(from.into())));
        assert!(c.take_bufs().is_empty());
        assert!(c.take_accepted().is_none());
        assert_eq!(c.from_addr(), Some(from), "the sender's address stays");
        let mut c = Completion::new(OpKind::Send, 1, 2, OpId(3), Ok(2));
        c.set_extra(Extra::Vectored(vec![vec![1u8].into(), vec![2u8].into()]));
        assert!(c.take_accepted().is_none());
        assert_eq!(c.take_bufs().len(), 2);
        assert!(c.take_bufs().is_empty(), "taken once");
    }
}
