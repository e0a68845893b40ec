//! A port whose engines cannot all start gives back everything it took.
//!
//! `PortBuilder::engines(4)` under a descriptor limit that lets two engines
//! start and stops the third: `build()` must fail, and the process's threads
//! (`/proc/self/task`) and descriptors (`/proc/self/fd`) must be back where
//! they were — the engines that did start are stopped and joined, their
//! rings, epoll sets and eventfds closed.
//!
//! The limit (`RLIMIT_NOFILE`) is per process, so each scenario re-executes
//! this test binary as a child (`--exact <name>`, selected by an environment
//! variable) that lowers its own limit; the parent checks its exit status
//! and output.
#![cfg(target_os = "linux")]

mod util;

use std::io;
use std::time::{Duration, Instant};

use completion_port::{Backend, Port};
use util::{fds, threads};

/// Set in the child's environment; its value is the test to run.
const CHILD: &str = "IOCP_START_FAILURE_CHILD";

/// The lowest descriptor limit under which exactly `room` more descriptors
/// can be opened (numbers already open below it do not count as room).
fn limit_with_room(room: usize) -> u64 {
    let mut free = 0;
    for fd in 0.. {
        // SAFETY: F_GETFD only asks whether `fd` is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            if free == room {
                return fd as u64;
            }
            free += 1;
        }
    }
    unreachable!()
}

fn nofile() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

fn set_nofile(r: &libc::rlimit) {
    // SAFETY: setrlimit reads the rlimit we pass.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, r) };
    assert_eq!(rc, 0, "setrlimit: {}", io::Error::last_os_error());
}

/// Waits (bounded) until `f` returns `want`; returns what it saw last.
fn settle<T: PartialEq + Copy>(want: T, f: impl Fn() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = f();
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In the child: the scenario for `backend`. `in_thread`: the third engine
/// fails inside its thread (its eventfd opens, its ring or epoll set does
/// not); otherwise it fails before its thread starts (no eventfd).
fn scenario(backend: Backend, in_thread: bool) {
    let base = Port::builder().backend(backend).concurrency(1);
    // What one engine takes, measured with a port of one engine.
    let fd0 = fds();
    let th0 = threads();
    // A backend that does not work on this machine fails the test, unless
    // `IOCP_ALLOW_MISSING_BACKEND` allows the skip (see `util::Target::ready`).
    let target = util::Target {
        backend,
        inline: false,
        engine_threads: true,
    };
    if !target.ready(&format!("start_failure {backend}")) {
        println!("CHILD-SKIP {backend}: it does not work here");
        return;
    }
    // (A port of one engine has no engine thread: its waiting threads
    // drive it. Two engines each run on a thread of their own.)
    let two = match base.clone().engines(2).build() {
        Ok(p) => p,
        Err(e) => panic!("{backend}: two engines: {e}"),
    };
    let per_engine = (fds() - fd0) / 2;
    assert_eq!(threads(), th0 + 2, "two engines, two threads");
    drop(two);
    assert_eq!(settle(fd0, fds), fd0, "two engines: descriptors back");
    assert_eq!(settle(th0, threads), th0, "two engines: threads back");

    // Room for two engines and part of a third.
    let open = fds();
    let room = 2 * per_engine + if in_thread { per_engine - 1 } else { 0 };
    let limit = limit_with_room(room);
    let saved = nofile();
    set_nofile(&libc::rlimit {
        rlim_cur: limit,
        rlim_max: saved.rlim_max,
    });
    let r = base.clone().engines(4).build();
    set_nofile(&saved);
    let err = match r {
        Ok(_) => panic!("{backend}: engines(4) under a limit of {limit} descriptors started"),
        Err(e) => e,
    };
    println!(
        "{backend}: engines(4) with room for {room} descriptors ({per_engine} per engine): {err}"
    );
    // (The io_uring engine names itself in the message, around the errno.)
    let emfile = io::Error::from_raw_os_error(libc::EMFILE).to_string();
    assert!(
        err.to_string().contains(&emfile),
        "{backend}: the third engine fails for want of descriptors, not with {err:?}"
    );
    let (fd1, th1) = (settle(open, fds), settle(th0, threads));
    assert_eq!(
        (fd1, th1),
        (open, th0),
        "{backend}: after the failed build, (descriptors, threads) are ({fd1}, {th1}), were \
         ({open}, {th0}): the engines that started are still running"
    );
    // And the limit is not the problem any more: a full port starts.
    let p = base
        .engines(4)
        .build()
        .expect("engines(4) without the limit");
    p.close();
    println!("CHILD-OK {backend} in_thread={in_thread}");
}

fn check(name: &str, backend: Backend, in_thread: bool) {
    if std::env::var(CHILD).is_ok_and(|v| v == name) {
        scenario(backend, in_thread);
        return;
    }
    let out = util::run_self_as_child(name, CHILD);
    if let Some(line) = out.lines().find(|l| l.contains("CHILD-SKIP")) {
        // (libtest's "test … ... " may share the line.)
        let line = line.rsplit(" ... ").next().unwrap_or(line);
        util::say(format!("SKIPPED {name}: {line}"));
        return;
    }
    assert!(
        out.contains(&format!("CHILD-OK {backend} in_thread={in_thread}")),
        "{out}"
    );
    for line in out.lines().filter(|l| l.contains("engines(4)")) {
        // (libtest's "test … ... " may share the line.)
        let line = line.rsplit(" ... ").next().unwrap_or(line);
        util::say(format!("{name}: {line}"));
    }
}

#[test]
fn uring_engine_fails_in_its_thread() {
    check("uring_engine_fails_in_its_thread", Backend::Uring, true);
}

#[test]
fn uring_engine_fails_before_its_thread() {
    check(
        "uring_engine_fails_before_its_thread",
        Backend::Uring,
        false,
    );
}

#[test]
fn epoll_engine_fails_in_its_thread() {
    check("epoll_engine_fails_in_its_thread", Backend::Epoll, true);
}

#[test]
fn epoll_engine_fails_before_its_thread() {
    check(
        "epoll_engine_fails_before_its_thread",
        Backend::Epoll,
        false,
    );
}
