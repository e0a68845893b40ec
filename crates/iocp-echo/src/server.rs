//! `iocp-echo server`: an RFC 862 echo service on the `iocp` completion port.
//!
//! Two models (see the README, "iocp-echo server"):
//!
//! * `pool` — the seed's model: one [`Port`], N worker threads all waiting in
//!   `get_many`; any worker handles any completion.
//! * `per-core` — N shards, each one thread that builds its own inline port
//!   and its own `SO_REUSEPORT` listener and handles its own completions.
//!
//! Module map: [`config`] (flags and the validated configuration), [`listen`] (binding,
//! systemd socket activation), [`shard`] (everything that happens on a port:
//! control and timers, listeners, connections, UDP; a file each), [`route`]
//! (what a completion key or a control token names), [`table`] (the
//! connection table), [`stats`] (counters), [`rate_limit`] (the per-source
//! UDP rate limiter), [`signals`] (SIGINT/SIGTERM), [`metrics`]
//! (`--metrics`: /metrics, /healthz, /readyz) served by [`http`] on a port
//! and thread of its own.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use completion_port::Port;

mod config;
mod http;
mod listen;
mod metrics;
mod rate_limit;
mod route;
mod shard;
#[cfg(unix)]
mod signals;
#[cfg(windows)]
#[path = "server/signals_windows.rs"]
mod signals;
mod stats;
mod table;

pub use config::Args;

/// A stop request (SIGINT/SIGTERM, or Ctrl-C on Windows), the `nth` one
/// seen: the first drains gracefully, any later one cuts what is left. A
/// packet posted to every port wakes a worker there to act on it.
#[cfg(any(unix, windows))]
fn stop_requested(nth: usize, name: &str, ports: &[Port], g: &Global) {
    if nth == 1 {
        let _ = g.signalled.set(std::time::Instant::now());
        g.draining.store(true, std::sync::atomic::Ordering::Release);
        let delay = g.cfg.drain_delay;
        let up_to = humantime::format_duration(g.cfg.drain_timeout);
        if delay.is_zero() {
            tracing::info!(
                "{name}: stopping accepts, draining in-flight echoes (up to {up_to}); repeat it to cut now"
            );
            for p in ports {
                let _ = Ctrl::Shutdown.post(p);
            }
        } else {
            // Still accepting, but /readyz says 503: a balancer's health
            // check sees it and stops routing here before accepts stop.
            tracing::info!(
                "{name}: not ready (/readyz 503); accepting for {} more, then stopping accepts and draining in-flight echoes (up to {up_to}); repeat it to cut now",
                humantime::format_duration(delay)
            );
            for p in ports {
                let _ = Ctrl::Shutdown.post_after(p, delay);
            }
        }
    } else {
        tracing::warn!("{name} again: cutting the remaining connections now");
        for p in ports {
            let _ = Ctrl::Cut.post(p);
        }
    }
}
use config::{Config, Model};
use listen::{Bound, Proto};
use route::Ctrl;
use shard::Shard;
use stats::Global;

/// Runs `iocp-echo server`. Exit codes: 0 after a clean shutdown, 1 when the
/// server could not run (bind, port or thread errors), 2 for bad flags.
pub fn run(a: Args) -> ExitCode {
    let cfg = match Config::from_args(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iocp-echo server: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            tracing::error!("{msg}");
            eprintln!("iocp-echo server: {msg}");
            ExitCode::from(1)
        }
    }
}

/// A started port with the threads waiting on it.
struct Running {
    ports: Vec<Port>,
    threads: Vec<JoinHandle<()>>,
    shards: Vec<Arc<Shard>>,
}

