//! The Windows backend: the kernel's own I/O completion port.
//!
//! On Windows there is no engine thread and no user-space queue: a
//! [`crate::Port`] *is* a kernel completion port
//! (`CreateIoCompletionPort`), every socket is associated with it, every
//! operation is a real overlapped `AcceptEx` / `ConnectEx` / `WSARecv` /
//! `WSASend` / `WSARecvFrom` / `WSASendTo`, and `get` / `get_many` are
//! `GetQueuedCompletionStatus(Ex)`. The kernel does the LIFO wake-up, the
//! concurrency limit and the "a thread blocked elsewhere does not count"
//! rule by itself. What the library adds is the state around the
//! operations and the translation between kernel packets and
//! [`crate::Completion`]s (`engine`, over the port's own calls in `cport`);
//! `port` implements the backend contract (`SysPort`, `SysHandle` in
//! `sys/contract.rs`) on it.
//!
//! # Packets on the port
//!
//! The completion key the *kernel* sees is never the application's key; it
//! tells the library what the packet's `lpOverlapped` points to:
//!
//! | kernel key | `lpOverlapped` | what |
//! |---|---|---|
//! | `KEY_IO` | an `OpBox` | an overlapped socket operation finished (or failed) |
//! | `KEY_LOCAL` | an `OpBox` | the library's own result for an operation (its call failed at once, it was stopped before it was issued, or a standing one ends after its last `more` completion) or a resume of a parked standing one |
//! | `KEY_POST` | a boxed `PostPacket` | `post` / `post_after` (the application's key, token and byte count are in the box) |
//! | `KEY_ABANDON` | NULL | a sentinel posted by `close` to wake one waiter |
//!
//! The application's key is stored in the handle and copied into every
//! completion.
//!
//! # Error codes
//!
//! `GetQueuedCompletionStatus` reports Win32 codes (`RtlNtStatusToDosError`
//! of the packet's NTSTATUS), not the WSA codes Winsock's synchronous calls
//! give. A completion's error is mapped so that `io::Error::kind()` means the
//! same as on Linux:
//!
//! | kernel (Win32) | meaning | `Completion::result` |
//! |---|---|---|
//! | 995 `ERROR_OPERATION_ABORTED` | cancelled (`cancel`, `close`) | [`crate::error::aborted`] (raw 995) |
//! | 995 after the op's deadline passed | deadline | `ErrorKind::TimedOut` ([`crate::error`]'s `timed_out`) |
//! | 676 `ERROR_HANDLES_CLOSED` | socket closed under the op (Wine's code for it) | [`crate::error::aborted`] |
//! | 64 `ERROR_NETNAME_DELETED` | peer reset | raw 10054 `WSAECONNRESET` → `ConnectionReset` |
//! | 1225 `ERROR_CONNECTION_REFUSED` | `ConnectEx` refused | raw 10061 `WSAECONNREFUSED` → `ConnectionRefused` |
//! | 121 `ERROR_SEM_TIMEOUT` | `ConnectEx` timed out | raw 10060 `WSAETIMEDOUT` → `TimedOut` |
//! | 1236 `ERROR_CONNECTION_ABORTED` | aborted by the local stack | raw 10053 `WSAECONNABORTED` → `ConnectionAborted` |
//! | 1234 `ERROR_PORT_UNREACHABLE` | ICMP port unreachable | raw 10054 `WSAECONNRESET` → `ConnectionReset` |
//! | 1231 `ERROR_NETWORK_UNREACHABLE` | no route to network | raw 10051 `WSAENETUNREACH` |
//! | 1232 `ERROR_HOST_UNREACHABLE` | no route to host | raw 10065 `WSAEHOSTUNREACH` |
//! | 1229 `ERROR_CONNECTION_INVALID` | not connected | raw 10057 `WSAENOTCONN` → `NotConnected` |
//! | 1227 `ERROR_ADDRESS_ALREADY_ASSOCIATED` | address in use | raw 10048 `WSAEADDRINUSE` → `AddrInUse` |
//! | 234 `ERROR_MORE_DATA` on a receive | datagram truncated | `Ok(bytes)`, as Linux's `recvmsg` truncates |
//! | 234 `ERROR_MORE_DATA` on a send | datagram too large to send | raw 10040 `WSAEMSGSIZE` |
//! | any WSA code (10000–11999) | from a synchronous failure | unchanged |
//! | anything else | | unchanged raw Win32 code |
//!
//! `get` itself: TRUE → a completion with `Ok`; FALSE with an overlapped →
//! a completion with the error above; FALSE with NULL → `GetError::TimedOut`
//! on `WAIT_TIMEOUT` (258), `GetError::Abandoned` on
//! `ERROR_ABANDONED_WAIT_0` (735) or any other error (a dead port).
//!
//! Note: Rust's std maps raw 995 to `ErrorKind::TimedOut`; test cancels with
//! [`crate::error::is_aborted`] / `Completion::is_aborted`, not with `kind()`.

