//! Datagrams: `RECVMSG` (the sender's address comes back with the data) and
//! `SENDMSG` to an address the operation owns. A datagram goes out whole or
//! fails whole, so a send to an address is never re-issued for a
//! remainder.

use io_uring::{opcode, squeue};
use socket2::SockAddr;

use super::{Issue, Reap, UringOp};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::common::{op_base, OpBase};
use crate::sys::uring::sqe::{AddrBuf, Msg};

pub(in crate::sys::uring) struct RecvFrom {
    buf: Buf,
    msg: Box<Msg>,
}

impl RecvFrom {
    pub fn new(buf: Buf) -> RecvFrom {
        RecvFrom {
            buf,
            msg: Msg::new(AddrBuf::new()),
        }
    }
}

impl OpBase for RecvFrom {
    const KIND: OpKind = OpKind::RecvFrom;

    fn complete(mut self, c: &mut Completion) {
        if let Ok(n) = c.result {
            // SAFETY: the kernel wrote `n` bytes at `spare()`, where this
            // operation's SQE pointed it.
            unsafe { self.buf.advance(n) };
            c.set_extra(Extra::From(self.msg.from()));
        }
        c.buf = Some(self.buf);
    }
}

impl UringOp for RecvFrom {
    const LANE: Option<Lane> = Some(Lane::Read);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let hdr = self.msg.recv_into(&mut self.buf);
        opcode::RecvMsg::new(cx.fd, hdr).ioprio(cx.prio()).build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        cx.done_unless_eagain(res)
    }
}

pub(in crate::sys::uring) struct SendTo {
    buf: Buf,
    msg: Box<Msg>,
}

impl SendTo {
    pub fn new(buf: Buf, to: Box<SockAddr>) -> SendTo {
        SendTo {
            buf,
            msg: Msg::new(AddrBuf::of(&to)),
        }
    }
}

op_base!(SendTo: SendTo, hands back buf);

impl UringOp for SendTo {
    const LANE: Option<Lane> = Some(Lane::Write);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let hdr = self.msg.send_of(&self.buf);
        opcode::SendMsg::new(cx.fd, hdr)
            .ioprio(cx.prio())
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        cx.done_unless_eagain(res)
    }
}
