//! The receive-buffer pool behind pooled receives.
//!
//! One pool per engine: `count` buffers of `size` bytes carved from one
//! allocation. A buffer is in one of three places: free in the engine (on
//! io_uring: published in the kernel's provided-buffer ring), lent to the
//! application inside a [`PooledBuf`], or on its way back. Dropping a
//! `PooledBuf` on any thread pushes its id onto the returned list; the
//! engine that owns the pool takes the whole list on its own thread (the
//! buffer ring has one producer) and, if a receive was starved for buffers,
//! re-arms it.
//!
//! The returned list takes no lock: it is a stack linked through one
//! `next` entry per buffer, its head an atomic. A dropper links its buffer
//! to the head it saw and swings the head to it with one compare-and-swap;
//! the engine takes every buffer at once by swapping the head for "none".
//! Nobody pops single entries, so a head that went away and came back
//! between a dropper's read and its swap (ABA) does no harm: the buffer
//! is linked to the list as it is then. A buffer's `next` is written only
//! while it is being given back, and read only by the engine after it took
//! the list, before the buffer can be lent again.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crate::stats::PoolStats;

/// Something to poke when a buffer comes back (the owning engine).
pub(crate) trait ReturnWaker: Send + Sync {
    fn buffers_returned(&self);
}

/// The most pool buffers a port's engine can have
/// ([`PortBuilder::pool_buffers`](crate::PortBuilder::pool_buffers) clamps
/// to it). A buffer's id is 16 bits, and io_uring takes a provided-buffer
/// ring of a power of two below 65536 entries: 32768 is the largest.
pub const MAX_POOL_BUFFERS: usize = 32768;

/// The pool's buffers start on a page boundary.
const PAGE: usize = 4096;

/// The end of the returned list (no buffer has this id: ids are below
/// [`MAX_POOL_BUFFERS`]).
const NONE: u16 = u16::MAX;

pub(crate) struct PoolShared {
    /// The allocation, as the allocator returned it.
    alloc: *mut u8,
    /// The first buffer: `alloc` rounded up to a page.
    base: *mut u8,
    layout: std::alloc::Layout,
    pub(crate) buf_size: usize,
    pub(crate) count: usize,
    /// The buffer given back last (the head of the returned list), or
    /// `NONE`.
    returned: AtomicU16,
    /// For each buffer on the returned list, the one given back before it.
    next: Box<[AtomicU16]>,
    in_use: AtomicUsize,
    pub(crate) in_kernel: AtomicUsize,
    /// Weak: the engine owns the pool, not the other way round.
    waker: OnceLock<Weak<dyn ReturnWaker>>,
}

// SAFETY: `base` points to an allocation owned by this struct for its whole
// life; each buffer region is accessed by exactly one owner at a time (the
// kernel while published, the `PooledBuf` while lent), which the ownership
// protocol in this module and the engines enforces.
unsafe impl Send for PoolShared {}
// SAFETY: see `Send`; shared access only reads `base`/sizes and goes through
// the mutexes and atomics for everything mutable.
unsafe impl Sync for PoolShared {}

impl PoolShared {
    pub(crate) fn new(count: usize, buf_size: usize) -> Arc<PoolShared> {
        assert!(
            (1..=MAX_POOL_BUFFERS).contains(&count),
            "pool buffers: 1..={MAX_POOL_BUFFERS}"
        );
        assert!(buf_size > 0, "pool buffer size must be > 0");
        // Page-aligned buffers, from an allocation aligned only as `calloc`
        // aligns (and a page larger, to round the start up): so the system
        // allocator takes it from `calloc`, which maps fresh zero pages for
        // a large size instead of writing zeros. Pages the kernel never
        // writes then cost no memory: a pool sized for thousands of busy
        // connections stays cheap while they idle. Zeroed so tools like
        // valgrind never see the kernel's writes as uninitialised reads.
        let layout =
            std::alloc::Layout::from_size_align(count * buf_size + PAGE, 16).expect("pool layout");
        // SAFETY: the layout has a non-zero size.
        let alloc = unsafe { std::alloc::alloc_zeroed(layout) };
        if alloc.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: the offset is below PAGE, so `base` and the `count *
        // buf_size` bytes after it stay inside the allocation.
        let base = unsafe { alloc.add(alloc.align_offset(PAGE)) };
        Arc::new(PoolShared {
            alloc,
            base,
            layout,
            buf_size,
            count,
            returned: AtomicU16::new(NONE),
            next: (0..count).map(|_| AtomicU16::new(NONE)).collect(),
            in_use: AtomicUsize::new(0),
            in_kernel: AtomicUsize::new(0),
            waker: OnceLock::new(),
        })
    }

