//! `--metrics ADDR`: the operator endpoints, served by [`super::http`] on a
//! port of their own.
//!
//! * `GET /metrics` — Prometheus text exposition (format 0.0.4, written by
//!   `prometheus-client`): every counter of the `--stats` line, the engine
//!   counters and pool buffers per port (`shard` label; the pool model has
//!   one port, shard 0), completions handled per worker (`worker` label,
//!   pool) or shard (`shard` label, per-core), readiness, and the process's
//!   resident memory and open descriptors (handles on Windows).
//! * `GET /healthz` — 200 while the process serves.
//! * `GET /readyz` — 200 while new connections are welcome; 503 (with the
//!   reason in the body) while accepts are paused (`--max-conns` reached,
//!   `EMFILE` back-off) and from the first SIGINT/SIGTERM on, so a balancer
//!   stops routing here during `--drain-delay`.
//!
//! Values are read when scraped (a [`Collector`]): nothing on the echo path
//! changes for the endpoint.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use completion_port::Port;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::config::Model;
use super::http::{Response, Service};
use super::stats::Global;

/// The endpoints `--metrics` serves.
pub(crate) struct Endpoints {
    g: Arc<Global>,
    registry: Registry,
}

impl Endpoints {
    pub(crate) fn new(g: Arc<Global>, ports: Vec<Port>) -> Endpoints {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EchoCollector {
            g: g.clone(),
            ports,
        }));
        Endpoints { g, registry }
    }

    /// The exposition text of every metric.
    pub(crate) fn scrape(&self) -> String {
        let mut s = String::with_capacity(8192);
        match prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry) {
            Ok(()) => s,
            Err(_) => String::new(),
        }
    }
}

impl Service for Endpoints {
    fn has(&self, path: &str) -> bool {
        matches!(path, "/metrics" | "/healthz" | "/readyz")
    }

    fn get(&self, path: &str) -> Response {
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body: self.scrape(),
            },
            "/readyz" => match self.g.not_ready() {
                None => Response::text(200, "ready\n"),
                Some(why) => Response::text(503, format!("not ready: {why}\n")),
            },
            _ => Response::text(200, "ok\n"),
        }
    }
}

struct EchoCollector {
    g: Arc<Global>,
    ports: Vec<Port>,
}

impl fmt::Debug for EchoCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoCollector")
            .field("ports", &self.ports.len())
            .finish()
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One metric without labels.
fn one(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    v: u64,
) -> fmt::Result {
    let me = enc.encode_descriptor(name, help, unit, ty)?;
    match ty {
        MetricType::Counter => ConstCounter::new(v).encode(me),
        _ => ConstGauge::new(v as i64).encode(me),
    }
}

/// One metric with one label, a value per label value.
fn labelled(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    label: &str,
    values: &[u64],
) -> fmt::Result {
    let mut me = enc.encode_descriptor(name, help, None, ty)?;
    for (i, &v) in values.iter().enumerate() {
        let i = i.to_string();
        let labels = [(label, i.as_str())];
        let fe = me.encode_family(&labels)?;
        match ty {
            MetricType::Counter => ConstCounter::new(v).encode(fe)?,
            _ => ConstGauge::new(v as i64).encode(fe)?,
        }
    }
    Ok(())
}

