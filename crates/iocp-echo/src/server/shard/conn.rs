//! Connections: the echo itself. Each connection has one receive and at
//! most one (vectored) send in flight; what arrives while a send is in
//! flight goes out in the next one, so the stream keeps its order. Reading
//! pauses while `--max-pending` bytes wait to be echoed, and the peer's FIN
//! is answered with ours once everything before it is echoed. A closed
//! connection's slot is freed after the final completion of every
//! operation started on it.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Instant;

use completion_port::{is_aborted, Buf, Completion, Handle, OpId, OpKind, PooledBuf};

use super::super::stats::Global;
use super::super::table::{lock, Entry};
use super::{fmt_peer, Now, Shard};

/// Operation tokens.
const T_RECV: u64 = 1;
const T_SEND: u64 = 2;

/// Receive buffers for single-shot receives adapt between these sizes.
const RBUF_MIN: usize = 4 * 1024;
const RBUF_MAX: usize = 64 * 1024;
/// Pool buffers one connection may hold to send them as they are (queued or
/// in its send in flight); past that, or when the connections together
/// hold half the pool that way, received chunks are copied out, so peers
/// that stall cannot pin the pool every other connection receives into
/// (see `Shard::copy_out`).
const MAX_POOLED_HELD: usize = 4;
/// Buffers per vectored send.
const MAX_IOV: usize = 64;
/// Room in a buffer that pooled chunks are copied out into (later chunks
/// of the same connection are appended while it has room).
const COPY_CAP: usize = 16 * 1024;
/// Copy-out buffers a worker keeps for reuse once their send completed.
const COPY_KEEP: usize = 64;

std::thread_local! {
    /// Copy-out buffers this thread got back from completed sends: copying
    /// out is the normal path when the pool runs low (many connections
    /// busy at once), so it must not allocate per chunk. Per thread, as
    /// any worker may handle any connection; at most `COPY_KEEP` of them.
    static COPY_BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `n` bytes to copy out into.
fn copy_buf(n: usize) -> Vec<u8> {
    if n <= COPY_CAP {
        if let Ok(Some(v)) = COPY_BUFS.try_with(|b| b.borrow_mut().pop()) {
            return v;
        }
    }
    Vec::with_capacity(n.max(COPY_CAP))
}

/// Keeps a copy-out buffer whose send completed, for the next copy.
fn keep_copy_buf(mut v: Vec<u8>) {
    if v.capacity() != COPY_CAP {
        return;
    }
    v.clear();
    let _ = COPY_BUFS.try_with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < COPY_KEEP {
            b.push(v);
        }
    });
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The peer half-closed and everything was echoed.
    Done,
    Idle,
    Reset,
    Error,
    /// Closed quiet while draining.
    Drained,
    /// Cut at the drain deadline.
    Cut,
}

pub(super) struct Conn {
    pub(super) h: Handle,
    pub(super) peer: Option<SocketAddr>,
    /// The receive in flight (the standing pooled one, or a single-shot).
    recv_op: Option<OpId>,
    /// A cancel of the standing receive is on its way (read pause).
    recv_cancelling: bool,
    /// The peer's FIN arrived.
    eof: bool,
    pub(super) closing: bool,
    why: Why,
    /// Received, not yet handed to a send.
    out: VecDeque<Buf>,
    /// Bytes (and pool buffers) of the send in flight.
    inflight: Option<usize>,
    inflight_pooled: usize,
    /// Received but not yet echoed: `out` plus the send in flight.
    pub(super) pending: usize,
    pooled_held: usize,
    /// Reading stopped by the pending-bytes cap.
    read_paused: bool,
    /// Operations started and not yet finally completed.
    ops: u32,
    pub(super) last_active: Instant,
    pub(super) rx: u64,
    pub(super) tx: u64,
    rbuf: usize,
    spare: Option<Vec<u8>>,
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

impl Shard {
    /// A connection admitted into slot `idx` (locked in `e`), its socket
    /// associated as `h`: start reading, make it live.
    pub(super) fn open_conn(
        &self,
        idx: u32,
        mut e: MutexGuard<'_, Entry<Conn>>,
        h: Handle,
        peer: Option<SocketAddr>,
        now: Instant,
    ) {
        let mut conn = Box::new(Conn {
            h,
            peer,
            recv_op: None,
            recv_cancelling: false,
            eof: false,
            closing: false,
            why: Why::Done,
            out: VecDeque::new(),
            inflight: None,
            inflight_pooled: 0,
            pending: 0,
            pooled_held: 0,
            read_paused: false,
            ops: 0,
            last_active: now,
            rx: 0,
            tx: 0,
            rbuf: RBUF_MIN,
            spare: None,
        });
        Global::add(&self.g.c.conns_total, 1);
        self.g.note_admitted();
        self.issue_recv(&mut conn);
        tracing::trace!(peer = %fmt_peer(peer), slot = idx, "connection");
        let done = conn.closing && conn.ops == 0;
        e.item = Some(conn);
        if done {
            self.free(idx, e);
        }
    }

