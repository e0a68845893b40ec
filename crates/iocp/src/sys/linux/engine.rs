//! One engine of either Linux kind behind one type, and the choice between
//! them: `Auto` tries io_uring and falls back to epoll when the kernel (or a
//! sandbox) refuses io_uring, saying why.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Backend, BackendInfo, Config};
// The engines' run and turn.
use crate::kit::run::{take_in, Drive as _, Engine as _, TimerTarget as _};
use crate::op::Completion;
use crate::queue::Queue;
pub(crate) use crate::sys::common::CannotDrive;
use crate::sys::common::{apply_command, Cmd, EngineCounters, EngineShared, LinuxEngine as _};
use crate::sys::epoll::EpollEngine;
use crate::sys::uring::{RingMode, UringEngine};

/// One engine of either kind.
pub(crate) enum Engine {
    Uring(Box<UringEngine>),
    Epoll(Box<EpollEngine>),
}

/// Errors from io_uring set-up that mean "use epoll instead".
fn uring_unavailable(e: &io::Error) -> bool {
    // A kernel that cannot have its waiters drive a ring still has
    // io_uring: the port gets an engine thread instead.
    !CannotDrive::is(e)
        && (matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS)
                | Some(libc::EPERM)
                | Some(libc::EACCES)
                | Some(libc::EINVAL)
                | Some(libc::ENOMEM)
        ) || e.kind() == io::ErrorKind::Unsupported)
}

fn uring_error_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if !sysctl.is_empty() && sysctl != "0" {
                format!("io_uring_setup failed with EPERM: kernel.io_uring_disabled = {sysctl}")
            } else {
                "io_uring_setup failed with EPERM: blocked by a seccomp filter (as in Docker's default profile) or by policy".to_string()
            }
        }
        Some(libc::ENOSYS) => "io_uring_setup failed with ENOSYS: the kernel (or sandbox, e.g. gVisor) has no io_uring".to_string(),
        _ => format!("io_uring unusable: {e}"),
    }
}

