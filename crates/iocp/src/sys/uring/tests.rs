//! The io_uring engine driven directly, for what the public API cannot
//! force: CQEs the kernel sends only now and then, slots reused under them,
//! every error a standing accept can meet.
//!
//! The engine's `user_data`: a late CQE or an `AsyncCancel` meant for an
//! operation whose slot has since been reused must not reach the operation
//! now in that slot. Two tests drive an engine directly: op A (a receive with data waiting)
//! completes and frees its slot; op B (a receive with nothing to read)
//! takes the same slot. Then something addressed to A arrives — a CQE made
//! up with A's `user_data`, or a real `AsyncCancel` of A's `user_data` —
//! and B must stay pending until its own data comes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use std::io;

use super::ud::{CANCEL_UD, POLL_BIT};
use super::*;
use crate::buf::Buf;
use crate::kit::accept::{self, Verdict};
use crate::op::{OpId, OpKind};
use crate::pool::PoolShared;
use crate::sys::common::{test_config, OpData, SocketFd};

struct Rig {
    engine: UringEngine,
    /// Client ends of handle 1 (op A) and handle 2 (op B).
    peers: Vec<TcpStream>,
    done: Vec<Completion>,
}

fn pair() -> (OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (s.into(), c)
}

/// An engine with two connected handles; `None` when io_uring does not
/// work on this machine and `IOCP_ALLOW_MISSING_BACKEND` allows the skip
/// (otherwise the test fails, as the conformance suite's do).
fn rig() -> Option<Rig> {
    let cfg = test_config();
    let shared = EngineShared::new(PoolShared::new(cfg.pool_bufs, cfg.pool_buf_size)).unwrap();
    let engine = match UringEngine::new(shared, Some(Queue::new(1)), &cfg, RingMode::Owned) {
        Ok(e) => e,
        Err(e) => {
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let why = format!("io_uring does not work here: {e}");
            iocp_test_support::backend_missing(&test, "uring", &why);
            return None;
        }
    };
    let mut r = Rig {
        engine,
        peers: Vec::new(),
        done: Vec::new(),
    };
    for hid in [1, 2] {
        let (fd, c) = pair();
        let (_sock, fd) = SocketFd::new(fd);
        r.engine.register(hid, fd, hid, Kind::Socket);
        r.peers.push(c);
    }
    Some(r)
}

impl Rig {
    fn recv(&mut self, hid: u64, id: u64) -> usize {
        self.start(hid, id, OpData::Recv(Buf::from(Vec::with_capacity(64))))
    }

    /// Starts operation `id` on handle `hid`; returns its slot.
    fn start(&mut self, hid: u64, id: u64, data: OpData) -> usize {
        self.engine.start(OpReq {
            hid,
            key: hid,
            id,
            token: id,
            deadline: None,
            data,
        });
        *self.engine.handles[&hid]
            .ops
            .last()
            .expect("the op has a slot")
    }

    /// Turns the engine for about `d`, keeping what completed.
    fn turn_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.engine.turn(Some(Duration::from_millis(5)), true);
            self.done.append(&mut self.engine.core.out);
        }
    }

    /// Turns until op `id` completes (bounded).
    fn wait_for(&mut self, id: u64) -> Completion {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = self.done.iter().position(|c| c.op.as_u64() == id) {
                return self.done.remove(p);
            }
            assert!(Instant::now() < until, "op {id} did not complete");
            self.turn_for(Duration::from_millis(5));
        }
    }

    /// Op A completes and frees its slot; op B reuses it. Returns A's
    /// `user_data` as it was issued.
    fn reuse_slot(&mut self) -> u64 {
        self.peers[0].write_all(b"a").unwrap();
        let a = self.recv(1, 10);
        let a_ud = self.engine.user_data(a);
        let c = self.wait_for(10);
        assert_eq!(c.result.as_ref().ok(), Some(&1), "{c:?}");
        let b = self.recv(2, 20);
        assert_eq!(a, b, "B reuses A's slot (the scenario needs it)");
        let b_ud = self.engine.user_data(b);
        assert_ne!(a_ud, b_ud, "a reused slot gets a new name");
        assert_eq!(self.engine.slot_of(b_ud), Some(b));
        assert_eq!(
            self.engine.slot_of(a_ud),
            None,
            "A's name names nothing now"
        );
        for ud in [a_ud, b_ud] {
            assert_eq!(ud & (POLL_BIT | 1 << 63), 0, "{ud:#x}");
            assert!(ud != WAKE_UD && ud != CANCEL_UD);
        }
        self.turn_for(Duration::from_millis(20));
        assert!(self.done.is_empty(), "B waits for data: {:?}", self.done);
        a_ud
    }

    /// B is still pending; its own data completes it normally.
    fn b_unharmed(&mut self, what: &str) {
        self.turn_for(Duration::from_millis(50));
        assert!(
            self.done.is_empty(),
            "{what} reached op B, which reused A's slot: {:?}",
            self.done
        );
        self.peers[1].write_all(b"bb").unwrap();
        let c = self.wait_for(20);
        assert_eq!(c.result.as_ref().ok(), Some(&2), "{what}: B ended {c:?}");
        self.engine.shutdown();
    }
}

