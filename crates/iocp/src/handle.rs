//! The public handles, written once for every platform: [`Handle`] (a
//! socket), [`FileHandle`] and [`PipeHandle`]. Each call goes to the
//! platform's backend (`sys::Handle`, through the contract in `sys`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::op::OpId;
use crate::sys::{self, DirectIo, SysHandle};

/// A socket associated with a port. Clones share the socket; it is closed
/// when [`Handle::close`] is called, the last clone is dropped, or the port
/// is closed (or dropped); its descriptor is released only after its last
/// operation completed and no [`with_socket`](Handle::with_socket) call is
/// running.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    imp: sys::Handle,
    /// The socket is a stream (TCP; what its type cannot say counts as one).
    stream: bool,
    /// For a file opened for direct I/O: the alignment its operations need.
    direct: Option<DirectIo>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.imp.close();
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.debug_as("Handle", f)
    }
}

impl Handle {
    pub(crate) fn new(imp: sys::Handle, stream: bool) -> Handle {
        Handle::with_direct(imp, stream, None)
    }

    fn with_direct(imp: sys::Handle, stream: bool, direct: Option<DirectIo>) -> Handle {
        Handle {
            inner: Arc::new(HandleInner {
                imp,
                stream,
                direct,
            }),
        }
    }

    /// For a file opened for direct I/O: the alignment its operations need
    /// (read once, at association).
    pub(crate) fn direct_io(&self) -> Option<DirectIo> {
        self.inner.direct
    }

    /// How a handle of any kind shows in `Debug`, named `name`.
    fn debug_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("key", &self.key())
            .field("id", &self.inner.imp.id())
            .field("closed", &self.is_closed())
            .finish()
    }

    /// Whether the socket is a stream (read once, at association).
    pub(crate) fn is_stream(&self) -> bool {
        self.inner.stream
    }

    /// The backend's handle.
    pub(crate) fn imp(&self) -> &sys::Handle {
        &self.inner.imp
    }

    /// The completion key given at association.
    pub fn key(&self) -> u64 {
        self.inner.imp.key()
    }

    /// `CancelIoEx(socket, op)`: asks the operation to end early. It still
    /// completes exactly once — aborted, or with its normal result if the
    /// cancel lost the race. Cancelling a finished operation does nothing.
    /// A TCP send cancelled after part of it went out ends the handle's
    /// sends (see [`crate::Completion::transferred`]).
    pub fn cancel(&self, op: OpId) -> io::Result<()> {
        self.inner.imp.cancel(op)
    }

    /// `closesocket`: aborts every pending operation (each still completes
    /// once) and closes the socket after the last of them (on Windows:
    /// `CancelIoEx(socket, NULL)`, drain, then `closesocket`).
    pub fn close(&self) {
        self.inner.imp.close();
    }

    /// Whether `close` was called (or the port was closed).
    pub fn is_closed(&self) -> bool {
        self.inner.imp.is_closed()
    }

    /// Runs `f` with a borrowed view of the socket (for socket options,
    /// addresses, `shutdown`). Fails once the handle or its port is closed.
    /// The socket stays open while `f` runs, even if another thread closes
    /// the handle or the port meanwhile (the close of the descriptor then
    /// waits for `f`), so `f` never acts on a descriptor number that was
    /// closed or handed to another socket. Do not switch the socket back to
    /// blocking mode: the epoll engine and Windows' pooled receive rely on
    /// non-blocking mode.
    pub fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        self.inner.imp.with_socket(f)
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.with_socket(|s| {
            s.local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.with_socket(|s| {
            s.peer_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
        })
    }
}

/// A file associated with a port ([`crate::Port::associate_file`]): a
/// regular file or a block device, read and written at explicit offsets
/// ([`crate::Port::read_at`], [`crate::Port::write_at`]) and flushed
/// ([`crate::Port::fsync`], [`crate::Port::fdatasync`]). The file's own
/// position is never used. Clones share the file; it closes as a
/// [`Handle`] does: on [`FileHandle::close`], when the last clone drops, or
/// with the port — after its last operation.
#[derive(Clone)]
pub struct FileHandle(Handle);

/// A pipe associated with a port ([`crate::Port::associate_pipe`]): an end
/// of `std::io::pipe`, a child process's stdin, stdout or stderr, or a
/// FIFO. Read and written as a stream ([`crate::Port::read`],
/// [`crate::Port::write`]), in issue order. Clones share the pipe; it
/// closes as a [`Handle`] does.
#[derive(Clone)]
pub struct PipeHandle(Handle);

macro_rules! os_handle {
    ($t:ident) => {
        impl $t {
            pub(crate) fn new(imp: sys::Handle, direct: Option<DirectIo>) -> $t {
                // (A file or a pipe is a stream of bytes; only sockets ask.)
                $t(Handle::with_direct(imp, true, direct))
            }

            /// The handle operations start on.
            pub(crate) fn handle(&self) -> &Handle {
                &self.0
            }

            /// The completion key given at association.
            pub fn key(&self) -> u64 {
                self.0.key()
            }

            /// `CancelIoEx(handle, op)`: asks the operation to end early. It
            /// still completes exactly once — aborted, or with its normal
            /// result if the cancel lost the race (an operation already
            /// running on a file usually does).
            pub fn cancel(&self, op: OpId) -> io::Result<()> {
                self.0.cancel(op)
            }

            /// `CloseHandle`: aborts every pending operation (each still
            /// completes once) and closes the descriptor after the last of
            /// them.
            pub fn close(&self) {
                self.0.close();
            }

            /// Whether `close` was called (or the port was closed).
            pub fn is_closed(&self) -> bool {
                self.0.is_closed()
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.debug_as(stringify!($t), f)
            }
        }
    };
}

os_handle!(FileHandle);
os_handle!(PipeHandle);
