//! The one policy for errors a standing accept meets.
//!
//! A standing accept (`accept_stream`: multishot accept on io_uring, a
//! repeated `accept4` on epoll, one `AcceptEx` after another on Windows)
//! reports every error as a completion. What happens next depends only on
//! the error, on every backend:
//!
//! * [`Verdict::Retry`] — not an error at all (`EAGAIN`: nothing to accept
//!   yet, `EINTR`): nothing is reported, and the accept tries again (once
//!   the listener is readable, where the engine waits for readiness);
//! * [`Verdict::Again`] — the error is about one connection that failed
//!   before it was accepted (the errors accept(2) says to treat like
//!   `EAGAIN`, a reset, and a firewall's refusal): report it with `more` and go on
//!   accepting at once;
//! * [`Verdict::BackOff`] — the process or the system ran out of
//!   descriptors or memory: report it with `more`, leave the connection in
//!   the backlog, and try again after [`ACCEPT_BACKOFF`] (at once would
//!   spin);
//! * [`Verdict::End`] — anything else (the listener is broken, closed, not
//!   listening, not a stream socket): the accept completes with the error,
//!   `more == false`.
//!
//! A one-shot accept ends with whatever error it meets.

use std::io;
use std::time::Duration;

use super::phase::Step;

/// How long a standing accept pauses after running out of descriptors or
/// memory before it tries again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What a standing accept does after an error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// Report nothing and accept again.
    Retry,
    /// Report it (`more`) and accept again at once.
    Again,
    /// Report it (`more`) and accept again after [`ACCEPT_BACKOFF`].
    BackOff,
    /// Complete the accept with it.
    End,
}

/// The code of a condition this platform has no error for: no error
/// carries it.
#[cfg_attr(unix, allow(dead_code))]
const NONE: i32 = i32::MIN;

/// The error codes of this platform, by their POSIX names. Windows has no
/// counterpart for some; those are [`NONE`].
#[cfg(unix)]
mod codes {
    pub(super) use libc::{
        EAGAIN, ECONNABORTED, ECONNRESET, EHOSTDOWN, EHOSTUNREACH, EINTR, EMFILE, ENETDOWN,
        ENETUNREACH, ENFILE, ENOBUFS, ENOMEM, ENONET, ENOPROTOOPT, EPERM, EPROTO, ETIMEDOUT,
    };
}

#[cfg(windows)]
mod codes {
    use super::NONE;
    use windows_sys::Win32::Networking::WinSock as ws;
    pub(super) const EAGAIN: i32 = ws::WSAEWOULDBLOCK;
    pub(super) const ECONNABORTED: i32 = ws::WSAECONNABORTED;
    pub(super) const ECONNRESET: i32 = ws::WSAECONNRESET;
    pub(super) const EHOSTDOWN: i32 = ws::WSAEHOSTDOWN;
    pub(super) const EHOSTUNREACH: i32 = ws::WSAEHOSTUNREACH;
    pub(super) const EINTR: i32 = ws::WSAEINTR;
    pub(super) const EMFILE: i32 = ws::WSAEMFILE;
    pub(super) const ENETDOWN: i32 = ws::WSAENETDOWN;
    pub(super) const ENETUNREACH: i32 = ws::WSAENETUNREACH;
    pub(super) const ENFILE: i32 = NONE;
    pub(super) const ENOBUFS: i32 = ws::WSAENOBUFS;
    pub(super) const ENOMEM: i32 = ws::WSA_NOT_ENOUGH_MEMORY;
    pub(super) const ENONET: i32 = NONE;
    pub(super) const ENOPROTOOPT: i32 = ws::WSAENOPROTOOPT;
    pub(super) const EPERM: i32 = NONE;
    pub(super) const EPROTO: i32 = NONE;
    pub(super) const ETIMEDOUT: i32 = ws::WSAETIMEDOUT;
}

use codes::*;

