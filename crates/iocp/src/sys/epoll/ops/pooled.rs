//! Pooled receive: reads into a free pool buffer only when the socket is
//! readable and gives it back on `EAGAIN`, so an idle connection holds
//! none; each chunk is a `more` completion, and end of stream ends it. With
//! no free buffer it starves until the application drops one (the pool's
//! waker wakes the engine). No buffer is ever lent to the kernel.

use std::os::fd::BorrowedFd;

use super::{failed, Attempt, ReadyOp, RecvPooled};
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::sys::common::read_pooled;

impl ReadyOp for RecvPooled {
    const LANE: Lane = Lane::Read;

    fn standing(&self) -> bool {
        true
    }

    fn attempt(&mut self, fd: BorrowedFd<'_>, cx: &mut Attempt<'_>) -> Step {
        match read_pooled(fd, cx.pool, cx.free, cx.meta, cx.out) {
            Ok(None) => Step::Starved,
            Ok(Some(0)) => Step::Done(Ok(0)),
            Ok(Some(_)) => Step::Again,
            Err(e) => failed(e),
        }
    }
}
