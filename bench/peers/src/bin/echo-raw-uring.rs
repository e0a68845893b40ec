//! The ceiling: RFC 862 echo written directly on the `io-uring` crate, one thread, one ring,
//! no runtime and no abstraction layer.
//!
//! - Ring: SINGLE_ISSUER + DEFER_TASKRUN + SUBMIT_ALL and a large CQ (falls back to
//!   COOP_TASKRUN, then to a plain ring, on EINVAL).
//! - One multishot accept (re-armed whenever a CQE lacks F_MORE).
//! - One multishot recv per connection on a ring-mapped provided-buffer ring; re-armed when a
//!   CQE lacks F_MORE. On ENOBUFS the connection goes on a global starved list and is re-armed
//!   once buffers come back (as many connections as there are free buffers, once per loop).
//! - `Send` with MSG_NOSIGNAL, one in flight per connection, short sends resubmitted; received
//!   buffers queue behind it in order. A buffer goes back to the ring when its echo completes.
//! - Batched: SQEs accumulate while the CQ is drained; one `submit_and_wait(1)` per loop.
//!
//! A connection's descriptor is closed only when it has no operation in flight, so a reused
//! descriptor number can never receive a stale completion.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, SubmissionQueue, Submitter, cqueue, opcode, squeue, types};

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 32 * 1024;
/// Provided buffers: a power of two, at most 32768. 4096 x 16 KiB = 64 MiB of (lazily touched) memory.
const BUF_COUNT: u16 = 4096;
const BUF_SIZE: usize = peers::BUF_SIZE;
const BGID: u16 = 0;
const BACKLOG: i32 = 1024;

// user_data = kind << 32 | fd
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;

fn ud(kind: u64, fd: RawFd) -> u64 {
    (kind << 32) | u64::from(fd as u32)
}

/// An echo waiting to be sent: `len` bytes of provided buffer `bid`, `off` of them sent.
#[derive(Clone, Copy)]
struct Out {
    bid: u16,
    off: u32,
    len: u32,
}

#[derive(Default)]
struct Conn {
    open: bool,
    /// A multishot recv is armed (no final CQE seen yet).
    recv_armed: bool,
    /// Its recv ended with ENOBUFS; it is on the starved list.
    starved: bool,
    /// Peer sent FIN: flush what is queued, then close.
    eof: bool,
    /// Error or reset: drop queued data, close once nothing is in flight.
    closing: bool,
    /// The one send in flight.
    sending: Option<Out>,
    queue: VecDeque<Out>,
}

struct Server<'a> {
    submitter: Submitter<'a>,
    sq: SubmissionQueue<'a>,
    listen_fd: RawFd,
    conns: Vec<Conn>,
    starved: VecDeque<RawFd>,
    /// The buffer ring (page aligned, BUF_COUNT entries) and the buffers it hands out.
    ring_base: *mut types::BufRingEntry,
    bufs: *mut u8,
    /// Our private tail, published to the kernel once per loop.
    tail: u16,
    /// Buffers the kernel handed us that are not yet back in the ring.
    held: usize,
}

