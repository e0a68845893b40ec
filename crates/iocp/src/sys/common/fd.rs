//! The descriptor a handle and its engine share.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::kit::lock;

/// A handle's descriptor (a socket's, a file's or a pipe's), shared by its
/// [`Handle`](crate::Handle) and its engine, which closes it only when both
/// are done with it.
///
/// The engine uses the descriptor (for its operations) for as long as it
/// holds the [`EngineFd`]; dropping that releases it — after the handle's
/// last operation completed, or when the engine shuts down. The handle only
/// *borrows* it (`with_socket`), and a borrow succeeds only before the
/// release. A release while borrows run does not close the descriptor: the
/// last borrow to end does. So a borrowed descriptor is never closed under
/// its borrower, and its number is never handed to another socket while a
/// borrow, or an operation, may still use it.
pub(crate) struct SocketFd {
    raw: RawFd,
    state: Mutex<FdState>,
}

struct FdState {
    /// `None` once closed.
    fd: Option<OwnedFd>,
    /// `with_socket` calls running now.
    borrowers: usize,
    /// The engine let go: no new borrow; closed when `borrowers` is 0.
    released: bool,
}

impl SocketFd {
    /// Shares `fd`: the handle keeps the `SocketFd`, the engine the
    /// [`EngineFd`].
    pub(crate) fn new(fd: OwnedFd) -> (Arc<SocketFd>, EngineFd) {
        let sock = Arc::new(SocketFd {
            raw: fd.as_raw_fd(),
            state: Mutex::new(FdState {
                fd: Some(fd),
                borrowers: 0,
                released: false,
            }),
        });
        (sock.clone(), EngineFd(sock))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FdState> {
        lock(&self.state)
    }

    /// Runs `f` with the descriptor, which stays open until `f` returns;
    /// `None` (and `f` not run) once the engine has let go of it.
    pub(crate) fn borrow<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        {
            let mut st = self.state();
            if st.released || st.fd.is_none() {
                return None;
            }
            st.borrowers += 1;
        }
        /// Ends the borrow, also when `f` panics; the last borrow after the
        /// release closes the descriptor.
        struct Borrow<'a>(&'a SocketFd);
        impl Drop for Borrow<'_> {
            fn drop(&mut self) {
                let fd = {
                    let mut st = self.0.state();
                    st.borrowers -= 1;
                    if st.released && st.borrowers == 0 {
                        st.fd.take()
                    } else {
                        None
                    }
                };
                drop(fd);
            }
        }
        let _borrow = Borrow(self);
        // SAFETY: the descriptor is open: it is closed only once `released`
        // is set and no borrow runs, and this borrow counts until `_borrow`
        // is dropped, after `f` returns.
        let fd = unsafe { BorrowedFd::borrow_raw(self.raw) };
        Some(f(fd))
    }

    /// The engine lets go: closes the descriptor now, or when the last
    /// running borrow ends.
    fn release(&self) {
        let fd = {
            let mut st = self.state();
            st.released = true;
            if st.borrowers == 0 {
                st.fd.take()
            } else {
                None
            }
        };
        drop(fd);
    }
}

/// The engine's hold on a [`SocketFd`]: the descriptor stays open while
/// this lives; dropping it releases the descriptor.
pub(crate) struct EngineFd(Arc<SocketFd>);

impl EngineFd {
    /// Another hold on the descriptor for a helper thread of the engine
    /// (the epoll file pool): it runs each call inside
    /// [`SocketFd::borrow`], so the descriptor is closed after that call,
    /// and a call after the engine let go never runs.
    pub(crate) fn share(&self) -> Arc<SocketFd> {
        self.0.clone()
    }
}

impl Drop for EngineFd {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl AsRawFd for EngineFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.raw
    }
}

impl AsFd for EngineFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: only dropping this `EngineFd` releases the descriptor, so
        // it is open for as long as `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.0.raw) }
    }
}
