//! Unit tests of the Windows engine, for what a test cannot make Winsock
//! (or Wine) do: a call that fails at once is fed to the engine through
//! `opbox::FAIL_NEXT_ISSUE`, a packet's status straight to an operation.

use std::net::{SocketAddr, TcpListener, UdpSocket};
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
    sock.set_nonblocking(true).unwrap();
    port.cport
        .associate(sock.as_raw_socket() as SOCKET, KEY_IO)
        .unwrap();
    let h = HandleShared::new(1, 7, sock, port.clone());
    port.register(&h).unwrap();
    (port, h)
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
