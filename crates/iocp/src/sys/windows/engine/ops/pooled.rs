//! The pooled receive: a zero-byte `WSARecv` waits for data (or FIN, or an
//! error) without consuming anything and without pinning a buffer; when it
//! completes, one non-blocking `recv` reads into a free pool buffer, and the
//! next zero-byte receive goes out. With the pool empty (or every free
//! buffer kept for an older starved receive), it parks until a buffer comes
//! back and its turn comes (`PoolState` in the engine).

use std::io;

use windows_sys::Win32::Networking::WinSock::{recv, WSAGetLastError, WSABUF, WSAEWOULDBLOCK};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{wsa_recv, wsabuf, Input, Reap, WinOp};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, OpKind};
use crate::sys::windows::engine::HandleShared;

/// A standing receive into pool buffers.
pub(in crate::sys::windows) struct RecvPooled {
    wsabuf: WSABUF,
    flags: u32,
    /// What the zero-byte receive points to.
    zero: u8,
}

impl RecvPooled {
    pub fn new() -> RecvPooled {
        RecvPooled {
            wsabuf: wsabuf(std::ptr::null(), 0),
            flags: 0,
            zero: 0,
        }
    }
}

impl WinOp for RecvPooled {
    const KIND: OpKind = OpKind::RecvPooled;
    const LANE: Option<Lane> = Some(Lane::Read);

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        self.wsabuf = wsabuf(&self.zero, 0);
        self.flags = 0;
        // SAFETY: the caller's promise; the WSABUF (empty, pointing to our
        // `zero`) and the flags are ours.
        unsafe { wsa_recv(h.sock, &self.wsabuf, &mut self.flags, ov) }
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        match input {
            Input::Kernel {
                status: Some(code), ..
            } => return Step::Done(Err(cx.error(code))),
            Input::Failed(e) => return Step::Done(Err(e)),
            // Readable (or resumed): read below.
            Input::Kernel { status: None, .. } | Input::Resume => {}
        }
        if cx.stop {
            return Step::Done(Err(cx.abort_error()));
        }
        let (h, port) = (cx.h, &cx.h.port);
        let Some(bid) = port.take_buf_or_park(h, cx.id, &mut cx.kept) else {
            return Step::Starved;
        };
        let pool = &port.pool;
        // SAFETY: buffer `bid` is free (ours now), with `buf_size` writable
        // bytes at its address; the socket is open and non-blocking.
        let n = unsafe {
            recv(
                h.sock,
                pool.addr(bid),
                pool.buf_size.min(i32::MAX as usize) as i32,
                0,
            )
        };
        if n > 0 {
            // SAFETY: `recv` wrote `n` bytes into buffer `bid`, ours.
            let pb = unsafe { pool.lend(bid, n as usize) };
            cx.more(OpKind::RecvPooled, Ok(n as usize)).buf = Some(Buf::Pooled(pb));
            return Step::Again;
        }
        port.give_back(bid);
        cx.freed = true;
        if n == 0 {
            return Step::Done(Ok(0));
        }
        // SAFETY: no preconditions.
        match unsafe { WSAGetLastError() } {
            // Readiness without data (or another reader took it): wait again.
            WSAEWOULDBLOCK => Step::WouldBlock,
            e => Step::Done(Err(io::Error::from_raw_os_error(e))),
        }
    }

    fn complete(self, _c: &mut Completion, _h: &HandleShared) {}
}
