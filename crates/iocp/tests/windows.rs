//! The Windows backend (native IOCP), run natively or under Wine.
//!
//! Compiles to nothing off Windows. Wine 8.0 differs from Windows in six
//! ways these tests check (the `divergence_*` tests below, also listed in
//! `crates/iocp/WINDOWS.md`): it wakes GQCS waiters FIFO (Windows: LIFO),
//! ignores the concurrency limit, never wakes a GQCS waiter on
//! `CloseHandle(port)`, returns TRUE from `CancelIoEx` with nothing pending
//! (Windows: FALSE, `ERROR_NOT_FOUND`), completes a `WSARecv` pending at
//! `closesocket` with 676 `ERROR_HANDLES_CLOSED` (Windows: 995), and lets
//! `getpeername` succeed on an `AcceptEx` socket before
//! `SO_UPDATE_ACCEPT_CONTEXT` (Windows: `WSAENOTCONN`). Under Wine each of those assertions is
//! skipped with a printed `SKIPPED under Wine: <what Wine does>` line (run
//! with `--nocapture` to see them); everything else runs everywhere.
#![cfg(windows)]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use completion_port::{Backend, Completion, GetError, OpKind, OpOptions, Port};
use util::{accept_and_connect, listener, recv_timing_out};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn wine() -> Option<String> {
    iocp_test_support::wine()
}

/// Whether the caller must skip a Wine-divergent assertion (prints why).
fn skip_under_wine(divergence: &str) -> bool {
    if let Some(v) = wine() {
        println!("SKIPPED under Wine {v}: {divergence}");
        true
    } else {
        false
    }
}

fn get(port: &Port) -> Completion {
    port.get(T).expect("a completion within 10 s")
}

/// A connected pair: (server side associated with `port` under `key`, client).
fn pair(port: &Port, key: u64) -> (completion_port::Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (port.associate(s, key).unwrap(), client)
}

fn assert_none_left(port: &Port) {
    match port.get(Some(Duration::from_millis(200))) {
        Err(GetError::TimedOut) => {}
        other => panic!("expected no more completions, got {other:?}"),
    }
}

#[test]
fn backend_is_iocp() {
    let port = Port::new(0).unwrap();
    println!("backend: {}; wine: {:?}", port.backend(), wine());
    assert_eq!(port.backend().backend, Backend::Iocp);
    assert!(port.concurrency() >= 1);
    assert!(Port::builder().backend(Backend::Uring).build().is_err());
    assert_eq!(
        Port::builder().inline(true).build().unwrap().concurrency(),
        1
    );
}

#[test]
fn echo_round_trip() {
    let port = Port::new(0).unwrap();
    // The client side goes through the library too.
    let (_lh, ch, addr) = accept_and_connect(&port, 1, 3);

    let mut server = None;
    for _ in 0..2 {
        let mut c = get(&port);
        match c.kind {
            OpKind::Accept => {
                assert_eq!((c.key, c.token, c.more), (1, 10, false));
                let (s, peer) = c.take_accepted().expect("accepted socket");
                assert!(peer.is_some());
                assert_eq!(s.peer_addr().unwrap().as_socket(), peer);
                server = Some(port.associate(s, 2).unwrap());
            }
            OpKind::Connect => {
                assert_eq!((c.key, c.token), (3, 20));
                c.result.as_ref().expect("connected");
            }
            k => panic!("unexpected {k:?}"),
        }
    }
    let sh = server.unwrap();
    assert_eq!(sh.peer_addr().unwrap(), ch.local_addr().unwrap());
    assert_eq!(ch.peer_addr().unwrap(), addr);

    port.recv(&sh, Vec::with_capacity(100), 11).unwrap();
    port.send(&ch, b"hello".to_vec(), 21).unwrap();
    let mut got_recv = None;
    for _ in 0..2 {
        let mut c = get(&port);
        match c.kind {
            OpKind::Recv => {
                assert_eq!((c.key, c.token, c.bytes()), (2, 11, 5));
                got_recv = c.take_buf();
            }
            OpKind::Send => assert_eq!((c.key, c.token, c.bytes()), (3, 21, 5)),
            k => panic!("unexpected {k:?}"),
        }
    }
    let b = got_recv.unwrap();
    assert_eq!(b.as_slice(), b"hello");
    // Echo it back; the client reads it.
    port.send(&sh, b, 12).unwrap();
    port.recv(&ch, vec![0u8; 16].into_boxed_slice(), 22)
        .unwrap();
    for _ in 0..2 {
        let mut c = get(&port);
        match c.kind {
            OpKind::Send => assert_eq!((c.token, c.bytes()), (12, 5)),
            OpKind::Recv => {
                assert_eq!((c.token, c.bytes()), (22, 5));
                assert_eq!(&c.take_buf().unwrap().as_slice()[..5], b"hello");
            }
            k => panic!("unexpected {k:?}"),
        }
    }
    // FIN: a receive completes with 0 bytes.
    sh.with_socket(|s| s.shutdown(std::net::Shutdown::Write))
        .unwrap();
    port.recv(&ch, Vec::with_capacity(8), 23).unwrap();
    let c = get(&port);
    assert_eq!((c.token, c.bytes(), c.is_ok()), (23, 0, true));
    assert_none_left(&port);
}

