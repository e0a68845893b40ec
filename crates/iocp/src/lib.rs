//! # completion-port — the Windows I/O completion port model, in safe Rust
//!
//! A [`Port`] is a queue of completion packets. Sockets are associated with
//! it under a *completion key*; operations started on them (accept, connect,
//! receive, send, UDP) own their buffers until they complete, and each
//! completion is queued as a packet. Any number of worker threads wait in
//! [`Port::get`] (`GetQueuedCompletionStatus`); each packet wakes exactly one
//! of them, the most recent waiter first, and no more threads run at once
//! than the port's concurrency limit. [`Port::post`] queues packets of the
//! application's own (`PostQueuedCompletionStatus`).
//!
//! On Linux the queue lives in user space and is fed by engines: io_uring
//! where available, epoll otherwise (see [`Backend`]). On Windows the port is
//! the kernel's own completion port.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use completion_port::{Port, OpKind};
//!
//! # fn main() -> std::io::Result<()> {
//! let port = Port::new(0)?;                                 // CreateIoCompletionPort
//! let listener = TcpListener::bind("127.0.0.1:7007")?;
//! let lh = port.associate(listener, 0)?;                    // associate, key 0
//! port.accept(&lh, 1)?;                                     // AcceptEx, token 1
//! let mut c = port.get(None).expect("a packet");            // GetQueuedCompletionStatus
//! assert_eq!(c.kind, OpKind::Accept);
//! let (sock, _peer) = c.take_accepted().expect("accepted socket");
//! let h = port.associate(sock, 7)?;
//! port.recv(&h, Vec::with_capacity(4096), 2)?;              // WSARecv
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

// No module uses one that uses it back: ARCHITECTURE.md lists them in
// dependency order, and `ci/modules.py` checks it.
mod addr;
mod batch;
mod buf;
mod config;
mod error;
pub mod fs;
mod handle;
mod kit;
mod op;
mod ops;
mod pool;
mod port;
#[cfg(loom)]
pub mod queue;
#[cfg(all(not(loom), target_os = "linux"))]
mod queue;
mod running;
mod stats;
mod sys;
mod timers;

pub use addr::Addr;
pub use buf::{AlignedBuf, Buf, IoBuf};
#[cfg(target_os = "linux")]
pub use config::UringFeatures;
pub use config::{Backend, BackendInfo};
pub use error::{aborted, is_aborted, GetError, SubmitError};
pub use handle::{FileHandle, Handle, PipeHandle};
pub use op::{Completion, OpId, OpKind, OpOptions};
pub use pool::{PooledBuf, MAX_POOL_BUFFERS};
pub use port::{BlockingGuard, Port, PortBuilder};
pub use stats::{EngineStats, PoolStats, PortStats};

/// The environment variables that switch io_uring fast-path features off
/// (so their fallbacks can be tested on a kernel that has them), with what
/// each one does.
#[cfg(target_os = "linux")]
pub const URING_ENV_SWITCHES: &[(&str, &str)] = sys::uring::ENV_SWITCHES;
