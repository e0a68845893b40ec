//! Timer packets and per-operation deadlines, and the bound on pending
//! timers.

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use completion_port::{OpKind, OpOptions, Port};

use crate::util::*;

/// `post_after` delivers a Timer packet, not before its time, in deadline order.
pub fn post_after_timer(t: &Target) {
    let port = t.port();
    let t0 = Instant::now();
    let late = port.post_after(Duration::from_millis(150), 60, 1).unwrap();
    let early = port.post_after(Duration::from_millis(50), 60, 2).unwrap();
    let c = get(&port);
    let e1 = t0.elapsed();
    assert_eq!(
        (c.kind, c.key, c.token, c.op, c.bytes()),
        (OpKind::Timer, 60, 2, early, 0)
    );
    assert!(e1 >= Duration::from_millis(50), "timer fired early: {e1:?}");
    let c = get(&port);
    let e2 = t0.elapsed();
    assert_eq!((c.kind, c.token, c.op), (OpKind::Timer, 1, late));
    assert!(
        e2 >= Duration::from_millis(150),
        "timer fired early: {e2:?}"
    );
    no_packet(&port, Duration::from_millis(20));
}

/// A per-operation deadline completes an idle receive with `TimedOut`; a
/// deadline that was not reached never fires later (even when the slot is
/// reused); a pooled stream's deadline ends it with one final completion.
pub fn op_deadline(t: &Target) {
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 61);
    let t0 = Instant::now();
    let op = port
        .recv(
            &h,
            vec_with(b"d", 16),
            OpOptions::with_timeout(7, Duration::from_millis(50)),
        )
        .unwrap();
    let mut comp = get(&port);
    let el = t0.elapsed();
    assert_eq!((comp.kind, comp.token, comp.op), (OpKind::Recv, 7, op));
    assert_eq!(
        comp.result.as_ref().unwrap_err().kind(),
        ErrorKind::TimedOut,
        "{}",
        brief(&comp)
    );
    assert!(!comp.is_aborted(), "a deadline is TimedOut, not aborted");
    assert!(
        el >= Duration::from_millis(50),
        "deadline fired early: {el:?}"
    );
    assert_eq!(comp.take_buf().unwrap().as_slice(), b"d");
    no_packet(&port, Duration::from_millis(50));

    port.recv(
        &h,
        Vec::with_capacity(16),
        OpOptions::with_timeout(8, Duration::from_millis(100)),
    )
    .unwrap();
    c.write_all(b"x").unwrap();
    let comp = get(&port);
    assert_eq!((comp.token, comp.bytes()), (8, 1), "{}", brief(&comp));
    port.recv(&h, Vec::with_capacity(16), 9).unwrap();
    no_packet(&port, Duration::from_millis(250)); // op 8's deadline passes
    c.write_all(b"y").unwrap();
    let comp = get(&port);
    assert_eq!(
        (comp.token, comp.bytes()),
        (9, 1),
        "a stale deadline hit a later op: {}",
        brief(&comp)
    );

    let op = port
        .recv_pooled(&h, OpOptions::with_timeout(10, Duration::from_millis(50)))
        .unwrap();
    let comp = get(&port);
    assert_eq!(
        (comp.kind, comp.token, comp.op, comp.more),
        (OpKind::RecvPooled, 10, op, false)
    );
    assert_eq!(
        comp.result.as_ref().unwrap_err().kind(),
        ErrorKind::TimedOut,
        "{}",
        brief(&comp)
    );
    no_packet(&port, Duration::from_millis(50));
}

/// `engine_stats().timers` once the engine has caught up (an inline port's
/// engine turns only inside `get`, and a driven port's takes in what this
/// thread started after a `get` at its next `get`: poll it).
fn timers_settle(t: &Target, port: &Port, want: u64, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        if t.inline || driven(port) {
            no_packet(port, Duration::ZERO);
        }
        let last = port.engine_stats().timers;
        if last == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {last} timers pending after {T:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Pending timers are bounded by the live operations with a deadline plus
/// the pending `post_after` timers: a deadline goes with its operation,
/// whether it completed, was cancelled or timed out. 10,000 receives with a
/// 60 s deadline that all complete leave none behind.
pub fn timers_bounded(t: &Target) {
    const N: u64 = 10_000;
    let long = Duration::from_secs(60);
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 71);
    assert_eq!(port.engine_stats().timers, 0, "a new port has no timers");
    for i in 0..3 {
        port.post_after(long, 72, i).unwrap();
    }
    for i in 0..N {
        port.recv(&h, Vec::with_capacity(1), OpOptions::with_timeout(i, long))
            .unwrap();
    }
    timers_settle(t, &port, N + 3, "every receive and post_after started");
    c.write_all(&vec![7u8; N as usize]).unwrap();
    for i in 0..N {
        let comp = get(&port);
        assert_eq!((comp.token, comp.bytes()), (i, 1), "{}", brief(&comp));
    }
    timers_settle(t, &port, 3, "the receives completed; the post_after remain");

    // Cancelled: its deadline goes with it.
    let op = port
        .recv(&h, Vec::with_capacity(1), OpOptions::with_timeout(80, long))
        .unwrap();
    timers_settle(t, &port, 4, "one more receive");
    h.cancel(op).unwrap();
    let comp = get(&port);
    assert!(comp.is_aborted(), "{}", brief(&comp));
    timers_settle(t, &port, 3, "the cancelled receive's deadline is gone");

    // Timed out: the timer fired and is gone.
    recv_timing_out(&port, &h, 1, 81, Duration::from_millis(30));
    timers_settle(t, &port, 3, "the fired deadline is gone");

    // A handle closed with operations in flight: their deadlines go too.
    for i in 0..5 {
        port.recv(
            &h,
            Vec::with_capacity(1),
            OpOptions::with_timeout(90 + i, long),
        )
        .unwrap();
    }
    timers_settle(t, &port, 8, "five receives pending");
    h.close();
    for _ in 0..5 {
        assert!(get(&port).is_aborted());
    }
    timers_settle(t, &port, 3, "the closed handle's deadlines are gone");
    // Closed: the pending post_after timers go with the port.
    port.close();
    assert_eq!(port.engine_stats().timers, 0, "a closed port has no timers");
}
