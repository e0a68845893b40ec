//! The io_uring engine: one ring owned by one thread.
//!
//! Application threads queue [`Cmd`]s on the engine's [`EngineShared`]; the
//! engine turns them into SQEs, submits them in one batch per turn, reaps
//! CQEs and turns them into [`Completion`] packets for the user-space port.
//! Every pointer placed in an SQE points into an operation slot the engine
//! owns until that operation's final CQE, so the kernel never writes to
//! freed or moved memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::SockAddr;

use crate::error;
use crate::op::{Buf, Completion, Extra, OpId, OpKind};
use crate::queue::Queue;
use crate::sys::common::{
    sockaddr_from_storage, Cmd, EngineCounters, EngineFd, EngineShared, HandleMap, OpData, OpReq,
    Slab, TimerItem, Timers, IOV_MAX,
};

mod bufring;
mod probe;
#[cfg(test)]
mod tests;

use bufring::BufRing;
pub use probe::UringFeatures;
pub(crate) use probe::ENV_SWITCHES;

// An operation's `user_data` names its slot and the slot's generation:
// bits 0..32 the slab index, bits 32..62 the generation (the slab bumps it
// each time the slot is freed), bit 62 the poll-mode flag. A CQE or an
// `AsyncCancel` carrying an earlier generation never matches the slot's
// next occupant. Bit 63 is never set in an operation's name, so the two
// engine-internal names below cannot collide with one.
const WAKE_UD: u64 = u64::MAX;
const CANCEL_UD: u64 = u64::MAX - 1;
const POLL_BIT: u64 = 1 << 62;
const INDEX_MASK: u64 = (1 << 32) - 1;
const GEN_SHIFT: u32 = 32;
const GEN_MASK: u64 = (1 << 30) - 1;
/// `IORING_RECVSEND_POLL_FIRST` (5.19): arm the poll before the first try.
const POLL_FIRST: u16 = 1;

/// Which per-handle lane an operation waits in (one in flight per lane keeps
/// a stream's bytes in issue order, as Winsock promises).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lane {
    None,
    Read,
    Write,
}

struct AddrBuf {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

struct MsgParts {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: AddrBuf,
}

enum Mem {
    None,
    Accept(Box<AddrBuf>),
    Connect(Box<SockAddr>),
    Buf(Buf),
    Vectored(Vec<Buf>, Box<[libc::iovec]>, Box<libc::msghdr>),
    Msg(Buf, Box<MsgParts>),
}

struct Slot {
    hid: u64,
    id: u64,
    token: u64,
    key: u64,
    kind: OpKind,
    mem: Mem,
    lane: Lane,
    /// Bytes sent so far (sends finish short writes in order).
    done: usize,
    submitted: bool,
    cancelled: bool,
    timed_out: bool,
    /// Pooled receive / multishot accept: a standing operation.
    multishot: bool,
    /// Pooled receive waiting for buffers (ENOBUFS).
    starved: bool,
    /// The last attempt ended with EAGAIN: poll before trying again.
    poll_first: bool,
}

struct HState {
    fd: EngineFd,
    ops: Vec<usize>,
    readq: VecDeque<usize>,
    read_busy: bool,
    writeq: VecDeque<usize>,
    write_busy: bool,
    closing: bool,
    /// A stream socket (vectored sends split at `IOV_MAX`; a send cut
    /// part-way breaks the write side).
    stream: bool,
    /// A send failed part-way: every later send completes aborted.
    send_broken: bool,
}

/// The engine. Lives on one thread for its whole life (the ring is created
/// with `SINGLE_ISSUER` when the kernel has it).
pub(crate) struct UringEngine {
    // `shutdown` reaps every request the kernel holds (operations and the
    // eventfd read) before anything is freed, or leaks what it could not
    // reap; the ring is still declared first so it is closed before the
    // slots and the buffer ring go.
    ring: IoUring,
    bufring: Option<BufRing>,
    ops: Slab<Slot>,
    handles: HandleMap<HState>,
    shared: Arc<EngineShared>,
    queue: Queue<Completion>,
    timers: Timers,
    wake_buf: Box<u64>,
    wake_armed: bool,
    out: Vec<Completion>,
    cmds: Vec<Cmd>,
    cqes: Vec<(u64, i32, u32)>,
    expired: Vec<TimerItem>,
    returned: Vec<u16>,
    starved: Vec<usize>,
    /// Pool buffers free in user space (poll-mode pooled receive).
    free_bufs: Vec<u16>,
    feats: UringFeatures,
    draining: bool,
    /// The thread that created the ring: the only one that may enter it
    /// (a `SINGLE_ISSUER` ring refuses every other with `EEXIST`).
    owner: std::thread::ThreadId,
}

impl UringEngine {
    /// Builds the ring on the calling thread (which becomes its only issuer).
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        queue: Queue<Completion>,
        cfg: &crate::port::Config,
    ) -> io::Result<UringEngine> {
        let (ring, mut feats) = probe::build_ring(cfg)?;
        let pool = shared.pool.clone();
        let mut bufring = None;
        let mut free_bufs = Vec::new();
        if feats.buf_ring && feats.multishot_recv {
            match BufRing::new(&ring, pool.clone(), 0) {
                Ok(br) => bufring = Some(br),
                Err(e) => {
                    tracing::info!("io_uring: buffer ring unavailable ({e}); pooled receive polls");
                    feats.buf_ring = false;
                    feats.multishot_recv = false;
                }
            }
        }
        if bufring.is_none() {
            free_bufs = (0..pool.count as u16).rev().collect();
        }
        Ok(UringEngine {
            ring,
            bufring,
            ops: Slab::new(),
            handles: HandleMap::default(),
            shared,
            queue,
            timers: Timers::new(),
            wake_buf: Box::new(0),
            wake_armed: false,
            out: Vec::with_capacity(256),
            cmds: Vec::with_capacity(256),
            cqes: Vec::with_capacity(256),
            expired: Vec::new(),
            returned: Vec::new(),
            starved: Vec::new(),
            free_bufs,
            feats,
            draining: false,
            owner: std::thread::current().id(),
        })
    }

