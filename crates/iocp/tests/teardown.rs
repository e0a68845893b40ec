//! Teardown with operations in flight (on sockets, a file and pipes): handles
//! closed and drained, the port
//! closed under pending operations, the port dropped without `close`. Each
//! operation completes exactly once when drained; afterwards the process's
//! open descriptors (`/proc/self/fd`) and threads (`/proc/self/task`) are
//! back to where they were, on every backend, threaded and inline.
//!
//! One test function on purpose: descriptor and thread counts are
//! process-wide, so nothing else may run in this binary at the same time.
//! `ci/asan.sh` runs this file under AddressSanitizer (leaks included).
#![cfg(target_os = "linux")]

mod util;

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use completion_port::{Backend, FileHandle, Handle, OpKind, PipeHandle, Port};
use socket2::SockRef;
use util::*;

/// A port with one operation of every kind in flight, and the peers.
struct Scene {
    port: Port,
    handles: Vec<Handle>,
    files: Vec<FileHandle>,
    pipes: Vec<PipeHandle>,
    peers: Vec<TcpStream>,
    /// The pipes' other ends: nobody writes or reads them.
    pipe_ends: (std::io::PipeReader, std::io::PipeWriter),
    _dir: TempDir,
    /// Tokens of the operations started.
    tokens: Vec<u64>,
}

fn scene(t: &Target) -> Scene {
    let b = t
        .builder()
        .concurrency(2)
        .pool_buffers(8)
        .pool_buffer_size(4096);
    let port = t.build(if t.inline { b } else { b.engines(2) });
    let mut handles = Vec::new();
    let mut peers = Vec::new();

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lh = port.associate(l, 1).unwrap();
    port.accept(&lh, 1).unwrap();
    handles.push(lh);

    let (h, c) = tcp_pair(&port, 2);
    port.recv(&h, Vec::with_capacity(256), 2).unwrap();
    handles.push(h);
    peers.push(c);

    let (h, c) = tcp_pair(&port, 3);
    port.recv_pooled(&h, 3).unwrap();
    handles.push(h);
    peers.push(c);

    // A send that cannot finish: 4 MiB into small buffers, nobody reading.
    let (h, c) = tcp_pair(&port, 4);
    h.with_socket(|s| s.set_send_buffer_size(4096)).unwrap();
    // Abortive close for this one: a graceful close would leave the kernel
    // trickling the unsent bytes to a zero window (persist-timer backoff,
    // seconds) before the peer sees EOF.
    h.with_socket(|s| s.set_linger(Some(Duration::ZERO)))
        .unwrap();
    SockRef::from(&c).set_recv_buffer_size(4096).unwrap();
    port.send(&h, vec![7u8; 4 << 20], 4).unwrap();
    port.send(&h, vec![8u8; 100], 5).unwrap(); // queued behind it
    handles.push(h);
    peers.push(c);

    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hu = port.associate(u, 6).unwrap();
    port.recv_from(&hu, Vec::with_capacity(64), 6).unwrap();
    handles.push(hu);

    // Reads of a file, a read of a pipe nobody writes, and a write to a
    // pipe nobody reads (4 MiB: far more than it holds).
    let dir = TempDir::new("teardown");
    std::fs::write(dir.join("f"), vec![9u8; 256 * 1024]).unwrap();
    let fh = port
        .associate_file(completion_port::fs::open(dir.join("f")).unwrap(), 8)
        .unwrap();
    for tok in 8..11 {
        port.read_at(&fh, Vec::with_capacity(64 * 1024), (tok - 8) * 65536, tok)
            .unwrap();
    }
    let (r, w_end) = std::io::pipe().unwrap();
    let (r_end, w) = std::io::pipe().unwrap();
    let rh = port.associate_pipe(r, 11).unwrap();
    port.read(&rh, Vec::with_capacity(64), 11).unwrap();
    let wh = port.associate_pipe(w, 12).unwrap();
    port.write(&wh, vec![5u8; 4 << 20], 12).unwrap();

    // A timer far in the future (dropped with the port).
    port.post_after(Duration::from_secs(3600), 7, 7).unwrap();

    Scene {
        port,
        handles,
        files: vec![fh],
        pipes: vec![rh, wh],
        peers,
        pipe_ends: (r_end, w_end),
        _dir: dir,
        tokens: vec![1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12],
    }
}

/// After teardown the peers see their connections closed (EOF or reset),
/// not a timeout: the port closed every descriptor it owned.
fn peers_see_close(peers: Vec<TcpStream>) {
    for mut p in peers {
        let mut buf = [0u8; 64 * 1024];
        let deadline = Instant::now() + T;
        loop {
            match p.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {} // data the stuck send had pushed before the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("peer did not see the close: {e}"),
            }
            assert!(Instant::now() < deadline, "peer still reading after {T:?}");
        }
    }
}

fn check_back_to(what: &str, fd0: usize, th0: usize) {
    wait_until(
        &format!("{what}: descriptors back to {fd0} (now {})", fds()),
        || fds() == fd0,
    );
    wait_until(
        &format!("{what}: threads back to {th0} (now {})", threads()),
        || threads() == th0,
    );
}

