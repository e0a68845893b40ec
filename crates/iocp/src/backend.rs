//! Platform-neutral descriptions of a port: which backend, why, and the
//! settings a builder collects.

use std::fmt;
use std::io;

use crate::queue::QueueStats;

/// Which engine turns operations into completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring where it works, else epoll (Linux); IOCP on Windows.
    Auto,
    /// io_uring (Linux).
    Uring,
    /// epoll, emulating completions (Linux).
    Epoll,
    /// The kernel's I/O completion port (Windows).
    Iocp,
}

impl Backend {
    /// The name used by `IOCP_BACKEND`, the builder and `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
            Backend::Iocp => "iocp",
        }
    }

    /// Every backend this build has (besides `Auto`).
    pub fn available() -> &'static [Backend] {
        #[cfg(target_os = "linux")]
        {
            &[Backend::Uring, Backend::Epoll]
        }
        #[cfg(windows)]
        {
            &[Backend::Iocp]
        }
    }

    /// Reads `IOCP_BACKEND`; `Ok(None)` when unset or empty. A value that
    /// names no backend is an error naming the variable and quoting the
    /// value, e.g. `invalid value 'bogus' for IOCP_BACKEND: unknown backend
    /// (expected auto, uring, epoll or iocp)`.
    pub fn from_env() -> Result<Option<Backend>, String> {
        match std::env::var_os("IOCP_BACKEND") {
            Some(v) if !v.is_empty() => Self::from_env_value(&v.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// Parses a value of `IOCP_BACKEND` (what [`Backend::from_env`] does
    /// with the variable).
    fn from_env_value(v: &str) -> Result<Backend, String> {
        v.parse().map_err(|_| {
            format!(
                "invalid value '{}' for IOCP_BACKEND: unknown backend ({EXPECTED})",
                v.escape_debug()
            )
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The names `Backend` parses, for its errors.
const EXPECTED: &str = "expected auto, uring, epoll or iocp";

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "epoll" => Ok(Backend::Epoll),
            "iocp" => Ok(Backend::Iocp),
            other => Err(format!(
                "unknown backend '{}' ({EXPECTED})",
                other.escape_debug()
            )),
        }
    }
}

/// Which backend a port runs on, and why.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// The backend in use (never `Auto`).
    pub backend: Backend,
    /// Why it was chosen (e.g. "requested", or the io_uring error that made
    /// `auto` fall back to epoll).
    pub reason: String,
    /// io_uring features in use, when the backend is io_uring.
    #[cfg(target_os = "linux")]
    pub uring: Option<crate::sys::UringFeatures>,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.backend, self.reason)?;
        #[cfg(target_os = "linux")]
        if let Some(u) = &self.uring {
            write!(f, " [{}]", u.describe())?;
        }
        Ok(())
    }
}

/// Counters a port exposes so tests and operators can see its state.
pub type PortStats = QueueStats;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub concurrency: usize,
    pub engines: usize,
    pub backend: Option<Backend>,
    pub pool_bufs: usize,
    pub pool_buf_size: usize,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub inline: bool,
}

/// What a port's engines did (summed over engines). On Windows the kernel
/// is the engine: these count what the library sees of it, and
/// `cq_overflows` is always 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Completions the engines produced.
    pub completions: u64,
    /// Kernel entries (`io_uring_enter`, `epoll_wait`): completions ÷ enters
    /// is the batching factor.
    pub enters: u64,
    /// Pooled receives that found the pool empty (ENOBUFS) and waited.
    pub starved: u64,
    /// Times the kernel held completions back because the CQ was full.
    pub cq_overflows: u64,
    /// Sends and receives the kernel ended with a spurious EAGAIN that the
    /// engine re-issued (polling first) without losing progress.
    pub eagain_retries: u64,
    /// Timers pending: one per live operation with a deadline, one per
    /// [`post_after`](crate::Port::post_after) packet not yet queued, and one
    /// per standing accept pausing after running out of sockets. A deadline
    /// leaves with its operation (completed, cancelled or timed out), so this
    /// is bounded by the operations alive, not by how many have run. (A gauge,
    /// not a counter: on Linux each engine publishes it at the end of every
    /// turn.)
    pub timers: u64,
}

