//! One bench thread: its own inline (per-core) port, its share of the
//! connections, batched `get_many`.
//!
//! Each connection has one standing pooled receive and at most one send in
//! flight; messages that become ready while a send is in flight are
//! coalesced into the next one. A message is *ready* at its start time —
//! in the closed loop when the echo of an earlier one frees its slot, in
//! the open loop at its scheduled time — and its latency is measured from
//! that start time to the moment its last byte is echoed back, so a stalled
//! server delays every message scheduled behind the stall (no coordinated
//! omission).
//!
//! With `--reconnect` a connection the server (or a balancer) cuts is
//! reopened at once: its messages in flight are counted as lost (with their
//! bytes), and the new connection starts a fresh stream at offset 0, so
//! verification restarts cleanly. Completions of the old connection are
//! told apart by a generation in the completion key and dropped.
//!
//! Here: the plan, the shared state, the thread's load loop and its
//! message schedule; [`conns`]: opening, reopening and failing connections;
//! [`echo`]: the completions, and the verification of every echoed byte.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use completion_port::{Backend, Completion, Handle, Port};
use hdrhistogram::Histogram;

use super::payload::{self, Rng};
use super::report::new_hist;

mod conns;
mod echo;

/// What every thread runs (read-only).
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    pub size: (usize, usize),
    pub depth: usize,
    /// Open loop: messages per second over all connections.
    pub rate: Option<f64>,
    pub warmup: Duration,
    /// `None` with `requests`.
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    /// Connections per second over all threads; 0 = no pacing.
    pub ramp: f64,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub seed: u64,
    pub backend: Option<Backend>,
    /// Reopen a connection the peer cuts, instead of failing it.
    pub reconnect: bool,
}

/// Echoed messages are counted per slice of this length (the throughput
/// over time of `--plot`).
pub const SERIES_SLICE: Duration = Duration::from_millis(100);

/// A connection cut again before any byte of its new stream came back, this
/// many times in a row, fails for good (a peer that closes every new
/// connection at once would otherwise be reconnected forever).
const MAX_FRUITLESS_RECONNECTS: u32 = 3;

/// What the threads and the main thread share.
#[derive(Default)]
pub struct Shared {
    /// Threads whose connections are all resolved (up or failed).
    pub ready: AtomicUsize,
    pub connected: AtomicUsize,
    pub connect_failed: AtomicUsize,
    /// The start of the load (set by the main thread once all are ready).
    pub t0: OnceLock<Instant>,
    /// Stop at once (verification failure, nothing connected, fatal error).
    pub abort: AtomicBool,
    /// Stop creating messages, drain, report (SIGINT).
    pub stop: Arc<AtomicBool>,
    /// Echoes completed (measured or not), for the progress bar.
    pub done_msgs: AtomicU64,
    pub done_bytes: AtomicU64,
    /// The first message of each error kind, for stderr.
    pub first_errors: Mutex<BTreeMap<String, String>>,
}

impl Shared {
    fn note_error(&self, kind: &str, msg: String) {
        let mut m = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(kind.to_string()).or_insert(msg);
    }
}

/// What a thread hands back.
pub struct Outcome {
    pub hist: Histogram<u64>,
    pub messages: u64,
    pub bytes: u64,
    pub errors: BTreeMap<String, u64>,
    pub connections: u64,
    pub connect_failures: u64,
    /// When the last measured echo arrived.
    pub last_done: Option<Instant>,
    /// When the thread stopped.
    pub ended: Instant,
    /// Connections cut and reopened (`--reconnect`), and what they had in
    /// flight: messages and bytes sent (or created) and not echoed.
    pub reconnects: u64,
    pub lost_messages: u64,
    pub lost_bytes: u64,
    /// Echoed messages (measured or not) per [`SERIES_SLICE`] since the
    /// start of the load, and reconnects per slice.
    pub series: Vec<u64>,
    pub reconnect_series: Vec<u64>,
    /// Why the thread could not run at all.
    pub fatal: Option<String>,
}

impl Outcome {
    /// Nothing yet (ended now).
    fn new() -> Outcome {
        Outcome {
            hist: new_hist(),
            messages: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            connections: 0,
            connect_failures: 0,
            last_done: None,
            ended: Instant::now(),
            reconnects: 0,
            lost_messages: 0,
            lost_bytes: 0,
            series: Vec::new(),
            reconnect_series: Vec::new(),
            fatal: None,
        }
    }
}

