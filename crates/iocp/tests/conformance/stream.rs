//! TCP sends: order, large and vectored sends, sends refused or cut
//! part-way.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use completion_port::{is_aborted, Buf, Completion, OpKind, OpOptions, Port};
use socket2::SockRef;

use crate::util::*;

/// 64 sends (some vectored) queued back-to-back on one handle arrive in
/// order; each completes once with all its bytes and hands its buffers back.
pub fn send_ordering(t: &Target) {
    const N: usize = 64;
    const LEN: usize = 1000;
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 70);
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; N * LEN];
        c.read_exact(&mut got).map(|_| got)
    });
    for i in 0..N {
        let chunk = pattern(i * LEN, LEN);
        if i % 8 == 7 {
            let (a, b) = chunk.split_at(300);
            port.send_vectored(
                &h,
                vec![
                    Buf::from(a.to_vec()),
                    Buf::from(b.to_vec().into_boxed_slice()),
                ],
                i as u64,
            )
            .unwrap();
        } else {
            port.send(&h, chunk, i as u64).unwrap();
        }
    }
    let mut seen = HashSet::new();
    for _ in 0..N {
        let mut comp = get(&port);
        assert_eq!((comp.kind, comp.key), (OpKind::Send, 70));
        assert_eq!(comp.bytes(), LEN, "{}", brief(&comp));
        assert!(seen.insert(comp.token), "token {} twice", comp.token);
        if comp.token % 8 == 7 {
            let bufs = comp.take_bufs();
            assert_eq!(bufs.iter().map(|b| b.len()).collect::<Vec<_>>(), [300, 700]);
        } else {
            assert_eq!(
                comp.take_buf().unwrap().as_slice(),
                &pattern(comp.token as usize * LEN, LEN)[..]
            );
        }
    }
    let got = reader.join().unwrap().expect("the peer reads every byte");
    assert!(got == pattern(0, N * LEN), "bytes out of order at the peer");
    no_packet(&port, Duration::from_millis(20));
}

/// An 8 MiB send to a slow-reading peer (small socket buffers, so the kernel
/// takes it in many short sends) completes with every byte, and a send queued
/// behind it follows it on the wire.
pub fn large_send_slow_peer(t: &Target) {
    const BIG: usize = 8 << 20;
    let port = t.port();
    let (h, mut c) = tight_pair(&port, 71);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(BIG + 1000);
        let mut buf = vec![0u8; 16 * 1024];
        let mut reads = 0u32;
        while got.len() < BIG + 1000 {
            let n = c.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            reads += 1;
            if reads.is_multiple_of(64) {
                // A slow reader: pacing only, nothing waits on this.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok::<_, std::io::Error>(got)
    });
    port.send(&h, pattern(0, BIG), 1).unwrap();
    port.send(&h, vec![0xAB; 1000], 2).unwrap();
    let mut done = HashMap::new();
    for _ in 0..2 {
        let mut comp = get(&port);
        let len = comp.take_buf().map(|b| b.len());
        done.insert(comp.token, (comp.result.as_ref().ok().copied(), len));
    }
    assert_eq!(
        done[&1],
        (Some(BIG), Some(BIG)),
        "the large send completes whole"
    );
    assert_eq!(done[&2], (Some(1000), Some(1000)));
    let got = reader.join().unwrap().expect("peer read");
    assert_eq!(got.len(), BIG + 1000);
    assert!(
        got[..BIG] == pattern(0, BIG)[..],
        "large send corrupted or reordered"
    );
    assert!(
        got[BIG..].iter().all(|&b| b == 0xAB),
        "the second send overtook the first"
    );
}

/// Every buffer a refused operation hands back, in order.
fn refused_bufs(mut e: completion_port::SubmitError) -> Vec<Buf> {
    let mut v: Vec<Buf> = e.take_buf().into_iter().collect();
    v.extend(e.take_bufs());
    v
}

/// The bytes an operation moved, whatever its result; `None` if the
/// completion does not say.
fn transferred(c: &Completion) -> Option<usize> {
    Some(c.transferred())
}

/// Four buffers of three kinds, one of them empty, for a vectored send.
fn four_bufs() -> Vec<Buf> {
    vec![
        Buf::from(b"one".to_vec()),
        Buf::from(b"two".to_vec().into_boxed_slice()),
        Buf::from(Vec::new()),
        Buf::from(b"four".to_vec()),
    ]
}

