//! One port and everything that happens on it: listeners (standing accept
//! with EMFILE back-off), connections (echo with a pending-bytes cap and
//! half-close), UDP sockets (rate-limited echo), timers (idle sweep, drain
//! deadline) and control packets (shutdown, quit).
//!
//! In the pool model one `Shard` is shared by every worker thread; in the
//! per-core model each shard thread owns one. Every packet is routed by its
//! completion key: the top two bits say what it names (connection, listener,
//! UDP socket, control), the rest says which one.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocp::{is_aborted, Buf, Completion, GetError, Handle, OpId, OpKind, Port};
use socket2::Socket;

use super::listen::Proto;
use super::stats::Global;
use super::table::{self, lock, Refused, Table};

const TAG_MASK: u64 = 3 << 62;
const TAG_CONN: u64 = 0;
const TAG_LISTENER: u64 = 1 << 62;
const TAG_UDP: u64 = 2 << 62;
/// The key of control packets (`post`, `post_after`).
pub(crate) const CTRL_KEY: u64 = 3 << 62;

/// Control tokens.
pub(crate) const C_SHUTDOWN: u64 = 1;
pub(crate) const C_CUT: u64 = 2;
const C_DEADLINE: u64 = 3;
const C_QUIT: u64 = 4;
const C_FORCE_QUIT: u64 = 5;
/// Sweep timers carry `C_SWEEP | epoch << 8`, so a superseded chain stops.
const C_SWEEP: u64 = 6;

/// Operation tokens.
const T_RECV: u64 = 1;
const T_SEND: u64 = 2;
const T_ACCEPT: u64 = 3;
const T_RESUME: u64 = 4;
const T_URECV: u64 = 5;
const T_USEND: u64 = 6;

/// Accept back-off after EMFILE/ENFILE: first pause, and the cap (which
/// bounds how long after descriptors free up accepting resumes).
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Receive buffers for single-shot receives adapt between these sizes.
const RBUF_MIN: usize = 4 * 1024;
const RBUF_MAX: usize = 64 * 1024;
/// Pool buffers one connection may hold in its send queue; past that (or
/// when the pool runs low) received chunks are copied out so a stalled peer
/// cannot pin the pool every other connection receives into.
const MAX_POOLED_HELD: usize = 4;
/// Buffers per vectored send.
const MAX_IOV: usize = 64;
/// While draining, a connection with nothing to echo and no traffic for
/// this long is closed gracefully.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The sweep period while draining; the first drain sweep comes this long
/// after the drain begins (not at once: the drain packet may be handled
/// late, after a stall whose packets the port still holds).
const DRAIN_SWEEP: Duration = Duration::from_millis(50);
/// UDP receives kept outstanding per socket.
const UDP_RECVS: usize = 4;
const UDP_BUF: usize = 65_536;

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
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

struct Conn {
    h: Handle,
    peer: Option<SocketAddr>,
    /// The receive in flight (the standing pooled one, or a single-shot).
    recv_op: Option<OpId>,
    /// A cancel of the standing receive is on its way (read pause).
    recv_cancelling: bool,
    /// The peer's FIN arrived.
    eof: bool,
    closing: bool,
    why: Why,
    /// Received, not yet handed to a send.
    out: VecDeque<Buf>,
    /// Bytes (and pool buffers) of the send in flight.
    inflight: Option<usize>,
    inflight_pooled: usize,
    /// Received but not yet echoed: `out` plus the send in flight.
    pending: usize,
    pooled_held: usize,
    /// Reading stopped by the pending-bytes cap.
    read_paused: bool,
    /// Operations started and not yet finally completed.
    ops: u32,
    last_active: Instant,
    rx: u64,
    tx: u64,
    rbuf: usize,
    spare: Option<Vec<u8>>,
}

struct Listener {
    h: Handle,
    addr: SocketAddr,
    op: Option<OpId>,
    cancelling: bool,
    paused: bool,
    stopped: bool,
    backoff: Duration,
    last_warn: Option<Instant>,
    quiet_pauses: u64,
}

struct Udp {
    h: Handle,
    addr: SocketAddr,
    closed: AtomicBool,
}