    /// Sets what to poke when buffers come back (once: the engine that
    /// owns the pool; later calls are ignored).
    pub(crate) fn set_waker(&self, w: Weak<dyn ReturnWaker>) {
        let _ = self.waker.set(w);
    }

    /// The address of buffer `bid`.
    pub(crate) fn addr(&self, bid: u16) -> *mut u8 {
        assert!((bid as usize) < self.count);
        // SAFETY: bid < count, so the offset stays inside the allocation.
        unsafe { self.base.add(bid as usize * self.buf_size) }
    }

    /// Lends buffer `bid`, holding `len` bytes the kernel (or a read) wrote,
    /// to the application.
    ///
    /// # Safety
    /// The caller must own buffer `bid` (it is in no ring and no other
    /// `PooledBuf`), and its first `len` bytes must be written.
    pub(crate) unsafe fn lend(self: &Arc<Self>, bid: u16, len: usize) -> PooledBuf {
        debug_assert!(len <= self.buf_size);
        self.in_use.fetch_add(1, Ordering::Relaxed);
        PooledBuf {
            pool: self.clone(),
            bid,
            len,
        }
    }

    /// Takes the ids of buffers dropped since the last call.
    pub(crate) fn take_returned(&self, out: &mut Vec<u16>) {
        // A load first: a turn with nothing given back writes nothing.
        if self.returned.load(Ordering::SeqCst) == NONE {
            return;
        }
        // Acquire (in SeqCst): every dropper's swap of the head is a
        // read-modify-write after the one before it, so this sees each
        // one's `next` link.
        let mut b = self.returned.swap(NONE, Ordering::SeqCst);
        while b != NONE {
            out.push(b);
            b = self.next[b as usize].load(Ordering::Relaxed);
        }
    }

    /// Puts `bid` on the returned list; whether the list was empty.
    fn give_back(&self, bid: u16) -> bool {
        let mut head = self.returned.load(Ordering::Relaxed);
        loop {
            self.next[bid as usize].store(head, Ordering::Relaxed);
            // SeqCst: before the dropper looks whether the engine sleeps
            // (see `has_returned`); Release for the link above.
            match self.returned.compare_exchange_weak(
                head,
                bid,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return head == NONE,
                Err(h) => head = h,
            }
        }
    }

    /// Whether buffers are waiting to be taken back (checked by an engine
    /// before it sleeps, so a buffer dropped just then is not missed).
    #[cfg(target_os = "linux")]
    pub(crate) fn has_returned(&self) -> bool {
        // Swapped (SeqCst) before the dropper looks whether the engine
        // sleeps: an engine that announced its sleep first is woken, one
        // that announced it after sees this.
        self.returned.load(Ordering::SeqCst) != NONE
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            total: self.count,
            buf_size: self.buf_size,
            in_use: self.in_use.load(Ordering::Relaxed),
            in_kernel: self.in_kernel.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every PooledBuf holds
        // an Arc, and an engine drops its Arcs only after it reaped every
        // request that could write a pool buffer (or leaks them when it
        // cannot), so no one can reach the memory any more.
        unsafe { std::alloc::dealloc(self.alloc, self.layout) }
    }
}

/// A received chunk in a buffer lent by the library's pool. It derefs to the
/// bytes received; dropping it (on any thread) gives the buffer back.
pub struct PooledBuf {
    pool: Arc<PoolShared>,
    bid: u16,
    len: usize,
}

impl PooledBuf {
    /// The buffer's id within its pool.
    pub fn id(&self) -> u16 {
        self.bid
    }

    /// How many buffers of this buffer's pool are lent to the application
    /// now, this one included: [`PoolStats::in_use`] of its engine's pool,
    /// read straight from the pool (one load) rather than summed over the
    /// port's engines as [`Port::pool_stats`](crate::Port::pool_stats)
    /// does. Cheap enough to ask for every chunk received.
    pub fn pool_in_use(&self) -> usize {
        self.pool.in_use.load(Ordering::Relaxed)
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: while this PooledBuf exists it is the only owner of buffer
        // `bid` (the engine does not republish it until it comes back), and
        // `len` bytes were written before it was lent.
        unsafe { std::slice::from_raw_parts(self.pool.addr(self.bid), self.len) }
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PooledBuf(#{}, {} bytes)", self.bid, self.len)
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        // Only the first buffer on an empty list pokes the engine: the
        // engine takes the whole list at once.
        if self.pool.give_back(self.bid) {
            if let Some(w) = self.pool.waker.get().and_then(Weak::upgrade) {
                w.buffers_returned();
            }
        }
    }
}