/// A vectored send that cannot start (a handle of another port, a closed
/// handle, a closed port) hands every one of its buffers back, in order,
/// contents intact, in its `SubmitError`.
pub fn send_vectored_refused(t: &Target) {
    let want: Vec<Vec<u8>> = vec![b"one".to_vec(), b"two".to_vec(), vec![], b"four".to_vec()];
    let mut problems = Vec::new();
    let mut check = |what: &str, r: Result<completion_port::OpId, completion_port::SubmitError>| {
        let e = r.expect_err(what);
        let got: Vec<Vec<u8>> = refused_bufs(e).into_iter().map(Buf::into_vec).collect();
        if got != want {
            problems.push(format!("{what}: got back {got:?}"));
        }
    };
    let port = t.port();
    let other = t.port();
    let (ho, _co) = tcp_pair(&other, 1);
    check(
        "a handle of another port",
        port.send_vectored(&ho, four_bufs(), 1),
    );
    let (h, _c) = tcp_pair(&port, 2);
    h.close();
    check("a closed handle", port.send_vectored(&h, four_bufs(), 2));
    let (h2, _c2) = tcp_pair(&port, 3);
    port.close();
    check("a closed port", port.send_vectored(&h2, four_bufs(), 3));
    assert!(
        problems.is_empty(),
        "every buffer of a refused vectored send comes back, in order, intact \
         ({want:?}): {}",
        problems.join("; ")
    );
}

/// Vectored sends of more buffers than `IOV_MAX` (1024 on Linux): 2000
/// one-byte buffers, then 3000 buffers of mixed sizes and kinds (some
/// empty, some large). Each completes as one operation with its total byte
/// count and every buffer back in order; the peer reads every byte, in
/// order, the two sends one after the other.
pub fn send_vectored_many_buffers(t: &Target) {
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 94);
    let ones: Vec<Buf> = pattern(0, 2000)
        .into_iter()
        .map(|b| Buf::from(vec![b]))
        .collect();
    let sizes: Vec<usize> = (0..3000usize)
        .map(|i| match i % 10 {
            0 => 0,
            1 => 1,
            5 => 4096 + i,
            9 if i % 500 == 9 => 200_000,
            _ => (i * 37) % 1500,
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let mut mixed = Vec::with_capacity(sizes.len());
    let mut at = 2000;
    for (i, &n) in sizes.iter().enumerate() {
        let bytes = pattern(at, n);
        at += n;
        mixed.push(if i % 2 == 0 {
            Buf::from(bytes)
        } else {
            Buf::from(bytes.into_boxed_slice())
        });
    }
    let want = pattern(0, 2000 + total);
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 2000 + total];
        c.read_exact(&mut got).map(|_| got)
    });
    let op1 = port.send_vectored(&h, ones, 1).unwrap();
    let op2 = port.send_vectored(&h, mixed, 2).unwrap();
    for (op, tok, n, lens) in [
        (op1, 1, 2000, vec![1; 2000]),
        (op2, 2, total, sizes.clone()),
    ] {
        let mut comp = get_of(&port, OpKind::Send, 94, tok, op);
        assert_eq!(
            comp.result.as_ref().ok(),
            Some(&n),
            "a vectored send of {} buffers completes whole, as one operation: {}",
            lens.len(),
            brief(&comp)
        );
        let back: Vec<usize> = comp.take_bufs().iter().map(Buf::len).collect();
        assert!(back == lens, "every buffer comes back, in order");
    }
    let got = reader.join().unwrap().expect("the peer reads every byte");
    assert!(got == want, "bytes differ or out of order at the peer");
    no_packet(&port, Duration::from_millis(20));
}

/// Turns the port until `cond` holds (an inline port's engine runs only
/// inside `get`), failing after [`T`] or on a packet.
#[track_caller]
fn drive_until(port: &Port, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {T:?} waiting until {what}"
        );
        no_packet(port, Duration::from_millis(1));
    }
}

/// A TCP pair (as [`tcp_pair`]) with 16 KiB socket buffers on both sides,
/// so a large send goes out in many short writes, or stalls.
fn tight_pair(port: &Port, key: u64) -> (completion_port::Handle, TcpStream) {
    let (h, c) = tcp_pair(port, key);
    h.with_socket(|s| s.set_send_buffer_size(16 * 1024))
        .unwrap();
    SockRef::from(&c).set_recv_buffer_size(16 * 1024).unwrap();
    (h, c)
}

/// Cancels the large send `op` once part of it is out: once the peer `c`
/// could read a byte (the rest cannot fit in the socket buffers).
fn cancel_once_out(
    port: &Port,
    h: &completion_port::Handle,
    c: &TcpStream,
    op: completion_port::OpId,
) {
    c.set_nonblocking(true).unwrap();
    drive_until(port, "the first bytes arrive", || {
        c.peek(&mut [0u8; 1]).is_ok_and(|n| n == 1)
    });
    c.set_nonblocking(false).unwrap();
    h.cancel(op).unwrap();
}