impl Engine {
    /// Builds an engine of the backend `want` (`Auto`: io_uring, else
    /// epoll), on the calling thread. `mode` says who will drive an io_uring
    /// engine; `queue` is where an engine that runs on a thread hands its
    /// completions (`None`: whoever drives it takes them — a driven port's
    /// driver, or an inline port's owner).
    pub(crate) fn create(
        want: Backend,
        why: String,
        shared: Arc<EngineShared>,
        queue: Option<Queue<Completion>>,
        cfg: &Config,
        mode: RingMode,
    ) -> io::Result<(Engine, BackendInfo)> {
        match want {
            Backend::Uring => {
                let e = UringEngine::new(shared, queue, cfg, mode).map_err(|e| {
                    if CannotDrive::is(&e) {
                        return e;
                    }
                    io::Error::new(
                        e.kind(),
                        format!("backend uring was requested but {}", uring_error_reason(&e)),
                    )
                })?;
                let f = e.features();
                Ok((
                    Engine::Uring(Box::new(e)),
                    BackendInfo {
                        backend: Backend::Uring,
                        reason: why,
                        uring: Some(f),
                        driven: mode != RingMode::Owned,
                    },
                ))
            }
            Backend::Epoll => {
                let e = EpollEngine::new(shared, queue, cfg)?;
                Ok((
                    Engine::Epoll(Box::new(e)),
                    BackendInfo {
                        backend: Backend::Epoll,
                        reason: why,
                        uring: None,
                        driven: mode != RingMode::Owned,
                    },
                ))
            }
            Backend::Iocp => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "backend iocp is only available on Windows (this build has: uring, epoll)",
            )),
            Backend::Auto => match UringEngine::new(shared.clone(), queue.clone(), cfg, mode) {
                Ok(e) => {
                    let f = e.features();
                    let info = BackendInfo {
                        backend: Backend::Uring,
                        reason: if why.is_empty() {
                            "auto: io_uring works".into()
                        } else {
                            why
                        },
                        uring: Some(f),
                        driven: mode != RingMode::Owned,
                    };
                    Ok((Engine::Uring(Box::new(e)), info))
                }
                Err(err) if uring_unavailable(&err) => {
                    let reason = format!(
                        "auto: fell back to epoll because {}",
                        uring_error_reason(&err)
                    );
                    tracing::info!("{reason}");
                    let e = EpollEngine::new(shared, queue, cfg)?;
                    Ok((
                        Engine::Epoll(Box::new(e)),
                        BackendInfo {
                            backend: Backend::Epoll,
                            reason,
                            uring: None,
                            driven: mode != RingMode::Owned,
                        },
                    ))
                }
                Err(err) => Err(err),
            },
        }
    }

    pub(crate) fn run(self) {
        match self {
            Engine::Uring(e) => e.run(),
            Engine::Epoll(e) => e.run(),
        }
    }

    /// One turn (see [`crate::kit::run::Drive::turn_at`]): `now`, if
    /// given, is the clock read just before, which the turn uses instead of
    /// a reading of its own.
    pub(crate) fn turn(&mut self, now: Option<Instant>, timeout: Option<Duration>, block: bool) {
        match self {
            Engine::Uring(e) => e.turn_at(now, timeout, block),
            Engine::Epoll(e) => e.turn_at(now, timeout, block),
        }
    }

    /// Carries out `cmd` now, between turns (an inline port's owner, for
    /// a command of its own): what it completes on the spot waits in
    /// [`Engine::out`] for the next turn, counted as the turn's would be;
    /// what it hands the kernel goes in with the next turn's entry.
    pub(crate) fn command(&mut self, cmd: Cmd) {
        let before = self.made();
        match self {
            Engine::Uring(e) => apply_command(&mut **e, cmd),
            Engine::Epoll(e) => apply_command(&mut **e, cmd),
        }
        let made = self.made().saturating_sub(before) as u64;
        if made > 0 {
            let c = match self {
                Engine::Uring(e) => &e.core().shared.counters,
                Engine::Epoll(e) => &e.core().shared.counters,
            };
            EngineCounters::bump(&c.completions, made);
        }
    }

    /// The first half of a turn whose wait happens without the engine (see
    /// [`crate::kit::run::Drive::turn_begin`]).
    pub(crate) fn turn_begin(&mut self, timeout: Option<Duration>) -> Option<Option<Duration>> {
        match self {
            Engine::Uring(e) => e.turn_begin(timeout),
            Engine::Epoll(e) => e.turn_begin(timeout),
        }
    }

    /// The second half (see [`crate::kit::run::Drive::turn_end`]).
    pub(crate) fn turn_end(&mut self, waited: bool, before: usize) {
        match self {
            Engine::Uring(e) => e.turn_end(waited, before),
            Engine::Epoll(e) => e.turn_end(waited, before),
        }
    }

    /// Takes in what arrived and hands it to the kernel, without waiting
    /// or taking completions (an io_uring engine submits its SQEs; an epoll
    /// engine makes its attempts, which complete on the spot).
    pub(crate) fn submit_only(&mut self) {
        match self {
            Engine::Uring(e) => {
                take_in(&mut **e);
                e.submit_sq();
            }
            Engine::Epoll(e) => take_in(&mut **e),
        }
    }

    /// Completions made and not yet taken.
    pub(crate) fn out(&mut self) -> &mut Vec<Completion> {
        match self {
            Engine::Uring(e) => &mut e.core().out,
            Engine::Epoll(e) => &mut e.core().out,
        }
    }

    /// How many completions are waiting in `out`.
    pub(crate) fn made(&self) -> usize {
        match self {
            Engine::Uring(e) => e.made(),
            Engine::Epoll(e) => e.made(),
        }
    }

    /// When the earliest timer is due.
    pub(crate) fn next_timer(&mut self) -> Option<Instant> {
        match self {
            Engine::Uring(e) => e.timers().next(),
            Engine::Epoll(e) => e.timers().next(),
        }
    }

    /// Hands over what reaping queued (io_uring; see
    /// [`UringEngine::flush_sq`]).
    pub(crate) fn flush_sq(&mut self) {
        if let Engine::Uring(e) = self {
            e.flush_sq();
        }
    }

    /// Stops on the owning thread: aborts everything, waits for the
    /// kernel to let go, releases buffers and descriptors.
    pub(crate) fn shutdown(&mut self) {
        match self {
            Engine::Uring(e) => e.shutdown(),
            Engine::Epoll(e) => e.shutdown(),
        }
    }

    /// Stops from a thread that does not own the engine: an io_uring
    /// engine submits nothing from here, so buffers the kernel may still
    /// hold are leaked rather than freed; an epoll engine holds nothing
    /// in the kernel and shuts down as usual.
    pub(crate) fn abandon(self) {
        match self {
            Engine::Uring(mut e) => e.abandon(),
            Engine::Epoll(mut e) => e.shutdown(),
        }
    }
}
