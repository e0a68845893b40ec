//! Operation slots: what the engine keeps of an operation in flight, and how
//! its life goes on after each step. How an SQE names its slot (the
//! `user_data` layout) is in `ud.rs`.

use std::time::Instant;

use super::ops::UOp;
use super::ud::{GEN_MASK, GEN_SHIFT, INDEX_MASK, POLL_BIT};
use super::UringEngine;
use crate::kit::accept::ACCEPT_BACKOFF;
use crate::kit::lanes::{Lane, Next};
use crate::kit::phase::{Park, Phase, Step, Stop};
use crate::kit::run::TimerItem;
use crate::sys::common::{EngineCounters, OpMeta};

/// How many times an operation the kernel cancelled unasked is issued
/// again before it completes aborted after all.
const MAX_REISSUES: u8 = 16;

/// An operation in flight.
pub(super) struct Slot {
    pub meta: OpMeta,
    pub phase: Phase,
    /// The last attempt ended with `EAGAIN`: poll before trying again.
    pub poll_first: bool,
    /// Times the kernel cancelled it unasked (see
    /// [`UringEngine::unasked_cancel`]).
    pub reissues: u8,
    /// The engine's `submissions` when the slot's last SQE was pushed.
    pub pushed_at: u64,
    pub op: UOp,
}

impl UringEngine {
    /// The `user_data` the operation in slot `idx` is issued with: its
    /// index and the slot's current generation (without the poll flag).
    pub(super) fn user_data(&self, idx: usize) -> u64 {
        debug_assert!(idx as u64 <= INDEX_MASK, "slot index {idx} out of range");
        idx as u64 | (u64::from(self.ops.generation(idx)) & GEN_MASK) << GEN_SHIFT
    }

    /// The live slot a `user_data` names (poll flag cleared), or `None` if
    /// that slot has since been freed (and perhaps reused).
    pub(super) fn slot_of(&self, ud: u64) -> Option<usize> {
        let idx = (ud & INDEX_MASK) as usize;
        let gen = (ud >> GEN_SHIFT) & GEN_MASK;
        let live =
            self.ops.get(idx).is_some() && u64::from(self.ops.generation(idx)) & GEN_MASK == gen;
        live.then_some(idx)
    }

    /// Carries out what a CQE (or a poll-mode read) said about slot `idx`.
    pub(super) fn apply(&mut self, idx: usize, step: Step) {
        let Some(slot) = self.ops.get_mut(idx) else {
            return;
        };
        let stopping = slot.phase.stopping();
        match step {
            Step::Done(r) => self.finish(idx, r),
            Step::Wait => {}
            Step::Again => self.again(idx),
            _ if stopping => {
                let e = slot.phase.abort_error();
                self.finish(idx, Err(e));
            }
            Step::WouldBlock => {
                // Nothing of this attempt was transferred and the operation
                // still counts what earlier ones sent: it goes on from there,
                // polling first so it waits for the socket instead of
                // spinning.
                slot.poll_first = true;
                EngineCounters::bump(&self.core.shared.counters.eagain_retries, 1);
                self.issue(idx);
            }
            Step::Starved => {
                slot.phase = Phase::Parked(Park::Starved);
                self.starved.push(idx, slot.meta.id);
                EngineCounters::bump(&self.core.shared.counters.starved, 1);
                // Buffers may already be waiting to go back, or they went
                // back between the kernel's last try and this CQE (then no
                // later return would wake the receive): either way the
                // buffers now available go to the oldest starved receives.
                self.recycle();
            }
            Step::BackOff => {
                slot.phase = Phase::Parked(Park::BackOff);
                let op = slot.meta.id;
                self.core.timers.add(
                    Instant::now() + ACCEPT_BACKOFF,
                    TimerItem::Rearm { slot: idx, op },
                );
            }
        }
    }

