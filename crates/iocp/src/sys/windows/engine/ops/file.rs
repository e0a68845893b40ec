//! Files and pipes: `ReadFile` into the buffer's spare room, `WriteFile`
//! of every byte, `FlushFileBuffers`, `ConnectNamedPipe`.
//!
//! On a file each read and write carries its offset in the `OVERLAPPED`
//! (`Offset`/`OffsetHigh`; the handle's own file pointer is never used, and
//! an overlapped handle does not move it) and waits for nothing: reads and
//! writes at distinct offsets are in the kernel at once. On a pipe reads
//! and writes keep their lanes, in issue order. A short write is issued
//! again for its rest, at the offset past what was written, so a write
//! completes whole.
//!
//! The end of a file (`ERROR_HANDLE_EOF`) and of a pipe whose writers all
//! closed (`ERROR_BROKEN_PIPE`) complete a read with 0 bytes, whether the
//! call failed at once or its packet said so.
//!
//! `FlushFileBuffers` has no overlapped form: it blocks until the file's
//! data is on the device. So that no thread calling `get` blocks on it,
//! each flush runs on a short-lived thread of its own, which queues the
//! operation's packet on the port when the call returns (the handle stays
//! open until then: it closes only after its last operation's packet). A
//! cancel cannot stop a flush that runs; it completes with its result.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use windows_sys::Win32::Foundation::{GetLastError, HANDLE};
use windows_sys::Win32::Storage::FileSystem::{FlushFileBuffers, ReadFile, WriteFile};
use windows_sys::Win32::System::Pipes::ConnectNamedPipe;
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{pending_or, write_step, Input, Reap, RecvMem, WinOp};
use crate::buf::Buf;
use crate::kit::lanes::Lane;
use crate::kit::phase::Step;
use crate::op::{Completion, OpKind};
use crate::sys::windows::engine::{HandleShared, KEY_IO};
use crate::sys::windows::map_win32;

/// `ERROR_HANDLE_EOF`: a read at or past the end of a file.
const ERROR_HANDLE_EOF: i32 = 38;
/// `ERROR_BROKEN_PIPE`: every writer of the pipe closed.
const ERROR_BROKEN_PIPE: i32 = 109;
/// `ERROR_PIPE_CONNECTED`: the client connected before `ConnectNamedPipe`.
const ERROR_PIPE_CONNECTED: i32 = 535;

/// The most bytes one call moves.
fn clamp(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}

/// Puts a file's offset into the `OVERLAPPED` (a pipe has none: 0).
///
/// # Safety
/// `ov` points to the operation's live `OVERLAPPED`, not yet issued.
unsafe fn set_offset(ov: *mut OVERLAPPED, at: Option<u64>) {
    let at = at.unwrap_or(0);
    // SAFETY: the caller's promise: `ov` is live and ours until the call.
    unsafe {
        (*ov).Anonymous.Anonymous.Offset = at as u32;
        (*ov).Anonymous.Anonymous.OffsetHigh = (at >> 32) as u32;
    }
}

/// The error code of what an input failed with, if it failed.
fn code(input: &Input) -> Option<i32> {
    match input {
        Input::Kernel {
            status: Some(c), ..
        } => Some(*c as i32),
        Input::Failed(e) => e.raw_os_error(),
        _ => None,
    }
}

/// A read into `buf`'s spare room at `at` (a file) or from the stream.
pub(in crate::sys::windows) struct Read {
    mem: RecvMem,
    at: Option<u64>,
}

impl Read {
    pub fn new(buf: Buf, at: Option<u64>) -> Read {
        Read {
            mem: RecvMem::new(buf),
            at,
        }
    }
}

impl WinOp for Read {
    const KIND: OpKind = OpKind::Read;
    const LANE: Option<Lane> = Some(Lane::Read);

    /// A pipe's reads take turns; a file's never wait.
    fn lane(&self) -> Option<Lane> {
        self.at.is_none().then_some(Lane::Read)
    }

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let (p, n) = self.mem.buf.spare();
        // SAFETY: the caller's promise: `ov` is ours and not issued yet; the
        // handle is open and associated with the port; the buffer's spare
        // room (`n` bytes at `p`) is this operation's and stays in place
        // until the packet.
        let ok = unsafe {
            set_offset(ov, self.at);
            ReadFile(h.sock as HANDLE, p, clamp(n), std::ptr::null_mut(), ov)
        };
        pending_or(ok != 0)
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        match code(&input) {
            Some(ERROR_HANDLE_EOF | ERROR_BROKEN_PIPE) => Step::Done(Ok(0)),
            _ => Step::Done(cx.result(input)),
        }
    }

    fn complete(self, c: &mut Completion, _h: &HandleShared) {
        self.mem.complete(c);
    }
}

