//! Micro-benchmark: the port's queue against `std::sync::mpsc` and
//! `crossbeam-channel`, in one run.
//!
//! * **ping-pong latency**: two threads bounce one packet through two queues
//!   (post → get → post back → get); the figure is the median round trip.
//! * **throughput with T threads**: T threads each loop `get` → `post`, with
//!   T packets circulating, for a fixed time; the figure is packets per
//!   second through the queue (a `std::sync::mpsc::Receiver` cannot be
//!   shared, so it sits behind a mutex — what a user of std would do).
//!
//! Each figure is the median of `REPEATS` runs; peers are interleaved within
//! each repeat so machine noise hits all of them alike.
//!
//! ```text
//! cargo bench -p completion-port --bench post_get            # full
//! cargo bench -p completion-port --bench post_get -- --quick # shorter runs
//! cargo bench -p completion-port --bench post_get -- --only iocp 8 2
//! ```
//!
//! `--only QUEUE T [P]` (QUEUE: `iocp`, `std` or `crossbeam`) runs only
//! that queue's throughput at T threads with P packets circulating
//! (default T; fewer than T makes most `get`s wait) and prints the packets
//! it moved in all, and each run's `get`s that waited out their 200 ms:
//! for counting what a queue costs per packet with `perf stat` (context
//! switches, futex calls), figures the machine's load moves far less than
//! timings.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use completion_port::Port;

trait Q: Clone + Send + 'static {
    fn new() -> Self;
    fn put(&self, v: u64);
    fn take(&self) -> Option<u64>;
}

#[derive(Clone)]
struct PortQ(Port);
impl Q for PortQ {
    fn new() -> Self {
        // Concurrency 64 so the limit never throttles this test. The
        // port has no engine thread: a waiting get drives the ring, and
        // with as many packets as threads no get waits.
        PortQ(Port::new(64).expect("port"))
    }
    fn put(&self, v: u64) {
        self.0.post(0, 0, v).expect("post");
    }
    fn take(&self) -> Option<u64> {
        self.0
            .get(Some(Duration::from_millis(200)))
            .ok()
            .map(|c| c.token)
    }
}

#[derive(Clone)]
struct StdQ(mpsc::Sender<u64>, Arc<Mutex<mpsc::Receiver<u64>>>);
impl Q for StdQ {
    fn new() -> Self {
        let (t, r) = mpsc::channel();
        StdQ(t, Arc::new(Mutex::new(r)))
    }
    fn put(&self, v: u64) {
        self.0.send(v).expect("send");
    }
    fn take(&self) -> Option<u64> {
        self.1
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_millis(200))
            .ok()
    }
}

#[derive(Clone)]
struct CbQ(
    crossbeam_channel::Sender<u64>,
    crossbeam_channel::Receiver<u64>,
);
impl Q for CbQ {
    fn new() -> Self {
        let (t, r) = crossbeam_channel::unbounded();
        CbQ(t, r)
    }
    fn put(&self, v: u64) {
        self.0.send(v).expect("send");
    }
    fn take(&self) -> Option<u64> {
        self.1.recv_timeout(Duration::from_millis(200)).ok()
    }
}

/// Median round-trip time in nanoseconds over `n` round trips.
fn pingpong<T: Q>(n: usize) -> f64 {
    let (a, b) = (T::new(), T::new());
    let (a2, b2) = (a.clone(), b.clone());
    let echo = std::thread::spawn(move || {
        for _ in 0..n {
            let v = a2.take().expect("ping");
            b2.put(v);
        }
    });
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        a.put(i);
        let v = b.take().expect("pong");
        assert_eq!(v, i);
        samples.push(t.elapsed().as_nanos() as f64);
    }
    echo.join().unwrap();
    median(&mut samples)
}

/// What one throughput run measured.
struct Run {
    /// Packets per second.
    rate: f64,
    /// Packets moved.
    moved: u64,
    /// `take`s that waited 200 ms for nothing (see [`throughput`]).
    idle_takes: u64,
}

