//! Files and pipes: `pread`/`read` into the buffer's spare room,
//! `pwrite`/`write` of every byte, `fsync`/`fdatasync`.
//!
//! On a pipe each is an attempt on readiness, as a socket's receive and
//! send are: reads and writes keep their lanes, in issue order, and a write
//! keeps writing until the pipe is full, then waits for `EPOLLOUT` at the
//! head of its lane. A file is never "ready", so the engine runs its
//! operations to their end on the file pool ([`EOp::run_to_end`], blocking
//! calls) instead.

use std::io;
use std::os::fd::BorrowedFd;

use super::stream::send_all;
use super::{outcome, Attempt, EOp, Flush, ReadyOp, Write};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::sys::common::{flush, op_base, read_into, write_from};

/// A read into `buf`'s spare room at `at` (a file) or from the stream.
pub(in crate::sys::epoll) struct Read {
    pub buf: Buf,
    pub at: Option<u64>,
}

op_base!(Read: Read, hands back buf);

impl Read {
    fn step(&mut self, fd: BorrowedFd<'_>) -> Step {
        outcome(read_into(fd, &mut self.buf, self.at))
    }
}

impl Write {
    fn step(&mut self, fd: BorrowedFd<'_>) -> Step {
        let (buf, at) = (&self.buf, self.at);
        send_all(&mut self.sent, buf.len(), |sent| {
            let rest = &buf.as_slice()[sent.min(buf.len())..];
            write_from(fd, rest, at.map(|a| a + sent as u64))
        })
    }
}

impl Flush {
    fn step(&mut self, fd: BorrowedFd<'_>) -> Step {
        outcome(flush(fd, self.data_only).map(|()| 0))
    }
}

/// On a pipe each attempt on readiness is one `step`, the same that
/// [`EOp::run_to_end`] repeats on a file; these are their lanes.
macro_rules! ready_by_step {
    ($($op:ident in $lane:ident),*) => {$(
        impl ReadyOp for $op {
            const LANE: Lane = Lane::$lane;

            fn attempt(&mut self, fd: BorrowedFd<'_>, _cx: &mut Attempt<'_>) -> Step {
                self.step(fd)
            }
        }
    )*};
}

ready_by_step!(Read in Read, Write in Write, Flush in Write);

impl EOp {
    /// Runs an operation on a file to its end with blocking calls (on a
    /// file pool thread): a write until every byte is out, each call again
    /// after `EINTR`. Only reads, writes and flushes run on files; any other
    /// operation fails, saying so.
    pub fn run_to_end(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        loop {
            let step = match self {
                EOp::Read(o) => o.step(fd),
                EOp::Write(o) => o.step(fd),
                EOp::Flush(o) => o.step(fd),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("a {:?} operation cannot run on a file", other.kind()),
                    ))
                }
            };
            match step {
                Step::Done(r) => return r,
                Step::Again => {}
                // EAGAIN: the file was opened non-blocking and the call
                // would block (not for a regular file; a device may).
                _ => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }
}