#[test]
fn pooled_receive_stream() {
    let port = Port::builder()
        .pool_buffers(4)
        .pool_buffer_size(1024)
        .build()
        .unwrap();
    let (h, mut client) = pair(&port, 5);
    port.recv_pooled(&h, 50).unwrap();
    // Idle: no buffer is pinned anywhere.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(port.pool_stats().in_use, 0);
    assert_eq!(port.pool_stats().in_kernel, 0);

    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        client.write_all(&d2).unwrap();
        client
    });
    // Hold the first four buffers: the pool is empty, the stream must park
    // (no completion) and resume when they come back.
    let mut held = Vec::new();
    let mut got = Vec::new();
    while held.len() < 4 {
        let mut c = get(&port);
        assert_eq!(
            (c.kind, c.key, c.token, c.more),
            (OpKind::RecvPooled, 5, 50, true)
        );
        let b = c.take_buf().unwrap();
        assert_eq!(b.len(), c.bytes());
        got.extend_from_slice(b.as_slice());
        held.push(b);
    }
    assert_eq!(port.pool_stats().in_use, 4);
    let client = writer.join().unwrap();
    match port.get(Some(Duration::from_millis(300))) {
        Err(GetError::TimedOut) => {}
        other => panic!("a starved pooled receive produced {other:?}"),
    }
    assert!(
        port.engine_stats().starved >= 1,
        "{:?}",
        port.engine_stats()
    );
    drop(held);
    while got.len() < data.len() {
        let mut c = get(&port);
        assert_eq!((c.kind, c.more), (OpKind::RecvPooled, true));
        got.extend_from_slice(c.take_buf().unwrap().as_slice());
    }
    assert_eq!(got, data);
    drop(client); // FIN
    let c = get(&port);
    assert_eq!(
        (c.kind, c.more, c.bytes(), c.is_ok()),
        (OpKind::RecvPooled, false, 0, true)
    );
    assert_none_left(&port);
    assert_eq!(port.pool_stats().in_use, 0);
}

#[test]
fn connect_refused() {
    let port = Port::new(0).unwrap();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, 7).unwrap();
    port.connect(&h, addr, 70).unwrap();
    // Windows retries SYNs to a closed loopback port for ~2 s.
    let c = port.get(Some(Duration::from_secs(15))).unwrap();
    assert_eq!((c.kind, c.key, c.token), (OpKind::Connect, 7, 70));
    let e = c.result.as_ref().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e:?}");
    assert_none_left(&port);
}

#[test]
fn cancel_pending_recv_aborts_once() {
    let port = Port::new(0).unwrap();
    let (h, _client) = pair(&port, 8);
    let op = port.recv(&h, Vec::with_capacity(64), 80).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    h.cancel(op).unwrap();
    let mut c = get(&port);
    assert_eq!((c.kind, c.token), (OpKind::Recv, 80));
    assert!(c.is_aborted(), "{:?}", c.result);
    assert!(completion_port::is_aborted(c.result.as_ref().unwrap_err()));
    assert!(c.take_buf().is_some(), "the buffer comes back");
    assert_none_left(&port);
    // Cancelling a finished operation does nothing.
    h.cancel(op).unwrap();
    assert_none_left(&port);
    // The handle still works.
    port.recv(&h, Vec::with_capacity(8), 81).unwrap();
    let mut client = _client;
    client.write_all(b"x").unwrap();
    let c = get(&port);
    assert_eq!((c.token, c.bytes()), (81, 1));
}