fn serve(cfg: Config) -> Result<(), String> {
    // Signals first: a SIGTERM that arrives right after the listening line
    // is printed must already mean "drain", not "die".
    #[cfg(any(unix, windows))]
    let mut sig =
        signals::Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let nshards = match cfg.model {
        Model::Pool => 1,
        Model::PerCore => cfg.workers,
    };
    let bound = listen::bind_all(&cfg, nshards)?;
    let metrics_sock = cfg.metrics.map(http::bind).transpose()?;
    let global = Arc::new(Global::new(cfg.clone(), cfg.workers));

    let running = match cfg.model {
        Model::Pool => start_pool(&global, bound)?,
        Model::PerCore => start_per_core(&global, bound, nshards)?,
    };
    let http = match metrics_sock {
        None => None,
        Some(sock) => {
            let svc = metrics::Endpoints::new(global.clone(), running.ports.clone());
            match http::HttpServer::start(sock, cfg.backend, svc) {
                Ok(h) => Some(h),
                Err(e) => {
                    for p in &running.ports {
                        let _ = Ctrl::Cut.post(p);
                    }
                    for t in running.threads {
                        let _ = t.join();
                    }
                    for p in &running.ports {
                        p.close();
                    }
                    return Err(format!("metrics: {e}"));
                }
            }
        }
    };

    // The ports are up and every socket is listening: tell the world.
    let port0 = &running.ports[0];
    let info = port0.backend();
    let addrs: Vec<String> = running.shards[0].addresses();
    {
        let mut out = std::io::stdout().lock();
        for a in &addrs {
            let _ = writeln!(out, "listening on {a}");
        }
        if let Some(h) = &http {
            let _ = writeln!(out, "metrics on http://{}", h.addr);
        }
        let _ = out.flush();
    }
    // `backend` names the engine, why it was chosen and, on io_uring, the
    // kernel features in use.
    tracing::info!(
        backend = %info,
        model = %cfg.model.name(),
        workers = cfg.workers,
        listen = %addrs.join(" "),
        max_conns = cfg.max_conns,
        max_pending = cfg.max_pending,
        idle_timeout = %crate::values::fmt_opt_duration(cfg.idle_timeout),
        drain_timeout = %humantime::format_duration(cfg.drain_timeout),
        drain_delay = %humantime::format_duration(cfg.drain_delay),
        metrics = %http.as_ref().map_or_else(|| "off".to_string(), |h| format!("http://{}", h.addr)),
        "iocp-echo server started"
    );

    #[cfg(any(unix, windows))]
    let sig_thread = sig.spawn(running.ports.clone(), global.clone());

    let stats_stop = cfg.stats.map(|every| {
        let (tx, rx) = mpsc::channel::<()>();
        let g = global.clone();
        let ports = running.ports.clone();
        let t = std::thread::Builder::new()
            .name("iocp-echo-stats".into())
            .spawn(move || loop {
                match rx.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => g.log_stats("stats", &ports),
                    _ => return,
                }
            })
            .ok();
        (tx, t)
    });

    let mut panicked = 0;
    for t in running.threads {
        if t.join().is_err() {
            panicked += 1;
        }
    }
    if let Some((tx, t)) = stats_stop {
        drop(tx);
        if let Some(t) = t {
            let _ = t.join();
        }
    }
    #[cfg(any(unix, windows))]
    sig.stop(sig_thread);

    global.log_stats("final stats", &running.ports);
    global.log_summary();
    if let Some(h) = http {
        h.stop();
    }
    drop(running.shards);
    for p in &running.ports {
        p.close();
    }
    if panicked > 0 {
        return Err(format!("{panicked} worker thread(s) panicked"));
    }
    Ok(())
}

/// `--model pool`: one port, `workers` threads waiting on it.
fn start_pool(global: &Arc<Global>, bound: Vec<Bound>) -> Result<Running, String> {
    let cfg = &global.cfg;
    // One engine: the shard reads one pool's use against the port's pool
    // size (see `Shard::new`).
    let mut b = Port::builder()
        .concurrency(cfg.workers)
        .engines(1)
        .pool_buffers(cfg.pool_buffers)
        .pool_buffer_size(cfg.pool_buffer_size);
    if let Some(be) = cfg.backend {
        b = b.backend(be);
    }
    let port = b.build().map_err(|e| port_error(cfg, &e))?;
    let socks = bound
        .into_iter()
        .map(|b| {
            (
                b.proto,
                b.addr,
                b.socks.into_iter().next().expect("one socket"),
            )
        })
        .collect();
    // The standing pooled receive keeps 0 buffers per idle connection. On
    // Linux the port never hands two chunks of one connection's stream to
    // two workers at once (a worker holds the stream until its next `get`),
    // so it is safe at any worker count. On Windows the kernel's port does
    // not serialize them: with several workers two chunks could be handled
    // out of order, so connections there use one single-shot receive at a
    // time.
    let pooled = cfg.workers == 1 || cfg!(target_os = "linux");
    let shard = Arc::new(
        Shard::new(0, port.clone(), global.clone(), socks, pooled)
            .map_err(|e| format!("cannot set up the port: {e}"))?,
    );
    shard.start();
    let mut threads = Vec::new();
    for w in 0..cfg.workers {
        let s = shard.clone();
        let t = std::thread::Builder::new()
            .name(format!("iocp-echo-worker-{w}"))
            .spawn(move || s.worker_loop(w))
            .map_err(|e| format!("cannot start worker thread {w}: {e}"))?;
        threads.push(t);
    }
    Ok(Running {
        ports: vec![port],
        threads,
        shards: vec![shard],
    })
}

