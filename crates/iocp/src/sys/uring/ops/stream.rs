//! Stream transfers: `RECV` into the buffer's spare room, `SEND` and
//! vectored `SENDMSG`. A send completes only when every byte is out: a
//! short one is re-issued for its remainder while it holds the write lane.
//! An `EAGAIN` (the kernel gave up a retry it ran off the fast path) loses
//! nothing: the attempt is re-issued, polling first.

use io_uring::{opcode, squeue};

use super::{complete_read, Issue, Reap, Send, SendV, UringOp};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::sys::common::op_base;
use crate::sys::uring::sqe::VecMsg;

/// The most bytes one SQE moves.
fn clamp(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

pub(in crate::sys::uring) struct Recv {
    pub buf: Buf,
}

op_base!(Recv: Recv, hands back buf via complete_read);

impl UringOp for Recv {
    const LANE: Option<Lane> = Some(Lane::Read);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let (p, n) = self.buf.spare();
        opcode::Recv::new(cx.fd, p, clamp(n))
            .ioprio(cx.prio())
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        cx.done_unless_eagain(res)
    }
}

impl UringOp for Send {
    const LANE: Option<Lane> = Some(Lane::Write);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let s = &self.buf.as_slice()[self.sent..];
        opcode::Send::new(cx.fd, s.as_ptr(), clamp(s.len()))
            .ioprio(cx.prio())
            .flags(libc::MSG_NOSIGNAL)
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        if res < 0 {
            return cx.done_unless_eagain(res);
        }
        Step::after_send(&mut self.sent, res as usize, self.buf.len())
    }
}

impl SendV {
    pub fn new(bufs: Vec<Buf>) -> SendV {
        SendV {
            msg: VecMsg::new(bufs.len()),
            bufs,
            sent: 0,
        }
    }
}

impl UringOp for SendV {
    const LANE: Option<Lane> = Some(Lane::Write);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let hdr = self.msg.send_of(&self.bufs, self.sent, cx.stream);
        opcode::SendMsg::new(cx.fd, hdr)
            .ioprio(cx.prio())
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        if res < 0 {
            return cx.done_unless_eagain(res);
        }
        let total = self.bufs.iter().map(Buf::len).sum();
        Step::after_send(&mut self.sent, res as usize, total)
    }
}
