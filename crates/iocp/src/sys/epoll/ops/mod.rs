//! epoll operations, grouped by family (accept, connect, stream, datagram,
//! pooled on sockets; file on files and pipes). Each operation is a type that owns
//! exactly the memory it needs, and says in one place which lane it waits
//! in and what one non-blocking attempt at it is; [`EOp`] is their sum.
//!
//! An attempt never blocks: it makes the syscall (`MSG_DONTWAIT`, the socket
//! is non-blocking too) and reports a [`Step`]; the engine decides what the
//! step means for the operation's lane. A new operation is a type in its
//! family's file with its [`OpBase`] and [`ReadyOp`] impls, and a line in
//! the list of [`op_sum`].

mod accept;
mod connect;
mod datagram;
mod file;
mod pooled;
mod stream;

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::Completion;
use crate::pool::PoolShared;
use crate::sys::common::{op_sum, OpBase, OpMeta};

pub(super) use accept::Accept;
pub(super) use datagram::{RecvFrom, SendTo};
pub(super) use file::Read;
pub(super) use stream::Recv;

const RECV_FLAGS: libc::c_int = libc::MSG_DONTWAIT;
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// What an attempt may use besides the operation itself.
pub(super) struct Attempt<'a> {
    pub meta: &'a OpMeta,
    /// The operation was never attempted before.
    pub first: bool,
    /// The socket is a stream (a datagram is never split).
    pub stream: bool,
    pub pool: &'a Arc<PoolShared>,
    /// Pool buffers the engine holds (free to read into).
    pub free: &'a mut Vec<u16>,
    /// Where a standing operation's `more` completions go.
    pub out: &'a mut Vec<Completion>,
}

/// The step a failed syscall means: wait for readiness after `EAGAIN`, try
/// again after `EINTR`, otherwise the operation is over.
fn failed(e: io::Error) -> Step {
    match e.kind() {
        io::ErrorKind::WouldBlock => Step::WouldBlock,
        io::ErrorKind::Interrupted => Step::Again,
        _ => Step::Done(Err(e)),
    }
}

/// The step a syscall's result means: done with its byte count, or as
/// [`failed`] says.
fn outcome(r: io::Result<usize>) -> Step {
    match r {
        Ok(n) => Step::Done(Ok(n)),
        Err(e) => failed(e),
    }
}

/// One kind of epoll operation.
pub(super) trait ReadyOp: OpBase {
    /// The lane it waits in; only the head of a lane is ever attempted.
    const LANE: Lane;
    /// The lane it waits in (of a value).
    fn lane(&self) -> Lane {
        Self::LANE
    }
    /// Whether it stands (yields `more` completions, taking turns with the
    /// operations queued behind it).
    fn standing(&self) -> bool {
        false
    }
    /// One non-blocking attempt on `fd`.
    fn attempt(&mut self, fd: BorrowedFd<'_>, cx: &mut Attempt<'_>) -> Step;
}

op_sum!(
    /// An epoll operation in flight.
    EOp,
    vectored msg: ()
);

impl EOp {
    pub fn lane(&self) -> Lane {
        dispatch!(self, o => o.lane())
    }

    pub fn standing(&self) -> bool {
        dispatch!(self, o => o.standing())
    }

    pub fn attempt(&mut self, fd: BorrowedFd<'_>, cx: &mut Attempt<'_>) -> Step {
        dispatch!(self, o => o.attempt(fd, cx))
    }
}