/// `--model per-core`: `n` shards, each a thread with its own inline port
/// and its own listeners.
fn start_per_core(global: &Arc<Global>, bound: Vec<Bound>, n: usize) -> Result<Running, String> {
    // socks[shard] = that shard's sockets, in listener order.
    let mut socks: Vec<Vec<(Proto, std::net::SocketAddr, socket2::Socket)>> =
        (0..n).map(|_| Vec::new()).collect();
    for b in bound {
        for (i, s) in b.socks.into_iter().enumerate() {
            socks[i].push((b.proto, b.addr, s));
        }
    }
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(Port, Arc<Shard>), String>)>();
    let mut gos = Vec::new();
    let mut threads = Vec::new();
    for (i, mine) in socks.into_iter().enumerate() {
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        gos.push(go_tx);
        let g = global.clone();
        let ready = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("iocp-echo-shard-{i}"))
            .spawn(move || shard_thread(i, g, mine, ready, go_rx))
            .map_err(|e| format!("cannot start shard thread {i}: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut ports: Vec<Option<(Port, Arc<Shard>)>> = (0..n).map(|_| None).collect();
    let mut first_err = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((i, Ok(p))) => ports[i] = Some(p),
            Ok((i, Err(e))) => {
                first_err.get_or_insert(format!("shard {i}: {e}"));
            }
            Err(_) => {
                first_err.get_or_insert("a shard thread died while starting".to_string());
                break;
            }
        }
    }
    let ok = first_err.is_none();
    for go in &gos {
        let _ = go.send(ok);
    }
    if let Some(e) = first_err {
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    let (ports, shards) = ports
        .into_iter()
        .map(|p| p.expect("every shard reported"))
        .unzip();
    Ok(Running {
        ports,
        threads,
        shards,
    })
}

type Ready = mpsc::Sender<(usize, Result<(Port, Arc<Shard>), String>)>;

fn shard_thread(
    i: usize,
    global: Arc<Global>,
    socks: Vec<(Proto, std::net::SocketAddr, socket2::Socket)>,
    ready: Ready,
    go: mpsc::Receiver<bool>,
) {
    let cfg = &global.cfg;
    let mut b = Port::builder()
        .inline(true)
        .pool_buffers(cfg.pool_buffers)
        .pool_buffer_size(cfg.pool_buffer_size);
    if let Some(be) = cfg.backend {
        b = b.backend(be);
    }
    let port = match b.build() {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send((i, Err(port_error(cfg, &e))));
            return;
        }
    };
    let shard = match Shard::new(i, port.clone(), global.clone(), socks, true) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = ready.send((i, Err(format!("cannot set up the port: {e}"))));
            port.close();
            return;
        }
    };
    let _ = ready.send((i, Ok((port.clone(), shard.clone()))));
    drop(ready);
    if go.recv() != Ok(true) {
        drop(shard);
        port.close();
        return;
    }
    shard.start();
    shard.worker_loop(i);
    // The owner thread closes its inline port: the engine waits for the
    // kernel to hand every buffer back before freeing it.
    port.close();
}

fn port_error(cfg: &Config, e: &std::io::Error) -> String {
    let want = cfg
        .backend
        .map_or_else(|| "auto".to_string(), |b| b.to_string());
    format!("cannot create a completion port (backend {want}): {e}")
}
