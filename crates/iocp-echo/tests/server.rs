//! Integration tests of `iocp-echo server`: the real binary, on every engine
//! (`--backend uring`, `--backend epoll`) and both models (`pool`,
//! `per-core`), with clients nobody here wrote (socat, nc) and small Rust
//! clients. Every wait is bounded.
//!
//! A backend this machine cannot run (the server cannot create a port on
//! it) fails its cases, unless `IOCP_ALLOW_MISSING_BACKEND` names it: then
//! they print `SKIPPED` and pass. Missing tools (socat, nc) fail loudly.
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_same, connect, echo_chunks, log_field, missing_backend, need_tool, start, Rng, Server,
    Spec, Started,
};

/// One (backend, model) cell of the matrix.
struct Ctx {
    backend: &'static str,
    model: &'static str,
}

impl Ctx {
    fn label(&self) -> String {
        format!("{}/{}", self.backend, self.model)
    }

    fn base_args(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--backend",
            self.backend,
            "--model",
            self.model,
            "--workers",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn start(&self, extra: &[&str]) -> Option<Server> {
        self.start_spec(Spec::new(&self.base_args(extra)))
    }

    fn start_spec(&self, spec: Spec) -> Option<Server> {
        match start(&self.label(), spec) {
            Started::Up(s) => Some(s),
            // `missing_backend` printed the SKIPPED line (the variable
            // allows it) or failed the test.
            Started::Skipped(_) => None,
        }
    }
}

macro_rules! matrix {
    ($($case:ident),* $(,)?) => {
        mod uring_pool {
            $( #[test] fn $case() { super::$case(&super::Ctx { backend: "uring", model: "pool" }) } )*
        }
        mod uring_per_core {
            $( #[test] fn $case() { super::$case(&super::Ctx { backend: "uring", model: "per-core" }) } )*
        }
        mod epoll_pool {
            $( #[test] fn $case() { super::$case(&super::Ctx { backend: "epoll", model: "pool" }) } )*
        }
        mod epoll_per_core {
            $( #[test] fn $case() { super::$case(&super::Ctx { backend: "epoll", model: "per-core" }) } )*
        }
    };
}

matrix!(
    socat_and_nc,
    random_chunks_pipelined,
    exact_16_mib,
    concurrent_1000,
    half_close,
    reset_mid_stream,
    never_reading_client,
    sigterm_under_load,
    drain_deadline_cuts,
    drain_spares_a_talking_connection,
    emfile_recovery,
    max_conns,
    idle_timeout,
    udp_echo_rate_limited,
    socket_activation,
);

/// A server that exits because it cannot create a port on its backend
/// fails the test naming the backend, the reason and the variable that
/// would allow the skip; only `IOCP_ALLOW_MISSING_BACKEND` naming the
/// backend turns it into a `SKIPPED` pass. Any other early exit is not a
/// missing backend. (The log lines are the server's, as it prints them when
/// seccomp refuses `io_uring_setup`.)
#[test]
fn missing_backend_fails_unless_allowed() {
    let reason =
        "cannot create a completion port (backend uring): Operation not permitted (os error 1)";
    let log = format!(
        "2026-01-01T00:00:00.000000Z ERROR iocp_echo::server: {reason}\niocp-echo server: {reason}"
    );
    let why = format!("the server cannot run on this machine: {reason}");
    let r = std::panic::catch_unwind(|| missing_backend("uring/pool", &log));
    if iocp_test_support::missing_backend_allowed("uring") {
        assert_eq!(r.ok(), Some(Some(why)), "allowed: a skip with the reason");
    } else {
        let p = r.expect_err("a missing backend must fail the test");
        let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(
            msg,
            format!(
                "uring/pool: {why}. Set IOCP_ALLOW_MISSING_BACKEND=uring to skip its tests on \
                 this machine (CI never does)"
            )
        );
    }
    let other =
        "iocp-echo server: cannot listen on tcp://127.0.0.1:7: Permission denied (os error 13)";
    assert_eq!(missing_backend("epoll/pool", other), None);
}

/// Runs `cmd` with `input` on its stdin; returns its stdout (20 s at most).
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client tool");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let r = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let st = common::wait_exit(&mut child, Duration::from_secs(20));
    let _ = w.join();
    let got = r.join().unwrap();
    assert!(st.is_some(), "{cmd:?} did not finish within 20 s");
    got
}

// ------------------------------------------------------------------- cases

fn socat_and_nc(cx: &Ctx) {
    need_tool("socat");
    need_tool("nc");
    let Some(s) = cx.start(&[]) else { return };
    let port = s.tcp.port().to_string();
    let data = Rng::new(1).bytes(1 << 20);
    // socat half-closes after stdin's EOF and, with -t, waits for the rest
    // of the echo (the server closes once everything is echoed).
    let out = run_with_stdin(
        Command::new("socat").args(["-t", "10", "-", &format!("TCP:127.0.0.1:{port}")]),
        &data,
    );
    assert_same(&format!("{}: socat", cx.label()), &data, &out);
    // nc -N: shutdown(SHUT_WR) after stdin's EOF, then read to the end.
    let out = run_with_stdin(
        Command::new("nc").args(["-N", "-w", "10", "127.0.0.1", &port]),
        &data,
    );
    assert_same(&format!("{}: nc", cx.label()), &data, &out);
    s.stop_ok();
}

fn random_chunks_pipelined(cx: &Ctx) {
    let Some(s) = cx.start(&[]) else { return };
    let addr = s.tcp;
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = Arc::new(Rng::new(100 + i).bytes(2 << 20));
                let got = echo_chunks(addr, data.clone(), 7 + i, 1, 65_536);
                assert_same(&format!("connection {i}"), &data, &got);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    s.stop_ok();
}

fn exact_16_mib(cx: &Ctx) {
    let Some(s) = cx.start(&[]) else { return };
    let data = Arc::new(Rng::new(16).bytes(16 << 20));
    let got = echo_chunks(s.tcp, data.clone(), 16, 64 * 1024, 256 * 1024);
    assert_same("16 MiB", &data, &got);
    let log = s.stop_ok();
    assert_eq!(
        log_field(&log, "final stats", "bytes_out"),
        Some(16 << 20),
        "{log}"
    );
}

fn concurrent_1000(cx: &Ctx) {
    let Some(s) = cx.start(&[]) else { return };
    let mut conns: Vec<TcpStream> = (0..1000).map(|_| connect(s.tcp)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("hello {i:05}\n").as_bytes()).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut b = [0u8; 12];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&b, format!("hello {i:05}\n").as_bytes(), "connection {i}");
    }
    drop(conns);
    let log = s.stop_ok();
    assert_eq!(
        log_field(&log, "final stats", "conns_total"),
        Some(1000),
        "{log}"
    );
    assert_eq!(log_field(&log, "final stats", "rejected"), Some(0));
}

fn half_close(cx: &Ctx) {
    let Some(s) = cx.start(&[]) else { return };
    // Send more than --max-pending, half-close before reading anything: the
    // server must echo all of it after the FIN, then close its side.
    let data = Rng::new(3).bytes(300 * 1024);
    let mut c = connect(s.tcp);
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("read to EOF (no reset)");
    assert_same("half-close", &data, &got);
    // A tiny one.
    let mut c = connect(s.tcp);
    c.write_all(b"abc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    s.stop_ok();
}

fn reset_mid_stream(cx: &Ctx) {
    let Some(s) = cx.start(&["--stats", "100ms"]) else {
        return;
    };
    let data = Rng::new(5).bytes(4 << 20);
    for round in 0..3 {
        let mut c = connect(s.tcp);
        c.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Write without reading until the buffers fill (or all is sent).
        let mut off = 0;
        while off < data.len() {
            match c.write(&data[off..(off + 64 * 1024).min(data.len())]) {
                Ok(n) => off += n,
                Err(_) => break,
            }
        }
        // Abort: SO_LINGER 0 makes close send RST.
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        let _ = round;
    }
    // Others are served.
    let small = Arc::new(Rng::new(6).bytes(256 * 1024));
    assert_same(
        "after resets",
        &small,
        &echo_chunks(s.tcp, small.clone(), 6, 1000, 9000),
    );
    // The server forgets the reset connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.log();
        if log_field(&log, "stats", "conns_now") == Some(0)
            && log_field(&log, "stats", "resets").unwrap_or(0) >= 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reset connections not released:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.stop_ok();
}

fn never_reading_client(cx: &Ctx) {
    let Some(s) = cx.start(&["--max-pending", "256KiB"]) else {
        return;
    };
    // Warm up: pools, allocator arenas, rings.
    let warm: Vec<_> = (0..4u64)
        .map(|i| {
            let addr = s.tcp;
            std::thread::spawn(move || {
                let d = Arc::new(Rng::new(40 + i).bytes(4 << 20));
                assert_same(
                    "warm-up",
                    &d,
                    &echo_chunks(addr, d.clone(), i, 16 * 1024, 128 * 1024),
                );
            })
        })
        .collect();
    for t in warm {
        if t.join().is_err() {
            panic!(
                "{}: warm-up echo failed; server log:\n{}",
                cx.label(),
                s.log()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = s.rss_kib();

    // The hog: sends up to 256 MiB and never reads.
    let hog = connect(s.tcp);
    hog.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let stalled = Arc::new(AtomicBool::new(false));
    let (sent2, stalled2) = (sent.clone(), stalled.clone());
    let mut hw = hog.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 256 * 1024];
        while sent2.load(Ordering::Relaxed) < 256 << 20 {
            match hw.write(&chunk) {
                Ok(n) => {
                    sent2.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    stalled2.store(true, Ordering::Release);
                    return;
                }
                Err(e) => panic!("hog write: {e}"),
            }
        }
    });
    // While it pushes, another client is served.
    let other = Arc::new(Rng::new(41).bytes(1 << 20));
    assert_same(
        "other client",
        &other,
        &echo_chunks(s.tcp, other.clone(), 41, 1000, 50_000),
    );
    writer.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        stalled.load(Ordering::Acquire),
        "{}: the server kept reading a client that never reads ({} MiB accepted)",
        cx.label(),
        sent >> 20
    );
    std::thread::sleep(Duration::from_millis(200));
    let after = s.rss_kib();
    let growth = after.saturating_sub(before);
    let limit = 256 + 16 * 1024;
    println!(
        "{}: hog sent {} KiB before stalling; RSS {before} -> {after} KiB (+{growth} KiB, limit +{limit} KiB)",
        cx.label(),
        sent >> 10
    );
    assert!(
        growth <= limit,
        "{}: RSS grew by {growth} KiB (> max-pending + 16 MiB)",
        cx.label()
    );
    // Still serving others while the hog sits there.
    let again = Arc::new(Rng::new(42).bytes(64 * 1024));
    assert_same(
        "while stalled",
        &again,
        &echo_chunks(s.tcp, again.clone(), 42, 100, 5000),
    );
    drop(hog);
    s.stop_ok();
}

/// The most a TCP socket's send buffer may grow to (the third field of
/// `net.ipv4.tcp_wmem`): at most this much of an echo (plus what the
/// client's receive buffer takes) can be on its way to a client that does
/// not read; the rest stays pending in the server.
fn tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// A client with a small, fixed receive buffer (set before connecting).
fn connect_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(64 * 1024).unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A client that echoed once (so it is admitted), then writes and never
/// reads, until the server cuts it.
struct Stuck {
    conn: TcpStream,
    addr: SocketAddr,
    written: Arc<AtomicUsize>,
    /// Ends with the error the cut gave its writes.
    writer: std::thread::JoinHandle<std::io::Error>,
}

impl Stuck {
    fn connect(server: SocketAddr) -> Stuck {
        let mut conn = connect_small_rcvbuf(server);
        conn.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        conn.read_exact(&mut b).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let (mut w, n) = (conn.try_clone().unwrap(), written.clone());
        let writer = std::thread::spawn(move || {
            let chunk = vec![1u8; 256 * 1024];
            loop {
                match w.write(&chunk) {
                    Ok(k) => n.fetch_add(k, Ordering::AcqRel),
                    Err(e) => return e,
                };
            }
        });
        Stuck {
            addr: conn.local_addr().unwrap(),
            conn,
            written,
            writer,
        }
    }

    /// Waits until it wrote more than the server can echo to it: from then
    /// on the server holds unechoed bytes of it, so it is never quiet.
    fn wait_stuck(&self) {
        wait_until("the stuck client wrote", Duration::from_secs(30), || {
            self.written.load(Ordering::Acquire) > tcp_wmem_max() + (1 << 20)
        });
    }

    /// Asserts the server cut it (the log line `CAUSE: cutting connection`
    /// names it, its writes ended with a reset) and the drain summary.
    fn assert_cut(self, label: &str, log: &str, cause: &str, open: u64, drained: u64) {
        let e = self.writer.join().unwrap();
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{label}: the stuck client's writes ended with {e}"
        );
        let peer = format!("peer={}", self.addr);
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{cause}: cutting connection")) && l.contains(&peer)),
            "{label}: the stuck client's cut is not logged:\n{log}"
        );
        let summary = ["open", "drained", "cut"].map(|k| log_field(log, "shutdown:", k));
        assert_eq!(
            summary,
            [Some(open), Some(drained), Some(1)],
            "{label}: open, drained, cut\n{log}"
        );
        drop(self.conn);
    }
}

