//! The platform backends, and the contract between them and the front.
//!
//! The public [`Port`](crate::Port) and [`Handle`](crate::Handle) are
//! written once, in platform-free code (`port.rs`, `handle.rs`, `ops.rs`).
//! Each owns one backend object and calls it through the contract's two
//! traits (`contract.rs`, each method documented there); every backend
//! provides the same items:
//!
//! | item | what |
//! |---|---|
//! | `sys::Port: SysPort` | a port. `start(Config, Request) -> (Port, BackendInfo)` builds it (a failed start leaves nothing behind); `id`, `concurrency`; `associate(socket, key) -> Handle`, `associate_os(file or pipe, kind, key) -> (Handle, direct I/O alignment)` (refuses what is not of that kind, naming it);  `start_op(&Handle, OpData, OpOptions)`; `post`, `post_after(Instant, …)`; `get`, `get_many`; `step_out` (for `blocking()`); `stats`, `engine_stats`, `pool_stats`; `close` (idempotent), `is_closed` |
//! | `sys::Handle: SysHandle` | a socket, file or pipe associated with a port (`sys::Port`'s `Handle` type): `id`, `key`, `port_id`, `cancel`, `close` (idempotent), `is_closed`, `with_socket` |
//!
//! | `sys::prepare_open(&mut OpenOptions, direct)` | the flags a file must be opened with to be associated (Windows: `FILE_FLAG_OVERLAPPED`), and for direct I/O (`O_DIRECT`, `FILE_FLAG_NO_BUFFERING`) |
//!
//! The front does what is the same everywhere — the checks before an
//! operation starts (the handle belongs to this port, neither is closed),
//! turning a timer's delay into an instant, closing a port or a handle when
//! its last clone drops, the operations' `OpData`, the documentation — and
//! the backend does the rest. Backends:
//!
//! * **Linux** (`linux`): the port is a user-space queue
//!   (`crate::queue`) fed by engines — `uring` (io_uring) or `epoll`,
//!   which share `common` — on engine threads, or driven from the owner
//!   thread's `get` (`inline`).
//! * **Windows** (`windows`): the port is the kernel's own completion port.
//!
//! The `running` statistic (and with it the concurrency count of the Linux
//! queue) is kept with the per-thread record in [`crate::running`] on every
//! backend, so `get`, `blocking()` and thread exit count the same way.

#[cfg(target_os = "linux")]
pub(crate) mod common;
mod contract;
#[cfg(target_os = "linux")]
pub(crate) mod epoll;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
#[cfg(windows)]
pub(crate) mod windows;

pub use contract::OsHandle;
pub(crate) use contract::{Batch, DirectIo, Kind, SysHandle, SysPort};
#[cfg(target_os = "linux")]
pub(crate) use linux::{pipe, prepare_open, Handle, Port};
#[cfg(windows)]
pub(crate) use windows::files::{create_named_pipe, pipe, prepare_open};
#[cfg(windows)]
pub(crate) use windows::port::{Handle, Port};
