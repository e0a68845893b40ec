//! The submission side: building and pushing SQEs, what each is built from
//! besides its operation ([`Issue`]), and the memory they point to.
//!
//! Every pointer placed in an SQE points into memory an operation slot owns
//! (its buffer, or one of the types below, boxed so it never moves) or into
//! the engine's wake-up buffer. The slot lives until its operation's final
//! CQE, so the kernel never writes to freed or moved memory. The one
//! exception is the timeout that keeps the engine's earliest timer: its time
//! is in a box the engine owns, which the kernel copies as it takes the SQE
//! in, and which is written again only by a later turn's arming, after this
//! turn's entry handed the SQE over.

use std::io;
use std::time::Instant;

use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::ud::{CANCEL_UD, POLL_BIT, TIMER_UD, WAKE_UD};
use super::{UringEngine, UringFeatures};
use crate::addr::Addr;
use crate::buf::Buf;
use crate::kit::phase::Phase;
use crate::sys::common::{sockaddr_from_storage, unsent, IOV_MAX};

/// What an SQE is built from besides the operation itself.
pub(super) struct Issue {
    pub fd: types::Fd,
    /// The socket is a stream (a vectored send may be split; see
    /// [`crate::kit::lanes`]).
    pub stream: bool,
    pub feats: UringFeatures,
    /// The buffer ring's group, when pooled receives use it.
    pub bgid: Option<u16>,
    /// The last attempt ended with `EAGAIN`: poll before trying
    /// (`IORING_RECVSEND_POLL_FIRST`).
    pub poll_first: bool,
}

impl Issue {
    /// The `ioprio` of a send or receive SQE.
    pub fn prio(&self) -> u16 {
        /// `IORING_RECVSEND_POLL_FIRST` (5.19): arm the poll before the first try.
        const POLL_FIRST: u16 = 1;
        if self.poll_first {
            POLL_FIRST
        } else {
            0
        }
    }
}

impl UringEngine {
    /// Queues an SQE, handing the SQ to the kernel first if it is full.
    pub(super) fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every pointer in an entry pushed here points into memory
            // owned by an operation slot (or the engine's wake buffer) that
            // stays alive and unmoved until the entry's final CQE is reaped,
            // or (a timer's timeout) into the engine's boxed time, alive and
            // unchanged until the kernel copied it (see the module doc).
            if unsafe { self.sq().push(&e) }.is_ok() {
                return;
            }
            let r = self.ring.submit();
            self.submissions += 1;
            check_enter(r);
        }
    }

    /// Builds and queues the SQE of slot `idx`'s next attempt.
    pub(super) fn issue(&mut self, idx: usize) {
        let ud = self.user_data(idx);
        let submissions = self.submissions;
        let has_bufring = self.bufring.is_some();
        let bgid = self.bufring.as_ref().map(|b| b.bgid);
        let feats = self.feats;
        let Some(slot) = self.ops.get_mut(idx) else {
            return;
        };
        let Some(h) = self.handles.get(&slot.meta.hid) else {
            return;
        };
        let cx = Issue {
            fd: types::Fd(h.fd()),
            stream: h.lanes.is_stream(),
            feats,
            bgid,
            poll_first: slot.poll_first,
        };
        slot.phase = Phase::Issued;
        slot.pushed_at = submissions;
        let ud = if slot.op.polls(has_bufring) {
            ud | POLL_BIT
        } else {
            ud
        };
        let e = slot.op.sqe(&cx).user_data(ud);
        self.push(e);
    }

    /// Asks the kernel to cancel the request named `target`.
    pub(super) fn push_cancel(&mut self, target: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(CANCEL_UD);
        self.push(e);
    }

    /// Arms a kernel timeout that reports (a CQE named `TIMER_UD`) once
    /// `at` has passed: measured from a clock reading made now, after the
    /// caller decided on `at`, so it never reports before `at`.
    pub(super) fn arm_timer(&mut self, at: Instant) {
        let d = at.saturating_duration_since(Instant::now());
        // The kernel copies the time when it takes the SQE in; the next
        // arming (a later turn's intake) comes after this turn's entry
        // handed this one over.
        *self.timer_ts = types::Timespec::from(d);
        let e = opcode::Timeout::new(&*self.timer_ts as *const types::Timespec)
            .build()
            .user_data(TIMER_UD);
        self.push(e);
    }

    /// Arms the read of the wake-up eventfd: its CQE ends a wait.
    pub(super) fn arm_wake(&mut self) {
        let fd = self.core.shared.wake_fd();
        let e = opcode::Read::new(types::Fd(fd), &mut *self.wake_buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(WAKE_UD);
        self.push(e);
        self.wake_armed = true;
    }
}

