//! Helpers for the integration tests that drive the real `iocp-echo`
//! binary: start a server and read the address it printed, watch its log,
//! stop it, measure it; a small PRNG; an echo round trip that writes and
//! reads at once.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_iocp-echo")
}

/// Fails loudly when a tool the tests rely on is missing (never skips).
pub fn need_tool(tool: &str) {
    match Command::new(tool).arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{tool}` is not installed; the server tests need it (apt-get install -y socat netcat-openbsd)"
        ),
        Err(e) => panic!("cannot run `{tool}`: {e}"),
    }
}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Where a server came up, or why it did not.
pub enum Started {
    Up(Server),
    /// The server could not create a port on its backend on this machine
    /// (io_uring blocked by seccomp or a sysctl, too old a kernel), and
    /// `IOCP_ALLOW_MISSING_BACKEND` names that backend: the case has printed
    /// `SKIPPED` and passes. Without the variable the case fails instead.
    Skipped(String),
}

/// The line the server prints when it cannot create a completion port:
/// `cannot create a completion port (backend NAME): REASON`.
const NO_PORT: &str = "cannot create a completion port (backend ";

/// Whether the stderr `log` of a server that exited before listening says
/// that its backend does not work on this machine. If so, the test
/// `label` FAILS here (a panic naming the backend and the reason), unless
/// `IOCP_ALLOW_MISSING_BACKEND` names the backend: then it prints
/// `<label> SKIPPED: <reason>` and this returns the reason. `None` for any
/// other failure (the caller fails the test with the whole log).
pub fn missing_backend(label: &str, log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains(NO_PORT))?;
    let at = line.find(NO_PORT)? + NO_PORT.len();
    let backend = line[at..].split(')').next()?;
    let why = format!(
        "the server cannot run on this machine: {}",
        line[at - NO_PORT.len()..].trim()
    );
    iocp_test_support::backend_missing(label, backend, &why);
    Some(why)
}

/// How to start a server.
pub struct Spec {
    pub args: Vec<String>,
    /// RLIMIT_NOFILE for the server (set in the child before exec).
    pub nofile: Option<u64>,
    /// A listening socket handed over as systemd does (fd 3, LISTEN_FDS=1,
    /// LISTEN_PID = the child's pid).
    pub inherit: Option<socket2::Socket>,
    pub rust_log: String,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new<S: AsRef<str>>(args: &[S]) -> Spec {
        Spec {
            args: args.iter().map(|s| s.as_ref().to_string()).collect(),
            nofile: None,
            inherit: None,
            // IOCP_ECHO_TEST_LOG=debug to see every connection's story.
            rust_log: std::env::var("IOCP_ECHO_TEST_LOG").unwrap_or_else(|_| "info".into()),
            env: Vec::new(),
        }
    }
}

/// A running `iocp-echo server`, killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub tcp: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    out_rx: mpsc::Receiver<String>,
    out_seen: Vec<String>,
    log: Log,
    pub label: String,
}

/// The server's stderr, line by line, as a thread reads it.
#[derive(Clone)]
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    /// The reader saw the end of stderr: every line is in.
    closed: Arc<AtomicBool>,
}

impl Log {
    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (at most `d`) until the reader has taken every line the
    /// process wrote: after its exit, stderr ends once the reader is done.
    fn wait_closed(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.closed.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn spawn_stderr(child: &mut Child) -> Log {
    let log = Log {
        lines: Arc::new(Mutex::new(Vec::new())),
        closed: Arc::new(AtomicBool::new(false)),
    };
    let err = child.stderr.take().expect("stderr piped");
    let l2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            l2.lines.lock().unwrap().push(line);
        }
        l2.closed.store(true, Ordering::Release);
    });
    log
}

fn spawn_stdout(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            l2.lock().unwrap().push(line.clone());
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (lines, rx)
}

/// Runs `iocp-echo server ARGS` and waits (at most 15 s) for its first
/// `listening on tcp://` line.
pub fn start(label: &str, spec: Spec) -> Started {
    let mut cmd = Command::new(bin());
    cmd.arg("server")
        .args(&spec.args)
        .env("RUST_LOG", &spec.rust_log)
        .env("NO_COLOR", "1")
        .env_remove("IOCP_BACKEND")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = spec.nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; no allocation happens here.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut keep = None;
    if let Some(sock) = spec.inherit {
        let mut envs: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "RUST_LOG" | "NO_COLOR" | "IOCP_BACKEND" | "LISTEN_FDS" | "LISTEN_PID"
                )
            })
            .collect();
        envs.push(("RUST_LOG".into(), spec.rust_log.clone()));
        envs.push(("NO_COLOR".into(), "1".into()));
        envs.extend(spec.env.iter().cloned());
        let mut argv = vec!["iocp-echo".to_string(), "server".to_string()];
        argv.extend(spec.args.iter().cloned());
        socket_activation::install(&mut cmd, &sock, &argv, &envs);
        // The parent's copy stays open until the child has exec'd.
        keep = Some(sock);
    }
    let mut child = cmd.spawn().expect("spawn iocp-echo server");
    drop(keep);
    let log = spawn_stderr(&mut child);
    let (lines, out_rx) = spawn_stdout(&mut child);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out_seen = Vec::new();
    loop {
        match out_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                out_seen.push(line.clone());
                if let Some(a) = line.strip_prefix("listening on tcp://") {
                    let tcp = a.trim().parse().expect("address in the listening line");
                    return Started::Up(Server {
                        child,
                        tcp,
                        lines,
                        out_rx,
                        out_seen,
                        log,
                        label: label.to_string(),
                    });
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the server exited.
                let status = wait_exit(&mut child, Duration::from_secs(5));
                log.wait_closed(Duration::from_secs(5));
                let text = log.text();
                if let Some(why) = missing_backend(label, &text) {
                    return Started::Skipped(why);
                }
                panic!("{label}: server exited ({status:?}) before listening; stderr:\n{text}");
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{label}: no listening line within 15 s; stderr:\n{}",
                log.text()
            );
        }
    }
}

