//! The semantics contract, written once and run on every target: a backend
//! this build has, with an engine thread or inline (per-core). Each clause
//! is one test per target, `conformance::<target>::<clause>` (for example
//! `conformance::uring::lifo_wake`), so a test runner lists, filters, times
//! and retries each one:
//!
//! ```text
//! cargo nextest run -p iocp --test conformance -E 'test(/::lifo_wake$/)'
//! cargo test -p iocp --test conformance -- conformance::epoll_inline::
//! ```
//!
//! Targets: `uring`, `uring_inline`, `epoll`, `epoll_inline` (Linux), `iocp`
//! (Windows). Every clause is generated for every target; one that cannot
//! hold on a target is an ignored test whose reason says why (`cargo test`
//! prints `... ignored, <reason>`; run anyway, it prints that reason and
//! passes without running the clause). Which clause runs where is its mode
//! in the table below:
//! - `any`: every target;
//! - `threaded`: several threads waiting on one port, so not on an inline
//!   port, whose only getter is its owner thread;
//! - `scheduling`: threaded, and about the order and count the library's own
//!   port keeps (LIFO wake-up, the concurrency limit): not on IOCP, where
//!   the kernel schedules (`tests/windows.rs` checks it there);
//! - `inline`: about an inline port's owner thread, so inline targets only.
//!
//! A target whose backend cannot build a port on this machine (io_uring
//! blocked by seccomp or a sysctl, too old a kernel) fails each of its
//! tests, unless `IOCP_ALLOW_MISSING_BACKEND` names the backend (see
//! `util::ALLOW_MISSING_BACKEND`): then each test prints
//! `conformance::uring::lifo_wake SKIPPED: <reason>` and passes.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use iocp::{is_aborted, Backend, Buf, Completion, GetError, OpKind, OpOptions, Port};
use socket2::SockRef;
use util::*;

const ZERO: Option<Duration> = Some(Duration::ZERO);

/// Calls `$then!` with `$args` followed by every clause, each with its mode
/// (see the crate docs): the one table of the contract's clauses.
macro_rules! for_each_clause {
    ($then:ident!($($args:tt)*)) => {
        $then! { ($($args)*)
            any exactly_once,
            scheduling lifo_wake,
            scheduling limit_running_blocks_waiters,
            scheduling limit_batch_counts_once,
            scheduling limit_thread_exit_releases,
            scheduling limit_blocking_guard,
            any blocking_guard_get_inside,
            any blocking_guard_nested,
            threaded blocking_guard_thread_exit,
            any timed_out_get_consumes_nothing,
            any post_wakes_getter,
            any failed_op_vs_no_packet,
            any cancel_pending,
            any cancel_races_data,
            any close_handle_in_flight,
            threaded close_port_wakes_waiters,
            threaded close_port_wakes_get_many_waiters,
            any close_port_then_calls_fail,
            any port_close_closes_handles,
            any with_socket_holds_descriptor,
            any with_socket_races_close,
            inline inline_port_closed_off_thread,
            any closed_handle_completion_keeps_key,
            any get_many,
            any post_after_timer,
            any op_deadline,
            any timers_bounded,
            any send_ordering,
            any large_send_slow_peer,
            any send_vectored_refused,
            any send_vectored_many_buffers,
            any send_cancel_part_way,
            any send_deadline_part_way,
            any udp_round_trip,
            any udp_truncated_datagram,
            any udp_send_vectored_whole,
            any pooled_stream,
        }
    };
}

/// `targets! { name: Backend, kind; ... }` makes `conformance::name`, one
/// test per clause. A kind is `threaded` (an engine thread; the library
/// schedules the waiters), `inline` (no engine thread: the owner turns the
/// engine inside `get`) or `kernel` (the kernel's port schedules the
/// waiters).
macro_rules! targets {
    ($($target:ident: $backend:ident, $kind:ident;)*) => {
        /// Every target this build tests.
        const TARGETS: &[Target] = &[$(Target {
            backend: Backend::$backend,
            inline: clause_test!(@inline $kind),
        }),*];

        mod conformance {
            $(for_each_clause!(target_module!($target, $backend, $kind));)*

            /// Every backend the build has is tested by one of the targets.
            #[test]
            fn every_available_backend_is_covered() {
                for b in ::iocp::Backend::available() {
                    assert!(
                        crate::TARGETS.iter().any(|t| t.backend == *b),
                        "backend {b} has no conformance target"
                    );
                }
            }
        }
    };
}

/// The module of one target: a test per clause.
macro_rules! target_module {
    (($target:ident, $backend:ident, $kind:ident) $($mode:ident $clause:ident,)*) => {
        pub mod $target {
            const TARGET: crate::Target = crate::Target {
                backend: ::iocp::Backend::$backend,
                inline: clause_test!(@inline $kind),
            };
            $(clause_test!($target $kind $mode $clause);)*
        }
    };
}

/// One test: the clause on the module's `TARGET`, or an ignored test saying
/// why the clause cannot hold on that kind of target.
macro_rules! clause_test {
    (@inline inline) => { true };
    (@inline $kind:ident) => { false };

    ($target:ident inline threaded $clause:ident) => {
        clause_test!(@skip $target $clause "needs several threads waiting on one port; \
            an inline port's only getter is its owner thread");
    };
    ($target:ident inline scheduling $clause:ident) => {
        clause_test!(@skip $target $clause "needs several threads waiting on one port; \
            an inline port's only getter is its owner thread");
    };
    ($target:ident threaded inline $clause:ident) => {
        clause_test!(@skip $target $clause "about an inline port's owner thread; \
            this port has an engine thread");
    };
    ($target:ident kernel inline $clause:ident) => {
        clause_test!(@skip $target $clause "about an inline port's owner thread; \
            this port has none");
    };
    ($target:ident kernel scheduling $clause:ident) => {
        clause_test!(@skip $target $clause "the kernel schedules IOCP waiters: `waiting` \
            drops as the woken thread's GQCS returns, not inside `post`, and a thread blocked \
            on anything (these clauses' channels too) stops counting; tests/windows.rs checks \
            LIFO wake and the limit the kernel's way (Wine wakes FIFO and ignores the limit)");
    };
    ($target:ident $kind:ident $mode:ident $clause:ident) => {
        #[test]
        fn $clause() {
            crate::run_clause(
                TARGET,
                concat!("conformance::", stringify!($target), "::", stringify!($clause)),
                crate::$clause,
            );
        }
    };
    (@skip $target:ident $clause:ident $why:literal) => {
        #[test]
        #[ignore = $why]
        fn $clause() {
            // Not run here; named so that a clause no target runs still builds.
            let _: fn(&crate::Target) = crate::$clause;
            crate::util::say(concat!(
                "conformance::", stringify!($target), "::", stringify!($clause),
                " SKIPPED: ", $why
            ));
        }
    };
}

