//! Operations on the epoll engine: what each one owns, which lane it waits
//! in, and one non-blocking attempt at it.
//!
//! An attempt never blocks: it makes the syscall (`MSG_DONTWAIT`, the socket
//! is non-blocking too) and reports a [`Step`]. The engine decides what the
//! step means for the operation's lane.

use std::io;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use socket2::{SockAddr, SockRef};

use super::poller;
use crate::op::{Buf, Completion, Extra, OpId, OpKind};
use crate::pool::PoolShared;
use crate::sys::common::IOV_MAX;

/// Which per-handle FIFO an operation waits in. One lane per direction
/// keeps a stream's bytes in issue order (as Winsock promises); accepts and
/// connects have lanes of their own so they never wait behind data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Lane {
    /// `Recv`, `RecvFrom`, `RecvPooled`; driven by `EPOLLIN`.
    Read = 0,
    /// `Send` (also vectored), `SendTo`; driven by `EPOLLOUT`.
    Write = 1,
    /// `Accept`, standing accepts; driven by `EPOLLIN`.
    Accept = 2,
    /// `Connect`; driven by `EPOLLOUT`.
    Connect = 3,
}

impl Lane {
    pub(super) const ALL: [Lane; 4] = [Lane::Connect, Lane::Write, Lane::Read, Lane::Accept];
}

/// The memory an operation owns until its final completion.
pub(super) enum Mem {
    None,
    /// The target, and whether `connect(2)` was called already.
    Connect(Box<SockAddr>, bool),
    Buf(Buf),
    Vectored(Vec<Buf>),
    SendTo(Buf, Box<SockAddr>),
}

/// One operation in flight.
pub(super) struct Op {
    pub hid: u64,
    pub id: u64,
    pub token: u64,
    pub key: u64,
    pub kind: OpKind,
    pub lane: Lane,
    pub mem: Mem,
    /// Bytes sent so far (sends finish short writes in order).
    pub done: usize,
    /// A standing operation (pooled receive, accept stream).
    pub multishot: bool,
    /// A pooled receive waiting for a free pool buffer.
    pub starved: bool,
}

/// What one attempt achieved.
pub(super) enum Step {
    /// The operation is over: complete it with this result.
    Done(io::Result<usize>, Extra),
    /// The operation is still at the head of its lane and may go on now: a
    /// standing operation posted a `more` completion, or a call was
    /// interrupted.
    Again,
    /// `EAGAIN`: the direction is not ready; wait for its edge.
    WouldBlock,
    /// A pooled receive found no free pool buffer.
    Starved,
    /// A standing accept hit a resource limit (`EMFILE` & co): the error was
    /// reported; the connection stays in the backlog, so retrying at once
    /// would spin. Pause the lane for a while.
    BackOff,
}

/// The engine state an attempt may touch besides the operation itself.
pub(super) struct Ctx<'a> {
    pub pool: &'a Arc<PoolShared>,
    pub free: &'a mut Vec<u16>,
    pub out: &'a mut Vec<Completion>,
    /// The socket is a stream (a datagram is never split).
    pub stream: bool,
}

const RECV_FLAGS: libc::c_int = libc::MSG_DONTWAIT;
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

enum Errno {
    WouldBlock,
    Interrupted,
    Other(io::Error),
}

fn classify(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Errno::WouldBlock,
        Some(libc::EINTR) => Errno::Interrupted,
        _ => Errno::Other(e),
    }
}

/// `accept4` errors after which the listener goes on: the first class is
/// about one connection (report it, keep accepting), the second about
/// resources (report it, then back off: the connection stays queued).
fn accept_error_class(errno: i32) -> Option<bool> {
    match errno {
        libc::ECONNABORTED
        | libc::EPROTO
        | libc::ENETDOWN
        | libc::ENOPROTOOPT
        | libc::EHOSTDOWN
        | libc::ENONET
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::EPERM => Some(false),
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Some(true),
        _ => None,
    }
}

/// The spare room of a receive buffer as uninitialised bytes.
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