mod cport;
pub(crate) mod engine;
pub(crate) mod files;
pub(crate) mod net;
pub(crate) mod port;
pub(crate) mod timer;

use std::ffi::CStr;
use std::io;
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};

/// Maps a Win32 status from a completion packet to the error the
/// application sees (the table in the module doc). A receive's
/// `ERROR_MORE_DATA` is handled by the caller (it is data there).
pub(crate) fn map_win32(code: u32) -> io::Error {
    let wsa = match code {
        995 | 676 => return crate::error::aborted(),
        64 => 10054,
        1225 => 10061,
        121 => 10060,
        1236 => 10053,
        1234 => 10054,
        1231 => 10051,
        1232 => 10065,
        1229 => 10057,
        1227 => 10048,
        234 => 10040,
        other => other,
    };
    io::Error::from_raw_os_error(wsa as i32)
}

/// The last WSA error as an `io::Error` (after a failed Winsock call).
pub(crate) fn wsa_error() -> io::Error {
    // SAFETY: WSAGetLastError has no preconditions.
    let code = unsafe { windows_sys::Win32::Networking::WinSock::WSAGetLastError() };
    io::Error::from_raw_os_error(code)
}

/// Looks up an export of the already loaded `ntdll.dll`.
fn ntdll_proc(name: &CStr) -> Option<unsafe extern "system" fn() -> isize> {
    // SAFETY: both strings are NUL-terminated; ntdll is mapped into every
    // process, so the module handle needs no reference counting.
    unsafe {
        let m = GetModuleHandleA(c"ntdll.dll".as_ptr() as *const u8);
        if m.is_null() {
            return None;
        }
        GetProcAddress(m, name.as_ptr() as *const u8)
    }
}

type NtQueryIoCompletionFn = unsafe extern "system" fn(HANDLE, u32, *mut i32, u32, *mut u32) -> i32;

/// How many packets the kernel queue holds (`NtQueryIoCompletion`,
/// `IoCompletionBasicInformation.Depth`), or `None` if unavailable.
pub(crate) fn queue_depth(port: HANDLE) -> Option<usize> {
    static F: OnceLock<Option<NtQueryIoCompletionFn>> = OnceLock::new();
    let f = (*F.get_or_init(|| {
        // SAFETY: NtQueryIoCompletion has had this signature since NT 3.5.
        ntdll_proc(c"NtQueryIoCompletion")
            .map(|f| unsafe { std::mem::transmute::<_, NtQueryIoCompletionFn>(f) })
    }))?;
    let mut depth: i32 = 0;
    // SAFETY: class 0 (IoCompletionBasicInformation) writes one LONG into
    // `depth`, which is live and 4 bytes; the return-length pointer may be
    // NULL.
    let st = unsafe { f(port, 0, &mut depth, 4, std::ptr::null_mut()) };
    (st >= 0).then_some(depth.max(0) as usize)
}
