//! `iocp-echo client`: talks to an echo server and checks every echoed byte
//! against what was sent.
//!
//! Interactive: each line read from stdin is sent as it is read; echoes are
//! printed to stdout as they arrive; at the end of stdin the client waits
//! for the last echoes (up to `--timeout`) and exits. With `--message TEXT
//! --count N` it sends TEXT (plus a newline unless `--no-newline`) N times,
//! each after the previous echo came back, and prints a round-trip summary
//! on stderr. Exit 1 if an echo differs from what was sent (naming the byte
//! offset within the connection's stream), if the connection fails or
//! closes early, or if an echo does not come back within `--timeout`.
//!
//! Built on `iocp`: a socket2 socket associated with an inline port,
//! `connect` (ConnectEx) with a deadline, one standing pooled receive,
//! `send`; stdin is read on a helper thread that `post`s a packet to the port
//! for every line.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use completion_port::{Backend, Completion, GetError, Handle, OpKind, OpOptions, Port};
use socket2::{Domain, Protocol, Socket, Type};

use crate::values;

/// Arguments of `iocp-echo client`.
#[derive(clap::Args, Debug)]
#[command(after_help = values::forms_help!())]
// The doc comments are the `--help` text: `[::1]:7007` is an address.
#[allow(rustdoc::broken_intra_doc_links)]
pub struct Args {
    /// The echo server, HOST:PORT (a name is resolved; [::1]:7007 for IPv6).
    #[arg(value_name = "ADDR", value_parser = values::host_port)]
    addr: String,
    /// Send TEXT instead of reading stdin.
    #[arg(short, long, value_name = "TEXT")]
    message: Option<String>,
    /// How many times to send --message (each after the previous echo).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1, requires = "message",
          allow_negative_numbers = true, value_parser = values::count::<u64>(1, u64::MAX))]
    count: u64,
    /// Send --message without the trailing newline.
    #[arg(long, requires = "message")]
    no_newline: bool,
    /// Do not print the echoes (nor the --message summary).
    #[arg(short, long)]
    quiet: bool,
    /// Give up on the connect after this long (a duration above 0).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = values::positive_duration)]
    connect_timeout: Duration,
    /// Fail if bytes sent are not echoed within this long (a duration
    /// above 0).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = values::positive_duration)]
    timeout: Duration,
    /// The completion-port backend (`auto`, `uring`, `epoll`, `iocp`)
    /// [default: $IOCP_BACKEND, else auto].
    #[arg(long, value_name = "BACKEND", value_parser = values::backend)]
    backend: Option<Backend>,
}

const KEY_SOCK: u64 = 1;
const KEY_STDIN: u64 = 2;
const T_CONNECT: u64 = 1;
const T_RECV: u64 = 2;
const T_SEND: u64 = 3;

pub fn run(a: Args) -> ExitCode {
    if let Err(e) = values::check_backend_env(a.backend) {
        eprintln!("iocp-echo client: {e}");
        return ExitCode::from(2);
    }
    match session(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = io::stdout().flush();
            eprintln!("iocp-echo client: {e}");
            ExitCode::from(1)
        }
    }
}

/// The connection and what has been sent but not yet echoed.
struct Echo {
    port: Port,
    h: Handle,
    addr: SocketAddr,
    /// Bytes sent and not yet echoed, oldest first.
    expected: VecDeque<u8>,
    /// Stream offset of `expected[0]` (= bytes echoed so far).
    echoed: u64,
    sends: usize,
    print: bool,
    last_progress: Instant,
}

impl Echo {
    fn send(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.expected.extend(bytes.iter().copied());
        self.port
            .send(&self.h, bytes, T_SEND)
            .map_err(|e| format!("send to {} failed: {}", self.addr, e.error))?;
        self.sends += 1;
        self.last_progress = Instant::now();
        Ok(())
    }

    /// Handles one socket completion.
    fn on_completion(&mut self, c: &Completion) -> Result<(), String> {
        match (c.kind, &c.result) {
            (OpKind::RecvPooled, Ok(_)) if c.more => {
                let data = c.buf().map(|b| b.as_slice()).unwrap_or_default();
                self.check(data)?;
                if self.print {
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(data).and_then(|_| out.flush());
                }
                self.last_progress = Instant::now();
                Ok(())
            }
            (OpKind::RecvPooled, Ok(_)) => Err(format!(
                "connection closed by {} with {} of {} bytes echoed",
                self.addr,
                self.echoed,
                self.echoed + self.expected.len() as u64
            )),
            (OpKind::RecvPooled, Err(e)) => Err(format!("receive from {} failed: {e}", self.addr)),
            (OpKind::Send, r) => {
                self.sends -= 1;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("send to {} failed: {e}", self.addr)),
                }
            }
            _ => Ok(()),
        }
    }

    fn check(&mut self, data: &[u8]) -> Result<(), String> {
        for &got in data {
            let Some(want) = self.expected.pop_front() else {
                return Err(format!(
                    "echo differs from what was sent at byte offset {}: received 0x{got:02x} beyond the {} bytes sent",
                    self.echoed, self.echoed
                ));
            };
            if got != want {
                return Err(format!(
                    "echo differs from what was sent at byte offset {}: sent 0x{want:02x} {:?}, received 0x{got:02x} {:?}",
                    self.echoed, want as char, got as char
                ));
            }
            self.echoed += 1;
        }
        Ok(())
    }

    /// Fails if bytes are outstanding and nothing came back for `timeout`.
    fn check_stalled(&self, timeout: Duration) -> Result<(), String> {
        if !self.expected.is_empty() && self.last_progress.elapsed() >= timeout {
            return Err(format!(
                "no echo from {} within {} ({} of {} bytes echoed)",
                self.addr,
                humantime::format_duration(timeout),
                self.echoed,
                self.echoed + self.expected.len() as u64
            ));
        }
        Ok(())
    }
}