/// A write of every byte of `buf` at `at` (a file) or to the stream,
/// `sent` bytes of it so far.
pub(in crate::sys::windows) struct Write {
    buf: Buf,
    at: Option<u64>,
    sent: usize,
}

impl Write {
    pub fn new(buf: Buf, at: Option<u64>) -> Write {
        Write { buf, at, sent: 0 }
    }
}

impl WinOp for Write {
    const KIND: OpKind = OpKind::Write;
    const LANE: Option<Lane> = Some(Lane::Write);

    /// A pipe's writes take turns; a file's never wait.
    fn lane(&self) -> Option<Lane> {
        self.at.is_none().then_some(Lane::Write)
    }

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let b = self.buf.as_slice();
        let rest = &b[self.sent.min(b.len())..];
        // SAFETY: the caller's promise: `ov` is ours and not issued yet; the
        // handle is open and associated with the port; `rest` is in the
        // buffer this operation owns, which stays in place until the packet.
        let ok = unsafe {
            set_offset(ov, self.at.map(|a| a + self.sent as u64));
            WriteFile(
                h.sock as HANDLE,
                rest.as_ptr(),
                clamp(rest.len()),
                std::ptr::null_mut(),
                ov,
            )
        };
        pending_or(ok != 0)
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        write_step(&mut self.sent, self.buf.len(), input, cx)
    }

    fn complete(self, c: &mut Completion, _h: &HandleShared) {
        c.buf = Some(self.buf);
    }

    fn sent(&self) -> usize {
        self.sent
    }
}

/// `FlushFileBuffers` (for `fsync` and `fdatasync` alike: Windows has one
/// call), on a thread of its own (see the module doc).
pub(in crate::sys::windows) struct Flush {
    /// The call's Win32 error, 0 for success; written by the flush thread
    /// before it queues the packet.
    error: Arc<AtomicU32>,
}

impl Flush {
    pub fn new() -> Flush {
        Flush {
            error: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl WinOp for Flush {
    const KIND: OpKind = OpKind::Flush;
    const LANE: Option<Lane> = None;

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        let port = h.port.clone();
        // As plain values: the flush thread only hands them to the kernel.
        let (file, ov) = (h.sock, ov as usize);
        let error = self.error.clone();
        std::thread::Builder::new()
            .name("iocp-flush".into())
            .spawn(move || {
                // SAFETY: the handle stays open until this operation's packet
                // is dequeued (a handle closes after its last operation), and
                // the packet is queued only below, after the call.
                if unsafe { FlushFileBuffers(file as HANDLE) } == 0 {
                    // SAFETY: no preconditions.
                    error.store(unsafe { GetLastError() }, Ordering::Release);
                }
                // The operation's packet: the box `ov` points to is the
                // kernel's (this thread's) until it is dequeued.
                if let Err(e) = port.cport.post(KEY_IO, 0, ov as *mut OVERLAPPED) {
                    tracing::error!("iocp: a flush's packet could not be queued: {e}");
                }
            })
            .map(drop)
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        match input {
            Input::Kernel { status: None, .. } => match self.error.load(Ordering::Acquire) {
                0 => Step::Done(Ok(0)),
                code => Step::Done(Err(map_win32(code))),
            },
            other => Step::Done(cx.result(other)),
        }
    }

    fn complete(self, _c: &mut Completion, _h: &HandleShared) {}
}

/// `ConnectNamedPipe`: waits for a client on a named pipe's server end. In
/// the read lane, so reads started after it wait for the client.
pub(in crate::sys::windows) struct ConnectPipe;

impl WinOp for ConnectPipe {
    const KIND: OpKind = OpKind::ConnectNamedPipe;
    const LANE: Option<Lane> = Some(Lane::Read);

    unsafe fn issue(&mut self, h: &HandleShared, ov: *mut OVERLAPPED) -> io::Result<()> {
        // SAFETY: the caller's promise: the pipe is open and associated with
        // the port; `ov` is ours until the packet.
        let ok = unsafe { ConnectNamedPipe(h.sock as HANDLE, ov) };
        pending_or(ok != 0)
    }

    fn on_packet(&mut self, input: Input, cx: &mut Reap<'_>) -> Step {
        match code(&input) {
            // Connected before the call: no packet of its own, done.
            Some(ERROR_PIPE_CONNECTED) => Step::Done(Ok(0)),
            _ => Step::Done(cx.result(input)),
        }
    }

    fn complete(self, _c: &mut Completion, _h: &HandleShared) {}
}