    /// Calls `f` on every live connection, then frees each that is closed
    /// and has no operation left.
    pub(super) fn for_each_conn(&self, mut f: impl FnMut(&mut Conn)) {
        for idx in 0..self.table.allocated() as u32 {
            let Some(slot) = self.table.slot(idx) else {
                continue;
            };
            let mut e = lock(slot);
            let Some(conn) = e.item.as_deref_mut() else {
                continue;
            };
            f(conn);
            if conn.closing && conn.ops == 0 {
                self.free(idx, e);
            }
        }
    }

    /// A completion of connection `idx` in generation `gen`.
    pub(super) fn on_conn(&self, idx: u32, gen: u32, mut c: Completion, now: &Now) {
        let Some(slot) = self.table.slot(idx) else {
            return;
        };
        let mut e = lock(slot);
        if e.gen != gen {
            // A packet for a connection that is gone: its buffer is
            // released with `c`, nothing else is touched.
            tracing::debug!(slot = idx, kind = ?c.kind, "stale completion dropped");
            return;
        }
        let Some(conn) = e.item.as_deref_mut() else {
            return;
        };
        match c.kind {
            OpKind::RecvPooled => self.on_recv_pooled(conn, &mut c, now),
            OpKind::Recv => self.on_recv(conn, &mut c, now),
            OpKind::Send => self.on_send(conn, &mut c, now),
            _ => {}
        }
        self.progress(conn);
        if conn.closing && conn.ops == 0 {
            self.free(idx, e);
        }
    }

    fn free(&self, idx: u32, e: MutexGuard<'_, Entry<Conn>>) {
        let (conn, left) = self.table.free(idx, e);
        self.g.release();
        if let Some(conn) = conn {
            tracing::debug!(peer = %fmt_peer(conn.peer), rx = conn.rx, tx = conn.tx, why = ?conn.why, "connection closed");
            // Every connection the drain counted ends here as drained, or
            // was counted as cut when the deadline closed it.
            if left.sealed && conn.why != Why::Cut {
                Global::add(&self.g.c.drained, 1);
            }
        }
        if left.live == 0 && left.sealed {
            self.quit();
        }
    }

    /// The standing pooled receive: data (`more`), then one final packet.
    fn on_recv_pooled(&self, conn: &mut Conn, c: &mut Completion, now: &Now) {
        let buf = c.take_buf();
        if c.more {
            if let (Ok(n), Some(buf)) = (&c.result, buf) {
                if *n > 0 {
                    self.take_data(conn, buf, now);
                }
            }
            return;
        }
        conn.ops -= 1;
        conn.recv_op = None;
        conn.recv_cancelling = false;
        if let Some(buf) = buf {
            if !buf.is_empty() {
                self.take_data(conn, buf, now);
            }
        }
        match &c.result {
            Ok(0) => conn.eof = true,
            // The stream ended with data (or our read-pause cancel won):
            // `progress` re-arms when there is room.
            Ok(_) => {}
            Err(e) if is_aborted(e) => {}
            Err(e) => self.fail(conn, e, "recv"),
        }
    }

