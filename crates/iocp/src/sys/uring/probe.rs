//! Building the ring and finding out what the kernel offers: setup flags are
//! tried from best to plainest, opcodes are probed, and every fast-path
//! feature can be switched off by an environment variable so its fallback
//! runs on a kernel that has the feature.

use std::io;

use io_uring::{opcode, IoUring, Probe};

use crate::config::{Config, UringFeatures};
use crate::sys::common::CannotDrive;

use crate::sys::common::kernel_release;

/// `true` when the environment variable is set to something other than
/// `0`/empty: used to switch features off.
pub(crate) fn env_off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The environment switches, by feature (all off = every fast path used).
pub const ENV_SWITCHES: &[(&str, &str)] = &[
    (
        "IOCP_NO_DEFER_TASKRUN",
        "no SINGLE_ISSUER/DEFER_TASKRUN ring setup",
    ),
    (
        "IOCP_NO_MULTISHOT_ACCEPT",
        "accept streams re-issue single-shot accepts",
    ),
    (
        "IOCP_NO_MULTISHOT_RECV",
        "pooled receive polls, then reads into a free pool buffer",
    ),
];

/// Who submits to a ring and waits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingMode {
    /// One thread, for the ring's whole life (an engine thread, an inline
    /// port's owner): `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has
    /// them.
    Owned,
    /// Any of the port's waiting threads, one at a time (the driver). The
    /// kernel binds both flags to one thread (another one's submissions and
    /// waits fail with `EEXIST`, and no call moves the binding), so neither
    /// is set. `coop` adds `COOP_TASKRUN | TASKRUN_FLAG`: a completion that
    /// runs through a busy thread waits for its next kernel entry instead of
    /// interrupting it — right when one thread runs at a time anyway
    /// (concurrency limit 1), since nobody else could take the completion.
    Shared { coop: bool },
}

pub(crate) fn build_ring(cfg: &Config, mode: RingMode) -> io::Result<(IoUring, UringFeatures)> {
    let entries = cfg.sq_entries.max(8).next_power_of_two();
    let cq = cfg.cq_entries.max(entries * 2).next_power_of_two();
    let no_defer = env_off("IOCP_NO_DEFER_TASKRUN");
    // Setup ladder: best first. EINVAL means "this kernel does not know a
    // flag"; anything else (ENOSYS, EPERM, ENOMEM) is final.
    let mut last = None;
    for step in 0..4 {
        let skip = match mode {
            RingMode::Owned => no_defer && step < 2,
            // No SINGLE_ISSUER/DEFER_TASKRUN; COOP only when asked.
            RingMode::Shared { coop } => step < 2 || (step == 2 && !coop),
        };
        if skip {
            continue;
        }
        let mut b = IoUring::builder();
        b.dontfork().setup_cqsize(cq).setup_submit_all();
        match step {
            0 => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
            1 => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            2 => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            _ => {}
        }
        match b.build(entries) {
            Ok(ring) => {
                let mut f = UringFeatures {
                    single_issuer: step <= 1,
                    defer_taskrun: step <= 1,
                    coop_taskrun: step == 2,
                    ext_arg: ring.params().is_feature_ext_arg(),
                    nodrop: ring.params().is_feature_nodrop(),
                    sq_entries: ring.params().sq_entries(),
                    cq_entries: ring.params().cq_entries(),
                    ..Default::default()
                };
                let mut probe = Probe::new();
                ring.submitter().register_probe(&mut probe)?;
                for (code, name) in [
                    (opcode::Accept::CODE, "ACCEPT"),
                    (opcode::Connect::CODE, "CONNECT"),
                    (opcode::Recv::CODE, "RECV"),
                    (opcode::Send::CODE, "SEND"),
                    (opcode::SendMsg::CODE, "SENDMSG"),
                    (opcode::RecvMsg::CODE, "RECVMSG"),
                    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
                    (opcode::Read::CODE, "READ"),
                    (opcode::Write::CODE, "WRITE"),
                    (opcode::Fsync::CODE, "FSYNC"),
                    (opcode::PollAdd::CODE, "POLL_ADD"),
                ] {
                    if !probe.is_supported(code) {
                        return Err(io::Error::new(
                            io::ErrorKind::Unsupported,
                            format!("io_uring lacks a required opcode: {name}"),
                        ));
                    }
                }
                if !ring.params().is_feature_fast_poll() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "io_uring lacks FEAT_FAST_POLL (kernel < 5.7)",
                    ));
                }
                if mode != RingMode::Owned {
                    // Drivers wait with a timeout of their own, and are woken
                    // by a message posted into the ring (affinity-free).
                    if !f.ext_arg {
                        return Err(CannotDrive::error(
                            "a ring its waiters drive needs FEAT_EXT_ARG (kernel 5.11)",
                        ));
                    }
                    if !probe.is_supported(opcode::MsgRingData::CODE) {
                        return Err(CannotDrive::error(
                            "a ring its waiters drive needs MSG_RING (kernel 5.18)",
                        ));
                    }
                }
                // Multishot accept and buffer rings came with 5.19, multishot
                // receive with 6.0 (which also brought SINGLE_ISSUER, so a
                // kernel that took step 0/1 has both). Older kernels without
                // SINGLE_ISSUER get the fallbacks.
                let modern = kernel_at_least(6, 0);
                f.multishot_accept = modern && !env_off("IOCP_NO_MULTISHOT_ACCEPT");
                f.buf_ring = modern;
                f.multishot_recv = modern && !env_off("IOCP_NO_MULTISHOT_RECV");
                return Ok((ring, f));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// Compares the running kernel's version (from `uname`).
pub(crate) fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = kernel_release();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let ma: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mi: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}
