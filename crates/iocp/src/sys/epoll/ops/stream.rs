//! Stream transfers: `recv` into the buffer's spare room, `send` and
//! vectored `sendmsg`. A send completes only when every byte is out: it
//! keeps sending from where it got to until the socket is full (then waits
//! for `EPOLLOUT`, still at the head of the write lane) or an error.

use std::io::IoSlice;
use std::os::fd::BorrowedFd;

use socket2::SockRef;

use super::{failed, outcome, Attempt, ReadyOp, Send, SendV, RECV_FLAGS, SEND_FLAGS};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::sys::common::op_base;
use crate::sys::common::{recv_into, unsent, IOV_MAX};

pub(in crate::sys::epoll) struct Recv {
    pub buf: Buf,
}

op_base!(Recv: Recv, hands back buf);

impl ReadyOp for Recv {
    const LANE: Lane = Lane::Read;

    fn attempt(&mut self, fd: BorrowedFd<'_>, _cx: &mut Attempt<'_>) -> Step {
        outcome(recv_into(&SockRef::from(&fd), &mut self.buf, RECV_FLAGS))
    }
}

/// Sends what `call` sends until every one of `total` bytes is out, the
/// socket is full, or an error.
pub(super) fn send_all(
    sent: &mut usize,
    total: usize,
    mut call: impl FnMut(usize) -> std::io::Result<usize>,
) -> Step {
    loop {
        let step = match call(*sent) {
            Ok(n) => Step::after_send(sent, n, total),
            Err(e) => failed(e),
        };
        match step {
            // A short send (the socket buffer is nearly full) or an
            // interrupted one: the next call says whether to wait.
            Step::Again => {}
            step => return step,
        }
    }
}

impl ReadyOp for Send {
    const LANE: Lane = Lane::Write;

    fn attempt(&mut self, fd: BorrowedFd<'_>, _cx: &mut Attempt<'_>) -> Step {
        let sock = SockRef::from(&fd);
        let b = self.buf.as_slice();
        send_all(&mut self.sent, b.len(), |sent| {
            sock.send_with_flags(&b[sent.min(b.len())..], SEND_FLAGS)
        })
    }
}

impl SendV {
    pub fn new(bufs: Vec<Buf>) -> SendV {
        SendV {
            bufs,
            sent: 0,
            msg: (),
        }
    }
}

impl ReadyOp for SendV {
    const LANE: Lane = Lane::Write;

    /// On a stream at most `IOV_MAX` buffers per call; a datagram goes out
    /// in one call or fails.
    fn attempt(&mut self, fd: BorrowedFd<'_>, cx: &mut Attempt<'_>) -> Step {
        let sock = SockRef::from(&fd);
        let bufs = &self.bufs;
        let total = bufs.iter().map(Buf::len).sum();
        let max = if cx.stream { IOV_MAX } else { usize::MAX };
        send_all(&mut self.sent, total, |sent| {
            let iov: Vec<IoSlice<'_>> = unsent(bufs, sent).take(max).map(IoSlice::new).collect();
            sock.send_vectored_with_flags(&iov, SEND_FLAGS)
        })
    }
}
