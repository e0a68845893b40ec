//! The server's flags, their parsers, and the validated configuration.

use std::net::SocketAddr;
use std::time::Duration;

use iocp::Backend;

/// Arguments of `iocp-echo server`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Durations are humantime (500ms, 10s, 5m); sizes take KiB/MiB suffixes (262144, 256KiB, 1MiB).\n\
Every bound address is printed on stdout as `listening on tcp://ADDR` (and `udp://ADDR`).\n\
Under systemd socket activation (LISTEN_FDS/LISTEN_PID) the inherited sockets are used instead of --listen."
)]
// These doc comments are the `--help` text, written for a terminal:
// `[::1]:7007` there is an address, not an intra-doc link.
#[allow(rustdoc::broken_intra_doc_links)]
pub struct Args {
    /// Address to listen on, IP:PORT ([::1]:7007 for IPv6; port 0 picks a
    /// free one and prints it). Repeat for several. [default: 127.0.0.1:7007]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Worker threads (pool) or shards (per-core). [default: number of CPUs]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// pool: one port, N workers all waiting on it (the seed's model);
    /// per-core: N shards, each with its own inline port and SO_REUSEPORT
    /// listener.
    #[arg(long, value_enum, default_value_t = Model::Pool)]
    pub model: Model,

    /// Completion engine: auto, uring, epoll (Linux) or iocp (Windows).
    /// [default: $IOCP_BACKEND, else auto]
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<Backend>,

    /// Most connections open at once; extra ones are closed at once and
    /// counted as rejected.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=super::table::MAX_SLOTS as i64))]
    pub max_conns: u32,

    /// Close a connection after this long without traffic either way
    /// (`0` or `off` disables).
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_opt_duration)]
    pub idle_timeout: OptDuration,

    /// Most bytes received but not yet echoed, per connection; past it the
    /// server stops reading that connection until its sends drain.
    #[arg(long, value_name = "BYTES", default_value = "256KiB", value_parser = parse_size)]
    pub max_pending: usize,

    /// On SIGINT/SIGTERM, how long in-flight echoes may take to finish
    /// before the remaining connections are cut.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Also serve UDP echo on every --listen address (off by default: UDP
    /// echo is a reflection vector).
    #[arg(long)]
    pub udp: bool,

    /// UDP datagrams echoed per second per source IP (token bucket, burst
    /// of one second); the excess is dropped and counted.
    #[arg(long, value_name = "N[/s]", default_value = "1000/s", value_parser = parse_rate)]
    pub udp_rate: u32,

    /// Log counters every D (off by default; always logged at shutdown).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub stats: Option<Duration>,
}

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

/// A duration that may be switched off (`0`, `off`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDuration(pub Option<Duration>);

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
    pub drain_timeout: Duration,
    pub udp: bool,
    pub udp_rate: u32,
    pub stats: Option<Duration>,
}

impl Config {
    pub(crate) fn from_args(a: Args) -> Result<Config, String> {
        #[cfg(not(target_os = "linux"))]
        if a.model == Model::PerCore {
            return Err(
                "--model per-core needs SO_REUSEPORT listeners, which this platform lacks".into(),
            );
        }
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
        if matches!(a.stats, Some(d) if d.is_zero()) {
            return Err("invalid value '0' for '--stats <D>': the period must be > 0".into());
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
            drain_timeout: a.drain_timeout,
            udp: a.udp,
            udp_rate: a.udp_rate,
            stats: a.stats,
        })
    }
}

/// `--backend`: a name `iocp::Backend` knows and this build has.
pub(crate) fn parse_backend(s: &str) -> Result<Backend, String> {
    let b: Backend = s.parse()?;
    let have = Backend::available();
    if b != Backend::Auto && !have.contains(&b) {
        let names: Vec<&str> = have.iter().map(|b| b.name()).collect();
        let only = if b == Backend::Iocp {
            "only available on Windows"
        } else {
            "only available on Linux"
        };
        return Err(format!(
            "backend {b} is {only} (this build has: auto, {})",
            names.join(", ")
        ));
    }
    Ok(b)
}

/// A humantime duration (`500ms`, `10s`, `5m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 5m)"))
}

/// A humantime duration, or `0`/`off`/`none` for "disabled".
pub(crate) fn parse_opt_duration(s: &str) -> Result<OptDuration, String> {
    match s.trim() {
        "0" | "off" | "none" => Ok(OptDuration(None)),
        t => {
            let d = parse_duration(t)?;
            Ok(OptDuration(if d.is_zero() { None } else { Some(d) }))
        }
    }
}

/// A byte count: `262144`, `256KiB`, `256K`, `1MiB`, `1M`, `1GiB`; `KB`,
/// `MB`, `GB` are decimal (1000-based). Must be at least 1.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size (expected e.g. 262144, 256KiB, 1MiB)"
        ));
    }
    let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mi" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gi" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (expected B, KiB, MiB, GiB, or KB, MB, GB)"
            ))
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err(format!("{s:?}: must be at least 1 byte"));
    }
    usize::try_from(v).map_err(|_| format!("{s:?} is too large"))
}

/// `--udp-rate`: `N` or `N/s`, N ≥ 1.
pub(crate) fn parse_rate(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let num = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/sec"))
        .unwrap_or(t)
        .trim();
    let n: u32 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (expected e.g. 1000 or 1000/s)"))?;
    if n == 0 {
        return Err(format!(
            "{s:?}: the rate must be at least 1 datagram per second"
        ));
    }
    Ok(n)
}

pub(crate) fn fmt_opt_duration(d: Option<Duration>) -> String {
    d.map_or_else(
        || "off".to_string(),
        |d| humantime::format_duration(d).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144"), Ok(262_144));
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("256k"), Ok(262_144));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("-5").is_err());
    }

    #[test]
    fn rates_and_durations() {
        assert_eq!(parse_rate("1000/s"), Ok(1000));
        assert_eq!(parse_rate("5"), Ok(5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_opt_duration("off"), Ok(OptDuration(None)));
        assert_eq!(parse_opt_duration("0s"), Ok(OptDuration(None)));
        assert_eq!(
            parse_opt_duration("300ms"),
            Ok(OptDuration(Some(Duration::from_millis(300))))
        );
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn backends() {
        assert_eq!(parse_backend("auto"), Ok(Backend::Auto));
        assert!(parse_backend("bogus").is_err());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(parse_backend("uring"), Ok(Backend::Uring));
            assert_eq!(parse_backend("epoll"), Ok(Backend::Epoll));
            let e = parse_backend("iocp").unwrap_err();
            assert!(e.contains("only available on Windows"), "{e}");
        }
    }
}
