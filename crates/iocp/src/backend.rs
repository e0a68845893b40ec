//! Platform-neutral descriptions of a port: which backend, why, and the
//! settings a builder collects.

use std::fmt;

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

    /// Reads `IOCP_BACKEND`; `Ok(None)` when unset or empty.
    pub fn from_env() -> Result<Option<Backend>, String> {
        match std::env::var("IOCP_BACKEND") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map(Some)
                .map_err(|e| format!("IOCP_BACKEND: {e}")),
            _ => Ok(None),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "epoll" => Ok(Backend::Epoll),
            "iocp" => Ok(Backend::Iocp),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, uring, epoll or iocp)"
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
