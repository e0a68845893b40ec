//! What a port is asked to be and what it became, in plain data that every
//! layer may read: the settings a [`PortBuilder`](crate::PortBuilder)
//! collects ([`Config`]), which [`Backend`] to run and why, and the
//! [`BackendInfo`] a backend reports once it runs. Depends on nothing else
//! in the crate, so the front and every backend can use it.

use std::fmt;
use std::io;

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
    pub uring: Option<UringFeatures>,
    /// The threads waiting on the port drive its engine themselves (no
    /// engine thread; an io_uring ring is then shared by them, without
    /// `SINGLE_ISSUER`/`DEFER_TASKRUN`). `false` for an inline port (its
    /// owner drives it) and for a port with engine threads.
    #[cfg(target_os = "linux")]
    pub driven: bool,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.backend, self.reason)?;
        #[cfg(target_os = "linux")]
        if let Some(u) = &self.uring {
            write!(f, " [{}]", u.describe())?;
        }
        #[cfg(target_os = "linux")]
        if self.driven {
            write!(f, ", driven by the waiting threads")?;
        }
        Ok(())
    }
}

/// What the io_uring engine uses on this kernel.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0).
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19), used when DEFER_TASKRUN is not.
    pub coop_taskrun: bool,
    /// Multishot accept (5.19).
    pub multishot_accept: bool,
    /// Multishot receive into a provided-buffer ring (6.0).
    pub multishot_recv: bool,
    /// Ring-mapped provided buffers (5.19).
    pub buf_ring: bool,
    /// Timeouts on `io_uring_enter` (5.11).
    pub ext_arg: bool,
    /// No CQE is dropped on overflow (5.5).
    pub nodrop: bool,
    /// SQ entries.
    pub sq_entries: u32,
    /// CQ entries.
    pub cq_entries: u32,
}

#[cfg(target_os = "linux")]
impl UringFeatures {
    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        let mut add = |on: bool, name: &str| {
            if on {
                v.push(name.to_string())
            }
        };
        add(self.single_issuer, "single_issuer");
        add(self.defer_taskrun, "defer_taskrun");
        add(self.coop_taskrun, "coop_taskrun");
        add(self.multishot_accept, "multishot_accept");
        add(self.multishot_recv, "multishot_recv");
        add(self.buf_ring, "buf_ring");
        add(self.ext_arg, "ext_arg");
        add(self.nodrop, "nodrop");
        format!(
            "{} sq={} cq={}",
            v.join(","),
            self.sq_entries,
            self.cq_entries
        )
    }
}

/// The settings of a port, as a [`PortBuilder`](crate::PortBuilder)
/// collects them (each setter documents its value's meaning and range).
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
    pub file_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 0,
            engines: 1,
            backend: None,
            pool_bufs: 256,
            pool_buf_size: 16 * 1024,
            sq_entries: 256,
            cq_entries: 4096,
            inline: false,
            file_threads: 4,
        }
    }
}

/// The backend a port is asked for, and why (before the backend decides
/// what `Auto` becomes).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub backend: Backend,
    /// "requested by the builder", "requested by IOCP_BACKEND", or empty
    /// for the default `Auto`.
    pub why: String,
}

impl Config {
    /// The settings as a backend starts with them: concurrency 0 becomes
    /// the number of CPUs (as on Windows), and the backend is the
    /// builder's, else `IOCP_BACKEND`'s, else `Auto`. A bad `IOCP_BACKEND`
    /// is an `InvalidInput` error naming the variable and its value.
    pub(crate) fn resolve(mut self) -> io::Result<(Config, Request)> {
        if self.concurrency == 0 {
            self.concurrency = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        let request = match self.backend {
            Some(b) => Request {
                backend: b,
                why: "requested by the builder".to_string(),
            },
            None => match Backend::from_env()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            {
                Some(b) => Request {
                    backend: b,
                    why: "requested by IOCP_BACKEND".to_string(),
                },
                None => Request {
                    backend: Backend::Auto,
                    why: String::new(),
                },
            },
        };
        Ok((self, request))
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