/// Waits (at most `within`) until `f` holds.
fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many shards (each logs its own drain) the context's server has.
fn shards(cx: &Ctx) -> usize {
    if cx.model == "per-core" {
        2
    } else {
        1
    }
}

/// The drain finishes every echo in flight, closes the quiet connection and
/// refuses new ones; the second SIGTERM cuts the client that never reads.
/// Nothing here depends on timing: each finisher has sent all its data and
/// its FIN before the signal, more than the server can echo to it while it
/// does not read, so the server holds unechoed bytes for it (never quiet)
/// until the finisher starts reading, after the drain began; the summary
/// must then count exactly six connections open, five drained, one cut.
fn sigterm_under_load(cx: &Ctx) {
    let size = tcp_wmem_max() + (4 << 20);
    // The server reads a finisher's data whole, whether it echoes or not.
    let cap = (size + (8 << 20)).to_string();
    let Some(mut s) = cx.start(&[
        "--drain-timeout",
        "60s",
        "--max-pending",
        &cap,
        "--stats",
        "100ms",
    ]) else {
        return;
    };
    let addr = s.tcp;
    // An idle client: closed soon after the drain begins (nothing in flight).
    let mut idle = connect(addr);
    idle.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    idle.read_exact(&mut b).unwrap();
    // A stuck client that never reads: only the second signal ends it.
    let stuck = Stuck::connect(addr);

    let written = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let finishers: Vec<_> = (0..4u64)
        .map(|i| {
            let (written, go) = (written.clone(), go.clone());
            std::thread::spawn(move || {
                let data = Rng::new(70 + i).bytes(size);
                let mut c = connect_small_rcvbuf(addr);
                c.write_all(&data).expect("finisher write");
                c.shutdown(Shutdown::Write).unwrap();
                written.fetch_add(1, Ordering::AcqRel);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !go.load(Ordering::Acquire) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let mut got = Vec::new();
                c.read_to_end(&mut got).expect("finisher read");
                assert_same(&format!("finisher {i}"), &data, &got);
            })
        })
        .collect();
    wait_until(
        "finishers wrote everything",
        Duration::from_secs(30),
        || written.load(Ordering::Acquire) == 4,
    );
    stuck.wait_stuck();
    wait_until("six connections open", Duration::from_secs(10), || {
        log_field(&s.log(), "stats: stats ", "conns_now") == Some(6)
    });

    s.signal(libc::SIGTERM);
    wait_until("every shard draining", Duration::from_secs(10), || {
        s.count_log("draining: accepts stopped") == shards(cx)
    });
    // New connections are refused once accepting stops.
    let refused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(_) => true,
            Ok(mut c) => {
                // Accepted by the kernel before the listener closed: it
                // must not be served.
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = c.write_all(b"x");
                let mut b = [0u8; 1];
                !matches!(c.read(&mut b), Ok(1))
            }
        }
    });
    assert!(refused, "new connections still served after SIGTERM");
    go.store(true, Ordering::Release);
    for f in finishers {
        f.join()
            .expect("a finisher's echo was not completed during the drain");
    }
    // The idle connection is closed with a FIN while draining.
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = idle.read(&mut b).expect("idle client read");
    assert_eq!(n, 0, "idle connection should see EOF while draining");
    // The stuck one is still open: the second signal cuts it.
    s.signal(libc::SIGTERM);
    let (label, log) = exits_ok(cx, &mut s);
    stuck.assert_cut(&label, &log, "cut requested", 6, 5);
}

