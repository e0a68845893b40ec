//! Accepts: one `AcceptEx` per connection, into a socket made for it of the
//! listener's family, finished with `SO_UPDATE_ACCEPT_CONTEXT` and the
//! peer's address from `GetAcceptExSockaddrs`. The standing accept issues
//! the next `AcceptEx` after each connection, and its errors follow
//! [`crate::kit::accept`].

use std::io;
use std::net::SocketAddr;
use std::os::windows::io::AsRawSocket;

use socket2::{Domain, Protocol, Type};
use windows_sys::Win32::Networking::WinSock::{AF_INET6, SOCKADDR, SOCKET};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{pending_or, Input, Reap, WinOp};
use crate::addr::Addr;
use crate::kit::accept;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::windows::engine::HandleShared;
use crate::sys::windows::net::{self, ACCEPT_ADDR_LEN};

/// A one-shot accept: the socket made for the connection, and the buffer
/// `AcceptEx` writes both addresses into.
pub(in crate::sys::windows) struct Accept {
    sock: Option<socket2::Socket>,
    out: Box<[u8; 2 * ACCEPT_ADDR_LEN]>,
}

impl Accept {
    pub fn new() -> Accept {
        Accept {
            sock: None,
            out: Box::new([0; 2 * ACCEPT_ADDR_LEN]),
        }
    }

    /// The connection the last `AcceptEx` took, finished.
    fn accepted(&mut self, listener: SOCKET) -> io::Result<(socket2::Socket, Option<SocketAddr>)> {
        let sock = self
            .sock
            .take()
            .ok_or_else(|| io::Error::other("iocp: accept without a socket"))?;
        finish_accept(listener, sock, &self.out)
    }
}

impl WinOp for Accept {
    const KIND: OpKind = OpKind::Accept;
    const LANE: Option<Lane> = None;

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let domain = if h.family()? == AF_INET6 {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let ns = socket2::Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        let raw = ns.as_raw_socket() as SOCKET;
        self.sock = Some(ns);
        let ext = net::ext(h.sock)?;
        let mut bytes = 0u32;
        // SAFETY: `h.sock` is an open listener associated with the port and
        // `raw` a fresh socket this operation owns; `out` (ours, on the heap)
        // has room for both addresses of the given lengths and, with `ov`,
        // stays in place until the packet (the caller's promise).
        let ok = unsafe {
            (ext.accept_ex)(
                h.sock,
                raw,
                self.out.as_mut_ptr() as *mut _,
                0,
                ACCEPT_ADDR_LEN as u32,
                ACCEPT_ADDR_LEN as u32,
                &mut bytes,
                ov,
            )
        };
        pending_or(ok != 0)
    }

    fn complete(mut self, c: &mut Completion, h: &HandleShared) {
        if c.result.is_ok() {
            match self.accepted(h.sock) {
                Ok((sock, peer)) => {
                    c.set_extra(Extra::Accepted(sock, peer.map(Addr::Ip)));
                    c.result = Ok(0);
                }
                Err(e) => c.result = Err(e),
            }
        }
    }
}

/// A standing accept: one `more` completion per connection.
pub(in crate::sys::windows) struct AcceptStream(Accept);

impl AcceptStream {
    pub fn new() -> AcceptStream {
        AcceptStream(Accept::new())
    }
}

impl WinOp for AcceptStream {
    const KIND: OpKind = OpKind::Accept;
    const LANE: Option<Lane> = None;

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.issue(h, ov) }
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        let e = match input {
            Input::Kernel { status: None, .. } => {
                // One connection: hand it out (also while stopping: it is
                // accepted), then accept the next.
                let got = self.0.accepted(cx.h.sock);
                let c = cx.more(OpKind::Accept, Ok(0));
                match got {
                    Ok((sock, peer)) => c.set_extra(Extra::Accepted(sock, peer.map(Addr::Ip))),
                    Err(e) => c.result = Err(e),
                }
                return Step::Again;
            }
            _ if cx.stop => return Step::Done(Err(cx.abort_error())),
            Input::Kernel {
                status: Some(code), ..
            } => cx.error(code),
            Input::Failed(e) => e,
            Input::Resume => return Step::Again,
        };
        accept::on_error(e, |e| {
            cx.more(OpKind::Accept, Err(e));
        })
    }

    fn complete(self, _c: &mut Completion, _h: &HandleShared) {}
}

/// Finishes an `AcceptEx` into `sock` on `listener`: `SO_UPDATE_ACCEPT_CONTEXT`
/// and the peer's address from `GetAcceptExSockaddrs` on `out`.
fn finish_accept(
    listener: SOCKET,
    sock: socket2::Socket,
    out: &[u8; 2 * ACCEPT_ADDR_LEN],
) -> io::Result<(socket2::Socket, Option<SocketAddr>)> {
    let raw = sock.as_raw_socket() as SOCKET;
    net::update_accept_context(raw, listener)?;
    let ext = net::ext(listener)?;
    let (mut lp, mut rp): (*mut SOCKADDR, *mut SOCKADDR) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    let (mut ll, mut rl) = (0i32, 0i32);
    // SAFETY: `out` is the buffer AcceptEx filled, with the same lengths;
    // the function only writes the four out-parameters (pointers into `out`).
    unsafe {
        (ext.get_accept_ex_sockaddrs)(
            out.as_ptr() as *const _,
            0,
            ACCEPT_ADDR_LEN as u32,
            ACCEPT_ADDR_LEN as u32,
            &mut lp,
            &mut ll,
            &mut rp,
            &mut rl,
        )
    };
    let inside = |p: *mut SOCKADDR, l: i32| {
        let start = out.as_ptr() as usize;
        let p = p as usize;
        !(p < start || l < 0 || p + l as usize > start + out.len())
    };
    let peer = if !rp.is_null() && inside(rp, rl) {
        // SAFETY: checked above that `rl` bytes at `rp` lie inside `out`.
        unsafe { net::sockaddr_to_std(rp, rl) }
    } else {
        None
    };
    // The kernel-reported peer is authoritative; getpeername works too now.
    let peer = peer.or_else(|| sock.peer_addr().ok().and_then(|a| a.as_socket()));
    Ok((sock, peer))
}
