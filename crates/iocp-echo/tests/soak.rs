//! Soak: the real server, built in release mode, under 15 s of mixed load for
//! each of {uring, epoll} × {pool, per-core}:
//!
//! * steady load from `iocp-echo bench` (256 connections, closed loop,
//!   1–4096-byte messages; it verifies every byte and exits 1 on a mismatch);
//! * churn from the clients in this file: short connections (at least 1,250
//!   per combination, so at least 5,000 in all) sending a random amount in
//!   random chunks while reading back in random amounts; each one ends in a
//!   half-close (shutdown(Write), then everything read back to EOF), a plain
//!   close after the whole echo, or a reset mid-stream (SO_LINGER 0, then
//!   close);
//! * idle holders: batches of connections that stay open and silent for
//!   0.5–4 s (far below the server's default `--idle-timeout` of 5 minutes,
//!   so the server must keep them), then verify one echo each.
//!
//! Every stream read back is compared byte for byte with what was sent (a
//! reset connection's read-back must be an exact prefix). After the load the
//! server's descriptor count (`/proc/PID/fd`) must come back to its value
//! before the load (polled, at most 5 s), its RSS at the end must be at most
//! 25% above its RSS after the first quarter of the load (`VmRSS`), its
//! counters must have seen every connection, and SIGTERM must stop it with
//! exit 0. Its final stats must show nothing held (no connection open, no
//! pool buffer lent) and nothing gone wrong (no
//! connection rejected, failed other than by a client's reset, or closed
//! for idleness; no accept error), and it must have logged no error. One
//! summary line per combination.
//!
//! The cases are `#[ignore]`d (they take about 13 s each); `ci/test.sh`'s `soak`
//! stage runs them:
//!
//! ```text
//! cargo test --release -p iocp-echo --test soak -- --ignored --nocapture
//! ```
//!
//! They are written as an integration test of `iocp-echo` so that cargo
//! builds the server binary first (in the same profile) and hands its path
//! over (`CARGO_BIN_EXE_iocp-echo`), and so that the server tests' helpers
//! (start a server and read its `listening on` line, RSS, log fields) are
//! shared rather than copied. Within one process the cases take turns (a
//! lock), so their measurements never overlap.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{log_field, start, Rng, Spec, Started};

/// Load time per combination.
const LOAD: Duration = Duration::from_secs(15);
/// `iocp-echo bench --connections`.
const BENCH_CONNS: u64 = 256;
/// Connections per combination: at least this many (4 × 1,250 = 5,000),
/// and at most [`MAX_CHURN`] short ones.
const MIN_CONNECTS: u64 = 1_250;
/// Any single socket read or write that takes longer fails the run.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The cases take turns within one test process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
#[ignore = "15 s of load; run by ci/test.sh's soak stage (--ignored)"]
fn uring_pool() {
    soak("uring", "pool");
}

#[test]
#[ignore = "15 s of load; run by ci/test.sh's soak stage (--ignored)"]
fn uring_per_core() {
    soak("uring", "per-core");
}

#[test]
#[ignore = "15 s of load; run by ci/test.sh's soak stage (--ignored)"]
fn epoll_pool() {
    soak("epoll", "pool");
}

#[test]
#[ignore = "15 s of load; run by ci/test.sh's soak stage (--ignored)"]
fn epoll_per_core() {
    soak("epoll", "per-core");
}

/// What the clients did and verified, counted by every client thread as it
/// goes.
#[derive(Default, Debug)]
struct Tally {
    connects: AtomicU64,
    /// Bytes read back and found equal to what was sent.
    verified: AtomicU64,
    half_closes: AtomicU64,
    closes: AtomicU64,
    resets: AtomicU64,
    idle_held: AtomicU64,
}