pub fn send_cancel_part_way(t: &Target) {
    send_cut_part_way(t, false);
}

pub fn send_deadline_part_way(t: &Target) {
    send_cut_part_way(t, true);
}

/// A large send to a peer that does not read, cut part-way by a cancel (or
/// by its deadline, then vectored): it completes aborted (`TimedOut`) and
/// reports the bytes that went out; the send queued behind it and every
/// later send on the handle complete aborted, write nothing, and hand their
/// buffers back; after the close the peer has read exactly the reported
/// bytes of the first send and nothing else.
fn send_cut_part_way(t: &Target, deadline: bool) {
    const BIG: usize = 8 << 20;
    let port = t.port();
    let (h, c) = tight_pair(&port, 95);
    let first = if deadline {
        let chunks = pattern(0, BIG)
            .chunks(64 * 1024)
            .map(|b| Buf::from(b.to_vec()))
            .collect();
        let opts = OpOptions::with_timeout(1, Duration::from_millis(200));
        port.send_vectored(&h, chunks, opts).unwrap()
    } else {
        port.send(&h, pattern(0, BIG), 1).unwrap()
    };
    let second = port.send(&h, vec![0xFE; 1000], 2).unwrap();
    if !deadline {
        cancel_once_out(&port, &h, &c, first);
    }
    let mut problems = Vec::new();
    let mut comp = get(&port);
    assert_eq!((comp.token, comp.op), (1, first), "{}", brief(&comp));
    let want_err = if deadline {
        ErrorKind::TimedOut
    } else {
        completion_port::aborted().kind()
    };
    match &comp.result {
        Err(e) if e.kind() == want_err && (deadline || is_aborted(e)) => {}
        other => problems.push(format!(
            "the cut send should fail with {want_err:?}, got {other:?}"
        )),
    }
    let sent = transferred(&comp);
    match sent {
        Some(n) if n > 0 && n < BIG => {}
        other => problems.push(format!(
            "the cut send should report the bytes that went out (0 < n < {BIG}), got {other:?}"
        )),
    }
    let back: usize = if deadline {
        let bufs = comp.take_bufs();
        assert_eq!(bufs.len(), BIG / (64 * 1024), "every buffer comes back");
        bufs.iter().map(Buf::len).sum()
    } else {
        comp.take_buf().map_or(0, |b| b.len())
    };
    assert_eq!(back, BIG, "the cut send's buffers come back whole");

    // The peer reads from now on, until the close.
    let reader = std::thread::spawn(move || {
        let mut c = c;
        let mut got = Vec::new();
        c.read_to_end(&mut got).map(|_| got)
    });
    let later = port.send(&h, vec![0xFD; 100], 3).unwrap();
    let later_v = port
        .send_vectored(
            &h,
            vec![Buf::from(vec![0xFC; 10]), Buf::from(vec![0xFB; 20])],
            4,
        )
        .unwrap();
    let mut rest = HashMap::new();
    for _ in 0..3 {
        let comp = get(&port);
        rest.insert(comp.token, comp);
    }
    for (tok, op, len, what) in [
        (2, second, 1000, "the send queued behind it"),
        (3, later, 100, "a later send"),
        (4, later_v, 30, "a later vectored send"),
    ] {
        let comp = rest.get_mut(&tok).expect("one completion each");
        assert_eq!(comp.op, op, "{}", brief(comp));
        if !comp.is_aborted() || transferred(comp) != Some(0) {
            problems.push(format!(
                "{what} should complete aborted having sent 0 bytes, got {:?}",
                comp.result
            ));
        }
        let back: usize = comp.take_buf().map_or(0, |b| b.len())
            + comp.take_bufs().iter().map(Buf::len).sum::<usize>();
        assert_eq!(back, len, "{what}: its buffers come back");
    }
    h.close();
    drive_until(&port, "the peer reads to the close", || {
        reader.is_finished()
    });
    let got = reader
        .join()
        .unwrap()
        .expect("the peer reads until the close");
    // Bytes of the cut send are pattern bytes (< 251); the others are not.
    let p = got
        .iter()
        .zip(pattern(0, got.len().min(BIG)))
        .take_while(|(a, b)| **a == *b)
        .count();
    if sent != Some(p) {
        problems.push(format!(
            "the cut send reported {sent:?} bytes sent; the peer read {p} bytes of it"
        ));
    }
    let tail = &got[p..];
    if !tail.is_empty() {
        let count = |v: u8| tail.iter().filter(|&&b| b == v).count();
        problems.push(format!(
            "after those the peer read {} more bytes: {} of the queued send, {} of the \
             later send, {} of the later vectored send",
            tail.len(),
            count(0xFE),
            count(0xFD),
            count(0xFC) + count(0xFB)
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
    no_packet(&port, Duration::from_millis(20));
}

/// A 1 MiB send, a vectored send of two buffers and an empty send, queued
/// back-to-back on a socket with an 8 KiB send buffer: the kernel takes them
/// in many short writes, yet each completes once, whole and in order, and
/// the peer reads the bytes in order.
pub fn short_writes_finish_in_order(t: &Target) {
    let port = t.build(t.builder());
    let (h, mut c) = tcp_pair(&port, 1);
    h.with_socket(|s| s.set_send_buffer_size(8192)).unwrap();
    let data = pattern(0, 3 << 20);
    let (a, rest) = data.split_at(1 << 20);
    let (b1, b2) = rest.split_at(700_001);
    port.send(&h, a.to_vec(), 1).unwrap();
    port.send_vectored(&h, vec![Buf::from(b1.to_vec()), Buf::from(b2.to_vec())], 2)
        .unwrap();
    port.send(&h, Vec::new(), 3).unwrap();
    let len = data.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        c.read_exact(&mut got).map(|_| got)
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
    let got = reader.join().unwrap().expect("the peer reads every byte");
    assert!(got == data, "stream corrupted");
    no_packet(&port, Duration::from_millis(100));
    port.close();
}

/// A send started right behind a connect goes out once the socket is
/// connected (in either completion order); a connect to a closed port
/// completes refused, as a packet.
pub fn connect_and_refused(t: &Target) {
    let port = t.build(t.builder());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let h = port.associate(s, 3).unwrap();
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
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    port.close();
}

/// A standing accept delivers one `more` completion per connection, with
/// the accepted socket and its peer; a single accept queued beside it gets
/// a connection too; cancelling the stream ends it with exactly one final,
/// aborted completion.
pub fn accept_stream_then_cancel(t: &Target) {
    let port = t.build(t.builder());
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
    assert!(last.is_some(), "no final completion");
    port.close();
}

/// An echo on an inline port: the receive and the send complete on the
/// owner thread, so no packet is handed across threads.
pub fn inline_echo(t: &Target) {
    let port = t.build(t.builder());
    let (h, mut c) = tcp_pair(&port, 1);
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

/// An operation a running thread starts reaches the kernel by that
/// thread's next `get`, even when that `get` finds packets queued and
/// returns one without waiting (a lone worker going through a batch): the
/// peer gets the data while the thread handles the next packet, not once
/// the queue has run dry. (An inline port's owner turns its engine only
/// when nothing may be taken: not there.)
pub fn started_work_goes_in_by_next_get(t: &Target) {
    let port = t.build(t.builder());
    let (h, mut c) = tcp_pair(&port, 1);
    port.post(1, 0, 10).unwrap();
    port.post(1, 0, 11).unwrap();
    assert_eq!(get(&port).token, 10);
    // Started while the thread runs on the port (as a handler would).
    port.send(&h, b"ping".to_vec(), 2).unwrap();
    assert_eq!(get(&port).token, 11, "the queued post, taken at once");
    // No `get` until the peer has the data.
    let t0 = Instant::now();
    let mut got = [0u8; 4];
    c.read_exact(&mut got)
        .expect("the send reached the kernel by the thread's next get");
    assert_eq!(&got, b"ping");
    assert!(t0.elapsed() < T, "{:?}", t0.elapsed());
    assert_eq!(get(&port).token, 2, "the send's completion");
    port.close();
}

/// An inline port's owner takes packets in the order they were queued,
/// whether a turn of its engine made them or a thread posted them: a batch
/// cut short by its limit leaves the rest of the turn's completions queued,
/// for the next `get` to take without waiting, ahead of a packet posted
/// after them.
pub fn inline_order(t: &Target) {
    let port = t.build(t.builder());
    // Three connections: one stream's sends go one at a time.
    let pairs: Vec<_> = (1..=3).map(|k| tcp_pair(&port, k)).collect();
    for (token, (h, _)) in (1..=3).zip(&pairs) {
        port.send(h, vec![token as u8; 4], token).unwrap();
    }
    let mut batch = Vec::new();
    let mut next = |port: &Port| {
        batch.clear();
        let n = port
            .get_many(&mut batch, 1, Some(Duration::from_secs(10)))
            .expect("a packet");
        assert_eq!(n, 1);
        batch[0].token
    };
    // One turn hands all three small sends to the kernel, which completes
    // them at once; the batch takes the first.
    assert_eq!(next(&port), 1);
    assert_eq!(port.stats().queued, 2, "the rest of the turn waits queued");
    // Taken at once, not after a turn that waits for news.
    let t0 = Instant::now();
    assert_eq!(next(&port), 2);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    port.post(7, 0, 100).unwrap();
    assert_eq!([next(&port), next(&port)], [3, 100]);
    assert_eq!(port.stats().running, 1);
    // A `get` that times out at once still ends the running period.
    let r = port.get_many(&mut Vec::new(), 1, Some(Duration::from_nanos(1)));
    assert!(r.is_err(), "nothing left: {r:?}");
    assert_eq!(
        port.stats().running,
        0,
        "a timed-out get leaves nothing running"
    );
    for (token, (_, c)) in (1..=3u8).zip(&pairs) {
        let mut got = [0u8; 4];
        (&*c).read_exact(&mut got).unwrap();
        assert_eq!(got, [token; 4]);
    }
    assert_eq!(port.stats().handoffs, 0);
    port.close();
}

/// A `get` whose timeout is over at once still takes what the owner's own
/// starts completed: the first turn of every `get` hands over what a start
/// made straight in the engine (epoll's first attempt), so it never times
/// out with a completion ready.
pub fn inline_short_get_takes_what_starts_completed(t: &Target) {
    let port = t.build(t.builder());
    let (h, mut c) = tcp_pair(&port, 6);
    no_packet(&port, Duration::ZERO);
    for i in 0..20u64 {
        port.send(&h, vec![i as u8; 8], i).unwrap();
        let r = port.get(Some(Duration::from_nanos(1)));
        let got = r.as_ref().map(|c| (c.token, c.bytes()));
        assert_eq!(
            got.ok(),
            Some((i, 8)),
            "send {i}: {:?}",
            r.map(|c| brief(&c))
        );
    }
    let mut all = [0u8; 160];
    c.read_exact(&mut all).unwrap();
    port.close();
}

/// A socket another thread associated with an inline port (its
/// registration queued for the owner's engine) takes the owner's
/// operations at once: an operation the owner starts never overtakes the
/// registration.
pub fn inline_start_after_other_threads_register(t: &Target) {
    let port = t.build(t.builder());
    let (h, mut c) = std::thread::scope(|s| s.spawn(|| tcp_pair(&port, 5)).join().unwrap());
    port.recv(&h, Vec::with_capacity(16), 1).unwrap();
    c.write_all(b"xyz").unwrap();
    received(&port, 1, b"xyz", "a receive on another thread's socket");
    port.close();
}

/// A send cut part-way breaks the write side of a stream, not its read
/// side: later sends complete aborted, but a receive still gets what the
/// peer sends, and a connect (not a write) is not aborted either — it
/// fails on its own, the socket being connected already.
pub fn recv_after_broken_write(t: &Target) {
    const BIG: usize = 8 << 20;
    let port = t.port();
    let (h, mut c) = tight_pair(&port, 96);
    let first = port.send(&h, pattern(0, BIG), 1).unwrap();
    cancel_once_out(&port, &h, &c, first);
    let comp = get(&port);
    assert_eq!(comp.token, 1, "{}", brief(&comp));
    let sent = comp.transferred();
    assert!(
        comp.is_aborted() && sent > 0 && sent < BIG,
        "the send should be cut part-way: {} after {sent} bytes",
        brief(&comp)
    );
    port.send(&h, vec![0xFD; 10], 2).unwrap();
    let comp = get(&port);
    assert!(
        comp.token == 2 && comp.is_aborted(),
        "a send after the break completes aborted: {}",
        brief(&comp)
    );

    port.recv(&h, Vec::with_capacity(64), 3).unwrap();
    c.write_all(b"still reading").unwrap();
    received(
        &port,
        3,
        b"still reading",
        "a receive after the break gets the peer's bytes",
    );

    match port.connect(&h, closed_tcp_addr(), 4) {
        Ok(_) => {
            let comp = get(&port);
            assert!(
                comp.token == 4 && !comp.is_aborted(),
                "a connect is not a write: the break does not abort it: {}",
                brief(&comp)
            );
        }
        Err(e) => assert!(
            !is_aborted(&e.error),
            "a connect is not a write: the break does not refuse it: {e:?}"
        ),
    }
    h.close();
    no_packet(&port, Duration::from_millis(20));
}