#[test]
fn close_handle_with_ops_in_flight() {
    let port = Port::new(0).unwrap();
    let (lh, _) = listener(&port, 1);
    port.accept(&lh, 90).unwrap();
    let (h, mut client) = pair(&port, 9);
    port.recv(&h, Vec::with_capacity(64), 91).unwrap(); // in the kernel
    port.recv_pooled(&h, 92).unwrap(); // queued behind it in the read lane
    std::thread::sleep(Duration::from_millis(20));
    h.close();
    lh.close();
    assert!(h.is_closed());
    assert!(
        port.recv(&h, Vec::new(), 93).is_err(),
        "a closed handle takes no operation"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let c = get(&port);
        assert!(c.is_aborted(), "{c:?}");
        assert!(!c.more);
        seen.push(c.token);
    }
    seen.sort();
    assert_eq!(seen, vec![90, 91, 92]);
    assert_none_left(&port);
    // The socket was closed after its last completion: the peer sees EOF.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 4];
    assert_eq!(client.read(&mut b).unwrap(), 0);
}

#[test]
fn post_get_get_many() {
    let port = Port::new(0).unwrap();
    for i in 0..5u64 {
        port.post(100 + i, i as usize * 10, 1000 + i).unwrap();
    }
    let c = get(&port);
    assert_eq!(
        (c.kind, c.key, c.bytes(), c.token),
        (OpKind::Post, 100, 0, 1000)
    );
    let mut batch = Vec::new();
    let n = port.get_many(&mut batch, 10, T).unwrap();
    assert_eq!(n, 4);
    let tokens: Vec<u64> = batch.iter().map(|c| c.token).collect();
    assert_eq!(tokens, vec![1001, 1002, 1003, 1004], "FIFO");
    assert_eq!(batch[3].bytes(), 40);
    let st = port.stats();
    assert_eq!((st.delivered, st.queued, st.waiting), (5, 0, 0));
    assert_eq!(st.running, 1, "this thread runs until its next get");
    {
        let _g = port.blocking();
        assert_eq!(port.stats().running, 0);
    }
    assert_eq!(port.stats().running, 1);
    assert_eq!(
        port.get_many(&mut batch, 10, Some(Duration::ZERO)),
        Err(GetError::TimedOut)
    );
    assert_eq!(batch.len(), 4, "a timed-out get_many appends nothing");
    assert_eq!(
        port.stats().running,
        0,
        "a get without a packet ends the running period"
    );
    // Posted from another thread: a hand-off.
    let p2 = port.clone();
    std::thread::spawn(move || p2.post(1, 2, 3).unwrap())
        .join()
        .unwrap();
    assert_eq!(port.stats().queued, 1);
    let c = get(&port);
    assert_eq!((c.key, c.bytes(), c.token), (1, 2, 3));
    assert_eq!(port.stats().handoffs, 1);
    // Own post + get is not a hand-off; an operation completion (queued by
    // the kernel) is.
    port.post(1, 2, 4).unwrap();
    get(&port);
    assert_eq!(port.stats().handoffs, 1);
    let (h, mut client) = pair(&port, 2);
    port.recv(&h, Vec::with_capacity(8), 5).unwrap();
    client.write_all(b"z").unwrap();
    assert_eq!(get(&port).token, 5);
    assert_eq!(port.stats().handoffs, 2);
}

