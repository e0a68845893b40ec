//! Unit tests of the Windows engine, for what a test cannot make Winsock
//! (or Wine) do: a call that fails at once is fed to the engine through
//! `opbox::FAIL_NEXT_ISSUE`, a packet's status straight to an operation.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::windows::io::AsRawSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use windows_sys::Win32::Networking::WinSock::{
    SOCKET, WSAECONNABORTED, WSAECONNRESET, WSAEMSGSIZE, WSAENOBUFS, WSAETIMEDOUT,
};

use super::opbox::FAIL_NEXT_ISSUE;
use super::ops::{Input, Local, Reap, WOp};
use super::{Delivery, HandleShared, Shared, KEY_IO};
use crate::buf::Buf;
use crate::kit::accept::{self, Verdict};
use crate::kit::lock;
use crate::kit::phase::{Park, Phase, Step};
use crate::op::{Completion, OpData, OpId};
use crate::sys::windows::cport::Got;

/// A port (concurrency 1, four 1 KiB pool buffers) and `sock` on it.
fn rig(sock: socket2::Socket) -> (Arc<Shared>, Arc<HandleShared>) {
    let port = Shared::new(crate::running::next_id(), 1, 4, 1024).unwrap();
    let h = attach(&port, sock, 1);
    (port, h)
}

/// `sock` on `port`, as handle `hid` (key 7).
fn attach(port: &Arc<Shared>, sock: socket2::Socket, hid: u64) -> Arc<HandleShared> {
    sock.set_nonblocking(true).unwrap();
    port.cport
        .associate(sock.as_raw_socket() as SOCKET, KEY_IO)
        .unwrap();
    let h = HandleShared::new(hid, 7, sock, port.clone());
    port.register(&h).unwrap();
    h
}

/// A connected TCP pair: the accepted end on `port` as handle `hid`, and
/// the peer.
fn tcp_on(port: &Arc<Shared>, hid: u64) -> (Arc<HandleShared>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    (attach(port, ours.into(), hid), peer)
}

/// The next completion within `ms` milliseconds (`None`: only internal work
/// or nothing came).
fn next(port: &Shared, ms: u64) -> Option<Completion> {
    let until = Instant::now() + Duration::from_millis(ms);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match port.wait_one(left.as_millis() as u32) {
            Got::Packet(p) => match port.process(p) {
                Delivery::Deliver(c, _) => return Some(c),
                Delivery::Nothing => {}
                Delivery::Abandon => panic!("a sentinel on an open port"),
            },
            Got::TimedOut => return None,
            Got::Abandoned => panic!("the port is gone"),
        }
    }
}

/// Operation `op`'s phase, and whether a resume is queued for it.
fn phase(h: &HandleShared, op: OpId) -> Option<(Phase, bool)> {
    let st = lock(&h.state);
    let i = st.find(op.0)?;
    let resuming = matches!(st.ops[i].local, Some(Local::Resume));
    Some((st.ops[i].phase, resuming))
}

/// A `send_to` that Winsock fails with `WSAEMSGSIZE` as an error (the
/// kernel wrote `STATUS_INVALID_BUFFER_SIZE`, and queued nothing) completes
/// once, with that error: the engine posts it, as for any call that fails
/// at once. Taking every `WSAEMSGSIZE` for the warning (a packet follows)
/// would leave the send without a completion, and its handle open, forever.
#[test]
fn emsgsize_without_a_packet_completes_once() {
    let (port, h) = rig(UdpSocket::bind("127.0.0.1:0").unwrap().into());
    let to: SocketAddr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    const STATUS_INVALID_BUFFER_SIZE: u32 = 0xC000_0206;
    FAIL_NEXT_ISSUE.set(Some((WSAEMSGSIZE, STATUS_INVALID_BUFFER_SIZE as i32)));
    let data = OpData::SendTo(Buf::from(vec![1u8; 10]), Box::new(to.into()));
    let op = h.start(data, 5, None).unwrap();
    let c = next(&port, 5000).expect("the send completes");
    assert_eq!((c.op, c.token), (op, 5));
    let err = c.result.as_ref().expect_err("it failed");
    assert_eq!(err.raw_os_error(), Some(WSAEMSGSIZE), "{c:?}");
    assert_eq!(
        c.buf.as_ref().map(Buf::len),
        Some(10),
        "the buffer comes back"
    );
    assert!(next(&port, 200).is_none(), "exactly one completion");
    assert!(phase(&h, op).is_none(), "the operation is gone");
    port.close();
}

