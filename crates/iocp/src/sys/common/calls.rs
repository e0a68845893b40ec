//! The raw calls both Linux engines make besides their own kernel
//! interface: the wake-up eventfd, the kernel's release, socket addresses
//! the kernel wrote, reads into memory the kernel does not hand out itself
//! (a receive's spare room, a pool buffer), and the file and pipe calls of
//! the epoll engine. Every `unsafe` block they share is here.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use socket2::{SockAddr, SockRef};

use super::OpMeta;
use crate::addr::Addr;
use crate::buf::Buf;
use crate::op::{Completion, OpKind};
use crate::pool::PoolShared;

/// A new non-blocking eventfd (the engine's wake-up).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter (waking whoever waits on it).
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an open eventfd.
    let _ = unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

/// Empties an eventfd's counter.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local from an open eventfd.
    let _ = unsafe { libc::read(fd.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
}

/// Waits until `fd` is readable or `timeout` passes (`None`: no limit);
/// returns whether it is readable. An interrupted wait returns `false`
/// early (callers look at their state again).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<std::time::Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfd` and `ts` are live locals for the duration of the call;
    // a null timeout means no limit and a null sigmask changes nothing.
    let n = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// The running kernel's release (`uname -r`), empty if unknown.
pub(crate) fn kernel_release() -> String {
    // SAFETY: all-zero is a valid utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    u.release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect()
}

/// The socket address the kernel wrote into `storage` (`len` bytes).
pub(crate) fn sockaddr_from_storage(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<Addr> {
    // SAFETY: `storage` is a valid, initialised sockaddr_storage of `len`
    // bytes written by the kernel; SockAddr copies it.
    let addr = unsafe {
        SockAddr::new(
            std::ptr::read(storage as *const libc::sockaddr_storage as *const _),
            len,
        )
    };
    Addr::from_sockaddr(&addr)
}

/// The spare room of a receive buffer (see [`Buf`]) as uninitialised bytes.
fn spare(b: &mut Buf) -> &mut [MaybeUninit<u8>] {
    let (p, n) = b.spare();
    if n == 0 {
        return &mut [];
    }
    // SAFETY: `spare` describes `n` bytes of writable room inside the
    // buffer's own allocation; the slice borrows `b` mutably, so nothing else
    // can touch that room while it lives, and `MaybeUninit` asks for no
    // initialisation.
    unsafe { std::slice::from_raw_parts_mut(p as *mut MaybeUninit<u8>, n) }
}

/// `recv(2)` into `b`'s spare room; the bytes received join the buffer.
pub(crate) fn recv_into(sock: &SockRef<'_>, b: &mut Buf, flags: libc::c_int) -> io::Result<usize> {
    let n = sock.recv_with_flags(spare(b), flags)?;
    // SAFETY: recv initialised the first `n` bytes of the spare room.
    unsafe { b.advance(n) };
    Ok(n)
}

/// `recvfrom(2)` into `b`'s spare room: the bytes received join the buffer;
/// returns their count and the sender.
pub(crate) fn recv_from_into(
    sock: &SockRef<'_>,
    b: &mut Buf,
    flags: libc::c_int,
) -> io::Result<(usize, SockAddr)> {
    let (n, from) = sock.recv_from_with_flags(spare(b), flags)?;
    // SAFETY: recvfrom initialised the first `n` bytes of the spare room.
    unsafe { b.advance(n) };
    Ok((n, from))
}

/// Reads what the socket holds into a free pool buffer — taken only now, so
/// an idle connection pins none — and queues it as a `more` completion of
/// the pooled receive `meta`. `Ok(None)`: no free buffer; `Ok(Some(0))`: the
/// peer closed (the buffer goes back to `free`, as after an error).
pub(crate) fn read_pooled(
    fd: BorrowedFd<'_>,
    pool: &Arc<PoolShared>,
    free: &mut Vec<u16>,
    meta: &OpMeta,
    out: &mut Vec<Completion>,
) -> io::Result<Option<usize>> {
    let Some(bid) = free.pop() else {
        return Ok(None);
    };
    // SAFETY: buffer `bid` was on the engine's free list, so the engine owns
    // it (no `PooledBuf` and no kernel holds it) and may write its
    // `buf_size` bytes; `MaybeUninit` asks for no initialisation.
    let room = unsafe {
        std::slice::from_raw_parts_mut(pool.addr(bid) as *mut MaybeUninit<u8>, pool.buf_size)
    };
    // The socket may be in blocking mode (io_uring's): never wait here.
    match SockRef::from(&fd).recv_with_flags(room, libc::MSG_DONTWAIT) {
        Ok(n) if n > 0 => {
            // SAFETY: the engine owns `bid` (see above) and recv wrote `n`
            // bytes into it; from here the PooledBuf is its only owner.
            let pb = unsafe { pool.lend(bid, n) };
            let mut c = meta.more(OpKind::RecvPooled, Ok(n));
            c.buf = Some(Buf::Pooled(pb));
            out.push(c);
            Ok(Some(n))
        }
        r => {
            free.push(bid);
            r.map(Some)
        }
    }
}

/// The result of a `read`/`write`-like call: the count, or the error.
fn count(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `pread(2)` at `at` (a file), or `read(2)` (`None`: a pipe), into `b`'s
/// spare room; the bytes read join the buffer.
pub(crate) fn read_into(fd: BorrowedFd<'_>, b: &mut Buf, at: Option<u64>) -> io::Result<usize> {
    let room = spare(b);
    let (p, n) = (room.as_mut_ptr() as *mut libc::c_void, room.len());
    let r = match at {
        // SAFETY: `p` points to `n` writable bytes of the buffer's spare
        // room, which `room` borrows from `b` for the call.
        Some(off) => unsafe { libc::pread(fd.as_raw_fd(), p, n, off as libc::off_t) },
        // SAFETY: as above.
        None => unsafe { libc::read(fd.as_raw_fd(), p, n) },
    };
    let n = count(r)?;
    // SAFETY: the call initialised the first `n` bytes of the spare room.
    unsafe { b.advance(n) };
    Ok(n)
}

/// `pwrite(2)` of `s` at `at` (a file), or `write(2)` (`None`: a pipe);
/// returns the bytes written.
pub(crate) fn write_from(fd: BorrowedFd<'_>, s: &[u8], at: Option<u64>) -> io::Result<usize> {
    let (p, n) = (s.as_ptr() as *const libc::c_void, s.len());
    let r = match at {
        // SAFETY: `p` points to the `n` initialised bytes of `s`, borrowed
        // for the call.
        Some(off) => unsafe { libc::pwrite(fd.as_raw_fd(), p, n, off as libc::off_t) },
        // SAFETY: as above.
        None => unsafe { libc::write(fd.as_raw_fd(), p, n) },
    };
    count(r)
}

/// `fdatasync(2)` (`data_only`) or `fsync(2)`.
pub(crate) fn flush(fd: BorrowedFd<'_>, data_only: bool) -> io::Result<()> {
    let r = if data_only {
        // SAFETY: no memory is involved; the descriptor is open (borrowed).
        unsafe { libc::fdatasync(fd.as_raw_fd()) }
    } else {
        // SAFETY: as above.
        unsafe { libc::fsync(fd.as_raw_fd()) }
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether the file `fd` was opened for direct I/O (`O_DIRECT`), and if so
/// the alignment it needs: of the buffer's address, and of the offset and
/// the length — what `statx` says (`STATX_DIOALIGN`, Linux 6.1), else the
/// file system's block size for both.
pub(crate) fn direct_io(fd: BorrowedFd<'_>) -> io::Result<Option<(usize, usize)>> {
    // SAFETY: F_GETFL reads the descriptor's flags; no memory is involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_DIRECT == 0 {
        return Ok(None);
    }
    // SAFETY: all-zero is a valid statx.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty C string (with AT_EMPTY_PATH: the
    // descriptor itself) and `sx` a live, writable statx.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN | libc::STATX_BASIC_STATS,
            &mut sx,
        )
    };
    if r == 0 && sx.stx_mask & libc::STATX_DIOALIGN != 0 && sx.stx_dio_mem_align != 0 {
        return Ok(Some((
            sx.stx_dio_mem_align as usize,
            sx.stx_dio_offset_align as usize,
        )));
    }
    let block = if r == 0 && sx.stx_blksize != 0 {
        sx.stx_blksize as usize
    } else {
        4096
    };
    Ok(Some((block, block)))
}