    /// A single-shot receive (pool model with several workers).
    fn on_recv(&self, conn: &mut Conn, c: &mut Completion, now: &Now) {
        conn.ops -= 1;
        conn.recv_op = None;
        self.g.c.recv_buffers_pinned.fetch_sub(1, Ordering::Relaxed);
        let buf = c.take_buf();
        match &c.result {
            Ok(0) => {
                conn.eof = true;
                if let Some(Buf::Vec(v)) = buf {
                    conn.spare = Some(v);
                }
            }
            Ok(n) => {
                let n = *n;
                // Adapt the next buffer: grow while reads fill it, shrink
                // when they use a quarter of it.
                if n >= conn.rbuf {
                    conn.rbuf = (conn.rbuf * 2).min(RBUF_MAX);
                } else if n < conn.rbuf / 4 {
                    conn.rbuf = (conn.rbuf / 2).max(RBUF_MIN);
                }
                if let Some(buf) = buf {
                    self.take_data(conn, buf, now);
                }
            }
            Err(e) if is_aborted(e) && conn.closing => {}
            Err(e) => self.fail(conn, e, "recv"),
        }
    }

    /// Queues received bytes for echo.
    fn take_data(&self, conn: &mut Conn, buf: Buf, now: &Now) {
        let n = buf.len();
        Global::add(&self.g.c.bytes_in, n as u64);
        conn.rx += n as u64;
        self.touch(conn, now);
        if conn.closing {
            return;
        }
        conn.pending += n;
        match buf {
            Buf::Pooled(p) if self.copy_out(conn, &p) => {
                // Copy out and give the pool buffer back at once.
                Global::add(&self.g.c.pooled_copied, 1);
                match conn.out.back_mut() {
                    Some(Buf::Vec(v)) if v.capacity() - v.len() >= n => v.extend_from_slice(&p),
                    _ => {
                        let mut v = copy_buf(n);
                        v.extend_from_slice(&p);
                        conn.out.push_back(Buf::Vec(v));
                    }
                }
            }
            Buf::Pooled(p) => {
                self.hold(conn, 1);
                conn.out.push_back(Buf::Pooled(p));
            }
            other => conn.out.push_back(other),
        }
    }

    /// Whether a chunk received into a pool buffer is copied out (and the
    /// buffer given back at once) rather than sent from its pool buffer:
    ///
    /// - when `conn` holds `MAX_POOLED_HELD` already, or the connections'
    ///   sends hold half the pool: a send to a peer that does not read never
    ///   completes, so such sends pin at most half the pool;
    /// - when seven eighths of the pool are lent (to receives not yet
    ///   handled, and sends): a buffer copied out comes back before its
    ///   echo's completion, so receives do not starve.
    ///
    /// Buffers lent to receives just completed count only in the second:
    /// they come back as soon as they are handled. With the pool sized to
    /// the busy connections (about two buffers each: the one being echoed
    /// until its send's completion is handled, and the one the next message
    /// lands in meanwhile) neither applies, and every chunk goes out in its
    /// own pool buffer, without a copy.
    ///
    /// Asked for every chunk, so it reads no port-wide statistics: the
    /// pool's size is the shard's (read once), the buffers the sends hold
    /// are the shard's own count, and the buffers lent are read from the
    /// pool of the chunk `p` (the port's one engine's).
    fn copy_out(&self, conn: &Conn, p: &PooledBuf) -> bool {
        if conn.pooled_held >= MAX_POOLED_HELD {
            return true;
        }
        let total = self.pool_total;
        self.pooled_held.load(Ordering::Relaxed) * 2 >= total || p.pool_in_use() * 8 >= total * 7
    }