#[test]
fn timer_packet() {
    let port = Port::new(0).unwrap();
    let t0 = Instant::now();
    port.post_after(Duration::from_millis(100), 4, 44).unwrap();
    port.post_after(Duration::from_millis(20), 3, 33).unwrap();
    let c = get(&port);
    assert_eq!(
        (c.kind, c.key, c.token, c.bytes()),
        (OpKind::Timer, 3, 33, 0)
    );
    let c = get(&port);
    assert_eq!(
        (c.kind, c.key, c.token, c.bytes()),
        (OpKind::Timer, 4, 44, 0)
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(95),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn deadline_times_out() {
    let port = Port::new(0).unwrap();
    let (h, _client) = pair(&port, 6);
    let t0 = Instant::now();
    let c = recv_timing_out(&port, &h, 64, 60, Duration::from_millis(100));
    assert!(t0.elapsed() >= Duration::from_millis(95));
    assert_eq!((c.kind, c.token), (OpKind::Recv, 60));
    assert!(!c.is_aborted(), "a deadline is not a cancel");
    // A pooled receive's deadline ends its stream with TimedOut.
    port.recv_pooled(&h, OpOptions::with_timeout(61, Duration::from_millis(50)))
        .unwrap();
    let c = get(&port);
    assert_eq!((c.kind, c.token, c.more), (OpKind::RecvPooled, 61, false));
    assert_eq!(
        c.result.as_ref().unwrap_err().kind(),
        std::io::ErrorKind::TimedOut
    );
    assert_none_left(&port);
}

#[test]
fn udp_send_to_recv_from() {
    let port = Port::new(0).unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let ha = port.associate(a, 1).unwrap();
    let hb = port.associate(b, 2).unwrap();
    port.recv_from(&hb, Vec::with_capacity(100), 20).unwrap();
    port.send_to(&ha, b"datagram".to_vec(), ba, 10).unwrap();
    for _ in 0..2 {
        let mut c = get(&port);
        match c.kind {
            OpKind::SendTo => assert_eq!((c.key, c.token, c.bytes()), (1, 10, 8)),
            OpKind::RecvFrom => {
                assert_eq!((c.key, c.token, c.bytes()), (2, 20, 8));
                assert_eq!(c.from_addr(), Some(aa));
                assert_eq!(c.take_buf().unwrap().as_slice(), b"datagram");
            }
            k => panic!("unexpected {k:?}"),
        }
    }
    // A send to a closed port must not break the next receive (ICMP port
    // unreachable is not reported, as on Linux).
    let dead: SocketAddr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    port.send_to(&hb, b"x".to_vec(), dead, 21).unwrap();
    assert!(get(&port).is_ok());
    port.recv_from(&hb, Vec::with_capacity(10), 22).unwrap();
    port.send_to(&ha, b"y".to_vec(), ba, 11).unwrap();
    let mut tokens = vec![get(&port), get(&port)];
    tokens.sort_by_key(|c| c.token);
    assert!(tokens.iter().all(|c| c.is_ok()), "{tokens:?}");
}

#[test]
fn send_ordering_32_queued() {
    let port = Port::new(0).unwrap();
    let (h, mut client) = pair(&port, 3);
    const N: usize = 32;
    const LEN: usize = 64 * 1024;
    for i in 0..N {
        port.send(&h, vec![i as u8; LEN], i as u64).unwrap();
    }
    let reader = std::thread::spawn(move || {
        let mut all = vec![0u8; N * LEN];
        client.read_exact(&mut all).unwrap();
        all
    });
    let mut tokens = Vec::new();
    for _ in 0..N {
        let c = get(&port);
        assert_eq!((c.kind, c.bytes()), (OpKind::Send, LEN));
        tokens.push(c.token);
    }
    assert_eq!(
        tokens,
        (0..N as u64).collect::<Vec<_>>(),
        "one getter sees sends complete in order"
    );
    let all = reader.join().unwrap();
    for (i, chunk) in all.chunks(LEN).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == i as u8),
            "chunk {i} out of order"
        );
    }
}

#[test]
fn get_timeout_consumes_nothing() {
    let port = Port::new(0).unwrap();
    let t0 = Instant::now();
    assert_eq!(
        port.get(Some(Duration::from_millis(50))).unwrap_err(),
        GetError::TimedOut
    );
    assert!(t0.elapsed() >= Duration::from_millis(45));
    assert_eq!(
        port.get(Some(Duration::ZERO)).unwrap_err(),
        GetError::TimedOut
    );
    port.post(1, 0, 9).unwrap();
    assert_eq!(port.get(Some(Duration::ZERO)).unwrap().token, 9);
    assert_eq!(port.stats().queued, 0);
}

#[test]
fn accept_stream_until_cancelled() {
    let port = Port::new(0).unwrap();
    let (lh, addr) = listener(&port, 1);
    let op = port.accept_stream(&lh, 5).unwrap();
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let mut c = get(&port);
        assert_eq!((c.kind, c.token, c.more), (OpKind::Accept, 5, true));
        peers.push(c.take_accepted().unwrap().1.unwrap());
    }
    let mut want: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    want.sort();
    peers.sort();
    assert_eq!(peers, want);
    lh.cancel(op).unwrap();
    let c = get(&port);
    assert_eq!((c.kind, c.more), (OpKind::Accept, false));
    assert!(c.is_aborted(), "{c:?}");
    assert_none_left(&port);
}

