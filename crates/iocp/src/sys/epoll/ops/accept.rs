//! Accepts: `accept4` on a readable listener. A one-shot accept ends with
//! its connection or its error; a standing one yields a `more` completion
//! per connection, takes turns with accepts queued behind it, and follows
//! [`crate::kit::accept`] on errors (a back-off pauses the whole lane: the
//! connection stays in the backlog and the listener stays readable).

use std::os::fd::BorrowedFd;

use super::{failed, AcceptStream, Attempt, ReadyOp};
use crate::addr::Addr;
use crate::kit::accept;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, Extra, OpKind};
use crate::sys::common::OpBase;
use crate::sys::epoll::poller;

pub(in crate::sys::epoll) struct Accept {
    /// The connection, once accepted.
    got: Option<(socket2::Socket, Option<Addr>)>,
}

impl Accept {
    pub fn new() -> Accept {
        Accept { got: None }
    }
}

impl OpBase for Accept {
    const KIND: OpKind = OpKind::Accept;

    fn complete(self, c: &mut Completion) {
        if let Some((sock, peer)) = self.got {
            c.set_extra(Extra::Accepted(sock, peer));
        }
    }
}

impl ReadyOp for Accept {
    const LANE: Lane = Lane::Accept;

    fn attempt(&mut self, fd: BorrowedFd<'_>, _cx: &mut Attempt<'_>) -> Step {
        match poller::accept(fd) {
            Ok(got) => {
                self.got = Some(got);
                Step::Done(Ok(0))
            }
            Err(e) => failed(e),
        }
    }
}

impl ReadyOp for AcceptStream {
    const LANE: Lane = Lane::Accept;

    fn standing(&self) -> bool {
        true
    }

    fn attempt(&mut self, fd: BorrowedFd<'_>, cx: &mut Attempt<'_>) -> Step {
        match poller::accept(fd) {
            Ok((sock, peer)) => {
                let mut c = cx.meta.more(OpKind::Accept, Ok(0));
                c.set_extra(Extra::Accepted(sock, peer));
                cx.out.push(c);
                Step::Again
            }
            Err(e) => match failed(e) {
                Step::Done(Err(e)) => {
                    accept::on_error(e, |e| cx.out.push(cx.meta.more(OpKind::Accept, Err(e))))
                }
                step => step,
            },
        }
    }
}
