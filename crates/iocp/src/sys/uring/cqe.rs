//! The completion side: reaping the CQ (and what overflowed it) and
//! handing each CQE to the operation its `user_data` names.

use super::ops::Reap;
use super::ops::UOp;
use super::sqe::Enter;
use super::ud::{CANCEL_UD, MSG_UD, POLL_BIT, TIMER_UD, WAKE_UD};
use super::UringEngine;
use crate::sys::common::EngineCounters;

impl UringEngine {
    /// Handles every CQE the kernel has, including those a full CQ held
    /// back.
    pub(super) fn reap_cq(&mut self) {
        // What the re-arms of starved receives came to is in this CQ: a
        // starved receive had data waiting, so its re-arm completes at
        // once (a buffer taken, or ENOBUFS again).
        self.starve_claims = 0;
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            for c in self.cq() {
                cqes.push((c.user_data(), c.result(), c.flags()));
            }
            if cqes.is_empty() {
                break;
            }
            for (ud, res, flags) in cqes.drain(..) {
                self.on_cqe(ud, res, flags);
            }
            // Overflowed CQEs are flushed by the next enter; keep going while
            // the kernel says some are waiting.
            if !self.sq().cq_overflow() {
                break;
            }
            EngineCounters::bump(&self.core.shared.counters.cq_overflows, 1);
            self.enter(Enter::Submit);
        }
        self.cqes = cqes;
    }

    pub(super) fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        if ud == WAKE_UD {
            self.wake_armed = false;
            return;
        }
        if ud == CANCEL_UD || ud == MSG_UD {
            return;
        }
        if ud == TIMER_UD {
            self.core.timers.kernel_fired();
            return;
        }
        let Some(idx) = self.slot_of(ud & !POLL_BIT) else {
            // A slot is freed only by its final CQE (or at an abandon,
            // when its SQE never reached the kernel, after which nothing
            // is reaped), so this is a bug; the generation keeps it from
            // touching the slot's next occupant.
            tracing::error!(
                "io_uring: CQE for a finished operation (user_data {ud:#x}, res {res})"
            );
            return;
        };
        let more = io_uring::cqueue::more(flags);
        if res == -libc::ECANCELED && !more && self.unasked_cancel(idx) {
            return;
        }
        if ud & POLL_BIT != 0 {
            self.on_poll_ready(idx, res);
            return;
        }
        let slot = self.ops.get_mut(idx).expect("slot_of found it live");
        // A connect issued again after the kernel cancelled it unasked may
        // find the socket connected by the first attempt.
        let res =
            if res == -libc::EISCONN && slot.reissues > 0 && matches!(slot.op, UOp::Connect(_)) {
                0
            } else {
                res
            };
        let mut cx = Reap {
            meta: &slot.meta,
            phase: slot.phase,
            out: &mut self.core.out,
            bufring: self.bufring.as_mut(),
        };
        let step = slot.op.on_cqe(res, flags, &mut cx);
        self.apply(idx, step);
    }
}
