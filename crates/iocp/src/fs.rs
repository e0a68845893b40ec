//! Opening files and pipes so that a port can serve them: `CreateFile`
//! with the flags each platform needs.
//!
//! A file is associated with [`Port::associate_file`](crate::Port::associate_file)
//! and a pipe with [`Port::associate_pipe`](crate::Port::associate_pipe).
//! On Windows a handle can be associated only if it was opened for
//! overlapped I/O (`FILE_FLAG_OVERLAPPED`); [`OpenOptions`] does that, and
//! on Linux opens the file as usual.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let port = completion_port::Port::new(0)?;
//! let src = port.associate_file(completion_port::fs::open("in.dat")?, 1)?;
//! let dst = port.associate_file(completion_port::fs::create("out.dat")?, 2)?;
//! port.read_at(&src, Vec::with_capacity(65536), 0, 10)?;
//! let mut c = port.get(None).expect("a packet");
//! let buf = c.take_buf().expect("the buffer");
//! port.write_at(&dst, buf, 0, 11)?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io;
use std::path::Path;

use crate::sys;
pub use crate::sys::OsHandle;

/// How to open a file for a port: the subset of `std::fs::OpenOptions`
/// that makes sense for reads and writes at offsets (no append mode: a
/// write at an offset must land there), plus direct I/O.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    direct: bool,
}

/// Writes the setters of [`OpenOptions`]: each sets its flag and returns
/// the options, and carries the docs written above its name.
macro_rules! setters {
    ($($(#[$doc:meta])* $flag:ident;)*) => {$(
        $(#[$doc])*
        pub fn $flag(&mut self, yes: bool) -> &mut Self {
            self.$flag = yes;
            self
        }
    )*};
}

impl OpenOptions {
    /// Nothing set: say at least `read` or `write`.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    setters! {
        /// Open for reading.
        read;

        /// Open for writing.
        write;

        /// Create the file if it does not exist (needs `write`).
        create;

        /// Create the file, failing if it exists (needs `write`).
        create_new;

        /// Cut the file to 0 bytes when it opens (needs `write`).
        truncate;

        /// Direct I/O, past the page cache: `O_DIRECT` on Linux,
        /// `FILE_FLAG_NO_BUFFERING` on Windows. Every read and write must then
        /// use a buffer, a length and an offset aligned as the file system
        /// requires (on Linux what `statx` reports, else its block size);
        /// [`crate::AlignedBuf`] gives such buffers, and an operation that is not
        /// aligned is refused before it starts with an `InvalidInput` error
        /// naming the alignment. Some file systems (tmpfs before Linux 6.6)
        /// refuse the open itself with `EINVAL`.
        direct;
    }

    /// Opens `path` with these options (and close-on-exec, as `std` does).
    pub fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let mut o = std::fs::OpenOptions::new();
        o.read(self.read)
            .write(self.write)
            .create(self.create)
            .create_new(self.create_new)
            .truncate(self.truncate);
        sys::prepare_open(&mut o, self.direct);
        o.open(path)
    }
}

/// Opens a file for reading, as a port needs it.
pub fn open(path: impl AsRef<Path>) -> io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

/// Creates a file for writing (cut to 0 bytes if it exists), as a port
/// needs it.
pub fn create(path: impl AsRef<Path>) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// A pipe whose two ends a port can serve: `(read end, write end)`, each
/// to be associated with [`Port::associate_pipe`](crate::Port::associate_pipe).
/// On Linux it is `std::io::pipe`; on Windows, whose anonymous pipes
/// (`CreatePipe`, what `std::io::pipe` makes) are synchronous, a named
/// pipe under a unique name whose two ends are opened with
/// `FILE_FLAG_OVERLAPPED`.
pub fn pipe() -> io::Result<(OsHandle, OsHandle)> {
    sys::pipe()
}

/// `CreateNamedPipe`: the server end of a new named pipe
/// (`\\.\pipe\NAME`), opened for overlapped I/O, in byte mode, to be
/// associated with [`Port::associate_pipe`](crate::Port::associate_pipe);
/// [`Port::connect_named_pipe`](crate::Port::connect_named_pipe) then waits
/// for a client. A bare `name` is put under `\\.\pipe\`. (Windows only.)
#[cfg(windows)]
pub fn create_named_pipe(name: impl AsRef<std::ffi::OsStr>) -> io::Result<OsHandle> {
    sys::create_named_pipe(name.as_ref())
}