/// The error kinds the report counts, in snake case.
pub fn kind_name(e: &io::Error) -> String {
    let dbg = format!("{:?}", e.kind());
    let mut s = String::with_capacity(dbg.len() + 4);
    for (i, ch) in dbg.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(ch.to_ascii_lowercase());
        } else {
            s.push(ch);
        }
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Connecting,
    Up,
    /// Cut by the peer; a new connection is being made (`--reconnect`).
    Reconnecting,
    Dead,
}

impl St {
    /// Up, or about to be again.
    fn live(self) -> bool {
        matches!(self, St::Up | St::Reconnecting)
    }
}

struct Msg {
    end: u64,
    start: Instant,
    len: u32,
    measured: bool,
}

struct Conn {
    idx: u64,
    /// The stream key (of the current generation).
    key: u64,
    /// How many times the connection was reopened; the high half of its
    /// completion key, so the old socket's completions are recognised.
    gen: u64,
    /// Cuts in a row with no echoed byte in between.
    fruitless: u32,
    h: Option<Handle>,
    st: St,
    sent: u64,
    recvd: u64,
    sizes: Rng,
    out: Vec<u8>,
    spare: Option<Vec<u8>>,
    sending: bool,
    dirty: bool,
    inflight: VecDeque<Msg>,
    /// Measured messages still to create (`u64::MAX` in duration mode).
    quota: u64,
    last_progress: Instant,
}

const T_CONNECT: u64 = 1;
const T_RECV: u64 = 2;
const T_SEND: u64 = 3;

struct Worker<'a> {
    plan: &'a Plan,
    sh: &'a Shared,
    port: Port,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    /// What the thread hands back, as it accrues.
    out: Outcome,
    /// Echoes (all) and bytes not yet published to `Shared`.
    prog_msgs: u64,
    prog_bytes: u64,
    /// Up connections with messages in flight.
    busy: usize,
    /// Up connections.
    up: usize,
    /// Up connections with measured messages still to create (requests mode).
    unfinished: usize,
    pending_connects: usize,
    resolved: usize,
    warm_end: Instant,
    end: Option<Instant>,
    closed_loop: bool,
    /// The load started (closed loop: a reopened connection starts its
    /// `--depth` messages).
    t0: Option<Instant>,
}

/// Adds `n` to the slice of `series` that `now` falls in.
fn count_in_slice(series: &mut Vec<u64>, t0: Instant, now: Instant, n: u64) {
    let slice = (now.saturating_duration_since(t0).as_millis() / SERIES_SLICE.as_millis()) as usize;
    if series.len() <= slice {
        series.resize(slice + 1, 0);
    }
    series[slice] += n;
}

/// What a connection's completion key names: its index among this
/// thread's connections (the key's low 32 bits) and how many times it was
/// reopened (the high 32 bits, modulo 2^32), so the completions of a socket
/// since replaced are told apart and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnKey {
    i: u32,
    gen: u32,
}

impl ConnKey {
    /// Connection `i` in generation `gen`.
    fn new(i: usize, gen: u64) -> ConnKey {
        ConnKey {
            i: u32::try_from(i).expect("a thread's connections fit 32 bits"),
            gen: gen as u32,
        }
    }

    fn to_key(self) -> u64 {
        u64::from(self.gen) << 32 | u64::from(self.i)
    }

    fn from_key(key: u64) -> ConnKey {
        ConnKey {
            i: key as u32,
            gen: (key >> 32) as u32,
        }
    }
}

