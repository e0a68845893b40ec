//! The raw calls both Linux engines make besides their own kernel
//! interface: the wake-up eventfd and socket addresses the kernel wrote.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use socket2::SockAddr;

/// A new non-blocking eventfd (the engine's wake-up).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter (waking whoever waits on it).
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an open eventfd.
    let _ = unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

/// Empties an eventfd's counter.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from an open eventfd.
    let _ = unsafe { libc::read(fd.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
}

/// The socket address the kernel wrote into `storage` (`len` bytes).
pub(crate) fn sockaddr_from_storage(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    // SAFETY: `storage` is a valid, initialised sockaddr_storage of `len`
    // bytes written by the kernel; SockAddr copies it.
    let addr = unsafe {
        SockAddr::new(
            std::ptr::read(storage as *const libc::sockaddr_storage as *const _),
            len,
        )
    };
    addr.as_socket()
}
