//! Errors: what `get` returns when there is no packet, what starting an
//! operation can fail with, and how operation errors map across backends.

use std::fmt;
use std::io;

use crate::buf::Buf;

/// `get`/`get_many` returned without a packet (GQCS returning FALSE with a
/// NULL `lpOverlapped`). A *failed operation* is not this: it is a
/// [`crate::Completion`] whose `result` is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetError {
    /// The timeout passed with nothing to take (`WAIT_TIMEOUT`); nothing was
    /// consumed.
    TimedOut,
    /// The port was closed (`ERROR_ABANDONED_WAIT_0`).
    Abandoned,
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::TimedOut => f.write_str("timed out waiting for a completion"),
            GetError::Abandoned => f.write_str("the completion port was closed"),
        }
    }
}

impl std::error::Error for GetError {}

/// An operation could not be started: no completion will come for it, and
/// every buffer it would have owned is handed back here, untouched — as in
/// a [`crate::Completion`], in [`SubmitError::buf`] for the operations that
/// take one buffer and in [`SubmitError::bufs`] (in order) for a vectored
/// send.
#[derive(Debug)]
pub struct SubmitError {
    /// Why it could not start.
    pub error: io::Error,
    /// The buffer the operation would have owned (`recv`, `send`,
    /// `recv_from`, `send_to`); `None` for the others.
    pub buf: Option<Buf>,
    /// The buffers of a vectored send, in the order given; empty for every
    /// other operation.
    pub bufs: Vec<Buf>,
}

impl SubmitError {
    pub(crate) fn with_bufs(error: io::Error, buf: Option<Buf>, bufs: Vec<Buf>) -> Self {
        SubmitError { error, buf, bufs }
    }

    /// The buffer of a one-buffer operation, handed back (as
    /// [`crate::Completion::take_buf`]).
    pub fn take_buf(&mut self) -> Option<Buf> {
        self.buf.take()
    }

    /// The buffers of a vectored send, handed back in order (as
    /// [`crate::Completion::take_bufs`]); empty for other operations.
    pub fn take_bufs(&mut self) -> Vec<Buf> {
        std::mem::take(&mut self.bufs)
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation not started: {}", self.error)
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<SubmitError> for io::Error {
    fn from(e: SubmitError) -> Self {
        e.error
    }
}

/// The error an operation completes with when a cancel or a close aborted
/// it (`ERROR_OPERATION_ABORTED` on Windows, `ECANCELED` on Linux).
pub fn aborted() -> io::Error {
    #[cfg(unix)]
    {
        io::Error::from_raw_os_error(libc::ECANCELED)
    }
    #[cfg(windows)]
    {
        io::Error::from_raw_os_error(995)
    }
}

/// Whether `e` says the operation was aborted by a cancel or a close.
pub fn is_aborted(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ECANCELED)
    }
    #[cfg(windows)]
    {
        // 995 ERROR_OPERATION_ABORTED; 1236 ERROR_CONNECTION_ABORTED (local);
        // 676 ERROR_HANDLES_CLOSED is what Wine reports for a closed socket.
        matches!(e.raw_os_error(), Some(995) | Some(676) | Some(10004))
    }
}

pub(crate) fn port_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the completion port is closed")
}

pub(crate) fn handle_closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the handle is closed")
}

pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the operation's deadline passed")
}
