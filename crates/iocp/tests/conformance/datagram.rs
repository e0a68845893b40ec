//! UDP: round trips, truncated datagrams, vectored datagrams; `send_to`
//! and `recv_from` refused on a stream.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use completion_port::{Buf, OpKind};

use crate::util::*;

/// UDP `send_to`/`recv_from` round trips with the sender's address, on
/// 127.0.0.1 (and ::1 where it exists).
pub fn udp_round_trip(t: &Target) {
    let port = t.port();
    for local in ["127.0.0.1:0", "[::1]:0"] {
        let Ok(a) = UdpSocket::bind(local) else {
            println!("udp: {local} not available, skipped");
            continue;
        };
        let a_addr = a.local_addr().unwrap();
        let ha = port.associate(a, 80).unwrap();
        let b = UdpSocket::bind(local).unwrap();
        b.set_read_timeout(Some(T)).unwrap();
        let b_addr = b.local_addr().unwrap();

        let op = port.recv_from(&ha, Vec::with_capacity(2048), 1).unwrap();
        b.send_to(b"ping", a_addr).unwrap();
        let mut comp = get(&port);
        assert_eq!(
            (comp.kind, comp.key, comp.token, comp.op, comp.bytes()),
            (OpKind::RecvFrom, 80, 1, op, 4)
        );
        assert_eq!(comp.from_addr(), Some(b_addr));
        assert_eq!(comp.take_buf().unwrap().as_slice(), b"ping");

        port.send_to(&ha, b"pong".to_vec(), b_addr, 2).unwrap();
        let comp = get(&port);
        assert_eq!(
            (comp.kind, comp.token, comp.bytes()),
            (OpKind::SendTo, 2, 4),
            "{}",
            brief(&comp)
        );
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).expect("datagram at the peer");
        assert_eq!((&buf[..n], from), (&b"pong"[..], a_addr));

        // Port to port.
        let c = UdpSocket::bind(local).unwrap();
        let c_addr: SocketAddr = c.local_addr().unwrap();
        let hc = port.associate(c, 81).unwrap();
        port.recv_from(&hc, Vec::with_capacity(64), 3).unwrap();
        port.send_to(&ha, vec![7u8; 33], c_addr, 4).unwrap();
        let mut by_token = HashMap::new();
        for _ in 0..2 {
            let c = get(&port);
            by_token.insert(c.token, c);
        }
        let r = by_token.get_mut(&3).expect("recv_from completed");
        assert_eq!((r.key, r.bytes(), r.from_addr()), (81, 33, Some(a_addr)));
        assert_eq!(r.take_buf().unwrap().as_slice(), &[7u8; 33][..]);
        assert_eq!(by_token[&4].bytes(), 33);
    }
}

/// A datagram larger than the receive buffer is cut to the buffer
/// (`Ok(len)`, as `recvmsg` does) and completes exactly once — also when it
/// was already waiting as the receive started (Winsock then fails the call
/// with `WSAEMSGSIZE` and still queues its packet).
pub fn udp_truncated_datagram(t: &Target) {
    let port = t.port();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.send_to(&pattern(0, 100), a.local_addr().unwrap())
        .unwrap();
    a.set_read_timeout(Some(T)).unwrap();
    let mut room = [0u8; 200];
    let (n, _) = a.peek_from(&mut room).expect("the datagram arrives");
    assert_eq!(n, 100);
    let ha = port.associate(a, 81).unwrap();
    let op = port.recv_from(&ha, Vec::with_capacity(10), 1).unwrap();
    let mut comp = get_of(&port, OpKind::RecvFrom, 81, 1, op);
    assert_eq!(comp.result.as_ref().ok(), Some(&10), "{}", brief(&comp));
    assert_eq!(comp.take_buf().unwrap().as_slice(), &pattern(0, 10)[..]);
    assert_eq!(comp.from_addr(), Some(b.local_addr().unwrap()));
    no_packet(&port, Duration::from_millis(100));
}

/// "Message too long": `EMSGSIZE`, `WSAEMSGSIZE` on Windows.
#[cfg(unix)]
const EMSGSIZE: i32 = libc::EMSGSIZE;
#[cfg(windows)]
const EMSGSIZE: i32 = 10040;

/// A datagram larger than UDP carries (70,000 bytes) fails whole with
/// `EMSGSIZE`, exactly once, and stops nothing: the next `send_to` goes out.
/// (Winsock reports it with `WSAEMSGSIZE`, which may or may not come with a
/// packet of its own: either way there is one completion.)
pub fn udp_oversized_send_to(t: &Target) {
    let port = t.port();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(T)).unwrap();
    let to = b.local_addr().unwrap();
    let ha = port.associate(a, 83).unwrap();
    let op = port.send_to(&ha, vec![7u8; 70_000], to, 1).unwrap();
    let mut comp = get(&port);
    assert_eq!((comp.kind, comp.token, comp.op), (OpKind::SendTo, 1, op));
    let err = comp
        .result
        .as_ref()
        .expect_err("no datagram carries 70,000 bytes");
    assert_eq!(err.raw_os_error(), Some(EMSGSIZE), "{}", brief(&comp));
    assert_eq!(comp.transferred(), 0, "{}", brief(&comp));
    assert_eq!(
        comp.take_buf().map(|b| b.len()),
        Some(70_000),
        "the buffer comes back"
    );
    port.send_to(&ha, b"next".to_vec(), to, 2).unwrap();
    let next = get(&port);
    assert!(next.result.is_ok(), "{}", brief(&next));
    assert_eq!((next.token, next.bytes()), (2, 4));
    let mut room = [0u8; 16];
    let n = b.recv(&mut room).expect("the next datagram arrives");
    assert_eq!(&room[..n], b"next");
    no_packet(&port, Duration::from_millis(100));
}