impl Server<'_> {
    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry built here only points at memory that outlives the operation:
            // sends point into `bufs`, which is leaked (lives for the whole process), at a buffer
            // id that this connection owns until the send's completion; recv and accept select
            // kernel-owned provided buffers or none; cancel carries no pointer.
            if unsafe { self.sq.push(entry) }.is_ok() {
                return;
            }
            // SQ full: flush it without waiting, then retry.
            self.sq.sync();
            match self.submitter.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                Err(e) => panic!("io_uring_enter: {e}"),
            }
            self.sq.sync();
        }
    }

    /// Puts buffer `bid` at the ring's private tail (published later by `publish`).
    fn give(&mut self, bid: u16) {
        let mask = BUF_COUNT - 1;
        // SAFETY: `ring_base` points to BUF_COUNT entries we allocated and never free; index
        // `tail & mask` is in bounds; the kernel only reads entries between its head and the
        // published tail, and since we hold `bid`, fewer than BUF_COUNT buffers are in the ring,
        // so this slot is outside that window (at start-up nothing is published yet) and nobody
        // else accesses it.
        let entry = unsafe { &mut *self.ring_base.add(usize::from(self.tail & mask)) };
        // SAFETY: bid < BUF_COUNT, so the offset stays inside the `bufs` allocation.
        entry.set_addr(unsafe { self.bufs.add(usize::from(bid) * BUF_SIZE) } as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn recycle(&mut self, bid: u16) {
        self.held -= 1;
        self.give(bid);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in the `resv` field of entry 0 of our ring, is a properly
        // aligned u16, and is only written by this thread; the kernel reads it concurrently,
        // hence the atomic Release store, which orders the entry writes in `give` before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring_base) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listen_fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(ACCEPT, self.listen_fd));
        self.push(&e);
    }

    fn arm_recv(&mut self, fd: RawFd) {
        self.conns[fd as usize].recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(ud(RECV, fd));
        self.push(&e);
    }

    fn start_send(&mut self, fd: RawFd, out: Out) {
        self.conns[fd as usize].sending = Some(out);
        // SAFETY: bid < BUF_COUNT and off < len <= BUF_SIZE, so the offset stays inside `bufs`.
        let ptr = unsafe {
            self.bufs
                .add(usize::from(out.bid) * BUF_SIZE + out.off as usize)
        };
        let e = opcode::Send::new(types::Fd(fd), ptr, out.len - out.off)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(SEND, fd));
        self.push(&e);
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if res >= 0 {
            let fd = res;
            let one: libc::c_int = 1;
            // SAFETY: `fd` is a socket the kernel just gave us; `one` is a valid c_int whose
            // size is passed alongside.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw const one).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, Conn::default);
            }
            self.conns[i] = Conn {
                open: true,
                ..Conn::default()
            };
            self.arm_recv(fd);
        } else {
            eprintln!("accept: {}", io::Error::from_raw_os_error(-res));
        }
        if !cqueue::more(flags) {
            self.arm_accept();
        }
    }

    fn on_recv(&mut self, fd: RawFd, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.held += 1;
        }
        let c = &mut self.conns[fd as usize];
        if !more {
            c.recv_armed = false;
        }
        if res > 0 {
            let bid = bid.expect("recv data without a buffer");
            if c.closing {
                self.recycle(bid);
                return self.maybe_close(fd);
            }
            let out = Out {
                bid,
                off: 0,
                len: res as u32,
            };
            if c.sending.is_none() {
                self.start_send(fd, out);
            } else {
                c.queue.push_back(out);
            }
            if !more {
                self.arm_recv(fd); // multishot ended for another reason (e.g. CQ pressure)
            }
            return;
        }
        if let Some(bid) = bid {
            self.recycle(bid); // a buffer can be consumed even by a 0-byte (EOF) completion
        }
        let c = &mut self.conns[fd as usize];
        match -res {
            0 => c.eof = true,
            libc::ENOBUFS if !c.closing && !more => {
                c.starved = true;
                self.starved.push_back(fd);
            }
            libc::ECANCELED if c.closing => {}
            _ => self.fail(fd),
        }
        self.maybe_close(fd);
    }

    fn on_send(&mut self, fd: RawFd, res: i32) {
        let c = &mut self.conns[fd as usize];
        let mut out = c.sending.take().expect("send completion without a send");
        if res <= 0 {
            self.recycle(out.bid);
            self.fail(fd);
            return self.maybe_close(fd);
        }
        out.off += res as u32;
        if out.off < out.len && !c.closing {
            return self.start_send(fd, out); // short send: send the rest
        }
        self.recycle(out.bid);
        let c = &mut self.conns[fd as usize];
        if !c.closing
            && let Some(next) = c.queue.pop_front()
        {
            return self.start_send(fd, next);
        }
        self.maybe_close(fd);
    }

    /// Error or reset: drop queued echoes and stop the recv; close once nothing is in flight.
    fn fail(&mut self, fd: RawFd) {
        let c = &mut self.conns[fd as usize];
        if c.closing {
            return;
        }
        c.closing = true;
        c.starved = false;
        let queued: Vec<Out> = c.queue.drain(..).collect();
        let armed = c.recv_armed;
        for out in queued {
            self.recycle(out.bid);
        }
        if armed {
            let e = opcode::AsyncCancel::new(ud(RECV, fd))
                .build()
                .user_data(ud(CANCEL, fd));
            self.push(&e);
        }
    }

    fn maybe_close(&mut self, fd: RawFd) {
        let c = &self.conns[fd as usize];
        let done = c.closing || (c.eof && c.queue.is_empty());
        if c.open && done && !c.recv_armed && c.sending.is_none() {
            self.conns[fd as usize] = Conn::default();
            // SAFETY: `fd` is an accepted socket we own, with no operation in flight on it.
            unsafe { libc::close(fd) };
        }
    }

    /// Re-arms starved connections, as many as there are buffers free in the ring.
    fn rearm_starved(&mut self) {
        let mut free = usize::from(BUF_COUNT) - self.held;
        while free > 0 {
            let Some(fd) = self.starved.pop_front() else {
                break;
            };
            let c = &mut self.conns[fd as usize];
            if !c.starved {
                continue; // closed (or re-armed) since it was listed
            }
            c.starved = false;
            self.arm_recv(fd);
            free -= 1;
        }
    }
}