/// Configures a [`Port`](crate::Port) (what `CreateIoCompletionPort`'s arguments and the
/// engine behind it can be).
#[derive(Debug, Clone)]
pub struct PortBuilder {
    cfg: Config,
}

impl Default for PortBuilder {
    fn default() -> Self {
        PortBuilder {
            cfg: Config {
                concurrency: 0,
                engines: 1,
                backend: None,
                pool_bufs: 256,
                pool_buf_size: 16 * 1024,
                sq_entries: 256,
                cq_entries: 4096,
                inline: false,
            },
        }
    }
}

impl PortBuilder {
    /// The concurrency limit: how many threads may run at once. 0 means the
    /// number of CPUs, as on Windows.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.cfg.concurrency = n;
        self
    }
    /// How many engine threads feed the port on Linux (sockets are spread
    /// across them round-robin). Default 1. Ignored on Windows, where the
    /// kernel is the engine.
    pub fn engines(mut self, n: usize) -> Self {
        self.cfg.engines = n.max(1);
        self
    }
    /// The backend; overrides `IOCP_BACKEND`. Default: `IOCP_BACKEND`, else `auto`.
    pub fn backend(mut self, b: Backend) -> Self {
        self.cfg.backend = Some(b);
        self
    }
    /// Pool buffers per engine (per port on Windows) for pooled receives
    /// (default 256, at most 32768).
    pub fn pool_buffers(mut self, n: usize) -> Self {
        self.cfg.pool_bufs = n.clamp(1, 32768);
        self
    }
    /// Bytes per pool buffer (default 16 KiB).
    pub fn pool_buffer_size(mut self, n: usize) -> Self {
        self.cfg.pool_buf_size = n.max(1);
        self
    }
    /// Submission queue entries per io_uring (default 256; ignored elsewhere).
    pub fn sq_entries(mut self, n: u32) -> Self {
        self.cfg.sq_entries = n.max(8);
        self
    }
    /// Completion queue entries per io_uring (default 4096; at least 2×SQ;
    /// ignored elsewhere).
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cfg.cq_entries = n.max(16);
        self
    }
    /// The per-core model: no engine thread; the thread that builds the port
    /// drives its engine from inside `get` and handles its own completions,
    /// with no hand-off. Such a port belongs to that one thread: other
    /// threads may `post` to it (which wakes it) and start operations, but
    /// only the owner should call `get`. On Windows it means concurrency 1:
    /// the kernel lets one thread at a time run on the port.
    pub fn inline(mut self, yes: bool) -> Self {
        self.cfg.inline = yes;
        self
    }

    /// Creates the port and starts its engines.
    pub fn build(self) -> io::Result<crate::port::Port> {
        let mut cfg = self.cfg;
        if cfg.concurrency == 0 {
            cfg.concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        let (want, why) = match cfg.backend {
            Some(b) => (b, "requested by the builder".to_string()),
            None => match Backend::from_env()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            {
                Some(b) => (b, "requested by IOCP_BACKEND".to_string()),
                None => (Backend::Auto, String::new()),
            },
        };
        crate::port::Port::start(cfg, want, why)
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn names_and_bad_values() {
        for b in [Backend::Auto, Backend::Uring, Backend::Epoll, Backend::Iocp] {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
        assert_eq!("io_uring".parse::<Backend>(), Ok(Backend::Uring));
        assert_eq!(
            "bogus".parse::<Backend>(),
            Err("unknown backend 'bogus' (expected auto, uring, epoll or iocp)".to_string())
        );
        assert_eq!(
            Backend::from_env_value("bogus"),
            Err("invalid value 'bogus' for IOCP_BACKEND: unknown backend \
                 (expected auto, uring, epoll or iocp)"
                .to_string())
        );
    }
}
