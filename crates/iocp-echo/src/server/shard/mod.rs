//! One port and everything that happens on it, a file a job:
//!
//! - [`control`]: control packets (shutdown, cut, quit) and timers (idle
//!   sweep, drain and its deadline);
//! - [`listener`]: listeners (standing accept with EMFILE back-off) and the
//!   admission of new connections;
//! - [`conn`]: connections (echo with a pending-bytes cap and half-close);
//! - [`udp`]: UDP sockets (rate-limited echo).
//!
//! In the pool model one `Shard` is shared by every worker thread; in the
//! per-core model each shard thread owns one. Every packet is routed by its
//! completion key, a [`Route`].

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use completion_port::{Completion, GetError, Port, MAX_POOL_BUFFERS};
use socket2::Socket;

use super::listen::Proto;
use super::route::Route;
use super::stats::Global;
use super::table::{lock, Table};

mod conn;
mod control;
mod listener;
mod udp;

use conn::Conn;
use control::Sweep;
use listener::Listener;
use udp::Udp;

pub(crate) struct Shard {
    id: usize,
    port: Port,
    g: Arc<Global>,
    table: Table<Conn>,
    listeners: Vec<Mutex<Listener>>,
    udps: Vec<Udp>,
    /// Standing pooled receives (safe when one thread handles the port).
    pooled: bool,
    /// Pool buffers the connections hold to send them as they are (queued
    /// or in a send in flight): the sum of their `pooled_held`.
    pooled_held: AtomicUsize,
    /// Buffers in the port's pool (read once: it never changes). The port
    /// has one engine, so this is also the size of the one pool every
    /// pooled chunk comes from (see `copy_out`).
    pool_total: usize,
    draining: AtomicBool,
    quit_posted: AtomicBool,
    sweep: Mutex<Sweep>,
}

impl Shard {
    /// Associates this shard's sockets with its port.
    pub(crate) fn new(
        id: usize,
        port: Port,
        g: Arc<Global>,
        socks: Vec<(Proto, SocketAddr, Socket)>,
        pooled: bool,
    ) -> io::Result<Shard> {
        let mut listeners = Vec::new();
        let mut udps = Vec::new();
        for (proto, addr, s) in socks {
            match proto {
                Proto::Tcp => {
                    let i = u32::try_from(listeners.len()).expect("listeners fit 32 bits");
                    let h = port.associate(s, Route::Listener(i).to_key())?;
                    listeners.push(Mutex::new(Listener::new(h, addr)));
                }
                Proto::Udp => {
                    let i = u32::try_from(udps.len()).expect("UDP sockets fit 32 bits");
                    let h = port.associate(s, Route::Udp(i).to_key())?;
                    udps.push(Udp::new(h, addr));
                }
            }
        }
        let cap = g.cfg.max_conns;
        let pool_total = port.pool_stats().total;
        // `copy_out` sets one chunk's pool (`PooledBuf::pool_in_use`)
        // against this port-wide total: they are the same pool only while
        // the port has one engine (`start_pool` builds it with one, an
        // inline port has one). With more, the total would be the sum of
        // the engines' pools and the pool-nearly-lent rule would never fire.
        let one_pool = g.cfg.pool_buffers.clamp(1, MAX_POOL_BUFFERS);
        debug_assert_eq!(
            pool_total, one_pool,
            "a shard's port has one pool (one engine)"
        );
        Ok(Shard {
            id,
            port,
            g,
            table: Table::new(cap),
            listeners,
            udps,
            pooled,
            pooled_held: AtomicUsize::new(0),
            pool_total,
            draining: AtomicBool::new(false),
            quit_posted: AtomicBool::new(false),
            sweep: Mutex::new(Sweep::new()),
        })
    }

    /// `listening on` lines: `tcp://…` and `udp://…`, in binding order.
    pub(crate) fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("tcp://{}", lock(l).addr))
            .collect();
        v.extend(self.udps.iter().map(|u| format!("udp://{}", u.addr)));
        v
    }

    /// Starts the standing accepts, the UDP receives and the sweep timer.
    pub(crate) fn start(&self) {
        for (i, l) in self.listeners.iter().enumerate() {
            let mut l = lock(l);
            self.start_accept(&mut l, i);
        }
        for u in &self.udps {
            self.udp_start(u);
        }
        self.start_sweeps();
        tracing::debug!(shard = self.id, pooled_recv = self.pooled, "shard started");
    }

    /// A worker: ⑤ wait for completions, handle them, ④ issue the next I/O.
    pub(crate) fn worker_loop(&self, wid: usize) {
        let mut batch = Vec::with_capacity(64);
        let max = if self.pooled { 256 } else { 16 };
        loop {
            match self.port.get_many(&mut batch, max, None) {
                Ok(_) => {}
                Err(GetError::TimedOut) => continue,
                Err(GetError::Abandoned) => break,
            }
            let now = Now::default();
            if let Some(c) = self.g.completions.get(wid) {
                c.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            let mut quit = false;
            for c in batch.drain(..) {
                quit |= self.handle(c, &now);
            }
            if quit {
                break;
            }
        }
        tracing::debug!(shard = self.id, worker = wid, "worker done");
    }

    /// Routes one packet. Returns `true` when this worker should stop.
    fn handle(&self, c: Completion, now: &Now) -> bool {
        match Route::from_key(c.key) {
            Some(Route::Conn { idx, gen }) => self.on_conn(idx, gen, c, now),
            Some(Route::Listener(i)) => self.on_listener(i as usize, c, now.get()),
            Some(Route::Udp(i)) => self.on_udp(i as usize, c, now.get()),
            Some(Route::Control) => return self.on_ctrl(c, now.get()),
            // Nothing here makes such a key: its buffer goes back with `c`.
            None => {
                tracing::debug!(key = c.key, kind = ?c.kind, "packet with an unknown key dropped")
            }
        }
        false
    }
}

/// The clock for one batch of completions: read on first use, at most
/// once per batch (an echo at the default settings needs none).
#[derive(Default)]
struct Now(Cell<Option<Instant>>);

impl Now {
    fn get(&self) -> Instant {
        match self.0.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.0.set(Some(t));
                t
            }
        }
    }
}

fn fmt_peer(p: Option<SocketAddr>) -> String {
    p.map_or_else(|| "?".to_string(), |a| a.to_string())
}
