//! loom models of the user-space completion queue (`completion_port::queue::Queue`).
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p completion-port --test loom --release
//! ```
//!
//! Without `--cfg loom` this file compiles to one ignored test whose reason
//! says how to run the models. Under loom, time is abstract: a timed wait
//! lets the other threads run and then reports a timeout, so every model
//! explores a timeout firing at any point.

#[cfg(not(loom))]
#[test]
#[ignore = "the loom models run only in a build with RUSTFLAGS=\"--cfg loom\" (ci/test.sh's loom stage)"]
fn loom_models_need_cfg_loom() {}

#[cfg(loom)]
mod models {
    use std::time::Duration;

    use completion_port::queue::{Empty, Queue};
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    /// Bounded exploration so every model finishes in seconds.
    fn check(name: &str, bound: usize, f: impl Fn() + Sync + Send + 'static) {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = runs.clone();
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        let started = std::time::Instant::now();
        b.check(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f()
        });
        println!(
            "loom[{name}]: {} interleavings (preemption bound {bound}) in {:?}",
            runs.load(std::sync::atomic::Ordering::Relaxed),
            started.elapsed()
        );
    }

    const SOME: Option<Duration> = Some(Duration::from_millis(10));

    /// Ends a model thread's turn on the queue. With std threads, exiting
    /// releases the slot before `join` returns (thread-locals are destroyed
    /// first); loom's `join` returns before its thread-locals are dropped, so
    /// a thread that must not count any more after `join` polls until the
    /// queue is empty instead (a `get` that returns nothing leaves the thread
    /// not running). Packets it takes on the way go to `on_packet` (called
    /// while the thread still counts as running).
    fn step_out(q: &Queue<u32>, mut on_packet: impl FnMut(u32)) {
        while let Ok(p) = q.get(Some(Duration::ZERO)) {
            on_packet(p);
        }
    }

    /// Polls what is still queued into `got`, then asserts that every packet
    /// of `want` was seen exactly once.
    fn assert_each_once(q: &Queue<u32>, mut got: Vec<u32>, want: &[u32]) {
        while let Ok(p) = q.get(Some(Duration::ZERO)) {
            got.push(p);
        }
        got.sort_unstable();
        assert_eq!(got, want, "each packet exactly once");
    }

    /// A post racing a `get` that times out: the packet is delivered exactly
    /// once, to that `get` or to a later poll, and nothing is left behind.
    #[test]
    fn post_races_timed_out_get() {
        check("post_races_timed_out_get", 3, || {
            let q = Queue::<u32>::new(1);
            let q2 = q.clone();
            let t = thread::spawn(move || q2.get(SOME));
            q.post(7).expect("queue open");
            let first = t.join().expect("getter thread");
            // The getter thread has exited, which released its slot.
            let later = q.get(Some(Duration::ZERO));
            match (first, later) {
                (Ok(7), Err(Empty::TimedOut)) | (Err(Empty::TimedOut), Ok(7)) => {}
                other => panic!("packet not delivered exactly once: {other:?}"),
            }
            let st = q.stats();
            assert_eq!((st.queued, st.waiting, st.delivered), (0, 0, 1), "{st:?}");
        });
    }

    /// Two gets (one timing out, one waiting forever) and two posts: every
    /// packet reaches exactly one of them or stays queued for a poll, and a
    /// waiter that timed out is never handed a packet it will not return.
    #[test]
    fn posts_race_timeout_and_waiter() {
        check("posts_race_timeout_and_waiter", 3, || {
            let q = Queue::<u32>::new(2);
            let (qa, qb) = (q.clone(), q.clone());
            let a = thread::spawn(move || qa.get(SOME));
            let b = thread::spawn(move || qb.get(SOME));
            q.post(1).unwrap();
            q.post(2).unwrap();
            let mut got: Vec<u32> = [a.join().unwrap(), b.join().unwrap()]
                .into_iter()
                .filter_map(|r| match r {
                    Ok(p) => Some(p),
                    Err(Empty::TimedOut) => None,
                    Err(e) => panic!("unexpected {e:?}"),
                })
                .collect();
            while let Ok(p) = q.get(Some(Duration::ZERO)) {
                got.push(p);
            }
            got.sort_unstable();
            assert_eq!(got, [1, 2], "each packet exactly once");
            assert_eq!(q.stats().waiting, 0);
        });
    }

    /// A post racing `close`: the packet is accounted for exactly once —
    /// refused by `post`, delivered to the waiter, or handed back by `close` —
    /// and the waiter always returns (with the packet or `Abandoned`).
    #[test]
    fn post_races_close() {
        check("post_races_close", 3, || {
            let q = Queue::<u32>::new(2);
            let (qw, qp) = (q.clone(), q.clone());
            let waiter = thread::spawn(move || qw.get(None));
            let poster = thread::spawn(move || qp.post(5));
            let returned = q.close();
            let posted = poster.join().unwrap();
            let waited = waiter.join().unwrap();
            let refused = matches!(posted, Err(5));
            let delivered = match waited {
                Ok(5) => true,
                Err(Empty::Abandoned) => false,
                other => panic!("waiter: {other:?}"),
            };
            let handed_back = returned == [5];
            assert!(
                returned.is_empty() || handed_back,
                "close returned {returned:?}"
            );
            assert_eq!(
                [refused, delivered, handed_back]
                    .iter()
                    .filter(|b| **b)
                    .count(),
                1,
                "refused={refused} delivered={delivered} handed_back={handed_back}"
            );
            // After close: get is Abandoned, post refused.
            assert_eq!(q.get(Some(Duration::ZERO)), Err(Empty::Abandoned));
            assert_eq!(q.post(6), Err(6));
        });
    }

    /// Limit 1, three threads taking packets while the model's main thread
    /// posts: never more than one of them is running (between a `get`
    /// returning and its next `get`), and every packet is delivered exactly
    /// once.
    #[test]
    fn limit_one_three_threads() {
        check("limit_one_three_threads", 3, || {
            let q = Queue::<u32>::new(1);
            let active = Arc::new(AtomicUsize::new(0));
            let mut threads = Vec::new();
            const ROUNDS: usize = 1;
            for _ in 0..3 {
                let (q, active) = (q.clone(), active.clone());
                threads.push(thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut on_packet = |p: u32, q: &Queue<u32>| {
                        let before = active.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(before, 0, "two threads running with limit 1");
                        assert!(q.stats().running <= 1, "running above the limit");
                        got.push(p);
                        active.fetch_sub(1, Ordering::SeqCst);
                    };
                    for _ in 0..ROUNDS {
                        match q.get(SOME) {
                            Ok(p) => on_packet(p, &q),
                            Err(Empty::TimedOut) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    step_out(&q, |p| on_packet(p, &q));
                    got
                }));
            }
            for p in 1..=3 {
                q.post(p).unwrap();
            }
            let got: Vec<u32> = threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            assert_eq!(q.stats().running, 0, "exited threads still counted");
            assert_each_once(&q, got, &[1, 2, 3]);
        });
    }

    /// Limit 1: a thread holding a packet steps out with `blocking()`; a
    /// waiter is released with the queued packet; when the guard drops the
    /// running count may exceed the limit, and no packet is lost.
    #[test]
    fn blocking_guard_releases_slot() {
        check("blocking_guard_releases_slot", 3, || {
            let q = Queue::<u32>::new(1);
            q.post(1).unwrap();
            q.post(2).unwrap();
            // The model's main thread takes packet 1 and is running.
            assert_eq!(q.get(Some(Duration::ZERO)), Ok(1));
            let qb = q.clone();
            let b = thread::spawn(move || {
                let mut got: Vec<u32> = qb.get(SOME).into_iter().collect();
                step_out(&qb, |p| got.push(p));
                got
            });
            let guard = q.blocking();
            drop(guard);
            let mut got = b.join().unwrap();
            assert!(got.len() <= 1, "B took {got:?}");
            got.push(1);
            // B exited; we are running again (re-entered on drop).
            assert_eq!(q.stats().running, 1);
            while let Ok(p) = q.get(Some(Duration::ZERO)) {
                got.push(p);
            }
            got.sort_unstable();
            assert_eq!(got, [1, 2]);
        });
    }

    /// Limit 1: a thread takes a packet, steps out with `blocking()`, takes
    /// another packet inside the guard and drops the guard, while a second
    /// thread waits for packets and the main thread posts. The get inside
    /// the guard already counts the thread, so the drop adds nothing: once
    /// both threads have stepped out nobody counts, and every packet is
    /// delivered exactly once (an inflated count would strand one).
    #[test]
    fn get_inside_blocking_guard() {
        check("get_inside_blocking_guard", 3, || {
            let q = Queue::<u32>::new(1);
            let (qb, qc) = (q.clone(), q.clone());
            let b = thread::spawn(move || {
                let mut got: Vec<u32> = qb.get(SOME).into_iter().collect();
                let g = qb.blocking();
                assert!(!qb.is_running_here(), "the guard holder steps out");
                let inside = qb.get(SOME);
                drop(g);
                // A get inside the guard ends what the guard would restore:
                // the thread runs exactly when that get returned a packet.
                assert_eq!(qb.is_running_here(), inside.is_ok(), "{inside:?}");
                got.extend(inside);
                step_out(&qb, |p| got.push(p));
                got
            });
            let c = thread::spawn(move || {
                let mut got: Vec<u32> = qc.get(SOME).into_iter().collect();
                step_out(&qc, |p| got.push(p));
                got
            });
            for p in 1..=3 {
                q.post(p).unwrap();
            }
            let mut got = b.join().unwrap();
            got.extend(c.join().unwrap());
            assert_eq!(q.stats().running, 0, "nobody runs: {:?}", q.stats());
            assert_each_once(&q, got, &[1, 2, 3]);
        });
    }

    /// Limit 1: the main thread holds a packet and takes two nested guards,
    /// dropping the outer one first, while a waiter and a poster race it.
    /// The thread stays out of the count until its last guard is gone, then
    /// counts exactly once; the waiter's packet is never lost.
    #[test]
    fn nested_blocking_guards() {
        check("nested_blocking_guards", 3, || {
            let q = Queue::<u32>::new(1);
            q.post(1).unwrap();
            assert_eq!(q.get(Some(Duration::ZERO)), Ok(1));
            let (qb, qp) = (q.clone(), q.clone());
            let b = thread::spawn(move || {
                let mut got: Vec<u32> = qb.get(SOME).into_iter().collect();
                step_out(&qb, |p| got.push(p));
                got
            });
            let p = thread::spawn(move || qp.post(2).unwrap());
            let outer = q.blocking();
            let inner = q.blocking();
            drop(outer);
            assert!(!q.is_running_here(), "one guard is still alive");
            drop(inner);
            assert!(q.is_running_here(), "the last guard re-enters the count");
            p.join().unwrap();
            let mut got = b.join().unwrap();
            // B stepped out; only this thread counts.
            assert_eq!(q.stats().running, 1, "{:?}", q.stats());
            step_out(&q, |p| got.push(p));
            assert_eq!(q.stats().running, 0);
            got.sort_unstable();
            assert_eq!(got, [2], "packet 2 exactly once");
        });
    }
}
