//! io_uring blocked by seccomp, as Docker's default profile (moby#46762) and
//! containerd's RuntimeDefault do: `auto` must fall back to epoll and say
//! why, and a forced `uring` must fail naming the cause.
//!
//! A seccomp filter cannot be removed, so each test re-executes this test
//! binary as a child (`--exact <name>`, selected by an environment
//! variable); the child installs the filter and runs the scenario, the
//! parent checks its exit status and output.
#![cfg(target_os = "linux")]

mod util;

use std::io;

use completion_port::{Backend, OpKind, Port};
use util::{accept_and_connect, get};

/// Set in the child's environment; its value is the scenario to run.
const CHILD: &str = "IOCP_SECCOMP_CHILD";
/// Printed by a child that could not install a filter at all.
const UNAVAILABLE: &str = "SECCOMP-UNAVAILABLE";

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64: EM_X86_64 | 64BIT | LE
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64: EM_AARCH64 | 64BIT | LE

/// The system calls Docker's profile leaves out (io_uring_setup is 425 on
/// x86_64 and aarch64 alike).
const BLOCKED: [libc::c_long; 3] = [
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Installs a filter on every thread of this process that makes the io_uring
/// system calls fail with `EPERM`, and checks that it works.
fn block_io_uring() -> Result<(), String> {
    let arch_off = std::mem::offset_of!(libc::seccomp_data, arch) as u32;
    let nr_off = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    let deny = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    let mut f = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, arch_off),
        // Another ABI (e.g. i386 on x86_64): not ours to judge, allow.
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH,
            1,
            0,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr_off),
    ];
    for (i, nr) in BLOCKED.iter().enumerate() {
        // Matches jump to the deny return after the last check.
        let to_deny = (BLOCKED.len() - i) as u8;
        f.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            *nr as u32,
            to_deny,
            0,
        ));
    }
    f.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    f.push(stmt(libc::BPF_RET | libc::BPF_K, deny));
    let prog = libc::sock_fprog {
        len: f.len() as u16,
        filter: f.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `prog` points to `f`, which outlives the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        // Older kernels: no seccomp(2), only this thread (and the threads it
        // starts later, such as the port's engine) can be filtered.
        // SAFETY: as above.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
                0,
                0,
            )
        };
        if r != 0 {
            return Err(format!(
                "installing the filter: {}",
                io::Error::last_os_error()
            ));
        }
    }
    // Check the filter: io_uring_setup(1, &params) must now fail with EPERM.
    let mut params = [0u64; 16]; // struct io_uring_params is 120 bytes
                                 // SAFETY: `params` is a zeroed buffer larger than io_uring_params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    let e = io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: closes the ring descriptor the call just created.
        unsafe { libc::close(fd as libc::c_int) };
        panic!("the seccomp filter did not block io_uring_setup");
    }
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EPERM),
        "io_uring_setup failed otherwise: {e}"
    );
    Ok(())
}

/// Whether to run test `name`'s scenario here: true in the child process
/// that runs it, once the filter is installed. In the test's own process,
/// runs the child and checks that it printed `CHILD-OK <name>` (or that it
/// could not install a filter: a skip, said on stderr), and returns false;
/// likewise in a child that could not install the filter.
fn in_filtered_child(name: &str) -> bool {
    if !std::env::var(CHILD).is_ok_and(|v| v == name) {
        let out = util::run_self_as_child(name, CHILD);
        match out.lines().find(|l| l.contains(UNAVAILABLE)) {
            Some(line) => eprintln!("skipping `{name}`: {line}"),
            None => assert!(out.contains(&format!("CHILD-OK {name}")), "{out}"),
        }
        return false;
    }
    match block_io_uring() {
        Ok(()) => true,
        Err(e) => {
            println!("{UNAVAILABLE}: {e}");
            false
        }
    }
}

fn port_on(backend: Backend) -> io::Result<Port> {
    Port::builder().backend(backend).build()
}

