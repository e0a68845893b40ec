//! Helpers shared by the integration tests: the targets and the rule for a
//! backend this machine cannot run ([`Target::ready`]), bounded waits, TCP
//! pairs, test threads driven by commands, a test re-run as a child process.
//! Every wait here is bounded: a test fails with a message instead of hanging.
#![allow(dead_code)]

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use completion_port::{
    Backend, BlockingGuard, Completion, GetError, Handle, OpId, OpKind, OpOptions, Port,
    PortBuilder,
};

/// The bound on every wait in the tests.
pub const T: Duration = Duration::from_secs(10);

/// Writes a line straight to stderr, past libtest's output capture, so
/// progress and SKIPPED notices show without `--nocapture`.
pub fn say(line: impl AsRef<str>) {
    let mut e = io::stderr().lock();
    let _ = writeln!(e, "{}", line.as_ref());
}

/// Entries of a directory (for `/proc/self/fd` and `/proc/self/task`).
pub fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
}

/// Descriptors the process has open (Linux).
pub fn fds() -> usize {
    count_entries("/proc/self/fd")
}

/// The names of the threads the process runs (Linux), without io_uring's
/// kernel workers (`iou-wrk-*`, `iou-sqp-*`: tasks of the process that the
/// kernel starts and ends on its own, e.g. for file I/O).
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap_or_else(|e| panic!("/proc/self/task: {e}"))
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .filter(|n| !n.starts_with("iou-"))
        .collect()
}

/// Threads the process runs (Linux), without io_uring's kernel workers
/// (see [`thread_names`]).
pub fn threads() -> usize {
    thread_names().len()
}

/// Runs this test binary again as a child that runs only test `name`
/// (`--exact`), with `var=name` in its environment so the test knows it is
/// the child; fails unless the child passed that one test. Returns its
/// stdout and stderr. For what must not touch the test process itself
/// (a seccomp filter, a lowered descriptor limit).
pub fn run_self_as_child(name: &str, var: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(var, name)
        .env_remove("IOCP_BACKEND")
        .output()
        .expect("spawning the child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child `{name}` failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "child `{name}` did not run its test:\n{text}"
    );
    text
}

/// One way of running a port: a backend, threaded or inline (per-core).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub backend: Backend,
    pub inline: bool,
    /// Engine threads feed the port (two engines; by default the threads
    /// that wait on a port drive its one engine themselves).
    pub engine_threads: bool,
}

impl Target {
    /// `backend`, threaded or `inline`, whose waiting threads drive its
    /// engine (no engine threads).
    pub fn new(backend: Backend, inline: bool) -> Target {
        Target {
            backend,
            inline,
            engine_threads: false,
        }
    }

    pub fn name(&self) -> String {
        if self.inline {
            format!("{}+inline", self.backend)
        } else if self.engine_threads {
            format!("{}+threads", self.backend)
        } else {
            self.backend.name().to_string()
        }
    }

    pub fn builder(&self) -> PortBuilder {
        let b = Port::builder().backend(self.backend).inline(self.inline);
        if self.engine_threads {
            b.engines(2)
        } else {
            b
        }
    }

    /// A port with concurrency 4 (enough that the limit never gets in the
    /// way of clauses that are not about it).
    pub fn port(&self) -> Port {
        self.build(self.builder().concurrency(4))
    }

    pub fn build(&self, b: PortBuilder) -> Port {
        b.build()
            .unwrap_or_else(|e| panic!("{}: building a port failed: {e}", self.name()))
    }

    /// Whether `test` can run on this target: `true` when a port builds.
    /// When the backend is unavailable on this machine (not in this build,
    /// or a port fails to build: io_uring blocked by seccomp or a sysctl,
    /// too old a kernel), the test FAILS here, unless
    /// [`ALLOW_MISSING_BACKEND`] names the backend: then this prints
    /// `<test> SKIPPED: <reason>` and returns `false`.
    pub fn ready(&self, test: &str) -> bool {
        let why = if !Backend::available().contains(&self.backend) {
            format!("the {} backend is not in this build", self.backend)
        } else {
            match self.builder().build() {
                Ok(p) => {
                    p.close();
                    return true;
                }
                Err(e) => format!("{}: building a port failed: {e}", self.name()),
            }
        };
        iocp_test_support::backend_missing(test, self.backend.name(), &why);
        false
    }
}

