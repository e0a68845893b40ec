//! The kernel's completion port: the calls on its handle, and a dequeued
//! packet as the kernel gives it.
//!
//! Nothing here knows what a packet's `lpOverlapped` points to; the
//! completion key the kernel sees says that (the table in `sys::windows`),
//! and the engine reads it.

use std::io;

use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, RtlNtStatusToDosError, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::SOCKET;
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatus, GetQueuedCompletionStatusEx,
    PostQueuedCompletionStatus, OVERLAPPED, OVERLAPPED_ENTRY,
};

/// `ERROR_ABANDONED_WAIT_0`: the port handle was closed under a waiter.
const ERROR_ABANDONED_WAIT_0: u32 = 735;

/// An open completion port handle, closed on drop.
pub(crate) struct CompletionPort(HANDLE);

// SAFETY: a completion port handle may be used from any thread; every call
// made on it is thread-safe, and it is closed only on drop, when no other
// reference exists.
unsafe impl Send for CompletionPort {}
// SAFETY: as above.
unsafe impl Sync for CompletionPort {}

/// A packet as dequeued.
pub(crate) struct Packet {
    /// The kernel's completion key: what `ov` points to.
    pub key: usize,
    pub ov: *mut OVERLAPPED,
    pub bytes: u32,
    /// `None` for success, else the Win32 code.
    pub status: Option<u32>,
}

/// What a wait got from the kernel.
pub(crate) enum Got {
    Packet(Packet),
    TimedOut,
    /// The port is closed (or dead).
    Abandoned,
}

impl CompletionPort {
    /// A new port letting `limit` threads run at a time.
    pub(crate) fn new(limit: usize) -> io::Result<CompletionPort> {
        // SAFETY: creates a new port; no pointers are passed.
        let h = unsafe {
            CreateIoCompletionPort(
                INVALID_HANDLE_VALUE,
                std::ptr::null_mut(),
                0,
                limit.min(u32::MAX as usize) as u32,
            )
        };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(CompletionPort(h))
    }

    /// The raw handle (for queries).
    pub(crate) fn raw(&self) -> HANDLE {
        self.0
    }

    /// Associates `sock`: its overlapped operations queue their packets
    /// here, with the kernel key `key`.
    pub(crate) fn associate(&self, sock: SOCKET, key: usize) -> io::Result<()> {
        // SAFETY: both handles are open (the caller owns `sock`); nothing
        // else is passed.
        let r = unsafe { CreateIoCompletionPort(sock as HANDLE, self.0, key, 0) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `PostQueuedCompletionStatus`: queues a packet carrying `ov`, which the
    /// kernel never dereferences (it only hands it back).
    pub(crate) fn post(&self, key: usize, bytes: u32, ov: *mut OVERLAPPED) -> io::Result<()> {
        // SAFETY: the handle is open; `ov` is an opaque value to the kernel.
        if unsafe { PostQueuedCompletionStatus(self.0, bytes, key, ov) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `GetQueuedCompletionStatus`, waiting `ms` milliseconds.
    pub(crate) fn wait_one(&self, ms: u32) -> Got {
        let mut bytes = 0u32;
        let mut key = 0usize;
        let mut ov: *mut OVERLAPPED = std::ptr::null_mut();
        // SAFETY: the out-parameters are live locals; the handle is open.
        let ok = unsafe { GetQueuedCompletionStatus(self.0, &mut bytes, &mut key, &mut ov, ms) };
        let status = if ok != 0 {
            None
        } else {
            // SAFETY: no preconditions.
            let err = unsafe { GetLastError() };
            if ov.is_null() {
                // No packet: the out-parameters are stale and ignored.
                return no_packet(err, "GetQueuedCompletionStatus");
            }
            Some(err)
        };
        Got::Packet(Packet {
            key,
            ov,
            bytes,
            status,
        })
    }

    /// `GetQueuedCompletionStatusEx` into `entries` (its length is the
    /// most it takes): how many it filled, or why none.
    pub(crate) fn wait_many(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        ms: u32,
    ) -> Result<usize, Got> {
        let mut n = 0u32;
        // SAFETY: `entries` is a live, writable slice of the given length.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.0,
                entries.as_mut_ptr(),
                entries.len().min(u32::MAX as usize) as u32,
                &mut n,
                ms,
                0,
            )
        };
        if ok == 0 {
            // SAFETY: no preconditions.
            let err = unsafe { GetLastError() };
            // `n` is not trustworthy on FALSE (Wine leaves it at 1).
            return Err(no_packet(err, "GetQueuedCompletionStatusEx"));
        }
        Ok((n as usize).min(entries.len()))
    }
}

impl Drop for CompletionPort {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and nothing uses it any more.
        unsafe { CloseHandle(self.0) };
    }
}

/// Why a wait returned without a packet.
fn no_packet(err: u32, call: &str) -> Got {
    match err {
        WAIT_TIMEOUT => Got::TimedOut,
        ERROR_ABANDONED_WAIT_0 => Got::Abandoned,
        other => {
            tracing::error!(
                "iocp: {call} failed: {}",
                io::Error::from_raw_os_error(other as i32)
            );
            Got::Abandoned
        }
    }
}

impl Packet {
    /// One entry of a `GetQueuedCompletionStatusEx` batch. GQCSEx succeeds
    /// for the batch as a whole; each entry's own outcome is its NTSTATUS
    /// (`OVERLAPPED_ENTRY.Internal`), mapped here as GQCS maps it.
    pub(crate) fn from_entry(e: &OVERLAPPED_ENTRY) -> Packet {
        let st = e.Internal as u32 as i32;
        let status = if st < 0 {
            // SAFETY: a pure conversion function.
            Some(unsafe { RtlNtStatusToDosError(st) })
        } else {
            None
        };
        Packet {
            key: e.lpCompletionKey,
            ov: e.lpOverlapped,
            bytes: e.dwNumberOfBytesTransferred,
            status,
        }
    }
}