/// Waits (15 s at most) for the server to exit, which it must do with
/// success; returns the test's label and the server's log.
fn exits_ok(cx: &Ctx, s: &mut Server) -> (String, String) {
    let st = s.wait_exit(Duration::from_secs(15));
    let log = s.log();
    let label = cx.label();
    assert!(
        st.is_some_and(|s| s.success()),
        "{label}: exit {st:?}\n{log}"
    );
    (label, log)
}

/// Sends the byte `i` on `c` and reads its echo (`what`: the failure).
fn ping(c: &mut TcpStream, i: u8, what: &str) {
    c.write_all(&[i]).unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).expect(what);
    assert_eq!(b[0], i);
}

/// While draining, a connection that talks every 10 ms is not closed as
/// quiet (100 ms), however long it was open before the drain — without an
/// idle timeout the server records traffic only from the drain on — and
/// it is closed with a FIN once it stops talking.
fn drain_spares_a_talking_connection(cx: &Ctx) {
    let Some(mut s) = cx.start(&["--drain-timeout", "60s"]) else {
        return;
    };
    let mut c = connect(s.tcp);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut i = 0u8;
    let mut talk_for = |c: &mut TcpStream, d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            i = i.wrapping_add(1);
            ping(c, i, "a talking connection was closed while draining");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    talk_for(&mut c, Duration::from_millis(300));
    s.signal(libc::SIGTERM);
    wait_until("every shard draining", Duration::from_secs(10), || {
        s.count_log("draining: accepts stopped") == shards(cx)
    });
    talk_for(&mut c, Duration::from_millis(500));
    let mut b = [0u8; 1];
    let n = c.read(&mut b).expect("a quiet connection's drain is a FIN");
    assert_eq!(n, 0);
    let (label, log) = exits_ok(cx, &mut s);
    let summary = ["open", "drained", "cut"].map(|k| log_field(&log, "shutdown:", k));
    assert_eq!(
        summary,
        [Some(1), Some(1), Some(0)],
        "{label}: open, drained, cut\n{log}"
    );
}