#[test]
fn port_close_abandons_waiters_and_drains() {
    // Runs under Wine too: the port posts one sentinel per waiter instead
    // of relying on CloseHandle waking them (which Wine never does).
    let port = Port::new(2).unwrap();
    let (h, mut client) = pair(&port, 1);
    port.recv(&h, Vec::with_capacity(64), 1).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let p = port.clone();
            std::thread::spawn(move || p.get(Some(Duration::from_secs(20))).map(|c| c.token))
        })
        .collect();
    let t0 = Instant::now();
    while port.stats().waiting < 3 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    port.close();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(GetError::Abandoned));
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        port.get(Some(Duration::ZERO)).unwrap_err(),
        GetError::Abandoned
    );
    assert!(port.post(1, 1, 1).is_err());
    assert!(h.is_closed());
    // The in-flight receive was cancelled and drained; the socket is closed.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn multi_worker_echo() {
    // The seed's server: N workers in get, any worker takes any completion;
    // per connection one receive, then its echo send, then the next receive.
    const CONNS: usize = 16;
    const BYTES: usize = 256 * 1024;
    const STOP: u64 = u64::MAX;
    let port = Port::new(0).unwrap();
    let (lh, addr) = listener(&port, 0);
    let accept_op = port.accept_stream(&lh, 0).unwrap();
    let conns: Arc<Mutex<std::collections::HashMap<u64, completion_port::Handle>>> = Arc::default();
    let next_key = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let accept_final = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (port, conns, next_key) = (port.clone(), conns.clone(), next_key.clone());
            let accept_final = accept_final.clone();
            std::thread::spawn(move || loop {
                let mut c = port.get(Some(Duration::from_secs(30))).expect("worker get");
                match c.kind {
                    OpKind::Post if c.token == STOP => return,
                    OpKind::Accept if c.more => {
                        let (s, _) = c.take_accepted().unwrap();
                        let key = next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let h = port.associate(s, key).unwrap();
                        // Registered before the receive starts: another
                        // worker may take its completion at once.
                        conns.lock().unwrap().insert(key, h.clone());
                        port.recv(&h, Vec::with_capacity(4096), 0).unwrap();
                    }
                    OpKind::Accept => {
                        assert!(c.is_aborted(), "{c:?}");
                        accept_final.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    OpKind::Recv => {
                        let h = conns.lock().unwrap().get(&c.key).cloned().unwrap();
                        match c.result {
                            Ok(0) => {
                                conns.lock().unwrap().remove(&c.key);
                                h.close();
                            }
                            Ok(_) => {
                                port.send(&h, c.take_buf().unwrap(), 0).unwrap();
                            }
                            Err(e) => panic!("recv: {e}"),
                        }
                    }
                    OpKind::Send => {
                        c.result.as_ref().expect("send");
                        let h = conns.lock().unwrap().get(&c.key).cloned();
                        if let Some(h) = h {
                            let mut b = c.take_buf().unwrap().into_vec();
                            b.clear();
                            port.recv(&h, b, 0).unwrap();
                        }
                    }
                    k => panic!("unexpected {k:?}"),
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..CONNS)
        .map(|n| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data: Vec<u8> = (0..BYTES).map(|i| (i * 31 + n * 7) as u8).collect();
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = vec![0u8; BYTES];
                    r.read_exact(&mut got).unwrap();
                    got
                });
                for chunk in data.chunks(1000 + n * 37) {
                    s.write_all(chunk).unwrap();
                }
                let got = reader.join().unwrap();
                assert!(got == data, "connection {n}: echo differs");
                s.shutdown(std::net::Shutdown::Write).unwrap();
                assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0, "server closes after FIN");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    lh.cancel(accept_op).unwrap();
    for _ in 0..4 {
        port.post(0, 0, STOP).unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    assert!(conns.lock().unwrap().is_empty());
    if accept_final.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        // The cancel's completion came after the stop packets.
        let c = get(&port);
        assert!(
            c.kind == OpKind::Accept && !c.more && c.is_aborted(),
            "{c:?}"
        );
    }
    assert_none_left(&port);
}

// ---- the six Wine divergences ---------------------------------------------

