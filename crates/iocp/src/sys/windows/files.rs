//! Files and pipes on the Windows port. What is here: how a file is opened
//! so that the port can take it (`FILE_FLAG_OVERLAPPED`, and
//! `FILE_FLAG_NO_BUFFERING` for direct I/O).
//!
//! NOT IMPLEMENTED YET (each refuses clearly, an `Unsupported` error that
//! says so): associating a file or a pipe (`SysPort::associate_os`: check
//! the handle's type with `GetFileType`, refuse one not opened with
//! `FILE_FLAG_OVERLAPPED` naming the flag, then `CreateIoCompletionPort`),
//! their operations (`ReadFile`/`WriteFile` with the offset in the
//! OVERLAPPED's `Offset`/`OffsetHigh` — never the handle's own file
//! pointer —, a write finished inside as a send is, `FlushFileBuffers`,
//! `ConnectNamedPipe`), `create_named_pipe` (`CreateNamedPipeW` with
//! `FILE_FLAG_OVERLAPPED`, byte mode), and `AF_UNIX` sockets' addresses.
//! The platform-free front (ops, handles, `crate::fs`) is complete; only
//! this backend's part is missing.

use std::io;
use std::os::windows::fs::OpenOptionsExt;

use crate::sys::contract::OsHandle;

/// `FILE_FLAG_OVERLAPPED`: the handle takes overlapped operations.
const FILE_FLAG_OVERLAPPED: u32 = 0x4000_0000;
/// `FILE_FLAG_NO_BUFFERING`: direct I/O, past the system cache.
const FILE_FLAG_NO_BUFFERING: u32 = 0x2000_0000;

/// The flags a file must be opened with for the port.
pub(crate) fn prepare_open(o: &mut std::fs::OpenOptions, direct: bool) {
    let mut flags = FILE_FLAG_OVERLAPPED;
    if direct {
        flags |= FILE_FLAG_NO_BUFFERING;
    }
    o.custom_flags(flags);
}

/// The error of everything this backend does not do yet with files and
/// pipes.
pub(crate) fn not_yet(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what}: files and pipes on the iocp backend are not implemented yet"),
    )
}

/// `CreateNamedPipeW` (not implemented yet).
pub(crate) fn create_named_pipe(_name: &std::ffi::OsStr) -> io::Result<OsHandle> {
    Err(not_yet("create_named_pipe"))
}
