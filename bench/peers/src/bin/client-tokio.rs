//! A plain tokio echo load client, to check `iocp-echo bench` against a second load generator.
//!
//! `client-tokio ADDR [--connections N] [--size BYTES] [--warmup SECS] [--duration SECS]`
//!
//! tokio `current_thread` runtime (one thread: pin it with `taskset`). N connections, each a
//! task that loops `write_all(msg)` then `read_exact(msg)`: closed loop, depth 1. Round trips are
//! counted in one shared counter; a plain std thread (asleep all the time) reads it after the
//! warm-up and again after the measured window, prints one JSON line on stdout and exits the
//! process. Echoed bytes are not verified (this is the "what a quick hand-written client sees"
//! baseline). No tokio `time` feature is used, so the peers' build stays as it is.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);
static CONNECTED: AtomicU64 = AtomicU64::new(0);

struct Args {
    addr: SocketAddr,
    connections: usize,
    size: usize,
    warmup: f64,
    duration: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "client-tokio: {msg}\nusage: client-tokio ADDR [--connections N] [--size BYTES] [--warmup SECS] [--duration SECS]"
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut addr = None;
    let (mut connections, mut size, mut warmup, mut duration) = (16usize, 64usize, 1.0f64, 3.0f64);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        match a.as_str() {
            "-c" | "--connections" => connections = val(&a).parse().unwrap_or_else(|_| usage("bad --connections")),
            "-s" | "--size" => size = val(&a).parse().unwrap_or_else(|_| usage("bad --size")),
            "--warmup" => warmup = val(&a).parse().unwrap_or_else(|_| usage("bad --warmup")),
            "--duration" => duration = val(&a).parse().unwrap_or_else(|_| usage("bad --duration")),
            "-h" | "--help" => usage("help"),
            s if addr.is_none() && !s.starts_with('-') => {
                addr = Some(s.parse().unwrap_or_else(|e| usage(&format!("bad address `{s}`: {e}"))))
            }
            s => usage(&format!("unexpected argument `{s}`")),
        }
    }
    if connections == 0 || size == 0 || duration <= 0.0 || warmup < 0.0 {
        usage("connections, size and duration must be > 0");
    }
    Args { addr: addr.unwrap_or_else(|| usage("ADDR is required")), connections, size, warmup, duration }
}

async fn conn(addr: SocketAddr, size: usize) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    CONNECTED.fetch_add(1, Ordering::Relaxed);
    let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut buf = vec![0u8; size];
    loop {
        s.write_all(&msg).await?;
        s.read_exact(&mut buf).await?;
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let a = parse();
    let (n, warmup, duration) = (a.connections as u64, a.warmup, a.duration);
    std::thread::spawn(move || {
        // Wait for every connection (at most 10 s), then warm up, then measure.
        let t0 = Instant::now();
        while CONNECTED.load(Ordering::Relaxed) < n && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let connected = CONNECTED.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs_f64(warmup));
        let c0 = ROUND_TRIPS.load(Ordering::Relaxed);
        let m0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(duration));
        let c1 = ROUND_TRIPS.load(Ordering::Relaxed);
        let secs = m0.elapsed().as_secs_f64();
        println!(
            "{{\"client\":\"client-tokio\",\"connections\":{connected},\"round_trips\":{},\"duration_s\":{secs:.3},\"round_trips_per_s\":{:.1}}}",
            c1 - c0,
            (c1 - c0) as f64 / secs
        );
        std::process::exit(if connected == n { 0 } else { 1 });
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    rt.block_on(async move {
        let mut tasks = Vec::with_capacity(a.connections);
        for _ in 0..a.connections {
            tasks.push(tokio::spawn(async move {
                if let Err(e) = conn(a.addr, a.size).await {
                    eprintln!("client-tokio: connection: {e}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    // Every connection ended before the measurement did.
    eprintln!("client-tokio: all connections ended early");
    std::process::exit(1);
}