    /// Issues slot `idx` again (a short send's rest, a standing operation's
    /// next arm) — or ends it, if it is being stopped or its handle closes.
    pub(super) fn again(&mut self, idx: usize) {
        let Some(slot) = self.ops.get(idx) else {
            return;
        };
        let closing = self.handles.get(&slot.meta.hid).is_none_or(|h| h.closing);
        if closing || slot.phase.stopping() {
            let e = slot.phase.abort_error();
            self.finish(idx, Err(e));
        } else {
            self.issue(idx);
        }
    }

    /// Slot `idx` is done: it completes with `result`, hands its memory
    /// back and leaves its lane; the next operation in the lane starts.
    pub(super) fn finish(&mut self, idx: usize, result: std::io::Result<usize>) {
        let Some(slot) = self.ops.remove(idx) else {
            return;
        };
        self.core.timers.op_done(slot.meta.id);
        let lane = slot.op.lane();
        // Built in the engine's output, not moved into it.
        let out = &mut self.core.out;
        out.push(slot.meta.completion(slot.op.kind(), result));
        let c = out.last_mut().expect("just pushed");
        if c.result.is_err() {
            // What a send sent before it failed (0 for anything else).
            c.partial = slot.op.sent();
            if let Some(h) = self.handles.get_mut(&slot.meta.hid) {
                h.lanes.send_failed(c.partial);
            }
        }
        slot.op.complete(c);
        self.release(slot.meta.hid, idx, lane);
    }

    /// Takes `idx` off its handle: out of its lane (starting the next one,
    /// or aborting the writes queued behind a send that broke the stream),
    /// and closes the handle after its last operation.
    fn release(&mut self, hid: u64, idx: usize, lane: Option<Lane>) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        if let Some(p) = h.ops.iter().position(|&i| i == idx) {
            h.ops.swap_remove(p);
        }
        let next = lane.map_or(Next::Idle, |l| h.lanes.leave(l, idx));
        if h.closing && h.ops.is_empty() {
            self.handles.remove(&hid);
            return;
        }
        match next {
            Next::Idle => {}
            Next::Start(n) => self.issue(n),
            // Each completes aborted and, if it was the last operation of
            // a closing handle, releases the handle.
            Next::Abort(queued) => {
                for i in queued {
                    self.stop(i, Stop::Cancel);
                }
            }
        }
    }

    /// A CQE said `ECANCELED` (without `F_MORE`) for slot `idx`. If nobody
    /// asked for that (no cancel, close or deadline is under way), the
    /// kernel cancelled it because the thread that submitted it exited: on a
    /// ring several threads drive, a request that waits for its socket
    /// completes through the thread that submitted it, and fails when that
    /// thread is gone — with nothing transferred (the data stays in the
    /// socket). It is issued again, by the calling thread. Returns whether
    /// it was.
    pub(super) fn unasked_cancel(&mut self, idx: usize) -> bool {
        let Some(slot) = self.ops.get_mut(idx) else {
            return false;
        };
        if slot.phase.stopping() || slot.reissues >= MAX_REISSUES {
            return false;
        }
        slot.reissues += 1;
        tracing::debug!(
            "io_uring: operation {} cancelled by the kernel (its submitting thread exited); issued again",
            slot.meta.id
        );
        self.again(idx);
        true
    }

    /// Requests that slot `idx` end early (a cancel, a close, a deadline).
    /// One the kernel holds gets an `AsyncCancel` and ends with its last
    /// CQE; any other ends now.
    pub(super) fn stop(&mut self, idx: usize, why: Stop) {
        let has_bufring = self.bufring.is_some();
        let Some(slot) = self.ops.get_mut(idx) else {
            return;
        };
        let issued = match slot.phase {
            Phase::Stopping(_) => return,
            Phase::Issued => true,
            Phase::Queued | Phase::Parked(_) => false,
        };
        slot.phase = Phase::Stopping(why);
        if !issued {
            let e = slot.phase.abort_error();
            self.finish(idx, Err(e));
            return;
        }
        let target = if slot.op.polls(has_bufring) {
            self.user_data(idx) | POLL_BIT
        } else {
            self.user_data(idx)
        };
        self.push_cancel(target);
    }
}
