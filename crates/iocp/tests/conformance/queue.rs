//! The port's queue and its waiters: each packet to exactly one waiter,
//! LIFO wake-up, the concurrency limit and the blocking guard, timed-out
//! gets, batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use completion_port::{Backend, GetError, OpKind, Port};

use crate::util::*;
use crate::ZERO;

/// Any thread may wait; each packet goes to exactly one waiter, exactly once.
/// N posting threads × M posts; every (key, token) is seen exactly once, and
/// each getter sees each poster's packets in order (the queue is FIFO).
pub fn exactly_once(t: &Target) {
    const POSTERS: u64 = 4;
    const EACH: u64 = 2000;
    const STOP: u64 = u64::MAX;
    let port = t.build(t.builder().concurrency(2));
    let d0 = port.stats().delivered;
    let seen: Arc<Vec<AtomicU8>> =
        Arc::new((0..POSTERS * EACH).map(|_| AtomicU8::new(0)).collect());

    let consume = {
        let seen = seen.clone();
        move |port: &Port, until: Option<u64>| {
            let mut last: HashMap<u64, u64> = HashMap::new();
            let mut n = 0u64;
            loop {
                if until == Some(n) {
                    return;
                }
                let c = get(port);
                if c.key == STOP {
                    return;
                }
                assert_eq!(c.kind, OpKind::Post);
                assert!(
                    c.key < POSTERS && c.token < EACH,
                    "foreign packet {}",
                    brief(&c)
                );
                assert_eq!(c.bytes() as u64, c.token * 3, "bytes of {}", brief(&c));
                if let Some(prev) = last.insert(c.key, c.token) {
                    assert!(
                        prev < c.token,
                        "poster {} out of order: {prev} then {}",
                        c.key,
                        c.token
                    );
                }
                let before =
                    seen[(c.key * EACH + c.token) as usize].fetch_add(1, Ordering::Relaxed);
                assert_eq!(before, 0, "duplicate {}", brief(&c));
                n += 1;
            }
        }
    };
    let getters: Vec<_> = if t.inline {
        Vec::new()
    } else {
        (0..3)
            .map(|_| {
                let (p, f) = (port.clone(), consume.clone());
                std::thread::spawn(move || f(&p, None))
            })
            .collect()
    };
    let posters: Vec<_> = (0..POSTERS)
        .map(|k| {
            let p = port.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    p.post(k, (i * 3) as usize, i).expect("post");
                }
            })
        })
        .collect();
    if t.inline {
        // Only the owner gets from an inline port.
        consume(&port, Some(POSTERS * EACH));
    }
    for p in posters {
        p.join().expect("poster");
    }
    if !t.inline {
        // Queued after every real packet, so FIFO puts them last.
        for _ in 0..getters.len() {
            port.post(STOP, 0, 0).unwrap();
        }
    }
    let stops = getters.len() as u64;
    for g in getters {
        g.join().expect("getter");
    }
    let missing = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) != 1)
        .count();
    assert_eq!(missing, 0, "{missing} packets not seen exactly once");
    let st = port.stats();
    assert_eq!(st.queued, 0, "{st:?}");
    assert_eq!(st.delivered - d0, POSTERS * EACH + stops, "{st:?}");
    no_packet(&port, Duration::ZERO);
}

/// Waiters are woken LIFO, one per packet: three waiters parked in a known
/// order; each post wakes exactly the most recent one.
pub fn lifo_wake(t: &Target) {
    let port = t.build(t.builder().concurrency(8));
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for w in 0..3usize {
        let (p, tx) = (port.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let r = token_of(p.get(Some(T)));
            tx.send((w, r)).unwrap();
        }));
        wait_until(&format!("waiter {w} is parked"), || {
            port.stats().waiting == w + 1
        });
    }
    let h0 = port.stats().handoffs;
    for (i, expect) in [(100u64, 2usize), (101, 1), (102, 0)] {
        let before = port.stats().waiting;
        port.post(0, 0, i).unwrap();
        // The waiter is popped and handed the packet inside `post`.
        assert_eq!(port.stats().waiting, before - 1, "exactly one waiter woken");
        let (w, r) = rx.recv_timeout(T).expect("a waiter returns");
        assert_eq!(
            (w, r),
            (expect, Ok(i)),
            "most recent waiter gets the packet"
        );
        assert!(rx.try_recv().is_err(), "only one waiter returned");
    }
    for th in threads {
        th.join().unwrap();
    }
    let st = port.stats();
    assert_eq!((st.waiting, st.queued), (0, 0), "{st:?}");
    assert_eq!(
        st.handoffs - h0,
        3,
        "posted here, taken elsewhere: 3 hand-offs; {st:?}"
    );
}

