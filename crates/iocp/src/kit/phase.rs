//! Where an operation is in its life, and what one attempt at it achieved.

use std::io;

use crate::error;

/// The lifecycle of an operation in flight.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    /// Not attempted yet: waiting in its lane behind another operation, or
    /// at the head of it waiting for its first try.
    Queued,
    /// Attempted: the kernel holds it (a completion-based engine), or it
    /// waits at the head of its lane for the socket to be ready again (a
    /// readiness-based one).
    Issued,
    /// A standing operation between two arms.
    Parked(Park),
    /// Asked to stop while the kernel holds it: the kernel's last word on it
    /// ends it (aborted, or its normal result if the stop lost the race).
    Stopping(Stop),
}

/// Why a standing operation waits between two arms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Park {
    /// A pooled receive with no pool buffer left: it resumes when the
    /// application gives one back.
    Starved,
    /// A standing accept pausing after running out of descriptors or memory
    /// ([`crate::kit::accept::ACCEPT_BACKOFF`]).
    BackOff,
}

/// Why an operation is stopped before it finished.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stop {
    /// `cancel`, the handle's close, or the port's.
    Cancel,
    /// Its deadline passed.
    Deadline,
}

impl Phase {
    /// The error an operation in this phase completes with when it is
    /// stopped: `TimedOut` for a deadline, aborted for everything else.
    pub(crate) fn abort_error(self) -> io::Error {
        match self {
            Phase::Stopping(Stop::Deadline) => error::timed_out(),
            _ => error::aborted(),
        }
    }

    /// Whether a stop was requested.
    pub(crate) fn stopping(self) -> bool {
        matches!(self, Phase::Stopping(_))
    }
}

/// What one attempt at an operation (a readiness engine's syscall, a
/// completion engine's CQE) means for it.
#[derive(Debug)]
pub(crate) enum Step {
    /// It is over: complete it with this result.
    Done(io::Result<usize>),
    /// It goes on at once: the rest of a short send, or a standing
    /// operation's next arm (unless it is being stopped).
    Again,
    /// Nothing to do until the kernel reports more (a multishot operation
    /// still armed; Windows has none).
    #[cfg_attr(windows, allow(dead_code))]
    Wait,
    /// The socket was not ready (`EAGAIN`): try again once it is.
    WouldBlock,
    /// A pooled receive found no pool buffer: park it until one comes back.
    Starved,
    /// A standing accept ran out of descriptors or memory: the error was
    /// reported; park it for the back-off.
    BackOff,
}

impl Step {
    /// A send moved `n` more bytes, `sent` of `total` in all so far: it is
    /// over when every byte is out; a call that moved nothing ends it
    /// (`WriteZero`); otherwise the rest goes next, before anything else in
    /// its lane.
    pub(crate) fn after_send(sent: &mut usize, n: usize, total: usize) -> Step {
        *sent += n;
        if *sent >= total {
            Step::Done(Ok(*sent))
        } else if n == 0 {
            Step::Done(Err(io::ErrorKind::WriteZero.into()))
        } else {
            Step::Again
        }
    }
}
