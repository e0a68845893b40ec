//! Binding: one listener per `--listen` address (pool), or one per shard on
//! the same address with `SO_REUSEPORT` (per-core); or the sockets systemd
//! hands over (`LISTEN_FDS`), duplicated once per shard.

use std::fmt;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::config::{Config, Model};

const BACKLOG: i32 = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One bound address and its sockets, one per shard.
pub(crate) struct Bound {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub socks: Vec<Socket>,
}

/// Binds every listener the configuration asks for (or takes over the
/// sockets of socket activation). Errors name the address and the OS error.
pub(crate) fn bind_all(cfg: &Config, shards: usize) -> Result<Vec<Bound>, String> {
    #[cfg(unix)]
    if let Some(n) = cfg.inherited {
        let socks = systemd::take(n);
        if cfg.listen_explicit {
            tracing::warn!(
                "socket activation: using the {} inherited socket(s); --listen is ignored",
                socks.len()
            );
        }
        return inherited(socks, shards);
    }
    let reuseport = cfg.model == Model::PerCore;
    let mut out = Vec::new();
    for &addr in &cfg.listen {
        let socks = bind_group(Proto::Tcp, addr, shards, reuseport)?;
        let real = local(&socks[0]).map_err(|e| format!("cannot listen on tcp://{addr}: {e}"))?;
        out.push(Bound {
            proto: Proto::Tcp,
            addr: real,
            socks,
        });
        if cfg.udp {
            // UDP on the same port as TCP (RFC 862 uses port 7 for both);
            // when the port was picked by the kernel and is taken for UDP,
            // let the kernel pick again.
            let socks = match bind_group(Proto::Udp, real, shards, reuseport) {
                Err(_) if addr.port() == 0 => bind_group(Proto::Udp, addr, shards, reuseport)?,
                r => r?,
            };
            let ureal =
                local(&socks[0]).map_err(|e| format!("cannot listen on udp://{addr}: {e}"))?;
            out.push(Bound {
                proto: Proto::Udp,
                addr: ureal,
                socks,
            });
        }
    }
    Ok(out)
}

fn local(s: &Socket) -> std::io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// `n` sockets on `addr` (the first may pick the port; the rest reuse it).
fn bind_group(
    proto: Proto,
    addr: SocketAddr,
    n: usize,
    reuseport: bool,
) -> Result<Vec<Socket>, String> {
    let first = bind_one(proto, addr, reuseport)
        .map_err(|e| format!("cannot listen on {proto}://{addr}: {e}"))?;
    let real = local(&first).map_err(|e| format!("cannot listen on {proto}://{addr}: {e}"))?;
    let mut v = vec![first];
    for i in 1..n {
        let s = bind_one(proto, real, reuseport).map_err(|e| {
            format!("cannot listen on {proto}://{real} (shard {i}, SO_REUSEPORT): {e}")
        })?;
        v.push(s);
    }
    Ok(v)
}

/// One listening TCP socket on `addr` (no `SO_REUSEPORT`).
pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<Socket> {
    bind_one(Proto::Tcp, addr, false)
}

fn bind_one(proto: Proto, addr: SocketAddr, reuseport: bool) -> std::io::Result<Socket> {
    let (ty, p) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if proto == Proto::Tcp {
        // Rebinding while old connections sit in TIME_WAIT.
        s.set_reuse_address(true)?;
    }
    if reuseport {
        set_reuse_port(&s)?;
    }
    s.bind(&addr.into())?;
    if proto == Proto::Tcp {
        s.listen(BACKLOG)?;
    }
    Ok(s)
}

#[cfg(target_os = "linux")]
fn set_reuse_port(s: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a pointer to a live c_int
    // and its exact size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_reuse_port(_s: &Socket) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SO_REUSEPORT is not available here",
    ))
}