pub(crate) struct Shard {
    id: usize,
    port: Port,
    g: Arc<Global>,
    table: Table<Conn>,
    listeners: Vec<Mutex<Listener>>,
    udps: Vec<Udp>,
    /// Standing pooled receives (safe when one thread handles the port).
    pooled: bool,
    draining: AtomicBool,
    quit_posted: AtomicBool,
    sweep: Mutex<Sweep>,
}

/// The sweep timer chain: a sweep packet whose epoch is not the current one
/// belongs to a superseded chain and is dropped. `due` is when the current
/// chain's next sweep should run: a sweep judges quiet at that instant, not
/// when it finally runs, so a server that was too busy (or descheduled) to
/// run it on time does not count its own delay as the connections' silence;
/// their packets of that time may still wait in the port.
struct Sweep {
    epoch: u64,
    due: Instant,
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Accept errors that mean "out of descriptors or memory": back off.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        // WSAEMFILE, WSAENOBUFS
        matches!(e.raw_os_error(), Some(10024) | Some(10055))
    }
}

impl Shard {
    /// Associates this shard's sockets with its port.
    pub(crate) fn new(
        id: usize,
        port: Port,
        g: Arc<Global>,
        socks: Vec<(Proto, SocketAddr, Socket)>,
        pooled: bool,
    ) -> io::Result<Shard> {
        let mut listeners = Vec::new();
        let mut udps = Vec::new();
        for (proto, addr, s) in socks {
            match proto {
                Proto::Tcp => {
                    let key = TAG_LISTENER | listeners.len() as u64;
                    let h = port.associate(s, key)?;
                    listeners.push(Mutex::new(Listener {
                        h,
                        addr,
                        op: None,
                        cancelling: false,
                        paused: false,
                        stopped: false,
                        backoff: BACKOFF_MIN,
                        last_warn: None,
                        quiet_pauses: 0,
                    }));
                }
                Proto::Udp => {
                    let key = TAG_UDP | udps.len() as u64;
                    let h = port.associate(s, key)?;
                    udps.push(Udp {
                        h,
                        addr,
                        closed: AtomicBool::new(false),
                    });
                }
            }
        }
        let cap = g.cfg.max_conns;
        Ok(Shard {
            id,
            port,
            g,
            table: Table::new(cap),
            listeners,
            udps,
            pooled,
            draining: AtomicBool::new(false),
            quit_posted: AtomicBool::new(false),
            sweep: Mutex::new(Sweep {
                epoch: 0,
                due: Instant::now(),
            }),
        })
    }

