//! The little that every peer shares: the command line and the "listening on" line.
//! Each binary in `src/bin/` is the server itself, written the way a competent user
//! of that runtime would write an RFC 862 echo server.

use std::io::Write;
use std::net::SocketAddr;

/// Per-connection read buffer size used by every peer.
pub const BUF_SIZE: usize = 16 * 1024;

/// Parses `--listen ADDR` (default `127.0.0.1:0`). Exits with code 2 on a usage error.
/// Only loopback addresses are accepted: these servers exist for local benchmarks.
pub fn listen_addr() -> SocketAddr {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" => args.next(),
            s if s.starts_with("--listen=") => Some(s["--listen=".len()..].to_owned()),
            "-h" | "--help" => {
                println!(
                    "usage: {} [--listen ADDR]   (default 127.0.0.1:0)",
                    bin_name()
                );
                std::process::exit(0);
            }
            _ => usage(&format!("unexpected argument `{arg}`")),
        };
        let Some(value) = value else {
            usage("--listen needs a value")
        };
        addr = match value.parse() {
            Ok(a) => a,
            Err(e) => usage(&format!("bad address `{value}`: {e}")),
        };
    }
    if !addr.ip().is_loopback() {
        usage(&format!("{addr} is not a loopback address"));
    }
    addr
}

/// Prints exactly one `listening on tcp://IP:PORT` line on stdout and flushes it.
pub fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on tcp://{addr}")
        .and_then(|()| out.flush())
        .expect("stdout");
}

fn bin_name() -> String {
    std::env::args().next().unwrap_or_else(|| "echo".into())
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "{}: {msg}\nusage: {} [--listen ADDR]",
        bin_name(),
        bin_name()
    );
    std::process::exit(2);
}