/// Inherited sockets, each duplicated so every shard has its own
/// descriptor on the same socket (every shard accepts on it).
#[cfg(unix)]
fn inherited(socks: Vec<Socket>, shards: usize) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for (i, s) in socks.into_iter().enumerate() {
        let fd = 3 + i;
        let addr = local(&s).map_err(|e| format!("socket activation: fd {fd}: {e}"))?;
        let proto = match s
            .r#type()
            .map_err(|e| format!("socket activation: fd {fd}: {e}"))?
        {
            Type::STREAM => Proto::Tcp,
            Type::DGRAM => Proto::Udp,
            other => {
                return Err(format!(
                    "socket activation: fd {fd} has unsupported socket type {other:?}"
                ))
            }
        };
        if proto == Proto::Tcp && !systemd::is_listening(&s) {
            s.listen(BACKLOG)
                .map_err(|e| format!("socket activation: fd {fd} ({addr}): listen: {e}"))?;
        }
        let mut v = Vec::with_capacity(shards);
        for k in 1..shards {
            v.push(
                s.try_clone()
                    .map_err(|e| format!("socket activation: fd {fd}: dup for shard {k}: {e}"))?,
            );
        }
        v.insert(0, s);
        tracing::info!(
            "socket activation: fd {fd} is {proto}://{addr} (shared by {shards} shard(s))"
        );
        out.push(Bound {
            proto,
            addr,
            socks: v,
        });
    }
    Ok(out)
}

/// systemd socket activation (`sd_listen_fds(3)`): `LISTEN_PID` names this
/// process and `LISTEN_FDS` counts the sockets passed from fd 3 on.
#[cfg(unix)]
pub(crate) mod systemd {
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};

    use socket2::Socket;

    use crate::values::{self, Activation};

    /// Reads (and removes, so children do not see them) the
    /// socket-activation variables: the number of sockets passed to this
    /// process, if any. A malformed variable, or a count whose descriptors
    /// are not open, is an error naming the variable.
    pub(crate) fn from_env() -> Result<Option<u32>, String> {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let (pid, fds) = (var("LISTEN_PID"), var("LISTEN_FDS"));
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(v);
        }
        let n = match values::listen_fds(pid.as_deref(), fds.as_deref(), std::process::id())? {
            Activation::None => return Ok(None),
            Activation::NotOurs(pid) => {
                tracing::info!(
                    "socket activation: LISTEN_PID={pid} is not this process; ignoring LISTEN_FDS"
                );
                return Ok(None);
            }
            Activation::Fds(n) => n,
        };
        for fd in values::FIRST_FD..values::FIRST_FD + n {
            // SAFETY: fcntl on a descriptor number, no memory involved.
            if unsafe { libc::fcntl(fd as RawFd, libc::F_GETFD) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(values::invalid_env(
                    "LISTEN_FDS",
                    fds.as_deref().unwrap_or_default(),
                    &format!(
                        "fd {fd} is not open ({e}); the {n} socket(s) must be fds 3 to {} (example: LISTEN_FDS=1 with the socket on fd 3)",
                        values::FIRST_FD + n - 1
                    ),
                ));
            }
        }
        Ok(Some(n))
    }

    /// Takes ownership of the `n` inherited sockets that [`from_env`]
    /// checked, fds 3 to 3 + n - 1.
    pub(crate) fn take(n: u32) -> Vec<Socket> {
        (values::FIRST_FD..values::FIRST_FD + n)
            .map(|fd| {
                let fd = fd as RawFd;
                // SAFETY: fcntl on a descriptor number, no memory involved;
                // close-on-exec keeps the socket from leaking into children.
                unsafe {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
                // SAFETY: the service manager passed this descriptor to us
                // (from_env checked it is open) and nothing else in the
                // process owns it.
                unsafe { Socket::from_raw_fd(fd) }
            })
            .collect()
    }

    /// `SO_ACCEPTCONN`: whether `listen` was called on the socket.
    pub(crate) fn is_listening(s: &Socket) -> bool {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a live c_int with its exact size.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        r == 0 && v != 0
    }
}
