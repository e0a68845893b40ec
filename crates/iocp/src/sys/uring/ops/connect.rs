//! Connects: `CONNECT` to an address the operation owns. A connect has a
//! lane of its own, as on the other backends: a broken write side does not
//! abort it, and a send started behind it waits in the kernel (`EAGAIN`,
//! then poll) until the socket is connected.

use io_uring::{opcode, squeue};

use super::{Connect, Issue, Reap, UringOp};
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;

impl UringOp for Connect {
    const LANE: Option<Lane> = Some(Lane::Connect);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        opcode::Connect::new(cx.fd, self.addr.as_ptr() as *const _, self.addr.len()).build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        Step::Done(cx.result(res))
    }
}
