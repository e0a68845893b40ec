//! Pooled receive: a stream of pool buffers.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use completion_port::{Backend, Buf, OpKind};

use crate::util::*;
use crate::ZERO;

/// A pooled receive is a stream of `more == true` chunks in pool buffers and
/// exactly one final `more == false` completion; buffers go back to the pool
/// when dropped (in_use returns to 0), and the stream survives the pool
/// running dry. Packets the engine queues for this thread count as
/// hand-offs on a threaded port and not on an inline one; a thread's own
/// post + get never does.
pub fn pooled_stream(t: &Target) {
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
        let mut comp = get_of(&port, OpKind::RecvPooled, 90, 3, op);
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
        // The buffer reads its own pool's count; with no engine thread
        // lending meanwhile (this thread turns the engine) it is the port's.
        let pb = held.last().expect("just pushed");
        assert!(pb.pool_in_use() >= held.len());
        if !t.engine_threads {
            assert_eq!(pb.pool_in_use(), port.pool_stats().in_use);
        }
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
    if t.inline || driven(&port) {
        // The one getter reaps its own completions (inline: as the owner;
        // driven: as the driver).
        assert_eq!(
            handoffs, 0,
            "a port whose getter turns the engine hands nothing across threads"
        );
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

/// A pooled receive with a pool of two 64-byte buffers: idle, it holds no
/// buffer; with both buffers held by the application it starves (no
/// completion, no failure) and resumes when they come back; FIN ends it
/// with one final completion and every buffer back in the pool.
pub fn pooled_receive_starves_and_resumes(t: &Target) {
    let port = t.build(t.builder().pool_buffers(2).pool_buffer_size(64));
    let (h, mut c) = tcp_pair(&port, 2);
    // Idle: no buffer held.
    port.recv_pooled(&h, 7).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(port.pool_stats().in_use, 0);
    let data = pattern(0, 1000);
    c.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut held = Vec::new();
    while held.len() < 2 {
        let mut p = get(&port);
        assert_eq!((p.kind, p.token, p.more), (OpKind::RecvPooled, 7, true));
        let b = p.take_buf().unwrap();
        got.extend_from_slice(b.as_slice());
        held.push(b);
    }
    // Both buffers are out: the receive is starved, not failed.
    no_packet(&port, Duration::from_millis(100));
    assert_eq!(port.pool_stats().in_use, 2);
    drop(held);
    while got.len() < data.len() {
        let mut p = get(&port);
        assert!(p.more, "{p:?}");
        got.extend_from_slice(p.take_buf().unwrap().as_slice());
    }
    assert!(got == data);
    c.shutdown(Shutdown::Write).unwrap();
    let p = get(&port);
    assert_eq!((p.kind, p.bytes(), p.more), (OpKind::RecvPooled, 0, false));
    assert!(p.result.is_ok());
    no_packet(&port, Duration::from_millis(100));
    let st = port.pool_stats();
    assert_eq!(st.in_use, 0);
    if t.backend == Backend::Epoll {
        assert_eq!(st.in_kernel, 0);
    }
    port.close();
}

/// A pool buffer dropped just before the engine goes to sleep must still
/// wake it (a lost wake-up here hung the pooled receive with the data
/// waiting). Many starvations per run make the race likely.
pub fn returned_buffers_always_wake_a_starved_receive(t: &Target) {
    for _ in 0..16 {
        let port = t.build(t.builder().pool_buffers(2).pool_buffer_size(64));
        let (h, mut c) = tcp_pair(&port, 1);
        let data = pattern(0, 256 << 10);
        let d2 = data.clone();
        let w = std::thread::spawn(move || {
            c.write_all(&d2).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        });
        port.recv_pooled(&h, 1).unwrap();
        let mut got = Vec::new();
        loop {
            let mut p = get(&port);
            if !p.more {
                assert_eq!(p.bytes(), 0, "{p:?}");
                break;
            }
            got.extend_from_slice(p.take_buf().unwrap().as_slice());
        }
        w.join().unwrap();
        assert!(got == data);
        assert!(port.engine_stats().starved > 0);
        port.close();
    }
}

/// Receives starved for buffers resume as buffers come back, oldest first
/// and no more of them than there are buffers: 96 connections with data
/// waiting and a pool of 4 (per engine). The application takes chunks until
/// it holds every buffer, waits on the port a while with the pool dry (no
/// chunk can come; on IOCP that `get` is also where readiness packets are
/// read, and their receives starve), then drops them all, round after
/// round. Every chunk arrives, and a receive starves about once. Resuming
/// every starved receive on each return would make all but 4 (per engine)
/// starve again each round: with one engine, 92 + 88 + ... + 4 = 1,104
/// starvations for 96 receives; with two engines of 48 connections each,
/// 2 × (44 + 40 + ... + 4) = 528; the bound is 3 × 96 = 288.
pub fn starved_receives_resume_one_per_buffer(t: &Target) {
    const N: usize = 96;
    const LEN: usize = 16;
    let port = t.build(t.builder().pool_buffers(4).pool_buffer_size(64));
    // Every engine has a pool of its own.
    let bufs = port.pool_stats().total;
    assert_eq!(N % bufs, 0, "{bufs} buffers");
    let mut conns = Vec::new();
    for i in 0..N {
        let (h, c) = tcp_pair(&port, 100 + i as u64);
        port.recv_pooled(&h, i as u64).unwrap();
        conns.push((h, c));
    }
    for (i, (_, c)) in conns.iter_mut().enumerate() {
        c.write_all(&pattern(i, LEN)).unwrap();
    }
    let mut seen = [false; N];
    let mut held = Vec::new();
    for _ in 0..N {
        let mut p = get(&port);
        assert_eq!((p.kind, p.more), (OpKind::RecvPooled, true), "{p:?}");
        let i = p.token as usize;
        let b = p.take_buf().unwrap();
        assert_eq!(b.as_slice(), &pattern(i, LEN)[..], "connection {i}");
        assert!(
            !std::mem::replace(&mut seen[i], true),
            "connection {i} twice"
        );
        held.push(b);
        if held.len() == bufs {
            no_packet(&port, Duration::from_millis(100));
            held.clear();
        }
    }
    let starved = port.engine_stats().starved;
    println!("{N} connections through {bufs} buffers: {starved} starvations");
    assert!(starved > 0, "the pool never ran dry");
    assert!(
        starved <= 3 * N as u64,
        "{starved} starvations for {N} receives: starved receives were \
         resumed without buffers for them"
    );
    port.close();
}
