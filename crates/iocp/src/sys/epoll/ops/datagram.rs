//! Datagrams: `recvfrom` (the sender's address comes back with the data)
//! and `sendto`. A datagram goes out whole or fails whole.

use std::os::fd::BorrowedFd;

use socket2::{SockAddr, SockRef};

use super::{failed, outcome, Attempt, ReadyOp, RECV_FLAGS, SEND_FLAGS};
use crate::addr::Addr;
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::common::recv_from_into;
use crate::sys::common::{op_base, OpBase};

pub(in crate::sys::epoll) struct RecvFrom {
    buf: Buf,
    /// The sender, once a datagram came.
    from: Option<Addr>,
}

impl RecvFrom {
    pub fn new(buf: Buf) -> RecvFrom {
        RecvFrom { buf, from: None }
    }
}

impl OpBase for RecvFrom {
    const KIND: OpKind = OpKind::RecvFrom;

    fn complete(self, c: &mut Completion) {
        if c.result.is_ok() {
            c.set_extra(Extra::From(self.from));
        }
        c.buf = Some(self.buf);
    }
}

impl ReadyOp for RecvFrom {
    const LANE: Lane = Lane::Read;

    fn attempt(&mut self, fd: BorrowedFd<'_>, _cx: &mut Attempt<'_>) -> Step {
        match recv_from_into(&SockRef::from(&fd), &mut self.buf, RECV_FLAGS) {
            Ok((n, from)) => {
                self.from = Addr::from_sockaddr(&from);
                Step::Done(Ok(n))
            }
            Err(e) => failed(e),
        }
    }
}

pub(in crate::sys::epoll) struct SendTo {
    buf: Buf,
    to: Box<SockAddr>,
}

impl SendTo {
    pub fn new(buf: Buf, to: Box<SockAddr>) -> SendTo {
        SendTo { buf, to }
    }
}

op_base!(SendTo: SendTo, hands back buf);

impl ReadyOp for SendTo {
    const LANE: Lane = Lane::Write;

    fn attempt(&mut self, fd: BorrowedFd<'_>, _cx: &mut Attempt<'_>) -> Step {
        outcome(SockRef::from(&fd).send_to_with_flags(self.buf.as_slice(), &self.to, SEND_FLAGS))
    }
}
