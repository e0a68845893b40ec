//! What a port lets tests and operators see of its state: [`PortStats`],
//! [`EngineStats`], [`PoolStats`]. Each is a snapshot, read with
//! [`Port::stats`](crate::Port::stats),
//! [`Port::engine_stats`](crate::Port::engine_stats) and
//! [`Port::pool_stats`](crate::Port::pool_stats); new counters may be added,
//! so they are built only by the library.

/// The port's own counters: who waits, who runs, what is queued.
///
/// On Windows the kernel keeps the queue and does the scheduling; the
/// library counts what it sees of it: `waiting` counts threads inside
/// `GetQueuedCompletionStatus(Ex)` called through `get`/`get_many`;
/// `running` counts threads from a `get` that returned a packet until their
/// next `get` (or exit, or [`Port::blocking`](crate::Port::blocking)) — the
/// kernel's own count also drops while such a thread blocks elsewhere,
/// which user space cannot see; `queued` is the kernel queue's depth
/// (`NtQueryIoCompletion`), which includes the library's internal packets
/// (a zero-byte receive's readiness, a close sentinel); every operation
/// completion counts as a hand-off (the kernel queues it, as a Linux engine
/// thread does — so also with `inline(true)`), and so do timer packets and
/// posts from another thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortStats {
    /// Threads blocked in `get`/`get_many`.
    pub waiting: usize,
    /// Threads counted as running against the concurrency limit.
    pub running: usize,
    /// Packets queued and not yet taken.
    pub queued: usize,
    /// Packets taken by a thread other than the one that queued them.
    pub handoffs: u64,
    /// Packets delivered in total.
    pub delivered: u64,
}

/// What a port's engines did (summed over engines). On Windows the kernel
/// is the engine: these count what the library sees of it, and
/// `cq_overflows` and `eagain_retries` are always 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Completions the engines produced.
    pub completions: u64,
    /// Kernel entries (`io_uring_enter`, `epoll_wait`): completions ÷ enters
    /// is the batching factor.
    pub enters: u64,
    /// Pooled receives that found the pool empty (ENOBUFS) and waited.
    pub starved: u64,
    /// Times the kernel held completions back because the CQ was full.
    pub cq_overflows: u64,
    /// Sends and receives the kernel ended with a spurious EAGAIN that the
    /// engine re-issued (polling first) without losing progress.
    pub eagain_retries: u64,
    /// Timers pending: one per live operation with a deadline, one per
    /// [`post_after`](crate::Port::post_after) packet not yet queued, and one
    /// per standing accept pausing after running out of sockets. A deadline
    /// leaves with its operation (completed, cancelled or timed out), so this
    /// is bounded by the operations alive, not by how many have run. (A gauge,
    /// not a counter: on Linux each engine publishes it at the end of every
    /// turn.)
    pub timers: u64,
    /// File operations waiting for a thread of the epoll backend's file
    /// pool (a gauge; see [`PortBuilder::file_threads`](crate::PortBuilder::file_threads)).
    /// Always 0 on io_uring and Windows.
    pub file_queue: u64,
    /// Threads the epoll backend's file pool runs (a gauge; at most
    /// `file_threads` per engine). Always 0 on io_uring and Windows.
    pub file_threads: u64,
}

/// Counters of the receive-buffer pools behind pooled receives (summed
/// over a port's engines on Linux; the port's one pool on Windows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Buffers in the pool.
    pub total: usize,
    /// Bytes per buffer.
    pub buf_size: usize,
    /// Buffers lent to the application (inside `PooledBuf`s).
    pub in_use: usize,
    /// Buffers the engine has handed to the kernel (free for it to fill).
    /// Always 0 on Windows: a zero-byte receive holds no buffer.
    pub in_kernel: usize,
}
