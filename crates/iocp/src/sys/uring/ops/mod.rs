//! io_uring operations, grouped by family (accept, connect, stream,
//! datagram, pooled on sockets; file on files and pipes). Each operation is a type that
//! owns exactly the memory its SQEs point to, and says in one place which
//! lane it waits in, which SQE each attempt is, and what each CQE means;
//! [`UOp`] is their sum.
//!
//! A new operation is a type in its family's file with its [`OpBase`] and
//! [`UringOp`] impls, and a line in the list of [`op_sum`].

mod accept;
mod connect;
mod datagram;
mod file;
mod pooled;
mod stream;

use std::io;

use io_uring::squeue;

use super::bufring::BufRing;
use super::sqe::{Issue, VecMsg};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::{Phase, Step};
use crate::op::Completion;
use crate::sys::common::{op_sum, OpBase, OpMeta};

pub(super) use accept::Accept;
pub(super) use datagram::{RecvFrom, SendTo};
pub(super) use file::Read;
pub(super) use stream::Recv;

/// The result a CQE that ends an operation in `phase` gives it: the bytes
/// transferred, or the error — the phase's abort error when the operation
/// was stopped, including a stop that found it between two attempts (the
/// kernel ended the last one with `EAGAIN` or `EINTR`).
pub(super) fn cqe_result(phase: Phase, res: i32) -> io::Result<usize> {
    if res >= 0 {
        return Ok(res as usize);
    }
    let stopped = res == -libc::ECANCELED
        || (phase.stopping() && (res == -libc::EAGAIN || res == -libc::EINTR));
    if stopped {
        Err(phase.abort_error())
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

/// Hands a receive's or a read's buffer back in its completion `c`, with
/// the bytes the kernel wrote into its spare room.
pub(super) fn complete_read(mut buf: Buf, c: &mut Completion) {
    if let Ok(n) = c.result {
        // SAFETY: the kernel wrote `n` bytes at `spare()`, where the
        // operation's SQE pointed it.
        unsafe { buf.advance(n) };
    }
    c.buf = Some(buf);
}

/// What a CQE is read with besides the operation itself.
pub(super) struct Reap<'a> {
    pub meta: &'a OpMeta,
    pub phase: Phase,
    /// Where a standing operation's `more` completions go.
    pub out: &'a mut Vec<Completion>,
    pub bufring: Option<&'a mut BufRing>,
}

impl Reap<'_> {
    /// The result a CQE that ends the operation gives it ([`cqe_result`]).
    pub fn result(&self, res: i32) -> io::Result<usize> {
        cqe_result(self.phase, res)
    }

    /// `EAGAIN` (the kernel gave up a retry it ran off the fast path) means
    /// "not ready, go on later"; any other result ends the operation.
    pub fn done_unless_eagain(&self, res: i32) -> Step {
        if res == -libc::EAGAIN {
            Step::WouldBlock
        } else {
            Step::Done(self.result(res))
        }
    }
}

/// One kind of io_uring operation.
pub(super) trait UringOp: OpBase {
    /// The lane it waits in (`None`: it never waits for another operation).
    const LANE: Option<Lane>;
    /// The lane it waits in (of a value).
    fn lane(&self) -> Option<Lane> {
        Self::LANE
    }
    /// The SQE of the next attempt (the engine adds the `user_data`).
    fn sqe(&mut self, cx: &Issue) -> squeue::Entry;
    /// What a CQE (`res`, `flags`) means for it.
    fn on_cqe(&mut self, res: i32, flags: u32, cx: &mut Reap<'_>) -> Step;
}

op_sum!(
    /// An io_uring operation in flight.
    UOp,
    vectored msg: VecMsg
);

impl UOp {
    pub fn lane(&self) -> Option<Lane> {
        dispatch!(self, o => o.lane())
    }

    pub fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        dispatch!(self, o => o.sqe(cx))
    }

    pub fn on_cqe(&mut self, res: i32, flags: u32, cx: &mut Reap<'_>) -> Step {
        dispatch!(self, o => o.on_cqe(res, flags, cx))
    }

    /// Whether this is a pooled receive waiting for readability with
    /// `POLL_ADD` (no buffer ring): its SQEs carry the poll flag.
    pub fn polls(&self, has_bufring: bool) -> bool {
        matches!(self, UOp::RecvPooled(_)) && !has_bufring
    }
}