/// A port of concurrency 1 with packets 1 and 2 posted: actor A took 1 and
/// runs, actor B waits in a `get` (`pb`, its result).
fn a_runs_b_waits(t: &Target) -> (Port, Actor, Actor, Pending<Result<u64, GetError>>) {
    let port = t.build(t.builder().concurrency(1));
    let (a, b) = (Actor::new("A", &port), Actor::new("B", &port));
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(1));
    let pb = b.start("get", |s| token_of(s.port.get(Some(T))));
    wait_until("B waits", || port.stats().waiting == 1);
    (port, a, b, pb)
}

/// Concurrency limit 1: while A runs (holds a packet), B waits even though a
/// packet is queued. A calling `get` again releases its slot: with a packet
/// queued it takes it at once (no wait, B still waits); with none it waits
/// with running == 0, and the next packet goes to it (most recent waiter).
pub fn limit_running_blocks_waiters(t: &Target) {
    let (port, a, _b, pb) = a_runs_b_waits(t);
    let st = port.stats();
    assert_eq!(
        (st.running, st.waiting, st.queued),
        (1, 1, 1),
        "B must wait while A runs: {st:?}"
    );
    assert!(pb.ready().is_none(), "B got a packet past the limit");

    // A running thread that calls get while packets are queued takes one at once.
    assert_eq!(a.call("get again", |s| token_of(s.port.get(ZERO))), Ok(2));
    let st = port.stats();
    assert_eq!((st.running, st.waiting, st.queued), (1, 1, 0), "{st:?}");
    assert!(pb.ready().is_none());

    // A waits: its slot is free while it does.
    let pa = a.start("wait", |s| token_of(s.port.get(Some(T))));
    wait_until("A waits too", || port.stats().waiting == 2);
    assert_eq!(port.stats().running, 0, "a waiting thread does not count");
    port.post(0, 0, 3).unwrap();
    assert_eq!(pa.wait(), Ok(3), "the most recent waiter (A) is woken");
    port.post(0, 0, 4).unwrap();
    let st = port.stats();
    assert_eq!(
        (st.running, st.waiting, st.queued),
        (1, 1, 1),
        "limit reached again: {st:?}"
    );
    port.close();
    assert_eq!(pb.wait(), Err(GetError::Abandoned));
}

/// A batch from `get_many` counts as one running thread.
pub fn limit_batch_counts_once(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    let (a, b) = (Actor::new("A", &port), Actor::new("B", &port));
    for i in 0..5 {
        port.post(0, 0, i).unwrap();
    }
    let got = a.call("get_many 3", |s| {
        let mut v = Vec::new();
        s.port.get_many(&mut v, 3, ZERO).map(|_| tokens(&v))
    });
    assert_eq!(got, Ok(vec![0, 1, 2]));
    assert_eq!(port.stats().running, 1, "a batch counts once");
    let pb = b.start("get", |s| token_of(s.port.get(Some(T))));
    wait_until("B waits", || port.stats().waiting == 1);
    let st = port.stats();
    assert_eq!((st.running, st.waiting, st.queued), (1, 1, 2), "{st:?}");
    let got = a.call("get_many 10", |s| {
        let mut v = Vec::new();
        s.port.get_many(&mut v, 10, ZERO).map(|_| tokens(&v))
    });
    assert_eq!(got, Ok(vec![3, 4]));
    assert_eq!(port.stats().running, 1);
    assert!(pb.ready().is_none());
    port.post(0, 0, 5).unwrap();
    a.exit();
    assert_eq!(pb.wait(), Ok(5));
}

/// A thread that exits releases its slot.
pub fn limit_thread_exit_releases(t: &Target) {
    let (port, a, b, pb) = a_runs_b_waits(t);
    assert_eq!(port.stats().queued, 1);
    a.exit();
    assert_eq!(pb.wait(), Ok(2), "A's exit released its slot to B");
    let st = port.stats();
    assert_eq!((st.running, st.waiting, st.queued), (1, 0, 0), "{st:?}");
    b.exit();
    assert_eq!(port.stats().running, 0, "B's exit released its slot");
}

