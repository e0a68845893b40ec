//! Listeners: the standing accept of each, paused with a growing back-off
//! while the process is out of descriptors (EMFILE and friends), and the
//! admission of each accepted socket (`--max-conns`, the drain).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use completion_port::{is_aborted, Completion, Handle, OpId, OpKind};
use socket2::Socket;

use super::super::route::Route;
use super::super::stats::Global;
use super::super::table::{lock, Refused};
use super::{fmt_peer, Shard};

/// Operation tokens.
const T_ACCEPT: u64 = 3;
const T_RESUME: u64 = 4;

/// Accept back-off after EMFILE/ENFILE: first pause, and the cap (which
/// bounds how long after descriptors free up accepting resumes).
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// A paused listener warns at most this often (the pauses in between are
/// counted in the next warning).
const WARN_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Listener {
    h: Handle,
    pub(super) addr: SocketAddr,
    op: Option<OpId>,
    cancelling: bool,
    paused: bool,
    stopped: bool,
    backoff: Duration,
    last_warn: Option<Instant>,
    quiet_pauses: u64,
}

impl Listener {
    pub(super) fn new(h: Handle, addr: SocketAddr) -> Listener {
        Listener {
            h,
            addr,
            op: None,
            cancelling: false,
            paused: false,
            stopped: false,
            backoff: BACKOFF_MIN,
            last_warn: None,
            quiet_pauses: 0,
        }
    }

    /// Accepts no more (the drain): closes the socket, which ends the
    /// standing accept.
    pub(super) fn stop(&mut self) {
        self.stopped = true;
        self.h.close();
    }
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
    pub(super) fn start_accept(&self, l: &mut Listener, i: usize) {
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
            Some(t) => now.duration_since(t) >= WARN_EVERY,
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
        let key = Route::Listener(i as u32).to_key();
        if self.port.post_after(d, key, T_RESUME).is_err() {
            l.stopped = true;
        }
    }

    /// A completion of listener `i`: an accepted socket (or an accept
    /// error), the end of its standing accept, or its back-off timer.
    pub(super) fn on_listener(&self, i: usize, mut c: Completion, now: Instant) {
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

    /// ③ for a new socket: admit it (or not), associate it, start reading
    /// ([`Shard::open_conn`]).
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
        let (idx, e) = match self.table.alloc() {
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
        let h = match self
            .port
            .associate(sock, Route::Conn { idx, gen: e.gen }.to_key())
        {
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
        self.open_conn(idx, e, h, peer, now);
    }
}