/// The standing accept applies the accept policy to a call that fails at
/// once: each error of the list is passed over or reported, and accepting
/// goes on at once or after the back-off — or the accept ends with it.
#[test]
fn standing_accept_follows_the_policy() {
    let (port, h) = rig(TcpListener::bind("127.0.0.1:0").unwrap().into());
    accept::check_backend("iocp", |code| {
        FAIL_NEXT_ISSUE.set(Some((code, 0)));
        let op = h.start(OpData::AcceptMulti, 1, None).unwrap();
        // A verdict that reports sends its completion at once; one that
        // does not (Retry) issues a real AcceptEx, which waits.
        let c = next(&port, 1000);
        if let Some(c) = &c {
            let err = c.result.as_ref().expect_err("an error completion");
            assert_eq!(err.raw_os_error(), Some(code), "{c:?}");
        }
        let verdict = match (phase(&h, op), c.map(|c| c.more)) {
            (None, Some(false)) => return Verdict::End,
            (Some((Phase::Issued, false)), None) => Verdict::Retry,
            (Some((Phase::Issued, false)), Some(true)) => Verdict::Again,
            (Some((Phase::Parked(Park::BackOff), _)), Some(true)) => {
                assert_eq!(port.timers.len(), 1, "one resume timer");
                Verdict::BackOff
            }
            // The back-off already ended: its resume is queued.
            (Some((Phase::Issued, true)), Some(true)) => Verdict::BackOff,
            other => panic!("{code}: (phase, resuming), more: {other:?}"),
        };
        // End it (as a cancel would) before the next code.
        h.cancel_op(op.0, false);
        let c = next(&port, 5000).expect("the final completion");
        assert!(c.is_aborted() && !c.more && c.op == op, "{c:?}");
        assert!(phase(&h, op).is_none());
        assert_eq!(port.timers.len(), 0, "its timer left with it");
        verdict
    });
    port.close();
}

/// The errors `AcceptEx` completes with go through the same policy, after
/// the error table: a peer that reset (64) or gave up (1236) or timed out
/// (121) before it was accepted is reported and accepting goes on; out of
/// buffers backs off; a cancel and anything unknown end the stream.
#[test]
fn accept_packet_errors_follow_the_policy() {
    let (port, h) = rig(TcpListener::bind("127.0.0.1:0").unwrap().into());
    let cases = [
        (64, Some(WSAECONNRESET), Verdict::Again),
        (1236, Some(WSAECONNABORTED), Verdict::Again),
        (121, Some(WSAETIMEDOUT), Verdict::Again),
        (WSAENOBUFS as u32, Some(WSAENOBUFS), Verdict::BackOff),
        (995, Some(995), Verdict::End),
        (1, Some(1), Verdict::End),
    ];
    for (code, reported, want) in cases {
        let mut op = WOp::new(OpData::AcceptMulti);
        let mut cx = Reap {
            h: &h,
            id: 1,
            token: 2,
            phase: Phase::Issued,
            stop: false,
            out: None,
            kept: false,
            freed: false,
        };
        let input = Input::Kernel {
            status: Some(code),
            bytes: 0,
        };
        let step = op.on_packet(input, &mut cx);
        let (got, err) = match (step, cx.out) {
            (Step::Done(Err(e)), None) => (Verdict::End, Some(e)),
            (Step::Again, Some(c)) => (Verdict::Again, c.result.err()),
            (Step::BackOff, Some(c)) => (Verdict::BackOff, c.result.err()),
            (Step::Again, None) => (Verdict::Retry, None),
            other => panic!("{code}: {other:?}"),
        };
        assert_eq!(got, want, "{code}");
        assert_eq!(err.and_then(|e| e.raw_os_error()), reported, "{code}");
    }
    port.close();
}