/// `port.blocking()` steps the thread out of the count (B gets a packet while
/// A is inside the guard) and re-enters on drop (running may exceed the
/// limit; no new packet is released until it falls below again).
pub fn limit_blocking_guard(t: &Target) {
    let (port, a, b, pb) = a_runs_b_waits(t);
    assert!(pb.ready().is_none());
    a.call("enter blocking", |s| s.guard = Some(s.port.blocking()));
    assert_eq!(pb.wait(), Ok(2), "B released while A blocks elsewhere");
    assert_eq!(
        port.stats().running,
        1,
        "only B counts while A is in the guard"
    );
    a.call("leave blocking", |s| s.guard = None);
    assert_eq!(
        port.stats().running,
        2,
        "A counts again: running exceeds the limit"
    );
    port.post(0, 0, 3).unwrap();
    assert_eq!(port.stats().queued, 1, "no packet released above the limit");
    assert_eq!(
        a.call("get", |s| token_of(s.port.get(ZERO))),
        Err(GetError::TimedOut),
        "A released its slot but B still fills the limit"
    );
    b.exit();
    assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(3));
    // A guard on a thread that is not running changes nothing.
    let before = port.stats().running;
    let g = port.blocking();
    assert_eq!(port.stats().running, before);
    drop(g);
    assert_eq!(port.stats().running, before);
}

/// An inline port's owner waits in its engine, not on the queue's stack.
/// Limit 1, and another thread A holds the slot (it took a posted packet),
/// so a second packet stays queued while the owner sleeps in its engine.
/// When A leaves the count — with `blocking()`, or by exiting — the owner
/// is woken to take that packet at once, not left asleep until unrelated
/// news or its own timeout.
pub fn inline_owner_woken_by_release(t: &Target) {
    for exits in [false, true] {
        let how = if exits { "A exits" } else { "A steps out" };
        let port = t.build(t.builder().concurrency(1));
        let a = Actor::new("A", &port);
        port.post(0, 0, 1).unwrap();
        assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(1));
        port.post(0, 0, 2).unwrap();
        // A leaves while the owner is asleep in its engine (below).
        let leaving = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            if exits {
                a.exit();
                None
            } else {
                a.call("blocking", |s| s.guard = Some(s.port.blocking()));
                Some(a)
            }
        });
        let t0 = Instant::now();
        let got = token_of(port.get(Some(Duration::from_secs(6))));
        let took = t0.elapsed();
        assert_eq!(got, Ok(2), "{how}");
        assert!(
            took < Duration::from_secs(4),
            "{how}: the owner took the queued packet only after {took:?}"
        );
        if let Some(a) = leaving.join().expect("leaving thread") {
            a.call("drop guard", |s| s.guard = None);
        }
        port.close();
    }
}

/// `(running, waiting)` of `port`, for exact assertions on the count.
fn run_wait(port: &Port) -> (usize, usize) {
    let st = port.stats();
    (st.running, st.waiting)
}

/// Runs `steps` on [`running_with_posted`]`(t, n)`, then checks that the
/// port is [`drained_and_idle`].
fn guard_clause(t: &Target, n: u64, steps: impl FnOnce(&Port)) {
    let port = running_with_posted(t, n);
    steps(&port);
    drained_and_idle(&port);
}

/// A port of concurrency 1 with packets `1..=n` posted, the first of them
/// taken: the calling thread runs on it.
fn running_with_posted(t: &Target, n: u64) -> Port {
    let port = t.build(t.builder().concurrency(1));
    for i in 1..=n {
        port.post(0, 0, i).unwrap();
    }
    assert_eq!(token_of(port.get(ZERO)), Ok(1));
    assert_eq!(run_wait(&port), (1, 0), "after the first get");
    port
}

/// Nothing is left on `port`, and the `get` that found nothing took the
/// calling thread off the count.
fn drained_and_idle(port: &Port) {
    no_packet(port, Duration::ZERO);
    assert_eq!(run_wait(port), (0, 0), "a get that found nothing");
}

