//! Where a `get_many` appends its packets, and how many it takes at the
//! most (at least 1): the front hands one to the backend's port, and the
//! Linux port hands it on to its queue. A leaf, so that the queue (below the
//! backends) and the backend contract (above it) can both name it.

/// `out` receives the packets; `max` bounds how many one call takes.
pub struct Batch<'a, T> {
    /// Where the packets go (appended; what is there stays).
    pub out: &'a mut Vec<T>,
    /// The most packets one call takes (at least 1).
    pub max: usize,
}
