//! Winsock helpers: the extension functions (`AcceptEx`, `ConnectEx`,
//! `GetAcceptExSockaddrs`), socket addresses, and the context updates an
//! accepted or connected socket needs.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::OnceLock;

use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Networking::WinSock::{
    getsockname, setsockopt, WSAIoctl, AF_INET, AF_INET6, SIO_GET_EXTENSION_FUNCTION_POINTER,
    SIO_UDP_CONNRESET, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR,
    SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, SO_UPDATE_CONNECT_CONTEXT, WSAEINVAL, WSAID_ACCEPTEX,
    WSAID_CONNECTEX, WSAID_GETACCEPTEXSOCKADDRS,
};

use windows_sys::Win32::System::IO::CancelIoEx;

use super::wsa_error;

/// Bytes `AcceptEx` needs per address: `sizeof(sockaddr) + 16` with the
/// largest sockaddr.
pub(crate) const ACCEPT_ADDR_LEN: usize = std::mem::size_of::<SOCKADDR_STORAGE>() + 16;

/// The extension functions, loaded once per process through
/// `WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)` on the first socket that
/// needs them. (Strictly they are per provider; every provider that matters
/// — the Microsoft TCP/IP stack, or a layered IFS provider over it — hands
/// out the same mswsock entry points. mio and compio cache them the same
/// way.)
pub(crate) struct Ext {
    pub accept_ex: unsafe extern "system" fn(
        SOCKET,
        SOCKET,
        *mut core::ffi::c_void,
        u32,
        u32,
        u32,
        *mut u32,
        *mut windows_sys::Win32::System::IO::OVERLAPPED,
    ) -> windows_sys::core::BOOL,
    pub connect_ex: unsafe extern "system" fn(
        SOCKET,
        *const SOCKADDR,
        i32,
        *const core::ffi::c_void,
        u32,
        *mut u32,
        *mut windows_sys::Win32::System::IO::OVERLAPPED,
    ) -> windows_sys::core::BOOL,
    pub get_accept_ex_sockaddrs: unsafe extern "system" fn(
        *const core::ffi::c_void,
        u32,
        u32,
        u32,
        *mut *mut SOCKADDR,
        *mut i32,
        *mut *mut SOCKADDR,
        *mut i32,
    ),
}

static EXT: OnceLock<Ext> = OnceLock::new();

fn load_one<T: Copy>(s: SOCKET, guid: &GUID) -> io::Result<T> {
    let mut out: Option<T> = None;
    let mut bytes = 0u32;
    // SAFETY: `guid` is a live GUID, `out` is a live `Option<fn>` of exactly
    // the pointer size WSAIoctl writes (an `Option` of a function pointer has
    // the same layout as the pointer); no OVERLAPPED, so the call is
    // synchronous.
    let r = unsafe {
        WSAIoctl(
            s,
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            guid as *const GUID as *const core::ffi::c_void,
            std::mem::size_of::<GUID>() as u32,
            &mut out as *mut Option<T> as *mut core::ffi::c_void,
            std::mem::size_of::<Option<T>>() as u32,
            &mut bytes,
            std::ptr::null_mut(),
            None,
        )
    };
    if r == SOCKET_ERROR {
        return Err(wsa_error());
    }
    out.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "extension function not provided",
        )
    })
}

/// The extension functions, loading them with `s` on first use.
pub(crate) fn ext(s: SOCKET) -> io::Result<&'static Ext> {
    if let Some(e) = EXT.get() {
        return Ok(e);
    }
    // The field types are the function types behind windows-sys's
    // `LPFN_ACCEPTEX`, `LPFN_CONNECTEX` and `LPFN_GETACCEPTEXSOCKADDRS`.
    let e = Ext {
        accept_ex: load_one(s, &WSAID_ACCEPTEX)?,
        connect_ex: load_one(s, &WSAID_CONNECTEX)?,
        get_accept_ex_sockaddrs: load_one(s, &WSAID_GETACCEPTEXSOCKADDRS)?,
    };
    Ok(EXT.get_or_init(|| e))
}

/// Reads an IPv4/IPv6 address out of a sockaddr of `len` bytes.
///
/// # Safety
/// `p` must point to at least `len` readable bytes.
pub(crate) unsafe fn sockaddr_to_std(p: *const SOCKADDR, len: i32) -> Option<SocketAddr> {
    if p.is_null() || len < 2 {
        return None;
    }
    // SAFETY: the caller guarantees `len` (>= 2) readable bytes;
    // `read_unaligned` because the bytes may sit anywhere in a buffer (as do
    // the reads below, each guarded by a length check for its structure).
    let family = unsafe { std::ptr::read_unaligned(p as *const u16) };
    if family == AF_INET && len as usize >= std::mem::size_of::<SOCKADDR_IN>() {
        // SAFETY: `len` covers a SOCKADDR_IN (checked), readable per the caller.
        let a = unsafe { std::ptr::read_unaligned(p as *const SOCKADDR_IN) };
        // SAFETY: every variant of the IN_ADDR union is the same 4 bytes.
        let ip = Ipv4Addr::from(u32::from_be(unsafe { a.sin_addr.S_un.S_addr }));
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(a.sin_port),
        )))
    } else if family == AF_INET6 && len as usize >= std::mem::size_of::<SOCKADDR_IN6>() {
        // SAFETY: `len` covers a SOCKADDR_IN6 (checked), readable per the caller.
        let a = unsafe { std::ptr::read_unaligned(p as *const SOCKADDR_IN6) };
        // SAFETY: every variant of the IN6_ADDR union is the same 16 bytes,
        // and of the scope union the same u32.
        let (ip, scope) = unsafe {
            (
                Ipv6Addr::from(a.sin6_addr.u.Byte),
                a.Anonymous.sin6_scope_id,
            )
        };
        Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(a.sin6_port),
            u32::from_be(a.sin6_flowinfo),
            scope,
        )))
    } else {
        None
    }
}

