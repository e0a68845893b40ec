//! The Windows engine's operations, grouped by family. Each operation is a
//! type that owns exactly the memory it lends the kernel, and says in one
//! place which lane it waits in, which overlapped call each attempt is, what
//! each of its packets means, and what its final completion hands back;
//! [`WOp`] is their sum.
//!
//! A new operation is a type in its family's file with its [`WinOp`] impl,
//! a variant of [`WOp`] and its line in [`WOp::new`].

mod accept;
mod connect;
mod datagram;
mod file;
mod pooled;
mod stream;

use std::io;
use std::sync::Arc;

use windows_sys::Win32::Networking::WinSock::{
    WSAGetLastError, WSARecv, SOCKET, SOCKET_ERROR, WSABUF, WSA_IO_PENDING,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::HandleShared;
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::{Phase, Step};
use crate::op::{Completion, OpData, OpId, OpKind};
use crate::sys::windows::map_win32;

use accept::{Accept, AcceptStream};
use connect::Connect;
use datagram::{RecvFrom, SendTo};
use file::{ConnectPipe, Flush, Read, Write};
use pooled::RecvPooled;
use stream::{Recv, Send};

/// A result the library decided for an operation, carried by its own packet
/// (`KEY_LOCAL`).
pub(in crate::sys::windows) enum Local {
    /// End it with this result: it was stopped before it was issued, a
    /// closing handle or a broken write side refused it, or a standing
    /// operation's last `more` completion went out first.
    End(io::Result<usize>),
    /// Its overlapped call failed at once (such a call queues no packet).
    Failed(io::Error),
    /// Issue a parked standing operation again.
    Resume,
    /// A starved pooled receive resumes, with a free pool buffer kept for
    /// it ([`Reap::kept`]).
    Fed,
}

/// What a packet brings an operation (a [`Local::End`] never reaches it).
pub(in crate::sys::windows) enum Input {
    /// The kernel's packet: `status` is `None` for success, else the Win32
    /// code; `bytes` what was transferred.
    Kernel { status: Option<u32>, bytes: u32 },
    /// The overlapped call failed at once.
    Failed(io::Error),
    /// A parked standing operation resumes.
    Resume,
}

/// What a packet is read with besides the operation itself.
pub(in crate::sys::windows) struct Reap<'a> {
    pub h: &'a Arc<HandleShared>,
    pub id: u64,
    pub token: u64,
    pub phase: Phase,
    /// It must end instead of going on: it is being stopped, or its handle
    /// or the port is closing.
    pub stop: bool,
    /// A standing operation's `more` completion, to hand out now.
    pub out: Option<Completion>,
    /// A free pool buffer is kept for this packet (a starved receive
    /// resumed, [`Local::Fed`]): taking a buffer uses it up, and a packet
    /// that does not take one gives it up.
    pub kept: bool,
    /// The packet left a pool buffer free (it gave one back unfilled, or
    /// did not use the one kept for it): starved receives may resume once
    /// the handle's lock is let go.
    pub freed: bool,
}

impl Reap<'_> {
    /// The error an operation ends with when it is stopped.
    pub fn abort_error(&self) -> io::Error {
        self.phase.abort_error()
    }

    /// The error a packet's Win32 `code` means: a cancel (995, or the 676 of
    /// a socket closed under it) is the phase's abort error (`TimedOut` for
    /// a deadline); anything else as the error table says.
    pub fn error(&self, code: u32) -> io::Error {
        match code {
            995 | 676 => self.abort_error(),
            _ => map_win32(code),
        }
    }

    /// The result a packet that ends the operation gives it.
    pub fn result(&self, input: Input) -> io::Result<usize> {
        match input {
            Input::Kernel {
                status: None,
                bytes,
            } => Ok(bytes as usize),
            Input::Kernel {
                status: Some(code), ..
            } => Err(self.error(code)),
            Input::Failed(e) => Err(e),
            Input::Resume => Err(self.abort_error()),
        }
    }

    /// Hands out a `more` completion of this standing operation.
    pub fn more(&mut self, kind: OpKind, result: io::Result<usize>) -> &mut Completion {
        let mut c = Completion::new(kind, self.h.key, self.token, OpId(self.id), result);
        c.more = true;
        self.out.insert(c)
    }
}