/// Runs thread `t` of the plan.
pub fn run(t: usize, plan: &Plan, sh: &Shared) -> Outcome {
    let mine: Vec<usize> = (t..plan.connections).step_by(plan.threads).collect();
    let small = plan.size.1.saturating_mul(plan.depth) <= 4096 && plan.rate.is_none();
    let mut b = Port::builder()
        .inline(true)
        .pool_buffers((mine.len() * 2).clamp(512, 4096))
        .pool_buffer_size(if small { 4096 } else { 16 * 1024 });
    if let Some(be) = plan.backend {
        b = b.backend(be);
    }
    let port = match b.build() {
        Ok(p) => p,
        Err(e) => {
            sh.abort.store(true, Ordering::SeqCst);
            return Outcome {
                fatal: Some(format!("cannot create a completion port: {e}")),
                ..Outcome::new()
            };
        }
    };
    let now = Instant::now();
    let n = plan.connections as u64;
    let conns = mine
        .iter()
        .map(|&i| {
            let i = i as u64;
            let quota = match plan.requests {
                Some(r) => r / n + u64::from(i < r % n),
                None => u64::MAX,
            };
            Conn {
                idx: i,
                key: payload::stream_key(plan.seed, i),
                gen: 0,
                fruitless: 0,
                h: None,
                st: St::Idle,
                sent: 0,
                recvd: 0,
                sizes: Rng::for_sizes(plan.seed, i),
                out: Vec::new(),
                spare: None,
                sending: false,
                dirty: false,
                inflight: VecDeque::new(),
                quota,
                last_progress: now,
            }
        })
        .collect();
    let mut w = Worker {
        plan,
        sh,
        port,
        conns,
        dirty: Vec::new(),
        out: Outcome::new(),
        prog_msgs: 0,
        prog_bytes: 0,
        busy: 0,
        up: 0,
        unfinished: 0,
        pending_connects: 0,
        resolved: 0,
        warm_end: now,
        end: None,
        closed_loop: plan.rate.is_none(),
        t0: None,
    };
    w.connect_all();
    sh.ready.fetch_add(1, Ordering::SeqCst);
    if let Some(t0) = w.wait_for_start() {
        w.load(t0);
    }
    for c in &mut w.conns {
        if let Some(h) = c.h.take() {
            h.close();
        }
    }
    let mut out = std::mem::replace(&mut w.out, Outcome::new());
    out.ended = Instant::now();
    out
    // The port drops here, on its own thread: it aborts what is left and
    // waits for the kernel to let go of every buffer.
}