/// Waits up to `d` for the child to exit; kills it after that.
pub fn wait_exit(child: &mut Child, d: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + d;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Server {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The address of the first stdout line starting with `prefix`
    /// (waits up to 5 s for it).
    pub fn printed(&mut self, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(a) = self.out_seen.iter().find_map(|l| l.strip_prefix(prefix)) {
                return a.trim().parse().expect("an address after the prefix");
            }
            match self.out_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => self.out_seen.push(l),
                Err(_) if Instant::now() > deadline => {
                    panic!("{}: no {prefix:?} line on stdout", self.label)
                }
                Err(_) => {}
            }
        }
    }

    /// The next `listening on udp://` line (waits up to 5 s).
    pub fn udp(&mut self) -> SocketAddr {
        self.printed("listening on udp://")
    }

    /// The `metrics on http://` line (waits up to 5 s).
    pub fn metrics(&mut self) -> SocketAddr {
        self.printed("metrics on http://")
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        while let Ok(l) = self.out_rx.try_recv() {
            self.out_seen.push(l);
        }
        let _ = &self.lines;
        self.out_seen.clone()
    }

    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits for the server to exit (at most `d`, then kills it) and for
    /// the last line of its log; returns the exit status.
    pub fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let st = wait_exit(&mut self.child, d);
        self.log.wait_closed(Duration::from_secs(5));
        st
    }

    /// Waits up to `d` for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            if self
                .log
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Counts log lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM, then waits (up to `d`) for the exit; returns the status and
    /// the whole log.
    pub fn terminate(mut self, d: Duration) -> (Option<ExitStatus>, String) {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(d);
        (st, self.log())
    }

    /// SIGTERM and insists on exit status 0 within 15 s; returns the log.
    pub fn stop_ok(self) -> String {
        let label = self.label.clone();
        let (st, log) = self.terminate(Duration::from_secs(15));
        match st {
            Some(s) if s.success() => log,
            other => {
                panic!("{label}: server did not exit 0 after SIGTERM ({other:?}); log:\n{log}")
            }
        }
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// utime + stime in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("/proc stat");
        // Fields after the command name, which is in parentheses.
        let rest = &s[s.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime is field 14, stime 15.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("IOCP_ECHO_TEST_SHOW_LOG").is_some() {
            eprintln!(
                "---- {} server log ----\n{}\n---- end of server log ----",
                self.label,
                self.log()
            );
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `key=N` in the last log line containing `line_has`.
pub fn log_field(log: &str, line_has: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(line_has))?;
    let pat = format!("{key}=");
    let i = line.find(&pat)? + pat.len();
    let digits: String = line[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `data` in chunks of random size (`lo..=hi`) while a second thread
/// reads in reads of random size; then half-closes and reads to EOF.
/// Returns what came back.
pub fn echo_chunks(
    addr: SocketAddr,
    data: Arc<Vec<u8>>,
    seed: u64,
    lo: usize,
    hi: usize,
) -> Vec<u8> {
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut off = 0;
        while off < d2.len() {
            let n = rng.range(lo, hi).min(d2.len() - off);
            w.write_all(&d2[off..off + n]).expect("write");
            off += n;
        }
        w.shutdown(Shutdown::Write).expect("shutdown(Write)");
    });
    let mut r = s;
    let mut rng = Rng::new(seed ^ 0xdead_beef);
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let want = rng.range(1, buf.len());
        match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read after {} bytes: {e}", got.len()),
        }
    }
    writer.join().expect("writer");
    got
}

