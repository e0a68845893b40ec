//! Files and pipes on Linux: how a file is opened for a port, and what a
//! descriptor given to `associate_file` or `associate_pipe` must be.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use crate::sys::contract::Kind;

/// Linux needs no flag for a port: `O_DIRECT` for direct I/O (std already
/// opens with `O_CLOEXEC`).
pub(crate) fn prepare_open(o: &mut std::fs::OpenOptions, direct: bool) {
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
}

/// A pipe (read end, write end): `std::io::pipe`, whose ends a port
/// serves as they are.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = std::io::pipe()?;
    Ok((r.into(), w.into()))
}

/// What `fd` is, in the words of an error message.
fn what(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a pipe or FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device (a terminal, /dev/null, …)"
    } else {
        "neither a file, a pipe nor a socket"
    }
}

/// Takes `fd` if it is of `kind`: a regular file or a block device for
/// [`Kind::File`], a pipe or FIFO for [`Kind::Pipe`]. Anything else is an
/// `InvalidInput` error saying what it is and where it goes instead (the
/// descriptor is closed).
pub(super) fn check_kind(fd: OwnedFd, kind: Kind) -> io::Result<OwnedFd> {
    let f = File::from(fd);
    let t = f.metadata()?.file_type();
    let ok = match kind {
        Kind::File => t.is_file() || t.is_block_device(),
        Kind::Pipe => t.is_fifo(),
        Kind::Socket => t.is_socket(),
    };
    if ok {
        return Ok(f.into());
    }
    let is = if t.is_file() || t.is_block_device() {
        Some(Kind::File)
    } else if t.is_fifo() {
        Some(Kind::Pipe)
    } else if t.is_socket() {
        Some(Kind::Socket)
    } else {
        None
    };
    Err(kind.refusal(what(t), is))
}