/// Every error that keeps a standing accept alive; every other one ends it.
pub(crate) const KEEP_ALIVE: &[(i32, Verdict)] = &[
    // One connection failed before it was accepted: go on. (A peer that
    // resets in the backlog is ECONNABORTED on Linux; Windows' AcceptEx
    // says ERROR_NETNAME_DELETED, i.e. WSAECONNRESET.)
    (ECONNABORTED, Verdict::Again),
    (ECONNRESET, Verdict::Again),
    (EPROTO, Verdict::Again),
    (ENOPROTOOPT, Verdict::Again),
    (EHOSTDOWN, Verdict::Again),
    (ENONET, Verdict::Again),
    (EHOSTUNREACH, Verdict::Again),
    (ENETDOWN, Verdict::Again),
    (ENETUNREACH, Verdict::Again),
    (ETIMEDOUT, Verdict::Again),
    // A firewall rule refused the connection.
    (EPERM, Verdict::Again),
    // Nothing went wrong; the kernel asks for another try.
    (EINTR, Verdict::Retry),
    (EAGAIN, Verdict::Retry),
    // Out of descriptors or memory: the connection waits in the backlog.
    (EMFILE, Verdict::BackOff),
    (ENFILE, Verdict::BackOff),
    (ENOBUFS, Verdict::BackOff),
    (ENOMEM, Verdict::BackOff),
];

/// What a standing accept does after failing with OS error `code`.
pub(crate) fn verdict(code: i32) -> Verdict {
    KEEP_ALIVE
        .iter()
        .find(|&&(c, _)| c == code)
        .map_or(Verdict::End, |&(_, v)| v)
}

/// What a standing accept does after `e` (an error without an OS code
/// ends it).
pub(crate) fn verdict_of(e: &io::Error) -> Verdict {
    e.raw_os_error().map_or(Verdict::End, verdict)
}

/// Applies the policy to error `e` of a standing accept: `report` queues
/// `e` as a `more` completion where the policy says to, and the step says
/// whether and when to accept again.
pub(crate) fn on_error(e: io::Error, report: impl FnOnce(io::Error)) -> Step {
    match verdict_of(&e) {
        Verdict::End => Step::Done(Err(e)),
        Verdict::Retry => Step::Again,
        Verdict::Again => {
            report(e);
            Step::Again
        }
        Verdict::BackOff => {
            report(e);
            Step::BackOff
        }
    }
}

/// Errors that end a standing accept, for the backends' tests: a listener
/// that is not listening, a socket that is no stream, a closed descriptor.
#[cfg(all(test, unix))]
pub(crate) const ENDING: &[i32] = &[libc::EINVAL, libc::EOPNOTSUPP, libc::EBADF, libc::ENOTSOCK];
#[cfg(all(test, windows))]
pub(crate) const ENDING: &[i32] = {
    use windows_sys::Win32::Networking::WinSock as ws;
    &[
        ws::WSAEINVAL,
        ws::WSAEOPNOTSUPP,
        ws::WSAEBADF,
        ws::WSAENOTSOCK,
    ]
};

/// Checks that a backend applies the policy: `observe(code)` makes the
/// backend's standing accept fail with OS error `code` and reports what the
/// backend did. Every error of [`KEEP_ALIVE`] this platform has and every
/// one of [`ENDING`] is tried.
#[cfg(test)]
pub(crate) fn check_backend(backend: &str, mut observe: impl FnMut(i32) -> Verdict) {
    let cases = KEEP_ALIVE
        .iter()
        .copied()
        .filter(|&(c, _)| c != NONE)
        .chain(ENDING.iter().map(|&c| (c, Verdict::End)));
    let mut wrong = Vec::new();
    for (code, want) in cases {
        let got = observe(code);
        if got != want {
            wrong.push(format!(
                "{}: {got:?}, the policy says {want:?}",
                io::Error::from_raw_os_error(code)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{backend} departs from the accept policy:\n{}",
        wrong.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_verdict() {
        for (i, &(c, v)) in KEEP_ALIVE.iter().enumerate() {
            if c == NONE {
                continue; // no such error on this platform
            }
            assert_eq!(verdict(c), v, "{c}");
            assert!(
                KEEP_ALIVE[i + 1..].iter().all(|&(d, _)| d != c),
                "{c} is listed twice"
            );
        }
        for &c in ENDING {
            assert_eq!(verdict(c), Verdict::End, "{c}");
        }
        assert_eq!(verdict_of(&io::Error::other("no code")), Verdict::End);
    }
}
