//! Files and pipes: `READ` into the buffer's spare room, `WRITE` of every
//! byte, `FSYNC`. On a file each carries its offset and waits for nothing
//! (reads and writes at distinct offsets run at once; the kernel runs what
//! would block in its own workers); on a pipe (offset -1: the stream) reads
//! and writes each keep their lane, in issue order. A short write is
//! re-issued for its rest, at the offset past what was written.

use io_uring::{opcode, squeue, types};

use super::{complete_read, Flush, Issue, Reap, UringOp, Write};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::sys::common::op_base;

/// The offset of a `READ`/`WRITE`: the file's `at`, or -1 (the stream's
/// own position, what a pipe has).
fn offset(at: Option<u64>) -> u64 {
    at.unwrap_or(u64::MAX)
}

/// The most bytes one SQE moves.
fn clamp(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// A read into `buf`'s spare room at `at` (a file) or from the stream.
pub(in crate::sys::uring) struct Read {
    pub buf: Buf,
    pub at: Option<u64>,
}

op_base!(Read: Read, hands back buf via complete_read);

impl UringOp for Read {
    const LANE: Option<Lane> = Some(Lane::Read);

    /// A pipe's reads take turns; a file's never wait.
    fn lane(&self) -> Option<Lane> {
        self.at.is_none().then_some(Lane::Read)
    }

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let (p, n) = self.buf.spare();
        opcode::Read::new(cx.fd, p, clamp(n))
            .offset(offset(self.at))
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        cx.done_unless_eagain(res)
    }
}

impl Write {
    /// Where the rest goes: the offset past what was written (a file), or
    /// `None` (a pipe).
    fn next_at(&self) -> Option<u64> {
        self.at.map(|a| a + self.sent as u64)
    }

    /// The bytes not written yet.
    fn rest(&self) -> &[u8] {
        let b = self.buf.as_slice();
        &b[self.sent.min(b.len())..]
    }
}

impl UringOp for Write {
    const LANE: Option<Lane> = Some(Lane::Write);

    /// A pipe's writes take turns; a file's never wait.
    fn lane(&self) -> Option<Lane> {
        self.at.is_none().then_some(Lane::Write)
    }

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let s = self.rest();
        opcode::Write::new(cx.fd, s.as_ptr(), clamp(s.len()))
            .offset(offset(self.next_at()))
            .build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        if res < 0 {
            return cx.done_unless_eagain(res);
        }
        Step::after_send(&mut self.sent, res as usize, self.buf.len())
    }
}

impl UringOp for Flush {
    const LANE: Option<Lane> = None;

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        let flags = if self.data_only {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        opcode::Fsync::new(cx.fd).flags(flags).build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        Step::Done(cx.result(res))
    }
}