/// Adds `by` to a count of the [`Tally`].
fn count(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// A count of the [`Tally`] (read once the client threads have ended).
fn n(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Shared by the client threads: the start and the deadline, the churn's connection
/// budget, a stop flag raised by the first failure, what they did.
struct Run {
    addr: SocketAddr,
    t0: Instant,
    until: Instant,
    stop: AtomicBool,
    budget: Mutex<u64>,
    tally: Tally,
}

impl Run {
    /// Whether the load goes on.
    fn going(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.until
    }

    /// Takes one churn connection from the budget; false once the load is
    /// over.
    fn take(&self) -> bool {
        if !self.going() {
            return false;
        }
        let mut b = self.budget.lock().unwrap();
        if *b == 0 {
            return false;
        }
        *b -= 1;
        true
    }
}

fn soak(backend: &str, model: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let label = format!("{backend}/{model}");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        backend,
        "--model",
        model,
        "--workers",
        "2",
    ];
    let server = match start(&label, Spec::new(&args)) {
        Started::Up(s) => s,
        // Printed SKIPPED: IOCP_ALLOW_MISSING_BACKEND names the backend.
        Started::Skipped(_) => return,
    };
    let pid = server.pid();
    let fd_start = fd_count(pid);
    let t0 = Instant::now();
    let run = Arc::new(Run {
        addr: server.tcp,
        t0,
        until: t0 + LOAD,
        stop: AtomicBool::new(false),
        budget: Mutex::new(MAX_CHURN),
        tally: Tally::default(),
    });

    let bench = spawn_bench(server.tcp);
    let mut clients = Vec::new();
    for i in 0..CHURN_THREADS {
        let run = run.clone();
        clients.push(std::thread::spawn(move || {
            guarded(&run, |run| churn(run, 0x5eed_0000 + i))
        }));
    }
    for i in 0..IDLE_THREADS {
        let run = run.clone();
        clients.push(std::thread::spawn(move || {
            guarded(&run, |run| idle_holders(run, 0x1d1e_0000 + i))
        }));
    }

    // RSS after the first quarter of the load.
    sleep_until(t0 + LOAD / 4);
    let rss_q1 = server.rss_kib();

    let mut failures = Vec::new();
    for c in clients {
        match c.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(p) => failures.push(format!(
                "a client thread panicked: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            )),
        }
    }
    let bench = finish_bench(bench, &label);
    let tally = &run.tally;
    if !failures.is_empty() {
        fail(&label, &failures.join("\n"));
    }

    // Every connection is gone: the server's descriptors come back.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut fd_end = fd_count(pid);
    while fd_end != fd_start && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(20));
        fd_end = fd_count(pid);
    }
    let rss_end = server.rss_kib();
    let took = t0.elapsed();

    println!(
        "soak {label:<14} connects {} (+{BENCH_CONNS} bench), verified {} bytes churn + {} bytes bench ({} msgs), \
         half-closes {}, closes {}, resets {}, idle held {}, fd {fd_start}->{fd_end}, RSS q1 {rss_q1} KiB end {rss_end} KiB, {:.1}s",
        n(&tally.connects),
        n(&tally.verified),
        bench.bytes,
        bench.messages,
        n(&tally.half_closes),
        n(&tally.closes),
        n(&tally.resets),
        n(&tally.idle_held),
        took.as_secs_f64(),
    );

    if fd_end != fd_start {
        fail(
            &label,
            &format!("descriptors: {fd_start} before the load, still {fd_end} 5 s after it"),
        );
    }
    if rss_end * 4 > rss_q1 * 5 {
        let what = format!(
            "RSS grew more than 25%: {rss_q1} KiB after the first quarter, {rss_end} KiB at the end"
        );
        fail(&label, &what);
    }
    if n(&tally.connects) < MIN_CONNECTS {
        fail(
            &label,
            &format!(
                "only {} churn connections in {LOAD:?} (need {MIN_CONNECTS})",
                n(&tally.connects)
            ),
        );
    }
    if n(&tally.half_closes) == 0
        || n(&tally.closes) == 0
        || n(&tally.resets) == 0
        || n(&tally.idle_held) == 0
    {
        fail(&label, &format!("a kind of churn never ran: {tally:?}"));
    }
    let log = server.stop_ok();
    // The server counted every connection and turned none away.
    let total = log_field(&log, "final stats", "conns_total");
    assert_eq!(
        total,
        Some(n(&tally.connects) + BENCH_CONNS),
        "{label}: conns_total in the final stats"
    );
    // … and, after the churn, holds nothing: no connection open, no pool
    // buffer lent (`queued` is not checked: on a pool port the workers pass
    // one quit packet along, and the last one leaves it queued); and nothing
    // went wrong on its side: no connection turned away, failed (other than
    // by the clients' resets), closed for idleness, no accept error, no
    // error logged.
    let stats = log.lines().rev().find(|l| l.contains("final stats"));
    for key in [
        "conns_now",
        "pool_in_use",
        "rejected",
        "errors",
        "accept_errors",
        "idle_closed",
    ] {
        let got = log_field(&log, "final stats", key);
        assert_eq!(got, Some(0), "{label}: {key} in the final stats: {stats:?}");
    }
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "{label}: the server logged errors: {errors:#?}"
    );
}