/// A `get` inside a `blocking()` guard makes the thread run again, so the
/// guard's drop must not count it a second time. Concurrency 1: post 3,
/// `get`, `blocking()`, `get`, drop the guard, then `get` once more: the
/// third packet comes out at once (an inflated count holds it back for good,
/// with no thread running).
pub fn blocking_guard_get_inside(t: &Target) {
    guard_clause(t, 3, |port| {
        let g = port.blocking();
        assert_eq!(run_wait(port), (0, 0), "inside the guard");
        assert_eq!(token_of(port.get(Some(T))), Ok(2), "get inside the guard");
        assert_eq!(run_wait(port), (1, 0), "the get inside the guard runs");
        drop(g);
        assert_eq!(
            run_wait(port),
            (1, 0),
            "the guard's drop counted the thread twice"
        );
        let r = token_of(port.get(Some(Duration::from_millis(500))));
        assert_eq!(r, Ok(3), "the last packet is stuck: {:?}", port.stats());
        assert_eq!(run_wait(port), (1, 0));
        drained_and_idle(port);

        // A guard inside a running period, and a get_many inside a guard.
        port.post(0, 0, 4).unwrap();
        port.post(0, 0, 5).unwrap();
        assert_eq!(token_of(port.get(ZERO)), Ok(4));
        drop(port.blocking());
        assert_eq!(run_wait(port), (1, 0), "get, blocking(), drop");
        let g = port.blocking();
        let mut batch = Vec::new();
        assert_eq!(port.get_many(&mut batch, 8, Some(T)), Ok(1));
        assert_eq!(run_wait(port), (1, 0));
        drop(g);
        assert_eq!(run_wait(port), (1, 0), "get_many inside the guard");
    });
}

/// A forgotten guard (`mem::forget`) is never dropped: the thread stays out
/// of the count until its next `get`, and a guard taken before that joins
/// the forgotten one (nothing tells it from a live outer guard), so its drop
/// puts nothing back. The next `get` ends it: the count is exact again, and
/// guards work as before.
pub fn blocking_guard_forgotten(t: &Target) {
    guard_clause(t, 2, |port| {
        std::mem::forget(port.blocking());
        assert_eq!(run_wait(port), (0, 0), "a forgotten guard");
        drop(port.blocking());
        assert_eq!(
            run_wait(port),
            (0, 0),
            "a guard that joined a forgotten one puts nothing back"
        );
        assert_eq!(token_of(port.get(ZERO)), Ok(2));
        assert_eq!(run_wait(port), (1, 0), "the next get counts the thread");
        let g = port.blocking();
        assert_eq!(run_wait(port), (0, 0));
        drop(g);
        assert_eq!(run_wait(port), (1, 0), "a guard after the get");
    });
}

/// Nested guards: the thread stays out of the count until its last guard
/// drops, in whichever order they drop; a guard left over from an earlier
/// running period (a `get` came in between) restores nothing.
pub fn blocking_guard_nested(t: &Target) {
    guard_clause(t, 3, |port| {
        for inner_first in [true, false] {
            let (g1, g2) = (port.blocking(), port.blocking());
            assert_eq!(run_wait(port), (0, 0), "two guards");
            let (first, second) = if inner_first { (g2, g1) } else { (g1, g2) };
            drop(first);
            assert_eq!(
                run_wait(port),
                (0, 0),
                "one guard left (inner dropped first: {inner_first})"
            );
            drop(second);
            assert_eq!(
                run_wait(port),
                (1, 0),
                "both guards gone (inner dropped first: {inner_first})"
            );
        }
        // A get inside nested guards: the thread runs from the get on.
        let (g1, g2) = (port.blocking(), port.blocking());
        assert_eq!(token_of(port.get(ZERO)), Ok(2));
        drop(g2);
        drop(g1);
        assert_eq!(run_wait(port), (1, 0), "get inside nested guards");
        // A stale guard: taken, then a get, then a new guard.
        let stale = port.blocking();
        assert_eq!(token_of(port.get(ZERO)), Ok(3));
        let fresh = port.blocking();
        assert_eq!(run_wait(port), (0, 0));
        drop(stale);
        assert_eq!(run_wait(port), (0, 0), "a stale guard re-entered the count");
        drop(fresh);
        assert_eq!(run_wait(port), (1, 0));
    });
}

