//! Stream transfers: `WSARecv` into the buffer's spare room, and `WSASend`
//! of one buffer or of many (the same call: one WSABUF, or an array). A
//! send completes only when every byte is out: a short one is issued again
//! for its remainder while it holds the write lane. A vectored send passes
//! at most [`MAX_WSABUFS`] buffers to one `WSASend` on a stream, and the
//! rest as the remainder of a short send.

use std::io;

use windows_sys::Win32::Networking::WinSock::{WSASend, SOCKET_ERROR, WSABUF};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{pending_or, write_step, wsa_recv, wsabuf, Input, Reap, RecvMem, WinOp};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::windows::engine::HandleShared;

/// WSABUFs per `WSASend`: a longer vectored send goes out in several
/// calls, still as one operation. Wine turns one `WSASend` into one
/// `sendmsg(2)`, which takes at most 1024 iovecs and fails past that.
const MAX_WSABUFS: usize = 1024;

/// A receive into a buffer's spare room.
pub(in crate::sys::windows) struct Recv(RecvMem);

impl Recv {
    pub fn new(buf: Buf) -> Recv {
        Recv(RecvMem::new(buf))
    }
}

impl WinOp for Recv {
    const KIND: OpKind = OpKind::Recv;
    const LANE: Option<Lane> = Some(Lane::Read);

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let m = &mut self.0;
        m.arm();
        // SAFETY: the caller's promise; the WSABUF and flags are ours.
        unsafe { wsa_recv(h.sock, &m.wsabuf, &mut m.flags, ov) }
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        RecvMem::on_packet(input, cx)
    }

    fn complete(self, c: &mut Completion, _h: &HandleShared) {
        self.0.complete(c);
    }
}

/// What a send sends: one buffer (it comes back in `Completion::buf`) or
/// several (in `Extra::Vectored`).
enum Payload {
    One(Buf),
    Many(Vec<Buf>),
}

/// A send, `sent` bytes of it so far.
pub(in crate::sys::windows) struct Send {
    payload: Payload,
    sent: usize,
    /// The WSABUF of a one-buffer send.
    one: WSABUF,
    /// The WSABUFs of a vectored send's next call.
    many: Vec<WSABUF>,
    /// What an empty send points to.
    zero: u8,
}

impl Send {
    fn new(payload: Payload) -> Send {
        Send {
            payload,
            sent: 0,
            one: wsabuf(std::ptr::null(), 0),
            many: Vec::new(),
            zero: 0,
        }
    }

    /// A send of `buf`.
    pub fn one(buf: Buf) -> Send {
        Send::new(Payload::One(buf))
    }

    /// A vectored send of `bufs`.
    pub fn many(bufs: Vec<Buf>) -> Send {
        Send::new(Payload::Many(bufs))
    }

    fn total(&self) -> usize {
        match &self.payload {
            Payload::One(b) => b.len(),
            Payload::Many(v) => v.iter().map(Buf::len).sum(),
        }
    }

    /// The WSABUFs of the next call: what is not sent yet, at most
    /// [`MAX_WSABUFS`] of them on a stream (a datagram is never split).
    fn arm(&mut self, stream: bool) -> (*const WSABUF, u32) {
        let bufs = match &self.payload {
            Payload::One(b) => {
                let rest = &b.as_slice()[self.sent.min(b.len())..];
                self.one = wsabuf(rest.as_ptr(), rest.len());
                return (&self.one, 1);
            }
            Payload::Many(bufs) => bufs,
        };
        self.many.clear();
        let mut skip = self.sent;
        for b in bufs {
            let s = b.as_slice();
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            if stream && self.many.len() == MAX_WSABUFS {
                // The rest goes out as the remainder of a short send.
                break;
            }
            self.many.push(wsabuf(s[skip..].as_ptr(), s.len() - skip));
            skip = 0;
        }
        if self.many.is_empty() {
            self.many.push(wsabuf(&self.zero, 0));
        }
        (
            self.many.as_ptr(),
            self.many.len().min(u32::MAX as usize) as u32,
        )
    }
}

impl WinOp for Send {
    const KIND: OpKind = OpKind::Send;
    const LANE: Option<Lane> = Some(Lane::Write);

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let (bufs, n) = self.arm(h.stream);
        // SAFETY: `h.sock` is open and associated with the port; the `n`
        // WSABUFs point to unsent bytes of buffers this operation owns, and
        // the buffers, the WSABUFs and `ov` stay in place until the packet
        // (the caller's promise).
        let r = unsafe { WSASend(h.sock, bufs, n, std::ptr::null_mut(), 0, ov, None) };
        pending_or(r != SOCKET_ERROR)
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        let total = self.total();
        write_step(&mut self.sent, total, input, cx)
    }

    fn complete(self, c: &mut Completion, _h: &HandleShared) {
        match self.payload {
            Payload::One(b) => c.buf = Some(b),
            Payload::Many(v) => c.set_extra(Extra::Vectored(v)),
        }
    }

    fn sent(&self) -> usize {
        self.sent
    }
}
