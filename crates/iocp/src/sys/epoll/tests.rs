//! The epoll engine against the io_uring engine: the same scenarios, run on
//! every backend this build has, must give the same packets.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::{Backend, Buf, Completion, GetError, OpKind, OpOptions, Port, PortBuilder};

const T: Option<Duration> = Some(Duration::from_secs(10));

/// One port per available backend (io_uring skipped where it is blocked).
fn ports(cfg: impl Fn(PortBuilder) -> PortBuilder) -> Vec<Port> {
    let mut v = Vec::new();
    for &b in Backend::available() {
        match cfg(Port::builder().backend(b)).build() {
            Ok(p) => v.push(p),
            Err(e) if b == Backend::Uring => eprintln!("skipping {b}: {e}"),
            Err(e) => panic!("backend {b}: {e}"),
        }
    }
    v
}

/// A server-side handle associated with `port` and the std client end.
fn pair(port: &Port, key: u64) -> (crate::Handle, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (port.associate(s, key).unwrap(), c)
}

fn get(port: &Port) -> Completion {
    port.get(T)
        .unwrap_or_else(|e| panic!("{}: no packet: {e}", port.backend()))
}

fn nothing_more(port: &Port) {
    match port.get(Some(Duration::from_millis(100))) {
        Err(GetError::TimedOut) => {}
        other => panic!("{}: unexpected {other:?}", port.backend()),
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn short_writes_finish_in_order() {
    for port in ports(|b| b) {
        let (h, mut c) = pair(&port, 1);
        h.with_socket(|s| s.set_send_buffer_size(8192)).unwrap();
        let data = pattern(3 << 20);
        let (a, rest) = data.split_at(1 << 20);
        let (b1, b2) = rest.split_at(700_001);
        port.send(&h, a.to_vec(), 1).unwrap();
        port.send_vectored(&h, vec![Buf::from(b1.to_vec()), Buf::from(b2.to_vec())], 2)
            .unwrap();
        port.send(&h, Vec::new(), 3).unwrap();
        let len = data.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            c.read_exact(&mut got).unwrap();
            got
        });
        let c1 = get(&port);
        assert_eq!((c1.kind, c1.token, c1.bytes()), (OpKind::Send, 1, a.len()));
        let mut c2 = get(&port);
        assert_eq!(
            (c2.kind, c2.token, c2.bytes()),
            (OpKind::Send, 2, b1.len() + b2.len())
        );
        let bufs = c2.take_bufs();
        assert_eq!(bufs.len(), 2);
        assert_eq!(bufs[1].as_slice(), b2);
        let c3 = get(&port);
        assert_eq!((c3.token, c3.bytes()), (3, 0));
        assert!(
            reader.join().unwrap() == data,
            "{}: stream corrupted",
            port.backend()
        );
        nothing_more(&port);
        port.close();
    }
}

#[test]
fn connect_and_refused() {
    for port in ports(|b| b) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let h = port.associate(s, 3).unwrap();
        // A send queued behind the connect goes out once it is connected.
        port.connect(&h, addr, 1).unwrap();
        port.send(&h, b"hi".to_vec(), 2).unwrap();
        // (io_uring may complete the send first.)
        let mut done: Vec<(OpKind, u64, usize)> = (0..2)
            .map(|_| {
                let c = get(&port);
                (c.kind, c.token, c.result.unwrap())
            })
            .collect();
        done.sort_by_key(|d| d.1);
        assert_eq!(done, [(OpKind::Connect, 1, 0), (OpKind::Send, 2, 2)]);
        let (mut peer, _) = l.accept().unwrap();
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");

        drop(l);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let h2 = port.associate(s, 4).unwrap();
        port.connect(&h2, addr, 5).unwrap();
        let c = get(&port);
        assert_eq!((c.kind, c.token), (OpKind::Connect, 5));
        let e = c.result.unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED),
            "{}: {e}",
            port.backend()
        );
        port.close();
    }
}