std::thread_local! {
    /// A guard parked in a thread-local, dropped while the thread exits.
    static PARKED_GUARD: std::cell::RefCell<Option<completion_port::BlockingGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// A thread that exits with a live guard (dropped with the thread's state,
/// parked in a thread-local, or forgotten) leaves the count exact: nothing
/// of it is counted afterwards, and the next packet goes to another thread.
/// Also a get inside a guard on one thread while another waits: when the
/// first thread exits, its one slot goes to the waiter.
pub fn blocking_guard_thread_exit(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    type Park = fn(&mut ActorState);
    let ways: [(&str, Park); 3] = [
        ("kept in the thread's state", |s| {
            s.guard = Some(s.port.blocking())
        }),
        ("parked in a thread-local", |s| {
            let g = s.port.blocking();
            PARKED_GUARD.with(|p| *p.borrow_mut() = Some(g));
        }),
        ("forgotten", |s| std::mem::forget(s.port.blocking())),
    ];
    for (i, (how, park)) in ways.into_iter().enumerate() {
        let i = i as u64;
        port.post(0, 0, 10 + i).unwrap();
        let a = Actor::new("A", &port);
        assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(10 + i));
        a.call("take a guard", park);
        assert_eq!(run_wait(&port), (0, 0), "A inside a guard {how}");
        a.exit();
        assert_eq!(run_wait(&port), (0, 0), "A exited with a guard {how}");
    }

    // A gets inside its guard while B waits; when A exits, B takes over.
    let (a, b) = (Actor::new("A", &port), Actor::new("B", &port));
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(1));
    let got = a.call("blocking, get inside, drop", |s| {
        let g = s.port.blocking();
        let r = token_of(s.port.get(ZERO));
        drop(g);
        r
    });
    assert_eq!(got, Ok(2));
    assert_eq!(run_wait(&port), (1, 0), "A counted once");
    port.post(0, 0, 3).unwrap();
    let pb = b.start("get", |s| token_of(s.port.get(Some(T))));
    if t.backend == Backend::Iocp {
        // The kernel decides whether B waits behind A.
        say(format!(
            "conformance::{}::blocking_guard_thread_exit: on iocp the kernel schedules the \
             waiters, so whether B waits while A runs is not asserted{}",
            t.backend,
            iocp_test_support::wine().map_or(String::new(), |v| format!(
                " (Wine {v} ignores the concurrency limit)"
            ))
        ));
    } else {
        wait_until("B waits", || port.stats().waiting == 1);
        assert_eq!(run_wait(&port), (1, 1), "B waits behind A");
        assert!(pb.ready().is_none(), "B ran past the limit");
    }
    a.exit();
    assert_eq!(pb.wait(), Ok(3), "A's exit freed its one slot for B");
    assert_eq!(run_wait(&port), (1, 0), "only B counts");
    b.exit();
    assert_eq!(run_wait(&port), (0, 0));
}

/// `get(timeout)` that times out consumes nothing; `Some(ZERO)` polls.
pub fn timed_out_get_consumes_nothing(t: &Target) {
    let port = t.port();
    let d0 = port.stats().delivered;
    let t0 = Instant::now();
    assert_eq!(
        port.get(Some(Duration::from_millis(50))).unwrap_err(),
        GetError::TimedOut
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "returned early: {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    assert_eq!(port.get(ZERO).unwrap_err(), GetError::TimedOut);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a poll waited {:?}",
        t0.elapsed()
    );
    let st = port.stats();
    assert_eq!((st.waiting, st.queued, st.delivered), (0, 0, d0), "{st:?}");

    port.post(1, 11, 7).unwrap();
    assert_eq!(
        port.stats().queued,
        1,
        "posted after a timed-out get: still queued"
    );
    let c = port.get(ZERO).expect("the packet is still there");
    assert_eq!(
        (c.kind, c.key, c.bytes(), c.token),
        (OpKind::Post, 1, 11, 7)
    );
    let st = port.stats();
    assert_eq!((st.queued, st.delivered), (0, d0 + 1), "{st:?}");

    if !t.inline {
        // A waiter that timed out on another thread is off the stack: the next
        // post is queued, not handed to it.
        let p = port.clone();
        let r = std::thread::spawn(move || p.get(Some(Duration::from_millis(20))).map(|c| c.token))
            .join()
            .unwrap();
        assert_eq!(r, Err(GetError::TimedOut));
        assert_eq!(port.stats().waiting, 0);
        port.post(1, 0, 8).unwrap();
        assert_eq!(port.stats().queued, 1);
        assert_eq!(token_of(port.get(ZERO)), Ok(8));
    }

    // Timeouts racing posts: short gets time out again and again while a
    // thread posts; every packet still arrives exactly once, in order.
    const N: u64 = 300;
    let p = port.clone();
    let poster = std::thread::spawn(move || {
        for i in 0..N {
            p.post(2, 0, i).unwrap();
            std::thread::yield_now();
        }
    });
    let (mut got, mut timeouts) = (Vec::new(), 0);
    let deadline = Instant::now() + T;
    while (got.len() as u64) < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} packets within {T:?}",
            got.len()
        );
        match port.get(Some(Duration::from_millis(1))) {
            Ok(c) => got.push(c.token),
            Err(GetError::TimedOut) => timeouts += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    poster.join().unwrap();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "({timeouts} timeouts on the way)"
    );
    no_packet(&port, Duration::from_millis(20));
}

