//! Bad input to the real binary, for every value it reads: each flag of
//! `server`, `client` and `bench`, `IOCP_BACKEND`, `RUST_LOG`, `LISTEN_PID`/`LISTEN_FDS`
//! and the files given to `bench merge`. Each must exit 2 with one line
//! that names the command, quotes the value, names the flag or variable
//! and ends with valid examples; none may panic. The forms every kind
//! accepts are exercised against a running server and a test echo server.
//! Network: 127.0.0.1 only; every wait is bounded.
#![cfg(target_os = "linux")]

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{run_with, start, Out, Spec, Started};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs the binary with `IOCP_BACKEND` unset (empty) plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut all = vec![
        ("IOCP_BACKEND", ""),
        ("NO_COLOR", "1"),
        ("RUST_LOG", "info"),
    ];
    all.extend_from_slice(env);
    run_with(args, None, &all, LIMIT)
}

/// Asserts a usage error: exit 2, stderr's first line is `want`, nothing
/// on stdout, no panic.
fn usage(args: &[&str], env: &[(&str, &str)], want: &str) {
    let o = run(args, env);
    assert_eq!(o.code, 2, "{args:?} {env:?}: stderr: {}", o.stderr);
    assert_eq!(
        o.stderr.lines().next().unwrap_or(""),
        want,
        "{args:?} {env:?}: whole stderr:\n{}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "{args:?}: stdout: {}", o.stdout);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}

/// Asserts a usage error whose stderr starts with `start`: exit 2, no panic.
fn usage_starting(args: &[&str], start: &str) {
    let o = run(args, &[]);
    assert_eq!(o.code, 2, "{args:?}: stderr: {}", o.stderr);
    assert!(o.stderr.starts_with(start), "{args:?}: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}

/// What the refusal of each kind of value ends with: the examples it lists.
const EXAMPLES: [(&str, &str); 6] = [
    ("{DUR}", "(examples: 500ms, 10s, 5m)"),
    ("{SIZE}", "(examples: 262144, 256KiB, 1MiB)"),
    ("{RANGE}", "(examples: 64, 1KiB, 64..4096)"),
    ("{RATE}", "(examples: 1000, 1000/s)"),
    (
        "{ADDR}",
        "(examples: 127.0.0.1:7007, [::1]:7007, 0.0.0.0:7)",
    ),
    (
        "{HOST}",
        "(examples: 127.0.0.1:7007, localhost:7007, [::1]:7007)",
    ),
];

/// Bad values, one a line: `COMMAND ARGS | FLAG | VALUE | WHY`. The binary
/// runs `COMMAND ARGS FLAG VALUE` (FLAG's first word; nothing for a
/// positional `<ADDR>`) and must refuse it with
/// `iocp-echo COMMAND: invalid value 'VALUE' for 'FLAG': WHY`, each
/// `{KIND}` of WHY standing for that kind's [`EXAMPLES`].
fn bad_values(table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let [args, flag, value, why] = line.split(" | ").collect::<Vec<_>>()[..] else {
            panic!("not COMMAND ARGS | FLAG | VALUE | WHY: {line:?}");
        };
        let mut argv: Vec<&str> = args.split(' ').collect();
        if flag.starts_with('-') {
            argv.extend(flag.split(' ').next());
        }
        argv.push(value);
        let why = EXAMPLES
            .iter()
            .fold(why.to_string(), |w, (kind, ex)| w.replace(kind, ex));
        let cmd = argv[0];
        usage(
            &argv,
            &[],
            &format!("iocp-echo {cmd}: invalid value '{value}' for '{flag}': {why}"),
        );
    }
}

#[test]
fn server_flags() {
    bad_values(
        "
    server | --listen <ADDR> | nowhere | expected IP:PORT {ADDR}
    server | --listen <ADDR> | 127.0.0.1:http | the port must be a number 0-65535 {ADDR}
    server | --listen <ADDR> | localhost:7007 | not an IP address (host names are not resolved here) {ADDR}
    server | --workers <N> | 0 | must be from 1 to 1024 (examples: 1, 1024)
    server | --workers <N> | abc | not a whole number (examples: 1, 1024)
    server | --backend <BACKEND> | bogus | unknown backend (examples: auto, uring, epoll)
    server | --backend <BACKEND> | iocp | backend iocp is only available on Windows (this build has: auto, uring, epoll)
    server | --max-conns <N> | -1 | must be from 1 to 16777215 (examples: 1, 100)
    server | --idle-timeout <D> | 5 parsecs | unknown unit 'parsecs' (examples: 5m, 30s, off)
    server | --max-pending <BYTES> | 12XB | unknown unit 'XB' {SIZE}
    server | --max-pending <BYTES> | 0 | must be at least 1 byte {SIZE}
    server | --max-pending <BYTES> | 1..2 | a range is not accepted here {SIZE}
    server | --pool-buffers <N> | 0 | must be from 1 to 32768 (examples: 1, 32768)
    server | --pool-buffers <N> | 40000 | must be from 1 to 32768 (examples: 1, 32768)
    server | --pool-buffer-size <BYTES> | 12XB | unknown unit 'XB' {SIZE}
    server | --drain-timeout <D> | soon | expected a number at 'soon' {DUR}
    server | --udp-rate <N[/s]> | 0 | must be at least 1 {RATE}
    server | --udp-rate <N[/s]> | 1.5/s | must be a whole number {RATE}
    server | --udp-rate <N[/s]> | 100/m | unknown unit '/m': rates are per second {RATE}
    server | --stats <D> | 0 | must be more than 0 {DUR}
    server | --stats <D> | 101y | too large: at most 100y {DUR}
    server | --metrics <ADDR> | nowhere | expected IP:PORT {ADDR}
    server | --drain-delay <D> | soon | expected a number at 'soon' {DUR}
    server | --drain-delay <D> | 101y | too large: at most 100y {DUR}
        ",
    );
    // A size outside 64 B–1 MiB, and how the message shows it (in bytes).
    for (v, shown) in [("63", "63"), ("2MiB", "2097152")] {
        usage(
            &["server", "--pool-buffer-size", v],
            &[],
            &format!(
                "iocp-echo server: invalid value '{shown}' for '--pool-buffer-size <BYTES>': \
                 must be from 64 B to 1 MiB (examples: 4KiB, 16KiB)"
            ),
        );
    }
    usage(
        &["server", "--model", "weird"],
        &[],
        "iocp-echo server: invalid value 'weird' for '--model <MODEL>'",
    );
    usage(
        &["server", "--no-such-flag"],
        &[],
        "iocp-echo server: unexpected argument '--no-such-flag' found",
    );
}

#[test]
fn client_flags() {
    bad_values(
        "
    client | <ADDR> | 127.0.0.1 | expected HOST:PORT {HOST}
    client | <ADDR> | localhost:99999 | the port must be a number 0-65535 {HOST}
    client 127.0.0.1:7 -m x | --count <N> | 0 | must be at least 1 (examples: 1, 100)
    client 127.0.0.1:7 | --connect-timeout <D> | 0 | must be more than 0 {DUR}
    client 127.0.0.1:7 | --timeout <D> | soon | expected a number at 'soon' {DUR}
    client 127.0.0.1:7 | --backend <BACKEND> | kqueue | unknown backend (examples: auto, uring, epoll)
        ",
    );
    usage(
        &["client", "127.0.0.1:7", "--count", "3"],
        &[],
        "iocp-echo client: the following required arguments were not provided:",
    );
}

#[test]
fn bench_flags() {
    bad_values(
        "
    bench | <ADDR> | nowhere | expected HOST:PORT {HOST}
    bench 127.0.0.1:7 | --connections <N> | 0 | must be at least 1 (examples: 1, 100)
    bench 127.0.0.1:7 | --threads <M> | 0 | must be at least 1 (examples: 1, 100)
    bench 127.0.0.1:7 | --size <SIZE> | 0 | must be at least 1 byte {RANGE}
    bench 127.0.0.1:7 | --size <SIZE> | 100..10 | MIN (100) is larger than MAX (10) {RANGE}
    bench 127.0.0.1:7 | --size <SIZE> | 17MiB | too large: at most 16777216 bytes {RANGE}
    bench 127.0.0.1:7 | --size <SIZE> | 1..12XB | unknown unit 'XB' {RANGE}
    bench 127.0.0.1:7 | --depth <D> | 65537 | must be from 1 to 65536 (examples: 1, 65536)
    bench 127.0.0.1:7 | --rate <R> | -5 | must not be negative {RATE}
    bench 127.0.0.1:7 | --rate <R> | 0/s | must be more than 0 {RATE}
    bench 127.0.0.1:7 | --rate <R> | fast | not a number {RATE}
    bench 127.0.0.1:7 | --duration <D> | 0s | must be more than 0 {DUR}
    bench 127.0.0.1:7 | --requests <N> | 0 | must be at least 1 (examples: 1, 100)
    bench 127.0.0.1:7 | --warmup <D> | soon | expected a number at 'soon' {DUR}
    bench 127.0.0.1:7 | --ramp <N/s> | -1 | must not be negative (examples: 2000/s, 100, 0)
    bench 127.0.0.1:7 | --connect-timeout <D> | 0 | must be more than 0 {DUR}
    bench 127.0.0.1:7 | --timeout <D> | 0 | must be more than 0 {DUR}
    bench 127.0.0.1:7 | --seed <N> | -1 | must be at least 0 (examples: 0, 100)
    bench 127.0.0.1:7 | --backend <BACKEND> | bogus | unknown backend (examples: auto, uring, epoll)
    bench 127.0.0.1:7 | --hist <FILE> | /nonexistent/dir/x.hist | directory '/nonexistent/dir' does not exist (example: --hist run.hist)
    bench 127.0.0.1:7 | --plot <FILE.svg> | /nonexistent/dir/x.svg | directory '/nonexistent/dir' does not exist (example: --plot run.svg)
    bench 127.0.0.1:7 | --plot <FILE.svg> | / | is a directory (example: --plot run.svg)
        ",
    );
    usage(
        &[
            "bench",
            "merge",
            "--plot",
            "/nonexistent/dir/m.svg",
            "any.hist",
        ],
        &[],
        "iocp-echo bench merge: invalid value '/nonexistent/dir/m.svg' for '--plot <FILE.svg>': \
         directory '/nonexistent/dir' does not exist (example: --plot merged.svg)",
    );
    usage(
        &["bench", "127.0.0.1:7", "--rate", "100", "--depth", "2"],
        &[],
        "iocp-echo bench: the argument '--rate <R>' cannot be used with '--depth <D>'",
    );
    usage(
        &["bench", "merge"],
        &[],
        "iocp-echo bench merge: the following required arguments were not provided:",
    );
}

#[test]
fn iocp_backend_variable() {
    let why = "unknown backend (examples: auto, uring, epoll)";
    for (sub, args) in [
        ("server", &["server", "--listen", "127.0.0.1:0"][..]),
        ("client", &["client", "127.0.0.1:7", "-m", "x"]),
        ("bench", &["bench", "127.0.0.1:7", "-n", "1"]),
    ] {
        usage(
            args,
            &[("IOCP_BACKEND", "bogus")],
            &format!("iocp-echo {sub}: invalid value 'bogus' for IOCP_BACKEND: {why}"),
        );
        usage(
            args,
            &[("IOCP_BACKEND", "iocp")],
            &format!(
                "iocp-echo {sub}: invalid value 'iocp' for IOCP_BACKEND: backend iocp is only \
                 available on Windows (this build has: auto, uring, epoll)"
            ),
        );
    }
    // The flag wins over the variable, so a bad variable is not read.
    client_gets_to_connect(&["--backend", "epoll"], &[("IOCP_BACKEND", "bogus")]);
}

/// Runs `client ADDR -m x EXTRA` with `env` against a port nobody listens
/// on and asserts that every value was taken: the client got as far as
/// connecting (exit 1, `cannot connect`).
fn client_gets_to_connect(extra: &[&str], env: &[(&str, &str)]) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = format!("127.0.0.1:{port}");
    let mut args = vec!["client", &at, "-m", "x"];
    args.extend_from_slice(extra);
    let o = run(&args, env);
    assert_eq!(o.code, 1, "{args:?} {env:?}: {}", o.stderr);
    assert!(o.stderr.contains("cannot connect"), "{}", o.stderr);
}

/// `RUST_LOG` that the log filter cannot parse is a usage error of every
/// subcommand (exit 2, the parser's reason), never a silent fall-back to
/// `info`; a valid filter, or an empty one, is taken.
#[test]
fn rust_log_variable() {
    let level = "error parsing level filter: expected one of \"off\", \"error\", \"warn\", \
                 \"info\", \"debug\", \"trace\", or a number 0-5";
    let examples = "(examples: info, debug, iocp_echo=debug)";
    for (sub, args) in [
        ("server", &["server", "--listen", "127.0.0.1:0"][..]),
        ("client", &["client", "127.0.0.1:7", "-m", "x"]),
        ("bench", &["bench", "127.0.0.1:7", "-n", "1"]),
    ] {
        for (v, why) in [
            ("iocp_echo=verbose", level),
            ("info,completion_port=loud", level),
            ("info,[", "invalid filter directive"),
        ] {
            usage(
                args,
                &[("RUST_LOG", v)],
                &format!("iocp-echo {sub}: invalid value '{v}' for RUST_LOG: {why} {examples}"),
            );
        }
    }
    // Valid and empty filters are taken: the client goes on to connect. (A
    // bare word such as `verbose` is a target name to the filter, valid.)
    for v in ["", "debug", "warn,iocp_echo=debug", "verbose"] {
        client_gets_to_connect(&[], &[("RUST_LOG", v)]);
    }
}

/// `sh` sets `LISTEN_PID` to its own pid and execs the server, so the
/// variables name the server's process as systemd's do.
fn server_via_sh(listen_fds: &str) -> Out {
    let script =
        format!("LISTEN_PID=$$ LISTEN_FDS='{listen_fds}' exec \"$0\" server --listen 127.0.0.1:0");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script, common::bin()])
        .env("IOCP_BACKEND", "")
        .env("NO_COLOR", "1");
    common::run_cmd(cmd, None, LIMIT)
}

