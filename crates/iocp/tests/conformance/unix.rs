//! Unix domain sockets through the socket handle: stream (accept, connect,
//! send, receive) and datagram (`send_to`/`recv_from` with path addresses).
//! Written with `socket2`, so the clauses build on every platform.

use std::collections::HashMap;
use std::path::Path;

use completion_port::{Addr, OpKind};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::util::*;

fn unix_socket(ty: Type) -> Socket {
    Socket::new(Domain::UNIX, ty, None).expect("AF_UNIX socket")
}

fn bound(ty: Type, path: &Path) -> Socket {
    let s = unix_socket(ty);
    s.bind(&SockAddr::unix(path).unwrap())
        .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    s
}

/// A Unix stream: the listener accepts through the port (the peer, never
/// bound, is unnamed), a socket connects through the port to the path, and
/// bytes go both ways in order.
pub fn unix_stream_round_trip(t: &Target) {
    let port = t.port();
    let dir = TempDir::new("ustream");
    let path = dir.join("l.sock");
    let l = bound(Type::STREAM, &path);
    l.listen(8).unwrap();
    let lh = port.associate(l, 1).unwrap();
    let ch = port.associate(unix_socket(Type::STREAM), 2).unwrap();
    port.accept(&lh, 10).unwrap();
    port.connect(&ch, path.as_path(), 11).unwrap();
    let mut by_token = HashMap::new();
    for _ in 0..2 {
        let c = get(&port);
        by_token.insert(c.token, c);
    }
    let conn = by_token.remove(&11).expect("connect completed");
    assert_eq!((conn.kind, conn.key), (OpKind::Connect, 2));
    conn.result.expect("connect to the path");
    let mut acc = by_token.remove(&10).expect("accept completed");
    assert_eq!((acc.kind, acc.key, acc.bytes()), (OpKind::Accept, 1, 0));
    assert_eq!(acc.addr(), Some(&Addr::UnixUnnamed), "an unbound peer");
    assert_eq!(acc.from_addr(), None, "not an IP address");
    let (s, ip) = acc.take_accepted().expect("the accepted socket");
    assert_eq!(ip, None);
    let sh = port.associate(s, 3).unwrap();

    let msg = pattern(1, 100_000);
    port.send(&ch, msg.clone(), 20).unwrap();
    let mut got = Vec::new();
    while got.len() < msg.len() {
        port.recv(&sh, Vec::with_capacity(64 * 1024), 21).unwrap();
        loop {
            let mut c = get(&port);
            match c.kind {
                OpKind::Send => assert_eq!(c.result.unwrap(), msg.len()),
                OpKind::Recv => {
                    assert!(c.bytes() > 0, "EOF before the whole message");
                    got.extend_from_slice(c.take_buf().unwrap().as_slice());
                    break;
                }
                k => panic!("unexpected {k:?}: {}", brief(&c)),
            }
        }
    }
    assert!(got == msg, "bytes differ on the Unix stream");
    port.send(&sh, b"back".to_vec(), 22).unwrap();
    port.recv(&ch, Vec::with_capacity(16), 23).unwrap();
    // The first send's completion (20) may come only now: its receiver
    // finished first (with engine threads, the two handles can be on two
    // engines, so their completions come in either order).
    let (mut reply, mut sent_back) = (None, false);
    while reply.is_none() || !sent_back {
        let mut c = get(&port);
        match c.token {
            20 => assert_eq!(c.result.as_ref().ok(), Some(&msg.len()), "{}", brief(&c)),
            22 => {
                assert_eq!(c.result.as_ref().ok(), Some(&4), "{}", brief(&c));
                sent_back = true;
            }
            23 => reply = Some(c.take_buf().unwrap().into_vec()),
            _ => panic!("unexpected completion: {}", brief(&c)),
        }
    }
    assert_eq!(reply.unwrap(), b"back");
    // The peer closes: the receive reads 0 bytes.
    sh.close();
    port.recv(&ch, Vec::with_capacity(16), 24).unwrap();
    loop {
        let c = get(&port);
        if c.token == 24 {
            assert_eq!(c.result.unwrap(), 0, "EOF after the peer closed");
            break;
        }
    }
    port.close();
}

/// Unix datagrams: `send_to` a path, `recv_from` reports the sender's path
/// (or no name, for an unbound sender); a path that cannot be an address is
/// refused with the buffer handed back.
pub fn unix_datagram_send_to_recv_from(t: &Target) {
    let port = t.port();
    let dir = TempDir::new("udgram");
    let (pa, pb) = (dir.join("a.sock"), dir.join("b.sock"));
    let ha = port.associate(bound(Type::DGRAM, &pa), 1).unwrap();
    let hb = port.associate(bound(Type::DGRAM, &pb), 2).unwrap();

    port.recv_from(&hb, Vec::with_capacity(256), 10).unwrap();
    port.send_to(&ha, b"to b".to_vec(), pb.as_path(), 11)
        .unwrap();
    let mut by_token = HashMap::new();
    for _ in 0..2 {
        let c = get(&port);
        by_token.insert(c.token, c);
    }
    assert_eq!(by_token[&11].result.as_ref().unwrap(), &4);
    let r = by_token.get_mut(&10).unwrap();
    assert_eq!((r.kind, r.key, r.bytes()), (OpKind::RecvFrom, 2, 4));
    assert_eq!(r.addr(), Some(&Addr::Unix(pa.clone())), "the sender's path");
    assert_eq!(r.take_buf().unwrap().as_slice(), b"to b");

    // Reply to the address recv_from reported.
    let back = r.addr().unwrap().clone();
    port.recv_from(&ha, Vec::with_capacity(256), 12).unwrap();
    port.send_to(&hb, b"back".to_vec(), back, 13).unwrap();
    let mut by_token = HashMap::new();
    for _ in 0..2 {
        let c = get(&port);
        by_token.insert(c.token, c);
    }
    assert_eq!(by_token[&12].addr(), Some(&Addr::Unix(pb.clone())));
    assert_eq!(by_token[&12].buf().unwrap().as_slice(), b"back");

    // From an unbound socket: no name.
    let hc = port.associate(unix_socket(Type::DGRAM), 3).unwrap();
    port.recv_from(&hb, Vec::with_capacity(256), 14).unwrap();
    port.send_to(&hc, b"anon".to_vec(), &pb, 15).unwrap();
    let mut by_token = HashMap::new();
    for _ in 0..2 {
        let c = get(&port);
        by_token.insert(c.token, c);
    }
    assert_eq!(by_token[&15].bytes(), 4, "{}", brief(&by_token[&15]));
    assert_eq!(by_token[&14].addr(), Some(&Addr::UnixUnnamed));

    // A path too long for a socket address never starts.
    let long = dir.join(&"x".repeat(200));
    let mut e = port
        .send_to(&ha, b"keep".to_vec(), long.as_path(), 16)
        .expect_err("a 200-byte name is no socket address");
    assert_eq!(e.error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        e.error.to_string().contains("cannot be a socket address"),
        "{}",
        e.error
    );
    assert_eq!(
        e.take_buf().unwrap().as_slice(),
        b"keep",
        "the buffer comes back"
    );
    let e = port
        .connect(&hc, Addr::UnixUnnamed, 17)
        .expect_err("nothing to connect to");
    assert_eq!(e.error.kind(), std::io::ErrorKind::InvalidInput);
    no_packet(&port, std::time::Duration::from_millis(50));
    port.close();
}
