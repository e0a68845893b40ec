//! Connects: `ConnectEx` (binding the socket to the unspecified address of
//! the target's family first if it is not bound), finished with
//! `SO_UPDATE_CONNECT_CONTEXT`.

use std::io;

use socket2::SockAddr;
use windows_sys::Win32::Networking::WinSock::SOCKADDR;
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::WinOp;
use crate::kit::lanes::Lane;
use crate::op::{Completion, OpKind};
use crate::sys::windows::engine::HandleShared;
use crate::sys::windows::net;

/// A connect to `addr`.
pub(in crate::sys::windows) struct Connect {
    addr: Box<SockAddr>,
}

impl Connect {
    pub fn new(addr: Box<SockAddr>) -> Connect {
        Connect { addr }
    }
}

impl WinOp for Connect {
    const KIND: OpKind = OpKind::Connect;
    const LANE: Option<Lane> = None;

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let target = self
            .addr
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP address"))?;
        net::ensure_bound(h.sock, &target)?;
        let ext = net::ext(h.sock)?;
        // SAFETY: `h.sock` is an open, bound socket associated with the
        // port; the address (ours, on the heap) and `ov` stay in place until
        // the packet (the caller's promise); no data is sent.
        let ok = unsafe {
            (ext.connect_ex)(
                h.sock,
                self.addr.as_ptr() as *const SOCKADDR,
                self.addr.len(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                ov,
            )
        };
        super::pending_or(ok != 0)
    }

    fn complete(self, c: &mut Completion, h: &HandleShared) {
        if c.result.is_ok() {
            c.result = net::update_connect_context(h.sock).map(|()| 0);
        }
    }
}