impl Collector for EchoCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let g = &self.g;
        let c = &g.c;
        let e = &mut enc;
        {
            let me = e.encode_descriptor(
                "iocp_echo_build",
                "The server's version, threading model and completion engine.",
                None,
                MetricType::Info,
            )?;
            let backend = self
                .ports
                .first()
                .map_or("none", |p| p.backend().backend.name());
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("model", g.cfg.model.name()),
                ("backend", backend),
            ];
            prometheus_client::metrics::info::Info::new(labels).encode(me)?;
        }
        one(
            e,
            "iocp_echo_ready",
            "1 while new connections are welcome (what /readyz says).",
            None,
            Gauge,
            u64::from(g.not_ready().is_none()),
        )?;
        one(
            e,
            "iocp_echo_shutting_down",
            "1 from the first SIGINT/SIGTERM on.",
            None,
            Gauge,
            u64::from(g.signalled.get().is_some()),
        )?;
        one(
            e,
            "iocp_echo_connections_open",
            "Connections open now.",
            None,
            Gauge,
            g.active() as u64,
        )?;
        one(
            e,
            "iocp_echo_recv_buffers_pinned",
            "Receive buffers held by single-shot receives in flight (0 with pooled receive).",
            None,
            Gauge,
            load(&c.recv_buffers_pinned),
        )?;
        one(
            e,
            "iocp_echo_connections_max",
            "--max-conns: connections open at once, at most.",
            None,
            Gauge,
            g.cfg.max_conns as u64,
        )?;
        let counters: [(&str, &str, Option<Unit>, u64); 14] = [
            (
                "iocp_echo_connections",
                "Connections accepted and served.",
                None,
                load(&c.conns_total),
            ),
            (
                "iocp_echo_connections_rejected",
                "Connections closed at once because --max-conns were open.",
                None,
                load(&c.rejected),
            ),
            (
                "iocp_echo_received",
                "TCP payload bytes received.",
                Some(Unit::Bytes),
                load(&c.bytes_in),
            ),
            (
                "iocp_echo_sent",
                "TCP payload bytes echoed back.",
                Some(Unit::Bytes),
                load(&c.bytes_out),
            ),
            (
                "iocp_echo_idle_closes",
                "Connections closed by --idle-timeout.",
                None,
                load(&c.idle_closed),
            ),
            (
                "iocp_echo_resets",
                "Connections closed by a reset or broken pipe.",
                None,
                load(&c.resets),
            ),
            (
                "iocp_echo_connection_errors",
                "Connections closed by another I/O error.",
                None,
                load(&c.errors),
            ),
            (
                "iocp_echo_accept_errors",
                "Failed accepts.",
                None,
                load(&c.accept_errors),
            ),
            (
                "iocp_echo_accept_pauses",
                "Times accepting paused for lack of descriptors (EMFILE back-off).",
                None,
                load(&c.accept_pauses),
            ),
            (
                "iocp_echo_read_pauses",
                "Times a connection stopped reading at --max-pending.",
                None,
                load(&c.read_pauses),
            ),
            (
                "iocp_echo_pooled_chunks_copied",
                "Chunks received into pool buffers and copied out to give the buffer back at once \
                 (the rest are sent from their pool buffer).",
                None,
                load(&c.pooled_copied),
            ),
            (
                "iocp_echo_udp_received_datagrams",
                "UDP datagrams received.",
                None,
                load(&c.udp_in),
            ),
            (
                "iocp_echo_udp_sent_datagrams",
                "UDP datagrams echoed.",
                None,
                load(&c.udp_out),
            ),
            (
                "iocp_echo_udp_dropped_datagrams",
                "UDP datagrams dropped by --udp-rate.",
                None,
                load(&c.udp_dropped),
            ),
        ];
        for (name, help, unit, v) in &counters {
            one(e, name, help, unit.as_ref(), Counter, *v)?;
        }
        let handled: Vec<u64> = g.completions.iter().map(load).collect();
        let who = match g.cfg.model {
            Model::Pool => "worker",
            Model::PerCore => "shard",
        };
        labelled(
            e,
            "iocp_echo_handled_completions",
            "Completions the server handled, per worker (pool) or shard (per-core).",
            Counter,
            who,
            &handled,
        )?;
        let eng: Vec<completion_port::EngineStats> =
            self.ports.iter().map(|p| p.engine_stats()).collect();
        let pool: Vec<completion_port::PoolStats> =
            self.ports.iter().map(|p| p.pool_stats()).collect();
        let per_port: [(&str, &str, MetricType, Vec<u64>); 8] = [
            (
                "iocp_echo_queued_packets",
                "Completion packets queued on the port, not yet taken by a thread.",
                Gauge,
                self.ports.iter().map(|p| p.stats().queued as u64).collect(),
            ),
            (
                "iocp_echo_engine_completions",
                "Completions the port's engine produced.",
                Counter,
                eng.iter().map(|s| s.completions).collect(),
            ),
            (
                "iocp_echo_engine_enters",
                "Kernel entries (io_uring_enter, epoll_wait, GetQueuedCompletionStatusEx).",
                Counter,
                eng.iter().map(|s| s.enters).collect(),
            ),
            (
                "iocp_echo_engine_cq_overflows",
                "Times the kernel held completions back because the completion queue was full.",
                Counter,
                eng.iter().map(|s| s.cq_overflows).collect(),
            ),
            (
                "iocp_echo_engine_starved_receives",
                "Pooled receives that found the buffer pool empty and waited.",
                Counter,
                eng.iter().map(|s| s.starved).collect(),
            ),
            (
                "iocp_echo_engine_eagain_retries",
                "Sends and receives re-issued after a spurious EAGAIN.",
                Counter,
                eng.iter().map(|s| s.eagain_retries).collect(),
            ),
            (
                "iocp_echo_pool_buffers_in_use",
                "Receive pool buffers lent to the server now.",
                Gauge,
                pool.iter().map(|s| s.in_use as u64).collect(),
            ),
            (
                "iocp_echo_pool_buffers",
                "Receive pool buffers in all.",
                Gauge,
                pool.iter().map(|s| s.total as u64).collect(),
            ),
        ];
        for (name, help, ty, values) in &per_port {
            labelled(e, name, help, *ty, "shard", values)?;
        }
        if let Some(rss) = process::resident_bytes() {
            one(
                e,
                "process_resident_memory",
                "Resident memory size (the working set on Windows).",
                Some(&Unit::Bytes),
                Gauge,
                rss,
            )?;
        }
        if let Some(fds) = process::open_fds() {
            one(
                e,
                "process_open_fds",
                "Open file descriptors (open handles on Windows).",
                None,
                Gauge,
                fds,
            )?;
        }
        Ok(())
    }
}