/// A client that never reads is never quiet: the drain deadline cuts it,
/// not before.
fn drain_deadline_cuts(cx: &Ctx) {
    let cap = (tcp_wmem_max() + (4 << 20)).to_string();
    let Some(mut s) = cx.start(&["--drain-timeout", "1s", "--max-pending", &cap]) else {
        return;
    };
    let stuck = Stuck::connect(s.tcp);
    stuck.wait_stuck();
    s.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let st = s.wait_exit(Duration::from_secs(15));
    let took = t0.elapsed();
    let log = s.log();
    let label = cx.label();
    assert!(
        st.is_some_and(|s| s.success()),
        "{label}: exit {st:?}\n{log}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{label}: exit {took:?} after SIGTERM with --drain-timeout 1s\n{log}"
    );
    stuck.assert_cut(&label, &log, "drain timeout", 1, 0);
}

fn emfile_recovery(cx: &Ctx) {
    let mut spec = Spec::new(&cx.base_args(&[]));
    spec.nofile = Some(64);
    let Some(s) = cx.start_spec(spec) else { return };
    // More clients than the server has descriptors.
    let clients: Vec<TcpStream> = (0..100).map(|_| connect(s.tcp)).collect();
    assert!(
        s.wait_log("pausing accepts", Duration::from_secs(5)),
        "{}: no EMFILE back-off logged:\n{}",
        cx.label(),
        s.log()
    );
    // Backing off, not spinning.
    let t = Instant::now();
    let c0 = s.cpu_ticks();
    std::thread::sleep(Duration::from_millis(600));
    let ticks = s.cpu_ticks() - c0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = ticks as f64 / hz / t.elapsed().as_secs_f64();
    assert!(
        cpu < 0.5,
        "{}: server used {:.0}% CPU while out of descriptors",
        cx.label(),
        cpu * 100.0
    );
    drop(clients);
    // Once descriptors free up, a new client is served within 1 s.
    let t0 = Instant::now();
    let mut c = connect(s.tcp);
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).expect("served after EMFILE");
    assert_eq!(&b, b"ping");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{}: served {took:?} after descriptors freed up",
        cx.label()
    );
    drop(c);
    let log = s.stop_ok();
    assert!(log_field(&log, "final stats", "accept_pauses").unwrap_or(0) >= 1);
}

