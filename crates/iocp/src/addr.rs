//! The address of a socket, IP or Unix domain: [`Addr`], what `connect`
//! and `send_to` take and what `accept` and `recv_from` report
//! ([`crate::Completion::addr`]).

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

use socket2::SockAddr;

/// A socket address: an IP address and port, or a Unix domain socket's.
///
/// Every operation that takes an address takes `impl Into<Addr>`, so a
/// [`SocketAddr`] or a path can be passed as it is:
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// # let port = completion_port::Port::new(0)?;
/// # let tcp = port.associate(socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?, 1)?;
/// # let unix = port.associate(socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?, 2)?;
/// port.connect(&tcp, "127.0.0.1:7007".parse::<std::net::SocketAddr>().unwrap(), 1)?;
/// port.connect(&unix, std::path::Path::new("/run/app.sock"), 2)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// An IPv4 or IPv6 socket address.
    Ip(SocketAddr),
    /// A Unix domain socket bound to this path.
    Unix(PathBuf),
    /// A Unix domain socket with no name: one that was never bound (the
    /// usual client, or the sender of a datagram from an unbound socket),
    /// or an end of a socket pair. It cannot be connected or sent to.
    UnixUnnamed,
}

impl Addr {
    /// The IP address, if this is one.
    pub fn as_ip(&self) -> Option<SocketAddr> {
        match self {
            Addr::Ip(a) => Some(*a),
            _ => None,
        }
    }

    /// The path of a Unix domain socket bound to one.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Addr::Unix(p) => Some(p),
            _ => None,
        }
    }

    /// The address as the kernel takes it. A path too long for a socket
    /// address, or an unnamed Unix address, is an `InvalidInput` error
    /// naming it.
    pub(crate) fn to_sockaddr(&self) -> io::Result<SockAddr> {
        match self {
            Addr::Ip(a) => Ok(SockAddr::from(*a)),
            Addr::Unix(p) => SockAddr::unix(p).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the Unix socket path '{}' cannot be a socket address: {e}",
                        p.display()
                    ),
                )
            }),
            Addr::UnixUnnamed => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unnamed Unix socket address cannot be connected or sent to",
            )),
        }
    }

    /// The address the kernel wrote (an accepted peer, a datagram's
    /// sender), if it is one this type can say: IP, or a Unix path or none.
    /// An empty address is an unnamed Unix sender: only Unix sockets report
    /// one. (Unix only for now: the Windows backend reads back IP
    /// addresses itself.)
    #[cfg(unix)]
    pub(crate) fn from_sockaddr(a: &SockAddr) -> Option<Addr> {
        if let Some(ip) = a.as_socket() {
            return Some(Addr::Ip(ip));
        }
        if (a.len() as usize) <= std::mem::size_of::<u16>() {
            return Some(Addr::UnixUnnamed);
        }
        if let Some(p) = a.as_pathname() {
            Some(Addr::Unix(p.to_path_buf()))
        } else if a.is_unnamed() {
            Some(Addr::UnixUnnamed)
        } else {
            // An abstract name (Linux): not representable here.
            None
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::UnixUnnamed => f.write_str("unix:(unnamed)"),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Addr {
        Addr::Ip(a)
    }
}

impl From<SocketAddrV4> for Addr {
    fn from(a: SocketAddrV4) -> Addr {
        Addr::Ip(a.into())
    }
}

impl From<SocketAddrV6> for Addr {
    fn from(a: SocketAddrV6) -> Addr {
        Addr::Ip(a.into())
    }
}

impl From<PathBuf> for Addr {
    fn from(p: PathBuf) -> Addr {
        Addr::Unix(p)
    }
}

impl From<&Path> for Addr {
    fn from(p: &Path) -> Addr {
        Addr::Unix(p.to_path_buf())
    }
}

impl From<&PathBuf> for Addr {
    fn from(p: &PathBuf) -> Addr {
        Addr::Unix(p.clone())
    }
}

impl From<&Addr> for Addr {
    fn from(a: &Addr) -> Addr {
        a.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refusals() {
        let ip: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let sa = Addr::from(ip).to_sockaddr().unwrap();
        assert_eq!(sa.as_socket(), Some(ip));
        let long = PathBuf::from("/".repeat(200));
        let e = Addr::from(long).to_sockaddr().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("cannot be a socket address"), "{e}");
        let e = Addr::UnixUnnamed.to_sockaddr().unwrap_err();
        assert!(e.to_string().contains("unnamed"), "{e}");
        #[cfg(unix)]
        {
            let p = Path::new("/tmp/x.sock");
            let sa = Addr::from(p).to_sockaddr().unwrap();
            assert_eq!(Addr::from_sockaddr(&sa), Some(Addr::Unix(p.into())));
            let sa = Addr::from(ip).to_sockaddr().unwrap();
            assert_eq!(Addr::from_sockaddr(&sa), Some(Addr::Ip(ip)));
        }
    }
}