/// Makes one attempt at `op` on `fd`.
pub(super) fn attempt(op: &mut Op, fd: BorrowedFd<'_>, cx: &mut Ctx<'_>) -> Step {
    let sock = SockRef::from(&fd);
    match op.kind {
        OpKind::Accept => accept(op, fd, cx),
        OpKind::Connect => connect(op, &sock),
        OpKind::RecvPooled => recv_pooled(op, &sock, cx),
        OpKind::Recv => {
            let Mem::Buf(b) = &mut op.mem else {
                unreachable!("recv owns a buffer")
            };
            match sock.recv_with_flags(spare(b), RECV_FLAGS) {
                Ok(n) => {
                    // SAFETY: recv initialised the first `n` bytes of the spare room.
                    unsafe { b.advance(n) };
                    Step::Done(Ok(n), Extra::None)
                }
                Err(e) => fail(e),
            }
        }
        OpKind::RecvFrom => {
            let Mem::Buf(b) = &mut op.mem else {
                unreachable!("recv_from owns a buffer")
            };
            match sock.recv_from_with_flags(spare(b), RECV_FLAGS) {
                Ok((n, from)) => {
                    // SAFETY: recvfrom initialised the first `n` bytes of the spare room.
                    unsafe { b.advance(n) };
                    Step::Done(Ok(n), Extra::From(from.as_socket()))
                }
                Err(e) => fail(e),
            }
        }
        OpKind::SendTo => {
            let Mem::SendTo(b, to) = &op.mem else {
                unreachable!("send_to owns a buffer")
            };
            match sock.send_to_with_flags(b.as_slice(), to, SEND_FLAGS) {
                Ok(n) => Step::Done(Ok(n), Extra::None),
                Err(e) => fail(e),
            }
        }
        OpKind::Send => send(op, &sock, cx.stream),
        OpKind::Post | OpKind::Timer => unreachable!("packets are not operations"),
    }
}

fn fail(e: io::Error) -> Step {
    match classify(e) {
        Errno::WouldBlock => Step::WouldBlock,
        Errno::Interrupted => Step::Again,
        Errno::Other(e) => Step::Done(Err(e), Extra::None),
    }
}

/// A send completes only when every byte is out: keep sending from `done`
/// until the socket is full (wait for `EPOLLOUT`, still at the head of the
/// write lane) or an error. On a stream a vectored send passes at most
/// `IOV_MAX` buffers per call; a datagram goes out in one call or fails.
fn send(op: &mut Op, sock: &SockRef<'_>, stream: bool) -> Step {
    loop {
        let r = match &op.mem {
            Mem::Buf(b) => sock.send_with_flags(&b.as_slice()[op.done.min(b.len())..], SEND_FLAGS),
            Mem::Vectored(bufs) => {
                let mut skip = op.done;
                let mut iov = Vec::with_capacity(bufs.len().min(IOV_MAX));
                for b in bufs {
                    let s = b.as_slice();
                    if skip >= s.len() {
                        skip -= s.len();
                        continue;
                    }
                    iov.push(IoSlice::new(&s[skip..]));
                    skip = 0;
                    if stream && iov.len() == IOV_MAX {
                        break;
                    }
                }
                sock.send_vectored_with_flags(&iov, SEND_FLAGS)
            }
            _ => unreachable!("send owns a buffer"),
        };
        match r {
            Ok(n) => {
                op.done += n;
                let total = match &op.mem {
                    Mem::Buf(b) => b.len(),
                    Mem::Vectored(v) => v.iter().map(Buf::len).sum(),
                    _ => 0,
                };
                if op.done >= total {
                    return Step::Done(Ok(op.done), Extra::None);
                }
                if n == 0 {
                    return Step::Done(Err(io::ErrorKind::WriteZero.into()), Extra::None);
                }
                // A short send: the socket buffer is (nearly) full; the next
                // call says whether to wait.
            }
            Err(e) => match classify(e) {
                Errno::WouldBlock => return Step::WouldBlock,
                Errno::Interrupted => {}
                Errno::Other(e) => return Step::Done(Err(e), Extra::None),
            },
        }
    }
}

