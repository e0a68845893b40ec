//! The io_uring fast path: pooled receive holds no buffer while idle, costs
//! little memory per connection, survives a starved pool (ENOBUFS) and a
//! tiny completion queue (CQ overflow) without losing a byte.
#![cfg(target_os = "linux")]

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use completion_port::{Backend, Completion, Handle, OpKind, Port, PortBuilder};

/// Counts live heap bytes so the test can measure what the library keeps
/// per connection.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// `LIVE` counts the whole process, and `cargo test` runs this file's tests
/// as threads of one process: each test holds this lock so no other test
/// allocates while one measures.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`ALONE`], even after another test panicked while holding it.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// One port per backend of this build, each made by `b`; a backend that
/// cannot build a port here fails the test (see [`util::Target::ready`]).
fn ports(b: impl Fn() -> PortBuilder) -> Vec<(Backend, Port)> {
    let mut v = Vec::new();
    for &be in Backend::available() {
        let t = util::Target::new(be, false);
        if t.ready(&format!("fastpath[{be}]")) {
            v.push((be, t.build(b().backend(be))));
        }
    }
    v
}

/// Accepts `n` connections made by `TcpStream::connect`, associating each.
fn connect_many(port: &Port, n: usize) -> (Vec<TcpStream>, Vec<Handle>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, u64::MAX).unwrap();
    port.accept_stream(&lh, 0).unwrap();
    let mut clients = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    while handles.len() < n {
        if clients.len() < n {
            clients.push(TcpStream::connect(addr).unwrap());
        }
        while let Ok(mut c) = port.get(Some(Duration::ZERO)) {
            assert_eq!(c.kind, OpKind::Accept, "{c:?}");
            let (s, _) = c.take_accepted().expect("accepted socket");
            handles.push(port.associate(s, handles.len() as u64).unwrap());
        }
        if clients.len() == n && handles.len() < n {
            let mut c = port.get(WAIT).expect("accept completion");
            let (s, _) = c.take_accepted().expect("accepted socket");
            handles.push(port.associate(s, handles.len() as u64).unwrap());
        }
    }
    lh.close();
    // The standing accept ends with one final completion.
    let c = port.get(WAIT).expect("final accept completion");
    assert!(!c.more && c.is_aborted(), "{c:?}");
    (clients, handles)
}

/// Waits until `f` holds, turning the port's engine if it is inline.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn idle_pooled_receives_pin_no_buffer_and_little_memory() {
    let _alone = alone();
    for (be, port) in ports(Port::builder) {
        let n = 1000;
        let (mut clients, handles) = connect_many(&port, n);
        let before = LIVE.load(Ordering::Relaxed);
        for (i, h) in handles.iter().enumerate() {
            port.recv_pooled(h, i as u64).unwrap();
        }
        // Let the engine take every receive to the kernel.
        port.post(0, 0, 0).unwrap();
        let c = port.get(WAIT).unwrap();
        assert_eq!(c.kind, OpKind::Post);
        eventually("receives armed", || port.pool_stats().in_use == 0);
        std::thread::sleep(Duration::from_millis(100));
        let after = LIVE.load(Ordering::Relaxed);
        let per_conn = (after - before) as f64 / n as f64;
        let ps = port.pool_stats();
        println!(
            "{be}: {n} idle pooled receives: {per_conn:.0} B of heap each (besides the handle), pool {ps:?}"
        );
        assert_eq!(ps.in_use, 0, "{be}: an idle connection holds a pool buffer");
        assert!(per_conn < 2048.0, "{be}: {per_conn} B per idle connection");
        // The handles themselves (already counted before) are small too.
        // Every connection still works afterwards.
        clients[n - 1].write_all(b"ping").unwrap();
        let c = port.get(WAIT).unwrap();
        assert_eq!(
            (c.kind, c.key, c.bytes(), c.more),
            (OpKind::RecvPooled, (n - 1) as u64, 4, true)
        );
        drop(c);
        drop(clients);
        let mut finals = 0;
        while finals < n {
            let c = port.get(WAIT).expect("final completions");
            if !c.more {
                finals += 1;
            }
        }
        drop(handles);
        port.close();
    }
}

/// Receives everything the peer sends through a pooled receive, up to its
/// FIN, returning the bytes.
fn pooled_collect(port: &Port, h: &Handle, expect: usize) -> Vec<u8> {
    port.recv_pooled(h, 1).unwrap();
    let mut got = Vec::with_capacity(expect);
    loop {
        let mut c: Completion = port.get(WAIT).expect("pooled completion");
        assert_eq!(c.kind, OpKind::RecvPooled);
        if !c.more {
            assert_eq!(c.bytes(), 0, "{c:?}");
            break;
        }
        let b = c.take_buf().expect("pool buffer");
        got.extend_from_slice(b.as_slice());
    }
    got
}