/// The environment variable that lets tests skip a backend this machine
/// cannot run (see [`iocp_test_support::ALLOW_MISSING_BACKEND`]).
pub const ALLOW_MISSING_BACKEND: &str = iocp_test_support::ALLOW_MISSING_BACKEND;

/// Whether [`ALLOW_MISSING_BACKEND`] names `b` (or says `all`). A name that
/// is not a backend fails the test, naming it.
pub fn missing_backend_allowed(b: Backend) -> bool {
    iocp_test_support::missing_backend_allowed(b.name())
}

/// Takes one packet, failing the test after [`T`].
#[track_caller]
pub fn get(port: &Port) -> Completion {
    match port.get(Some(T)) {
        Ok(c) => c,
        Err(e) => panic!("expected a packet within {T:?}, got {e:?}"),
    }
}

/// Takes one packet, which must be operation `op`'s completion: of `kind`,
/// under `key` and `token`.
#[track_caller]
pub fn get_of(port: &Port, kind: OpKind, key: u64, token: u64, op: OpId) -> Completion {
    let c = get(port);
    assert_eq!(
        (c.kind, c.key, c.token, c.op),
        (kind, key, token, op),
        "{}",
        brief(&c)
    );
    c
}

/// Whether the threads that wait on `port` drive its engine (no engine
/// thread: an operation a thread starts after it took a packet goes to the
/// kernel at that thread's next `get`).
pub fn driven(port: &Port) -> bool {
    #[cfg(target_os = "linux")]
    {
        port.backend().driven
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        false
    }
}

/// Asserts that no packet arrives within `within`.
#[track_caller]
pub fn no_packet(port: &Port, within: Duration) {
    match port.get(Some(within)) {
        Err(GetError::TimedOut) => {}
        Ok(c) => panic!("unexpected packet: {c:?}"),
        Err(e) => panic!("expected TimedOut, got {e:?}"),
    }
}

/// Polls `cond` until it holds, failing after [`T`] with `what`.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {T:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A connected TCP pair on 127.0.0.1: the server side associated with
/// `port` under `key`, the client side a plain blocking stream with [`T`]
/// read/write timeouts.
pub fn tcp_pair(port: &Port, key: u64) -> (Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_read_timeout(Some(T)).unwrap();
    c.set_write_timeout(Some(T)).unwrap();
    c.set_nodelay(true).unwrap();
    (port.associate(s, key).expect("associate"), c)
}

/// A TCP listener on 127.0.0.1 associated with `port` under `key`, and its
/// address.
pub fn listener(port: &Port, key: u64) -> (Handle, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = l.local_addr().unwrap();
    (port.associate(l, key).expect("associate"), addr)
}

/// Both ends of a TCP connection made through the port: a listener under
/// `listener_key` with an accept in flight (token 10), and a new socket under
/// `client_key` connecting to it (token 20; `ConnectEx` on an unbound socket,
/// which the library binds first). Returns the listener, the client and the
/// listener's address.
pub fn accept_and_connect(
    port: &Port,
    listener_key: u64,
    client_key: u64,
) -> (Handle, Handle, SocketAddr) {
    let (lh, addr) = listener(port, listener_key);
    port.accept(&lh, 10).unwrap();
    let cs = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let ch = port.associate(cs, client_key).unwrap();
    port.connect(&ch, addr, 20).unwrap();
    (lh, ch, addr)
}

/// Starts a receive of up to `cap` bytes on `h` (token `token`) whose
/// deadline is `after`, and takes the next packet, which must be that
/// receive timing out.
#[track_caller]
pub fn recv_timing_out(
    port: &Port,
    h: &Handle,
    cap: usize,
    token: u64,
    after: Duration,
) -> Completion {
    port.recv(
        h,
        Vec::with_capacity(cap),
        OpOptions::with_timeout(token, after),
    )
    .unwrap();
    let c = get(port);
    let kind = c.result.as_ref().map_err(|e| e.kind());
    assert_eq!(kind.err(), Some(io::ErrorKind::TimedOut), "{}", brief(&c));
    c
}

/// An address on 127.0.0.1 where nothing listens (bound, then closed).
pub fn closed_tcp_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A `Vec` with `prefix` already in it and room for `cap` bytes in total.
pub fn vec_with(prefix: &[u8], cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(cap.max(prefix.len()));
    v.extend_from_slice(prefix);
    v
}

