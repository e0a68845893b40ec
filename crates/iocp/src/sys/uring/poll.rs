//! The pool's side of the engine: pooled receive in poll mode (no buffer
//! ring), and pool buffers coming back from the application.
//!
//! In poll mode a pooled receive is a `POLL_ADD` for readability; when it
//! fires, the engine reads into free pool buffers itself until the socket
//! looks drained, then polls again. With no free buffer the receive
//! starves until the application gives one back.

use std::io::ErrorKind;
use std::os::fd::AsFd;

use super::ops::cqe_result;
use super::UringEngine;
use crate::kit::phase::Step;
use crate::sys::common::read_pooled;

impl UringEngine {
    /// Slot `idx`'s poll fired with `res`.
    pub(super) fn on_poll_ready(&mut self, idx: usize, res: i32) {
        let Some(slot) = self.ops.get(idx) else {
            return;
        };
        let step = if res < 0 {
            Step::Done(cqe_result(slot.phase, res))
        } else if slot.phase.stopping() {
            Step::Done(Err(slot.phase.abort_error()))
        } else {
            self.read_ready(idx)
        };
        match step {
            // Read all there was: poll again.
            Step::WouldBlock => self.issue(idx),
            step => self.apply(idx, step),
        }
    }

    /// Reads into free pool buffers while the socket fills them.
    fn read_ready(&mut self, idx: usize) -> Step {
        let Some(slot) = self.ops.get(idx) else {
            return Step::Wait;
        };
        let Some(h) = self.handles.get(&slot.meta.hid) else {
            return Step::Wait;
        };
        let pool = &self.core.shared.pool;
        loop {
            let r = read_pooled(
                h.fd.as_fd(),
                pool,
                &mut self.free_bufs,
                &slot.meta,
                &mut self.core.out,
            );
            match r {
                Ok(None) => return Step::Starved,
                Ok(Some(0)) => return Step::Done(Ok(0)),
                // A full buffer: there may be more.
                Ok(Some(n)) if n == pool.buf_size => {}
                Ok(Some(_)) => return Step::WouldBlock,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::WouldBlock,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Done(Err(e)),
            }
        }
    }

    /// How many pool buffers a pooled receive could find now (in the
    /// buffer ring, or free in user space).
    fn buffers_available(&self) -> usize {
        match &self.bufring {
            Some(br) => br.pool.in_kernel.load(std::sync::atomic::Ordering::Relaxed),
            None => self.free_bufs.len(),
        }
    }

    /// Takes back pool buffers the application dropped, then re-arms the
    /// receives that starved for them.
    pub(super) fn recycle(&mut self) {
        self.core.take_returned();
        if !self.core.returned.is_empty() {
            if let Some(br) = self.bufring.as_mut() {
                for bid in self.core.returned.drain(..) {
                    br.publish(bid);
                }
                br.commit();
            } else {
                self.free_bufs.append(&mut self.core.returned);
            }
        }
        self.rearm_starved();
    }

    /// Re-arms starved receives, oldest first, no more of them than there
    /// are buffers not yet claimed by an earlier re-arm. Re-arming them all
    /// whenever a few buffers come back would be a stampede: with thousands
    /// of connections and a few hundred buffers, most would fail again at
    /// once, each at the cost of an SQE and a CQE, round after round.
    fn rearm_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        let mut budget = self.buffers_available().saturating_sub(self.starve_claims);
        while budget > 0 {
            let ops = &self.ops;
            let Some(idx) = self
                .starved
                .pop_live(|i| ops.get(i).map(|s| (s.meta.id, s.phase)))
            else {
                break;
            };
            budget -= 1;
            self.starve_claims += 1;
            self.again(idx);
        }
    }
}