/// Runs one client thread's body; the first failure stops every thread.
fn guarded(run: &Run, body: impl FnOnce(&Run) -> Result<(), String>) -> Result<(), String> {
    let r = body(run);
    if r.is_err() {
        run.stop.store(true, Ordering::Relaxed);
    }
    r
}

/// Fails the case (the server's log follows: `Server` prints it when it is
/// dropped during a panic).
fn fail(label: &str, what: &str) -> ! {
    panic!("{label}: {what}");
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd of the server")
        .count()
}

// ------------------------------------------------------------------ bench

struct BenchReport {
    messages: u64,
    bytes: u64,
}

/// Runs `iocp-echo bench` against `addr` for the load time, on a thread
/// (it is killed, and the case fails, 20 s past the load).
fn spawn_bench(addr: SocketAddr) -> std::thread::JoinHandle<common::Out> {
    std::thread::spawn(move || {
        let (addr, conns) = (addr.to_string(), BENCH_CONNS.to_string());
        let duration = format!("{}ms", LOAD.as_millis());
        let args = [
            "bench",
            &addr,
            "--connections",
            &conns,
            "--threads",
            "2",
            "--size",
            "1..4096",
            "--duration",
            &duration,
            "--timeout",
            "10s",
            "--json",
        ];
        common::run_with(
            &args,
            None,
            &[("NO_COLOR", "1")],
            LOAD + Duration::from_secs(20),
        )
    })
}

/// Checks the bench's report: exit 0, every connection up, no error,
/// messages verified.
fn finish_bench(b: std::thread::JoinHandle<common::Out>, label: &str) -> BenchReport {
    let Ok(o) = b.join() else {
        panic!("{label}: running iocp-echo bench failed (the message above says why)")
    };
    let (out, err) = (&o.stdout, &o.stderr);
    assert_eq!(
        o.code, 0,
        "{label}: iocp-echo bench failed\nstdout: {out}\nstderr: {err}"
    );
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{label}: bench --json output ({e}): {out}"));
    let num = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{label}: bench {k}: {out}"))
    };
    assert_eq!(num("connections"), BENCH_CONNS, "{label}: {out}");
    assert_eq!(num("connect_failures"), 0, "{label}: {out}");
    assert_eq!(v["errors"], serde_json::json!({}), "{label}: {out}");
    let r = BenchReport {
        messages: num("messages"),
        bytes: num("bytes"),
    };
    assert!(r.messages > 0, "{label}: the bench verified nothing: {out}");
    r
}

// ------------------------------------------------------------------ churn

/// Churn threads (short connections, one at a time each) and their pace
/// over all threads: they spread the churn over the whole load (a thread
/// that falls behind goes on at once, so a slow machine gets fewer).
const CHURN_THREADS: u64 = 6;
const CHURN_PER_SEC: u64 = 600;
/// At most this many short connections per combination (the bound on the
/// churn's count; the idle holders are bounded by time: each batch stays
/// silent ≥ 0.5 s).
const MAX_CHURN: u64 = 12_000;
/// The largest churn stream, and the largest write or read of it. Less than
/// the server's `--max-pending` (256 KiB) plus the socket buffers, so a
/// client that writes before it reads can never deadlock with the server.
const MAX_STREAM: usize = 48 * 1024;
const MAX_CHUNK: usize = 8 * 1024;

fn connect(run: &Run) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&run.addr, Duration::from_secs(5))
        .map_err(|e| format!("connect to {}: {e}", run.addr))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    Ok(s)
}

/// The echo of one connection so far, checked as it arrives.
struct Echo<'a> {
    what: String,
    sent: &'a [u8],
    got: usize,
    buf: Vec<u8>,
}

impl Echo<'_> {
    /// One `read` of at most `want` bytes; the bytes must continue the
    /// stream exactly. Returns how many came (0 = EOF).
    fn read_some(&mut self, s: &mut TcpStream, want: usize) -> Result<usize, String> {
        let n = s
            .read(&mut self.buf[..want.clamp(1, MAX_CHUNK)])
            .map_err(|e| format!("{}: read after {} bytes: {e}", self.what, self.got))?;
        let fresh = &self.buf[..n];
        let end = self.got + n;
        if end > self.sent.len() {
            return Err(format!(
                "{}: {} bytes echoed but only {} sent",
                self.what,
                end,
                self.sent.len()
            ));
        }
        if let Some(i) = fresh
            .iter()
            .zip(&self.sent[self.got..end])
            .position(|(a, b)| a != b)
        {
            return Err(format!(
                "{}: echo differs at byte offset {}: sent {:#04x}, received {:#04x}",
                self.what,
                self.got + i,
                self.sent[self.got + i],
                fresh[i]
            ));
        }
        self.got = end;
        Ok(n)
    }

    /// Reads until `upto` bytes have come back; EOF before that fails.
    fn read_to(&mut self, s: &mut TcpStream, upto: usize, rng: &mut Rng) -> Result<(), String> {
        while self.got < upto {
            let want = rng.range(1, upto - self.got);
            if self.read_some(s, want)? == 0 {
                return Err(format!(
                    "{}: EOF after {} of {upto} bytes",
                    self.what, self.got
                ));
            }
        }
        Ok(())
    }
}

