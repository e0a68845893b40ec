//! What every shard shares: the configuration, the counters, the global
//! connection count (for `--max-conns`) and the UDP rate limiter.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use completion_port::Port;

use super::config::Config;
use super::rate_limit::RateLimiter;

/// Declares [`Counters`], each an `AtomicU64` named once: first those every
/// stats line logs (in this order), then those it leaves out (a gauge the
/// metrics endpoint reports, and the drain's, which the shutdown summary
/// reports).
macro_rules! counters {
    (logged: $($logged:ident),*; unlogged: $($(#[$doc:meta])* $unlogged:ident),* $(,)?) => {
        /// Counters, all monotonic except where noted.
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub $logged: AtomicU64,)*
            $($(#[$doc])* pub $unlogged: AtomicU64,)*
        }

        impl Counters {
            /// One line of counters: the logged ones, between the open
            /// connections and the ports' figures.
            fn log_line(
                &self,
                what: &str,
                conns_now: usize,
                completions: &[u64],
                queued: usize,
                pool: (usize, usize),
            ) {
                tracing::info!(
                    conns_now,
                    $($logged = n(&self.$logged),)*
                    completions = ?completions,
                    queued,
                    pool_in_use = pool.0,
                    pool_total = pool.1,
                    "{what}"
                );
            }
        }
    };
}

counters! {
    logged: conns_total, rejected, bytes_in, bytes_out, idle_closed, resets, errors, accept_errors,
        accept_pauses, read_pauses, udp_in, udp_out, udp_dropped;
    unlogged:
        /// Single-shot receives in flight now, each holding a receive buffer of
        /// its connection (a gauge; 0 with pooled receive).
        recv_buffers_pinned,
        /// Connections open when draining began (summed over shards). Each of
        /// them ends as drained or cut, unless it is still closing when the
        /// server gives up waiting 2 s after the cut.
        drain_open,
        /// Connections that finished during the drain (peer closed, or closed
        /// quiet with nothing left to echo, or failed).
        drained,
        /// Bytes echoed while draining.
        drain_bytes,
        /// Connections cut at the drain deadline, and the bytes they had not
        /// echoed yet.
        cut,
        cut_bytes,
        /// Pooled chunks copied out of their pool buffer (the buffer goes
        /// back at once) instead of being sent from it.
        pooled_copied,
}

pub(crate) struct Global {
    pub cfg: Config,
    pub c: Counters,
    /// Connections open now (all shards): admitted and not yet freed.
    active: AtomicUsize,
    /// Completions handled, per worker (pool) or shard (per-core).
    pub completions: Vec<AtomicU64>,
    pub udp_limiter: Mutex<RateLimiter>,
    /// Set by the first SIGINT/SIGTERM.
    pub draining: AtomicBool,
    /// When the first SIGINT/SIGTERM arrived: from then on `/readyz` is 503.
    pub signalled: OnceLock<Instant>,
    /// Listeners whose accepts are paused now (EMFILE back-off).
    paused_listeners: AtomicUsize,
    /// Connections admitted after the signal (during `--drain-delay`), and
    /// when the last of them was, in µs after the signal.
    admitted_after_signal: AtomicU64,
    last_admit_after_signal_us: AtomicU64,
    t0: Instant,
    /// When the last "max-conns reached" warning was logged (ms after t0).
    last_reject_warn: AtomicU64,
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Global {
    pub(crate) fn new(cfg: Config, workers: usize) -> Global {
        let limiter = RateLimiter::new(cfg.udp_rate);
        Global {
            cfg,
            c: Counters::default(),
            active: AtomicUsize::new(0),
            completions: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            udp_limiter: Mutex::new(limiter),
            draining: AtomicBool::new(false),
            signalled: OnceLock::new(),
            paused_listeners: AtomicUsize::new(0),
            admitted_after_signal: AtomicU64::new(0),
            last_admit_after_signal_us: AtomicU64::new(0),
            t0: Instant::now(),
            last_reject_warn: AtomicU64::new(u64::MAX),
        }
    }

    /// Counts a new connection unless `--max-conns` are open already.
    pub(crate) fn try_admit(&self) -> bool {
        let max = self.cfg.max_conns;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether to log a rejection (at most one warning per 5 s).
    pub(crate) fn warn_rejects(&self) -> bool {
        let now = self.t0.elapsed().as_millis() as u64;
        let last = self.last_reject_warn.load(Ordering::Relaxed);
        (last == u64::MAX || now.saturating_sub(last) >= 5000)
            && self
                .last_reject_warn
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// A listener paused (`true`) or resumed (`false`) its accepts.
    pub(crate) fn accepts_paused(&self, paused: bool) {
        if paused {
            self.paused_listeners.fetch_add(1, Ordering::AcqRel);
        } else {
            self.paused_listeners.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A connection was admitted: after the signal, remember when.
    pub(crate) fn note_admitted(&self) {
        if let Some(&at) = self.signalled.get() {
            self.admitted_after_signal.fetch_add(1, Ordering::Relaxed);
            let us = at.elapsed().as_micros() as u64;
            self.last_admit_after_signal_us
                .fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Why the server should get no new connections now (`/readyz` 503),
    /// or `None` when it is ready.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if self.signalled.get().is_some() {
            Some("shutting down")
        } else if self.paused_listeners.load(Ordering::Acquire) > 0 {
            Some("accepts paused: out of descriptors")
        } else if self.active() >= self.cfg.max_conns {
            Some("--max-conns reached")
        } else {
            None
        }
    }

    pub(crate) fn add(a: &AtomicU64, v: u64) {
        a.fetch_add(v, Ordering::Relaxed);
    }

    /// One line of counters.
    pub(crate) fn log_stats(&self, what: &str, ports: &[Port]) {
        let completions: Vec<u64> = self.completions.iter().map(n).collect();
        let queued: usize = ports.iter().map(|p| p.stats().queued).sum();
        let pool = ports
            .iter()
            .map(|p| p.pool_stats())
            .fold((0, 0), |a, s| (a.0 + s.in_use, a.1 + s.total));
        self.c
            .log_line(what, self.active(), &completions, queued, pool);
    }

    /// The shutdown summary: what was drained, what was cut.
    pub(crate) fn log_summary(&self) {
        let c = &self.c;
        if !self.draining.load(Ordering::Acquire) {
            return;
        }
        let cut = n(&c.cut);
        let after = n(&self.admitted_after_signal);
        let last = Duration::from_micros(n(&self.last_admit_after_signal_us));
        let when = if after > 0 {
            format!(", the last {}ms after it", last.as_millis())
        } else {
            String::new()
        };
        tracing::info!(
            admitted_after_signal = after,
            last_admit_ms = last.as_millis() as u64,
            "shutdown: {after} connection(s) accepted after the signal{when}"
        );
        let msg = format!(
            "shutdown: {} connection(s) open when the drain began; drained {} ({} bytes echoed while draining), cut {} ({} bytes not echoed)",
            n(&c.drain_open),
            n(&c.drained),
            n(&c.drain_bytes),
            cut,
            n(&c.cut_bytes)
        );
        let (open, drained) = (n(&c.drain_open), n(&c.drained));
        if cut > 0 {
            tracing::warn!(open, drained, cut, cut_bytes = n(&c.cut_bytes), "{msg}");
        } else {
            tracing::info!(open, drained, cut, cut_bytes = 0u64, "{msg}");
        }
    }
}