#[test]
fn late_cqe_for_reused_slot_is_ignored() {
    let Some(mut r) = rig() else { return };
    let a_ud = r.reuse_slot();
    // A CQE for A arriving now (as one could after a kernel retry).
    r.engine.on_cqe(a_ud, -libc::ECANCELED, 0);
    r.done.append(&mut r.engine.core.out);
    r.b_unharmed("a late CQE for A");
}

#[test]
fn stale_cancel_misses_reused_slot() {
    let Some(mut r) = rig() else { return };
    let a_ud = r.reuse_slot();
    // A cancel of A submitted only now, after its slot was reused.
    r.engine.push_cancel(a_ud);
    r.b_unharmed("a cancel of A");
}

/// A send (and a receive) whose cancel was requested while the kernel
/// retried it, and whose CQE then says `EAGAIN`, completes aborted — or
/// timed out, for a deadline — and is not re-issued. The engine never turns
/// here, so the SQEs it queues are never submitted: the kernel holds no
/// operation and the slot may be freed.
#[test]
fn eagain_after_cancel_is_aborted() {
    for (timed_out, kind) in [
        (false, OpKind::Send),
        (true, OpKind::Send),
        (false, OpKind::Recv),
    ] {
        let Some(mut r) = rig() else { return };
        let data = match kind {
            OpKind::Send => OpData::Send(Buf::from(vec![1u8; 100])),
            _ => OpData::Recv(Buf::from(Vec::with_capacity(100))),
        };
        let idx = r.start(1, 1, data);
        let ud = r.engine.user_data(idx);
        let why = if timed_out {
            Stop::Deadline
        } else {
            Stop::Cancel
        };
        r.engine.stop(idx, why);
        r.engine.on_cqe(ud, -libc::EAGAIN, 0);
        let c = r.engine.core.out.pop().expect("the operation completed");
        assert!(r.engine.core.out.is_empty() && r.engine.slot_of(ud).is_none());
        let err = c.result.as_ref().expect_err("it failed");
        if timed_out {
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{kind:?}: {err:?}");
        } else {
            assert!(error::is_aborted(err), "{kind:?}: {err:?}");
        }
    }
}

/// The standing accept applies the accept policy: each error it may meet,
/// fed to it as the CQE that ends a multishot arm, is passed over or
/// reported, and accepting goes on at once or after the back-off — or the
/// accept ends with it. The engine never turns here, so the SQEs it queues
/// are never submitted.
#[test]
fn standing_accept_follows_the_policy() {
    let Some(mut r) = rig() else { return };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_sock, fd) = SocketFd::new(l.into());
    r.engine.register(3, fd, 3, Kind::Socket);
    let mut id = 100;
    accept::check_backend("io_uring", |code| {
        id += 1;
        let idx = r.start(3, id, OpData::AcceptMulti);
        let ud = r.engine.user_data(idx);
        r.engine.on_cqe(ud, -code, 0);
        let c = r.engine.core.out.pop();
        assert!(r.engine.core.out.is_empty(), "{:?}", r.engine.core.out);
        if let Some(c) = &c {
            let err = c.result.as_ref().expect_err("an error completion");
            assert_eq!(err.raw_os_error(), Some(code), "{c:?}");
        }
        let more = c.as_ref().map(|c| c.more);
        let verdict = match (r.engine.ops.get(idx).map(|s| s.phase), more) {
            (None, Some(false)) => return Verdict::End,
            (Some(Phase::Issued), None) => Verdict::Retry,
            (Some(Phase::Issued), Some(true)) => Verdict::Again,
            (Some(Phase::Parked(Park::BackOff)), Some(true)) => {
                assert_eq!(r.engine.core.timers.len(), 1, "one re-arm timer");
                Verdict::BackOff
            }
            other => panic!("{code}: (phase, more) {other:?}"),
        };
        // End it (as a cancel would) before the next code.
        r.engine.stop(idx, Stop::Cancel);
        if r.engine.ops.get(idx).is_some() {
            r.engine.on_cqe(ud, -libc::ECANCELED, 0);
        }
        let c = r.engine.core.out.pop().expect("the final completion");
        assert!(
            c.is_aborted() && !c.more && r.engine.ops.get(idx).is_none(),
            "{c:?}"
        );
        assert_eq!(r.engine.core.timers.len(), 0, "its timer left with it");
        verdict
    });
}

