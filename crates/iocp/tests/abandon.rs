//! An inline port closed (or dropped) off its owner thread never enters the
//! owner's ring, so it leaks what the kernel may still hold — but only that:
//! the operations the kernel never saw are freed. Here the owner starts two
//! receives on one socket between turns (at once, straight into its
//! engine): the first issued but not yet handed to the kernel, the second
//! waiting in the read lane behind it. Another thread then closes the port;
//! a global allocator that watches the two buffers says whether they were
//! freed.
//!
//! A binary of its own: the allocator watches addresses process-wide.
#![cfg(target_os = "linux")]

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use completion_port::Backend;
use util::*;

/// Forwards to the system allocator; notes when a watched block is freed.
struct Watching;

static WATCHED: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static FREED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

// SAFETY: forwards to the system allocator unchanged; only compares the
// address of each block freed with the watched ones.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        for (w, f) in WATCHED.iter().zip(&FREED) {
            if w.load(Ordering::SeqCst) == ptr as usize {
                f.store(true, Ordering::SeqCst);
            }
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watching = Watching;

/// A buffer whose block is watched as number `i`.
fn watched(i: usize) -> Vec<u8> {
    let v = Vec::with_capacity(4096);
    FREED[i].store(false, Ordering::SeqCst);
    WATCHED[i].store(v.as_ptr() as usize, Ordering::SeqCst);
    v
}

#[test]
fn closed_off_thread_frees_what_the_kernel_never_saw() {
    for backend in [Backend::Uring, Backend::Epoll] {
        let t = Target::new(backend, true);
        if !t.ready("closed_off_thread_frees_what_the_kernel_never_saw") {
            continue;
        }
        for close in [true, false] {
            let port = t.port();
            let (h, _peer) = tcp_pair(&port, 1);
            // One turn takes the registration in: the next starts go
            // straight into the engine.
            no_packet(&port, Duration::ZERO);
            port.recv(&h, watched(0), 1).unwrap();
            port.recv(&h, watched(1), 2).unwrap();
            std::thread::spawn(move || {
                if close {
                    port.close();
                }
                drop(port);
            })
            .join()
            .unwrap();
            let how = if close { "closed" } else { "dropped" };
            for (i, what) in ["started first", "started behind it"].iter().enumerate() {
                assert!(
                    FREED[i].load(Ordering::SeqCst),
                    "{}: port {how} off its owner thread: the buffer of the receive {what} \
                     was leaked, not freed",
                    t.name()
                );
            }
            WATCHED.iter().for_each(|w| w.store(0, Ordering::SeqCst));
            drop(h);
        }
    }
}