/// Close every handle, drain every completion (each exactly once), then
/// close the port.
fn drain_then_close(t: &Target, fd0: usize, th0: usize) {
    let s = scene(t);
    if !t.inline {
        assert!(threads() >= th0 + 2, "two engine threads run");
    }
    for h in &s.handles {
        h.close();
    }
    for f in &s.files {
        f.close();
    }
    for p in &s.pipes {
        p.close();
    }
    let mut seen: HashMap<u64, OpKind> = HashMap::new();
    while seen.len() < s.tokens.len() {
        let c = get(&s.port);
        assert!(!c.more, "{}", brief(&c));
        assert!(c.is_aborted() || c.is_ok(), "{}", brief(&c));
        if let Some(k) = seen.insert(c.token, c.kind) {
            panic!("token {} ({k:?}) completed twice", c.token);
        }
    }
    no_packet(&s.port, Duration::from_millis(50));
    assert_eq!(s.port.pool_stats().in_use, 0);
    // File operations: a pool of threads on epoll, none on io_uring.
    let file_threads = thread_names()
        .iter()
        .filter(|n| n.starts_with("iocp-file"))
        .count();
    match t.backend {
        Backend::Epoll => assert!(file_threads >= 1, "the file pool ran"),
        _ => assert_eq!(
            file_threads,
            0,
            "a thread of ours for file I/O on {}",
            t.name()
        ),
    }
    // Drained: every socket is closed already, before the port is.
    peers_see_close(s.peers);
    let t0 = Instant::now();
    s.port.close();
    assert!(t0.elapsed() < PROMPT, "close() took {:?}", t0.elapsed());
    if !t.inline {
        wait_until("engine threads joined by close()", || threads() == th0);
    }
    // What close() alone leaves open: the engines' wake eventfds live as
    // long as the Port value or a Handle does.
    let after_close = fds() as isize - fd0 as isize;
    drop((s.handles, s.files, s.pipes, s.pipe_ends));
    drop(s.port);
    check_back_to(&format!("{} drain_then_close", t.name()), fd0, th0);
    println!(
        "{}: {after_close} descriptors left after close(), 0 after drop",
        t.name()
    );
}

/// Close the port with every operation still in flight.
/// The engines give up on operations the kernel still holds after 10 s and
/// leak their buffers; a teardown must never come near that.
const PROMPT: Duration = Duration::from_secs(5);

fn close_with_ops_in_flight(t: &Target, fd0: usize, th0: usize) {
    let s = scene(t);
    let t0 = Instant::now();
    s.port.close();
    assert!(
        t0.elapsed() < PROMPT,
        "close() took {:?}: an operation outlived the cancel",
        t0.elapsed()
    );
    assert_eq!(
        s.port.get(Some(Duration::ZERO)).unwrap_err(),
        completion_port::GetError::Abandoned
    );
    if !t.inline {
        wait_until("engine threads joined by close()", || threads() == th0);
    }
    drop((s.handles, s.files, s.pipes, s.pipe_ends)); // closing handles of a closed port is harmless
    drop(s.port);
    peers_see_close(s.peers);
    check_back_to(&format!("{} close_with_ops_in_flight", t.name()), fd0, th0);
}

/// Drop the last clone of the port (no `close`) with operations in flight.
fn drop_without_close(t: &Target, fd0: usize, th0: usize) {
    let s = scene(t);
    let clone = s.port.clone();
    drop(s.port);
    assert!(!clone.is_closed(), "a clone keeps the port open");
    let t0 = Instant::now();
    drop(clone);
    assert!(
        t0.elapsed() < PROMPT,
        "drop took {:?}: an operation outlived the cancel",
        t0.elapsed()
    );
    drop((s.handles, s.files, s.pipes, s.pipe_ends));
    peers_see_close(s.peers);
    check_back_to(&format!("{} drop_without_close", t.name()), fd0, th0);
}

const ROUNDS: usize = 8;

#[test]
fn teardown_returns_every_resource() {
    let fd0 = fds();
    let th0 = threads();
    let mut ran = 0;
    for &backend in Backend::available() {
        for inline in [false, true] {
            let t = Target::new(backend, inline);
            if !t.ready(&format!("teardown[{}]", t.name())) {
                continue;
            }
            check_back_to("after probing", fd0, th0);
            let started = Instant::now();
            drain_then_close(&t, fd0, th0);
            // Closing right behind the set-up races the engine still taking
            // the operations in: repeat to catch a late one.
            for _ in 0..ROUNDS {
                close_with_ops_in_flight(&t, fd0, th0);
                drop_without_close(&t, fd0, th0);
            }
            say(format!(
                "teardown[{}]: {} passed in {:?}",
                t.name(),
                1 + 2 * ROUNDS,
                started.elapsed()
            ));
            ran += 1;
        }
    }
    assert!(ran > 0, "no backend could build a port");
}