/// Packets per second with `threads` threads each doing get → post,
/// `packets` of them circulating, how many packets moved, and how many
/// `take`s timed out. With fewer packets than threads some threads always
/// wait; the port wakes the most recent waiter first, so the oldest ones
/// may wait out their 200 ms again and again while the others circulate
/// the packets. Such timeouts are expected then, not a lost wake.
fn throughput<T: Q>(threads: usize, packets: usize, dur: Duration) -> Run {
    let q = T::new();
    for i in 0..packets as u64 {
        q.put(i);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let idle = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (q, stop, count, idle, start) = (
                q.clone(),
                stop.clone(),
                count.clone(),
                idle.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(v) = q.take() {
                        q.put(v);
                        n += 1;
                    } else if !stop.load(Ordering::Relaxed) {
                        // 200 ms with no packet while others circulated
                        // them (expected with fewer packets than threads).
                        idle.fetch_add(1, Ordering::Relaxed);
                    }
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let el = t.elapsed();
    for h in hs {
        h.join().unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    Run {
        rate: n as f64 / el.as_secs_f64(),
        moved: n,
        idle_takes: idle.load(Ordering::Relaxed),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 3 } else { 5 };
    let n = if quick { 5_000 } else { 20_000 };
    let dur = Duration::from_millis(if quick { 200 } else { 1000 });
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let num = |j: usize| args.get(i + j).and_then(|t| t.parse::<usize>().ok());
        let threads = num(2).expect("--only QUEUE THREADS [PACKETS]");
        let packets = num(3).unwrap_or(threads);
        let run = match args[i + 1].as_str() {
            "iocp" => throughput::<PortQ>,
            "std" => throughput::<StdQ>,
            "crossbeam" => throughput::<CbQ>,
            q => panic!("--only: no queue {q}"),
        };
        let (mut rates, mut total, mut idle) = (Vec::new(), 0, Vec::new());
        for _ in 0..repeats {
            let r = run(threads, packets, dur);
            rates.push(r.rate);
            total += r.moved;
            idle.push(r.idle_takes);
        }
        println!(
            "{} {threads} threads, {packets} packets: {:.0} packets/s (median of {repeats}), {total} packets in all, gets that waited 200 ms for nothing per run {idle:?} (expected with fewer packets than threads)",
            args[i + 1],
            median(&mut rates),
        );
        return;
    }
    println!(
        "post_get micro-benchmark: {} CPUs, {repeats} repeats, median of each",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut lat: [Vec<f64>; 3] = Default::default();
    for _ in 0..repeats {
        lat[0].push(pingpong::<PortQ>(n));
        lat[1].push(pingpong::<StdQ>(n));
        lat[2].push(pingpong::<CbQ>(n));
    }
    let l: Vec<f64> = lat.iter_mut().map(|v| median(v)).collect();
    println!("\nping-pong round trip (median ns; lower is better)");
    println!("| queue | round trip | vs iocp |");
    println!("|---|---:|---:|");
    for (name, v) in ["iocp Port", "std mpsc", "crossbeam"].iter().zip(&l) {
        println!("| {name} | {:.0} ns | {:.2} |", v, v / l[0]);
    }

    println!("\nthroughput, T threads each get → post (median packets/s; higher is better)");
    println!(
        "| threads | iocp Port | std mpsc (+Mutex) | crossbeam | iocp ÷ std | iocp ÷ crossbeam |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for threads in [1, 2, 4, 8] {
        let mut r: [Vec<f64>; 3] = Default::default();
        for _ in 0..repeats {
            r[0].push(throughput::<PortQ>(threads, threads, dur).rate);
            r[1].push(throughput::<StdQ>(threads, threads, dur).rate);
            r[2].push(throughput::<CbQ>(threads, threads, dur).rate);
        }
        let m: Vec<f64> = r.iter_mut().map(|v| median(v)).collect();
        println!(
            "| {threads} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            m[0],
            m[1],
            m[2],
            m[0] / m[1],
            m[0] / m[2]
        );
    }
}
