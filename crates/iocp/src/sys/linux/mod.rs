//! The Linux backend: the port is a user-space queue (`crate::queue`),
//! rebuilt from what Windows keeps in its `KQUEUE` (FIFO packets, a LIFO
//! stack of waiters, the concurrency count), because io_uring cannot be the
//! port itself: one CQE wakes every thread waiting in `io_uring_enter`, in
//! FIFO order, and a ring shared by several threads rules out
//! `SINGLE_ISSUER`/`DEFER_TASKRUN`.
//!
//! Engines feed the queue: each owns one io_uring (`sys::uring`) or one
//! epoll set (`sys::epoll`) and turns operations into completions, on its
//! own thread, or — with `PortBuilder::inline(true)` — inside the owner
//! thread's `get`. `port` implements the backend contract (`SysPort`,
//! `SysHandle` in `sys/contract.rs`) over them; `engine` puts both kinds behind one type
//! and chooses between them; `files` says which descriptors are files and
//! which are pipes.

mod driven;
mod engine;
mod files;
mod port;

pub(crate) use files::{pipe, prepare_open};

pub(crate) use port::{Handle, Port};
