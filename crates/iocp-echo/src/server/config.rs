//! The server's flags, their parsers, and the validated configuration.

use std::net::SocketAddr;
use std::time::Duration;

use completion_port::Backend;

use crate::values::{self, OptDuration};

/// The most `--pool-buffers`: the library's bound, which fits the flag's
/// 16 bits.
const MAX_POOL_BUFFERS: u16 = {
    assert!(completion_port::MAX_POOL_BUFFERS <= u16::MAX as usize);
    completion_port::MAX_POOL_BUFFERS as u16
};

/// Arguments of `iocp-echo server`.
#[derive(clap::Args, Debug)]
#[command(after_help = concat!(
    values::forms_help!(),
    "\nEvery bound address is printed on stdout as `listening on tcp://ADDR` (and `udp://ADDR`;\n",
    "`metrics on http://ADDR` with --metrics).\n",
    "Under systemd socket activation (LISTEN_PID = this process, LISTEN_FDS = n) the n sockets\n",
    "from fd 3 on are used instead of --listen; a LISTEN_PID of another process is ignored."
))]
// These doc comments are the `--help` text, written for a terminal:
// `[::1]:7007` there is an address, not an intra-doc link.
#[allow(rustdoc::broken_intra_doc_links)]
pub struct Args {
    /// Address to listen on, IP:PORT ([::1]:7007 for IPv6; port 0 picks a
    /// free one and prints it). Repeat for several. [default: 127.0.0.1:7007]
    #[arg(long = "listen", value_name = "ADDR", value_parser = values::socket_addr)]
    pub listen: Vec<SocketAddr>,

    /// Worker threads (pool) or shards (per-core), 1-1024. [default: number
    /// of CPUs]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = values::count::<u16>(1, 1024))]
    pub workers: Option<u16>,

    /// pool: one port, N workers all waiting on it (the seed's model);
    /// per-core: N shards, each with its own inline port and SO_REUSEPORT
    /// listener.
    #[arg(long, value_enum, default_value_t = Model::Pool)]
    pub model: Model,

    /// Completion engine: auto, uring, epoll (Linux) or iocp (Windows).
    /// [default: $IOCP_BACKEND, else auto]
    #[arg(long, value_name = "BACKEND", value_parser = values::backend)]
    pub backend: Option<Backend>,

    /// Most connections open at once (1 to 16777215); extra ones are closed
    /// at once and counted as rejected.
    #[arg(long, value_name = "N", default_value_t = 10_000, allow_negative_numbers = true, value_parser = values::count::<u32>(1, super::table::MAX_SLOTS as u32))]
    pub max_conns: u32,

    /// Close a connection after this long without traffic either way
    /// (a duration; `0` or `off` disables).
    #[arg(long, value_name = "D", default_value = "5m", value_parser = values::duration_or_off)]
    pub idle_timeout: OptDuration,

    /// Most bytes received but not yet echoed, per connection; past it the
    /// server stops reading that connection until its sends drain (a size:
    /// 262144, 256KiB, 1MiB).
    #[arg(long, value_name = "BYTES", default_value = "256KiB", value_parser = values::size)]
    pub max_pending: usize,

    /// Receive buffers in each port's pool (per shard with per-core), 1 to
    /// 32768. Idle connections hold none; data that lands in a connection
    /// holds one until it is copied out or echoed. [default: pool 4096,
    /// per-core 256]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = values::count::<u16>(1, MAX_POOL_BUFFERS))]
    pub pool_buffers: Option<u16>,

    /// Size of each pool buffer (a size, 64 B to 1 MiB); a receive takes
    /// at most this much at once. [default: pool 4KiB, per-core 16KiB]
    #[arg(long, value_name = "BYTES", value_parser = values::size)]
    pub pool_buffer_size: Option<usize>,

    /// On SIGINT/SIGTERM, how long in-flight echoes may take to finish
    /// before the remaining connections are cut (a duration; 0 cuts at once).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = values::duration)]
    pub drain_timeout: Duration,

    /// Also serve UDP echo on every --listen address (off by default: UDP
    /// echo is a reflection vector).
    #[arg(long)]
    pub udp: bool,

    /// UDP datagrams echoed per second per source IP (token bucket, burst
    /// of one second), a whole N or N/s; the excess is dropped and counted.
    #[arg(long, value_name = "N[/s]", default_value = "1000/s", allow_negative_numbers = true, value_parser = values::whole_rate)]
    pub udp_rate: u32,

    /// Log counters every D (a duration above 0; off by default; always
    /// logged at shutdown).
    #[arg(long, value_name = "D", value_parser = values::positive_duration)]
    pub stats: Option<Duration>,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on
    /// IP:PORT (port 0 picks a free one and prints it). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = values::socket_addr)]
    pub metrics: Option<SocketAddr>,