fn session(a: &Args) -> Result<(), String> {
    let addr = a
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", a.addr))?
        .next()
        .ok_or_else(|| format!("cannot resolve {}: no address", a.addr))?;
    let mut b = Port::builder().inline(true).pool_buffers(64);
    if let Some(be) = a.backend {
        b = b.backend(be);
    }
    let port = b
        .build()
        .map_err(|e| format!("cannot create a completion port: {e}"))?;
    let h = connect(&port, addr, a.connect_timeout).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::TimedOut {
            format!(
                "timed out after {}",
                humantime::format_duration(a.connect_timeout)
            )
        } else {
            e.to_string()
        };
        format!("cannot connect to {addr}: {why}")
    })?;
    port.recv_pooled(&h, T_RECV)
        .map_err(|e| format!("receive from {addr} failed: {}", e.error))?;
    let mut echo = Echo {
        port: port.clone(),
        h: h.clone(),
        addr,
        expected: VecDeque::new(),
        echoed: 0,
        sends: 0,
        print: !a.quiet,
        last_progress: Instant::now(),
    };
    let r = match &a.message {
        Some(text) => repeat(&mut echo, a, text),
        None => interactive(&mut echo, a),
    };
    h.close();
    r
}

/// Connects an associated socket with `ConnectEx` and a deadline.
fn connect(port: &Port, addr: SocketAddr, timeout: Duration) -> io::Result<Handle> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_tcp_nodelay(true)?;
    let h = port.associate(s, KEY_SOCK)?;
    port.connect(&h, addr, OpOptions::with_timeout(T_CONNECT, timeout))?;
    let give_up = Instant::now() + timeout + Duration::from_secs(5);
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match port.get(Some(left)) {
            Ok(c) if c.kind == OpKind::Connect => return c.result.map(|_| h),
            Ok(_) => {}
            Err(GetError::TimedOut) => return Err(io::ErrorKind::TimedOut.into()),
            Err(GetError::Abandoned) => {
                return Err(io::Error::other("the completion port was closed"))
            }
        }
    }
}

/// `--message TEXT --count N`: one message at a time, each verified.
fn repeat(echo: &mut Echo, a: &Args, text: &str) -> Result<(), String> {
    let mut msg = text.as_bytes().to_vec();
    if !a.no_newline {
        msg.push(b'\n');
    }
    let mut rtts = Vec::with_capacity(a.count.min(1 << 20) as usize);
    for _ in 0..a.count {
        let t = Instant::now();
        echo.send(msg.clone())?;
        while !echo.expected.is_empty() || echo.sends > 0 {
            echo.check_stalled(a.timeout)?;
            let wait = a.timeout.saturating_sub(echo.last_progress.elapsed());
            match echo.port.get(Some(wait)) {
                Ok(c) => echo.on_completion(&c)?,
                Err(GetError::TimedOut) => {}
                Err(GetError::Abandoned) => return Err("the completion port was closed".into()),
            }
        }
        rtts.push(t.elapsed());
    }
    if !a.quiet {
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / rtts.len().max(1) as u32;
        eprintln!(
            "{} echoes ({} bytes) from {} verified; round trip min/avg/max {:.1}/{:.1}/{:.1} us",
            a.count,
            echo.echoed,
            echo.addr,
            min.as_secs_f64() * 1e6,
            avg.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

/// stdin lines out, echoes to stdout.
fn interactive(echo: &mut Echo, a: &Args) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    let port = echo.port.clone();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut lock = stdin.lock();
            loop {
                let mut line = Vec::new();
                let done = !matches!(lock.read_until(b'\n', &mut line), Ok(n) if n > 0);
                let msg = if done { None } else { Some(line) };
                if tx.send(msg).is_err() || port.post(KEY_STDIN, 0, 0).is_err() || done {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the stdin thread: {e}"))?;
    let mut eof = false;
    loop {
        if eof && echo.sends == 0 && echo.expected.is_empty() {
            return Ok(());
        }
        echo.check_stalled(a.timeout)?;
        let wait = if echo.expected.is_empty() && echo.sends == 0 {
            None
        } else {
            Some(a.timeout.saturating_sub(echo.last_progress.elapsed()))
        };
        match echo.port.get(wait) {
            Ok(c) if c.key == KEY_STDIN => {
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Some(line) => echo.send(line)?,
                        None => eof = true,
                    }
                }
            }
            Ok(c) => echo.on_completion(&c)?,
            Err(GetError::TimedOut) => {}
            Err(GetError::Abandoned) => return Err("the completion port was closed".into()),
        }
    }
}