/// Once the drain gives up (after its time limit: what the kernel still
/// holds is leaked, the descriptors are released), the engine never enters
/// its ring again, not even when dropped. An SQE left in the SQ — here a
/// send that was never submitted — names a descriptor number that another
/// socket may have by then: a borrow keeps the number on the same socket
/// here, so a late submission would show as bytes at its peer.
#[test]
fn no_ring_entry_after_the_drain_gives_up() {
    let Some(mut r) = rig() else { return };
    let (fd, mut peer) = pair();
    let (sock, fd) = SocketFd::new(fd);
    r.engine.register(3, fd, 3, Kind::Socket);
    // A turn arms the eventfd read (what `Drop` would wait for).
    r.turn_for(Duration::from_millis(5));
    assert!(
        r.engine.wake_armed,
        "the scenario needs the wake-up read armed"
    );
    // Queued in the SQ, not submitted: the engine does not turn again.
    r.start(3, 1, OpData::Send(Buf::from(b"stale".to_vec())));
    r.engine.drain_limit = Duration::ZERO;
    let mut engine = r.engine;
    sock.borrow(|_| {
        engine.shutdown();
        assert!(engine.handles.is_empty(), "the drain gave up and released");
        drop(engine);
    })
    .expect("the descriptor was open");
    // The borrow ended: the socket is closed now.
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).expect("EOF");
    assert!(
        got.is_empty(),
        "the engine entered its ring after giving up: the stale send went out ({:?})",
        String::from_utf8_lossy(&got)
    );
}

/// The timer packet `token` due at `at`, scheduled straight in the engine.
fn post_at(r: &mut Rig, at: Instant, token: u64) {
    let c = Completion::new(OpKind::Timer, 0, token, OpId(token), Ok(0));
    r.engine.core.timers.add(at, TimerItem::Post(c));
}

/// A turn reads the clock once, before its wait; a turn whose wait the
/// kernel ends with nothing made reads it again, so a turn that waits
/// for a timer delivers it itself — not early, and not a turn later.
#[test]
fn turn_waiting_for_a_timer_delivers_it() {
    let Some(mut r) = rig() else { return };
    let at = Instant::now() + Duration::from_millis(30);
    post_at(&mut r, at, 7);
    r.engine.turn(Some(Duration::from_secs(5)), true);
    let now = Instant::now();
    let out = std::mem::take(&mut r.engine.core.out);
    assert_eq!(
        out.len(),
        1,
        "the timer's packet, in the turn that waited: {out:?}"
    );
    assert_eq!(out[0].token, 7);
    assert!(now >= at, "fired {:?} early", at - now);
    r.engine.shutdown();
}

/// A turn that makes a completion does not read the clock after its wait:
/// a timer that fell due meanwhile fires at the next turn's intake, and
/// one not due never fires with it.
#[test]
fn turn_with_a_completion_fires_only_due_timers() {
    let Some(mut r) = rig() else { return };
    let soon = Instant::now() + Duration::from_millis(20);
    let late = Instant::now() + Duration::from_secs(30);
    post_at(&mut r, soon, 1);
    post_at(&mut r, late, 2);
    r.recv(1, 10);
    r.peers[0].write_all(b"a").unwrap();
    let c = r.wait_for(10);
    assert_eq!(c.result.as_ref().ok(), Some(&1), "{c:?}");
    // Past `soon`: whichever turn takes it in, the next one fires it.
    std::thread::sleep(soon.saturating_duration_since(Instant::now()));
    r.engine.turn(Some(Duration::ZERO), false);
    r.done.append(&mut r.engine.core.out);
    let tokens: Vec<u64> = r.done.iter().map(|c| c.token).collect();
    assert_eq!(tokens, [1], "the due timer, and only it: {:?}", r.done);
    r.engine.shutdown();
}

/// The engine keeps its earliest timer in the kernel: a turn that waits
/// with no bound of its own is ended by the kernel when the timer is due —
/// also when a sooner timer arrives after a later one was armed.
#[test]
fn kernel_ends_an_unbounded_wait_at_the_earliest_timer() {
    let Some(mut r) = rig() else { return };
    post_at(&mut r, Instant::now() + Duration::from_secs(60), 1);
    r.engine.turn(Some(Duration::ZERO), false);
    assert!(r.engine.core.out.is_empty());
    let at = Instant::now() + Duration::from_millis(30);
    post_at(&mut r, at, 2);
    // No timeout: only the kernel's timer can end these waits (a turn may
    // take the timer's report without anything due yet, if the first wait
    // ended early).
    let mut turns = 0;
    while r.engine.core.out.is_empty() {
        turns += 1;
        assert!(turns <= 3, "no packet after {turns} turns");
        r.engine.turn(None, true);
    }
    let now = Instant::now();
    let out = std::mem::take(&mut r.engine.core.out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].token, 2);
    assert!(now >= at, "fired {:?} early", at - now);
    assert_eq!(r.engine.core.timers.len(), 1, "the later timer is left");
    r.engine.shutdown();
}
