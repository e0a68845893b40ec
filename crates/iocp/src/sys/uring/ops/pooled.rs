//! Pooled receive: a standing receive into the engine's pool. With a buffer
//! ring it is a multishot `RECV` that lets the kernel pick a buffer only
//! when data arrives; without one (an old kernel, or
//! `IOCP_NO_MULTISHOT_RECV`) it is a `POLL_ADD` for readability followed by
//! reads into free pool buffers ([`crate::sys::uring::poll`]). Either way an
//! idle connection holds no buffer.

use std::sync::atomic::Ordering;

use io_uring::{cqueue, opcode, squeue};

use super::{Issue, Reap, RecvPooled, UringOp};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::OpKind;

impl UringOp for RecvPooled {
    const LANE: Option<Lane> = Some(Lane::Read);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        match cx.bgid {
            Some(g) if cx.feats.multishot_recv => opcode::RecvMulti::new(cx.fd, g).build(),
            _ => opcode::PollAdd::new(cx.fd, libc::POLLIN as u32 | libc::POLLRDHUP as u32).build(),
        }
    }

    /// A CQE of the multishot receive (poll-mode CQEs go to
    /// [`crate::sys::uring::poll`]).
    fn on_cqe(&mut self, res: i32, flags: u32, cx: &mut Reap<'_>) -> Step {
        if let Some(bid) = cqueue::buffer_select(flags) {
            let br = cx
                .bufring
                .as_mut()
                .expect("buffer ids come only from the buffer ring");
            br.pool.in_kernel.fetch_sub(1, Ordering::Relaxed);
            if res > 0 {
                // SAFETY: the kernel selected buffer `bid` and wrote `res`
                // bytes into it; it is out of the ring until we republish it.
                let pb = unsafe { br.pool.lend(bid, res as usize) };
                cx.out
                    .push(cx.meta.more(OpKind::RecvPooled, Ok(res as usize)));
                let c = cx.out.last_mut().expect("just pushed");
                c.buf = Some(Buf::Pooled(pb));
            } else {
                // A buffer consumed by a CQE without data goes straight back.
                br.publish(bid);
                br.commit();
            }
        }
        if cqueue::more(flags) {
            return Step::Wait;
        }
        // The kernel ended this arm.
        match res {
            // The ring ran dry; TCP keeps the data in the socket.
            r if r == -libc::ENOBUFS => Step::Starved,
            // Data without F_MORE (the CQ filled, on older kernels): the
            // stream goes on.
            r if r > 0 => Step::Again,
            r => Step::Done(cx.result(r)),
        }
    }
}
