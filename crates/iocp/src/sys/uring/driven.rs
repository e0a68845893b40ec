//! What the threads that drive a shared ring use without holding the
//! engine: the driver's wait in the kernel, the message that wakes a
//! waiting driver, and the standby's eventfd.
//!
//! Nothing here touches the ring's queues (only the engine does, under its
//! lock): the driver enters the kernel with the ring's descriptor, handing
//! over the SQEs the engine pushed before it let go.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, EnterFlags, IoUring};

use super::sqe::check_enter;
use super::ud::MSG_UD;
use super::UringEngine;
use crate::kit::lock;
use crate::sys::common::{eventfd, eventfd_drain, eventfd_signal, wait_readable, EngineCounters};

/// The kernel side of a driven io_uring engine.
pub(crate) struct UringWait {
    ring: Arc<IoUring>,
    /// Registered with the ring: the kernel signals it for completions it
    /// posts while the standby is armed (`IORING_CQ_EVENTFD_DISABLED`
    /// clear); a hand-over to the standby signals it too.
    standby: OwnedFd,
    /// A ring of its own, no thread's, from which any thread posts a
    /// message into `ring` (`MSG_RING`): the message completes on the spot,
    /// with no tie to the thread that sent it, and its CQE ends a driver's
    /// wait. (A read of an eventfd armed in the ring would complete through
    /// the thread that armed it, and fail once that thread exits.)
    waker: Mutex<IoUring>,
}

impl UringWait {
    /// Registers the standby's eventfd with `engine`'s ring (disarmed) and
    /// builds the waker.
    pub(crate) fn new(engine: &mut UringEngine) -> io::Result<UringWait> {
        let ring = engine.ring();
        let standby = eventfd()?;
        ring.submitter().register_eventfd(standby.as_raw_fd())?;
        engine.set_standby(false);
        let waker = IoUring::builder().dontfork().build(2)?;
        Ok(UringWait {
            ring,
            standby,
            waker: Mutex::new(waker),
        })
    }

    /// The driver's wait: hands the kernel the `to_submit` SQEs pushed
    /// before and waits for one completion, up to `wait` (`None`: no limit).
    pub(crate) fn wait(&self, to_submit: u32, wait: Option<Duration>, counters: &EngineCounters) {
        let sub = self.ring.submitter();
        let r = match wait {
            None => {
                // SAFETY: no argument is passed; the call reads no memory of
                // ours besides the ring the kernel owns.
                unsafe {
                    sub.enter::<libc::sigset_t>(to_submit, 1, EnterFlags::GETEVENTS.bits(), None)
                }
            }
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                let flags = EnterFlags::GETEVENTS | EnterFlags::EXT_ARG;
                // SAFETY: `args` is the `io_uring_getevents_arg` the flag
                // says follows (`SubmitArgs` is a transparent wrapper of
                // it), and it and the timespec it points to outlive the
                // call.
                unsafe { sub.enter(to_submit, 1, flags.bits(), Some(&args)) }
            }
        };
        check_enter(r);
        EngineCounters::bump(&counters.enters, 1);
    }

    /// Ends a driver's wait (now, or as soon as it starts: the message's
    /// CQE stays in the ring until a turn reaps it).
    pub(crate) fn wake_driver(&self, counters: &EngineCounters) {
        let mut w = lock(&self.waker);
        let msg = opcode::MsgRingData::new(types::Fd(self.ring.as_raw_fd()), 0, MSG_UD, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: a MSG_RING SQE points to no memory of ours.
        if unsafe { w.submission().push(&msg) }.is_err() {
            // Full: messages from earlier failed to go (impossible with
            // one SQE per call); hand them over and try again.
            let _ = w.submit();
            // SAFETY: as above.
            let _ = unsafe { w.submission().push(&msg) };
        }
        let r = w.submit();
        check_enter(r);
        EngineCounters::bump(&counters.enters, 1);
        // A message that could not be posted (the target's CQ overflowed)
        // leaves a CQE here; the driver is awake anyway then.
        for c in w.completion() {
            tracing::debug!("io_uring: wake-up message failed: {}", c.result());
        }
    }

    /// The standby's wait: until the eventfd is signalled or `until`
    /// passes. Returns whether it was signalled (and takes the signal).
    pub(crate) fn standby_wait(&self, until: Option<Instant>) -> bool {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        let ready = wait_readable(self.standby.as_fd(), left);
        if ready {
            eventfd_drain(self.standby.as_fd());
        }
        ready
    }

    /// Wakes the standby.
    pub(crate) fn wake_standby(&self) {
        eventfd_signal(self.standby.as_fd());
    }
}