/// What the process uses: resident memory and open descriptors.
#[cfg(target_os = "linux")]
mod process {
    /// `VmRSS` of `/proc/self/status`.
    pub(super) fn resident_bytes() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Entries of `/proc/self/fd`, less the one reading the directory.
    pub(super) fn open_fds() -> Option<u64> {
        let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(n.saturating_sub(1))
    }
}

/// What the process uses: the working set and open handles.
#[cfg(windows)]
mod process {
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessHandleCount};

    /// `WorkingSetSize` of `GetProcessMemoryInfo`.
    pub(super) fn resident_bytes() -> Option<u64> {
        let mut c = PROCESS_MEMORY_COUNTERS {
            cb: std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32,
            ..Default::default()
        };
        // SAFETY: the pseudo-handle of the current process needs no closing;
        // `c` is a live PROCESS_MEMORY_COUNTERS whose size is passed as `cb`.
        let ok = unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &mut c, c.cb) };
        (ok != 0).then_some(c.WorkingSetSize as u64)
    }

    /// `GetProcessHandleCount`.
    pub(super) fn open_fds() -> Option<u64> {
        let mut n = 0u32;
        // SAFETY: the pseudo-handle of the current process, and a pointer to
        // a live u32.
        let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut n) };
        (ok != 0).then_some(u64::from(n))
    }
}

/// Other platforms: not measured (the two metrics are left out).
#[cfg(not(any(target_os = "linux", windows)))]
mod process {
    pub(super) fn resident_bytes() -> Option<u64> {
        None
    }
    pub(super) fn open_fds() -> Option<u64> {
        None
    }
}