#[test]
fn socket_activation_variables() {
    usage(
        &["server", "--listen", "127.0.0.1:0"],
        &[("LISTEN_PID", "abc"), ("LISTEN_FDS", "1")],
        "iocp-echo server: invalid value 'abc' for LISTEN_PID: not a process id \
         (example: LISTEN_PID=1234, set by the service manager to the pid it starts)",
    );
    let fds_why = "not a count of sockets of at least 1 (examples: LISTEN_FDS=1, LISTEN_FDS=2; \
                   the sockets are fds 3, 4, ...)";
    for bad in ["two", "0", "-1", ""] {
        let o = server_via_sh(bad);
        assert_eq!(o.code, 2, "LISTEN_FDS={bad:?}: {}", o.stderr);
        assert_eq!(
            o.stderr.trim_end(),
            format!("iocp-echo server: invalid value '{bad}' for LISTEN_FDS: {fds_why}"),
        );
        assert!(o.stdout.is_empty(), "{}", o.stdout);
    }
    // More sockets than the process has descriptors open.
    let o = server_via_sh("1000");
    assert_eq!(o.code, 2, "{}", o.stderr);
    let line = o.stderr.trim_end();
    assert!(
        line.starts_with("iocp-echo server: invalid value '1000' for LISTEN_FDS: fd ")
            && line.contains(" is not open (")
            && line.ends_with("(example: LISTEN_FDS=1 with the socket on fd 3)"),
        "{line}"
    );
}