/// A TCP echo round trip on 127.0.0.1 entirely through the port: accept,
/// connect, receive, send back, receive the echo.
fn echo_round_trip(port: &Port) {
    let (_lh, ch, _) = accept_and_connect(port, 1, 2);
    let mut server = None;
    for _ in 0..2 {
        let mut c = get(port);
        match c.kind {
            OpKind::Accept => {
                let (s, _peer) = c.take_accepted().expect("accepted socket");
                server = Some(port.associate(s, 3).unwrap());
            }
            OpKind::Connect => {
                c.result.expect("connect");
            }
            k => panic!("unexpected {k:?}"),
        }
    }
    let sh = server.expect("accepted");
    port.recv(&sh, Vec::with_capacity(64), 30).unwrap();
    port.send(&ch, b"echo through epoll".to_vec(), 21).unwrap();
    port.recv(&ch, Vec::with_capacity(64), 22).unwrap();
    let mut echoed = false;
    let mut back = false;
    while !(echoed && back) {
        let mut c = get(port);
        let r = c.result.as_ref().map(|n| *n).map_err(|e| e.to_string());
        match (c.kind, c.token) {
            (OpKind::Send, 21) | (OpKind::Send, 31) => assert_eq!(r, Ok(18)),
            (OpKind::Recv, 30) => {
                assert_eq!(r, Ok(18));
                port.send(&sh, c.take_buf().unwrap(), 31).unwrap();
                echoed = true;
            }
            (OpKind::Recv, 22) => {
                assert_eq!(c.take_buf().unwrap().as_slice(), b"echo through epoll");
                back = true;
            }
            other => panic!("unexpected {other:?}: {r:?}"),
        }
    }
}

#[test]
fn auto_falls_back_to_epoll_under_seccomp() {
    if !in_filtered_child("auto_falls_back_to_epoll_under_seccomp") {
        return;
    }
    let port = port_on(Backend::Auto).expect("auto must fall back to epoll");
    let info = port.backend();
    println!("backend: {info}");
    assert_eq!(info.backend, Backend::Epoll, "{info}");
    assert!(
        info.reason.contains("EPERM"),
        "reason does not name EPERM: {}",
        info.reason
    );
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
    if matches!(sysctl.trim(), "" | "0") {
        assert!(
            info.reason.contains("seccomp"),
            "reason does not name seccomp: {}",
            info.reason
        );
    }
    echo_round_trip(&port);
    port.close();
    println!(
        "CHILD-OK auto_falls_back_to_epoll_under_seccomp: backend=epoll reason={:?}",
        info.reason
    );
}

#[test]
fn forced_uring_fails_with_eperm_under_seccomp() {
    if !in_filtered_child("forced_uring_fails_with_eperm_under_seccomp") {
        return;
    }
    let err =
        port_on(Backend::Uring).expect_err("io_uring is blocked, a forced uring port must fail");
    let msg = err.to_string();
    assert!(msg.contains("EPERM"), "error does not name EPERM: {msg}");
    assert!(
        msg.contains("uring"),
        "error does not name the backend: {msg}"
    );
    println!("CHILD-OK forced_uring_fails_with_eperm_under_seccomp: {msg}");
}

/// With io_uring blocked, a test of the `uring` target fails (naming the
/// cause and the variable that allows the skip) unless
/// `IOCP_ALLOW_MISSING_BACKEND` names `uring` or says `all`; a name that is
/// not a backend fails too. The `epoll` target is unaffected.
#[test]
fn missing_backend_fails_unless_allowed() {
    if !in_filtered_child("missing_backend_fails_unless_allowed") {
        return;
    }
    let uring = util::Target::new(Backend::Uring, false);
    let epoll = util::Target::new(Backend::Epoll, false);
    // What `ready` does under `allow` (None: the variable unset): Ok(ran),
    // or Err(the failure's message).
    let ready_with = |t: &util::Target, allow: Option<&str>| {
        match allow {
            Some(v) => std::env::set_var(util::ALLOW_MISSING_BACKEND, v),
            None => std::env::remove_var(util::ALLOW_MISSING_BACKEND),
        }
        std::panic::catch_unwind(|| t.ready("the test")).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "a panic without a message".into())
        })
    };
    for allow in [None, Some(""), Some("epoll"), Some("iocp,epoll")] {
        let msg = ready_with(&uring, allow).expect_err(&format!(
            "uring blocked, allowed {allow:?}: the test must fail"
        ));
        assert!(
            msg.contains("EPERM") && msg.contains("IOCP_ALLOW_MISSING_BACKEND=uring"),
            "allowed {allow:?}: the failure names neither the cause nor the way out: {msg}"
        );
    }
    for allow in ["uring", "epoll,uring", "iocp uring", "all"] {
        assert_eq!(
            ready_with(&uring, Some(allow)),
            Ok(false),
            "allowed {allow:?}: uring is skipped"
        );
    }
    let msg = ready_with(&uring, Some("uring,bogus")).expect_err("a bad name fails");
    assert!(
        msg.contains("'uring,bogus'") && msg.contains("'bogus' is not a backend"),
        "the bad value and name are not quoted: {msg}"
    );
    assert_eq!(ready_with(&epoll, None), Ok(true), "epoll runs");
    println!("CHILD-OK missing_backend_fails_unless_allowed");
}