    /// `listening on` lines: `tcp://…` and `udp://…`, in binding order.
    pub(crate) fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("tcp://{}", lock(l).addr))
            .collect();
        v.extend(self.udps.iter().map(|u| format!("udp://{}", u.addr)));
        v
    }

    /// Starts the standing accepts, the UDP receives and the sweep timer.
    pub(crate) fn start(&self) {
        for (i, l) in self.listeners.iter().enumerate() {
            let mut l = lock(l);
            self.start_accept(&mut l, i);
        }
        for (i, u) in self.udps.iter().enumerate() {
            for _ in 0..UDP_RECVS {
                self.udp_recv(u, i);
            }
        }
        let mut sw = lock(&self.sweep);
        self.schedule_sweep(&mut sw, self.sweep_period());
        drop(sw);
        tracing::debug!(shard = self.id, pooled_recv = self.pooled, "shard started");
    }

    /// A worker: ⑤ wait for completions, handle them, ④ issue the next I/O.
    pub(crate) fn worker_loop(&self, wid: usize) {
        let mut batch = Vec::with_capacity(64);
        let max = if self.pooled { 256 } else { 16 };
        loop {
            match self.port.get_many(&mut batch, max, None) {
                Ok(_) => {}
                Err(GetError::TimedOut) => continue,
                Err(GetError::Abandoned) => break,
            }
            let now = Instant::now();
            if let Some(c) = self.g.completions.get(wid) {
                c.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            let mut quit = false;
            for c in batch.drain(..) {
                quit |= self.handle(c, now);
            }
            if quit {
                break;
            }
        }
        tracing::debug!(shard = self.id, worker = wid, "worker done");
    }

    /// Routes one packet. Returns `true` when this worker should stop.
    fn handle(&self, c: Completion, now: Instant) -> bool {
        match c.key & TAG_MASK {
            TAG_CONN => self.on_conn(c, now),
            TAG_LISTENER => self.on_listener(c, now),
            TAG_UDP => self.on_udp(c, now),
            _ => return self.on_ctrl(c, now),
        }
        false
    }

    // ---------------------------------------------------------------- control

    fn on_ctrl(&self, c: Completion, now: Instant) -> bool {
        match c.token & 0xff {
            C_SHUTDOWN => self.begin_drain(),
            C_CUT => {
                self.begin_drain();
                self.cut("cut requested");
            }
            C_DEADLINE => self.cut("drain timeout"),
            C_SWEEP => {
                let mut sw = lock(&self.sweep);
                if c.token >> 8 == sw.epoch {
                    self.sweep(sw.due.min(now));
                    self.schedule_sweep(&mut sw, self.sweep_period());
                }
            }
            C_QUIT => {
                // Pass it on: every worker of the port gets one, however
                // many a `get_many` batch happened to hold (B.9 #9).
                let _ = self.port.post(CTRL_KEY, 0, C_QUIT);
                return true;
            }
            C_FORCE_QUIT => {
                tracing::warn!(
                    shard = self.id,
                    left = self.table.len(),
                    "connections still finishing 2s after the cut; quitting anyway"
                );
                self.quit();
            }
            other => tracing::debug!("unknown control packet {other}"),
        }
        false
    }

    fn quit(&self) {
        if !self.quit_posted.swap(true, Ordering::AcqRel) {
            let _ = self.port.post(CTRL_KEY, 0, C_QUIT);
        }
    }

    fn sweep_period(&self) -> Duration {
        if self.draining.load(Ordering::Acquire) {
            return DRAIN_SWEEP;
        }
        match self.g.cfg.idle_timeout {
            Some(d) => (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            None => Duration::from_secs(1),
        }
    }

    /// Schedules the next sweep of the current chain.
    fn schedule_sweep(&self, sw: &mut Sweep, after: Duration) {
        sw.due = Instant::now() + after;
        let _ = self
            .port
            .post_after(after, CTRL_KEY, C_SWEEP | sw.epoch << 8);
    }

    /// First SIGINT/SIGTERM: stop accepting, close UDP, let connections
    /// finish, cut them at the deadline.
    fn begin_drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        for l in &self.listeners {
            let mut l = lock(l);
            l.stopped = true;
            l.h.close();
        }
        for u in &self.udps {
            u.closed.store(true, Ordering::Release);
            u.h.close();
        }
        // From here on no connection is admitted: the count is exactly
        // the connections this drain finishes (drained) or cuts.
        let open = self.table.seal();
        Global::add(&self.g.c.drain_open, open as u64);
        tracing::info!(
            shard = self.id,
            open,
            "draining: accepts stopped; {open} connection(s) finishing"
        );
        let _ = self
            .port
            .post_after(self.g.cfg.drain_timeout, CTRL_KEY, C_DEADLINE);
        let mut sw = lock(&self.sweep);
        sw.epoch += 1;
        self.schedule_sweep(&mut sw, DRAIN_SWEEP);
        drop(sw);
        if open == 0 {
            self.quit();
        }
    }

    /// The drain deadline (or a second signal, `why`): close whatever is
    /// still open, and say so.
    fn cut(&self, why: &str) {
        let mut cut = 0u64;
        let mut bytes = 0u64;
        for idx in 0..self.table.allocated() as u32 {
            let Some(slot) = self.table.slot(idx) else {
                continue;
            };
            let mut e = lock(slot);
            let Some(conn) = e.item.as_deref_mut() else {
                continue;
            };
            if !conn.closing {
                cut += 1;
                bytes += conn.pending as u64;
                if cut <= 16 {
                    tracing::warn!(
                        shard = self.id,
                        peer = %fmt_peer(conn.peer),
                        pending = conn.pending,
                        rx = conn.rx,
                        tx = conn.tx,
                        "{why}: cutting connection"
                    );
                }
                self.close(conn, Why::Cut);
            }
            if conn.ops == 0 {
                self.free(idx, e);
            }
        }
        if cut > 16 {
            tracing::warn!(
                shard = self.id,
                "{why}: … and {} more connection(s) cut",
                cut - 16
            );
        }
        Global::add(&self.g.c.cut, cut);
        Global::add(&self.g.c.cut_bytes, bytes);
        if self.table.len() == 0 {
            self.quit();
        } else {
            let _ = self
                .port
                .post_after(Duration::from_secs(2), CTRL_KEY, C_FORCE_QUIT);
        }
    }

    /// Idle timeout, and while draining, closing quiet connections; `now`
    /// is the instant quiet is judged at.
    fn sweep(&self, now: Instant) {
        let idle = self.g.cfg.idle_timeout;
        let draining = self.draining.load(Ordering::Acquire);
        if self.id == 0 && !self.udps.is_empty() {
            lock(&self.g.udp_limiter).prune(now);
        }
        if !draining && idle.is_none() {
            return;
        }
        for idx in 0..self.table.allocated() as u32 {
            let Some(slot) = self.table.slot(idx) else {
                continue;
            };
            let mut e = lock(slot);
            let Some(conn) = e.item.as_deref_mut() else {
                continue;
            };
            if conn.closing {
                continue;
            }
            let quiet = now.saturating_duration_since(conn.last_active);
            if draining && conn.pending == 0 && quiet >= DRAIN_QUIET {
                let _ = conn.h.with_socket(|s| s.shutdown(Shutdown::Write));
                self.close(conn, Why::Drained);
            } else if idle.is_some_and(|d| quiet >= d) {
                tracing::debug!(peer = %fmt_peer(conn.peer), idle = %humantime::format_duration(quiet), "idle timeout");
                Global::add(&self.g.c.idle_closed, 1);
                self.close(conn, Why::Idle);
            }
            if conn.closing && conn.ops == 0 {
                self.free(idx, e);
            }
        }
    }

    // -------------------------------------------------------------- listeners

    fn start_accept(&self, l: &mut Listener, i: usize) {
        if l.stopped {
            return;
        }
        match self.port.accept_stream(&l.h, T_ACCEPT) {
            Ok(op) => l.op = Some(op),
            Err(e) => {
                if self.port.is_closed() || l.h.is_closed() {
                    l.stopped = true;
                } else {
                    tracing::error!("accept on tcp://{}: cannot start: {}", l.addr, e.error);
                    self.pause_accepts(l, i, &e.error);
                }
            }
        }
    }

    /// Stops accepting on `l` for a while (EMFILE and friends). The
    /// standing accept is cancelled (the engine would otherwise retry at
    /// once, a busy loop) and a timer brings it back.
    fn pause_accepts(&self, l: &mut Listener, i: usize, e: &io::Error) {
        if l.paused || l.stopped {
            return;
        }
        l.paused = true;
        self.g.accepts_paused(true);
        Global::add(&self.g.c.accept_pauses, 1);
        if let (Some(op), false) = (l.op, l.cancelling) {
            let _ = l.h.cancel(op);
            l.cancelling = true;
        }
        let d = l.backoff;
        l.backoff = (d * 2).min(BACKOFF_MAX);
        let now = Instant::now();
        let due = match l.last_warn {
            None => true,
            Some(t) => now.duration_since(t) >= Duration::from_secs(5),
        };
        if due {
            let also = std::mem::take(&mut l.quiet_pauses);
            let also = if also > 0 {
                format!(" ({also} more pause(s) since the last report)")
            } else {
                String::new()
            };
            tracing::warn!(
                "accept on tcp://{}: {e}; pausing accepts for {}{also}",
                l.addr,
                humantime::format_duration(d)
            );
            l.last_warn = Some(now);
        } else {
            l.quiet_pauses += 1;
        }
        if self
            .port
            .post_after(d, TAG_LISTENER | i as u64, T_RESUME)
            .is_err()
        {
            l.stopped = true;
        }
    }

    fn on_listener(&self, mut c: Completion, now: Instant) {
        let i = (c.key & !TAG_MASK) as usize;
        let Some(lm) = self.listeners.get(i) else {
            return;
        };
        if c.kind == OpKind::Timer {
            let mut l = lock(lm);
            if std::mem::take(&mut l.paused) {
                self.g.accepts_paused(false);
            }
            if l.op.is_none() {
                self.start_accept(&mut l, i);
            }
            // Otherwise the cancelled stream has not ended yet; its final
            // completion restarts it.
            return;
        }
        if c.kind != OpKind::Accept {
            return;
        }
        let accepted = c.take_accepted();
        if !c.more {
            let mut l = lock(lm);
            if l.op == Some(c.op) {
                l.op = None;
                l.cancelling = false;
            }
            if let Err(e) = &c.result {
                if !is_aborted(e) && !l.stopped {
                    Global::add(&self.g.c.accept_errors, 1);
                    tracing::error!("accept on tcp://{}: the accept stream ended: {e}", l.addr);
                    self.pause_accepts(&mut l, i, e);
                }
            }
            if !l.paused && !l.stopped && l.op.is_none() {
                self.start_accept(&mut l, i);
            }
        } else if let Err(e) = &c.result {
            Global::add(&self.g.c.accept_errors, 1);
            if is_resource_exhaustion(e) {
                let mut l = lock(lm);
                self.pause_accepts(&mut l, i, e);
            } else {
                tracing::debug!("accept: {e}");
            }
        }
        if let Some((sock, peer)) = accepted {
            {
                let mut l = lock(lm);
                if !l.paused {
                    l.backoff = BACKOFF_MIN;
                }
            }
            self.admit(sock, peer, now);
        }
    }

    /// ③ for a new socket: admit it (or not), associate it, start reading.
    fn admit(&self, sock: Socket, peer: Option<SocketAddr>, now: Instant) {
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        if !self.g.try_admit() {
            Global::add(&self.g.c.rejected, 1);
            if self.g.warn_rejects() {
                tracing::warn!(
                    peer = %fmt_peer(peer),
                    max_conns = self.g.cfg.max_conns,
                    "--max-conns reached: closing new connections at once (counted as rejected)"
                );
            }
            return;
        }
        let _ = sock.set_tcp_nodelay(true);
        let (idx, mut e) = match self.table.alloc() {
            Ok(slot) => slot,
            Err(why) => {
                self.g.release();
                // Sealed: the drain began meanwhile; the socket closes
                // unserved, like one accepted after the drain.
                if why == Refused::Full {
                    Global::add(&self.g.c.rejected, 1);
                }
                return;
            }
        };
        let h = match self.port.associate(sock, table::key(idx, e.gen)) {
            Ok(h) => h,
            Err(err) => {
                tracing::warn!(peer = %fmt_peer(peer), "cannot associate a new connection: {err}");
                let left = self.table.abandon(idx, e);
                self.g.release();
                if left.sealed {
                    // Counted open by the drain; closed with nothing read.
                    Global::add(&self.g.c.drained, 1);
                    if left.live == 0 {
                        self.quit();
                    }
                }
                return;
            }
        };
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

    // ------------------------------------------------------------ connections

    fn on_conn(&self, mut c: Completion, now: Instant) {
        let (idx, gen) = table::split(c.key);
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

    fn free(&self, idx: u32, e: std::sync::MutexGuard<'_, table::Entry<Conn>>) {
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
    fn on_recv_pooled(&self, conn: &mut Conn, c: &mut Completion, now: Instant) {
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
    fn on_recv(&self, conn: &mut Conn, c: &mut Completion, now: Instant) {
        conn.ops -= 1;
        conn.recv_op = None;
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
    fn take_data(&self, conn: &mut Conn, buf: Buf, now: Instant) {
        let n = buf.len();
        Global::add(&self.g.c.bytes_in, n as u64);
        conn.rx += n as u64;
        conn.last_active = now;
        if conn.closing {
            return;
        }
        conn.pending += n;
        match buf {
            Buf::Pooled(p) if conn.pooled_held >= MAX_POOLED_HELD || self.pool_low() => {
                // Copy out and give the pool buffer back at once.
                match conn.out.back_mut() {
                    Some(Buf::Vec(v)) if v.capacity() - v.len() >= n => v.extend_from_slice(&p),
                    _ => {
                        let mut v = Vec::with_capacity(n.max(RBUF_MAX));
                        v.extend_from_slice(&p);
                        conn.out.push_back(Buf::Vec(v));
                    }
                }
            }
            Buf::Pooled(p) => {
                conn.pooled_held += 1;
                conn.out.push_back(Buf::Pooled(p));
            }
            other => conn.out.push_back(other),
        }
    }

    fn pool_low(&self) -> bool {
        let s = self.port.pool_stats();
        s.in_use * 2 > s.total
    }

    fn on_send(&self, conn: &mut Conn, c: &mut Completion, now: Instant) {
        conn.ops -= 1;
        let bytes = conn.inflight.take().unwrap_or(0);
        conn.pooled_held -= std::mem::take(&mut conn.inflight_pooled);
        let returned = match c.take_buf() {
            Some(b) => vec![b],
            None => c.take_bufs(),
        };
        match &c.result {
            Ok(_) => {
                self.sent(conn, bytes, now);
                // Reuse a returned receive buffer of the right size.
                if !self.pooled && conn.spare.is_none() {
                    for b in returned {
                        if let Buf::Vec(mut v) = b {
                            if v.capacity() == conn.rbuf {
                                v.clear();
                                conn.spare = Some(v);
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) if is_aborted(e) && conn.closing => {}
            Err(e) => self.fail(conn, e, "send"),
        }
    }

    fn sent(&self, conn: &mut Conn, bytes: usize, now: Instant) {
        conn.pending = conn.pending.saturating_sub(bytes);
        conn.tx += bytes as u64;
        conn.last_active = now;
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
            }
            Err(e) => self.fail(conn, &e.error, "recv"),
        }
    }

    /// ④ WSASend: everything queued, in one (vectored) send; the next one
    /// starts from this one's completion, so the stream keeps its order.
    fn issue_send(&self, conn: &mut Conn) {
        let mut bufs = Vec::with_capacity(conn.out.len().min(MAX_IOV));
        let mut bytes = 0;
        let mut pooled = 0;
        while bufs.len() < MAX_IOV {
            let Some(b) = conn.out.pop_front() else { break };
            bytes += b.len();
            pooled += usize::from(matches!(b, Buf::Pooled(_)));
            bufs.push(b);
        }
        let r = if bufs.len() == 1 {
            self.port
                .send(&conn.h, bufs.pop().expect("one buffer"), T_SEND)
        } else {
            self.port.send_vectored(&conn.h, bufs, T_SEND)
        };
        match r {
            Ok(_) => {
                conn.ops += 1;
                conn.inflight = Some(bytes);
                conn.inflight_pooled = pooled;
            }
            Err(e) => {
                conn.pooled_held -= pooled;
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
    fn close(&self, conn: &mut Conn, why: Why) {
        if conn.closing {
            return;
        }
        conn.closing = true;
        conn.why = why;
        conn.h.close();
        conn.out.clear();
        conn.spare = None;
    }

    // -------------------------------------------------------------------- UDP

    fn udp_recv(&self, u: &Udp, _i: usize) {
        if u.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self
            .port
            .recv_from(&u.h, Vec::with_capacity(UDP_BUF), T_URECV)
        {
            if !u.h.is_closed() && !self.port.is_closed() {
                tracing::warn!("udp://{}: cannot receive: {}", u.addr, e.error);
            }
        }
    }

    fn on_udp(&self, mut c: Completion, now: Instant) {
        let i = (c.key & !TAG_MASK) as usize;
        let Some(u) = self.udps.get(i) else { return };
        match c.kind {
            OpKind::RecvFrom => {
                let from = c.from_addr();
                let buf = c.take_buf();
                match (&c.result, from, buf) {
                    (Ok(_), Some(from), Some(buf)) => {
                        Global::add(&self.g.c.udp_in, 1);
                        let ok = lock(&self.g.udp_limiter).allow(from.ip(), now);
                        if ok && !u.closed.load(Ordering::Acquire) {
                            if let Err(e) = self.port.send_to(&u.h, buf, from, T_USEND) {
                                tracing::debug!("udp send to {from}: {}", e.error);
                            }
                        } else {
                            Global::add(&self.g.c.udp_dropped, 1);
                        }
                    }
                    (Err(e), _, _) if is_aborted(e) => return,
                    (Err(e), _, _) => tracing::debug!("udp://{}: receive: {e}", u.addr),
                    _ => {}
                }
                self.udp_recv(u, i);
            }
            OpKind::SendTo => match &c.result {
                Ok(_) => Global::add(&self.g.c.udp_out, 1),
                Err(e) if is_aborted(e) => {}
                Err(e) => tracing::debug!("udp://{}: send: {e}", u.addr),
            },
            _ => {}
        }
    }
}

fn fmt_peer(p: Option<SocketAddr>) -> String {
    p.map_or_else(|| "?".to_string(), |a| a.to_string())
}