/// A deterministic byte pattern (period 251, so shifted or reordered
/// chunks of any length that is not a multiple of 251 show up).
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| ((seed + k) % 251) as u8).collect()
}

/// Takes the next packet and asserts that it is the receive `token`,
/// complete with exactly `want` in its buffer (`what` says why it should be).
#[track_caller]
pub fn received(port: &Port, token: u64, want: &[u8], what: &str) {
    let mut c = get(port);
    assert_eq!(
        (c.token, c.result.as_ref().ok().copied()),
        (token, Some(want.len())),
        "{what}: {}",
        brief(&c)
    );
    assert_eq!(c.take_buf().unwrap().as_slice(), want, "{what}");
}

/// Completion summary for messages.
pub fn brief(c: &Completion) -> String {
    format!(
        "{:?} key={} token={} op={} result={:?} more={}",
        c.kind,
        c.key,
        c.token,
        c.op.as_u64(),
        c.result,
        c.more
    )
}

// ---- a thread driven by commands ------------------------------------------

/// What an [`Actor`]'s jobs see: the port, and a place to keep a blocking
/// guard between jobs.
pub struct ActorState {
    pub port: Port,
    pub guard: Option<BlockingGuard>,
}

type Job = Box<dyn FnOnce(&mut ActorState) + Send>;

/// A thread that runs jobs sent to it, one at a time, so a test can make a
/// specific thread call `get`, take a blocking guard, or exit.
pub struct Actor {
    name: &'static str,
    tx: Option<mpsc::Sender<Job>>,
    join: Option<JoinHandle<()>>,
}

/// The result of a job that may block.
pub struct Pending<R> {
    what: String,
    rx: mpsc::Receiver<R>,
}

impl<R> Pending<R> {
    /// Waits up to [`T`] for the job's result.
    #[track_caller]
    pub fn wait(self) -> R {
        match self.rx.recv_timeout(T) {
            Ok(r) => r,
            Err(e) => panic!("{}: no result within {T:?} ({e})", self.what),
        }
    }

    /// The result if the job has finished.
    pub fn ready(&self) -> Option<R> {
        self.rx.try_recv().ok()
    }
}

impl Actor {
    pub fn new(name: &'static str, port: &Port) -> Actor {
        let (tx, rx) = mpsc::channel::<Job>();
        let port = port.clone();
        let join = std::thread::Builder::new()
            .name(format!("actor-{name}"))
            .spawn(move || {
                let mut st = ActorState { port, guard: None };
                while let Ok(job) = rx.recv() {
                    job(&mut st);
                }
            })
            .expect("spawn actor");
        Actor {
            name,
            tx: Some(tx),
            join: Some(join),
        }
    }

    /// Starts `f` on the actor's thread and returns at once.
    pub fn start<R: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut ActorState) -> R + Send + 'static,
    ) -> Pending<R> {
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move |st| {
            let _ = rtx.send(f(st));
        });
        self.tx
            .as_ref()
            .expect("actor running")
            .send(job)
            .unwrap_or_else(|_| panic!("actor {} died", self.name));
        Pending {
            what: format!("actor {}: {what}", self.name),
            rx: rrx,
        }
    }

    /// Runs `f` on the actor's thread and waits (up to [`T`]) for it.
    #[track_caller]
    pub fn call<R: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut ActorState) -> R + Send + 'static,
    ) -> R {
        self.start(what, f).wait()
    }

    /// Ends the thread and joins it (thread-locals are destroyed before
    /// `join` returns).
    pub fn exit(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(j) = self.join.take() {
            if j.join().is_err() && !std::thread::panicking() {
                panic!("actor {} panicked", self.name);
            }
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `get` on the actor's port, reduced to the token (for easy assertions).
pub fn token_of(r: Result<Completion, GetError>) -> Result<u64, GetError> {
    r.map(|c| c.token)
}

/// The op ids and tokens of a batch, for messages.
pub fn tokens(batch: &[Completion]) -> Vec<u64> {
    batch.iter().map(|c| c.token).collect()
}

// ---- scratch files ----------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped. Its path is short (socket paths must fit
/// in 108 bytes).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("iocp-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        TempDir(p)
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