fn build_ring() -> io::Result<IoUring> {
    let einval = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    match IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES)
    {
        Err(e) if einval(&e) => {
            eprintln!("SINGLE_ISSUER|DEFER_TASKRUN refused ({e}); trying COOP_TASKRUN")
        }
        r => return r,
    }
    match IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES)
    {
        Err(e) if einval(&e) => eprintln!("COOP_TASKRUN refused ({e}); using a plain ring"),
        r => return r,
    }
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
}

fn listen(addr: SocketAddr) -> io::Result<(RawFd, SocketAddr)> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    let local = sock.local_addr()?.as_socket().expect("inet address");
    Ok((sock.into_raw_fd(), local))
}

fn main() -> io::Result<()> {
    let (listen_fd, local) = listen(peers::listen_addr())?;
    let mut ring = build_ring()?;

    // The provided-buffer ring must be page aligned; both allocations live for the process.
    let layout = std::alloc::Layout::from_size_align(
        usize::from(BUF_COUNT) * size_of::<types::BufRingEntry>(),
        4096,
    )
    .unwrap();
    // SAFETY: the layout has a non-zero size.
    let ring_base = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
    assert!(!ring_base.is_null(), "out of memory");
    let bufs =
        Box::leak(vec![0u8; usize::from(BUF_COUNT) * BUF_SIZE].into_boxed_slice()).as_mut_ptr();
    // SAFETY: `ring_base` points to BUF_COUNT zeroed, page-aligned entries that are never freed,
    // so they stay valid for as long as the ring exists.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(ring_base as u64, BUF_COUNT, BGID, 0)?;
    }

    let (submitter, sq, mut cq) = ring.split();
    let mut srv = Server {
        submitter,
        sq,
        listen_fd,
        conns: Vec::new(),
        starved: VecDeque::new(),
        ring_base,
        bufs,
        tail: 0,
        held: 0,
    };
    for bid in 0..BUF_COUNT {
        srv.give(bid);
    }
    srv.arm_accept();
    peers::announce(local);

    loop {
        srv.publish();
        srv.sq.sync();
        match srv.submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        cq.sync();
        for cqe in &mut cq {
            let (kind, fd) = (cqe.user_data() >> 32, cqe.user_data() as u32 as RawFd);
            match kind {
                ACCEPT => srv.on_accept(cqe.result(), cqe.flags()),
                RECV => srv.on_recv(fd, cqe.result(), cqe.flags()),
                SEND => srv.on_send(fd, cqe.result()),
                _ => {} // CANCEL: its target's own final completion does the work
            }
        }
        cq.sync(); // hand the drained CQ slots back to the kernel
        srv.rearm_starved();
    }
}
