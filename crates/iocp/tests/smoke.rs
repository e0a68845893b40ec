//! One echo round trip (accept, receive, send, pooled receive, FIN) on
//! every backend this build has.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use completion_port::{Backend, OpKind, Port};

/// The same round trip on every backend this build has.
#[test]
fn echo_round_trip() {
    for &b in Backend::available() {
        let t = util::Target::new(b, false);
        // A backend that cannot build a port here (io_uring blocked by
        // seccomp or a sysctl) fails, unless the environment allows it.
        if !t.ready(&format!("smoke[{b}]")) {
            continue;
        }
        let port = t.build(t.builder());
        assert_eq!(port.backend().backend, b);
        echo_on(port);
    }
}

fn echo_on(port: Port) {
    eprintln!("backend: {}", port.backend());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, 1).unwrap();
    port.accept(&lh, 10).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let mut c = port.get(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.kind, OpKind::Accept);
    assert_eq!(c.key, 1);
    assert_eq!(c.token, 10);
    let (s, peer) = c.take_accepted().unwrap();
    assert_eq!(peer, Some(client.local_addr().unwrap()));
    let h = port.associate(s, 2).unwrap();
    port.recv(&h, Vec::with_capacity(100), 11).unwrap();
    client.write_all(b"hello").unwrap();
    let mut c = port.get(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        (c.kind, c.key, c.token, c.bytes()),
        (OpKind::Recv, 2, 11, 5)
    );
    let b = c.take_buf().unwrap();
    assert_eq!(b.as_slice(), b"hello");
    port.send(&h, b, 12).unwrap();
    let c = port.get(Some(Duration::from_secs(5))).unwrap();
    assert_eq!((c.kind, c.bytes()), (OpKind::Send, 5));
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    // pooled
    port.recv_pooled(&h, 13).unwrap();
    client.write_all(b"world!").unwrap();
    let c = port.get(Some(Duration::from_secs(5))).unwrap();
    assert_eq!((c.kind, c.bytes(), c.more), (OpKind::RecvPooled, 6, true));
    assert_eq!(c.buf().unwrap().as_slice(), b"world!");
    drop(c);
    drop(client);
    let c = port.get(Some(Duration::from_secs(5))).unwrap();
    assert_eq!((c.kind, c.bytes(), c.more), (OpKind::RecvPooled, 0, false));
    port.close();
}
