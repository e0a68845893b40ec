//! Integration tests of `iocp-echo server --metrics`: live scrapes parsed
//! and checked against the traffic the test made, `/readyz` as accepts
//! pause and resume (`--max-conns`) and through a SIGTERM with
//! `--drain-delay`, and the HTTP side's limits (bad requests, oversized
//! requests, more than 16 connections, a client too slow to finish its
//! request). Every wait is bounded.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, http_get, http_raw, start, Server, Spec, Started};

fn server(label: &str, args: &[&str]) -> Server {
    let mut v = vec!["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
    v.extend_from_slice(args);
    match start(label, Spec::new(&v)) {
        Started::Up(s) => s,
        Started::Skipped(why) => panic!("{label}: the server did not start: {why}"),
    }
}

/// One scrape: every sample by its series (`name{labels}`), and the
/// declared type of every family.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn take(addr: SocketAddr) -> Scrape {
        let r = http_get(addr, "/metrics");
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(
            r.head.contains("Content-Type: text/plain; version=0.0.4"),
            "{}",
            r.head
        );
        Scrape::parse(&r.body)
    }

    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE name type");
                assert!(
                    types.insert(name.to_string(), ty.to_string()).is_none(),
                    "{name} declared twice"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let v: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}"));
                let name = series.split('{').next().unwrap();
                assert!(
                    types.contains_key(name),
                    "{name} has samples but no TYPE line"
                );
                assert!(
                    samples.insert(series.to_string(), v).is_none(),
                    "{series} twice"
                );
            }
        }
        for name in types.keys() {
            assert!(helped.contains(name), "{name} has no HELP line");
            assert!(
                name.starts_with("iocp_echo_") || name.starts_with("process_"),
                "{name}: not in the iocp_echo_ or process_ namespace"
            );
            if types[name] == "counter" {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            }
        }
        Scrape { samples, types }
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series}; have {:?}", self.samples.keys()))
    }

    /// The sum over every series of the family `name`.
    fn sum(&self, name: &str) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, &v)| v)
            .collect();
        assert!(!v.is_empty(), "no series of {name}");
        v.iter().sum()
    }

    fn labels_of(&self, name: &str) -> Vec<String> {
        self.samples
            .keys()
            .filter(|k| k.split('{').next() == Some(name))
            .map(|k| k[name.len()..].to_string())
            .collect()
    }
}

/// Echoes `n` bytes on `c` and checks they come back.
fn echo(c: &mut TcpStream, n: usize, seed: u8) {
    let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    let mut w = c.try_clone().unwrap();
    let d2 = data.clone();
    let t = std::thread::spawn(move || w.write_all(&d2).unwrap());
    let mut got = vec![0u8; n];
    c.read_exact(&mut got).expect("echo");
    t.join().unwrap();
    assert!(got == data, "echo differs");
}

