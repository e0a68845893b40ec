//! Files and pipes on the Windows port: how a file is opened so that the
//! port can take it (`FILE_FLAG_OVERLAPPED`, and `FILE_FLAG_NO_BUFFERING`
//! for direct I/O), what a handle given to `associate_file` or
//! `associate_pipe` must be, and the pipes the library creates (a named
//! pipe's server end, and an overlapped pipe pair).
//!
//! A handle opened without `FILE_FLAG_OVERLAPPED` is synchronous: the
//! kernel serialises its I/O on the handle's own file pointer, and a
//! `ReadFile` with an `OVERLAPPED` on it blocks the caller. Such a handle
//! is refused at association with an error naming the flag. Whether a
//! handle is synchronous is its mode (`NtQueryInformationFile`,
//! `FileModeInformation`: `FILE_SYNCHRONOUS_IO_ALERT` or
//! `FILE_SYNCHRONOUS_IO_NONALERT`), fixed when it was opened.

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle};
use std::sync::atomic::{AtomicU64, Ordering};

use windows_sys::Win32::Foundation::{GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Networking::WinSock::{getsockopt, SOCKET, SOL_SOCKET, SO_TYPE};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, GetFileInformationByHandle, GetFileType, BY_HANDLE_FILE_INFORMATION,
    FILE_ATTRIBUTE_DIRECTORY, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_NO_BUFFERING,
    FILE_FLAG_OVERLAPPED, FILE_TYPE_CHAR, FILE_TYPE_DISK, FILE_TYPE_PIPE, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_WAIT,
};

use crate::sys::contract::{DirectIo, Kind, OsHandle};

/// A pipe's buffer size each way.
const PIPE_BUF: u32 = 64 * 1024;

/// The flags a file must be opened with for the port.
pub(crate) fn prepare_open(o: &mut std::fs::OpenOptions, direct: bool) {
    let mut flags = FILE_FLAG_OVERLAPPED;
    if direct {
        flags |= FILE_FLAG_NO_BUFFERING;
    }
    o.custom_flags(flags);
}

/// What `h` is: its kind if a port can take it, and in words.
fn what(h: HANDLE) -> io::Result<(Option<Kind>, &'static str)> {
    // SAFETY: `h` is an open handle the caller owns.
    let t = unsafe { GetFileType(h) };
    Ok(match t {
        FILE_TYPE_DISK => {
            // SAFETY: all-zero is a valid value of this plain struct, which
            // the call fills; `h` is open.
            let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is live and writable.
            if unsafe { GetFileInformationByHandle(h, &mut info) } == 0 {
                return Err(io::Error::last_os_error());
            }
            if info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
                (None, "a directory")
            } else {
                (Some(Kind::File), "a regular file")
            }
        }
        FILE_TYPE_PIPE => {
            // A socket says "pipe" too; only a socket has a socket type.
            // (`GetNamedPipeInfo` would need read access, which the write
            // end of a pipe may lack.)
            let mut ty = 0i32;
            let mut len = std::mem::size_of::<i32>() as i32;
            // SAFETY: `ty` and `len` are live and writable, `len` its size;
            // on a handle that is not a socket the call only fails.
            let socket = unsafe {
                getsockopt(
                    h as SOCKET,
                    SOL_SOCKET,
                    SO_TYPE,
                    &mut ty as *mut i32 as *mut u8,
                    &mut len,
                )
            } == 0;
            if socket {
                (Some(Kind::Socket), "a socket")
            } else {
                (Some(Kind::Pipe), "a pipe")
            }
        }
        FILE_TYPE_CHAR => (None, "a character device (a console, NUL, …)"),
        _ => (None, "neither a file, a pipe nor a socket"),
    })
}

type NtQueryInformationFileFn =
    unsafe extern "system" fn(HANDLE, *mut [usize; 2], *mut u32, u32, u32) -> i32;

/// `FileModeInformation`.
const FILE_MODE_INFORMATION: u32 = 16;
/// `FILE_SYNCHRONOUS_IO_ALERT | FILE_SYNCHRONOUS_IO_NONALERT`.
const FILE_SYNCHRONOUS_IO: u32 = 0x10 | 0x20;

/// `FILE_NO_INTERMEDIATE_BUFFERING`: opened with `FILE_FLAG_NO_BUFFERING`.
const FILE_NO_INTERMEDIATE_BUFFERING: u32 = 0x08;

/// The alignment the library asks of direct I/O on Windows: 4096 bytes
/// for the buffer's address, the length and the offset, a multiple of
/// every sector size in common use (512 and 4096 bytes).
const DIRECT_ALIGN: usize = 4096;

