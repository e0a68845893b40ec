//! Property test: echo round trips over real loopback sockets with random
//! chunking, on every backend (threaded and inline ports).
//!
//! A client writes random messages in random chunk sizes (one thread) and
//! reads the echo (another); the server side is the port: receive → send the
//! same buffer back, either with single receives into a `Vec` of random
//! capacity, or with a pooled receive whose pool buffers are sent straight
//! back. The bytes must come back exactly. 32 cases per target, from a
//! deterministic seed.

mod util;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::Shutdown;

use completion_port::{Backend, OpKind, Port};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use util::*;

#[derive(Debug, Clone)]
struct Case {
    messages: Vec<Vec<u8>>,
    /// Client write sizes, used in turn.
    chunks: Vec<usize>,
    /// Server receive buffer capacity (single-receive mode).
    recv_cap: usize,
    pooled: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24 * 1024), 1..6),
        prop::collection::vec(1usize..6000, 1..16),
        1usize..9000,
        any::<bool>(),
    )
        .prop_map(|(messages, chunks, recv_cap, pooled)| Case {
            messages,
            chunks,
            recv_cap,
            pooled,
        })
}

/// One echo connection through `port`; returns what the client read back.
fn echo(port: &Port, c: &Case) -> Result<(), TestCaseError> {
    let data: Vec<u8> = c.messages.concat();
    let (h, client) = tcp_pair(port, 1);
    let mut wr = client.try_clone().expect("clone client");
    let mut rd = client;
    let chunks = c.chunks.clone();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut off = 0;
        for n in chunks.iter().cycle() {
            if off >= to_send.len() {
                break;
            }
            let end = (off + n).min(to_send.len());
            wr.write_all(&to_send[off..end])?;
            off = end;
        }
        wr.shutdown(Shutdown::Write)
    });
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut got = Vec::new();
        rd.read_to_end(&mut got)?;
        Ok(got)
    });

    // The server: echo everything, then half-close after the last send.
    let (mut sends, mut eof) = (0usize, false);
    if c.pooled {
        port.recv_pooled(&h, 0).expect("recv_pooled");
    } else {
        port.recv(&h, Vec::with_capacity(c.recv_cap), 0)
            .expect("recv");
    }
    while !(eof && sends == 0) {
        let mut comp = get(port);
        match comp.kind {
            OpKind::Recv | OpKind::RecvPooled => {
                let n = *comp
                    .result
                    .as_ref()
                    .map_err(|e| TestCaseError::fail(format!("receive failed: {e}")))?;
                if n == 0 {
                    prop_assert!(!comp.more, "a 0-byte chunk must end the stream");
                    eof = true;
                    continue;
                }
                let buf = comp.take_buf().expect("received bytes");
                prop_assert_eq!(buf.len(), n);
                port.send(&h, buf, 1).expect("send");
                sends += 1;
                if comp.kind == OpKind::Recv {
                    port.recv(&h, Vec::with_capacity(c.recv_cap), 0)
                        .expect("recv");
                } else {
                    prop_assert!(comp.more, "data chunks say more == true");
                }
            }
            OpKind::Send => {
                comp.result
                    .as_ref()
                    .map_err(|e| TestCaseError::fail(format!("send failed: {e}")))?;
                sends -= 1;
            }
            other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        }
    }
    h.with_socket(|s| s.shutdown(Shutdown::Write))
        .expect("half-close");
    writer.join().unwrap().expect("client write");
    let got = reader.join().unwrap().expect("client read");
    h.close();
    if got != data {
        let at = got
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(data.len()));
        return Err(TestCaseError::fail(format!(
            "echo differs at byte {at} (sent {}, got {})",
            data.len(),
            got.len()
        )));
    }
    Ok(())
}

fn run(backend: Backend, inline: bool) {
    let t = Target::new(backend, inline);
    if !t.ready(&format!("echo_prop[{}]", t.name())) {
        return;
    }
    let port = t.build(t.builder().pool_buffers(16).pool_buffer_size(2048));
    let config = Config {
        cases: 32,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let started = std::time::Instant::now();
    let (bytes, cases) = (Cell::new(0usize), Cell::new(0u32));
    let r = runner.run(&case(), |c| {
        cases.set(cases.get() + 1);
        bytes.set(bytes.get() + c.messages.iter().map(Vec::len).sum::<usize>());
        echo(&port, &c)
    });
    if let Err(e) = r {
        panic!("echo_prop[{}]: {e}", t.name());
    }
    // Every connection finished: nothing stray is left on the port.
    no_packet(&port, std::time::Duration::from_millis(20));
    assert_eq!(port.pool_stats().in_use, 0, "pool buffers still lent");
    say(format!(
        "echo_prop[{}]: {} cases passed ({} bytes echoed) in {:?}",
        t.name(),
        cases.get(),
        bytes.get(),
        started.elapsed()
    ));
}

/// `echo_prop::<target>`: one test per target, each `run(backend, inline)`.
macro_rules! targets {
    ($($(#[$cfg:meta])* $name:ident: $backend:ident, $inline:expr;)*) => {
        $(
            $(#[$cfg])*
            #[test]
            fn $name() {
                run(Backend::$backend, $inline);
            }
        )*
    };
}

targets! {
    #[cfg(target_os = "linux")] uring: Uring, false;
    #[cfg(target_os = "linux")] uring_inline: Uring, true;
    #[cfg(target_os = "linux")] epoll: Epoll, false;
    #[cfg(target_os = "linux")] epoll_inline: Epoll, true;
    #[cfg(windows)] iocp: Iocp, false;
}