/// On a datagram socket a vectored send is one datagram: 2000 buffers (more
/// than `IOV_MAX`) go out as one datagram or fail whole (`EMSGSIZE` on
/// Linux), never as two. A failed datagram send stops nothing: the next send
/// goes out.
pub fn udp_send_vectored_whole(t: &Target) {
    let port = t.port();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.set_read_timeout(Some(T)).unwrap();
    let ha = port.associate(a, 82).unwrap();
    let bufs: Vec<Buf> = pattern(0, 2000)
        .into_iter()
        .map(|x| Buf::from(vec![x]))
        .collect();
    let op = port.send_vectored(&ha, bufs, 1).unwrap();
    let comp = get(&port);
    assert_eq!((comp.kind, comp.token, comp.op), (OpKind::Send, 1, op));
    let whole = match &comp.result {
        Ok(n) => {
            assert_eq!(*n, 2000, "{}", brief(&comp));
            true
        }
        Err(_) => {
            assert_eq!(comp.transferred(), 0, "{}", brief(&comp));
            false
        }
    };
    port.send(&ha, b"after".to_vec(), 2).unwrap();
    let comp = get(&port);
    assert_eq!(
        (comp.token, comp.result.as_ref().ok()),
        (2, Some(&5)),
        "{}",
        brief(&comp)
    );
    let mut room = vec![0u8; 4096];
    if whole {
        let n = b.recv(&mut room).expect("the datagram arrives");
        assert!(
            room[..n] == pattern(0, 2000)[..],
            "one datagram of 2000 bytes, got {n} bytes"
        );
    }
    let n = b.recv(&mut room).expect("the next datagram arrives");
    assert_eq!(
        &room[..n],
        b"after",
        "a vectored datagram went out in pieces ({n} bytes)"
    );
}

/// `send_to` from one associated socket to another's pending `recv_from`:
/// both complete, the receive with the datagram and the sender's address.
pub fn udp_send_to_recv_from(t: &Target) {
    let port = t.build(t.builder());
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

/// `send_to` on a stream socket (TCP) is refused at once, on every backend,
/// with `InvalidInput` and its buffer back: a stream sends only to its peer,
/// and a short `send_to` could not say which part of the message went. The
/// handle stays usable; the peer gets nothing.
pub fn send_to_stream_refused(t: &Target) {
    let port = t.port();
    let (h, mut peer) = tcp_pair(&port, 97);
    let to = peer.local_addr().unwrap();
    let e = port
        .send_to(&h, b"datagram?".to_vec(), to, 1)
        .expect_err("send_to on TCP must be refused");
    refused_on_stream(
        e,
        &format!("send_to on a stream socket (handle key 97, to {to}): a stream sends only to its peer; use send"),
        b"datagram?",
    );
    port.send(&h, b"ok".to_vec(), 2).unwrap();
    let c = get(&port);
    assert_eq!((c.token, c.result.as_ref().ok().copied()), (2, Some(2)));
    let mut got = [0u8; 2];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok", "the peer gets only what send sent");
    no_packet(&port, Duration::from_millis(20));
}

/// `recv_from` on a stream socket (TCP) is refused at once as `send_to` is,
/// on every backend: `InvalidInput`, its buffer back, no completion. A
/// stream receives only from its peer and has no datagram boundaries. The
/// handle stays usable: the bytes the peer sent are all there for `recv`.
pub fn recv_from_stream_refused(t: &Target) {
    let port = t.port();
    let (h, mut peer) = tcp_pair(&port, 98);
    peer.write_all(b"stream bytes").unwrap();
    let mut offered = Vec::with_capacity(64);
    offered.extend_from_slice(b"old");
    let e = port
        .recv_from(&h, offered, 1)
        .expect_err("recv_from on TCP must be refused");
    refused_on_stream(
        e,
        "recv_from on a stream socket (handle key 98): a stream receives only from its peer; use recv",
        b"old",
    );
    no_packet(&port, Duration::from_millis(20));
    port.recv(&h, Vec::with_capacity(64), 2).unwrap();
    received(&port, 2, b"stream bytes", "recv gets what the peer sent");
    no_packet(&port, Duration::from_millis(20));
}

/// A datagram operation refused on a stream: `InvalidInput`, exactly
/// `message`, and the buffer back untouched (`content`).
fn refused_on_stream(mut e: completion_port::SubmitError, message: &str, content: &[u8]) {
    assert_eq!(e.error.kind(), ErrorKind::InvalidInput, "{e:?}");
    assert_eq!(e.error.to_string(), message);
    let back = e.take_buf().expect("the buffer comes back");
    assert_eq!(back.as_slice(), content, "the buffer comes back untouched");
}