/// Logs an `io_uring_enter` failure that is not part of waiting.
pub(super) fn check_enter(r: io::Result<usize>) {
    if let Err(e) = r {
        match e.raw_os_error() {
            Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
            _ => tracing::warn!("io_uring_enter: {e}"),
        }
    }
}

/// A socket address the kernel writes (accept, `recvmsg`) or reads
/// (`sendmsg`).
pub(super) struct AddrBuf {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl AddrBuf {
    const ROOM: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as _;

    /// Room for any address.
    pub fn new() -> AddrBuf {
        AddrBuf {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { std::mem::zeroed() },
            len: Self::ROOM,
        }
    }

    /// A copy of `a`.
    pub fn of(a: &SockAddr) -> AddrBuf {
        let mut b = AddrBuf::new();
        let n = (a.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: copies `n` bytes of a valid sockaddr into storage of at
        // least that size; the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                a.as_ptr() as *const u8,
                &mut b.storage as *mut _ as *mut u8,
                n,
            )
        };
        b.len = a.len();
        b
    }

    /// Room for the kernel to write an address into: (address, length).
    pub fn room(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        self.len = Self::ROOM;
        (
            &mut self.storage as *mut _ as *mut libc::sockaddr,
            &mut self.len,
        )
    }

    /// The address, `len` bytes of it.
    pub fn addr(&self, len: libc::socklen_t) -> Option<Addr> {
        sockaddr_from_storage(&self.storage, len)
    }

    /// The address, as long as the kernel said it is.
    pub fn written(&self) -> Option<Addr> {
        self.addr(self.len)
    }
}

/// The header, the one iovec and the address of a `recvmsg`/`sendmsg`.
pub(super) struct Msg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: AddrBuf,
}

impl Msg {
    /// A message for `addr` (the peer's, or room for it).
    pub fn new(addr: AddrBuf) -> Box<Msg> {
        Box::new(Msg {
            // SAFETY: all-zero is a valid empty msghdr.
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            addr,
        })
    }

    /// Points the header at `(p, n)` and the address.
    fn aim(&mut self, p: *mut u8, n: usize, addr_len: libc::socklen_t) -> *mut libc::msghdr {
        self.iov = libc::iovec {
            iov_base: p as *mut libc::c_void,
            iov_len: n,
        };
        self.hdr.msg_name = &mut self.addr.storage as *mut _ as *mut libc::c_void;
        self.hdr.msg_namelen = addr_len;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        &mut self.hdr
    }

    /// The header of a receive into `b`'s spare room (and room for the
    /// sender's address).
    pub fn recv_into(&mut self, b: &mut Buf) -> *mut libc::msghdr {
        let (p, n) = b.spare();
        self.aim(p, n, AddrBuf::ROOM)
    }

    /// The header of a send of `b` to the address.
    pub fn send_of(&mut self, b: &Buf) -> *const libc::msghdr {
        let s = b.as_slice();
        let len = self.addr.len;
        self.aim(s.as_ptr() as *mut u8, s.len(), len)
    }

    /// The sender's address of the last receive.
    pub fn from(&self) -> Option<Addr> {
        self.addr.addr(self.hdr.msg_namelen)
    }
}

/// The iovecs and header of a vectored `sendmsg`.
pub(super) struct VecMsg {
    iov: Box<[libc::iovec]>,
    hdr: Box<libc::msghdr>,
}

impl VecMsg {
    /// Room for `n` iovecs.
    pub fn new(n: usize) -> VecMsg {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        VecMsg {
            iov: vec![empty; n].into(),
            // SAFETY: all-zero is a valid empty msghdr.
            hdr: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    /// The header of a send of `bufs` past their first `sent` bytes: on a
    /// stream at most `IOV_MAX` buffers (the rest goes out as the remainder
    /// of a short send); a datagram is never split (more than `IOV_MAX`
    /// buffers fail with `EMSGSIZE`).
    pub fn send_of(&mut self, bufs: &[Buf], sent: usize, stream: bool) -> *const libc::msghdr {
        let max = if stream { IOV_MAX } else { usize::MAX };
        let mut n = 0;
        for (v, s) in self.iov.iter_mut().zip(unsent(bufs, sent).take(max)) {
            *v = libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            };
            n += 1;
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = n as _;
        &*self.hdr
    }
}

// SAFETY: the raw pointers in these types point only into memory the same
// operation owns (its buffers, or the type itself); moving the operation to
// another thread moves that memory's ownership with it.
unsafe impl Send for Msg {}
// SAFETY: as for `Msg`.
unsafe impl Send for VecMsg {}