/// The handle's mode flags (`FILE_SYNCHRONOUS_IO_*`: opened without
/// `FILE_FLAG_OVERLAPPED`; `FILE_NO_INTERMEDIATE_BUFFERING`), from
/// `NtQueryInformationFile(FileModeInformation)`.
fn mode(h: HANDLE) -> io::Result<u32> {
    let f = super::ntdll_proc(c"NtQueryInformationFile")
        .ok_or_else(|| io::Error::other("ntdll has no NtQueryInformationFile"))?;
    // SAFETY: NtQueryInformationFile has had this signature since NT 3.1.
    let f = unsafe {
        std::mem::transmute::<unsafe extern "system" fn() -> isize, NtQueryInformationFileFn>(f)
    };
    let mut iosb = [0usize; 2];
    let mut mode = 0u32;
    // SAFETY: `h` is open; FileModeInformation writes one ULONG into `mode`
    // (4 bytes, live) and the status block into `iosb` (two pointer-sized
    // words, live).
    let st = unsafe { f(h, &mut iosb, &mut mode, 4, FILE_MODE_INFORMATION) };
    if st < 0 {
        return Err(io::Error::other(format!(
            "NtQueryInformationFile(FileModeInformation) failed: NTSTATUS {:#x}",
            st as u32
        )));
    }
    Ok(mode)
}

/// Takes `h` if it is of `kind` (a file on disk for [`Kind::File`], a pipe
/// for [`Kind::Pipe`]) and was opened for overlapped I/O, with the
/// alignment its operations need if it was opened for direct I/O.
/// Anything else is an `InvalidInput` error saying what is wrong (the
/// handle is closed).
pub(crate) fn check_handle(h: OsHandle, kind: Kind) -> io::Result<(OsHandle, Option<DirectIo>)> {
    let raw = h.as_raw_handle() as HANDLE;
    let (is, words) = what(raw)?;
    if is != Some(kind) {
        return Err(kind.refusal(words, is));
    }
    let mode = mode(raw)?;
    if mode & FILE_SYNCHRONOUS_IO != 0 {
        let call = match kind {
            Kind::File => "associate_file",
            _ => "associate_pipe",
        };
        let how = match kind {
            Kind::File => "open it with completion_port::fs::open / create / OpenOptions",
            _ => {
                "make pipes with completion_port::fs::pipe or create_named_pipe \
                 (std::io::pipe's are synchronous; a child's piped stdio is overlapped)"
            }
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{call} refused the handle: it is {words} opened without \
                 FILE_FLAG_OVERLAPPED (for synchronous I/O), which a completion \
                 port cannot serve: {how}"
            ),
        ));
    }
    let direct =
        (kind == Kind::File && mode & FILE_NO_INTERMEDIATE_BUFFERING != 0).then_some(DirectIo {
            mem: DIRECT_ALIGN,
            offset: DIRECT_ALIGN,
        });
    Ok((h, direct))
}

/// A NUL-terminated UTF-16 copy of `s`.
fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(Some(0)).collect()
}

/// `CreateNamedPipeW`: an overlapped, byte-mode server end of `name`
/// (`\\.\pipe\...`), `access` its `PIPE_ACCESS_*`.
fn named_pipe_server(name: &[u16], access: u32, first: bool) -> io::Result<OsHandle> {
    let mut mode = access | FILE_FLAG_OVERLAPPED;
    if first {
        mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    }
    // SAFETY: `name` is NUL-terminated and live for the call; no security
    // attributes.
    let h = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            mode,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            255, // PIPE_UNLIMITED_INSTANCES
            PIPE_BUF,
            PIPE_BUF,
            0,
            std::ptr::null(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new handle that nothing else owns.
    Ok(unsafe { OsHandle::from_raw_handle(h as _) })
}

/// `CreateNamedPipeW` with `FILE_FLAG_OVERLAPPED`, duplex, byte mode: the
/// server end of `name` (a bare name is put under `\\.\pipe\`).
pub(crate) fn create_named_pipe(name: &OsStr) -> io::Result<OsHandle> {
    let full = if name.to_string_lossy().starts_with(r"\\") {
        name.to_os_string()
    } else {
        let mut s = std::ffi::OsString::from(r"\\.\pipe\");
        s.push(name);
        s
    };
    named_pipe_server(&wide(&full), PIPE_ACCESS_DUPLEX, false)
}

/// A pipe whose two ends are both overlapped: the read end is a named
/// pipe's server end (under a name no one else uses), the write end its
/// client, opened with `FILE_FLAG_OVERLAPPED`. (`CreatePipe`, which
/// `std::io::pipe` uses, makes synchronous ends.)
pub(crate) fn pipe() -> io::Result<(OsHandle, OsHandle)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        r"\\.\pipe\completion-port-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let name = wide(OsStr::new(&name));
    let read = named_pipe_server(&name, PIPE_ACCESS_INBOUND, true)?;
    // SAFETY: `name` is NUL-terminated; no security attributes or template.
    let w = unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_WRITE,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            std::ptr::null_mut(),
        )
    };
    if w == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new handle that nothing else owns.
    let write = unsafe { OsHandle::from_raw_handle(w as _) };
    Ok((read, write))
}