fn max_conns(cx: &Ctx) {
    let Some(s) = cx.start(&["--max-conns", "2"]) else {
        return;
    };
    let echo = |c: &mut TcpStream, m: &[u8]| -> bool {
        if c.write_all(m).is_err() {
            return false;
        }
        let mut b = vec![0u8; m.len()];
        c.read_exact(&mut b).is_ok() && b == m
    };
    let mut a = connect(s.tcp);
    let mut b = connect(s.tcp);
    assert!(echo(&mut a, b"a"));
    assert!(echo(&mut b, b"b"));
    // The third is closed at once.
    let mut c = connect(s.tcp);
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t0 = Instant::now();
    let _ = c.write_all(b"c");
    let mut buf = [0u8; 1];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{}: third connection was served: {other:?}", cx.label()),
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    // After one leaves, a new one is served.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut d = connect(s.tcp);
        d.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if echo(&mut d, b"d") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed after a client left"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(echo(&mut b, b"b2"));
    let log = s.stop_ok();
    assert!(
        log_field(&log, "final stats", "rejected").unwrap_or(0) >= 1,
        "{log}"
    );
    assert!(log.contains("--max-conns reached"), "{log}");
}

/// A connection quiet for `--idle-timeout` is closed with a FIN; one that
/// talks every 100 ms stays open past it. (A 1 s timeout against a 100 ms
/// rhythm: a loaded machine may delay the chatty client, not tenfold.)
fn idle_timeout(cx: &Ctx) {
    let Some(s) = cx.start(&["--idle-timeout", "1s"]) else {
        return;
    };
    let mut quiet = connect(s.tcp);
    quiet.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    quiet.read_exact(&mut b).unwrap();
    let t0 = Instant::now();
    // A chatty client stays open meanwhile, and after.
    let addr = s.tcp;
    let chatty = std::thread::spawn(move || {
        let mut c = connect(addr);
        for i in 0..15u8 {
            ping(&mut c, i, "chatty client closed while active");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    quiet
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = quiet.read(&mut b).expect("idle close is a FIN");
    let took = t0.elapsed();
    assert_eq!(n, 0);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "{}: idle connection closed after {took:?}",
        cx.label()
    );
    chatty.join().unwrap();
    let log = s.stop_ok();
    assert_eq!(
        log_field(&log, "final stats", "idle_closed"),
        Some(1),
        "{log}"
    );
}

fn udp_echo_rate_limited(cx: &Ctx) {
    need_tool("nc");
    need_tool("socat");
    let Some(mut s) = cx.start(&["--udp", "--udp-rate", "10"]) else {
        return;
    };
    let u = s.udp();
    assert_eq!(u.ip(), s.tcp.ip());
    // Tools first (each takes a token).
    let out = run_with_stdin(
        Command::new("nc").args(["-u", "-w", "1", "127.0.0.1", &u.port().to_string()]),
        b"nc-udp\n",
    );
    assert_eq!(out, b"nc-udp\n", "{}: nc -u", cx.label());
    let out = run_with_stdin(
        Command::new("socat").args(["-T", "1", "-", &format!("UDP:127.0.0.1:{}", u.port())]),
        b"socat-udp\n",
    );
    assert_eq!(out, b"socat-udp\n", "{}: socat UDP", cx.label());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // A burst of 100: about the bucket's worth comes back, the rest is dropped.
    for i in 0..100u32 {
        sock.send_to(&i.to_le_bytes(), u).unwrap();
    }
    let mut back = 0;
    let mut b = [0u8; 64];
    while let Ok((n, from)) = sock.recv_from(&mut b) {
        assert_eq!(from, u);
        assert_eq!(n, 4);
        back += 1;
    }
    assert!(
        (1..=15).contains(&back),
        "{}: {back} of 100 datagrams echoed at --udp-rate 10",
        cx.label()
    );
    let log = s.stop_ok();
    assert!(
        log_field(&log, "final stats", "udp_dropped").unwrap_or(0) >= 80,
        "{log}"
    );
}

fn socket_activation(cx: &Ctx) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(128).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let args = vec![
        "--backend".to_string(),
        cx.backend.to_string(),
        "--model".to_string(),
        cx.model.to_string(),
        "--workers".to_string(),
        "2".to_string(),
    ];
    let mut spec = Spec::new(&args);
    spec.inherit = Some(l);
    let Some(s) = cx.start_spec(spec) else { return };
    assert_eq!(s.tcp, addr, "the inherited socket's address is printed");
    assert!(
        s.wait_log("socket activation: fd 3", Duration::from_secs(2)),
        "{}",
        s.log()
    );
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            std::thread::spawn(move || {
                let d = Arc::new(Rng::new(90 + i).bytes(64 * 1024));
                assert_same("activated", &d, &echo_chunks(addr, d.clone(), i, 500, 8000));
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    s.stop_ok();
}

// ------------------------------------------------------- outside the matrix

/// `iocp-echo server ARGS` that must fail: returns (exit code, stderr).
fn run_failing(args: &[&str]) -> (Option<i32>, String) {
    let args = [&["server"], args].concat();
    let o = common::run_with(
        &args,
        None,
        &[("NO_COLOR", "1"), ("RUST_LOG", "info")],
        Duration::from_secs(10),
    );
    assert!(
        !o.stdout.contains("listening on"),
        "{args:?} printed a listening line: {}",
        o.stdout
    );
    (Some(o.code), o.stderr)
}

#[test]
fn busy_address_exit_1() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for model in ["pool", "per-core"] {
        let (code, err) = run_failing(&["--listen", &addr, "--model", model, "--workers", "2"]);
        assert_eq!(code, Some(1), "{model}: {err}");
        assert!(
            err.contains(&format!("tcp://{addr}")),
            "{model}: the message names the address: {err}"
        );
        assert!(
            err.contains("Address already in use"),
            "{model}: the message has the OS error: {err}"
        );
    }
}

#[test]
fn unreachable_address_exit_1() {
    // TEST-NET-1: never a local address, so bind fails (no traffic is sent).
    let (code, err) = run_failing(&["--listen", "192.0.2.1:7007"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tcp://192.0.2.1:7007"), "{err}");
    assert!(err.contains("Cannot assign requested address"), "{err}");
}

/// The pool model with one worker uses the standing pooled receive (its
/// completions cannot be reordered with a single thread): the paths the
/// matrix covers for per-core, on the pool model.
#[test]
fn pool_single_worker_pooled_receive() {
    let Started::Up(s) = start(
        "uring/pool/1",
        Spec::new(&[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "uring",
            "--model",
            "pool",
            "--workers",
            "1",
        ]),
    ) else {
        panic!("io_uring is expected to work here")
    };
    let data = Arc::new(Rng::new(11).bytes(8 << 20));
    assert_same(
        "pool/1",
        &data,
        &echo_chunks(s.tcp, data.clone(), 11, 1, 200_000),
    );
    let small = Rng::new(12).bytes(300 * 1024);
    let mut c = connect(s.tcp);
    c.write_all(&small).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_same("pool/1 half-close", &small, &got);
    let log = s.stop_ok();
    assert_eq!(log_field(&log, "final stats", "errors"), Some(0), "{log}");
}
