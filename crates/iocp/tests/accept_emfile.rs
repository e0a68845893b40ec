//! The standing accept when the process runs out of descriptors (`EMFILE`):
//! error completions with `more == true`, at a bounded rate (the engine
//! backs off instead of spinning), then connections again once descriptors
//! free up. One test per Linux backend.
//!
//! Each test lowers `RLIMIT_NOFILE`, which would starve every other test in
//! the process, so it re-runs this test binary as a child (`--exact <name>`,
//! selected by an environment variable) and checks the child's output.
#![cfg(target_os = "linux")]

mod util;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use completion_port::Backend;
use util::*;

/// Set in the child's environment; its value is the test to run.
const CHILD: &str = "IOCP_ACCEPT_EMFILE_CHILD";

#[test]
fn uring() {
    run(Backend::Uring, "uring");
}

#[test]
fn epoll() {
    run(Backend::Epoll, "epoll");
}

fn run(backend: Backend, name: &str) {
    let t = Target::new(backend, false);
    if std::env::var(CHILD).as_deref() != Ok(name) {
        if t.ready(&format!("accept_emfile::{name}")) {
            let out = run_self_as_child(name, CHILD);
            assert!(out.contains("EMFILE-CHILD-OK"), "child failed:\n{out}");
        }
        return;
    }
    let port = t.build(t.builder());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let lh = port.associate(l, 1).unwrap();
    let clients: Vec<socket2::Socket> = (0..3)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    // The lowest free descriptor: every one below it is in use, so with the
    // soft limit there no new descriptor can be made.
    let probe = std::fs::File::open("/dev/null").unwrap();
    let lowest = std::os::fd::AsRawFd::as_raw_fd(&probe) as libc::rlim_t;
    drop(probe);
    let low = libc::rlimit {
        rlim_cur: lowest,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads a live local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    port.accept_stream(&lh, 2).unwrap();
    for c in &clients {
        c.connect(&addr.into()).unwrap();
    }
    let t0 = Instant::now();
    let mut errors = 0;
    while t0.elapsed() < Duration::from_millis(300) {
        if let Ok(c) = port.get(Some(Duration::from_millis(50))) {
            assert!(c.more, "{c:?}");
            assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::EMFILE));
            errors += 1;
        }
    }
    // SAFETY: setrlimit reads a live local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    println!("EMFILE completions in 300 ms: {errors}");
    assert!(
        (1..=30).contains(&errors),
        "{errors} EMFILE completions in 300 ms"
    );
    let mut accepted = 0;
    while accepted < 3 {
        let mut c = get(&port);
        if c.result.is_ok() {
            assert!(c.more && c.take_accepted().is_some());
            accepted += 1;
        }
    }
    lh.close();
    let c = get(&port);
    assert!(!c.more && c.is_aborted(), "{c:?}");
    println!("EMFILE-CHILD-OK");
}
