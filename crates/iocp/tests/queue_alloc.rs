//! The port's queue allocates nothing on its hot paths, counted by a global
//! allocator that counts each thread's allocations:
//!
//! * `post` with nobody waiting queues the packet under one lock and
//!   allocates nothing (once the queue has grown to its working size);
//! * a blocking `get` reuses its thread's waiter: a thread that blocks in
//!   `get` again and again (parked, or driving the engine) allocates
//!   nothing per `get`.
//!
//! Linux only: on Windows the kernel's port is the queue.
#![cfg(target_os = "linux")]

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use completion_port::{Backend, Port};

/// Counts the allocations the calling thread makes.
struct Counting;

std::thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread's last allocations may come after its locals
    // are gone.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// Allocations the calling thread made so far.
fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));
const ROUNDS: usize = 1000;

/// The ports to test: per backend of this build, one its waiting threads
/// drive and one fed by engine threads.
fn ports() -> Vec<(String, Port)> {
    let mut v = Vec::new();
    for &be in Backend::available() {
        for engine_threads in [false, true] {
            let t = util::Target {
                backend: be,
                inline: false,
                engine_threads,
            };
            if t.ready(&format!("queue_alloc[{}]", t.name())) {
                v.push((t.name(), t.build(t.builder().concurrency(2))));
            }
        }
    }
    v
}

#[test]
fn post_without_a_waiter_allocates_nothing() {
    for (name, port) in ports() {
        // Warm up: the queue grows to hold ROUNDS packets once.
        for round in 0..2 {
            let before = allocs();
            for i in 0..ROUNDS {
                port.post(1, i, i as u64).unwrap();
            }
            let during = allocs() - before;
            for i in 0..ROUNDS {
                let c = port.get(WAIT).expect("the packet posted");
                assert_eq!(c.token, i as u64, "{name}: FIFO");
            }
            if round == 1 {
                assert_eq!(
                    during, 0,
                    "{name}: {ROUNDS} posts with nobody waiting made {during} allocations"
                );
            }
        }
        port.close();
    }
}

#[test]
fn blocking_get_allocates_nothing_per_get() {
    for (name, port) in ports() {
        let p2 = port.clone();
        // The getter blocks in every `get` (the poster waits until it
        // does) and counts its own allocations after a warm-up.
        let getter = std::thread::spawn(move || {
            let mut before = 0;
            for i in 0..2 * ROUNDS {
                if i == ROUNDS {
                    before = allocs();
                }
                let c = p2.get(WAIT).expect("the packet posted");
                assert_eq!(c.token, i as u64);
            }
            allocs() - before
        });
        for i in 0..2 * ROUNDS {
            let deadline = Instant::now() + Duration::from_secs(10);
            while port.stats().waiting == 0 {
                assert!(Instant::now() < deadline, "{name}: the getter never waits");
                std::thread::yield_now();
            }
            port.post(1, 0, i as u64).unwrap();
        }
        let during = getter.join().unwrap();
        println!("{name}: {ROUNDS} blocking gets made {during} allocations");
        assert_eq!(
            during, 0,
            "{name}: {ROUNDS} blocking gets made {during} allocations"
        );
        port.close();
    }
}
