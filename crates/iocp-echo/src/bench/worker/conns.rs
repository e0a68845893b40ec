//! A bench thread's connections: opened at the `--ramp` pace, reopened
//! after a cut (`--reconnect`), failed for good with the error kind the
//! report counts.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use completion_port::{Handle, OpOptions};
use socket2::{Domain, Protocol, Socket, Type};

use super::super::payload;
use super::{
    count_in_slice, kind_name, ConnKey, St, Worker, MAX_FRUITLESS_RECONNECTS, T_CONNECT, T_RECV,
};

impl Worker<'_> {
    /// Opens this thread's connections, paced at its share of `--ramp`,
    /// with a bounded number of connects in flight.
    pub(super) fn connect_all(&mut self) {
        let n = self.conns.len();
        let rate = self.plan.ramp / self.plan.threads as f64;
        let max_pending = 32;
        let begin = Instant::now();
        let mut next = 0;
        let mut batch = Vec::with_capacity(256);
        while self.resolved < n {
            if self.aborted() || self.stopped() {
                return;
            }
            let now = Instant::now();
            let allowed = if rate > 0.0 {
                ((now - begin).as_secs_f64() * rate) as usize + 1
            } else {
                n
            };
            while next < n.min(allowed) && self.pending_connects < max_pending {
                self.start_connect(next);
                next += 1;
            }
            let mut wait = Duration::from_millis(50);
            if next < n && self.pending_connects < max_pending && rate > 0.0 {
                let at = begin + Duration::from_secs_f64(next as f64 / rate);
                wait = wait.min(at.saturating_duration_since(now));
            }
            if self.resolved < n {
                self.poll(&mut batch, wait);
            }
        }
    }

    fn start_connect(&mut self, i: usize) {
        match self.open(i) {
            Ok(h) => {
                self.conns[i].h = Some(h);
                self.conns[i].st = St::Connecting;
                self.pending_connects += 1;
            }
            Err(e) => self.connect_failed(i, &e),
        }
    }

    /// A new socket for connection `i`, associated and connecting.
    fn open(&self, i: usize) -> io::Result<Handle> {
        let addr = self.plan.addr;
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_tcp_nodelay(true)?;
        let key = ConnKey::new(i, self.conns[i].gen).to_key();
        let h = self.port.associate(s, key)?;
        self.port.connect(
            &h,
            addr,
            OpOptions::with_timeout(T_CONNECT, self.plan.connect_timeout),
        )?;
        Ok(h)
    }

    /// The peer cut connection `i` (EOF, reset, a failed send): reopen it
    /// with `--reconnect`, else it fails as `kind`.
    pub(super) fn cut(&mut self, i: usize, kind: &str, msg: String) {
        let plan = self.plan;
        if !plan.reconnect || self.conns[i].st != St::Up || self.aborted() {
            return self.fail(i, kind, msg);
        }
        let c = &mut self.conns[i];
        c.fruitless += 1;
        if c.fruitless > MAX_FRUITLESS_RECONNECTS {
            let msg = format!(
                "{msg}; cut {MAX_FRUITLESS_RECONNECTS} times in a row right after reconnecting"
            );
            return self.fail(i, kind, msg);
        }
        self.out.reconnects += 1;
        if let Some(t0) = self.t0 {
            count_in_slice(&mut self.out.reconnect_series, t0, Instant::now(), 1);
        }
        self.out.lost_bytes += c.sent - c.recvd;
        self.out.lost_messages += c.inflight.len() as u64;
        if let Some(h) = c.h.take() {
            h.close();
        }
        if !c.inflight.is_empty() {
            self.busy -= 1;
        }
        // Closed loop with --requests: the measured messages lost in flight
        // are owed again. (Open loop: their slots in the schedule are gone.)
        let closed_loop = self.closed_loop;
        for m in c.inflight.drain(..) {
            if closed_loop && m.measured && c.quota != u64::MAX {
                if c.quota == 0 && self.t0.is_some() {
                    self.unfinished += 1;
                }
                c.quota += 1;
            }
        }
        c.out.clear();
        c.sending = false;
        c.sent = 0;
        c.recvd = 0;
        c.gen += 1;
        c.key = payload::reopened_key(payload::stream_key(plan.seed, c.idx), c.gen);
        c.st = St::Reconnecting;
        match self.open(i) {
            Ok(h) => self.conns[i].h = Some(h),
            Err(e) => self.fail(i, &kind_name(&e), format!("cannot reconnect: {e}")),
        }
    }

    /// A reopened connection is up: start reading, and (closed loop) its
    /// `--depth` messages; open-loop messages that came due meanwhile go
    /// out now.
    pub(super) fn reconnected(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let h =
            c.h.as_ref()
                .expect("a reconnecting connection has a handle");
        if let Err(e) = self.port.recv_pooled(h, T_RECV) {
            let e = e.error;
            return self.fail(i, &kind_name(&e), format!("cannot reconnect: {e}"));
        }
        c.st = St::Up;
        c.last_progress = now;
        if self.closed_loop && self.t0.is_some() {
            for _ in 0..self.plan.depth {
                if !self.try_create(i, now, now) {
                    break;
                }
            }
        }
        let c = &mut self.conns[i];
        if !c.out.is_empty() && !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    pub(super) fn connect_failed(&mut self, i: usize, e: &io::Error) {
        let c = &mut self.conns[i];
        c.st = St::Dead;
        if let Some(h) = c.h.take() {
            h.close();
        }
        self.out.connect_failures += 1;
        self.resolved += 1;
        self.sh.connect_failed.fetch_add(1, Ordering::Relaxed);
        let why = if e.kind() == io::ErrorKind::TimedOut {
            format!(
                "timed out after {}",
                humantime::format_duration(self.plan.connect_timeout)
            )
        } else {
            e.to_string()
        };
        self.sh.note_error(
            "connect",
            format!("cannot connect to {}: {why}", self.plan.addr),
        );
    }

    pub(super) fn check_idle(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.st == St::Up && !c.inflight.is_empty() && now - c.last_progress > self.plan.timeout
            {
                let msg = format!(
                    "no echo for {} ({} bytes outstanding)",
                    humantime::format_duration(self.plan.timeout),
                    c.sent - c.recvd
                );
                self.fail(i, "timed_out", msg);
            }
        }
    }

    pub(super) fn fail_busy(&mut self, kind: &str, what: &str) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.st.live() && !c.inflight.is_empty() {
                let msg = format!(
                    "{what} within {} of the end",
                    humantime::format_duration(self.plan.timeout)
                );
                self.fail(i, kind, msg);
            }
        }
    }

    /// Connection `i` failed: count it under `kind`, close it, drop its
    /// messages in flight.
    pub(super) fn fail(&mut self, i: usize, kind: &str, msg: String) {
        let c = &mut self.conns[i];
        if c.st == St::Dead {
            return;
        }
        let was_up = c.st.live();
        if was_up {
            self.up -= 1;
        }
        c.st = St::Dead;
        if let Some(h) = c.h.take() {
            h.close();
        }
        if !c.inflight.is_empty() {
            self.busy -= 1;
            c.inflight.clear();
        }
        if was_up && c.quota != u64::MAX && c.quota > 0 && self.plan.requests.is_some() {
            // Counted in `unfinished` only once the load started.
            if self.unfinished > 0 {
                self.unfinished -= 1;
            }
            c.quota = 0;
        }
        *self.out.errors.entry(kind.to_string()).or_default() += 1;
        self.sh
            .note_error(kind, format!("connection {}: {msg}", c.idx));
    }
}