/// Waits until `n` threads are inside GQCS (and gives them a moment to
/// actually block in the kernel).
fn wait_waiting(port: &Port, n: usize) {
    let t0 = Instant::now();
    while port.stats().waiting < n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "waiters did not arrive"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn divergence_lifo_wake_order() {
    let port = Port::new(4).unwrap();
    let winner = Arc::new(Mutex::new(Vec::new()));
    let mut ts = Vec::new();
    for i in 0..3usize {
        let (p, w) = (port.clone(), winner.clone());
        ts.push(std::thread::spawn(move || {
            if let Ok(c) = p.get(Some(Duration::from_secs(10))) {
                w.lock().unwrap().push((i, c.token));
            }
        }));
        wait_waiting(&port, i + 1);
    }
    port.post(0, 0, 1).unwrap();
    let t0 = Instant::now();
    while winner.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let first = winner.lock().unwrap()[0];
    port.post(0, 0, 2).unwrap();
    port.post(0, 0, 3).unwrap();
    for t in ts {
        t.join().unwrap();
    }
    if skip_under_wine("waiters are woken FIFO (oldest first), Windows wakes LIFO") {
        println!("(under Wine waiter {} got the first packet)", first.0);
        return;
    }
    assert_eq!(first, (2, 1), "the most recent waiter gets the packet");
}

#[test]
fn divergence_concurrency_limit() {
    let port = Port::new(1).unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let mut ts = Vec::new();
    for _ in 0..2 {
        let (p, t) = (port.clone(), times.clone());
        ts.push(std::thread::spawn(move || {
            if p.get(Some(Duration::from_secs(10))).is_ok() {
                let got = Instant::now();
                t.lock().unwrap().push(got);
                // Run (spin, never wait in the kernel) for 300 ms, then exit,
                // which releases the slot.
                while got.elapsed() < Duration::from_millis(300) {
                    std::hint::spin_loop();
                }
            }
        }));
    }
    wait_waiting(&port, 2);
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let running_now = times.lock().unwrap().len();
    let queued_now = port.stats().queued;
    for t in ts {
        t.join().unwrap();
    }
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    if skip_under_wine("NumberOfConcurrentThreads is ignored (both waiters ran at once)") {
        return;
    }
    assert_eq!(
        (running_now, queued_now),
        (1, 1),
        "limit 1: the second packet waits"
    );
    let gap = if times[1] > times[0] {
        times[1] - times[0]
    } else {
        times[0] - times[1]
    };
    assert!(
        gap >= Duration::from_millis(250),
        "second thread released only after the first stopped: {gap:?}"
    );
}

mod raw {
    //! Raw Win32 for the divergences the library hides (it never relies on
    //! them), checked so the documentation stays true.
    pub use windows_sys::Win32::Foundation::*;
    pub use windows_sys::Win32::Networking::WinSock::*;
    pub use windows_sys::Win32::System::IO::*;
}

#[test]
fn divergence_closehandle_wakes_waiters() {
    if skip_under_wine("CloseHandle(port) never wakes a thread waiting in GQCS (it would hang)") {
        return;
    }
    struct P(raw::HANDLE);
    // SAFETY: a port handle may be used from any thread.
    unsafe impl Send for P {}
    // SAFETY: creates a port; no pointers.
    let port = P(unsafe {
        raw::CreateIoCompletionPort(raw::INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 0)
    });
    assert!(!port.0.is_null());
    let h = port.0 as usize;
    let waiter = std::thread::spawn(move || {
        let (mut b, mut k, mut ov) = (0u32, 0usize, std::ptr::null_mut());
        // SAFETY: live out-parameters; the handle is valid until closed.
        let ok = unsafe {
            raw::GetQueuedCompletionStatus(h as raw::HANDLE, &mut b, &mut k, &mut ov, 10_000)
        };
        // SAFETY: no preconditions.
        (ok, ov.is_null(), unsafe { raw::GetLastError() })
    });
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: our handle, closed once.
    unsafe { raw::CloseHandle(port.0) };
    let (ok, null, err) = waiter.join().unwrap();
    assert_eq!((ok, null, err), (0, true, 735), "ERROR_ABANDONED_WAIT_0");
}

#[test]
fn divergence_cancelioex_nothing_pending() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let raw_s = std::os::windows::io::AsRawSocket::as_raw_socket(&s) as usize;
    // SAFETY: an open socket handle; NULL cancels all (there is nothing).
    let ok = unsafe { raw::CancelIoEx(raw_s as raw::HANDLE, std::ptr::null()) };
    // SAFETY: no preconditions.
    let err = unsafe { raw::GetLastError() };
    if skip_under_wine(
        "CancelIoEx with nothing pending returns TRUE (Windows: FALSE, ERROR_NOT_FOUND)",
    ) {
        return;
    }
    assert_eq!((ok, err), (0, 1168));
}