#[test]
fn two_tiny_buffers_receive_a_mebibyte_without_loss() {
    let _alone = alone();
    for (be, port) in ports(|| Port::builder().pool_buffers(2).pool_buffer_size(64)) {
        let (mut clients, handles) = connect_many(&port, 1);
        let data: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let d2 = data.clone();
        let mut c = clients.pop().unwrap();
        let writer = std::thread::spawn(move || {
            c.write_all(&d2).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        });
        let got = pooled_collect(&port, &handles[0], data.len());
        drop(handles); // closes the socket, so the writer's read ends
        writer.join().unwrap();
        assert_eq!(got.len(), data.len(), "{be}: lost bytes");
        assert!(got == data, "{be}: bytes differ");
        assert_eq!(port.pool_stats().in_use, 0);
        let es = port.engine_stats();
        println!("{be}: 1 MiB through a pool of 2 × 64 B buffers: ok, {es:?}");
        assert!(
            es.starved > 0,
            "{be}: the pool never ran dry, so ENOBUFS was not exercised"
        );
        port.close();
    }
}

#[test]
fn a_tiny_completion_queue_overflows_without_loss() {
    let _alone = alone();
    // 16 CQ entries and 64 connections all receiving at once: the kernel
    // queues CQEs past the ring (IORING_FEAT_NODROP) and the engine must
    // flush them. (epoll has no CQ; the test still checks delivery.)
    for (be, port) in ports(|| {
        Port::builder()
            .sq_entries(8)
            .cq_entries(16)
            .pool_buffers(512)
            .pool_buffer_size(256)
    }) {
        let n = 64;
        let (mut clients, handles) = connect_many(&port, n);
        for (i, h) in handles.iter().enumerate() {
            port.recv_pooled(h, i as u64).unwrap();
        }
        let per = 8 * 1024;
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = vec![i as u8; per];
            c.write_all(&msg).unwrap();
        }
        let mut got = vec![0usize; n];
        let t = Instant::now();
        while got.iter().sum::<usize>() < n * per {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{be}: only {} bytes",
                got.iter().sum::<usize>()
            );
            let mut c = port.get(WAIT).expect("completion");
            assert!(c.more, "{be}: stream ended early: {c:?}");
            let b = c.take_buf().unwrap();
            assert!(
                b.as_slice().iter().all(|&x| x == c.key as u8),
                "{be}: bytes crossed connections"
            );
            got[c.key as usize] += b.len();
        }
        assert!(got.iter().all(|&g| g == per), "{be}: {got:?}");
        let es = port.engine_stats();
        println!(
            "{be}: {} bytes over {n} connections with a 16-entry CQ: ok, {es:?}",
            n * per
        );
        if be == Backend::Uring {
            assert!(
                es.cq_overflows > 0,
                "{be}: the CQ never overflowed, so the path was not exercised"
            );
        }
        drop(clients);
        drop(handles);
        port.close();
    }
}

/// One connection, closed loop, on an inline (per-core) port: the echo of a
/// message takes two kernel entries, as a hand-written io_uring loop does —
/// one that submits the send and returns with its completion (the socket
/// takes 64 bytes at once), one that waits for the next message. The
/// send's own completion costs no entry of its own, and neither does the
/// pool buffer it gives back.
#[test]
fn inline_echo_takes_two_enters_per_message() {
    let _alone = alone();
    const MESSAGES: u64 = 10_000;
    for &be in Backend::available() {
        let t = util::Target::new(be, true);
        if !t.ready("inline_echo_takes_two_enters_per_message") {
            continue;
        }
        let port = t.build(t.builder());
        let (h, mut client) = util::tcp_pair(&port, 1);
        let peer = std::thread::spawn(move || {
            let mut msg = [0u8; 64];
            let mut back = [0u8; 64];
            for i in 0..=MESSAGES {
                msg.fill(i as u8);
                client.write_all(&msg).unwrap();
                client.read_exact(&mut back).unwrap();
                assert_eq!(back, msg, "message {i} came back changed");
            }
        });
        port.recv_pooled(&h, 0).unwrap();
        // Echoes until `n` messages went back whole, counting what came in.
        let echo = |n: u64| {
            let (mut got, mut sent) = (0usize, 0usize);
            while sent < n as usize * 64 {
                let mut c = port.get(WAIT).expect("echo loop: completion");
                match c.kind {
                    OpKind::RecvPooled => {
                        assert!(c.more, "{be}: the receive ended: {c:?}");
                        let b = c.take_buf().expect("pool buffer");
                        got += b.len();
                        port.send(&h, b, 1).unwrap();
                    }
                    OpKind::Send => sent += c.bytes(),
                    _ => panic!("{be}: unexpected {c:?}"),
                }
            }
            assert_eq!(got, sent, "{be}: echoed bytes");
        };
        // The first message (start-up: arming the receive) is not counted.
        echo(1);
        let before = port.engine_stats().enters;
        echo(MESSAGES);
        let enters = port.engine_stats().enters - before;
        peer.join().unwrap();
        let per = enters as f64 / MESSAGES as f64;
        println!(
            "{be}+inline: {per:.3} kernel entries per echoed message ({enters} for {MESSAGES})"
        );
        if be == Backend::Uring {
            assert!(
                per <= 2.05,
                "{be}+inline: {per:.3} io_uring_enter calls per message ({enters} for {MESSAGES}); at most 2.05"
            );
        }
        drop(h);
        port.close();
    }
}