#[test]
fn accept_stream_then_cancel() {
    for port in ports(|b| b) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let lh = port.associate(l, 9).unwrap();
        let op = port.accept_stream(&lh, 4).unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let mut c = get(&port);
            assert_eq!(
                (c.kind, c.key, c.token, c.more),
                (OpKind::Accept, 9, 4, true)
            );
            let (s, peer) = c.take_accepted().unwrap();
            assert_eq!(s.peer_addr().unwrap().as_socket(), peer);
            peers.push(peer.unwrap());
        }
        for c in &clients {
            assert!(peers.contains(&c.local_addr().unwrap()));
        }
        // A single accept queued next to the stream gets a connection too.
        port.accept(&lh, 5).unwrap();
        let _more: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut tokens = vec![get(&port).token, get(&port).token];
        tokens.sort();
        assert!(tokens == [4, 5] || tokens == [4, 4], "{tokens:?}");
        lh.cancel(op).unwrap();
        let mut last = None;
        while let Ok(c) = port.get(Some(Duration::from_millis(300))) {
            if c.token == 4 && !c.more {
                assert!(c.is_aborted(), "{c:?}");
                assert!(last.replace(c).is_none(), "two final completions");
            }
        }
        assert!(last.is_some(), "{}: no final completion", port.backend());
        port.close();
    }
}

#[test]
fn pooled_receive_starves_and_resumes() {
    for port in ports(|b| b.pool_buffers(2).pool_buffer_size(64)) {
        let (h, mut c) = pair(&port, 2);
        // Idle: no buffer held.
        port.recv_pooled(&h, 7).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(port.pool_stats().in_use, 0);
        let data = pattern(1000);
        c.write_all(&data).unwrap();
        let mut got = Vec::new();
        let mut held = Vec::new();
        while held.len() < 2 {
            let mut p = get(&port);
            assert_eq!((p.kind, p.token, p.more), (OpKind::RecvPooled, 7, true));
            let b = p.take_buf().unwrap();
            got.extend_from_slice(b.as_slice());
            held.push(b);
        }
        // Both buffers are out: the receive is starved, not failed.
        nothing_more(&port);
        assert_eq!(port.pool_stats().in_use, 2);
        drop(held);
        while got.len() < data.len() {
            let mut p = get(&port);
            assert!(p.more, "{p:?}");
            got.extend_from_slice(p.take_buf().unwrap().as_slice());
        }
        assert!(got == data);
        c.shutdown(Shutdown::Write).unwrap();
        let p = get(&port);
        assert_eq!((p.kind, p.bytes(), p.more), (OpKind::RecvPooled, 0, false));
        assert!(p.result.is_ok());
        nothing_more(&port);
        let st = port.pool_stats();
        assert_eq!(st.in_use, 0);
        if port.backend().backend == Backend::Epoll {
            assert_eq!(st.in_kernel, 0);
        }
        port.close();
    }
}

#[test]
fn cancel_close_and_deadline() {
    for port in ports(|b| b) {
        let (h, _c) = pair(&port, 5);
        let op1 = port.recv(&h, Vec::with_capacity(10), 1).unwrap();
        port.recv(&h, Vec::with_capacity(20), 2).unwrap();
        port.recv_pooled(&h, 3).unwrap();
        h.cancel(op1).unwrap();
        let mut c = get(&port);
        assert_eq!((c.token, c.is_aborted()), (1, true), "{c:?}");
        assert_eq!(c.take_buf().unwrap().into_vec().capacity(), 10);
        h.close();
        let mut rest: Vec<(u64, bool, bool)> = (0..2)
            .map(|_| {
                let c = get(&port);
                (c.token, c.is_aborted(), c.more)
            })
            .collect();
        rest.sort();
        assert_eq!(rest, [(2, true, false), (3, true, false)]);
        nothing_more(&port);

        let (h, _c) = pair(&port, 6);
        let t0 = Instant::now();
        port.recv(
            &h,
            vec![0u8; 0],
            OpOptions::with_timeout(8, Duration::from_millis(50)),
        )
        .unwrap();
        port.post_after(Duration::from_millis(20), 11, 12).unwrap();
        let c = get(&port);
        assert_eq!((c.kind, c.key, c.token), (OpKind::Timer, 11, 12));
        let c = get(&port);
        assert_eq!(c.token, 8);
        let e = c.result.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{}", port.backend());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        port.close();
    }
}

