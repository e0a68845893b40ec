//! Accepts: one-shot `ACCEPT` with the peer's address, and the standing
//! accept — multishot `ACCEPT`, or one-shot ones re-issued where multishot
//! is off — whose errors follow [`crate::kit::accept`].

use std::os::fd::FromRawFd;

use io_uring::{cqueue, opcode, squeue};

use super::{AcceptStream, Issue, Reap, UringOp};
use crate::addr::Addr;
use crate::kit::accept;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::common::OpBase;
use crate::sys::uring::sqe::AddrBuf;

/// A one-shot accept; the kernel writes the peer's address into `peer`.
pub(in crate::sys::uring) struct Accept {
    peer: Box<AddrBuf>,
}

impl Accept {
    pub fn new() -> Accept {
        Accept {
            peer: Box::new(AddrBuf::new()),
        }
    }
}

impl OpBase for Accept {
    const KIND: OpKind = OpKind::Accept;

    fn complete(self, c: &mut Completion) {
        if let Ok(fd) = c.result {
            // SAFETY: a successful accept returned a new descriptor that
            // nothing else owns.
            let sock = unsafe { socket2::Socket::from_raw_fd(fd as i32) };
            c.set_extra(Extra::Accepted(sock, self.peer.written()));
            c.result = Ok(0);
        }
    }
}

impl UringOp for Accept {
    const LANE: Option<Lane> = None;

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let (addr, len) = self.peer.room();
        opcode::Accept::new(cx.fd, addr, len)
            .flags(libc::SOCK_CLOEXEC)
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        Step::Done(cx.result(res))
    }
}

impl UringOp for AcceptStream {
    const LANE: Option<Lane> = None;

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        if cx.feats.multishot_accept {
            opcode::AcceptMulti::new(cx.fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(cx.fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
    }

    fn on_cqe(&mut self, res: i32, flags: u32, cx: &mut Reap<'_>) -> Step {
        let armed = cqueue::more(flags);
        if res >= 0 {
            // SAFETY: the kernel just created this descriptor for us.
            let sock = unsafe { socket2::Socket::from_raw_fd(res) };
            let peer = sock.peer_addr().ok().and_then(|a| Addr::from_sockaddr(&a));
            let mut c = cx.meta.more(OpKind::Accept, Ok(0));
            c.set_extra(Extra::Accepted(sock, peer));
            cx.out.push(c);
            return if armed { Step::Wait } else { Step::Again };
        }
        if armed {
            return Step::Wait;
        }
        if res == -libc::ECANCELED || cx.phase.stopping() {
            return Step::Done(Err(cx.phase.abort_error()));
        }
        let e = std::io::Error::from_raw_os_error(-res);
        accept::on_error(e, |e| cx.out.push(cx.meta.more(OpKind::Accept, Err(e))))
    }
}