#[cfg(target_os = "linux")]
targets! {
    uring: Uring, threaded;
    uring_inline: Uring, inline;
    epoll: Epoll, threaded;
    epoll_inline: Epoll, inline;
}

#[cfg(windows)]
targets! {
    iocp: Iocp, kernel;
}

/// Runs one clause on one target, once its backend is known to work here
/// (see [`Target::ready`]: an unavailable backend fails the test unless the
/// environment allows the skip).
fn run_clause(t: Target, test: &str, clause: fn(&Target)) {
    if t.ready(test) {
        clause(&t);
    }
}

// ---- clauses ---------------------------------------------------------------

/// Any thread may wait; each packet goes to exactly one waiter, exactly once.
/// N posting threads × M posts; every (key, token) is seen exactly once, and
/// each getter sees each poster's packets in order (the queue is FIFO).
fn exactly_once(t: &Target) {
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
fn lifo_wake(t: &Target) {
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

/// Concurrency limit 1: while A runs (holds a packet), B waits even though a
/// packet is queued. A calling `get` again releases its slot: with a packet
/// queued it takes it at once (no wait, B still waits); with none it waits
/// with running == 0, and the next packet goes to it (most recent waiter).
fn limit_running_blocks_waiters(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    let (a, b) = (Actor::new("A", &port), Actor::new("B", &port));
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(1));
    let pb = b.start("get", |s| token_of(s.port.get(Some(T))));
    wait_until("B waits", || port.stats().waiting == 1);
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
fn limit_batch_counts_once(t: &Target) {
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
fn limit_thread_exit_releases(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    let (a, b) = (Actor::new("A", &port), Actor::new("B", &port));
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(1));
    let pb = b.start("get", |s| token_of(s.port.get(Some(T))));
    wait_until("B waits", || port.stats().waiting == 1);
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
fn limit_blocking_guard(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    let (a, b) = (Actor::new("A", &port), Actor::new("B", &port));
    port.post(0, 0, 1).unwrap();
    port.post(0, 0, 2).unwrap();
    assert_eq!(a.call("get", |s| token_of(s.port.get(ZERO))), Ok(1));
    let pb = b.start("get", |s| token_of(s.port.get(Some(T))));
    wait_until("B waits", || port.stats().waiting == 1);
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

/// `(running, waiting)` of `port`, for exact assertions on the count.
fn run_wait(port: &Port) -> (usize, usize) {
    let st = port.stats();
    (st.running, st.waiting)
}

/// A `get` inside a `blocking()` guard makes the thread run again, so the
/// guard's drop must not count it a second time. Concurrency 1: post 3,
/// `get`, `blocking()`, `get`, drop the guard, then `get` once more: the
/// third packet comes out at once (an inflated count holds it back for good,
/// with no thread running).
fn blocking_guard_get_inside(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    for i in 1..=3 {
        port.post(0, 0, i).unwrap();
    }
    assert_eq!(token_of(port.get(Some(T))), Ok(1));
    assert_eq!(run_wait(&port), (1, 0), "after the first get");
    let g = port.blocking();
    assert_eq!(run_wait(&port), (0, 0), "inside the guard");
    assert_eq!(token_of(port.get(Some(T))), Ok(2), "get inside the guard");
    assert_eq!(run_wait(&port), (1, 0), "the get inside the guard runs");
    drop(g);
    assert_eq!(
        run_wait(&port),
        (1, 0),
        "the guard's drop counted the thread twice"
    );
    let r = token_of(port.get(Some(Duration::from_millis(500))));
    assert_eq!(r, Ok(3), "the last packet is stuck: {:?}", port.stats());
    assert_eq!(run_wait(&port), (1, 0));
    no_packet(&port, Duration::ZERO);
    assert_eq!(run_wait(&port), (0, 0), "a get that found nothing");

    // A guard inside a running period, and a get_many inside a guard.
    port.post(0, 0, 4).unwrap();
    port.post(0, 0, 5).unwrap();
    assert_eq!(token_of(port.get(ZERO)), Ok(4));
    drop(port.blocking());
    assert_eq!(run_wait(&port), (1, 0), "get, blocking(), drop");
    let g = port.blocking();
    let mut batch = Vec::new();
    assert_eq!(port.get_many(&mut batch, 8, Some(T)), Ok(1));
    assert_eq!(run_wait(&port), (1, 0));
    drop(g);
    assert_eq!(run_wait(&port), (1, 0), "get_many inside the guard");
    no_packet(&port, Duration::ZERO);
    assert_eq!(run_wait(&port), (0, 0));
}

/// Nested guards: the thread stays out of the count until its last guard
/// drops, in whichever order they drop; a guard left over from an earlier
/// running period (a `get` came in between) restores nothing.
fn blocking_guard_nested(t: &Target) {
    let port = t.build(t.builder().concurrency(1));
    for i in 1..=3 {
        port.post(0, 0, i).unwrap();
    }
    assert_eq!(token_of(port.get(ZERO)), Ok(1));
    for inner_first in [true, false] {
        let (g1, g2) = (port.blocking(), port.blocking());
        assert_eq!(run_wait(&port), (0, 0), "two guards");
        let (first, second) = if inner_first { (g2, g1) } else { (g1, g2) };
        drop(first);
        assert_eq!(
            run_wait(&port),
            (0, 0),
            "one guard left (inner dropped first: {inner_first})"
        );
        drop(second);
        assert_eq!(
            run_wait(&port),
            (1, 0),
            "both guards gone (inner dropped first: {inner_first})"
        );
    }
    // A get inside nested guards: the thread runs from the get on.
    let (g1, g2) = (port.blocking(), port.blocking());
    assert_eq!(token_of(port.get(ZERO)), Ok(2));
    drop(g2);
    drop(g1);
    assert_eq!(run_wait(&port), (1, 0), "get inside nested guards");
    // A stale guard: taken, then a get, then a new guard.
    let stale = port.blocking();
    assert_eq!(token_of(port.get(ZERO)), Ok(3));
    let fresh = port.blocking();
    assert_eq!(run_wait(&port), (0, 0));
    drop(stale);
    assert_eq!(
        run_wait(&port),
        (0, 0),
        "a stale guard re-entered the count"
    );
    drop(fresh);
    assert_eq!(run_wait(&port), (1, 0));
    no_packet(&port, Duration::ZERO);
    assert_eq!(run_wait(&port), (0, 0));
}

std::thread_local! {
    /// A guard parked in a thread-local, dropped while the thread exits.
    static PARKED_GUARD: std::cell::RefCell<Option<iocp::BlockingGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// A thread that exits with a live guard (dropped with the thread's state,
/// parked in a thread-local, or forgotten) leaves the count exact: nothing
/// of it is counted afterwards, and the next packet goes to another thread.
/// Also a get inside a guard on one thread while another waits: when the
/// first thread exits, its one slot goes to the waiter.
fn blocking_guard_thread_exit(t: &Target) {
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
            "conformance::{}::blocking_guard_thread_exit: SKIPPED the assertion that B waits \
             while A runs: the kernel schedules IOCP waiters{}",
            t.backend,
            iocp::wine_version().map_or(String::new(), |v| format!(
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
fn timed_out_get_consumes_nothing(t: &Target) {
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
fn post_wakes_getter(t: &Target) {
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

/// A failed operation is a packet (`Ok(Completion)` with an error `result`,
/// key, token and buffer intact); no packet is `Err(GetError)`.
fn failed_op_vs_no_packet(t: &Target) {
    let port = t.port();
    // Connection reset by peer (SO_LINGER 0, then close) under a pending recv.
    let (h, c) = tcp_pair(&port, 21);
    let op = port.recv(&h, vec_with(b"keep", 64), 5).unwrap();
    SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    let mut comp = get(&port);
    assert_eq!(
        (comp.kind, comp.key, comp.token, comp.op),
        (OpKind::Recv, 21, 5, op),
        "{}",
        brief(&comp)
    );
    let e = comp.result.as_ref().expect_err("a reset recv fails");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e:?}");
    assert!(!comp.is_aborted() && comp.bytes() == 0);
    let b = comp.take_buf().expect("the buffer comes back").into_vec();
    assert_eq!((&b[..], b.capacity() >= 64), (&b"keep"[..], true));

    // Same for a pooled receive: its final completion carries the error.
    let (h2, c2) = tcp_pair(&port, 23);
    let op2 = port.recv_pooled(&h2, 6).unwrap();
    SockRef::from(&c2).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c2);
    let comp = get(&port);
    assert_eq!(
        (comp.kind, comp.key, comp.token, comp.op, comp.more),
        (OpKind::RecvPooled, 23, 6, op2, false)
    );
    assert_eq!(
        comp.result.as_ref().unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );

    // Connect to a closed port on 127.0.0.1: refused, as a packet.
    let addr = closed_tcp_addr();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let hc = port.associate(s, 22).unwrap();
    let op = port.connect(&hc, addr, 6).unwrap();
    let comp = get(&port);
    assert_eq!(
        (comp.kind, comp.key, comp.token, comp.op),
        (OpKind::Connect, 22, 6, op)
    );
    assert_eq!(
        comp.result.as_ref().unwrap_err().kind(),
        ErrorKind::ConnectionRefused,
        "{}",
        brief(&comp)
    );

    // No packet at all: a distinct type.
    match port.get(Some(Duration::from_millis(10))) {
        Err(GetError::TimedOut) => {}
        other => panic!("expected Err(TimedOut), got {other:?}"),
    }
}

/// A pending recv cancelled completes exactly once, aborted, with its buffer;
/// so does one still queued behind another on the same handle. Cancelling a
/// finished operation does nothing; the handle keeps working.
fn cancel_pending(t: &Target) {
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 31);
    let op = port.recv(&h, vec_with(b"xy", 64), 1).unwrap();
    h.cancel(op).unwrap();
    let mut comp = get(&port);
    assert_eq!(
        (comp.kind, comp.key, comp.token, comp.op),
        (OpKind::Recv, 31, 1, op)
    );
    assert!(comp.is_aborted(), "{}", brief(&comp));
    assert_eq!(comp.take_buf().unwrap().as_slice(), b"xy");
    no_packet(&port, Duration::from_millis(100));
    h.cancel(op)
        .expect("cancelling a finished op is not an error");
    no_packet(&port, Duration::from_millis(30));

    // Two receives: the second waits behind the first; cancel the second.
    let first = port.recv(&h, Vec::with_capacity(16), 2).unwrap();
    let second = port.recv(&h, vec_with(b"q", 16), 3).unwrap();
    h.cancel(second).unwrap();
    let mut comp = get(&port);
    assert_eq!((comp.token, comp.op), (3, second), "{}", brief(&comp));
    assert!(comp.is_aborted());
    assert_eq!(comp.take_buf().unwrap().as_slice(), b"q");
    c.write_all(b"after").unwrap();
    let mut comp = get(&port);
    assert_eq!(
        (comp.token, comp.op, comp.bytes()),
        (2, first, 5),
        "{}",
        brief(&comp)
    );
    assert_eq!(comp.take_buf().unwrap().as_slice(), b"after");
    no_packet(&port, Duration::from_millis(30));
}

/// Cancel racing data: every operation completes exactly once, either aborted
/// (its bytes stay in the socket for the next receive) or with the data.
fn cancel_races_data(t: &Target) {
    const N: usize = 200;
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 32);
    let (mut stream, mut aborted) = (Vec::new(), 0);
    for i in 0..N {
        let op = port.recv(&h, Vec::with_capacity(N), i as u64).unwrap();
        if i % 2 == 0 {
            c.write_all(&[i as u8]).unwrap();
            h.cancel(op).unwrap();
        } else {
            h.cancel(op).unwrap();
            c.write_all(&[i as u8]).unwrap();
        }
        let mut comp = get(&port);
        assert_eq!(
            (comp.token, comp.op),
            (i as u64, op),
            "one completion per op, in turn: {}",
            brief(&comp)
        );
        let buf = comp.take_buf().expect("buffer back");
        match &comp.result {
            Ok(n) => {
                assert!(*n > 0 && buf.len() == *n, "{}", brief(&comp));
                stream.extend_from_slice(buf.as_slice());
            }
            Err(e) if is_aborted(e) => {
                assert!(buf.is_empty());
                aborted += 1;
            }
            Err(e) => panic!("op {i}: {e:?}"),
        }
    }
    // Bytes left behind by aborted receives are still in order in the socket.
    while stream.len() < N {
        port.recv(&h, Vec::with_capacity(N), 10_000).unwrap();
        let mut comp = get(&port);
        assert!(comp.bytes() > 0, "{}", brief(&comp));
        stream.extend_from_slice(comp.take_buf().unwrap().as_slice());
    }
    assert_eq!(stream, (0..N).map(|i| i as u8).collect::<Vec<_>>());
    no_packet(&port, Duration::from_millis(30));
    println!(
        "cancel race: {aborted} of {N} aborted, {} completed with data",
        N - aborted
    );
}

/// Closing handles with operations in flight (recv, pooled recv, accept,
/// recv_from, a send stuck behind a full socket buffer and one queued behind
/// it): each completes exactly once, aborted (or normally, had it won), with
/// its buffer; the descriptor closes after the last completion; later
/// operations on the handle are refused with their buffer handed back.
fn close_handle_in_flight(t: &Target) {
    let port = t.build(
        t.builder()
            .concurrency(4)
            .pool_buffers(16)
            .pool_buffer_size(4096),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lh = port.associate(l, 40).unwrap();
    port.accept(&lh, 1).unwrap();
    let (h1, mut c1) = tcp_pair(&port, 41);
    let op_r = port.recv(&h1, vec_with(b"r", 64), 2).unwrap();
    let (h2, mut c2) = tcp_pair(&port, 42);
    port.recv_pooled(&h2, 3).unwrap();
    let (h3, c3) = tcp_pair(&port, 43);
    h3.with_socket(|s| s.set_send_buffer_size(4096)).unwrap();
    SockRef::from(&c3).set_recv_buffer_size(4096).unwrap();
    const BIG: usize = 8 << 20;
    port.send(&h3, pattern(0, BIG), 4).unwrap();
    port.send(&h3, pattern(1, 1000), 5).unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hu = port.associate(u, 44).unwrap();
    port.recv_from(&hu, Vec::with_capacity(64), 6).unwrap();

    lh.close();
    h1.close();
    drop(h2); // dropping the last clone closes too
    h3.close();
    hu.close();

    let mut got: HashMap<u64, Completion> = HashMap::new();
    while got.len() < 6 {
        let c = get(&port);
        assert!(
            !c.more,
            "no data was sent, so no stream chunk: {}",
            brief(&c)
        );
        let tok = c.token;
        if let Some(prev) = got.insert(tok, c) {
            panic!("token {tok} completed twice: {}", brief(&prev));
        }
    }
    no_packet(&port, Duration::from_millis(100));
    for (tok, c) in &got {
        assert!(c.is_aborted() || c.is_ok(), "token {tok}: {}", brief(c));
    }
    // Nothing could have completed normally here.
    for tok in 1..=6 {
        assert!(got[&tok].is_aborted(), "token {tok}: {}", brief(&got[&tok]));
    }
    let kinds: Vec<_> = (1..=6).map(|t| got[&t].kind).collect();
    assert_eq!(
        kinds,
        [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::RecvPooled,
            OpKind::Send,
            OpKind::Send,
            OpKind::RecvFrom
        ]
    );
    assert_eq!(
        got.get_mut(&2).unwrap().take_buf().unwrap().as_slice(),
        b"r"
    );
    assert_eq!(got.get_mut(&4).unwrap().take_buf().unwrap().len(), BIG);
    assert_eq!(
        got.get_mut(&5).unwrap().take_buf().unwrap().as_slice(),
        &pattern(1, 1000)[..]
    );
    assert!(got.get_mut(&6).unwrap().take_buf().is_some());

    // The peers see the descriptors closed.
    let mut b = [0u8; 8];
    assert_eq!(c1.read(&mut b).expect("EOF, not a timeout"), 0);
    assert_eq!(c2.read(&mut b).expect("EOF, not a timeout"), 0);
    drop(c3);

    // Operations on a closed handle are refused, buffer handed back.
    let e = port
        .recv(&h1, vec_with(b"z", 8), 9)
        .expect_err("handle closed");
    assert_eq!(e.buf.as_ref().map(|b| b.as_slice()), Some(&b"z"[..]));
    assert!(
        h1.cancel(op_r).is_err(),
        "cancel on a closed handle is refused"
    );
    no_packet(&port, Duration::from_millis(30));
}

/// Closing the port wakes every waiter with `Abandoned`.
fn close_port_wakes_waiters(t: &Target) {
    let port = t.build(t.builder().concurrency(2));
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for w in 0..4 {
        let (p, tx) = (port.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            tx.send(token_of(p.get(Some(T))))
        }));
        wait_until(&format!("waiter {w} parked"), || {
            port.stats().waiting == w + 1
        });
    }
    port.close();
    for _ in 0..4 {
        let r = rx.recv_timeout(T).expect("every waiter returns");
        assert_eq!(r, Err(GetError::Abandoned));
    }
    for th in threads {
        th.join().unwrap().unwrap();
    }
    assert_eq!(port.stats().waiting, 0);
    let t0 = Instant::now();
    assert_eq!(port.get(Some(T)).unwrap_err(), GetError::Abandoned);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "get on a closed port waited"
    );
}

/// Concurrency 1, two threads in `get_many(64, None)`, nothing in flight:
/// `close()` returns both `Abandoned`, even though one of them could take
/// many packets at once. 50 rounds, because which waiter wakes first and
/// what it finds queued is the kernel's choice on IOCP.
fn close_port_wakes_get_many_waiters(t: &Target) {
    for round in 0..50 {
        let port = t.build(t.builder().concurrency(1));
        let (tx, rx) = mpsc::channel();
        for w in 0..2 {
            let (p, tx) = (port.clone(), tx.clone());
            // Not joined: a waiter that is never woken must not hang the test.
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = tx.send(p.get_many(&mut v, 64, None).map(|_| tokens(&v)));
            });
            wait_until(&format!("round {round}: waiter {w} parked"), || {
                port.stats().waiting == w + 1
            });
        }
        port.close();
        for n in 0..2 {
            let r = rx.recv_timeout(T).unwrap_or_else(|_| {
                panic!(
                    "round {round}: {n} of 2 get_many waiters returned within {T:?} after close; {:?}",
                    port.stats()
                )
            });
            assert_eq!(r, Err(GetError::Abandoned), "round {round}");
        }
        wait_until("no waiter left", || port.stats().waiting == 0);
    }
}

/// After close: get/get_many → `Abandoned` at once, post/post_after/
/// associate → error, operations refused with their buffer handed back;
/// queued packets are dropped.
fn close_port_then_calls_fail(t: &Target) {
    let port = t.port();
    let (h, _c) = tcp_pair(&port, 51);
    port.post(5, 0, 1).unwrap();
    port.close();
    assert!(port.is_closed());
    assert_eq!(port.get(ZERO).unwrap_err(), GetError::Abandoned);
    let t0 = Instant::now();
    assert_eq!(
        port.get(Some(T)).unwrap_err(),
        GetError::Abandoned,
        "queued packets are dropped"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    let mut batch = Vec::new();
    assert_eq!(
        port.get_many(&mut batch, 4, Some(T)),
        Err(GetError::Abandoned)
    );
    assert!(port.post(5, 0, 2).is_err());
    assert!(port.post_after(Duration::from_millis(1), 5, 3).is_err());
    assert!(port
        .associate(UdpSocket::bind("127.0.0.1:0").unwrap(), 52)
        .is_err());
    let e = port
        .recv(&h, vec_with(b"k", 8), 4)
        .expect_err("port closed");
    assert_eq!(e.buf.map(|b| b.into_vec()), Some(b"k".to_vec()));
    port.close(); // twice is fine
}

/// The error `with_socket` gives for a handle whose descriptor is gone: a
/// "closed" error, never what the system call on a stale number returned.
#[track_caller]
fn assert_closed_error(e: &std::io::Error, what: &str) {
    assert!(
        e.to_string().contains("closed"),
        "{what}: expected a \"closed\" error, got {e:?}"
    );
}

/// Closing the port closes every handle, and dropping it too: each reports
/// closed, and `with_socket` fails with a "closed" error. It must never
/// reach the descriptor number the handle had, which the system hands to
/// the next socket opened (here, new listeners).
fn port_close_closes_handles(t: &Target) {
    for close_first in [true, false] {
        let port = t.port();
        let mut old = Vec::new();
        for i in 0..4 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            old.push((port.associate(l, 110 + i).unwrap(), addr));
        }
        port.accept(&old[0].0, 1).unwrap(); // one with an operation in flight
        if close_first {
            port.close();
        }
        drop(port);
        let fresh: Vec<TcpListener> = (0..8)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fresh_addrs: HashSet<SocketAddr> =
            fresh.iter().map(|l| l.local_addr().unwrap()).collect();
        let how = if close_first { "close + drop" } else { "drop" };
        for (h, addr) in &old {
            match h.with_socket(|s| s.local_addr()) {
                Ok(a) => {
                    let a = a.as_socket();
                    let whose = if a.is_some_and(|a| fresh_addrs.contains(&a)) {
                        "a NEW listener's address"
                    } else {
                        "not a new listener's"
                    };
                    panic!(
                        "after the port's {how}, with_socket on {h:?} (was {addr}) reached a \
                         descriptor with address {a:?}: {whose}"
                    );
                }
                Err(e) => assert_closed_error(&e, &format!("with_socket after the port's {how}")),
            }
            assert!(
                h.is_closed(),
                "after the port's {how}, {h:?} does not report closed"
            );
        }
    }
}

/// While `with_socket` runs, its descriptor stays open: a `close` of the
/// handle meanwhile (even once its last operation completed) closes the
/// socket only when the borrow ends, so the number cannot be handed to
/// another socket under the borrower. Afterwards the socket is closed (the
/// peer sees EOF) and later borrows fail.
fn with_socket_holds_descriptor(t: &Target) {
    let port = t.port();
    let (h, mut peer) = tcp_pair(&port, 120);
    let own = h.with_socket(|s| s.local_addr()).unwrap().as_socket();
    let op = port.recv(&h, Vec::with_capacity(8), 1).unwrap();
    let (in_tx, in_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let h2 = h.clone();
    let borrower = std::thread::spawn(move || {
        h2.with_socket(|s| {
            in_tx.send(()).unwrap();
            go_rx.recv_timeout(T).expect("the go from the test thread");
            Ok(s.local_addr().map(|a| a.as_socket()))
        })
    });
    in_rx.recv_timeout(T).expect("the borrow started");
    h.close();
    // The close aborted the receive; on a port that does not wait for the
    // borrower, the descriptor was closed together with that completion.
    let c = get(&port);
    assert_eq!((c.token, c.op), (1, op), "{}", brief(&c));
    assert!(c.is_aborted(), "{}", brief(&c));
    // Sockets opened now take any number that close freed.
    let fresh: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    go_tx.send(()).unwrap();
    let seen = borrower.join().unwrap().expect("with_socket ran f");
    match seen {
        Ok(a) => assert_eq!(
            a, own,
            "the borrowed descriptor became another socket while the borrow ran"
        ),
        Err(e) => panic!("the borrowed descriptor was closed while the borrow ran: {e:?}"),
    }
    // The borrow ended: now the socket is closed.
    let mut b = [0u8; 8];
    assert_eq!(
        peer.read(&mut b).expect("EOF, not a timeout"),
        0,
        "the peer sees the close"
    );
    let e = h.with_socket(|s| s.local_addr()).unwrap_err();
    assert_closed_error(&e, "with_socket after close");
    drop(fresh);
    no_packet(&port, Duration::from_millis(30));
}

/// `close` racing `with_socket`, many times: every borrow either sees its
/// own socket for its whole length or fails with a "closed" error, never a
/// closed descriptor (EBADF) or another socket's. A second thread keeps
/// opening sockets, so a number freed early is soon someone else's.
fn with_socket_races_close(t: &Target) {
    const ROUNDS: usize = 300;
    let port = t.port();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                std::hint::black_box(&s);
                drop(s);
                n += 1;
                std::thread::yield_now();
            }
            n
        })
    };
    let started = Instant::now();
    let (mut refused_at_once, mut rounds) = (0, 0);
    for round in 0..ROUNDS {
        if started.elapsed() > T / 2 {
            break;
        }
        rounds += 1;
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let own = u.local_addr().unwrap();
        let h = port.associate(u, 140).unwrap();
        let h2 = h.clone();
        let (in_tx, in_rx) = mpsc::channel();
        let borrower = std::thread::spawn(move || {
            let mut borrows = 0u32;
            loop {
                let r = h2.with_socket(|s| {
                    for _ in 0..64 {
                        let a = s.local_addr()?.as_socket();
                        if a != Some(own) {
                            return Ok(Some(a));
                        }
                    }
                    Ok(None)
                });
                if borrows == 0 {
                    let _ = in_tx.send(());
                }
                borrows += 1;
                match r {
                    Ok(None) => {}
                    Ok(Some(other)) => {
                        return Err(format!("borrow {borrows} saw another socket: {other:?}"))
                    }
                    Err(e) if e.to_string().contains("closed") => return Ok(borrows),
                    Err(e) => return Err(format!("borrow {borrows} failed with {e:?}")),
                }
            }
        });
        in_rx.recv_timeout(T).expect("the borrower started");
        // Vary where in a borrow the close lands.
        for _ in 0..(round % 16) * 50 {
            std::hint::spin_loop();
        }
        h.close();
        if t.inline {
            // The owner turns the engine, which processes the close.
            no_packet(&port, Duration::ZERO);
        }
        match borrower.join().unwrap() {
            Ok(1) => refused_at_once += 1,
            Ok(_) => {}
            Err(e) => panic!("round {round}: {e} (own {own})"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let opened = churn.join().unwrap();
    no_packet(&port, Duration::from_millis(30));
    println!(
        "with_socket vs close: {rounds} rounds ({refused_at_once} ended at the first borrow), \
         {opened} sockets opened meanwhile"
    );
}

/// A tracing subscriber that keeps every warning and error event.
#[derive(Default)]
struct Warnings(std::sync::Mutex<Vec<String>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut s = format!("{} ", e.metadata().level());
        e.record(&mut Message(&mut s));
        self.0.lock().unwrap().push(s);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// An inline port closed or dropped by a thread other than its owner stops
/// at once and never enters the owner's engine from that thread (an
/// io_uring ring made `SINGLE_ISSUER` refuses any other thread with
/// `EEXIST`): no warning but one saying what was left to the kernel, and
/// its handles report closed.
fn inline_port_closed_off_thread(t: &Target) {
    for close_first in [true, false] {
        let port = t.port();
        let (h, _peer) = tcp_pair(&port, 130);
        port.recv(&h, Vec::with_capacity(64), 1).unwrap();
        let (h2, _peer2) = tcp_pair(&port, 131);
        port.recv_pooled(&h2, 2).unwrap();
        // Turn the engine once, so the kernel holds the operations.
        no_packet(&port, Duration::ZERO);
        let how = if close_first { "close" } else { "drop" };
        let (took, warnings) = std::thread::spawn(move || {
            let w = Arc::new(Warnings::default());
            let took = tracing::subscriber::with_default(w.clone(), || {
                let t0 = Instant::now();
                if close_first {
                    port.close();
                }
                drop(port);
                t0.elapsed()
            });
            let w = std::mem::take(&mut *w.0.lock().unwrap());
            (took, w)
        })
        .join()
        .unwrap();
        let eexist = warnings
            .iter()
            .filter(|w| w.contains("File exists") || w.contains("EEXIST"))
            .count();
        assert_eq!(
            eexist,
            0,
            "{how} off the owner thread entered the ring from there: {eexist} EEXIST \
             warnings in {took:?}; first: {:?}",
            warnings.first()
        );
        assert!(
            warnings.len() <= 1,
            "{how} off the owner thread logged {} warnings: {:?}",
            warnings.len(),
            &warnings[..warnings.len().min(3)]
        );
        assert!(
            took < Duration::from_millis(500),
            "{how} off the owner thread took {took:?}"
        );
        assert!(h.is_closed(), "the port's {how} closes its handles");
    }
}

/// A completion for an operation whose handle was closed concurrently —
/// the start passed the "closed?" check just before another thread's
/// `close` — still carries the handle's key (key 0 is a real key).
fn closed_handle_completion_keeps_key(t: &Target) {
    const ROUNDS: u64 = 4000;
    let port = t.port();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap();
    // The starter thread: one send per round. Both threads spin on `gate`
    // (the starter says it is ready with the round's odd number, the test
    // thread releases it with the even one), then one of them spins a little
    // longer: `lead` steers where the close lands. A send refused as closed
    // means the close came too early, a send that went out means it came too
    // late; moving `lead` after each (by a step that grows while the
    // direction holds and halves when it turns) keeps the two hovering
    // around the moment the send checks the handle.
    let gate = Arc::new(AtomicU64::new(0));
    let (job_tx, job_rx) = mpsc::channel::<(u64, iocp::Handle, u64)>();
    let (res_tx, res_rx) = mpsc::channel();
    let starter = {
        let (port, gate) = (port.clone(), gate.clone());
        std::thread::spawn(move || {
            while let Ok((round, h, spin)) = job_rx.recv() {
                gate.store(2 * round + 1, Ordering::Release);
                await_gate(&gate, 2 * round + 2);
                for _ in 0..spin {
                    std::hint::spin_loop();
                }
                let started = port.send_to(&h, b"k".to_vec(), to, round).is_ok();
                res_tx.send(started).unwrap();
            }
        })
    };
    let t0 = Instant::now();
    let (mut rounds, mut late, mut lead, mut step) = (0, 0, 0i64, 1i64);
    /// Waits until `gate` reads `value`: spinning at first (to act within
    /// nanoseconds), then yielding (so a thread descheduled under CPU load
    /// gets to run); bounded by [`T`].
    fn await_gate(gate: &AtomicU64, value: u64) {
        let t0 = Instant::now();
        let mut spins = 0u32;
        while gate.load(Ordering::Acquire) != value {
            assert!(t0.elapsed() < T, "gate {value} never came");
            spins += 1;
            if spins < 20_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
    fn steer(lead: &mut i64, step: &mut i64, later: bool) {
        let dir = if later { 1 } else { -1 };
        *step = if step.signum() == dir {
            (*step * 2).clamp(-256, 256)
        } else {
            dir
        };
        *lead = (*lead + *step).clamp(-4096, 4096);
    }
    for round in 1..=ROUNDS {
        if t0.elapsed() > T / 2 {
            break;
        }
        rounds += 1;
        let key = 1_000 + round;
        let h = port
            .associate(UdpSocket::bind("127.0.0.1:0").unwrap(), key)
            .unwrap();
        job_tx
            .send((round, h.clone(), (-lead).max(0) as u64))
            .unwrap();
        await_gate(&gate, 2 * round + 1);
        gate.store(2 * round + 2, Ordering::Release);
        for _ in 0..lead.max(0) {
            std::hint::spin_loop();
        }
        h.close();
        let started = res_rx.recv_timeout(T).expect("the starter answers");
        if !started {
            steer(&mut lead, &mut step, true);
            continue;
        }
        let c = get(&port);
        assert_eq!(
            (c.kind, c.token, c.key),
            (OpKind::SendTo, round, key),
            "round {round}: {}",
            brief(&c)
        );
        if c.result.is_err() {
            late += 1;
        } else {
            steer(&mut lead, &mut step, false);
        }
    }
    drop(job_tx);
    starter.join().unwrap();
    drop(sink);
    no_packet(&port, Duration::from_millis(30));
    // Under heavy CPU load the two threads rarely run at the same moment,
    // and few (or no) starts land right behind the close.
    println!("close vs start: {rounds} rounds, {late} starts ended by the close (lead {lead})");
}

/// `get_many` takes up to `max` (FIFO, appending), waits only while none are
/// queued, and consumes nothing when it times out.
fn get_many(t: &Target) {
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

/// `post_after` delivers a Timer packet, not before its time, in deadline order.
fn post_after_timer(t: &Target) {
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
fn op_deadline(t: &Target) {
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
/// engine turns only inside `get`, so poll it).
fn timers_settle(t: &Target, port: &Port, want: u64, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        if t.inline {
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
fn timers_bounded(t: &Target) {
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
    port.recv(
        &h,
        Vec::with_capacity(1),
        OpOptions::with_timeout(81, Duration::from_millis(30)),
    )
    .unwrap();
    let comp = get(&port);
    assert_eq!(
        comp.result.as_ref().unwrap_err().kind(),
        ErrorKind::TimedOut
    );
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
    port.close();
}

/// 64 sends (some vectored) queued back-to-back on one handle arrive in
/// order; each completes once with all its bytes and hands its buffers back.
fn send_ordering(t: &Target) {
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
fn large_send_slow_peer(t: &Target) {
    const BIG: usize = 8 << 20;
    let port = t.port();
    let (h, mut c) = tcp_pair(&port, 71);
    h.with_socket(|s| s.set_send_buffer_size(16 * 1024))
        .unwrap();
    SockRef::from(&c).set_recv_buffer_size(16 * 1024).unwrap();
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
            if reads % 64 == 0 {
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

/// UDP `send_to`/`recv_from` round trips with the sender's address, on
/// 127.0.0.1 (and ::1 where it exists).
fn udp_round_trip(t: &Target) {
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
fn udp_truncated_datagram(t: &Target) {
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
    let mut comp = get(&port);
    assert_eq!(
        (comp.kind, comp.key, comp.token, comp.op),
        (OpKind::RecvFrom, 81, 1, op)
    );
    assert_eq!(comp.result.as_ref().ok(), Some(&10), "{}", brief(&comp));
    assert_eq!(comp.take_buf().unwrap().as_slice(), &pattern(0, 10)[..]);
    assert_eq!(comp.from_addr(), Some(b.local_addr().unwrap()));
    no_packet(&port, Duration::from_millis(100));
}

/// On a datagram socket a vectored send is one datagram: 2000 buffers (more
/// than `IOV_MAX`) go out as one datagram or fail whole (`EMSGSIZE` on
/// Linux), never as two. A failed datagram send stops nothing: the next send
/// goes out.
fn udp_send_vectored_whole(t: &Target) {
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

/// A pooled receive is a stream of `more == true` chunks in pool buffers and
/// exactly one final `more == false` completion; buffers go back to the pool
/// when dropped (in_use returns to 0), and the stream survives the pool
/// running dry. Packets the engine queues for this thread count as
/// hand-offs on a threaded port and not on an inline one; a thread's own
/// post + get never does.
fn pooled_stream(t: &Target) {
    const TOTAL: usize = 256 * 1024;
    const BUF: usize = 1024;
    let port = t.build(
        t.builder()
            .concurrency(4)
            .pool_buffers(8)
            .pool_buffer_size(BUF),
    );
    let (h, mut c) = tcp_pair(&port, 90);
    let h0 = port.stats().handoffs;
    let op = port.recv_pooled(&h, 3).unwrap();
    let writer = std::thread::spawn(move || {
        for chunk in pattern(0, TOTAL).chunks(4096) {
            c.write_all(chunk)?;
        }
        c.shutdown(Shutdown::Write)?;
        Ok::<_, std::io::Error>(c)
    });
    let (mut data, mut chunks, mut held, mut max_in_use) = (Vec::new(), 0u64, Vec::new(), 0);
    loop {
        let mut comp = get(&port);
        assert_eq!(
            (comp.kind, comp.key, comp.token, comp.op),
            (OpKind::RecvPooled, 90, 3, op),
            "{}",
            brief(&comp)
        );
        if !comp.more {
            assert_eq!(
                comp.result.as_ref().ok(),
                Some(&0),
                "the stream ends at FIN: {}",
                brief(&comp)
            );
            break;
        }
        chunks += 1;
        let n = comp.bytes();
        let b = comp.take_buf().expect("a chunk carries a buffer");
        let Buf::Pooled(pb) = b else {
            panic!("a chunk is a pool buffer, got {b:?}")
        };
        assert!(n > 0 && n <= BUF && pb.len() == n, "chunk of {n} in {pb:?}");
        data.extend_from_slice(&pb);
        held.push(pb);
        max_in_use = max_in_use.max(port.pool_stats().in_use);
        assert!(port.pool_stats().in_use >= held.len());
        if held.len() >= 4 {
            held.clear();
        }
    }
    no_packet(&port, Duration::from_millis(100)); // exactly one final completion
    drop(held);
    assert_eq!(port.pool_stats().in_use, 0, "every pool buffer is back");
    let _c = writer.join().unwrap().expect("writer");
    assert!(
        data == pattern(0, TOTAL),
        "stream bytes differ ({} of {TOTAL} received)",
        data.len()
    );
    assert!(
        chunks >= (TOTAL / BUF) as u64,
        "{chunks} chunks for {TOTAL} bytes in {BUF}-byte buffers"
    );
    let handoffs = port.stats().handoffs - h0;
    if t.inline {
        assert_eq!(handoffs, 0, "an inline port hands nothing across threads");
    } else {
        assert!(
            handoffs > chunks,
            "engine-to-getter packets are hand-offs: {handoffs} for {chunks} chunks"
        );
    }
    let h1 = port.stats().handoffs;
    port.post(1, 0, 1).unwrap();
    assert_eq!(token_of(port.get(ZERO)), Ok(1));
    assert_eq!(
        port.stats().handoffs,
        h1,
        "own post + get is not a hand-off"
    );
    println!("pooled: {chunks} chunks, up to {max_in_use} buffers lent at once");
}

// ---- sends: refused vectored sends, IOV_MAX, sends cut part-way ------------

/// Every buffer a refused operation hands back, in order.
fn refused_bufs(mut e: iocp::SubmitError) -> Vec<Buf> {
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
fn send_vectored_refused(t: &Target) {
    let want: Vec<Vec<u8>> = vec![b"one".to_vec(), b"two".to_vec(), vec![], b"four".to_vec()];
    let mut problems = Vec::new();
    let mut check = |what: &str, r: Result<iocp::OpId, iocp::SubmitError>| {
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
fn send_vectored_many_buffers(t: &Target) {
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
        let mut comp = get(&port);
        assert_eq!(
            (comp.kind, comp.key, comp.token, comp.op),
            (OpKind::Send, 94, tok, op),
            "{}",
            brief(&comp)
        );
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

fn send_cancel_part_way(t: &Target) {
    send_cut_part_way(t, false);
}

fn send_deadline_part_way(t: &Target) {
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
    let (h, c) = tcp_pair(&port, 95);
    h.with_socket(|s| s.set_send_buffer_size(16 * 1024))
        .unwrap();
    SockRef::from(&c).set_recv_buffer_size(16 * 1024).unwrap();
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
        // Part of it is out once the peer could read a byte; the rest cannot
        // fit in the socket buffers.
        c.set_nonblocking(true).unwrap();
        drive_until(&port, "the first bytes arrive", || {
            c.peek(&mut [0u8; 1]).is_ok_and(|n| n == 1)
        });
        c.set_nonblocking(false).unwrap();
        h.cancel(first).unwrap();
    }
    let mut problems = Vec::new();
    let mut comp = get(&port);
    assert_eq!((comp.token, comp.op), (1, first), "{}", brief(&comp));
    let want_err = if deadline {
        ErrorKind::TimedOut
    } else {
        iocp::aborted().kind()
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