/// Raw: a port, a connected pair with the server side associated, for the
/// closesocket and AcceptEx divergences.
fn raw_port() -> raw::HANDLE {
    // SAFETY: creates a port; no pointers.
    let p = unsafe {
        raw::CreateIoCompletionPort(raw::INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 0)
    };
    assert!(!p.is_null());
    p
}

#[test]
fn divergence_closesocket_pending_recv_status() {
    use std::os::windows::io::IntoRawSocket;
    let port = raw_port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let s = l.accept().unwrap().0.into_raw_socket() as usize;
    // SAFETY: associates our socket with our port.
    assert!(!unsafe { raw::CreateIoCompletionPort(s as raw::HANDLE, port, 1, 0) }.is_null());
    let mut ov: Box<raw::OVERLAPPED> = Box::default();
    let mut buf = vec![0u8; 16];
    let wsabuf = raw::WSABUF {
        len: 16,
        buf: buf.as_mut_ptr(),
    };
    let mut flags = 0u32;
    // SAFETY: `ov` and `buf` outlive the operation (we wait for its packet).
    let r = unsafe {
        raw::WSARecv(
            s,
            &wsabuf,
            1,
            std::ptr::null_mut(),
            &mut flags,
            &mut *ov,
            None,
        )
    };
    // SAFETY: no preconditions.
    assert!(r == 0 || unsafe { raw::WSAGetLastError() } == raw::WSA_IO_PENDING);
    // SAFETY: closes our socket with the receive pending (the point).
    unsafe { raw::closesocket(s) };
    let (mut b, mut k, mut got) = (0u32, 0usize, std::ptr::null_mut());
    // SAFETY: live out-parameters; our port.
    let ok = unsafe { raw::GetQueuedCompletionStatus(port, &mut b, &mut k, &mut got, 5000) };
    // SAFETY: no preconditions.
    let err = unsafe { raw::GetLastError() };
    assert_eq!(
        (ok, got, k),
        (0, &mut *ov as *mut raw::OVERLAPPED, 1),
        "the receive's packet"
    );
    // SAFETY: our port.
    unsafe { raw::CloseHandle(port) };
    assert!(
        completion_port::is_aborted(&std::io::Error::from_raw_os_error(err as i32)),
        "{err}"
    );
    if skip_under_wine("closesocket with a WSARecv pending completes it with 676 ERROR_HANDLES_CLOSED (Windows: 995)") {
        return;
    }
    assert_eq!(err, 995);
}

#[test]
fn divergence_getpeername_before_update_accept_context() {
    use std::os::windows::io::AsRawSocket;
    let port = raw_port();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ls = l.as_raw_socket() as usize;
    // SAFETY: associates our listener with our port.
    assert!(!unsafe { raw::CreateIoCompletionPort(ls as raw::HANDLE, port, 1, 0) }.is_null());
    let acc = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let mut accept_ex: raw::LPFN_ACCEPTEX = None;
    let mut n = 0u32;
    // SAFETY: standard extension-function lookup into a live pointer slot.
    let r = unsafe {
        raw::WSAIoctl(
            ls,
            raw::SIO_GET_EXTENSION_FUNCTION_POINTER,
            &raw::WSAID_ACCEPTEX as *const _ as *const _,
            std::mem::size_of::<windows_sys::core::GUID>() as u32,
            &mut accept_ex as *mut _ as *mut _,
            std::mem::size_of::<usize>() as u32,
            &mut n,
            std::ptr::null_mut(),
            None,
        )
    };
    assert_eq!(r, 0);
    let accept_ex = accept_ex.expect("AcceptEx");
    let mut ov: Box<raw::OVERLAPPED> = Box::default();
    let mut out = vec![0u8; 2 * 144];
    let mut bytes = 0u32;
    // SAFETY: `ov` and `out` outlive the operation (we wait for its packet).
    let ok = unsafe {
        accept_ex(
            ls,
            acc.as_raw_socket() as usize,
            out.as_mut_ptr() as *mut _,
            0,
            144,
            144,
            &mut bytes,
            &mut *ov,
        )
    };
    // SAFETY: no preconditions.
    assert!(ok != 0 || unsafe { raw::WSAGetLastError() } == raw::WSA_IO_PENDING);
    let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, mut k, mut got) = (0u32, 0usize, std::ptr::null_mut());
    // SAFETY: live out-parameters; our port.
    let ok = unsafe { raw::GetQueuedCompletionStatus(port, &mut b, &mut k, &mut got, 5000) };
    assert_eq!(ok, 1, "AcceptEx completed");
    // SAFETY: our port.
    unsafe { raw::CloseHandle(port) };
    let before = acc.peer_addr();
    if skip_under_wine("getpeername on an AcceptEx socket succeeds before SO_UPDATE_ACCEPT_CONTEXT (Windows: WSAENOTCONN)") {
        return;
    }
    assert_eq!(before.unwrap_err().raw_os_error(), Some(10057));
}

