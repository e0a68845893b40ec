//! A completed operation leaves nothing of its deadline behind, measured
//! without trusting the library's own counters: every allocation in this
//! test binary goes through a counting allocator, and a batch of 10,000
//! receives with a 60 s deadline, run after a first batch has grown every
//! buffer and map to its working size, must leave the heap where it was. A
//! buffer may still grow now and then (a fuller queue than before), so up to
//! ten batches run, until one keeps less than 64 KiB. A timer heap that
//! keeps each deadline until it fires grows by over a hundred bytes per
//! completed operation in every batch. One test, so nothing else allocates
//! while it measures; each backend in turn.

mod util;

use std::alloc::System;
use std::io::Write;
use std::time::Duration;

use completion_port::{Backend, OpOptions, Port};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use util::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: u64 = 10_000;
/// Heap growth of one batch that counts as keeping nothing.
const LIMIT: i64 = 64 * 1024;

/// N one-byte receives with a 60 s deadline, all completed by N bytes.
fn batch(port: &Port, h: &completion_port::Handle, c: &mut std::net::TcpStream) {
    for i in 0..N {
        port.recv(
            h,
            Vec::with_capacity(1),
            OpOptions::with_timeout(i, Duration::from_secs(60)),
        )
        .expect("recv");
    }
    c.write_all(&vec![7u8; N as usize]).expect("write");
    for _ in 0..N {
        let comp = get(port);
        assert_eq!(comp.bytes(), 1, "{}", brief(&comp));
    }
}

#[test]
fn completed_deadlines_free_their_memory() {
    let mut failed = Vec::new();
    for &b in Backend::available() {
        let t = Target {
            backend: b,
            inline: false,
            engine_threads: false,
        };
        if !t.ready(&format!("timer_memory[{b}]")) {
            continue;
        }
        let port = t.port();
        let (h, mut c) = tcp_pair(&port, 1);
        batch(&port, &h, &mut c);
        // A buffer may still grow in a later batch (how far a queue or a
        // command list fills depends on timing), but only so many times; a
        // leak shows in every batch. Up to ten batches, until one keeps
        // (almost) nothing.
        let mut kept = i64::MAX;
        for _ in 0..10 {
            let region = Region::new(GLOBAL);
            batch(&port, &h, &mut c);
            let ch = region.change();
            let grew = ch.bytes_allocated as i64 - ch.bytes_deallocated as i64
                + ch.bytes_reallocated as i64;
            kept = kept.min(grew);
            if kept < LIMIT {
                break;
            }
        }
        say(format!(
            "timer_memory[{b}]: {N} completed receives with a 60 s deadline kept {kept} bytes"
        ));
        if kept >= LIMIT {
            failed.push(format!(
                "{b}: {N} completed receives with a 60 s deadline left {kept} bytes on the heap ({} per operation)",
                kept / N as i64
            ));
        }
        port.close();
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