    /// The `user_data` the operation in slot `idx` is issued with: its
    /// index and the slot's current generation (without the poll flag).
    fn user_data(&self, idx: usize) -> u64 {
        debug_assert!(idx as u64 <= INDEX_MASK, "slot index {idx} out of range");
        idx as u64 | (u64::from(self.ops.generation(idx)) & GEN_MASK) << GEN_SHIFT
    }

    /// The live slot a `user_data` names (poll flag cleared), or `None` if
    /// that slot has since been freed (and perhaps reused).
    fn slot_of(&self, ud: u64) -> Option<usize> {
        let idx = (ud & INDEX_MASK) as usize;
        let gen = (ud >> GEN_SHIFT) & GEN_MASK;
        let live =
            self.ops.get(idx).is_some() && u64::from(self.ops.generation(idx)) & GEN_MASK == gen;
        live.then_some(idx)
    }

    pub(crate) fn features(&self) -> UringFeatures {
        self.feats
    }

    /// The engine thread's loop: turn until shut down, posting packets.
    pub(crate) fn run(mut self) {
        loop {
            self.turn(None, true);
            self.flush_to_queue();
            if self.shared.is_shutdown() {
                break;
            }
        }
        self.shutdown();
    }

    /// Moves completions made so far into the port's queue.
    pub(crate) fn flush_to_queue(&mut self) {
        if !self.out.is_empty() && !self.queue.post_batch(&mut self.out) {
            self.out.clear();
        }
    }

    /// One round: take commands, submit, wait (if `block` and nothing is
    /// ready) up to `timeout` or the next timer, reap.
    pub(crate) fn turn(&mut self, timeout: Option<Duration>, block: bool) {
        self.shared.take_cmds(&mut self.cmds);
        let mut cmds = std::mem::take(&mut self.cmds);
        for cmd in cmds.drain(..) {
            self.command(cmd);
        }
        self.cmds = cmds;
        self.recycle();
        self.fire_timers();
        EngineCounters::set(&self.shared.counters.timers, self.timers.len() as u64);
        if !self.wake_armed {
            self.arm_wake();
        }
        let may_block = block && self.out.is_empty();
        // While draining at shutdown nothing else will wake us, and the
        // caller bounds the wait with a timeout.
        if may_block && (self.draining || self.shared.prepare_sleep()) {
            let now = Instant::now();
            let mut wait = timeout;
            if let Some(t) = self.timers.next() {
                let d = t.saturating_duration_since(now);
                wait = Some(wait.map_or(d, |w| w.min(d)));
            }
            let r = match wait {
                None => self.ring.submit_and_wait(1),
                Some(d) => {
                    let ts = types::Timespec::from(d);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            self.shared.woke();
            self.check_enter(r);
        } else {
            let r = self.ring.submit();
            self.check_enter(r);
        }
        EngineCounters::bump(&self.shared.counters.enters, 1);
        let before = self.out.len();
        self.reap();
        self.recycle();
        self.fire_timers();
        EngineCounters::bump(
            &self.shared.counters.completions,
            self.out.len().saturating_sub(before) as u64,
        );
        EngineCounters::set(&self.shared.counters.timers, self.timers.len() as u64);
    }

    fn check_enter(&mut self, r: io::Result<usize>) {
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                _ => tracing::warn!("io_uring_enter: {e}"),
            }
        }
    }