impl Worker<'_> {
    fn aborted(&self) -> bool {
        self.sh.abort.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.sh.stop.load(Ordering::Relaxed)
    }

    fn poll(&mut self, batch: &mut Vec<Completion>, timeout: Duration) {
        let _ = self.port.get_many(batch, 256, Some(timeout));
        let now = Instant::now();
        for c in batch.drain(..) {
            self.on_completion(c, now);
        }
        self.flush();
        self.publish();
    }

    /// Polls (keeping connections served) until the main thread gives the
    /// start time.
    fn wait_for_start(&mut self) -> Option<Instant> {
        let mut batch = Vec::new();
        loop {
            if self.aborted() || self.stopped() {
                return None;
            }
            if let Some(&t0) = self.sh.t0.get() {
                return Some(t0);
            }
            self.poll(&mut batch, Duration::from_millis(2));
        }
    }

    /// The load phase, until the duration or the requests are done and every
    /// message in flight has come back.
    fn load(&mut self, t0: Instant) {
        self.t0 = Some(t0);
        self.warm_end = t0 + self.plan.warmup;
        self.end = self.plan.duration.map(|d| self.warm_end + d);
        if self.plan.requests.is_some() {
            self.unfinished = self
                .conns
                .iter()
                .filter(|c| c.st.live() && c.quota > 0)
                .count();
        }
        let now = Instant::now();
        if self.closed_loop {
            for i in 0..self.conns.len() {
                if self.conns[i].st == St::Up {
                    for _ in 0..self.plan.depth {
                        if !self.try_create(i, now, now) {
                            break;
                        }
                    }
                }
            }
        }
        // Open loop: message k of this thread goes to local connection
        // k % n at t0 + ((k / n) * N + idx) / rate.
        let n_local = self.conns.len();
        let mut k: u64 = 0;
        let mut sched_over = self.closed_loop || n_local == 0;
        let rate = self.plan.rate.unwrap_or(1.0);
        let big_n = self.plan.connections as f64;
        let mut batch = Vec::with_capacity(256);
        let mut stop_at: Option<Instant> = None;
        let mut next_idle_check = now + Duration::from_millis(100);
        loop {
            let now = Instant::now();
            if self.aborted() || self.up == 0 {
                return;
            }
            let stopping = self.stopped() || self.end.is_some_and(|e| now >= e);
            let mut next_due = None;
            while !sched_over {
                if self.stopped() || (self.plan.requests.is_some() && self.unfinished == 0) {
                    sched_over = true;
                    break;
                }
                let i = (k % n_local as u64) as usize;
                let round = (k / n_local as u64) as f64;
                let due =
                    t0 + Duration::from_secs_f64((round * big_n + self.conns[i].idx as f64) / rate);
                if self.end.is_some_and(|e| due >= e) {
                    sched_over = true;
                    break;
                }
                if due > now {
                    next_due = Some(due);
                    break;
                }
                k += 1;
                if self.conns[i].st.live() {
                    self.try_create(i, due, now);
                }
            }
            self.flush();
            self.publish();
            let finished = if self.plan.requests.is_some() {
                (sched_over && self.unfinished == 0) || self.stopped()
            } else {
                stopping
            };
            if finished {
                if self.busy == 0 {
                    return;
                }
                let s = *stop_at.get_or_insert(now);
                if now >= s + self.plan.timeout {
                    self.fail_busy("timed_out", "no echo");
                    return;
                }
            }
            if now >= next_idle_check {
                next_idle_check = now + Duration::from_millis(100);
                self.check_idle(now);
            }
            let mut wait = Duration::from_millis(100);
            if let Some(d) = next_due {
                wait = wait.min(d - now);
            }
            if let Some(e) = self.end {
                if e > now {
                    wait = wait.min(e - now);
                }
            }
            self.poll(&mut batch, wait);
        }
    }

    /// Whether connection `i` may create a message starting at `start`, and
    /// whether that message is measured.
    fn try_create(&mut self, i: usize, start: Instant, now: Instant) -> bool {
        if self.stopped() || self.end.is_some_and(|e| start >= e) {
            return false;
        }
        let warm = start < self.warm_end;
        let c = &mut self.conns[i];
        if !warm && c.quota == 0 {
            return false;
        }
        let measured = !warm;
        if measured && c.quota != u64::MAX {
            c.quota -= 1;
            if c.quota == 0 {
                self.unfinished -= 1;
            }
        }
        let len = c.sizes.range(self.plan.size.0, self.plan.size.1);
        payload::append(c.key, c.sent, len, &mut c.out);
        c.sent += len as u64;
        if c.inflight.is_empty() {
            self.busy += 1;
            c.last_progress = now;
        }
        c.inflight.push_back(Msg {
            end: c.sent,
            start,
            len: len as u32,
            measured,
        });
        if !c.dirty && !c.sending {
            c.dirty = true;
            self.dirty.push(i);
        }
        true
    }

    /// Starts a send for every connection with bytes waiting and none in
    /// flight.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            let c = &mut self.conns[i];
            c.dirty = false;
            if c.st != St::Up || c.sending || c.out.is_empty() {
                continue;
            }
            let buf = std::mem::replace(&mut c.out, c.spare.take().unwrap_or_default());
            let h = c.h.as_ref().expect("an up connection has a handle");
            match self.port.send(h, buf, T_SEND) {
                Ok(_) => c.sending = true,
                Err(e) => {
                    let e = e.error;
                    self.cut(i, &kind_name(&e), format!("send failed: {e}"));
                }
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn publish(&mut self) {
        if self.prog_msgs > 0 {
            self.sh
                .done_msgs
                .fetch_add(self.prog_msgs, Ordering::Relaxed);
            self.sh
                .done_bytes
                .fetch_add(self.prog_bytes, Ordering::Relaxed);
            self.prog_msgs = 0;
            self.prog_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnKey;

    #[test]
    fn conn_keys_round_trip() {
        for (i, gen) in [
            (0, 0),
            (1, 1),
            (7, 3),
            (u32::MAX as usize, u64::from(u32::MAX)),
        ] {
            let k = ConnKey::new(i, gen);
            assert_eq!(ConnKey::from_key(k.to_key()), k);
            assert_eq!(k.i as usize, i);
        }
        // Reopening changes the key.
        assert_ne!(ConnKey::new(5, 1).to_key(), ConnKey::new(5, 2).to_key());
    }
}
