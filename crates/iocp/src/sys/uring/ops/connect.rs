//! Connects: `CONNECT` to an address the operation owns. Sends queue
//! behind a connect in the write lane, as they would behind a send.

use io_uring::{opcode, squeue};

use super::{Issue, Reap, UringOp};
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
pub(in crate::sys) use crate::sys::common::ops::Connect;

impl UringOp for Connect {
    const LANE: Option<Lane> = Some(Lane::Write);

    fn sqe(&mut self, cx: &Issue) -> squeue::Entry {
        opcode::Connect::new(cx.fd, self.addr.as_ptr() as *const _, self.addr.len()).build()
    }

    fn on_cqe(&mut self, res: i32, _flags: u32, cx: &mut Reap<'_>) -> Step {
        Step::Done(cx.result(res))
    }
}