    fn arm_wake(&mut self) {
        let fd = self.shared.wake_fd();
        let e = opcode::Read::new(types::Fd(fd), &mut *self.wake_buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(WAKE_UD);
        self.push(e);
        self.wake_armed = true;
    }

    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every pointer in an entry pushed here points into memory
            // owned by an operation slot (or the engine's wake buffer) that
            // stays alive and unmoved until the entry's final CQE is reaped.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // The SQ is full: hand it to the kernel and try again.
            let r = self.ring.submit();
            self.check_enter(r);
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Register { hid, fd, key: _ } => {
                // io_uring waits by itself (FAST_POLL); a non-blocking socket
                // would only turn a retry the kernel runs in io-wq into a
                // spurious EAGAIN.
                let sock = socket2::SockRef::from(&fd);
                let _ = sock.set_nonblocking(false);
                let stream = sock.r#type().map_or(true, |t| t == socket2::Type::STREAM);
                self.handles.insert(
                    hid,
                    HState {
                        fd,
                        ops: Vec::new(),
                        readq: VecDeque::new(),
                        read_busy: false,
                        writeq: VecDeque::new(),
                        write_busy: false,
                        closing: false,
                        stream,
                        send_broken: false,
                    },
                );
            }
            Cmd::Start(req) => self.start(req),
            Cmd::Cancel { hid, op } => {
                let found = self.handles.get(&hid).and_then(|h| {
                    h.ops
                        .iter()
                        .copied()
                        .find(|&i| self.ops.get(i).is_some_and(|s| s.id == op))
                });
                if let Some(i) = found {
                    self.cancel_slot(i, false);
                }
            }
            Cmd::Close { hid } => self.close_handle(hid),
            Cmd::Timer { at, pkt } => self.timers.add(at, TimerItem::Post(pkt)),
        }
    }

    fn start(&mut self, req: OpReq) {
        let OpReq {
            hid,
            key,
            id,
            token,
            deadline,
            data,
        } = req;
        let (kind, lane, mem, multishot) = match data {
            OpData::Accept => (
                OpKind::Accept,
                Lane::None,
                Mem::Accept(Box::new(new_addr())),
                false,
            ),
            OpData::AcceptMulti => (OpKind::Accept, Lane::None, Mem::None, true),
            // Sends queue behind the connect, as they would behind a send.
            OpData::Connect(a) => (OpKind::Connect, Lane::Write, Mem::Connect(a), false),
            OpData::Recv(b) => (OpKind::Recv, Lane::Read, Mem::Buf(b), false),
            OpData::RecvPooled => (OpKind::RecvPooled, Lane::Read, Mem::None, true),
            OpData::Send(b) => (OpKind::Send, Lane::Write, Mem::Buf(b), false),
            OpData::SendV(v) => {
                let iov: Box<[libc::iovec]> = vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    v.len()
                ]
                .into();
                // SAFETY: an all-zero msghdr is a valid empty header.
                let hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                (OpKind::Send, Lane::Write, Mem::Vectored(v, iov, hdr), false)
            }
            OpData::RecvFrom(b) => (OpKind::RecvFrom, Lane::Read, Mem::Msg(b, new_msg()), false),
            OpData::SendTo(b, a) => {
                let mut m = new_msg();
                let n = (a.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
                // SAFETY: copies `n` bytes of a valid sockaddr into storage of at least that size.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        a.as_ptr() as *const u8,
                        &mut m.addr.storage as *mut _ as *mut u8,
                        n,
                    )
                };
                m.addr.len = a.len();
                (OpKind::SendTo, Lane::Write, Mem::Msg(b, m), false)
            }
        };
        let Some(h) = self.handles.get_mut(&hid) else {
            // Closed (and its last operation done) after the port let this
            // start: it still completes once, under the handle's key.
            let mut c = Completion::new(kind, key, token, OpId(id), Err(error::handle_closed()));
            give_back(&mut c, mem);
            self.out.push(c);
            return;
        };
        if h.closing || (lane == Lane::Write && h.send_broken) {
            let mut c = Completion::new(kind, key, token, OpId(id), Err(error::aborted()));
            give_back(&mut c, mem);
            self.out.push(c);
            return;
        }
        let idx = self.ops.insert(Slot {
            hid,
            id,
            token,
            key,
            kind,
            mem,
            lane,
            done: 0,
            submitted: false,
            cancelled: false,
            timed_out: false,
            multishot,
            starved: false,
            poll_first: false,
        });
        h.ops.push(idx);
        let go = match lane {
            Lane::None => true,
            Lane::Read => {
                if h.read_busy {
                    h.readq.push_back(idx);
                    false
                } else {
                    h.read_busy = true;
                    true
                }
            }
            Lane::Write => {
                if h.write_busy {
                    h.writeq.push_back(idx);
                    false
                } else {
                    h.write_busy = true;
                    true
                }
            }
        };
        if let Some(d) = deadline {
            self.timers
                .add(d, TimerItem::Deadline { slot: idx, op: id });
        }
        if go {
            self.issue(idx);
        }
    }

    /// Builds and queues the SQE for slot `idx`.
    fn issue(&mut self, idx: usize) {
        let bgid = self.bufring.as_ref().map(|b| b.bgid);
        let feats = self.feats;
        let ud = self.user_data(idx);
        let Some(slot) = self.ops.get_mut(idx) else {
            return;
        };
        let Some(h) = self.handles.get(&slot.hid) else {
            return;
        };
        let fd = types::Fd(h.fd.as_raw_fd());
        let stream = h.stream;
        slot.submitted = true;
        let prio = if slot.poll_first { POLL_FIRST } else { 0 };
        let e = match (&mut slot.mem, slot.kind) {
            (Mem::Accept(a), _) => {
                a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                opcode::Accept::new(
                    fd,
                    &mut a.storage as *mut _ as *mut libc::sockaddr,
                    &mut a.len,
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            }
            (Mem::None, OpKind::Accept) => {
                if feats.multishot_accept {
                    opcode::AcceptMulti::new(fd)
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                } else {
                    opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                }
            }
            (Mem::Connect(a), _) => {
                opcode::Connect::new(fd, a.as_ptr() as *const _, a.len()).build()
            }
            (Mem::Buf(b), OpKind::Recv) => {
                let (p, n) = b.spare();
                opcode::Recv::new(fd, p, n.min(u32::MAX as usize) as u32)
                    .ioprio(prio)
                    .build()
            }
            (Mem::Buf(b), _) => {
                let s = &b.as_slice()[slot.done..];
                opcode::Send::new(fd, s.as_ptr(), s.len().min(u32::MAX as usize) as u32)
                    .ioprio(prio)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            (Mem::Vectored(bufs, iov, hdr), _) => {
                // Rebuild the iovecs past the bytes already sent. On a stream
                // at most IOV_MAX of them: the rest goes out as the
                // remainder of a short send. A datagram is never split (more
                // than IOV_MAX buffers fail with EMSGSIZE).
                let mut skip = slot.done;
                let mut n = 0;
                for b in bufs.iter() {
                    let s = b.as_slice();
                    if skip >= s.len() {
                        skip -= s.len();
                        continue;
                    }
                    if stream && n == IOV_MAX {
                        break;
                    }
                    iov[n] = libc::iovec {
                        iov_base: s[skip..].as_ptr() as *mut libc::c_void,
                        iov_len: s.len() - skip,
                    };
                    skip = 0;
                    n += 1;
                }
                hdr.msg_iov = iov.as_mut_ptr();
                hdr.msg_iovlen = n as _;
                opcode::SendMsg::new(fd, &**hdr as *const libc::msghdr)
                    .ioprio(prio)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            (Mem::Msg(b, m), OpKind::RecvFrom) => {
                let (p, n) = b.spare();
                m.iov = libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: n,
                };
                m.addr.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.hdr.msg_name = &mut m.addr.storage as *mut _ as *mut libc::c_void;
                m.hdr.msg_namelen = m.addr.len;
                m.hdr.msg_iov = &mut m.iov;
                m.hdr.msg_iovlen = 1;
                opcode::RecvMsg::new(fd, &mut m.hdr).ioprio(prio).build()
            }
            (Mem::Msg(b, m), _) => {
                let s = b.as_slice();
                m.iov = libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                };
                m.hdr.msg_name = &mut m.addr.storage as *mut _ as *mut libc::c_void;
                m.hdr.msg_namelen = m.addr.len;
                m.hdr.msg_iov = &mut m.iov;
                m.hdr.msg_iovlen = 1;
                opcode::SendMsg::new(fd, &m.hdr)
                    .ioprio(prio)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
            (Mem::None, _) => {
                // Pooled receive.
                match bgid {
                    Some(g) if feats.multishot_recv => opcode::RecvMulti::new(fd, g).build(),
                    _ => {
                        // Poll mode: wait for readability, then read into a
                        // free pool buffer (no buffer pinned while idle).
                        opcode::PollAdd::new(fd, libc::POLLIN as u32 | libc::POLLRDHUP as u32)
                            .build()
                            .user_data(ud | POLL_BIT)
                    }
                }
            }
        };
        let e = if e.get_user_data() & POLL_BIT != 0 {
            e
        } else {
            e.user_data(ud)
        };
        self.push(e);
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            {
                let cq = self.ring.completion();
                for c in cq {
                    cqes.push((c.user_data(), c.result(), c.flags()));
                }
            }
            if cqes.is_empty() {
                break;
            }
            for (ud, res, flags) in cqes.drain(..) {
                self.on_cqe(ud, res, flags);
            }
            // Overflowed CQEs are flushed by the next enter; keep going while
            // the kernel says some are waiting.
            if !self.ring.submission().cq_overflow() {
                break;
            }
            EngineCounters::bump(&self.shared.counters.cq_overflows, 1);
            let r = self.ring.submit();
            self.check_enter(r);
        }
        self.cqes = cqes;
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        if ud == WAKE_UD {
            self.wake_armed = false;
            return;
        }
        if ud == CANCEL_UD {
            return;
        }
        let Some(idx) = self.slot_of(ud & !POLL_BIT) else {
            // Every slot is freed only by its final CQE, so this is a bug;
            // the generation keeps it from touching the slot's next occupant.
            tracing::error!(
                "io_uring: CQE for a finished operation (user_data {ud:#x}, res {res})"
            );
            return;
        };
        if ud & POLL_BIT != 0 {
            self.on_poll_ready(idx, res);
            return;
        }
        let slot = self.ops.get_mut(idx).expect("slot_of found it live");
        let more = cqueue::more(flags);
        match slot.kind {
            OpKind::RecvPooled => self.on_pooled(idx, res, flags),
            OpKind::Accept if slot.multishot => {
                if res >= 0 {
                    // SAFETY: the kernel just created this descriptor for us.
                    let sock = unsafe { socket2::Socket::from_raw_fd(res) };
                    let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
                    let mut c =
                        Completion::new(OpKind::Accept, slot.key, slot.token, OpId(slot.id), Ok(0));
                    c.more = true;
                    c.extra = Extra::Accepted(sock, peer);
                    self.out.push(c);
                    if !more {
                        self.rearm(idx);
                    }
                } else if !more {
                    let errno = -res;
                    if res == -libc::ECANCELED || slot.cancelled {
                        let e = if slot.timed_out {
                            error::timed_out()
                        } else {
                            error::aborted()
                        };
                        self.finish(idx, Err(e));
                    } else if let Some(backoff) = accept_retry(errno) {
                        // Report it and keep the stream going: the
                        // application decides what to do about it. Out of
                        // descriptors or memory, retrying at once would
                        // spin, so the re-arm waits a little.
                        let mut c = Completion::new(
                            OpKind::Accept,
                            slot.key,
                            slot.token,
                            OpId(slot.id),
                            Err(io::Error::from_raw_os_error(errno)),
                        );
                        c.more = true;
                        self.out.push(c);
                        if backoff {
                            slot.submitted = false;
                            let op = slot.id;
                            self.timers.add(
                                Instant::now() + ACCEPT_BACKOFF,
                                TimerItem::Rearm { slot: idx, op },
                            );
                        } else {
                            self.rearm(idx);
                        }
                    } else {
                        self.finish(idx, Err(io::Error::from_raw_os_error(errno)));
                    }
                }
            }
            OpKind::Send | OpKind::SendTo | OpKind::Recv | OpKind::RecvFrom
                if res == -libc::EAGAIN && !slot.cancelled =>
            {
                // The kernel gave up on a retry it ran off the fast path (a
                // send continued in io-wq, say). Nothing of this attempt was
                // transferred and `done` still counts what earlier attempts
                // sent, so the operation goes on from there: poll first, so
                // it waits for the socket instead of spinning.
                slot.poll_first = true;
                EngineCounters::bump(&self.shared.counters.eagain_retries, 1);
                self.issue(idx);
            }
            OpKind::Send | OpKind::SendTo if res >= 0 => {
                let total = match &slot.mem {
                    Mem::Buf(b) | Mem::Msg(b, _) => b.len(),
                    Mem::Vectored(v, _, _) => v.iter().map(|b| b.len()).sum(),
                    _ => 0,
                };
                slot.done += res as usize;
                if slot.done < total && slot.kind == OpKind::Send {
                    if slot.cancelled {
                        let r = if slot.timed_out {
                            error::timed_out()
                        } else {
                            error::aborted()
                        };
                        self.finish(idx, Err(r));
                    } else if res == 0 {
                        self.finish(idx, Err(io::ErrorKind::WriteZero.into()));
                    } else {
                        // A short send: the rest goes next, before anything
                        // else queued on this handle.
                        self.issue(idx);
                    }
                } else {
                    let done = slot.done;
                    self.finish(idx, Ok(done));
                }
            }
            _ => {
                // A cancel that found the operation between two attempts
                // (the kernel ended the last one with EAGAIN or EINTR)
                // stops it as surely as one that found it waiting.
                let stopped = res == -libc::ECANCELED
                    || (slot.cancelled && (res == -libc::EAGAIN || res == -libc::EINTR));
                let r = if res >= 0 {
                    Ok(res as usize)
                } else if stopped && slot.timed_out {
                    Err(error::timed_out())
                } else if stopped {
                    Err(error::aborted())
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                self.finish(idx, r);
            }
        }
    }

    /// A one-shot operation (or the last CQE of a standing one) is done.
    fn finish(&mut self, idx: usize, result: io::Result<usize>) {
        let Some(mut slot) = self.ops.remove(idx) else {
            return;
        };
        self.timers.op_done(slot.id);
        let mut c = Completion::new(slot.kind, slot.key, slot.token, OpId(slot.id), result);
        if c.result.is_err() {
            // What a send sent before it failed (0 for anything else).
            c.partial = slot.done;
            if slot.done > 0 && slot.kind == OpKind::Send {
                if let Some(h) = self.handles.get_mut(&slot.hid) {
                    // Part of a message is on the wire: nothing more may
                    // follow it (see `Completion::transferred`).
                    h.send_broken |= h.stream;
                }
            }
        }
        match std::mem::replace(&mut slot.mem, Mem::None) {
            Mem::Accept(a) => {
                if let Ok(fd) = c.result {
                    // SAFETY: a successful accept returned a new descriptor we own.
                    let sock = unsafe { socket2::Socket::from_raw_fd(fd as RawFd) };
                    let peer = sockaddr_from_storage(&a.storage, a.len);
                    c.extra = Extra::Accepted(sock, peer);
                    c.result = Ok(0);
                }
            }
            Mem::Buf(mut b) => {
                if slot.kind == OpKind::Recv {
                    if let Ok(n) = c.result {
                        // SAFETY: the kernel wrote `n` bytes at `b.spare()`.
                        unsafe { b.advance(n) };
                    }
                }
                c.buf = Some(b);
            }
            Mem::Vectored(v, _, _) => c.extra = Extra::Vectored(v),
            Mem::Msg(mut b, m) => {
                if slot.kind == OpKind::RecvFrom {
                    if let Ok(n) = c.result {
                        // SAFETY: the kernel wrote `n` bytes at `b.spare()`.
                        unsafe { b.advance(n) };
                        c.extra =
                            Extra::From(sockaddr_from_storage(&m.addr.storage, m.hdr.msg_namelen));
                    }
                }
                c.buf = Some(b);
            }
            Mem::Connect(_) | Mem::None => {}
        }
        self.out.push(c);
        if slot.starved {
            self.starved.retain(|&i| i != idx);
        }
        self.release_lane(slot.hid, idx, slot.lane);
    }

    /// Frees `idx`'s place on its handle and starts the next queued
    /// operation in its lane (or, once a send broke the stream, aborts
    /// every queued write); closes the handle after its last operation.
    fn release_lane(&mut self, hid: u64, idx: usize, lane: Lane) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        if let Some(p) = h.ops.iter().position(|&i| i == idx) {
            h.ops.swap_remove(p);
        }
        if lane == Lane::Write && h.send_broken && !h.writeq.is_empty() {
            h.write_busy = false;
            let queued: Vec<usize> = h.writeq.drain(..).collect();
            // Each completes aborted and, if it was the last operation of a
            // closing handle, releases the handle.
            for i in queued {
                self.cancel_slot(i, false);
            }
            return;
        }
        let next = match lane {
            Lane::None => None,
            Lane::Read => {
                let n = h.readq.pop_front();
                h.read_busy = n.is_some();
                n
            }
            Lane::Write => {
                let n = h.writeq.pop_front();
                h.write_busy = n.is_some();
                n
            }
        };
        if h.closing && h.ops.is_empty() {
            self.handles.remove(&hid);
            return;
        }
        if let Some(n) = next {
            self.issue(n);
        }
    }

    fn rearm(&mut self, idx: usize) {
        let closing = self
            .ops
            .get(idx)
            .and_then(|s| self.handles.get(&s.hid))
            .is_none_or(|h| h.closing);
        let cancelled = self.ops.get(idx).is_none_or(|s| s.cancelled);
        if closing || cancelled {
            let r = if self.ops.get(idx).is_some_and(|s| s.timed_out) {
                error::timed_out()
            } else {
                error::aborted()
            };
            self.finish(idx, Err(r));
        } else {
            self.issue(idx);
        }
    }

    fn on_pooled(&mut self, idx: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(slot) = self.ops.get_mut(idx) else {
            return;
        };
        let (key, token, id) = (slot.key, slot.token, slot.id);
        if let Some(bid) = bid {
            let br = self
                .bufring
                .as_mut()
                .expect("buffer ids come only from the buffer ring");
            br.pool.in_kernel.fetch_sub(1, Ordering::Relaxed);
            if res > 0 {
                // SAFETY: the kernel selected buffer `bid` and wrote `res`
                // bytes into it; it is out of the ring until we republish it.
                let pb = unsafe { br.pool.lend(bid, res as usize) };
                let mut c =
                    Completion::new(OpKind::RecvPooled, key, token, OpId(id), Ok(res as usize));
                c.more = true;
                c.buf = Some(Buf::Pooled(pb));
                self.out.push(c);
            } else {
                // A buffer consumed by a CQE without data goes straight back.
                br.publish(bid);
                br.commit();
            }
        }
        if more {
            return;
        }
        // The kernel ended this arm.
        if res == -libc::ENOBUFS {
            let slot = self.ops.get_mut(idx).expect("slot checked above");
            if slot.cancelled {
                self.rearm(idx);
            } else {
                slot.starved = true;
                slot.submitted = false;
                self.starved.push(idx);
                EngineCounters::bump(&self.shared.counters.starved, 1);
                // Buffers may already be waiting to go back.
                self.recycle();
            }
        } else if res > 0 {
            // Data without F_MORE (e.g. the CQ filled on older kernels): the
            // stream goes on.
            self.rearm(idx);
        } else if res == 0 {
            self.finish(idx, Ok(0));
        } else if res == -libc::ECANCELED {
            let to = self.ops.get(idx).is_some_and(|s| s.timed_out);
            self.finish(
                idx,
                Err(if to {
                    error::timed_out()
                } else {
                    error::aborted()
                }),
            );
        } else {
            self.finish(idx, Err(io::Error::from_raw_os_error(-res)));
        }
    }

    /// Poll-mode pooled receive: the socket is readable; read into a free
    /// buffer and re-arm.
    fn on_poll_ready(&mut self, idx: usize, res: i32) {
        let Some(slot) = self.ops.get(idx) else {
            return;
        };
        let (key, token, id, cancelled, timed_out, hid) = (
            slot.key,
            slot.token,
            slot.id,
            slot.cancelled,
            slot.timed_out,
            slot.hid,
        );
        if res < 0 {
            let e = if res == -libc::ECANCELED {
                if timed_out {
                    error::timed_out()
                } else {
                    error::aborted()
                }
            } else {
                io::Error::from_raw_os_error(-res)
            };
            self.finish(idx, Err(e));
            return;
        }
        if cancelled {
            self.finish(
                idx,
                Err(if timed_out {
                    error::timed_out()
                } else {
                    error::aborted()
                }),
            );
            return;
        }
        let Some(fd) = self.handles.get(&hid).map(|h| h.fd.as_raw_fd()) else {
            return;
        };
        loop {
            let Some(bid) = self.free_bufs.pop() else {
                let slot = self.ops.get_mut(idx).expect("slot checked above");
                slot.starved = true;
                slot.submitted = false;
                self.starved.push(idx);
                EngineCounters::bump(&self.shared.counters.starved, 1);
                return;
            };
            let pool = &self.shared.pool;
            // SAFETY: `bid` is free (owned by the engine), so its memory may be
            // written; `buf_size` bytes fit in it.
            let n = unsafe {
                libc::recv(
                    fd,
                    pool.addr(bid) as *mut libc::c_void,
                    pool.buf_size,
                    // The socket is in blocking mode under io_uring.
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                // SAFETY: `recv` wrote `n` bytes into buffer `bid`, which we own.
                let pb = unsafe { pool.lend(bid, n as usize) };
                let mut c =
                    Completion::new(OpKind::RecvPooled, key, token, OpId(id), Ok(n as usize));
                c.more = true;
                c.buf = Some(Buf::Pooled(pb));
                self.out.push(c);
                if (n as usize) < pool.buf_size {
                    break;
                }
                continue;
            }
            self.free_bufs.push(bid);
            if n == 0 {
                self.finish(idx, Ok(0));
                return;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                break;
            }
            self.finish(idx, Err(e));
            return;
        }
        self.issue(idx);
    }

    /// Takes back pool buffers the application dropped; re-arms receives
    /// that starved for them.
    fn recycle(&mut self) {
        self.shared.pool.take_returned(&mut self.returned);
        if self.returned.is_empty() {
            return;
        }
        if let Some(br) = self.bufring.as_mut() {
            for bid in self.returned.drain(..) {
                br.publish(bid);
            }
            br.commit();
        } else {
            self.free_bufs.append(&mut self.returned);
        }
        let starved = std::mem::take(&mut self.starved);
        for idx in starved {
            if let Some(s) = self.ops.get_mut(idx) {
                s.starved = false;
                self.rearm(idx);
            }
        }
    }

    fn fire_timers(&mut self) {
        if self.timers.next().is_none_or(|t| t > Instant::now()) {
            return;
        }
        let mut items = std::mem::take(&mut self.expired);
        self.timers.expired(Instant::now(), &mut items);
        for it in items.drain(..) {
            match it {
                TimerItem::Post(p) => self.out.push(p),
                TimerItem::Deadline { slot, op } => {
                    if self.ops.get(slot).is_some_and(|s| s.id == op) {
                        self.cancel_slot(slot, true);
                    }
                }
                TimerItem::Rearm { slot, op } => {
                    if self
                        .ops
                        .get(slot)
                        .is_some_and(|s| s.id == op && !s.submitted)
                    {
                        self.rearm(slot);
                    }
                }
            }
        }
        self.expired = items;
    }

    /// Requests that slot `idx` end early (a cancel, a close, a deadline).
    fn cancel_slot(&mut self, idx: usize, timed_out: bool) {
        let Some(slot) = self.ops.get_mut(idx) else {
            return;
        };
        if slot.cancelled {
            return;
        }
        slot.cancelled = true;
        slot.timed_out = timed_out;
        let err = || {
            if timed_out {
                error::timed_out()
            } else {
                error::aborted()
            }
        };
        if slot.starved {
            slot.starved = false;
            self.starved.retain(|&i| i != idx);
            self.finish(idx, Err(err()));
            return;
        }
        if !slot.submitted {
            // Still waiting in its lane: take it out and complete it now.
            let hid = slot.hid;
            if let Some(h) = self.handles.get_mut(&hid) {
                h.readq.retain(|&i| i != idx);
                h.writeq.retain(|&i| i != idx);
            }
            let mut slot = self.ops.remove(idx).expect("slot checked above");
            self.timers.op_done(slot.id);
            let mut c = Completion::new(slot.kind, slot.key, slot.token, OpId(slot.id), Err(err()));
            give_back(&mut c, std::mem::replace(&mut slot.mem, Mem::None));
            self.out.push(c);
            // It held no lane, so only the handle's op list changes.
            if let Some(h) = self.handles.get_mut(&hid) {
                if let Some(p) = h.ops.iter().position(|&i| i == idx) {
                    h.ops.swap_remove(p);
                }
                if h.closing && h.ops.is_empty() {
                    self.handles.remove(&hid);
                }
            }
            return;
        }
        let poll_mode = matches!(slot.mem, Mem::None)
            && slot.kind == OpKind::RecvPooled
            && self.bufring.is_none();
        let target = if poll_mode {
            self.user_data(idx) | POLL_BIT
        } else {
            self.user_data(idx)
        };
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(CANCEL_UD);
        self.push(e);
    }

    fn close_handle(&mut self, hid: u64) {
        let Some(h) = self.handles.get_mut(&hid) else {
            return;
        };
        h.closing = true;
        if h.ops.is_empty() {
            self.handles.remove(&hid);
            return;
        }
        // Queued operations first (so lanes do not start them), then the
        // ones the kernel holds.
        let mut ops = h.ops.clone();
        ops.sort_by_key(|&i| self.ops.get(i).is_some_and(|s| s.submitted));
        for i in ops {
            self.cancel_slot(i, false);
        }
    }

    /// Stops: aborts every operation, waits until the kernel has returned
    /// every buffer, closes every descriptor. Off the owner thread this is
    /// [`abandon`](Self::abandon): it never enters the ring from there.
    pub(crate) fn shutdown(&mut self) {
        if std::thread::current().id() != self.owner {
            self.abandon();
            return;
        }
        // Commands queued before the shutdown flag went up (none can come
        // after) go first: a handle registered at the last moment must be
        // closed below too, or its operations would outlive the drain.
        self.shared.take_cmds(&mut self.cmds);
        let mut cmds = std::mem::take(&mut self.cmds);
        for cmd in cmds.drain(..) {
            self.command(cmd);
        }
        self.cmds = cmds;
        let hids: Vec<u64> = self.handles.keys().copied().collect();
        for hid in hids {
            self.close_handle(hid);
        }
        self.timers.clear();
        self.draining = true;
        let give_up = Instant::now() + Duration::from_secs(10);
        while !self.ops.is_empty() && Instant::now() < give_up {
            self.out.clear();
            self.turn(Some(Duration::from_millis(50)), true);
        }
        self.out.clear();
        // The eventfd read is the last request the kernel holds: cancel it
        // and reap its CQE, so closing the ring leaves nothing in flight
        // (the kernel cancels requests of a closed ring asynchronously).
        if self.ops.is_empty() && self.wake_armed {
            let e = opcode::AsyncCancel::new(WAKE_UD)
                .build()
                .user_data(CANCEL_UD);
            self.push(e);
            let until = Instant::now() + Duration::from_secs(2);
            while self.wake_armed && Instant::now() < until {
                let ts = types::Timespec::from(Duration::from_millis(50));
                let args = types::SubmitArgs::new().timespec(&ts);
                let r = self.ring.submitter().submit_with_args(1, &args);
                self.check_enter(r);
                self.reap();
                self.out.clear();
            }
        }
        if !self.ops.is_empty() || self.wake_armed {
            tracing::error!(
                "io_uring engine: {} operations still held by the kernel after 10 s; leaking their buffers",
                self.ops.len()
            );
            self.leak_kernel_memory();
        }
        self.handles.clear();
    }

    /// Gives up on memory the kernel may still write (operation slots, the
    /// buffer ring and its pool, the wake-up buffer): leaked, never freed
    /// under it.
    fn leak_kernel_memory(&mut self) {
        std::mem::forget(std::mem::replace(&mut self.ops, Slab::new()));
        std::mem::forget(self.bufring.take());
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
    }
}

impl UringEngine {
    /// Gives up from a thread that does not own the ring. Nothing may be
    /// submitted or reaped from here, so whatever the kernel may still hold
    /// is leaked rather than freed under it: the operation slots (buffers,
    /// addresses, iovecs), the buffer ring with its pool, the eventfd read's
    /// buffer. Descriptors are released (a request the kernel holds keeps
    /// its own reference to the socket, so the number may be reused safely),
    /// and dropping the ring afterwards closes it: the kernel then cancels
    /// what is left on its own and writes only into the leaked memory.
    pub(crate) fn abandon(&mut self) {
        if self.ops.is_empty() {
            tracing::debug!("io_uring engine stopped off its thread; leaking its buffer pool");
        } else {
            tracing::warn!(
                "io_uring engine stopped off its thread with {} operations in flight; leaking their buffers",
                self.ops.len()
            );
        }
        self.leak_kernel_memory();
        // The eventfd read's buffer went with the rest: nothing is left to
        // wait for, so `Drop` does not try to.
        self.wake_armed = false;
        self.timers.clear();
        self.out.clear();
        self.handles.clear();
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        if !self.ops.is_empty() || self.wake_armed {
            // Abandons instead when dropped off the owner thread.
            self.shutdown();
        }
    }
}

/// How long a standing accept waits before re-arming after running out of
/// descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Whether an accept error leaves the listener usable: `Some(true)` when
/// retrying must wait (out of descriptors or memory), `Some(false)` when it
/// may retry at once (the errors accept(2) says to treat like EAGAIN: a
/// connection that failed before it was accepted).
fn accept_retry(errno: i32) -> Option<bool> {
    match errno {
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Some(true),
        libc::ECONNABORTED
        | libc::EINTR
        | libc::EAGAIN
        | libc::EPROTO
        | libc::ENOPROTOOPT
        | libc::EHOSTDOWN
        | libc::ENONET
        | libc::EHOSTUNREACH
        | libc::EOPNOTSUPP
        | libc::ENETDOWN
        | libc::ENETUNREACH
        | libc::ETIMEDOUT => Some(false),
        _ => None,
    }
}

fn new_addr() -> AddrBuf {
    AddrBuf {
        // SAFETY: all-zero is a valid sockaddr_storage.
        storage: unsafe { std::mem::zeroed() },
        len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    }
}

fn new_msg() -> Box<MsgParts> {
    Box::new(MsgParts {
        // SAFETY: all-zero is a valid empty msghdr.
        hdr: unsafe { std::mem::zeroed() },
        iov: libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
        addr: new_addr(),
    })
}

/// Puts the buffers of an operation that did not run back into its
/// completion (vectored sends give back every buffer, in order).
fn give_back(c: &mut Completion, mem: Mem) {
    match mem {
        Mem::Buf(b) | Mem::Msg(b, _) => c.buf = Some(b),
        Mem::Vectored(v, _, _) => c.extra = Extra::Vectored(v),
        _ => {}
    }
}

// SAFETY: the engine's raw pointers (in msghdrs and iovecs) point only into
// heap memory the engine itself owns; moving the engine between threads
// moves that ownership with it. The ring is only *used* by the thread that
// created it (the port checks this before driving an inline engine).
unsafe impl Send for UringEngine {}