/// Starts the connect on the first attempt; later attempts (on `EPOLLOUT`,
/// `EPOLLERR` or `EPOLLHUP`) check `SO_ERROR`, then ask `connect(2)` again
/// whether the handshake is over (`EISCONN`/0) or still going (`EALREADY`):
/// a stale writability edge from before the connect must not complete it.
fn connect(op: &mut Op, sock: &SockRef<'_>) -> Step {
    let Mem::Connect(addr, started) = &mut op.mem else {
        unreachable!("connect owns an address")
    };
    if *started {
        match sock.take_error() {
            Ok(Some(e)) => return Step::Done(Err(e), Extra::None),
            Ok(None) => {}
            Err(e) => return Step::Done(Err(e), Extra::None),
        }
    }
    let first = !*started;
    *started = true;
    match sock.connect(addr) {
        Ok(()) => Step::Done(Ok(0), Extra::None),
        Err(e) => match e.raw_os_error() {
            Some(libc::EINPROGRESS) | Some(libc::EALREADY) | Some(libc::EINTR) => Step::WouldBlock,
            Some(libc::EISCONN) if !first => Step::Done(Ok(0), Extra::None),
            _ => Step::Done(Err(e), Extra::None),
        },
    }
}

fn accept(op: &mut Op, fd: BorrowedFd<'_>, cx: &mut Ctx<'_>) -> Step {
    match poller::accept(fd) {
        Ok((sock, peer)) => {
            if !op.multishot {
                return Step::Done(Ok(0), Extra::Accepted(sock, peer));
            }
            let mut c = Completion::new(OpKind::Accept, op.key, op.token, OpId(op.id), Ok(0));
            c.more = true;
            c.extra = Extra::Accepted(sock, peer);
            cx.out.push(c);
            Step::Again
        }
        Err(e) => match classify(e) {
            Errno::WouldBlock => Step::WouldBlock,
            Errno::Interrupted => Step::Again,
            Errno::Other(e) => {
                let class = e.raw_os_error().and_then(accept_error_class);
                match class {
                    Some(back_off) if op.multishot => {
                        let mut c =
                            Completion::new(OpKind::Accept, op.key, op.token, OpId(op.id), Err(e));
                        c.more = true;
                        cx.out.push(c);
                        if back_off {
                            Step::BackOff
                        } else {
                            Step::Again
                        }
                    }
                    _ => Step::Done(Err(e), Extra::None),
                }
            }
        },
    }
}

/// Reads into a free pool buffer (taken only now, so an idle connection
/// pins none); each chunk is a `more` completion; EOF ends the stream.
fn recv_pooled(op: &mut Op, sock: &SockRef<'_>, cx: &mut Ctx<'_>) -> Step {
    let Some(bid) = cx.free.pop() else {
        return Step::Starved;
    };
    let size = cx.pool.buf_size;
    // SAFETY: buffer `bid` was on the engine's free list, so the engine owns
    // it (no `PooledBuf` and no kernel holds it) and may write its `size`
    // bytes; `MaybeUninit` asks for no initialisation.
    let room =
        unsafe { std::slice::from_raw_parts_mut(cx.pool.addr(bid) as *mut MaybeUninit<u8>, size) };
    match sock.recv_with_flags(room, RECV_FLAGS) {
        Ok(0) => {
            cx.free.push(bid);
            Step::Done(Ok(0), Extra::None)
        }
        Ok(n) => {
            // SAFETY: the engine owns `bid` (see above) and recv wrote `n`
            // bytes into it; from here the PooledBuf is its only owner.
            let pb = unsafe { cx.pool.lend(bid, n) };
            let mut c = Completion::new(OpKind::RecvPooled, op.key, op.token, OpId(op.id), Ok(n));
            c.more = true;
            c.buf = Some(Buf::Pooled(pb));
            cx.out.push(c);
            Step::Again
        }
        Err(e) => {
            cx.free.push(bid);
            fail(e)
        }
    }
}