/// Asserts two streams are equal, naming the first differing offset.
pub fn assert_same(what: &str, want: &[u8], got: &[u8]) {
    if want == got {
        return;
    }
    let off = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    panic!(
        "{what}: echo differs at byte {off} (sent {} bytes, got {} back)",
        want.len(),
        got.len()
    );
}

/// What a finished run of the binary printed, and its exit code (-1 when
/// a signal ended it).
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `iocp-echo ARGS` with `env` added to the environment (and `stdin`
/// fed to it), killing it and failing the test after `limit`.
pub fn run_with(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)], limit: Duration) -> Out {
    let mut cmd = Command::new(bin());
    cmd.args(args).envs(env.iter().copied());
    run_cmd(cmd, stdin, limit)
}

/// Runs `cmd` (`stdin` fed to it), reading its output as it comes, killing
/// it and failing the test after `limit`.
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Out {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_exit(&mut child, limit) else {
        panic!("{cmd:?} did not finish within {limit:?}");
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

/// Socket activation the way systemd does it: the listening socket becomes
/// fd 3 and `LISTEN_PID` is the child's own pid, both set in the child
/// between fork and exec. Setting an environment variable there is not
/// async-signal-safe (it allocates), so the child calls `execve` itself
/// with an environment built before the fork; only the digits of the pid
/// are written in the child, into a buffer reserved for them.
mod socket_activation {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    struct Prepared {
        path: CString,
        _argv: Vec<CString>,
        argv_ptrs: Vec<usize>,
        _env: Vec<CString>,
        env_ptrs: Vec<usize>,
        pid_entry: Vec<u8>,
        fd: i32,
    }

    const PREFIX: &[u8] = b"LISTEN_PID=";

    pub(super) fn install(
        cmd: &mut Command,
        sock: &socket2::Socket,
        argv: &[String],
        envs: &[(String, String)],
    ) {
        let path = CString::new(super::bin()).unwrap();
        let argv_c: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap())
            .collect();
        let mut env_c: Vec<CString> = envs
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap())
            .collect();
        env_c.push(CString::new("LISTEN_FDS=1").unwrap());
        let mut pid_entry = vec![0u8; PREFIX.len() + 24];
        pid_entry[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut argv_ptrs: Vec<usize> = argv_c.iter().map(|c| c.as_ptr() as usize).collect();
        argv_ptrs.push(0);
        let env_ptrs: Vec<usize> = env_c.iter().map(|c| c.as_ptr() as usize).collect();
        let mut p = Prepared {
            path,
            _argv: argv_c,
            argv_ptrs,
            _env: env_c,
            env_ptrs,
            pid_entry,
            fd: sock.as_raw_fd(),
        };
        // The pid entry's address is known now (its heap buffer never moves).
        let pid_ptr = p.pid_entry.as_ptr() as usize;
        p.env_ptrs.push(pid_ptr);
        p.env_ptrs.push(0);
        // SAFETY: the closure only makes async-signal-safe calls (getpid,
        // dup2, fcntl, execve) and writes into memory allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                // Capture the whole struct (a closure would otherwise take
                // only the fields it names and drop the strings the
                // pointers point into).
                let p = &mut p;
                let fd = p.fd;
                if fd == 3 {
                    let fl = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // LISTEN_PID=<our pid>, written without allocating.
                let mut pid = libc::getpid() as u32;
                let mut digits = [0u8; 12];
                let mut n = 0;
                loop {
                    digits[n] = b'0' + (pid % 10) as u8;
                    n += 1;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let start = PREFIX.len();
                for i in 0..n {
                    p.pid_entry[start + i] = digits[n - 1 - i];
                }
                p.pid_entry[start + n] = 0;
                libc::execve(
                    p.path.as_ptr(),
                    p.argv_ptrs.as_ptr() as *const *const libc::c_char,
                    p.env_ptrs.as_ptr() as *const *const libc::c_char,
                );
                Err(std::io::Error::last_os_error())
            });
        }
    }
}

/// An HTTP exchange: the status code, the head (status line and headers)
/// and the body.
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` as it is and reads the reply to EOF (10 s at most).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write the request");
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        panic!(
            "reading the reply from {addr}: {e} (got {} bytes)",
            raw.len()
        );
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    HttpReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path` over HTTP/1.1.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}
