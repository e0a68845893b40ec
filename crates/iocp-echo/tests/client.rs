//! `iocp-echo client` and `iocp-echo bench`, driven as the real binary
//! against echo servers this project did not write (socat + cat), against
//! test servers written here (one flips a byte, one stalls once), and
//! against the project's own `iocp-echo server`. Network: 127.0.0.1 only;
//! every wait is bounded.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{bin as bin_path, Out};

/// Runs the binary with `args` (and `stdin`), killing it after `limit`.
fn run(args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Out {
    common::run_with(args, stdin, &[], limit)
}

/// Runs the binary with `args` (and `stdin`) and insists on exit code 1
/// with each of `said` in its stderr.
fn run_fails(args: &[&str], stdin: Option<&[u8]>, said: &[&str]) -> Out {
    let o = run(args, stdin, Duration::from_secs(20));
    assert_eq!(
        o.code, 1,
        "iocp-echo {args:?}:\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    for want in said {
        assert!(
            o.stderr.contains(want),
            "{want:?} not in the stderr of iocp-echo {args:?}: {}",
            o.stderr
        );
    }
    o
}

fn run_ok(args: &[&str]) -> Out {
    let o = run(args, None, Duration::from_secs(30));
    assert_eq!(
        o.code, 0,
        "iocp-echo {args:?} failed:\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    o
}

/// `iocp-echo bench ADDR ARGS... --json` (`args` split at spaces), which
/// must fail saying each of `said`; its report.
fn bench_json_fails(addr: &str, args: &str, said: &[&str]) -> Value {
    let mut v = vec!["bench", addr];
    v.extend(args.split(' '));
    v.push("--json");
    json(&run_fails(&v, None, said))
}

/// `iocp-echo ARGS...`, which must be refused as a usage error (exit code
/// 2) with `said` at the start of its stderr.
fn usage_error(args: &[&str], said: &str) {
    let o = run(args, None, Duration::from_secs(10));
    assert_eq!(o.code, 2, "iocp-echo {args:?}: {}", o.stderr);
    assert!(
        o.stderr.starts_with(said),
        "{said:?} not first in {}",
        o.stderr
    );
}

/// `iocp-echo bench ADDR ARGS...` (`args` split at spaces), which must
/// succeed.
fn bench_ok(addr: &str, args: &str) -> Out {
    let mut v = vec!["bench", addr];
    v.extend(args.split(' '));
    run_ok(&v)
}

fn json(o: &Out) -> Value {
    serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", o.stdout))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `socat TCP-LISTEN:PORT,fork,reuseaddr EXEC:cat` on 127.0.0.1.
struct Socat {
    child: Child,
    addr: String,
}

impl Socat {
    fn start() -> Socat {
        let port = free_port();
        let child = Command::new("socat")
            .arg(format!(
                "TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1,backlog=128"
            ))
            .arg("EXEC:cat")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run socat ({e}): these tests need it — `apt-get install -y socat`")
            });
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, "socat");
        Socat { child, addr }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test echo server does to the stream.
#[derive(Clone, Default)]
struct Misbehave {
    /// Flip (xor 0xff) the byte at this offset of every connection's stream.
    flip_at: Option<u64>,
    /// Once, this long after the first byte arrived, stop echoing (every
    /// connection) for `stall`.
    stall_after: Option<Duration>,
    stall: Duration,
    /// Close each connection once this many bytes were echoed.
    close_after: Option<u64>,
}

impl Misbehave {
    fn flip_at(offset: u64) -> Misbehave {
        Misbehave {
            flip_at: Some(offset),
            ..Misbehave::default()
        }
    }

    fn close_after(bytes: u64) -> Misbehave {
        Misbehave {
            close_after: Some(bytes),
            ..Misbehave::default()
        }
    }

    fn stall(after: Duration, stall: Duration) -> Misbehave {
        Misbehave {
            stall_after: Some(after),
            stall,
            ..Misbehave::default()
        }
    }
}

/// An echo server on std threads, one per connection.
fn test_server(m: Misbehave) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stall_until: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stalled = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (m, first, stall_until, stalled) = (
                m.clone(),
                first.clone(),
                stall_until.clone(),
                stalled.clone(),
            );
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                let mut off = 0u64;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let now = Instant::now();
                    let t1 = *first.lock().unwrap().get_or_insert(now);
                    if let Some(after) = m.stall_after {
                        if now >= t1 + after && !stalled.swap(true, Ordering::SeqCst) {
                            *stall_until.lock().unwrap() = Some(now + m.stall);
                        }
                        let until = *stall_until.lock().unwrap();
                        if let Some(u) = until {
                            let now = Instant::now();
                            if now < u {
                                std::thread::sleep(u - now);
                            }
                        }
                    }
                    if let Some(f) = m.flip_at {
                        if f >= off && f < off + n as u64 {
                            buf[(f - off) as usize] ^= 0xff;
                        }
                    }
                    let n = match m.close_after {
                        Some(c) => n.min(c.saturating_sub(off) as usize),
                        None => n,
                    };
                    off += n as u64;
                    if s.write_all(&buf[..n]).is_err() || m.close_after.is_some_and(|c| off >= c) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn client_interactive_against_socat() {
    let s = Socat::start();
    let input = b"hello\nworld, with some more text\n\nlast line without newline";
    let o = run(&["client", &s.addr], Some(input), Duration::from_secs(20));
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert_eq!(o.stdout.as_bytes(), input);
}

#[test]
fn client_message_count_against_socat() {
    let s = Socat::start();
    let o = run_ok(&["client", &s.addr, "--message", "ping", "--count", "5"]);
    assert_eq!(o.stdout, "ping\n".repeat(5));
    assert!(
        o.stderr.contains("5 echoes (25 bytes)"),
        "stderr: {}",
        o.stderr
    );
}

#[test]
fn bench_against_socat_json() {
    let s = Socat::start();
    let o = bench_ok(
        &s.addr,
        "-c 4 -t 2 --requests 3000 --size 1..700 --depth 3 --json",
    );
    let j = json(&o);
    for k in [
        "msgs_per_s",
        "mb_per_s",
        "latency_us",
        "errors",
        "connect_failures",
        "connections",
        "duration_s",
        "messages",
        "bytes",
    ] {
        assert!(j.get(k).is_some(), "key {k} missing in {j}");
    }
    assert_eq!(j["messages"], 3000);
    assert_eq!(j["connections"], 4);
    assert_eq!(j["connect_failures"], 0);
    assert_eq!(j["errors"].as_object().unwrap().len(), 0, "{j}");
    assert_eq!(j["mode"], "closed");
    assert!(j["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["duration_s"].as_f64().unwrap() > 0.0);
    // 3000 sizes uniform in 1..=700: the mean is near 350.
    let bytes = j["bytes"].as_u64().unwrap();
    assert!((3000 * 250..3000 * 450).contains(&bytes), "bytes {bytes}");
    let l = &j["latency_us"];
    assert_eq!(l["count"], 3000);
    let q: Vec<u64> = ["min", "p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| {
            l[k].as_u64()
                .unwrap_or_else(|| panic!("latency_us.{k} missing in {l}"))
        })
        .collect();
    assert!(
        q[0] > 0 && q.windows(2).all(|w| w[0] <= w[1]),
        "latencies not ordered: {l}"
    );
}

#[test]
fn bench_open_loop_text_report_against_socat() {
    let s = Socat::start();
    let o = bench_ok(&s.addr, "-c 3 -t 1 --rate 1000 --duration 500ms");
    for want in [
        "open loop, 1000 msgs/s offered",
        "messages          500 (",
        "latency (us)",
        "errors            none",
    ] {
        assert!(
            o.stdout.contains(want),
            "{want:?} not in report:\n{}",
            o.stdout
        );
    }
}

#[test]
fn client_detects_a_flipped_byte() {
    let addr = test_server(Misbehave::flip_at(10));
    run_fails(
        &["client", &addr, "-m", "hello world, hello world", "-n", "2"],
        None,
        &["echo differs from what was sent at byte offset 10:"],
    );
    // Interactive, offset past the first line.
    let addr = test_server(Misbehave::flip_at(7));
    run_fails(
        &["client", &addr],
        Some(b"abcde\nfghij\n"),
        &["at byte offset 7:"],
    );
}

#[test]
fn bench_detects_a_flipped_byte() {
    let addr = test_server(Misbehave::flip_at(1000));
    run_fails(
        &["bench", &addr, "-c", "1", "-n", "100", "--size", "64"],
        None,
        &["connection 0: verification failed: byte offset 1000 of the connection's stream"],
    );
    // Several connections and threads: every stream is flipped at 5000;
    // whichever is seen first is named, with the right offset.
    let addr = test_server(Misbehave::flip_at(5000));
    let j = bench_json_fails(
        &addr,
        "-c 6 -t 2 --duration 5s --size 1..300",
        &[
            "verification failed: byte offset 5000 of",
            "iocp-echo bench: connection ",
        ],
    );
    assert!(j["errors"]["verify_mismatch"].as_u64().unwrap() >= 1);
}

/// One 200 ms stall, 300 ms into a 1 s open-loop run at 2000 msgs/s: ~20%
/// of the messages are scheduled while the server is stalled, and each
/// waits from its scheduled time until the server comes back, so the
/// latencies behind the stall fall evenly from 200 ms to 0. The
/// corrected p99 is therefore about 200 ms - 1% of 1 s = 190 ms, the max
/// at least 200 ms. An uncorrected (closed-loop) measurement of the same
/// stall sees one slow message per connection and a p99 of a few ms.
#[test]
fn open_loop_latency_includes_a_stall() {
    let stall = Misbehave::stall(Duration::from_millis(300), Duration::from_millis(200));
    let addr = test_server(stall.clone());
    let o = bench_ok(&addr, "-c 2 -t 1 --rate 2000 --duration 1s --json");
    let j = json(&o);
    let l = &j["latency_us"];
    eprintln!("open loop with a 200 ms stall: {l}");
    assert_eq!(j["mode"], "open");
    assert!(l["max"].as_u64().unwrap() >= 200_000, "{l}");
    assert!(l["p99"].as_u64().unwrap() >= 150_000, "{l}");
    assert!(l["p90"].as_u64().unwrap() >= 50_000, "{l}");

    let addr = test_server(stall);
    let o = bench_ok(&addr, "-c 2 -t 1 --duration 1s --json");
    let l = &json(&o)["latency_us"];
    eprintln!("closed loop with a 200 ms stall: {l}");
    assert!(l["max"].as_u64().unwrap() >= 200_000, "{l}");
    assert!(
        l["p99"].as_u64().unwrap() < 100_000,
        "closed loop hides the stall: {l}"
    );
}

#[test]
fn hist_files_merge() {
    let s = Socat::start();
    let dir = std::env::temp_dir().join(format!("iocp-echo-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.hist"), dir.join("b.hist"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let ja = json(&run_ok(&[
        "bench", &s.addr, "-c", "2", "-n", "700", "--json", "--hist", a,
    ]));
    let jb = json(&run_ok(&[
        "bench", &s.addr, "-c", "3", "-n", "1100", "--size", "10..100", "--json", "--hist", b,
    ]));
    let text = std::fs::read_to_string(a).unwrap();
    assert!(text.contains("#iocp-echo-bench {"), "{text}");
    assert!(
        text.lines().any(|l| l.contains(",HISTF")),
        "no V2-compressed base64 line: {text}"
    );
    let m = json(&run_ok(&["bench", "merge", "--json", a, b]));
    assert_eq!(m["messages"], 1800);
    assert_eq!(m["latency_us"]["count"], 1800);
    assert_eq!(m["connections"], 5);
    assert_eq!(m["runs"], 2);
    assert_eq!(
        m["bytes"].as_u64(),
        Some(ja["bytes"].as_u64().unwrap() + jb["bytes"].as_u64().unwrap())
    );
    let max = ja["latency_us"]["max"]
        .as_u64()
        .unwrap()
        .max(jb["latency_us"]["max"].as_u64().unwrap());
    assert_eq!(m["latency_us"]["max"].as_u64(), Some(max));
    let t = run_ok(&["bench", "merge", a, b]);
    assert!(t.stdout.contains("runs merged       2"), "{}", t.stdout);
    assert!(
        t.stdout.contains("messages          1800 ("),
        "{}",
        t.stdout
    );
    // An unusable --hist file is a usage error.
    usage_error(
        &["bench", "merge", a, "/nonexistent/x.hist"],
        "iocp-echo bench merge: invalid value '/nonexistent/x.hist' for '<FILE>...': cannot read it: ",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_counted_by_kind() {
    // The server closes every connection after 3000 bytes.
    let addr = test_server(Misbehave::close_after(3000));
    let j = bench_json_fails(
        &addr,
        "-c 3 -t 1 --duration 2s",
        &["connection closed by the server (3000 of 3"],
    );
    assert_eq!(j["errors"]["closed_by_peer"], 3, "{j}");
    // The server never echoes: every connection times out.
    let addr = test_server(Misbehave::stall(Duration::ZERO, Duration::from_secs(30)));
    let t = Instant::now();
    let j = bench_json_fails(
        &addr,
        "-c 2 --duration 200ms --timeout 300ms",
        &["no echo for 300ms"],
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(j["errors"]["timed_out"], 2);
    run_fails(
        &["client", &addr, "-m", "x", "--timeout", "300ms"],
        None,
        &["no echo from", "within 300ms (0 of 2 bytes echoed)"],
    );
}

/// `iocp-echo bench ADDR ARGS... --reconnect --json` (30 s at most): the
/// exit code, the report and stderr.
fn bench_reconnect(addr: &str, args: &[&str]) -> (i32, Value, String) {
    let mut v = vec!["bench", addr];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--reconnect", "--json"]);
    let o = run(&v, None, Duration::from_secs(30));
    let j = json(&o);
    (o.code, j, o.stderr)
}

fn n(j: &Value, key: &str) -> u64 {
    j[key].as_u64().unwrap_or_else(|| panic!("no {key} in {j}"))
}

#[test]
fn reconnect_goes_on_after_cuts() {
    // The server closes every connection once it echoed 3000 bytes: each
    // stream is cut after exactly 30 messages of 100 bytes, with --depth 2
    // messages in flight (at most 2, fewer during the final drain).
    let addr = test_server(Misbehave::close_after(3000));
    let closed = ["-t", "1", "--depth", "2", "--size", "100"];
    let (code, j, err) = bench_reconnect(
        &addr,
        &[&closed[..], &["-c", "3", "--duration", "1s"]].concat(),
    );
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(j["errors"], serde_json::json!({}), "{j}");
    assert_eq!(j["reconnect"], true);
    let (r, lost_m) = (n(&j, "reconnects"), n(&j, "lost_messages"));
    assert!(r >= 3, "{j}");
    // (A cut that comes after the last echo of the run loses nothing.)
    assert!(lost_m + 3 >= r && lost_m <= 2 * r, "{j}");
    assert_eq!(n(&j, "lost_bytes"), 100 * lost_m, "{j}");
    // Every reopened stream verified from its offset 0: 30 messages per cut
    // stream, and at most 30 on each connection's last one.
    let msgs = n(&j, "messages");
    assert!(msgs >= 30 * r && msgs <= 30 * (r + 3), "{j}");
    // --requests in the closed loop: the messages lost in flight are owed
    // again, so exactly 200 are measured (6 cuts, 2 lost at each).
    let (code, j, err) = bench_reconnect(&addr, &[&closed[..], &["-c", "1", "-n", "200"]].concat());
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!((n(&j, "messages"), n(&j, "reconnects")), (200, 6), "{j}");
    assert_eq!(
        (n(&j, "lost_messages"), n(&j, "lost_bytes")),
        (12, 1200),
        "{j}"
    );
    let t = bench_ok(&addr, "-c 1 --depth 2 --size 100 -n 50 --reconnect");
    assert!(
        t.stdout
            .contains("reconnects        1 (2 messages, 200 bytes lost in flight)"),
        "{}",
        t.stdout
    );

    // The open loop goes on through cuts too; its lost messages are not
    // owed again (their slots in the schedule are gone): every scheduled
    // message is measured or lost, with --duration and with --requests.
    let open = ["-c", "2", "--rate", "1000", "--size", "100"];
    for (limit, scheduled) in [(["--duration", "1s"], 1000), (["-n", "300"], 300)] {
        let (code, j, err) = bench_reconnect(&addr, &[&open[..], &limit[..]].concat());
        assert_eq!(code, 0, "stderr: {err}");
        assert_eq!(j["errors"], serde_json::json!({}), "{j}");
        assert!(n(&j, "reconnects") >= 2, "{j}");
        assert_eq!(n(&j, "messages") + n(&j, "lost_messages"), scheduled, "{j}");
    }

    // A server that closes every new connection at once: three reconnects
    // in a row bring nothing back, and the connection fails.
    let addr = test_server(Misbehave::close_after(0));
    let (code, j, err) = bench_reconnect(&addr, &["-c", "2", "--duration", "2s"]);
    assert_eq!(code, 1, "stderr: {err}");
    assert_eq!(j["errors"]["closed_by_peer"], 2, "{j}");
    assert_eq!(n(&j, "reconnects"), 6, "{j}");
    assert!(
        err.contains("cut 3 times in a row right after reconnecting"),
        "{err}"
    );
}

/// The text of every `<text>` and the points of every `<polyline>` of an
/// SVG file, checked to be well-formed XML.
fn svg_parts(path: &std::path::Path) -> (Vec<String>, Vec<usize>) {
    let svg = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| {
            n.attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .collect();
    (texts, lines)
}

#[test]
fn plots_of_a_run_and_of_merged_runs() {
    let s = Socat::start();
    let dir = std::env::temp_dir().join(format!("iocp-echo-plot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let (a, b, pa, pm) = (p("a.hist"), p("b.hist"), p("a.svg"), p("m.svg"));
    bench_ok(
        &s.addr,
        &format!("-c 2 --duration 700ms --hist {a} --plot {pa}"),
    );
    bench_ok(
        &s.addr,
        &format!("-c 2 --rate 500 --duration 700ms --hist {b}"),
    );
    let m = run_ok(&["bench", "merge", &a, &b, "--plot", &pm]);
    assert!(m.stdout.contains("runs merged       2"), "{}", m.stdout);
    for (svg, curves) in [(&pa, 1), (&pm, 3)] {
        let (texts, lines) = svg_parts(std::path::Path::new(svg));
        for label in [
            "0%",
            "90%",
            "99%",
            "latency by percentile",
            "throughput over time",
        ] {
            assert!(
                texts.iter().any(|t| t == label),
                "{svg}: no {label:?} in {texts:?}"
            );
        }
        // Legend samples are 2-point lines; the data lines have more: a
        // latency curve per run (and the merged one), a throughput line per
        // run (and their sum).
        let data = lines.iter().filter(|&&n| n > 2).count();
        assert_eq!(data, 2 * curves, "{svg}: polylines {lines:?}");
    }
    let (texts, _) = svg_parts(std::path::Path::new(&pm));
    assert!(texts.iter().any(|t| t.starts_with("a.hist: ")), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("merged: ")), "{texts:?}");
    assert!(texts.iter().any(|t| t == "sum"), "{texts:?}");
    // A usage error, before anything is read or drawn.
    usage_error(
        &["bench", "merge", &a, "--plot", "/nonexistent/dir/x.svg"],
        "iocp-echo bench merge: invalid value '/nonexistent/dir/x.svg' for '--plot <FILE.svg>': directory '/nonexistent/dir' does not exist",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_failure_is_exit_1_with_the_reason() {
    let addr = format!("127.0.0.1:{}", free_port());
    let refused = format!("cannot connect to {addr}: Connection refused (os error 111)");
    let o = run_fails(&["client", &addr, "-m", "x"], None, &[]);
    assert_eq!(o.stderr.trim(), format!("iocp-echo client: {refused}"));
    run_fails(&["bench", &addr, "-c", "3", "-n", "10"], None, &[&refused]);
}

/// The project's own server (`iocp-echo server`).
#[test]
fn against_the_projects_own_server() {
    let mut server = Command::new(bin_path())
        .args(["server", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut addr: Option<SocketAddr> = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while addr.is_none() && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) => {
                addr = l
                    .strip_prefix("listening on tcp://")
                    .and_then(|a| a.trim().parse().ok())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Ok(Some(_)) = server.try_wait() {
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = server.kill();
        let _ = server.wait();
        let mut err = String::new();
        let _ = server.stderr.take().unwrap().read_to_string(&mut err);
        panic!(
            "`iocp-echo server --listen 127.0.0.1:0` printed no `listening on tcp://` line: {err}"
        );
    };
    let addr = addr.to_string();
    let o = run(
        &["client", &addr, "-m", "hello, own server", "-n", "3"],
        None,
        Duration::from_secs(20),
    );
    let b = run(
        &[
            "bench", &addr, "-c", "16", "-t", "2", "-n", "20000", "--size", "1..2000", "--depth",
            "4", "--json",
        ],
        None,
        Duration::from_secs(30),
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.code, 0, "client: {}", o.stderr);
    assert_eq!(o.stdout, "hello, own server\n".repeat(3));
    assert_eq!(b.code, 0, "bench: {}\n{}", b.stdout, b.stderr);
    let j = json(&b);
    assert_eq!(j["messages"], 20000);
    assert_eq!(j["connections"], 16);
}