/// Socket-activation variables meant for another process are ignored, as
/// `sd_listen_fds(3)` does: the server binds `--listen` and serves.
#[test]
fn listen_pid_of_another_process_is_ignored() {
    let mut spec = Spec::new(&["--listen", "127.0.0.1:0"]);
    for (k, v) in [("LISTEN_PID", "1"), ("LISTEN_FDS", "junk")] {
        spec.env.push((k.into(), v.into()));
    }
    let Started::Up(s) = start("listen-pid-not-ours", spec) else {
        panic!("the default backend is expected to work here")
    };
    assert!(
        s.wait_log(
            "socket activation: LISTEN_PID=1 is not this process; ignoring LISTEN_FDS",
            LIMIT
        ),
        "{}",
        s.log()
    );
    s.stop_ok();
}

/// An echo server on std threads (one per connection).
fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

#[test]
fn every_accepted_form_works() {
    // Sizes with units and ranges, rates with and without /s, counts with
    // a sign, durations, `off`: a bench run uses them and the report
    // shows them.
    let at = echo_server();
    let o = run(
        &[
            "bench",
            &at,
            "-c",
            "+2",
            "-t",
            "1",
            "-n",
            "40",
            "--size",
            "1KiB..=2K",
            "--rate",
            "2000/s",
            "--ramp",
            "0",
            "--warmup",
            "0",
            "--timeout",
            "1m 30s",
            "--seed",
            "7",
            "--json",
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(
        (j["size_min"].as_u64(), j["size_max"].as_u64()),
        (Some(1024), Some(2048))
    );
    assert_eq!(j["rate"].as_f64(), Some(2000.0));
    assert_eq!(j["messages"].as_u64(), Some(40));
    // The server's forms, in one start-up line.
    let Started::Up(s) = start(
        "accepted-forms",
        Spec::new(&[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--max-pending",
            "1 mib",
            "--udp-rate",
            "500/sec",
            "--idle-timeout",
            "off",
            "--drain-timeout",
            "0",
            "--stats",
            "1h",
            "--max-conns",
            "100",
            "--backend",
            "io_uring",
        ]),
    ) else {
        panic!("io_uring is expected to work here")
    };
    assert!(s.wait_log("server started", LIMIT), "{}", s.log());
    let log = s.stop_ok();
    let line = log.lines().find(|l| l.contains("server started")).unwrap();
    for want in [
        "backend=uring",
        "max_conns=100",
        "max_pending=1048576",
        "idle_timeout=off",
        "drain_timeout=0s",
        "workers=2",
    ] {
        assert!(line.contains(want), "{want} not in {line:?}");
    }
}

/// A `--hist` file written by the real `bench`.
fn real_hist_file(dir: &std::path::Path) -> Vec<u8> {
    let at = echo_server();
    let path = dir.join("good.hist");
    let p = path.to_str().unwrap();
    let o = run(&["bench", &at, "-c", "2", "-n", "100", "--hist", p], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    std::fs::read(&path).unwrap()
}

#[test]
fn merge_rejects_unusable_files() {
    let dir = std::env::temp_dir().join(format!("iocp-echo-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = real_hist_file(&dir);
    let text = String::from_utf8(good.clone()).unwrap();
    let hist_line = text.lines().count();
    let hist_at = text.rfind("\n0.000,").unwrap() + 1;
    let mut short = text[..text.len() - 40].to_string();
    short.push('\n');
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("empty", vec![], "the file is empty".into()),
        (
            "cut-mid-line",
            good[..good.len() - 7].to_vec(),
            format!("line {hist_line}: the file ends in the middle of this line (truncated?)"),
        ),
        (
            "cut-before-histogram",
            good[..hist_at].to_vec(),
            "no histogram line in the file (truncated?)".into(),
        ),
        (
            "short-histogram",
            short.into_bytes(),
            format!("line {hist_line}: the histogram is truncated ("),
        ),
        (
            "garbage",
            b"\x00\xffgarbage\x01\n".to_vec(),
            "line 1: not an HdrHistogram interval log line".into(),
        ),
        (
            "json",
            b"{\"messages\": 3}\n".to_vec(),
            "line 1: not an HdrHistogram interval log line".into(),
        ),
        (
            "bad-base64",
            format!("{}0.000,1.000,1.000,HIST*\n", &text[..hist_at]).into_bytes(),
            format!("line {hist_line}: bad base64 in the histogram"),
        ),
        (
            "bad-metadata",
            text.replacen("{\"target\"", "{\"target\":,", 1)
                .into_bytes(),
            "line 1: bad #iocp-echo-bench line: ".into(),
        ),
    ];
    let good_path = dir.join("good.hist");
    let good_path = good_path.to_str().unwrap();
    for (name, bytes, why) in cases {
        let path = dir.join(format!("{name}.hist"));
        std::fs::write(&path, &bytes).unwrap();
        let p = path.to_str().unwrap();
        let o = run(&["bench", "merge", good_path, p], &[]);
        assert_eq!(o.code, 2, "{name}: {}", o.stderr);
        let want = format!("iocp-echo bench merge: invalid value '{p}' for '<FILE>...': {why}");
        assert!(
            o.stderr.starts_with(&want),
            "{name}: want {want:?}\ngot {:?}",
            o.stderr
        );
        assert!(
            o.stderr
                .trim_end()
                .ends_with("(expected a file written by `iocp-echo bench ADDR --hist FILE`)"),
            "{name}: {}",
            o.stderr
        );
        assert!(o.stdout.is_empty(), "{name}: {}", o.stdout);
    }
    let d = dir.to_str().unwrap();
    usage_starting(
        &["bench", "merge", d],
        &format!(
            "iocp-echo bench merge: invalid value '{d}' for '<FILE>...': cannot read it: Is a directory"
        ),
    );
    // The good file alone still merges.
    let o = run(&["bench", "merge", "--json", good_path], &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("\"messages\":100"), "{}", o.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nothing typed on the command line panics the binary: arbitrary values
/// for each flag kind give exit 0, 1 or 2, never a crash.
#[test]
fn odd_values_never_crash() {
    let odd = [
        "",
        " ",
        "-",
        "--",
        "..",
        "..=",
        "1..",
        "..1",
        "\u{1F600}",
        "1e309",
        "nan",
        "inf",
        "-0",
        "+",
        "0x10",
        "1_000",
        "99999999999999999999999",
        "1 2",
        "%s%n",
        "'",
        "\\",
        "1/0",
        "1//s",
        "[::1",
        "[::1]:",
        ":",
        "a:b:c:d",
        "1.5.5",
    ];
    let flags = [
        ("server", "--max-pending"),
        ("server", "--pool-buffers"),
        ("server", "--pool-buffer-size"),
        ("server", "--idle-timeout"),
        ("server", "--udp-rate"),
        ("server", "--listen"),
        ("server", "--workers"),
        ("server", "--stats"),
        ("server", "--metrics"),
        ("server", "--drain-delay"),
        ("bench", "--size"),
        ("bench", "--rate"),
        ("bench", "--ramp"),
        ("bench", "--duration"),
    ];
    for (sub, flag) in flags {
        for v in odd {
            let arg = format!("{flag}={v}");
            let args: Vec<&str> = match sub {
                "server" => vec!["server", &arg],
                _ => vec!["bench", "127.0.0.1:7", &arg],
            };
            usage_starting(
                &args,
                &format!("iocp-echo {sub}: invalid value '{v}' for '{flag} <"),
            );
        }
    }
}
