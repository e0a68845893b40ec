//! Datagrams: `WSARecvFrom` into the buffer's spare room with the sender's
//! address, `WSASendTo` of one buffer. A datagram larger than the buffer is
//! cut to it (`Ok(len)`), as `recvmsg` does.

use std::io;

use socket2::SockAddr;
use windows_sys::Win32::Networking::WinSock::{
    WSARecvFrom, WSASendTo, SOCKADDR, SOCKADDR_STORAGE, SOCKET_ERROR, WSABUF,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{pending_or, wsabuf, Input, Reap, RecvMem, WinOp};
use crate::addr::Addr;
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::windows::engine::HandleShared;
use crate::sys::windows::net;

const FROM_LEN: i32 = std::mem::size_of::<SOCKADDR_STORAGE>() as i32;

/// A receive into a buffer's spare room; the kernel writes the sender's
/// address into `from` (`from_len` bytes of it).
pub(in crate::sys::windows) struct RecvFrom {
    mem: RecvMem,
    from: SOCKADDR_STORAGE,
    from_len: i32,
}

impl RecvFrom {
    pub fn new(buf: Buf) -> RecvFrom {
        RecvFrom {
            mem: RecvMem::new(buf),
            // SAFETY: all-zero is a valid SOCKADDR_STORAGE.
            from: unsafe { std::mem::zeroed() },
            from_len: 0,
        }
    }
}

impl WinOp for RecvFrom {
    const KIND: OpKind = OpKind::RecvFrom;
    const LANE: Option<Lane> = Some(Lane::Read);

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        self.mem.arm();
        self.from_len = FROM_LEN;
        // SAFETY: `h.sock` is open and associated with the port; the WSABUF
        // points to the buffer's spare room, `from` has `from_len` writable
        // bytes, and all of it with `ov` stays in place until the packet
        // (the caller's promise).
        let r = unsafe {
            WSARecvFrom(
                h.sock,
                &self.mem.wsabuf,
                1,
                std::ptr::null_mut(),
                &mut self.mem.flags,
                &mut self.from as *mut SOCKADDR_STORAGE as *mut SOCKADDR,
                &mut self.from_len,
                ov,
                None,
            )
        };
        pending_or(r != SOCKET_ERROR)
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        RecvMem::on_packet(input, cx)
    }

    fn complete(self, c: &mut Completion, _h: &HandleShared) {
        if c.result.is_ok() {
            // SAFETY: `from` is a SOCKADDR_STORAGE, and at most its size is
            // read (`from_len` is the kernel's).
            let from = unsafe {
                net::sockaddr_to_std(
                    &self.from as *const SOCKADDR_STORAGE as *const SOCKADDR,
                    self.from_len.min(FROM_LEN),
                )
            };
            c.set_extra(Extra::From(from.map(Addr::Ip)));
        }
        self.mem.complete(c);
    }
}

/// A send of `buf` to `to`.
pub(in crate::sys::windows) struct SendTo {
    buf: Buf,
    to: Box<SockAddr>,
    wsabuf: WSABUF,
}

impl SendTo {
    pub fn new(buf: Buf, to: Box<SockAddr>) -> SendTo {
        SendTo {
            buf,
            to,
            wsabuf: wsabuf(std::ptr::null(), 0),
        }
    }
}

impl WinOp for SendTo {
    const KIND: OpKind = OpKind::SendTo;
    const LANE: Option<Lane> = Some(Lane::Write);

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let s = self.buf.as_slice();
        self.wsabuf = wsabuf(s.as_ptr(), s.len());
        // SAFETY: `h.sock` is open and associated with the port; the WSABUF
        // points to the buffer, and buffer, address and `ov` stay in place
        // until the packet (the caller's promise).
        let r = unsafe {
            WSASendTo(
                h.sock,
                &self.wsabuf,
                1,
                std::ptr::null_mut(),
                0,
                self.to.as_ptr() as *const SOCKADDR,
                self.to.len(),
                ov,
                None,
            )
        };
        pending_or(r != SOCKET_ERROR)
    }

    fn complete(self, c: &mut Completion, _h: &HandleShared) {
        c.buf = Some(self.buf);
    }
}