/// Short connections one after the other until the load is over.
fn churn(run: &Run, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let t = &run.tally;
    let mut n = 0u64;
    let every = Duration::from_secs(CHURN_THREADS) / CHURN_PER_SEC as u32;
    loop {
        sleep_until(run.t0 + every * n as u32);
        if !run.take() {
            break;
        }
        n += 1;
        let mut s = connect(run)?;
        count(&t.connects, 1);
        let len = rng.range(0, MAX_STREAM);
        let data = rng.bytes(len);
        let kind = rng.range(0, 9);
        let mut e = Echo {
            what: format!("churn thread {seed:#x} connection {n} ({len} bytes)"),
            sent: &data,
            got: 0,
            buf: vec![0; MAX_CHUNK],
        };
        // A reset cuts the stream at a random point; the others send all.
        let cut = if kind >= 7 { rng.range(0, len) } else { len };
        let mut off = 0;
        while off < cut {
            let c = rng.range(1, MAX_CHUNK).min(cut - off);
            s.write_all(&data[off..off + c])
                .map_err(|err| format!("{}: write at {off}: {err}", e.what))?;
            off += c;
            // Sometimes read back part of what is outstanding.
            if e.got < off && rng.range(0, 1) == 0 {
                let want = rng.range(1, off - e.got);
                if e.read_some(&mut s, want)? == 0 {
                    return Err(format!("{}: EOF after {} bytes", e.what, e.got));
                }
            }
        }
        match kind {
            // Half-close: FIN, then everything comes back, then EOF.
            0..=3 => {
                s.shutdown(Shutdown::Write)
                    .map_err(|err| format!("{}: shutdown(Write): {err}", e.what))?;
                e.read_to(&mut s, len, &mut rng)?;
                if e.read_some(&mut s, 1)? != 0 {
                    return Err(format!("{}: no EOF after the whole echo", e.what));
                }
                count(&t.half_closes, 1);
            }
            // The whole echo, then a plain close.
            4..=6 => {
                e.read_to(&mut s, len, &mut rng)?;
                count(&t.closes, 1);
            }
            // Reset mid-stream: perhaps read a little more, then RST.
            _ => {
                if e.got < off && rng.range(0, 1) == 0 {
                    let upto = rng.range(e.got + 1, off);
                    e.read_to(&mut s, upto, &mut rng)?;
                }
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .map_err(|err| format!("{}: SO_LINGER 0: {err}", e.what))?;
                count(&t.resets, 1);
            }
        }
        count(&t.verified, e.got as u64);
        drop(s);
    }
    Ok(())
}

/// Idle-holder threads and the connections each holds at once.
const IDLE_THREADS: u64 = 2;
const IDLE_BATCH: usize = 16;

/// Batches of connections that stay silent for a while, then each verifies
/// one echo.
fn idle_holders(run: &Run, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let t = &run.tally;
    let mut batch = 0;
    loop {
        // Leave time for the echo before the load ends.
        let left = run.until.saturating_duration_since(Instant::now());
        let idle = Duration::from_millis(rng.range(500, 4000) as u64);
        if idle + Duration::from_millis(500) > left || !run.going() {
            return Ok(());
        }
        batch += 1;
        let mut held = Vec::with_capacity(IDLE_BATCH);
        for _ in 0..IDLE_BATCH {
            held.push(connect(run)?);
            count(&t.connects, 1);
        }
        std::thread::sleep(idle);
        for (i, s) in held.iter_mut().enumerate() {
            let n = rng.range(1, 512);
            let data = rng.bytes(n);
            let mut e = Echo {
                what: format!(
                    "idle thread {seed:#x} batch {batch} connection {i} (silent {idle:?})"
                ),
                sent: &data,
                got: 0,
                buf: vec![0; MAX_CHUNK],
            };
            s.write_all(&data)
                .map_err(|err| format!("{}: write: {err}", e.what))?;
            e.read_to(s, data.len(), &mut rng)?;
            count(&t.verified, e.got as u64);
            count(&t.idle_held, 1);
        }
    }
}