/// Polls `/readyz` until its status is `want` (at most `within`); returns
/// the body of that answer.
fn wait_ready(addr: SocketAddr, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let r = http_get(addr, "/readyz");
        if r.status == want {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {} ({:?}) after {within:?}, want {want}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape_changes_with_traffic(label: &str, args: &[&str], who: &str, shards: usize) {
    let mut s = server(label, args);
    let m = s.metrics();
    let before = Scrape::take(m);
    for name in [
        "iocp_echo_connections_total",
        "iocp_echo_received_bytes_total",
        "iocp_echo_sent_bytes_total",
        "iocp_echo_connections_rejected_total",
        "iocp_echo_resets_total",
        "iocp_echo_idle_closes_total",
        "iocp_echo_connection_errors_total",
        "iocp_echo_accept_errors_total",
        "iocp_echo_accept_pauses_total",
        "iocp_echo_read_pauses_total",
        "iocp_echo_pooled_chunks_copied_total",
        "iocp_echo_udp_received_datagrams_total",
        "iocp_echo_udp_sent_datagrams_total",
        "iocp_echo_udp_dropped_datagrams_total",
        "iocp_echo_handled_completions_total",
        "iocp_echo_engine_completions_total",
        "iocp_echo_engine_enters_total",
        "iocp_echo_engine_cq_overflows_total",
        "iocp_echo_engine_starved_receives_total",
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some("counter"),
            "{name}"
        );
    }
    for name in [
        "iocp_echo_connections_open",
        "iocp_echo_pool_buffers_in_use",
        "iocp_echo_recv_buffers_pinned",
        "iocp_echo_pool_buffers",
        "iocp_echo_queued_packets",
        "iocp_echo_ready",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some("gauge"),
            "{name}"
        );
    }
    // Per worker (pool) or per shard (per-core), and per port.
    let want: Vec<String> = (0..shards).map(|i| format!("{{{who}=\"{i}\"}}")).collect();
    assert_eq!(
        before.labels_of("iocp_echo_handled_completions_total"),
        want
    );
    let ports = if who == "shard" { shards } else { 1 };
    assert_eq!(
        before.labels_of("iocp_echo_engine_completions_total").len(),
        ports
    );
    assert_eq!(before.get("iocp_echo_ready"), 1.0);
    assert!(before.get("process_resident_memory_bytes") > 1e6);
    let fds0 = before.get("process_open_fds");
    assert!(fds0 >= 3.0, "open fds {fds0}");

    // Three connections, 100 KB each way on each; two stay open.
    let mut conns: Vec<TcpStream> = (0..3).map(|_| connect(s.tcp)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        echo(c, 100_000, i as u8);
    }
    drop(conns.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let a = Scrape::take(m);
        if a.get("iocp_echo_connections_open") == 2.0 {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "connections_open never went to 2"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let d = |name: &str| after.sum(name) - before.sum(name);
    assert_eq!(d("iocp_echo_connections_total"), 3.0);
    assert_eq!(d("iocp_echo_received_bytes_total"), 300_000.0);
    assert_eq!(d("iocp_echo_sent_bytes_total"), 300_000.0);
    assert!(d("iocp_echo_handled_completions_total") >= 6.0);
    assert!(d("iocp_echo_engine_completions_total") >= 6.0);
    assert!(d("iocp_echo_engine_enters_total") >= 1.0);
    assert_eq!(d("iocp_echo_connections_rejected_total"), 0.0);
    // The two open connections hold two descriptors more than before.
    assert!(
        after.get("process_open_fds") >= fds0 + 2.0,
        "fds {} -> {}",
        fds0,
        after.get("process_open_fds")
    );
    drop(conns);
    s.stop_ok();
}

#[test]
fn scrape_pool() {
    scrape_changes_with_traffic(
        "metrics pool",
        &["--model", "pool", "--workers", "2"],
        "worker",
        2,
    );
}

/// Chunks received into pool buffers are sent from them (no copy) while
/// the pool has room; clients that never read pin at most half the pool
/// (their stalled sends hold buffers), after which their chunks are copied
/// out, counted, and other clients are still served.
#[test]
fn pooled_chunks_copied_only_when_stalled_sends_hold_the_pool() {
    const BUFS: f64 = 16.0;
    let mut s = server(
        "pooled copies",
        &[
            "--model",
            "pool",
            "--workers",
            "1",
            "--pool-buffers",
            "16",
            "--max-pending",
            "64KiB",
        ],
    );
    let m = s.metrics();
    let copied = |sc: &Scrape| sc.get("iocp_echo_pooled_chunks_copied_total");
    let before = Scrape::take(m);
    assert_eq!(before.get("iocp_echo_pool_buffers{shard=\"0\"}"), BUFS);
    // Ping-pong: one chunk held at a time, never a copy.
    let mut c = connect(s.tcp);
    for i in 0..200u8 {
        echo(&mut c, 100, i);
    }
    let quiet = Scrape::take(m);
    assert_eq!(copied(&quiet), copied(&before), "ping-pong copied chunks");

    // Five clients that write and never read: each can hold 4 buffers in
    // its stalled send and queue, 20 in all, more than the pool has.
    let hogs: Vec<TcpStream> = (0..5)
        .map(|_| {
            let h = connect(s.tcp);
            h.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            h
        })
        .collect();
    let chunk = vec![0x3cu8; 64 * 1024];
    for mut h in &hogs {
        let mut sent = 0usize;
        loop {
            match h.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("hog write: {e}"),
            }
            assert!(
                sent < 256 << 20,
                "the server kept reading a client that never reads"
            );
        }
    }
    // What the hogs pin once everything settles: at most half the pool.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stalled = loop {
        let sc = Scrape::take(m);
        if sc.get("iocp_echo_pool_buffers_in_use{shard=\"0\"}") <= BUFS / 2.0
            || Instant::now() > deadline
        {
            break sc;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        stalled.get("iocp_echo_pool_buffers_in_use{shard=\"0\"}") <= BUFS / 2.0,
        "clients that never read pin {} of {BUFS} pool buffers",
        stalled.get("iocp_echo_pool_buffers_in_use{shard=\"0\"}")
    );
    // Each hog had at least 64 KiB pending in chunks of at most 4 KiB, at
    // most 4 of them held: the rest were copied out.
    assert!(
        copied(&stalled) - copied(&quiet) >= 5.0 * 12.0,
        "copied {} chunks",
        copied(&stalled) - copied(&quiet)
    );
    // Another client is still served, from the half the hogs cannot pin.
    let mut other = connect(s.tcp);
    echo(&mut other, 200_000, 7);
    drop(hogs);
    s.stop_ok();
}

/// The pool model at 2 workers: on Linux every connection has the standing
/// pooled receive (the port keeps each connection's chunks in order), so
/// idle connections hold no receive buffer at all — none lent from the
/// pool, none pinned by a single-shot receive. On Windows, where the
/// kernel's port gives no such order, each holds one single-shot receive.
#[test]
fn pool_two_workers_idle_connections_hold_no_buffer() {
    const CONNS: usize = 8;
    let mut s = server("pool idle buffers", &["--model", "pool", "--workers", "2"]);
    let m = s.metrics();
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(s.tcp)).collect();
    // Each connection echoes (so its receive is re-armed after data), then
    // idles; the echoes run both ways across the two workers.
    for round in 0..3u8 {
        for (i, c) in conns.iter_mut().enumerate() {
            echo(c, 3000, round.wrapping_mul(16) ^ i as u8);
        }
    }
    let want_pinned = if cfg!(windows) { CONNS as f64 } else { 0.0 };
    let deadline = Instant::now() + Duration::from_secs(5);
    let scrape = loop {
        let sc = Scrape::take(m);
        let settled = sc.get("iocp_echo_recv_buffers_pinned") == want_pinned
            && sc.get("iocp_echo_pool_buffers_in_use{shard=\"0\"}") == 0.0;
        if settled || Instant::now() > deadline {
            break sc;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(scrape.get("iocp_echo_connections_open"), CONNS as f64);
    assert_eq!(
        scrape.get("iocp_echo_recv_buffers_pinned"),
        want_pinned,
        "receive buffers held by {CONNS} idle connections"
    );
    assert_eq!(
        scrape.get("iocp_echo_pool_buffers_in_use{shard=\"0\"}"),
        0.0,
        "pool buffers lent with every connection idle"
    );
    // The pool model's default pool: two buffers per busy connection at 2048.
    assert_eq!(scrape.get("iocp_echo_pool_buffers{shard=\"0\"}"), 4096.0);
    drop(conns);
    s.stop_ok();
}

/// `--pool-buffers` sizes each shard's pool (per-core needs SO_REUSEPORT
/// listeners: Linux only).
#[cfg(target_os = "linux")]
#[test]
fn pool_buffers_flag_sizes_each_pool() {
    let mut s = server(
        "pool buffers flag",
        &[
            "--model",
            "per-core",
            "--workers",
            "2",
            "--pool-buffers",
            "100",
        ],
    );
    let sc = Scrape::take(s.metrics());
    for shard in 0..2 {
        assert_eq!(
            sc.get(&format!("iocp_echo_pool_buffers{{shard=\"{shard}\"}}")),
            100.0,
            "shard {shard}"
        );
    }
    s.stop_ok();
}

#[test]
fn scrape_per_core_epoll() {
    scrape_changes_with_traffic(
        "metrics per-core/epoll",
        &[
            "--model",
            "per-core",
            "--workers",
            "2",
            "--backend",
            "epoll",
        ],
        "shard",
        2,
    );
}

#[test]
fn readyz_follows_max_conns() {
    let mut s = server("readyz max-conns", &["--max-conns", "2", "--workers", "2"]);
    let m = s.metrics();
    assert_eq!(http_get(m, "/healthz").status, 200);
    wait_ready(m, 200, Duration::from_secs(5));
    let mut a = connect(s.tcp);
    echo(&mut a, 10, 1);
    wait_ready(m, 200, Duration::from_secs(5));
    let mut b = connect(s.tcp);
    echo(&mut b, 10, 2);
    let why = wait_ready(m, 503, Duration::from_secs(5));
    assert!(why.contains("--max-conns reached"), "{why}");
    assert_eq!(Scrape::take(m).get("iocp_echo_ready"), 0.0);
    // Health is not readiness.
    assert_eq!(http_get(m, "/healthz").status, 200);
    drop(a);
    wait_ready(m, 200, Duration::from_secs(5));
    assert_eq!(Scrape::take(m).get("iocp_echo_ready"), 1.0);
    echo(&mut b, 10, 3);
    s.stop_ok();
}

#[test]
fn readyz_503_while_out_of_descriptors() {
    let mut spec = Spec::new(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--workers",
        "1",
    ]);
    spec.nofile = Some(64);
    let mut s = match start("readyz emfile", spec) {
        Started::Up(s) => s,
        Started::Skipped(why) => panic!("the server did not start: {why}"),
    };
    let m = s.metrics();
    wait_ready(m, 200, Duration::from_secs(5));
    // HTTP connections made while descriptors are still free; their
    // requests are sent once the echo side is out of them. The HTTP side
    // must have accepted them first (its accepts fail too once the echo
    // side has every descriptor): the process holds eight more descriptors
    // (seven or more probes, should a scrape's connection linger).
    let fds0 = Scrape::take(m).get("process_open_fds");
    let t0 = Instant::now();
    let mut probes: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(m).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Scrape::take(m).get("process_open_fds") < fds0 + 8.0 {
        assert!(
            Instant::now() < deadline,
            "the HTTP side did not accept 8 connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let clients: Vec<TcpStream> = (0..100).map(|_| connect(s.tcp)).collect();
    assert!(
        s.wait_log("pausing accepts", Duration::from_secs(3)),
        "no EMFILE back-off logged:\n{}",
        s.log()
    );
    // Accepts are paused except for the moment each back-off retry takes.
    let mut answers = Vec::new();
    for p in &mut probes {
        p.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        p.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").unwrap();
        let mut v = Vec::new();
        let _ = p.read_to_end(&mut v);
        let v = String::from_utf8_lossy(&v).into_owned();
        if v.starts_with("HTTP/1.1 503") {
            assert!(v.contains("accepts paused: out of descriptors"), "{v}");
            break;
        }
        answers.push(v);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        answers.len() < probes.len(),
        "/readyz never said 503 while out of descriptors: {answers:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the probes outlived their deadline"
    );
    drop(probes);
    drop(clients);
    wait_ready(m, 200, Duration::from_secs(3));
    s.stop_ok();
}

#[test]
fn readyz_503_through_drain_delay() {
    const DELAY: Duration = Duration::from_secs(4);
    let mut s = server(
        "readyz drain-delay",
        &[
            "--drain-delay",
            "4s",
            "--drain-timeout",
            "2s",
            "--workers",
            "2",
        ],
    );
    let m = s.metrics();
    let tcp = s.tcp;
    wait_ready(m, 200, Duration::from_secs(5));
    let mut before = connect(tcp);
    echo(&mut before, 1000, 1);
    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    let why = wait_ready(m, 503, Duration::from_secs(2));
    assert!(why.contains("shutting down"), "{why}");
    let sc = Scrape::take(m);
    assert_eq!(sc.get("iocp_echo_ready"), 0.0);
    assert_eq!(sc.get("iocp_echo_shutting_down"), 1.0);
    // Still accepting and serving during the delay: old and new clients.
    let mut during = connect(tcp);
    echo(&mut during, 1000, 2);
    echo(&mut before, 1000, 3);
    assert!(
        t0.elapsed() < DELAY,
        "the checks during the delay took {:?} (machine too slow for this test)",
        t0.elapsed()
    );
    // Then accepts stop: a new connection is refused (the listener is
    // closed), not before the delay.
    let deadline = t0 + DELAY + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&tcp, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("connect after the delay: {e}"),
            // Still accepting (the delay is not over).
            Ok(c) => drop(c),
        }
        assert!(Instant::now() < deadline, "accepts never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = t0.elapsed();
    assert!(
        stopped >= DELAY,
        "accepts stopped {stopped:?} after SIGTERM, before the delay"
    );
    // The connections quiet since are drained (closed with a FIN).
    for c in [&mut before, &mut during] {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).expect("EOF while draining"), 0);
    }
    let log = s.stop_ok();
    assert!(
        log.contains("not ready (/readyz 503); accepting for 4s more"),
        "{log}"
    );
    assert!(
        common::log_field(&log, "accepted after the signal", "admitted_after_signal").unwrap_or(0)
            >= 1,
        "{log}"
    );
}

#[test]
fn http_limits_and_bad_requests() {
    let mut s = server("metrics http", &["--workers", "1"]);
    let m = s.metrics();
    // A client that starts a request and never finishes it: cut at 5 s.
    let mut slow = TcpStream::connect(m).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let slow_t0 = Instant::now();

    // Sixteen connections at once (the slow one is one of them; nothing
    // else has connected yet): a seventeenth is closed unanswered; once one
    // leaves, requests work again.
    let mut idle: Vec<TcpStream> = (0..15).map(|_| TcpStream::connect(m).unwrap()).collect();
    // Each is accepted before the next one (the server accepts in order).
    let mut extra = TcpStream::connect(m).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
    let mut buf = Vec::new();
    match extra.read_to_end(&mut buf) {
        Ok(_) => assert!(buf.is_empty(), "the 17th connection was answered: {buf:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "17th: {e}"),
    }
    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = TcpStream::connect(m).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
        let mut v = Vec::new();
        let _ = c.read_to_end(&mut v);
        if v.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed after a client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(idle);

    let r = http_raw(
        m,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(r.head.contains("Allow: GET, HEAD"), "{}", r.head);
    let r = http_get(m, "/nope");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/nope"), "{}", r.body);
    let r = http_raw(m, b"HELLO THERE\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    let r = http_raw(m, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    let r = http_raw(m, &big);
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(r.body.contains("longer than 8192 bytes"), "{}", r.body);
    let r = http_raw(m, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD with a body");
    assert!(!r.head.contains("Content-Length: 0"), "{}", r.head);
    let r = http_raw(
        m,
        b"GET http://localhost/healthz?verbose=1 HTTP/1.0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok\n");

    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 64];
    let n = match slow.read(&mut b) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("slow client: {e}"),
    };
    let took = slow_t0.elapsed();
    assert_eq!(n, 0, "the slow client got an answer");
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(9),
        "the slow client was cut after {took:?}, want 5 s"
    );
    s.stop_ok();
}

#[test]
fn metrics_address_busy() {
    // A busy address: exit 1, naming it. (Bad values are exit 2: see
    // tests/bad_input.rs.)
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(common::bin())
        .args(["server", "--listen", "127.0.0.1:0", "--metrics", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("metrics http://{addr}")), "{err}");
    assert!(err.contains("in use"), "{err}");
}