/// Reads the port (where readiness packets are read) until receive `op`
/// of `h` starves for a buffer, for up to 5 s; no completion may come
/// meanwhile: `what` waits for a buffer.
fn starve(port: &Shared, h: &HandleShared, op: OpId, what: &str) {
    let starved = Some((Phase::Parked(Park::Starved), false));
    let t = Instant::now();
    while phase(h, op) != starved {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what} never starved: {:?}",
            phase(h, op)
        );
        if let Some(c) = next(port, 20) {
            panic!("{what} waits for a buffer, yet {c:?}");
        }
    }
}

/// A pool buffer a resumed receive does not fill goes on to the next
/// starved receive. With one buffer: A's chunk is held, then A (at its FIN)
/// and B (with data) starve, in that order. The buffer comes back and is
/// kept for A, the oldest. A reads 0 and gives the buffer back — or, if
/// `cancel_a`, A is cancelled before its packet is read and never takes
/// the buffer kept for it. Either way A ends, and B must then be resumed
/// with that buffer, though no `PooledBuf` came back for it.
fn starved_pair_hand_on(cancel_a: bool) {
    let port = Shared::new(crate::running::next_id(), 1, 1, 64).unwrap();
    let (a, mut pa) = tcp_on(&port, 1);
    let (b, mut pb) = tcp_on(&port, 2);
    let ra = a.start(OpData::RecvPooled, 1, None).unwrap();
    let rb = b.start(OpData::RecvPooled, 2, None).unwrap();
    pa.write_all(b"a").unwrap();
    let mut c = next(&port, 5000).expect("A's chunk");
    assert_eq!((c.op, c.more, c.bytes()), (ra, true, 1), "{c:?}");
    let chunk = c.take_buf().expect("a pool buffer");
    pa.shutdown(Shutdown::Write).unwrap();
    starve(&port, &a, ra, "A's FIN");
    pb.write_all(b"b").unwrap();
    starve(&port, &b, rb, "B's data");
    let starved = Some((Phase::Parked(Park::Starved), false));
    assert_eq!((phase(&a, ra), phase(&b, rb)), (starved, starved));
    assert_eq!(port.starved.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(chunk);
    if cancel_a {
        a.cancel_op(ra.0, false);
    }
    let c = next(&port, 5000).expect("A ends");
    if cancel_a {
        assert!(c.is_aborted() && !c.more && c.op == ra, "{c:?}");
    } else {
        assert_eq!((c.op, c.more, c.bytes()), (ra, false, 0), "{c:?}");
    }
    let c = next(&port, 5000).expect("B is resumed with the buffer A did not fill");
    assert_eq!((c.op, c.more, c.bytes()), (rb, true, 1), "{c:?}");
    drop(c);
    assert_eq!(port.starved.load(std::sync::atomic::Ordering::Relaxed), 2);
    b.close();
    let c = next(&port, 5000).expect("B's final completion");
    assert!(c.is_aborted() && !c.more && c.op == rb, "{c:?}");
    port.close();
}

/// [`starved_pair_hand_on`]: A takes the buffer kept for it, reads 0 and
/// gives it back.
#[test]
fn unfilled_buffer_goes_to_the_next_starved_receive() {
    starved_pair_hand_on(false);
}

/// [`starved_pair_hand_on`]: A is stopped before it takes the buffer kept
/// for it.
#[test]
fn unused_kept_buffer_goes_to_the_next_starved_receive() {
    starved_pair_hand_on(true);
}