/// The socket's address family, from `getsockname`; `None` if unbound.
pub(crate) fn bound_family(s: SOCKET) -> io::Result<Option<u16>> {
    // SAFETY: an all-zero SOCKADDR_STORAGE is valid.
    let mut st: SOCKADDR_STORAGE = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<SOCKADDR_STORAGE>() as i32;
    // SAFETY: `st` and `len` are live and describe the storage's size.
    let r = unsafe {
        getsockname(
            s,
            &mut st as *mut SOCKADDR_STORAGE as *mut SOCKADDR,
            &mut len,
        )
    };
    if r == SOCKET_ERROR {
        let e = wsa_error();
        if e.raw_os_error() == Some(WSAEINVAL) {
            return Ok(None); // not bound yet
        }
        return Err(e);
    }
    Ok(Some(st.ss_family))
}

/// `ConnectEx` needs a bound socket: binds to the unspecified address of
/// `target`'s family, port 0, if the socket is not bound yet.
pub(crate) fn ensure_bound(s: SOCKET, target: &SocketAddr) -> io::Result<()> {
    if bound_family(s)?.is_some() {
        return Ok(());
    }
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    with_sockref(s, |r| r.bind(&any.into()))
}

/// Runs `f` on a borrowed view of `s`.
pub(crate) fn with_sockref<R>(
    s: SOCKET,
    f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
) -> io::Result<R> {
    // SAFETY: callers pass a socket their handle still owns (it is closed
    // only after the last operation and every `with_socket` borrower are
    // gone), so it stays open for the duration of `f`.
    let b = unsafe {
        std::os::windows::io::BorrowedSocket::borrow_raw(s as std::os::windows::io::RawSocket)
    };
    f(&socket2::SockRef::from(&b))
}

/// `setsockopt(accepted, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, &listener)`:
/// without it getpeername, shutdown and friends fail on the new socket.
pub(crate) fn update_accept_context(accepted: SOCKET, listener: SOCKET) -> io::Result<()> {
    // SAFETY: passes a pointer to a live SOCKET and its size.
    let r = unsafe {
        setsockopt(
            accepted,
            SOL_SOCKET,
            SO_UPDATE_ACCEPT_CONTEXT,
            &listener as *const SOCKET as *const u8,
            std::mem::size_of::<SOCKET>() as i32,
        )
    };
    if r == SOCKET_ERROR {
        Err(wsa_error())
    } else {
        Ok(())
    }
}

/// `setsockopt(s, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0)` after
/// `ConnectEx`.
pub(crate) fn update_connect_context(s: SOCKET) -> io::Result<()> {
    // SAFETY: no option value is passed (NULL, 0), as documented.
    let r = unsafe {
        setsockopt(
            s,
            SOL_SOCKET,
            SO_UPDATE_CONNECT_CONTEXT,
            std::ptr::null(),
            0,
        )
    };
    if r == SOCKET_ERROR {
        Err(wsa_error())
    } else {
        Ok(())
    }
}

/// Turns off `SIO_UDP_CONNRESET` so an ICMP "port unreachable" (after a
/// `send_to` to a closed port) does not fail the next `recv_from` with
/// `WSAECONNRESET` — Linux reports nothing for an unconnected UDP socket,
/// and a UDP server must not have its receive loop broken by one client.
pub(crate) fn disable_udp_connreset(s: SOCKET) -> io::Result<()> {
    let off: u32 = 0;
    let mut bytes = 0u32;
    // SAFETY: a 4-byte BOOL input, no output, synchronous (no OVERLAPPED).
    let r = unsafe {
        WSAIoctl(
            s,
            SIO_UDP_CONNRESET,
            &off as *const u32 as *const core::ffi::c_void,
            4,
            std::ptr::null_mut(),
            0,
            &mut bytes,
            std::ptr::null_mut(),
            None,
        )
    };
    if r == SOCKET_ERROR {
        Err(wsa_error())
    } else {
        Ok(())
    }
}

/// `CancelIoEx(s, NULL)`: cancels every overlapped request this process
/// issued on `s` (their packets still come, with 995).
pub(crate) fn cancel_all(s: SOCKET) {
    // SAFETY: `s` is open (the caller's handle owns it); NULL means all of
    // its requests; no memory is passed.
    unsafe { CancelIoEx(s as HANDLE, std::ptr::null()) };
}
