//! The epoll instance and the few raw calls socket2 does not cover
//! (`epoll_*`, `accept4` with `SOCK_NONBLOCK`). Every `unsafe` block of the
//! epoll engine that talks to the kernel lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::addr::Addr;
use crate::sys::common::sockaddr_from_storage;

/// What every socket is registered for, once, at association: both
/// directions, peer half-close, edge-triggered (no re-arm syscalls).
pub(super) const SOCKET_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// One epoll set, owned by one engine.
pub(super) struct Poller {
    ep: OwnedFd,
}

impl Poller {
    pub(super) fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Poller {
            ep: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// `EPOLL_CTL_ADD` with `events`, reporting `data` back.
    pub(super) fn add(&self, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, data)
    }

    /// `EPOLL_CTL_MOD`: watch `fd` for `events` from now on.
    pub(super) fn modify(&self, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, data)
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a live, initialised epoll_event for the duration of
        // the call; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The epoll descriptor (to watch this set from another one).
    pub(super) fn fd(&self) -> RawFd {
        self.ep.as_raw_fd()
    }

    /// `EPOLL_CTL_DEL` (before the descriptor is closed).
    pub(super) fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add` (a non-null event keeps pre-2.6.9 semantics happy).
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1 = forever, 0 = poll) and fills `events`
    /// (replacing its contents, at most its capacity).
    pub(super) fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout_ms: i32,
    ) -> io::Result<()> {
        events.clear();
        let cap = events.capacity().clamp(1, i32::MAX as usize);
        // SAFETY: the kernel writes at most `cap` events into the vector's
        // spare capacity, which holds at least `cap` elements.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                events.as_mut_ptr(),
                cap as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epoll_wait initialised the first `n <= cap` elements.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// The error the next `accept` on this thread fails with, instead of
    /// calling the kernel (tests of errors a real listener rarely gives).
    pub(super) static FAIL_NEXT_ACCEPT: std::cell::Cell<Option<i32>> =
        const { std::cell::Cell::new(None) };
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: the new socket and its peer.
pub(super) fn accept(fd: BorrowedFd<'_>) -> io::Result<(socket2::Socket, Option<Addr>)> {
    #[cfg(test)]
    if let Some(code) = FAIL_NEXT_ACCEPT.with(|f| f.take()) {
        return Err(io::Error::from_raw_os_error(code));
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live locals of the sizes the kernel is
    // told; it writes at most `len` bytes of address.
    let s = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let sock = unsafe { socket2::Socket::from_raw_fd(s) };
    Ok((sock, sockaddr_from_storage(&storage, len)))
}