    /// On SIGINT/SIGTERM, keep accepting for D with /readyz answering 503
    /// (so a balancer stops routing here), then drain.
    #[arg(long, value_name = "D", default_value = "0s", value_parser = values::duration)]
    pub drain_delay: Duration,
}

/// Pool buffers (count, size) of a per-core shard's port. On io_uring its
/// ring defers the kernel's receive work to the shard's own wait, so a
/// buffer is taken only when the shard is about to handle what lands in it:
/// a few hundred cover thousands of connections.
const POOL_DEFAULTS_PER_CORE: (usize, usize) = (256, 16 << 10);
/// Pool buffers (count, size) of the pool model's port. Its ring is shared
/// by the workers (no deferred task work), so the kernel fills a buffer as
/// soon as data lands: with every connection busy a connection holds up to
/// two (its echo's, until the send's completion is handled, and the one
/// its next message lands in), or receives starve and must be re-armed (an
/// extra CQE and SQE each), or chunks are copied out to give buffers back
/// sooner. Sized for 2048 busy connections; smaller buffers than per-core's
/// for a bound on the pages the pool can make the server touch (count ×
/// size, 16 MiB; untouched pages cost nothing).
const POOL_DEFAULTS_POOL: (usize, usize) = (4096, 4 << 10);

/// The threading model.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// One port, N worker threads waiting on it.
    Pool,
    /// N shards, each a thread with its own inline port.
    PerCore,
}

impl Model {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Model::Pool => "pool",
            Model::PerCore => "per-core",
        }
    }
}

/// The validated configuration every part of the server reads.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub listen: Vec<SocketAddr>,
    /// Whether `--listen` was given (matters only under socket activation).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub listen_explicit: bool,
    pub workers: usize,
    pub model: Model,
    pub backend: Option<Backend>,
    pub max_conns: usize,
    pub idle_timeout: Option<Duration>,
    pub max_pending: usize,
    pub pool_buffers: usize,
    pub pool_buffer_size: usize,
    pub drain_timeout: Duration,
    pub udp: bool,
    pub udp_rate: u32,
    pub stats: Option<Duration>,
    pub metrics: Option<SocketAddr>,
    pub drain_delay: Duration,
    /// Sockets handed over by systemd (`LISTEN_FDS`), from fd 3 on.
    #[cfg(unix)]
    pub inherited: Option<u32>,
}

impl Config {
    /// Validates the flags and the environment (`IOCP_BACKEND`, and on Unix
    /// `LISTEN_PID`/`LISTEN_FDS`, which are removed from the environment
    /// here). An error is a usage error (exit 2).
    pub(crate) fn from_args(a: Args) -> Result<Config, String> {
        #[cfg(not(target_os = "linux"))]
        if a.model == Model::PerCore {
            return Err(
                "invalid value 'per-core' for '--model <MODEL>': needs SO_REUSEPORT \
                 listeners, which this platform lacks (examples: pool)"
                    .into(),
            );
        }
        values::check_backend_env(a.backend)?;
        #[cfg(unix)]
        let inherited = super::listen::systemd::from_env()?;
        let listen_explicit = !a.listen.is_empty();
        let listen = if listen_explicit {
            a.listen
        } else {
            vec![SocketAddr::from(([127, 0, 0, 1], 7007))]
        };
        let workers = match a.workers {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let (default_bufs, default_size) = match a.model {
            Model::Pool => POOL_DEFAULTS_POOL,
            Model::PerCore => POOL_DEFAULTS_PER_CORE,
        };
        let pool_buffer_size = a.pool_buffer_size.unwrap_or(default_size);
        if !(64..=1 << 20).contains(&pool_buffer_size) {
            return Err(format!(
                "invalid value '{pool_buffer_size}' for '--pool-buffer-size <BYTES>': \
                 must be from 64 B to 1 MiB (examples: 4KiB, 16KiB)"
            ));
        }
        Ok(Config {
            listen,
            listen_explicit,
            workers,
            model: a.model,
            backend: a.backend,
            max_conns: a.max_conns as usize,
            idle_timeout: a.idle_timeout.0,
            max_pending: a.max_pending,
            pool_buffers: a.pool_buffers.map_or(default_bufs, usize::from),
            pool_buffer_size,
            drain_timeout: a.drain_timeout,
            udp: a.udp,
            udp_rate: a.udp_rate,
            stats: a.stats,
            metrics: a.metrics,
            drain_delay: a.drain_delay,
            #[cfg(unix)]
            inherited,
        })
    }
}
