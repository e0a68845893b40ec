//! The submission side: building and pushing SQEs, what each is built from
//! besides its operation ([`Issue`]), and the memory they point to.
//!
//! Every pointer placed in an SQE points into memory an operation slot owns
//! (its buffer, or one of the types below, boxed so it never moves) or into
//! the engine's wake-up buffer. The slot lives until its operation's final
//! CQE — or, at an abandon, is freed only if its SQE never left the SQ
//! (see [`UringEngine::enter`]) — so the kernel never writes to freed or
//! moved memory. The one exception is the timeout that keeps the engine's
//! earliest timer: its time is in a box the engine owns, which the kernel
//! copies as it takes the SQE in, and which is written again only by a
//! later turn's arming, after this turn's entry handed the SQE over.

use std::io;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::ud::{CANCEL_UD, POLL_BIT, TIMER_UD, WAKE_UD};
use super::{UringEngine, UringFeatures};
use crate::addr::Addr;
use crate::buf::Buf;
use crate::kit::phase::Phase;
use crate::sys::common::{sockaddr_from_storage, unsent, IOV_MAX};

/// How [`UringEngine::enter`] enters the kernel.
#[derive(Clone, Copy)]
pub(super) enum Enter {
    /// Hands over the SQ (and flushes overflowed CQEs, runs task work)
    /// without waiting.
    Submit,
    /// Hands over the SQ and waits for one completion, up to the limit
    /// (`None`: none).
    WaitOne(Option<Duration>),
}

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
            // or is freed unreaped only if the entry never reaches the
            // kernel; or (a timer's timeout) into the engine's boxed time,
            // alive and unchanged until the kernel copied it (see the module
            // doc).
            if unsafe { self.sq().push(&e) }.is_ok() {
                return;
            }
            self.enter(Enter::Submit);
        }
    }

    /// Enters the kernel, handing it the SQ: the one place the engine
    /// does (a test keeps it so), and the one place that counts it.
    ///
    /// [`UringEngine::free_unsubmitted`] rests on this count: at abandon
    /// it frees an issued operation whose last SQE was pushed at the
    /// current count (`pushed_at`), taking that SQE never to have left the
    /// SQ. An enter that went uncounted would let it free an operation
    /// whose buffers the kernel holds. So the count moves with every call,
    /// before it and whatever it returns: a failed or partial submit then
    /// counts as one, which errs towards leaking an operation whose SQE
    /// is still in the SQ, never towards freeing one the kernel took. And
    /// a slot is stamped before its SQE is pushed ([`UringEngine::issue`]),
    /// so a push that submits a full SQ first stamps the older count: the
    /// safe side again. Nothing else takes the SQ: the ring has no
    /// SQPOLL thread (see `probe`), and a driven ring's drivers, which
    /// enter it outside the engine (`UringWait::wait`), are not counted —
    /// `free_unsubmitted` frees nothing on a driven ring.
    pub(super) fn enter(&mut self, how: Enter) {
        self.submissions += 1;
        let r = match how {
            Enter::Submit => self.ring.submit(),
            Enter::WaitOne(None) => self.ring.submit_and_wait(1),
            Enter::WaitOne(Some(d)) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        check_enter(r);
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

#[cfg(test)]
mod only_enter_submits {
    /// What hands a ring's SQ to the kernel (`io_uring` crate calls).
    fn submits(line: &str) -> bool {
        [
            ".submit()",
            ".submit_and_wait(",
            ".submit_with_args(",
            ".enter::<",
        ]
        .iter()
        .any(|p| line.contains(p))
            || (line.contains(".enter(") && !line.contains("self.enter("))
    }

    /// Every hand-off of the engine's SQ goes through `UringEngine::enter`,
    /// which counts it: an uncounted one would let an abandon free an
    /// operation the kernel holds. Scans this module's sources for any
    /// other call. `driven.rs` is left out: its calls enter the shared
    /// ring of a driven engine (uncounted by design, see `enter`) or the
    /// waker's own ring.
    #[test]
    fn no_submit_outside_enter() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sys/uring");
        let mut inside = 0;
        let mut outside = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs") || name == "driven.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // This test's own patterns are not calls.
            let text = text
                .split("#[cfg(test)]\nmod only_enter_submits")
                .next()
                .unwrap();
            let mut in_enter = false;
            for (n, line) in text.lines().enumerate() {
                if line.starts_with("    pub(super) fn enter(") {
                    in_enter = true;
                } else if in_enter && line == "    }" {
                    in_enter = false;
                }
                if submits(line) {
                    if in_enter {
                        inside += 1;
                    } else {
                        outside.push(format!("{name}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        assert_eq!(inside, 3, "the scan finds `enter`'s own three calls");
        assert!(
            outside.is_empty(),
            "the SQ handed over outside `UringEngine::enter` (uncounted): {outside:#?}"
        );
    }
}
