//! loom models of the user-space completion queue (`completion_port::queue::Queue`).
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p completion-port --test loom --release
//! ```
//!
//! The models cover the plain queue (one waiter per packet, the limit,
//! blocking guards, close, an outside taker told when a slot frees), a
//! queue whose waiters drive a modelled kernel (the driver role handed
//! over, the driver's place among the waiters, the standby taking over)
//! and strands (a pooled receive's packets never run on two threads at
//! once).
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

    use completion_port::queue::{Empty, Kernel, Queue};
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Arc, Notify};
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

    /// Spawns `n` threads on a queue of limit 1, each taking a packet (or
    /// timing out) and then polling until the queue is empty, checking all
    /// along that no two of them run at once. Each returns what it took.
    fn limit_one_threads(q: &Queue<u32>, n: usize) -> Vec<thread::JoinHandle<Vec<u32>>> {
        let active = Arc::new(AtomicUsize::new(0));
        (0..n)
            .map(|_| {
                let (q, active) = (q.clone(), active.clone());
                thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut on_packet = |p: u32, q: &Queue<u32>| {
                        let before = active.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(before, 0, "two threads running with limit 1");
                        assert!(q.stats().running <= 1, "running above the limit");
                        got.push(p);
                        active.fetch_sub(1, Ordering::SeqCst);
                    };
                    match q.get(SOME) {
                        Ok(p) => on_packet(p, &q),
                        Err(Empty::TimedOut) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    step_out(&q, |p| on_packet(p, &q));
                    got
                })
            })
            .collect()
    }

    /// Joins the threads of [`limit_one_threads`]: none counts as running
    /// any more, and each packet of `want` was taken exactly once.
    fn join_limit_one_threads(
        q: &Queue<u32>,
        threads: Vec<thread::JoinHandle<Vec<u32>>>,
        want: &[u32],
    ) {
        let got: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(q.stats().running, 0, "exited threads still counted");
        assert_each_once(q, got, want);
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
            let threads = limit_one_threads(&q, 3);
            for p in 1..=3 {
                q.post(p).unwrap();
            }
            join_limit_one_threads(&q, threads, &[1, 2, 3]);
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

    /// A one-way signal between model threads (loom's `Notify` may wake
    /// spuriously, so the flag says whether it was really opened).
    #[derive(Default)]
    struct Latch {
        open: loom::sync::atomic::AtomicBool,
        notify: Notify,
    }

    impl Latch {
        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            self.notify.notify();
        }

        fn wait(&self) {
            while !self.open.load(Ordering::SeqCst) {
                self.notify.wait();
            }
        }
    }

    /// An outside taker (an inline port's owner: it takes packets without
    /// waiting on the stack, asleep in its engine — modelled by parking,
    /// which the taker's hook undoes). Limit 1: thread A holds the slot,
    /// so packet 2 is held back while the owner sleeps; A then steps out
    /// with `blocking()` (or exits), and the owner is told: it never sleeps
    /// with a packet it may take (a lost wake-up is a loom deadlock).
    #[test]
    fn outside_taker_told_on_release() {
        for exits in [false, true] {
            let name = if exits {
                "outside_taker_told_on_exit"
            } else {
                "outside_taker_told_on_blocking"
            };
            check(name, 3, move || {
                let q = Queue::<u32>::new(1);
                let owner = thread::current();
                q.set_outside_taker(Box::new(move || owner.unpark()));
                let (a_runs, owner_took) = (Arc::new(Latch::default()), Arc::new(Latch::default()));
                let (qa, a_runs2, owner_took2) = (q.clone(), a_runs.clone(), owner_took.clone());
                let a = thread::spawn(move || {
                    assert_eq!(qa.get(None), Ok(1));
                    a_runs2.open();
                    if !exits {
                        let g = qa.blocking();
                        owner_took2.wait();
                        drop(g);
                    }
                });
                q.post(1).unwrap();
                a_runs.wait();
                q.post(2).unwrap();
                // The owner: take what may be taken, else sleep until told.
                let p = loop {
                    match q.get(Some(Duration::ZERO)) {
                        Ok(p) => break p,
                        Err(_) => thread::park(),
                    }
                };
                assert_eq!(p, 2);
                owner_took.open();
                a.join().unwrap();
            });
        }
    }

    // ---- strands --------------------------------------------------------

    /// Two packets of one strand (`0x1_0001`, `0x1_0002`) and two threads,
    /// limit 2: the second packet's handling starts only after the first's
    /// ended (its thread holds the strand until its next `get`), and each
    /// is delivered once.
    #[test]
    fn strand_packets_never_overlap() {
        check("strand_packets_never_overlap", 3, || {
            let q = Queue::<u32>::new(2);
            let log = Arc::new(loom::sync::Mutex::new(Vec::new()));
            q.post(0x1_0001).unwrap();
            q.post(0x1_0002).unwrap();
            let mut threads = Vec::new();
            for _ in 0..2 {
                let (q, log) = (q.clone(), log.clone());
                threads.push(thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut handle = |p: u32| {
                        log.lock().unwrap().push((true, p));
                        log.lock().unwrap().push((false, p));
                        got.push(p);
                    };
                    if let Ok(p) = q.get(SOME) {
                        handle(p);
                    }
                    step_out(&q, &mut handle);
                    got
                }));
            }
            let got: Vec<u32> = threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            assert_each_once(&q, got, &[0x1_0001, 0x1_0002]);
            let log = log.lock().unwrap().clone();
            assert_eq!(
                log,
                [
                    (true, 0x1_0001),
                    (false, 0x1_0001),
                    (true, 0x1_0002),
                    (false, 0x1_0002)
                ],
                "one strand's packets handled one after the other, in order"
            );
        });
    }

    /// A strand held by a running thread does not hold back other packets:
    /// with strand 1's first packet taken, a waiter is handed the plain
    /// packet queued behind strand 1's second.
    #[test]
    fn strand_skips_to_free_packets() {
        check("strand_skips_to_free_packets", 2, || {
            let q = Queue::<u32>::new(2);
            q.post(0x1_0001).unwrap();
            q.post(0x1_0002).unwrap();
            q.post(7).unwrap();
            assert_eq!(q.get(Some(Duration::ZERO)), Ok(0x1_0001));
            let qb = q.clone();
            let b = thread::spawn(move || {
                let r = qb.get(SOME);
                step_out(&qb, |_| panic!("only packet 7 is free"));
                r
            });
            assert_eq!(b.join().unwrap(), Ok(7), "the free packet goes past");
            // Our next get lets the strand go: its second packet is ours.
            assert_eq!(q.get(Some(Duration::ZERO)), Ok(0x1_0002));
            step_out(&q, |p| panic!("left over: {p}"));
        });
    }

    // ---- a queue whose waiters drive the kernel --------------------------

    /// What the modelled kernel holds.
    #[derive(Default)]
    struct KState {
        /// Completions the kernel posted, not yet reaped.
        cq: Vec<u32>,
        /// `wake_driver` was called and no turn consumed it yet.
        driver_signal: bool,
        /// The standby's channel fired (or `wake_standby` was called).
        standby_signal: bool,
        /// The standby's channel is armed: a completion fires it.
        armed: bool,
    }

    /// A kernel that completions arrive in (from a model thread), driven by
    /// the queue's driver: a turn reaps what arrived, waiting for it if
    /// allowed. It checks that no two turns wait or reap at once (only the
    /// driver turns, and it holds the role until `done`); what follows
    /// `done` it serializes itself, as the real one does with its lock.
    #[derive(Default)]
    struct ModelKernel {
        st: loom::sync::Mutex<KState>,
        cv: loom::sync::Condvar,
        /// A turn is between its start and its `done`.
        reaping: loom::sync::atomic::AtomicBool,
        /// Held for a whole turn.
        turn_lock: loom::sync::Mutex<()>,
    }

    impl ModelKernel {
        /// The kernel completes an operation: `p` waits in the CQ, and
        /// fires the standby's channel if it is armed.
        fn complete(&self, p: u32) {
            let mut st = self.st.lock().unwrap();
            st.cq.push(p);
            if st.armed {
                st.standby_signal = true;
            }
            self.cv.notify_all();
        }
    }

    impl Kernel<u32> for ModelKernel {
        fn turn(
            &self,
            timeout: Option<Duration>,
            done: &mut dyn FnMut(&mut Vec<u32>, bool) -> bool,
        ) {
            let _turn = self.turn_lock.lock().unwrap();
            assert!(
                !self.reaping.swap(true, Ordering::SeqCst),
                "two drivers turn the kernel at once"
            );
            let mut st = self.st.lock().unwrap();
            st.armed = false;
            let mut ran_out = timeout == Some(Duration::ZERO);
            if !ran_out {
                while st.cq.is_empty() && !st.driver_signal {
                    if timeout.is_some() {
                        // Time is abstract: let others run, then time out.
                        drop(st);
                        thread::yield_now();
                        st = self.st.lock().unwrap();
                        ran_out = st.cq.is_empty() && !st.driver_signal;
                        break;
                    }
                    st = self.cv.wait(st).unwrap();
                }
            }
            st.driver_signal = false;
            let mut batch = std::mem::take(&mut st.cq);
            drop(st);
            self.reaping.store(false, Ordering::SeqCst);
            let arm = done(&mut batch, ran_out);
            assert!(batch.is_empty(), "the queue takes the whole batch");
            if arm {
                let mut st = self.st.lock().unwrap();
                st.armed = true;
                if !st.cq.is_empty() {
                    st.standby_signal = true;
                    self.cv.notify_all();
                }
            }
        }
        fn submit(&self, _done: &mut dyn FnMut(&mut Vec<u32>)) {}
        fn pending(&self) -> bool {
            false
        }
        fn wake_driver(&self) {
            self.st.lock().unwrap().driver_signal = true;
            self.cv.notify_all();
        }
        fn kick(&self) {}
        fn standby_wait(&self, deadline: Option<std::time::Instant>) -> bool {
            let mut st = self.st.lock().unwrap();
            while !st.standby_signal {
                if deadline.is_some() {
                    drop(st);
                    thread::yield_now();
                    st = self.st.lock().unwrap();
                    if !st.standby_signal {
                        return true;
                    }
                    break;
                }
                st = self.cv.wait(st).unwrap();
            }
            st.standby_signal = false;
            false
        }
        fn wake_standby(&self) {
            self.st.lock().unwrap().standby_signal = true;
            self.cv.notify_all();
        }
    }

    /// A queue of limit `limit` whose waiters drive a modelled kernel.
    fn driven(limit: usize) -> (Queue<u32>, std::sync::Arc<ModelKernel>) {
        let q = Queue::<u32>::new(limit);
        let k = std::sync::Arc::new(ModelKernel::default());
        q.set_kernel(k.clone());
        (q, k)
    }

    /// A thread that takes one packet from `q`, waiting up to `timeout`.
    fn getter(q: &Queue<u32>, timeout: Option<Duration>) -> thread::JoinHandle<Result<u32, Empty>> {
        let q = q.clone();
        thread::spawn(move || q.get(timeout))
    }

    /// Two threads that wait forever on `q`, the first (once it waits) the
    /// driver, the second the standby.
    fn driver_and_standby(q: &Queue<u32>) -> Vec<thread::JoinHandle<Result<u32, Empty>>> {
        (0..2)
            .map(|n| {
                let t = getter(q, None);
                until_waiting(q, n + 1);
                t
            })
            .collect()
    }

    /// Once every thread of a driven model has returned: nobody drives,
    /// stands by or parks, nothing is left handed to a driver, and no
    /// standby's wake is still outstanding (a flag left set would keep
    /// every later thread from becoming the standby).
    fn assert_settled(q: &Queue<u32>) {
        if let Some(what) = q.unsettled() {
            panic!("queue not settled once all threads returned: {what}");
        }
    }

    /// Lets the other model threads run until `n` threads wait on `q`.
    fn until_waiting(q: &Queue<u32>, n: usize) {
        while q.stats().waiting < n {
            thread::yield_now();
        }
    }

    /// Two threads wait forever on a driven queue; the kernel completes two
    /// operations. Whichever thread drives, each completion is delivered
    /// exactly once and both threads return (a driver that leaves with a
    /// packet hands the other to the parked thread, or leaves it queued
    /// for the thread still on its way, or that thread drives in turn).
    #[test]
    fn driver_hand_over_one_per_packet() {
        check("driver_hand_over_one_per_packet", 3, || {
            let (q, k) = driven(2);
            let mut threads = Vec::new();
            for _ in 0..2 {
                threads.push(getter(&q, None));
            }
            k.complete(1);
            k.complete(2);
            // One packet each (a `get` takes one), none left behind.
            let got: Vec<u32> = threads
                .into_iter()
                .map(|t| t.join().unwrap().expect("a packet"))
                .collect();
            assert_each_once(&q, got, &[1, 2]);
            assert_settled(&q);
        });
    }

    /// The driver's place among the waiters: A drives, B and C park after
    /// it (B first). A packet posted from outside goes to the most recent
    /// parked waiter (C), the next to B; the driver, which arrived first,
    /// stands at the bottom for posts and is woken only when nobody else
    /// waits.
    #[test]
    fn driver_lifo_among_waiters() {
        check("driver_lifo_among_waiters", 2, || {
            let (q, _k) = driven(3);
            let mut threads = Vec::new();
            for name in 0..3u32 {
                let q2 = q.clone();
                threads.push(thread::spawn(move || {
                    let r = q2.get(None);
                    (name, r)
                }));
                until_waiting(&q, name as usize + 1);
            }
            q.post(10).unwrap();
            q.post(11).unwrap();
            q.post(12).unwrap();
            let got: Vec<(u32, Result<u32, Empty>)> =
                threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(
                got,
                [(0, Ok(12)), (1, Ok(11)), (2, Ok(10))],
                "posts go to the most recent waiter first, the driver last"
            );
            assert_settled(&q);
        });
    }

    /// Hand-offs racing timeouts on a driven queue: A drives (waiting
    /// forever), B and C wait with a timeout (the standby, and a thread
    /// parked above it, or in the other order), and two packets are
    /// posted. A parked thread reads its packet from its own slot without
    /// the queue's lock; one whose timeout fires as a packet is handed to
    /// it takes that packet, never leaves it behind. Each packet reaches
    /// exactly one thread or is handed back by the close that ends A's
    /// wait.
    #[test]
    fn timeouts_race_hand_offs() {
        check("timeouts_race_hand_offs", 2, || {
            let (q, _k) = driven(3);
            let a = getter(&q, None);
            until_waiting(&q, 1);
            let timed: Vec<_> = (0..2).map(|_| getter(&q, SOME)).collect();
            q.post(1).unwrap();
            q.post(2).unwrap();
            let mut got: Vec<u32> = timed
                .into_iter()
                .filter_map(|t| match t.join().unwrap() {
                    Ok(p) => Some(p),
                    Err(Empty::TimedOut) => None,
                    Err(e) => panic!("unexpected {e:?}"),
                })
                .collect();
            let mut took = got.len();
            got.extend(q.close());
            match a.join().unwrap() {
                Ok(p) => {
                    got.push(p);
                    took += 1;
                }
                Err(Empty::Abandoned) => {}
                Err(e) => panic!("driver: unexpected {e:?}"),
            }
            // At most the threads that returned a packet still count (a
            // thread's exit may have taken it back already); a packet the
            // close handed back ran on nobody.
            let running = q.stats().running;
            assert!(
                running <= took,
                "{running} running after close, {took} took a packet"
            );
            got.sort_unstable();
            assert_eq!(got, [1, 2], "each packet exactly once");
            assert_settled(&q);
        });
    }

    /// The standby handed a packet, and a new standby right after it: A
    /// drives, B parks as the standby and is handed packet 1 (woken on
    /// the kernel's channel), C arrives and becomes the next standby on
    /// the same channel before B has woken, and is handed packet 2. Both
    /// wake with their packet: one's wake-up is never taken by the other.
    #[test]
    fn standby_hand_off_then_new_standby() {
        check("standby_hand_off_then_new_standby", 2, || {
            let (q, _k) = driven(3);
            let mut threads = driver_and_standby(&q);
            q.post(1).unwrap();
            threads.push(getter(&q, None));
            until_waiting(&q, 2);
            q.post(2).unwrap();
            let b = threads.remove(1).join().unwrap();
            let c = threads.remove(1).join().unwrap();
            assert_eq!((b, c), (Ok(1), Ok(2)), "each standby its own packet");
            assert!(q.close().is_empty());
            assert_eq!(threads.remove(0).join().unwrap(), Err(Empty::Abandoned));
            assert_settled(&q);
        });
    }

    /// Limit 1 on a driven queue: two threads, two completions. The
    /// driver that reaps both keeps one and the other waits for the slot;
    /// never are two threads running at once.
    #[test]
    fn driver_respects_the_limit() {
        check("driver_respects_the_limit", 3, || {
            let (q, k) = driven(1);
            let threads = limit_one_threads(&q, 2);
            k.complete(1);
            k.complete(2);
            join_limit_one_threads(&q, threads, &[1, 2]);
            assert_settled(&q);
        });
    }

    /// The standby takes over: A drives and B parks as the standby. A
    /// reaps completion 1 and leaves with it (it never calls `get` again);
    /// completion 2 then arrives with nobody in the kernel, and must reach
    /// B all the same — through B's channel, armed as A left, or handed
    /// over by A if both arrived in one turn.
    #[test]
    fn standby_takes_over() {
        check("standby_takes_over", 3, || {
            let (q, k) = driven(2);
            let qa = q.clone();
            let a = thread::spawn(move || qa.get(None));
            until_waiting(&q, 1);
            let qb = q.clone();
            let b = thread::spawn(move || qb.get(None));
            until_waiting(&q, 2);
            k.complete(1);
            k.complete(2);
            assert_eq!(
                a.join().unwrap(),
                Ok(1),
                "the driver keeps what it reaped first"
            );
            assert_eq!(b.join().unwrap(), Ok(2), "the standby is not left waiting");
            assert_settled(&q);
        });
    }

    /// Close while a driver waits in the kernel and a standby parks: both
    /// return `Abandoned`.
    #[test]
    fn close_wakes_driver_and_standby() {
        check("close_wakes_driver_and_standby", 3, || {
            let (q, _k) = driven(2);
            let threads = driver_and_standby(&q);
            assert!(q.close().is_empty());
            for t in threads {
                assert_eq!(t.join().unwrap(), Err(Empty::Abandoned));
            }
            assert_settled(&q);
        });
    }
}
