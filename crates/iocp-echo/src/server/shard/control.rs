//! Control packets and timers: the stop requests (drain, cut), the drain
//! deadline, the workers' quit, and the sweep that closes idle connections
//! (`--idle-timeout`) and, while draining, quiet ones.

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use completion_port::Completion;

use super::super::route::Ctrl;
use super::super::stats::Global;
use super::super::table::lock;
use super::conn::Why;
use super::{fmt_peer, Shard};

/// While draining, a connection with nothing to echo and no traffic for
/// this long is closed gracefully.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The sweep period while draining; the first drain sweep comes this long
/// after the drain begins (not at once: the drain packet may be handled
/// late, after a stall whose packets the port still holds).
const DRAIN_SWEEP: Duration = Duration::from_millis(50);
/// After the cut, how long connections may take to finish closing before
/// the workers quit anyway.
const FORCE_QUIT_AFTER: Duration = Duration::from_secs(2);
/// Cut connections logged one by one; the rest are counted in one line.
const CUTS_LOGGED: u64 = 16;

/// The sweep timer chain: a sweep packet whose epoch is not the current one
/// belongs to a superseded chain and is dropped. `due` is when the current
/// chain's next sweep should run: a sweep judges quiet at that instant, not
/// when it finally runs, so a server that was too busy (or descheduled) to
/// run it on time does not count its own delay as the connections' silence;
/// their packets of that time may still wait in the port.
pub(super) struct Sweep {
    epoch: u64,
    due: Instant,
}

impl Sweep {
    pub(super) fn new() -> Sweep {
        Sweep {
            epoch: 0,
            due: Instant::now(),
        }
    }
}

impl Shard {
    /// A control packet. Returns `true` when this worker should stop.
    pub(super) fn on_ctrl(&self, c: Completion, now: Instant) -> bool {
        let Some(ctrl) = Ctrl::from_token(c.token) else {
            tracing::debug!(token = c.token, "unknown control packet");
            return false;
        };
        match ctrl {
            Ctrl::Shutdown => self.begin_drain(),
            Ctrl::Cut => {
                self.begin_drain();
                self.cut("cut requested");
            }
            Ctrl::Deadline => self.cut("drain timeout"),
            Ctrl::Sweep { epoch } => {
                let mut sw = lock(&self.sweep);
                if epoch == sw.epoch {
                    self.sweep(sw.due.min(now));
                    self.schedule_sweep(&mut sw, self.sweep_period());
                }
            }
            Ctrl::Quit => {
                // Pass it on: every worker of the port gets one, however
                // many a `get_many` batch happened to hold.
                let _ = Ctrl::Quit.post(&self.port);
                return true;
            }
            Ctrl::ForceQuit => {
                tracing::warn!(
                    shard = self.id,
                    left = self.table.len(),
                    "connections still finishing {} after the cut; quitting anyway",
                    humantime::format_duration(FORCE_QUIT_AFTER)
                );
                self.quit();
            }
        }
        false
    }

    /// Stops every worker of the port (once).
    pub(super) fn quit(&self) {
        if !self.quit_posted.swap(true, Ordering::AcqRel) {
            let _ = Ctrl::Quit.post(&self.port);
        }
    }

    /// Schedules the first sweep (idle timeout, UDP limiter pruning).
    pub(super) fn start_sweeps(&self) {
        let mut sw = lock(&self.sweep);
        self.schedule_sweep(&mut sw, self.sweep_period());
    }

    /// Whether a sweep judges connections' quiet (an idle timeout is set,
    /// or the shard drains), so traffic must record when it happened.
    pub(super) fn judges_quiet(&self) -> bool {
        self.g.cfg.idle_timeout.is_some() || self.draining.load(Ordering::Acquire)
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
        let _ = Ctrl::Sweep { epoch: sw.epoch }.post_after(&self.port, after);
    }

    /// First SIGINT/SIGTERM: stop accepting, close UDP, let connections
    /// finish, cut them at the deadline.
    fn begin_drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.g.cfg.idle_timeout.is_none() {
            // Until now traffic was not recorded (see `touch`): a
            // connection's quiet counts from the drain at the earliest —
            // never longer than it really was. Traffic from here on records
            // itself; `max` keeps what it recorded while this runs.
            let t = Instant::now();
            self.for_each_conn(|conn| conn.last_active = conn.last_active.max(t));
        }
        for l in &self.listeners {
            lock(l).stop();
        }
        for u in &self.udps {
            u.close();
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
        let _ = Ctrl::Deadline.post_after(&self.port, self.g.cfg.drain_timeout);
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
        self.for_each_conn(|conn| {
            if !conn.closing {
                cut += 1;
                bytes += conn.pending as u64;
                if cut <= CUTS_LOGGED {
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
        });
        if cut > CUTS_LOGGED {
            tracing::warn!(
                shard = self.id,
                "{why}: … and {} more connection(s) cut",
                cut - CUTS_LOGGED
            );
        }
        Global::add(&self.g.c.cut, cut);
        Global::add(&self.g.c.cut_bytes, bytes);
        if self.table.len() == 0 {
            self.quit();
        } else {
            let _ = Ctrl::ForceQuit.post_after(&self.port, FORCE_QUIT_AFTER);
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
        self.for_each_conn(|conn| {
            if conn.closing {
                return;
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
        });
    }
}
