//! Connects: `connect(2)` on a non-blocking socket, finished when the
//! socket turns writable. Connects have a lane of their own.

use std::os::fd::BorrowedFd;

use socket2::SockRef;

use super::{Attempt, Connect, ReadyOp};
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;

impl ReadyOp for Connect {
    const LANE: Lane = Lane::Connect;

    /// Starts the connect on the first attempt; later attempts (on
    /// `EPOLLOUT`, `EPOLLERR` or `EPOLLHUP`) check `SO_ERROR`, then ask
    /// `connect(2)` again whether the handshake is over (`EISCONN`/0) or
    /// still going (`EALREADY`): a stale writability edge from before the
    /// connect must not complete it.
    fn attempt(&mut self, fd: BorrowedFd<'_>, cx: &mut Attempt<'_>) -> Step {
        let sock = SockRef::from(&fd);
        if !cx.first {
            match sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Step::Done(Err(e)),
            }
        }
        match sock.connect(&self.addr) {
            Ok(()) => Step::Done(Ok(0)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINPROGRESS) | Some(libc::EALREADY) | Some(libc::EINTR) => {
                    Step::WouldBlock
                }
                Some(libc::EISCONN) if !cx.first => Step::Done(Ok(0)),
                _ => Step::Done(Err(e)),
            },
        }
    }
}