/// The step after an overlapped call that returned failure: pending
/// (`WSA_IO_PENDING`: its packet will come), or the error (the caller
/// decides whether a packet comes anyway: `Slot::issue`).
fn pending_or(ok: bool) -> io::Result<()> {
    if ok {
        return Ok(());
    }
    // SAFETY: no preconditions.
    let e = unsafe { WSAGetLastError() };
    if e == WSA_IO_PENDING {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(e))
    }
}

/// What a packet means for a write that must go out whole (a stream send,
/// a file or pipe write), `sent` of its `total` bytes out before it: done
/// when every byte is out, else its rest goes next; a failure still counts
/// what the kernel took of it (a cancel part-way).
fn write_step(sent: &mut usize, total: usize, input: Input, cx: &Reap<'_>) -> Step {
    match input {
        Input::Kernel {
            status: Some(code),
            bytes,
        } => {
            *sent += bytes as usize;
            Step::Done(Err(cx.error(code)))
        }
        Input::Kernel {
            status: None,
            bytes,
        } => Step::after_send(sent, bytes as usize, total),
        other => Step::Done(cx.result(other)),
    }
}

/// `ERROR_MORE_DATA`: a datagram larger than the receive buffer.
const ERROR_MORE_DATA: u32 = 234;

/// What a receive lends the kernel: its buffer's spare room (through a
/// WSABUF) and the call's flags, which the kernel may write.
struct RecvMem {
    buf: Buf,
    wsabuf: WSABUF,
    flags: u32,
}

impl RecvMem {
    fn new(buf: Buf) -> RecvMem {
        RecvMem {
            buf,
            wsabuf: wsabuf(std::ptr::null(), 0),
            flags: 0,
        }
    }

    /// Points the WSABUF at the buffer's spare room, for the next call.
    fn arm(&mut self) {
        let (p, n) = self.buf.spare();
        self.wsabuf = wsabuf(p, n);
        self.flags = 0;
    }

    /// What a receive's packet means: a datagram cut to the buffer
    /// (`ERROR_MORE_DATA`) is data, as Linux's `recvmsg` truncates.
    fn on_packet(input: Input, cx: &Reap<'_>) -> Step {
        match input {
            Input::Kernel {
                status: Some(ERROR_MORE_DATA),
                bytes,
            } => Step::Done(Ok(bytes as usize)),
            other => Step::Done(cx.result(other)),
        }
    }

    /// Hands the buffer back, holding what the kernel wrote into it.
    fn complete(mut self, c: &mut Completion) {
        if let Ok(n) = c.result {
            // SAFETY: the kernel wrote `n` bytes at `spare()`, where this
            // receive pointed it.
            unsafe { self.buf.advance(n) };
        }
        c.buf = Some(self.buf);
    }
}

/// `WSARecv` of one WSABUF on `sock`.
///
/// # Safety
/// As for [`WinOp::issue`]; `wsabuf` (and the memory it points to) and
/// `flags` are the operation's, so they stay in place too.
unsafe fn wsa_recv(
    sock: SOCKET,
    wsabuf: &WSABUF,
    flags: &mut u32,
    ov: *mut OVERLAPPED,
) -> io::Result<()> {
    // SAFETY: the caller's promise: an open socket associated with the
    // port; the WSABUF, its memory, the flags and `ov` stay in place until
    // the packet.
    let r = unsafe { WSARecv(sock, wsabuf, 1, std::ptr::null_mut(), flags, ov, None) };
    pending_or(r != SOCKET_ERROR)
}

/// A WSABUF for `n` bytes at `p`.
fn wsabuf(p: *const u8, n: usize) -> WSABUF {
    WSABUF {
        len: n.min(u32::MAX as usize) as u32,
        buf: p as *mut u8,
    }
}