#[test]
fn udp_send_to_recv_from() {
    for port in ports(|b| b) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (aa, ba): (SocketAddr, SocketAddr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let ha = port.associate(a, 1).unwrap();
        let hb = port.associate(b, 2).unwrap();
        port.recv_from(&ha, Vec::with_capacity(64), 10).unwrap();
        port.send_to(&hb, b"ping".to_vec(), aa, 20).unwrap();
        let mut seen = 0;
        for _ in 0..2 {
            let mut c = get(&port);
            match c.kind {
                OpKind::SendTo => assert_eq!((c.token, c.bytes()), (20, 4)),
                OpKind::RecvFrom => {
                    assert_eq!((c.token, c.bytes(), c.from_addr()), (10, 4, Some(ba)));
                    assert_eq!(c.take_buf().unwrap().as_slice(), b"ping");
                }
                k => panic!("{k:?}"),
            }
            seen += 1;
        }
        assert_eq!(seen, 2);
        port.close();
    }
}

#[test]
fn inline_echo() {
    for port in ports(|b| b.inline(true)) {
        let (h, mut c) = pair(&port, 1);
        port.recv(&h, Vec::with_capacity(16), 1).unwrap();
        c.write_all(b"abc").unwrap();
        let mut r = get(&port);
        assert_eq!(r.bytes(), 3);
        port.send(&h, r.take_buf().unwrap(), 2).unwrap();
        assert_eq!(get(&port).bytes(), 3);
        let mut got = [0u8; 3];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        assert_eq!(port.stats().handoffs, 0);
        port.close();
    }
}

const EMFILE_CHILD: &str = "IOCP_EPOLL_EMFILE_CHILD";

/// The standing accept under `EMFILE`: error completions with `more`, at a
/// bounded rate (no spin), then connections again once descriptors free up.
/// Runs in a child process: it lowers `RLIMIT_NOFILE`.
#[test]
fn accept_stream_backs_off_on_emfile() {
    const NAME: &str = "sys::epoll::tests::accept_stream_backs_off_on_emfile";
    if std::env::var_os(EMFILE_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("EMFILE-CHILD-OK"),
            "child failed:\n{text}"
        );
        return;
    }
    let port = Port::builder().backend(Backend::Epoll).build().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, 1).unwrap();
    let clients: Vec<socket2::Socket> = (0..3)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    // The lowest free descriptor: every one below it is in use, so with the
    // soft limit there no new descriptor can be made.
    let probe = std::fs::File::open("/dev/null").unwrap();
    let lowest = std::os::fd::AsRawFd::as_raw_fd(&probe) as libc::rlim_t;
    drop(probe);
    let low = libc::rlimit {
        rlim_cur: lowest,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads a live local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    port.accept_stream(&lh, 2).unwrap();
    for c in &clients {
        c.connect(&addr.into()).unwrap();
    }
    let t0 = Instant::now();
    let mut errors = 0;
    while t0.elapsed() < Duration::from_millis(300) {
        if let Ok(c) = port.get(Some(Duration::from_millis(50))) {
            assert!(c.more, "{c:?}");
            assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EMFILE));
            errors += 1;
        }
    }
    // SAFETY: setrlimit reads a live local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    println!("EMFILE completions in 300 ms: {errors}");
    assert!(
        (1..=30).contains(&errors),
        "{errors} EMFILE completions in 300 ms"
    );
    let mut accepted = 0;
    while accepted < 3 {
        let mut c = get(&port);
        if c.result.is_ok() {
            assert!(c.more && c.take_accepted().is_some());
            accepted += 1;
        }
    }
    lh.close();
    let c = get(&port);
    assert!(!c.more && c.is_aborted(), "{c:?}");
    println!("EMFILE-CHILD-OK");
}

/// A pool buffer dropped just before the engine goes to sleep must still
/// wake it (a lost wake-up here hung the pooled receive with the data
/// waiting). Many starvations per run make the race likely.
#[test]
fn returned_buffers_always_wake_a_starved_receive() {
    for _ in 0..16 {
        let port = Port::builder()
            .backend(Backend::Epoll)
            .pool_buffers(2)
            .pool_buffer_size(64)
            .build()
            .unwrap();
        let (h, mut c) = pair(&port, 1);
        let data = pattern(256 << 10);
        let d2 = data.clone();
        let w = std::thread::spawn(move || {
            c.write_all(&d2).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        });
        port.recv_pooled(&h, 1).unwrap();
        let mut got = Vec::new();
        loop {
            let mut p = get(&port);
            if !p.more {
                assert_eq!(p.bytes(), 0, "{p:?}");
                break;
            }
            got.extend_from_slice(p.take_buf().unwrap().as_slice());
        }
        w.join().unwrap();
        assert!(got == data);
        assert!(port.engine_stats().starved > 0);
        port.close();
    }
}