    /// `n` more pool buffers held by `conn` to send them as they are.
    fn hold(&self, conn: &mut Conn, n: usize) {
        conn.pooled_held += n;
        self.pooled_held.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` pool buffers `conn` held for sending are gone (sent, failed, or
    /// dropped at close).
    fn unhold(&self, conn: &mut Conn, n: usize) {
        if n > 0 {
            conn.pooled_held -= n;
            self.pooled_held.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn on_send(&self, conn: &mut Conn, c: &mut Completion, now: &Now) {
        conn.ops -= 1;
        let bytes = conn.inflight.take().unwrap_or(0);
        let pooled = std::mem::take(&mut conn.inflight_pooled);
        self.unhold(conn, pooled);
        match &c.result {
            Ok(_) => {
                self.sent(conn, bytes, now);
                // What the send hands back: pool buffers (dropped here,
                // back to the pool) and vectors, reused as copy-out buffers
                // (pooled receive) or as the next receive's buffer when of
                // the right size (single-shot receive). A send hands back
                // either its one buffer or (vectored) its vector of them:
                // a plain send makes no vector to iterate and drop.
                match c.take_buf() {
                    Some(b) => self.reuse_sent(conn, b),
                    None => {
                        for b in c.take_bufs() {
                            self.reuse_sent(conn, b);
                        }
                    }
                }
            }
            Err(e) if is_aborted(e) && conn.closing => {}
            Err(e) => self.fail(conn, e, "send"),
        }
    }

    /// A buffer a completed send handed back (see `on_send`).
    fn reuse_sent(&self, conn: &mut Conn, b: Buf) {
        let Buf::Vec(mut v) = b else { return };
        if self.pooled {
            keep_copy_buf(v);
        } else if conn.spare.is_none() && v.capacity() == conn.rbuf {
            v.clear();
            conn.spare = Some(v);
        }
    }

    /// Traffic on `conn`: its quiet starts again now — recorded only while
    /// a sweep judges quiet (an idle timeout is set, or the shard drains),
    /// so that an echo costs no clock reading otherwise (see
    /// [`Shard::begin_drain`] for the switch).
    fn touch(&self, conn: &mut Conn, now: &Now) {
        if self.judges_quiet() {
            conn.last_active = now.get();
        }
    }

    fn sent(&self, conn: &mut Conn, bytes: usize, now: &Now) {
        conn.pending = conn.pending.saturating_sub(bytes);
        conn.tx += bytes as u64;
        self.touch(conn, now);
        Global::add(&self.g.c.bytes_out, bytes as u64);
        if self.draining.load(Ordering::Relaxed) {
            Global::add(&self.g.c.drain_bytes, bytes as u64);
        }
    }

    /// After every event: start the next send, finish a half-closed
    /// connection, resume or pause reading.
    fn progress(&self, conn: &mut Conn) {
        if conn.closing {
            return;
        }
        if conn.inflight.is_none() && !conn.out.is_empty() {
            self.issue_send(conn);
            if conn.closing {
                return;
            }
        }
        if conn.eof && conn.recv_op.is_none() && conn.pending == 0 {
            // Everything the peer sent before its FIN is echoed: send ours.
            let _ = conn.h.with_socket(|s| s.shutdown(Shutdown::Write));
            self.close(conn, Why::Done);
            return;
        }
        let cap = self.g.cfg.max_pending;
        match conn.recv_op {
            None if !conn.eof && conn.pending < cap => {
                conn.read_paused = false;
                self.issue_recv(conn);
            }
            // Backpressure: stop the standing receive; `progress` starts a
            // new one once the sends drain below the cap.
            Some(op)
                if self.pooled
                    && conn.pending >= cap
                    && !conn.recv_cancelling
                    && conn.h.cancel(op).is_ok() =>
            {
                conn.recv_cancelling = true;
                self.note_pause(conn);
            }
            // Single-shot receives are simply not re-armed above the cap.
            None if !conn.eof => self.note_pause(conn),
            _ => {}
        }
    }

    fn note_pause(&self, conn: &mut Conn) {
        if !conn.read_paused {
            conn.read_paused = true;
            Global::add(&self.g.c.read_pauses, 1);
            tracing::trace!(peer = %fmt_peer(conn.peer), pending = conn.pending, "read paused");
        }
    }

    /// ④ WSARecv: the standing pooled receive, or one single-shot receive.
    fn issue_recv(&self, conn: &mut Conn) {
        let r = if self.pooled {
            self.port.recv_pooled(&conn.h, T_RECV)
        } else {
            let buf = match conn.spare.take() {
                Some(v) if v.capacity() == conn.rbuf => v,
                _ => Vec::with_capacity(conn.rbuf),
            };
            self.port.recv(&conn.h, buf, T_RECV)
        };
        match r {
            Ok(op) => {
                conn.recv_op = Some(op);
                conn.ops += 1;
                if !self.pooled {
                    Global::add(&self.g.c.recv_buffers_pinned, 1);
                }
            }
            Err(e) => self.fail(conn, &e.error, "recv"),
        }
    }

    /// ④ WSASend: everything queued, in one (vectored) send; the next one
    /// starts from this one's completion, so the stream keeps its order.
    fn issue_send(&self, conn: &mut Conn) {
        if conn.out.len() == 1 {
            // The common case (one chunk received since the last send): no
            // vector to build.
            let b = conn.out.pop_front().expect("one buffer");
            let (bytes, pooled) = (b.len(), usize::from(matches!(b, Buf::Pooled(_))));
            let r = self.port.send(&conn.h, b, T_SEND);
            return self.sending(conn, r.map(|_| ()), bytes, pooled);
        }
        let mut bufs = Vec::with_capacity(conn.out.len().min(MAX_IOV));
        let mut bytes = 0;
        let mut pooled = 0;
        while bufs.len() < MAX_IOV {
            let Some(b) = conn.out.pop_front() else { break };
            bytes += b.len();
            pooled += usize::from(matches!(b, Buf::Pooled(_)));
            bufs.push(b);
        }
        let r = self.port.send_vectored(&conn.h, bufs, T_SEND);
        self.sending(conn, r.map(|_| ()), bytes, pooled);
    }

    /// A send of `bytes` (`pooled` of its buffers from the pool) started,
    /// or could not.
    fn sending(
        &self,
        conn: &mut Conn,
        r: Result<(), completion_port::SubmitError>,
        bytes: usize,
        pooled: usize,
    ) {
        match r {
            Ok(()) => {
                conn.ops += 1;
                conn.inflight = Some(bytes);
                conn.inflight_pooled = pooled;
            }
            Err(e) => {
                self.unhold(conn, pooled);
                self.fail(conn, &e.error, "send");
            }
        }
    }

    fn fail(&self, conn: &mut Conn, e: &io::Error, what: &str) {
        if conn.closing {
            return;
        }
        if is_reset(e) {
            Global::add(&self.g.c.resets, 1);
            tracing::debug!(peer = %fmt_peer(conn.peer), "{what}: {e}");
            self.close(conn, Why::Reset);
        } else {
            Global::add(&self.g.c.errors, 1);
            tracing::debug!(peer = %fmt_peer(conn.peer), "{what}: {e}");
            self.close(conn, Why::Error);
        }
    }

    /// `closesocket`: every pending operation still completes (aborted);
    /// the slot is freed after the last of them.
    pub(super) fn close(&self, conn: &mut Conn, why: Why) {
        if conn.closing {
            return;
        }
        conn.closing = true;
        conn.why = why;
        conn.h.close();
        let queued = conn
            .out
            .iter()
            .filter(|b| matches!(b, Buf::Pooled(_)))
            .count();
        self.unhold(conn, queued);
        conn.out.clear();
        conn.spare = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_buffers_are_reused_not_reallocated() {
        let v = copy_buf(64);
        assert_eq!(v.capacity(), COPY_CAP);
        let mut v = v;
        v.extend_from_slice(&[7; 64]);
        let ptr = v.as_ptr();
        keep_copy_buf(v);
        let again = copy_buf(100);
        assert_eq!(again.as_ptr(), ptr, "the kept buffer comes back");
        assert!(again.is_empty());
        // A chunk larger than the kept buffers gets its own, never kept.
        let big = copy_buf(COPY_CAP + 1);
        assert!(big.capacity() > COPY_CAP);
        keep_copy_buf(big);
        keep_copy_buf(again);
        let n = COPY_BUFS.with(|b| b.borrow().len());
        assert_eq!(n, 1);
        // At most COPY_KEEP are kept.
        for _ in 0..COPY_KEEP + 10 {
            keep_copy_buf(Vec::with_capacity(COPY_CAP));
        }
        assert_eq!(COPY_BUFS.with(|b| b.borrow().len()), COPY_KEEP);
    }
}
