//! Echo-loop micro-benchmark, all in one process: a minimal echo server on a
//! port, driven by a plain blocking client over loopback.
//!
//! Compares, in one run and interleaved:
//! * **pooled vs single-shot receive**: `recv_pooled` (multishot receive into
//!   the buffer ring, the buffer sent back as is) against one `recv` into a
//!   `Vec` per message, re-armed after each send;
//! * **pool model vs per-core**: one worker in `get_many` on a port fed by an
//!   engine thread (a hand-off per batch) against an inline port whose
//!   thread drives its own engine (no hand-off).
//!
//! The client keeps `CONNS` connections each with one 64-byte message in
//! flight (closed loop), and counts round trips per second. Figures are
//! medians over repeats; every server variant runs once per repeat.
//!
//! ```text
//! cargo bench -p completion-port --bench echo_loop            # full
//! cargo bench -p completion-port --bench echo_loop -- --quick # shorter
//! ```
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use completion_port::{Buf, Completion, OpKind, Port};

const CONNS: usize = 16;
const MSG: usize = 64;
const LISTENER: u64 = u64::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Model {
    Pool,
    PerCore,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Recv {
    Pooled,
    Single,
}

/// Runs the server until `stop`; reports its address through `ready`.
fn server(
    model: Model,
    recv: Recv,
    ready: mpsc::Sender<std::net::SocketAddr>,
    stop: Arc<AtomicBool>,
) {
    let port = Port::builder()
        .concurrency(1)
        .inline(model == Model::PerCore)
        .build()
        .expect("port");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, LISTENER).unwrap();
    port.accept_stream(&lh, 0).unwrap();
    ready.send(addr).unwrap();
    let mut conns = Vec::new();
    let mut batch: Vec<Completion> = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        if port
            .get_many(&mut batch, 64, Some(Duration::from_millis(50)))
            .is_err()
        {
            continue;
        }
        for mut c in batch.drain(..) {
            match c.kind {
                OpKind::Accept => {
                    if let Some((s, _)) = c.take_accepted() {
                        s.set_tcp_nodelay(true).unwrap();
                        let key = conns.len() as u64;
                        let h = port.associate(s, key).unwrap();
                        match recv {
                            Recv::Pooled => port.recv_pooled(&h, 0).unwrap(),
                            Recv::Single => port.recv(&h, Vec::with_capacity(4096), 0).unwrap(),
                        };
                        conns.push(h);
                    }
                }
                OpKind::RecvPooled | OpKind::Recv => {
                    let h = &conns[c.key as usize];
                    let n = c.bytes();
                    match c.take_buf() {
                        Some(b) if n > 0 => {
                            let _ = port.send(h, b, 0);
                        }
                        _ => {}
                    }
                }
                OpKind::Send if recv == Recv::Single && c.is_ok() => {
                    let h = &conns[c.key as usize];
                    let mut v = c.take_buf().map(Buf::into_vec).unwrap_or_default();
                    v.clear();
                    let _ = port.recv(h, v, 0);
                }
                _ => {}
            }
        }
    }
    drop(conns);
    port.close();
}

/// Round trips per second against a server at `addr` for `dur`.
fn client(addr: std::net::SocketAddr, dur: Duration) -> f64 {
    let mut socks: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    // Warm up, then measure.
    let mut count = 0u64;
    let warm = Instant::now() + dur / 5;
    let mut start = None;
    loop {
        for s in socks.iter_mut() {
            s.write_all(&msg).unwrap();
        }
        for s in socks.iter_mut() {
            s.read_exact(&mut buf).unwrap();
        }
        let now = Instant::now();
        match start {
            None if now >= warm => start = Some(now),
            None => {}
            Some(t) => {
                count += CONNS as u64;
                if now - t >= dur {
                    return count as f64 / (now - t).as_secs_f64();
                }
            }
        }
    }
}

fn run(model: Model, recv: Recv, dur: Duration) -> f64 {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let t = std::thread::spawn(move || server(model, recv, tx, st));
    let addr = rx.recv().expect("server address");
    let r = client(addr, dur);
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    r
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[cfg(target_os = "linux")]
fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 3 } else { 5 };
    let dur = Duration::from_millis(if quick { 300 } else { 1500 });
    let variants = [
        (Model::PerCore, Recv::Pooled),
        (Model::PerCore, Recv::Single),
        (Model::Pool, Recv::Pooled),
        (Model::Pool, Recv::Single),
    ];
    let mut r: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..repeats {
        for (i, (m, rv)) in variants.iter().enumerate() {
            r[i].push(run(*m, *rv, dur));
        }
    }
    let m: Vec<f64> = r.iter_mut().map(|v| median(v)).collect();
    println!(
        "echo_loop: {CONNS} connections × {MSG} B, closed loop, blocking client in-process; {repeats} repeats, median round trips/s"
    );
    println!("| server | round trips/s | vs per-core pooled |");
    println!("|---|---:|---:|");
    for (i, (model, recv)) in variants.iter().enumerate() {
        println!(
            "| {model:?} model, {recv:?} receive | {:.0} | {:.2} |",
            m[i],
            m[i] / m[0]
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("echo_loop: Linux only");
}
