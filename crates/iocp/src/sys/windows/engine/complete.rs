//! A dequeued packet → what the application sees: the packet is opened,
//! an operation's box is claimed back from the kernel under its handle's
//! lock, the operation reads its packet ([`WinOp::on_packet`]), and what
//! that step says happens here, the same for every operation: end it, issue
//! it again, or park it.
//!
//! [`WinOp::on_packet`]: super::ops::WinOp::on_packet

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::opbox::{self, Dequeued, Opened};
use super::ops::{Input, Local, Reap};
use super::{Delivery, HState, HandleShared, Shared, TimerItem, KERNEL_TAG};
use crate::kit::accept::ACCEPT_BACKOFF;
use crate::kit::lock;
use crate::kit::phase::{Park, Phase, Step};
use crate::op::Completion;
use crate::sys::windows::cport::Packet;

impl Shared {
    /// Turns a packet this thread dequeued into what the application sees.
    pub(crate) fn process(&self, pkt: Packet) -> Delivery {
        match opbox::open(&pkt) {
            Opened::Abandon => Delivery::Abandon,
            Opened::Post(p) => {
                self.live.fetch_sub(1, Ordering::SeqCst);
                Delivery::Deliver(p.completion(), p.from)
            }
            Opened::Op { op, local } => {
                self.completions.fetch_add(1, Ordering::Relaxed);
                let kernel = (!local).then_some(Input::Kernel {
                    status: pkt.status,
                    bytes: pkt.bytes,
                });
                // Operation completions are queued by the kernel (the
                // engine), never by the thread that takes them: each is a
                // hand-off, as from a Linux engine thread.
                match HandleShared::complete(op, kernel) {
                    Some(c) => Delivery::Deliver(c, KERNEL_TAG),
                    None => Delivery::Nothing,
                }
            }
            Opened::Unknown(key) => {
                tracing::error!("iocp: packet with unknown kernel key {key}; ignored");
                Delivery::Nothing
            }
        }
    }
}

impl HandleShared {
    /// Handles the packet of operation `op`: the kernel's (`kernel`), or
    /// the library's (`None`: what it carries is in the operation's record).
    fn complete(op: Dequeued, kernel: Option<Input>) -> Option<Completion> {
        let (h, id, token) = {
            let b = op.get();
            (b.h.clone(), b.id, b.token)
        };
        let mut st = lock(&h.state);
        let claimed = st.find(id).filter(|&i| op.claim(&mut st.ops[i].slot));
        let Some(i) = claimed else {
            tracing::error!("iocp: completion for an operation the handle does not know; dropped");
            return None;
        };
        let (input, kept) = match kernel {
            Some(input) => (input, false),
            None => match st.ops[i].local.take().unwrap_or(Local::Resume) {
                Local::End(r) => return h.finish(st, i, r),
                Local::Failed(e) => (Input::Failed(e), false),
                Local::Resume => (Input::Resume, false),
                Local::Fed => (Input::Resume, true),
            },
        };
        let phase = st.ops[i].phase;
        let mut cx = Reap {
            h: &h,
            id,
            token,
            phase,
            stop: phase.stopping() || st.closing || h.port.closed.load(Ordering::SeqCst),
            out: None,
            kept,
            freed: false,
        };
        let Some(b) = st.ops[i].slot.held() else {
            return None; // claimed just above: held
        };
        let step = b.op().on_packet(input, &mut cx);
        if cx.kept {
            // It was stopped before it took the buffer kept for it.
            h.port.unkeep();
            cx.freed = true;
        }
        let (stop, out, freed) = (cx.stop, cx.out.take(), cx.freed);
        let c = h.apply(st, i, step, stop, out);
        if freed {
            h.port.resume_starved();
        }
        c
    }

    /// Carries out what operation `st.ops[i]` made of its packet. A
    /// standing operation's `more` completion (`out`) goes out now; when the
    /// operation ends as well, its end follows through a library packet.
    fn apply(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, HState>,
        i: usize,
        step: Step,
        stop: bool,
        out: Option<Completion>,
    ) -> Option<Completion> {
        let c = &mut st.ops[i];
        let end = match step {
            Step::Done(r) => Some(r),
            // Windows has no multishot request: every packet hands the
            // operation back, so one that goes on is issued again.
            Step::Again | Step::WouldBlock | Step::Wait if stop => Some(Err(c.phase.abort_error())),
            Step::Again | Step::WouldBlock | Step::Wait => {
                self.issue_at(&mut st, i);
                None
            }
            Step::Starved => {
                self.port.starved.fetch_add(1, Ordering::Relaxed);
                c.phase = Phase::Parked(Park::Starved);
                None
            }
            Step::BackOff => {
                c.phase = Phase::Parked(Park::BackOff);
                let item = TimerItem::Resume {
                    h: Arc::downgrade(self),
                    op: c.id,
                };
                self.port.timers.add(Instant::now() + ACCEPT_BACKOFF, item);
                None
            }
        };
        match (end, out) {
            (Some(r), None) => self.finish(st, i, r),
            (Some(r), Some(more)) => {
                let c = &mut st.ops[i];
                c.local = Some(Local::End(r));
                self.port.post_local(&mut c.slot);
                Some(more)
            }
            (None, out) => out,
        }
    }

    /// Ends operation `st.ops[i]` (claimed) with `result`: its box becomes
    /// the final completion, its lane goes on, and the socket closes after
    /// the last operation of a closing handle.
    fn finish(
        &self,
        mut st: MutexGuard<'_, HState>,
        i: usize,
        result: io::Result<usize>,
    ) -> Option<Completion> {
        let ctl = st.ops.swap_remove(i);
        let (id, lane) = (ctl.id, ctl.lane);
        let Some(b) = ctl.slot.into_box() else {
            return None; // claimed by the caller: held
        };
        let c = b.into_completion(result);
        // A stream send cut part-way breaks the write side (`kit::lanes`).
        st.lanes.send_failed(c.partial);
        if let Some(l) = lane {
            let next = st.lanes.leave(l, id);
            self.go_on(&mut st, next);
        }
        let last = st.closing && st.ops.is_empty();
        drop(st);
        self.port.timers.op_done(id);
        if last {
            self.final_close();
        }
        Some(c)
    }
}