#[test]
fn wine_detection() {
    match wine() {
        Some(v) => {
            assert!(!v.is_empty());
            println!("running under Wine {v}: the six divergence assertions are skipped");
        }
        None => println!("real Windows: every assertion runs"),
    }
}

#[test]
fn aborted_error_shape() {
    // std maps raw 995 to ErrorKind::TimedOut (documented in WINDOWS.md):
    // test cancels with is_aborted(), deadlines with kind() == TimedOut.
    let e = completion_port::aborted();
    assert_eq!(e.raw_os_error(), Some(995));
    assert!(completion_port::is_aborted(&e));
    println!("aborted().kind() = {:?}", e.kind());
}

/// A named pipe: `create_named_pipe`, `connect_named_pipe` waiting for a
/// client (its completion comes when the client opens the pipe, with 0
/// bytes), bytes both ways, the client's close giving the server EOF; and
/// a client that connected before `connect_named_pipe` completes it at
/// once (`ERROR_PIPE_CONNECTED`).
#[test]
fn named_pipe_connect_read_write() {
    let port = Port::new(0).unwrap();
    let name = format!(r"\\.\pipe\completion-port-test-{}", std::process::id());
    let server = completion_port::fs::create_named_pipe(&name).unwrap();
    let sh = port.associate_pipe(server, 1).unwrap();
    port.connect_named_pipe(&sh, 10).unwrap();
    // A read behind the connect waits for it (same lane).
    port.read(&sh, Vec::with_capacity(64), 11).unwrap();
    assert!(
        port.get(Some(Duration::from_millis(50))).is_err(),
        "connect completed with no client"
    );
    let client = completion_port::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .unwrap();
    let ch = port.associate_pipe(client, 2).unwrap();
    let c = get(&port);
    assert_eq!(
        (c.kind, c.token, c.result.as_ref().ok()),
        (OpKind::ConnectNamedPipe, 10, Some(&0)),
        "{c:?}"
    );
    port.write(&ch, b"hello".to_vec(), 20).unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let mut c = get(&port);
        got.insert(c.token, (c.result.as_ref().ok().copied(), c.take_buf()));
    }
    assert_eq!(got[&20].0, Some(5));
    assert_eq!(got[&11].1.as_ref().unwrap().as_slice(), b"hello");
    port.write(&sh, b"back".to_vec(), 12).unwrap();
    port.read(&ch, Vec::with_capacity(64), 21).unwrap();
    for _ in 0..2 {
        let mut c = get(&port);
        if c.token == 21 {
            assert_eq!(c.take_buf().unwrap().as_slice(), b"back");
        } else {
            assert_eq!((c.token, c.result.as_ref().ok()), (12, Some(&4)));
        }
    }
    // The client goes: the server's read gets EOF (0 bytes).
    ch.close();
    port.read(&sh, Vec::with_capacity(64), 13).unwrap();
    let c = get(&port);
    assert_eq!((c.token, c.result.as_ref().ok()), (13, Some(&0)), "{c:?}");
    sh.close();

    // A client first, then connect_named_pipe: it completes at once.
    let server = completion_port::fs::create_named_pipe(&name).unwrap();
    let client = completion_port::fs::OpenOptions::new()
        .write(true)
        .open(&name)
        .unwrap();
    let sh = port.associate_pipe(server, 3).unwrap();
    port.connect_named_pipe(&sh, 30).unwrap();
    let c = get(&port);
    assert_eq!(
        (c.kind, c.token, c.result.as_ref().ok()),
        (OpKind::ConnectNamedPipe, 30, Some(&0)),
        "{c:?}"
    );
    drop(client);
    port.close();
}