/// One kind of Windows operation.
pub(in crate::sys::windows) trait WinOp {
    /// The kind its completions carry.
    const KIND: OpKind;
    /// The lane it waits in (`None`: it never waits for another operation).
    const LANE: Option<Lane>;

    /// The kind its completions carry (of a value).
    fn kind(&self) -> OpKind {
        Self::KIND
    }

    /// The lane it waits in (of a value).
    fn lane(&self) -> Option<Lane> {
        Self::LANE
    }

    /// Starts the next attempt: one overlapped Winsock call on `h`'s socket
    /// with `ov`. `Ok` means a packet will come.
    ///
    /// # Safety
    /// `ov` is this operation's zeroed `OVERLAPPED`. The operation and its
    /// `OVERLAPPED` stay where they are, untouched by anyone but the
    /// kernel, from the call until its packet is dequeued; the socket is
    /// open.
    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()>;

    /// What a packet means for it.
    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        Step::Done(cx.result(input))
    }

    /// Hands its memory back in its final completion, whose result is set
    /// (and may still change: an accept's socket needs finishing).
    fn complete(self, c: &mut Completion, h: &HandleShared);

    /// Bytes of it already sent (what a failed send reports).
    fn sent(&self) -> usize {
        0
    }
}

/// Declares `WOp`, the operation in flight, one variant per operation type
/// (named as its type), and `each!(self, o => expr)`, which forwards to the
/// variant.
macro_rules! op_enum {
    ($($op:ident),*) => {
        /// A Windows operation in flight.
        pub(in crate::sys::windows) enum WOp {
            $($op($op),)*
        }

        /// Forwards `$e` to the operation inside `$s` (bound as `$o`).
        macro_rules! each {
            ($s:expr, $o:ident => $e:expr) => {
                match $s {
                    $(WOp::$op($o) => $e,)*
                }
            };
        }
    };
}

op_enum!(
    Accept,
    AcceptStream,
    Connect,
    Recv,
    Send,
    RecvFrom,
    SendTo,
    RecvPooled,
    ConnectPipe,
    Read,
    Write,
    Flush
);

impl WOp {
    /// The operation the application asked for.
    pub fn new(data: OpData) -> WOp {
        match data {
            OpData::Accept => WOp::Accept(Accept::new()),
            OpData::AcceptMulti => WOp::AcceptStream(AcceptStream::new()),
            OpData::Connect(addr) => WOp::Connect(Connect::new(addr)),
            OpData::Recv(buf) => WOp::Recv(Recv::new(buf)),
            OpData::RecvPooled => WOp::RecvPooled(RecvPooled::new()),
            OpData::Send(buf) => WOp::Send(Send::one(buf)),
            OpData::SendV(bufs) => WOp::Send(Send::many(bufs)),
            OpData::RecvFrom(buf) => WOp::RecvFrom(RecvFrom::new(buf)),
            OpData::SendTo(buf, to) => WOp::SendTo(SendTo::new(buf, to)),
            OpData::Read(buf, at) => WOp::Read(Read::new(buf, at)),
            OpData::Write(buf, at) => WOp::Write(Write::new(buf, at)),
            // Windows has one call for both.
            OpData::Flush(_) => WOp::Flush(Flush::new()),
            OpData::ConnectNamedPipe => WOp::ConnectPipe(ConnectPipe),
        }
    }

    pub fn kind(&self) -> OpKind {
        each!(self, o => o.kind())
    }

    pub fn lane(&self) -> Option<Lane> {
        each!(self, o => o.lane())
    }

    /// See [`WinOp::issue`].
    ///
    /// # Safety
    /// As for [`WinOp::issue`].
    pub unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        // SAFETY: the caller's promise, passed on.
        each!(self, o => unsafe { o.issue(h, ov) })
    }

    pub fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        each!(self, o => o.on_packet(input, cx))
    }

    pub fn complete(self, c: &mut Completion, h: &HandleShared) {
        each!(self, o => o.complete(c, h))
    }

    pub fn sent(&self) -> usize {
        each!(self, o => o.sent())
    }
}