/// A post from another thread wakes a thread blocked in `get` at once, even
/// when it lands just as the getter goes to sleep (on an inline port the
/// getter is about to block in the engine, not on the queue).
pub fn post_wakes_getter(t: &Target) {
    use std::sync::atomic::AtomicU32;
    const ROUNDS: u32 = 1500;
    const STOP: u32 = u32::MAX;
    let port = t.port();
    // `go` carries a spin count to the poster; the poster posts that many
    // spins after the getter announced it is about to call `get`, so posts
    // land all over the getter's way into its wait.
    let go = Arc::new(AtomicU32::new(0));
    let poster = {
        let (p, go) = (port.clone(), go.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + T * 3;
            loop {
                let v = go.swap(0, Ordering::SeqCst);
                if v == STOP || Instant::now() > deadline {
                    return;
                }
                if v == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                for _ in 0..v - 1 {
                    std::hint::spin_loop();
                }
                p.post(0, 0, u64::from(v)).unwrap();
            }
        })
    };
    let mut worst = Duration::ZERO;
    for i in 0..ROUNDS {
        go.store(1 + (i * 7919) % 3000, Ordering::SeqCst);
        let t0 = Instant::now();
        let r = port.get(Some(Duration::from_secs(2)));
        let took = t0.elapsed();
        worst = worst.max(took);
        if r.is_err() || took > Duration::from_secs(1) {
            go.store(STOP, Ordering::SeqCst);
            let _ = poster.join();
            panic!("round {i}: a post did not wake the getter ({r:?} after {took:?})");
        }
    }
    go.store(STOP, Ordering::SeqCst);
    poster.join().unwrap();
    println!("post_wakes_getter: worst wake-up {worst:?}");
}

/// `get_many` takes up to `max` (FIFO, appending), waits only while none are
/// queued, and consumes nothing when it times out.
pub fn get_many(t: &Target) {
    let port = t.port();
    for i in 0..5 {
        port.post(0, 0, i).unwrap();
    }
    let mut batch = Vec::new();
    assert_eq!(port.get_many(&mut batch, 3, ZERO), Ok(3));
    assert_eq!(tokens(&batch), [0, 1, 2]);
    let t0 = Instant::now();
    assert_eq!(
        port.get_many(&mut batch, 10, Some(T)),
        Ok(2),
        "takes what is there, no wait"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(tokens(&batch), [0, 1, 2, 3, 4], "appends");
    let t0 = Instant::now();
    assert_eq!(
        port.get_many(&mut batch, 4, Some(Duration::from_millis(50))),
        Err(GetError::TimedOut)
    );
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(batch.len(), 5, "a timed-out get_many adds nothing");

    // Waits only while none are queued: one packet ends the wait.
    batch.clear();
    let t0 = Instant::now();
    if t.inline {
        let p = port.clone();
        let poster = std::thread::spawn(move || p.post(0, 0, 9).unwrap());
        assert_eq!(port.get_many(&mut batch, 8, Some(T)), Ok(1));
        poster.join().unwrap();
    } else {
        let p = port.clone();
        let getter = std::thread::spawn(move || {
            let mut v = Vec::new();
            p.get_many(&mut v, 8, Some(T)).map(|_| tokens(&v))
        });
        wait_until("the getter waits", || port.stats().waiting == 1);
        port.post(0, 0, 9).unwrap();
        assert_eq!(getter.join().unwrap(), Ok(vec![9]));
    }
    assert!(
        t0.elapsed() < T / 2,
        "get_many waited for more than one packet"
    );
}
