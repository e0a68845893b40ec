//! The receive-buffer pool behind pooled receives.
//!
//! One pool per engine: `count` buffers of `size` bytes carved from one
//! allocation. A buffer is in one of three places: free in the engine (on
//! io_uring: published in the kernel's provided-buffer ring), lent to the
//! application inside a [`PooledBuf`], or on its way back. Dropping a
//! `PooledBuf` on any thread pushes its id onto `returned`; the engine that
//! owns the pool drains that list on its own thread (the buffer ring has one
//! producer) and, if a receive was starved for buffers, re-arms it.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::kit::lock;
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

pub(crate) struct PoolShared {
    /// The allocation, as the allocator returned it.
    alloc: *mut u8,
    /// The first buffer: `alloc` rounded up to a page.
    base: *mut u8,
    layout: std::alloc::Layout,
    pub(crate) buf_size: usize,
    pub(crate) count: usize,
    returned: Mutex<Vec<u16>>,
    /// Whether `returned` holds anything (set and cleared under its lock):
    /// the engine looks here first, so a turn with nothing given back
    /// takes no lock.
    any_returned: AtomicBool,
    in_use: AtomicUsize,
    pub(crate) in_kernel: AtomicUsize,
    /// Weak: the engine owns the pool, not the other way round.
    waker: Mutex<Option<Weak<dyn ReturnWaker>>>,
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
            returned: Mutex::new(Vec::with_capacity(count)),
            any_returned: AtomicBool::new(false),
            in_use: AtomicUsize::new(0),
            in_kernel: AtomicUsize::new(0),
            waker: Mutex::new(None),
        })
    }

    pub(crate) fn set_waker(&self, w: Weak<dyn ReturnWaker>) {
        *lock(&self.waker) = Some(w);
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
        if !self.any_returned.load(Ordering::SeqCst) {
            return;
        }
        let mut r = lock(&self.returned);
        out.append(&mut r);
        self.any_returned.store(false, Ordering::SeqCst);
    }

    /// Whether buffers are waiting to be taken back (checked by an engine
    /// before it sleeps, so a buffer dropped just then is not missed).
    #[cfg(target_os = "linux")]
    pub(crate) fn has_returned(&self) -> bool {
        // Stored (SeqCst) before the dropper looks whether the engine
        // sleeps: an engine that announced its sleep first is woken, one
        // that announced it after sees this.
        self.any_returned.load(Ordering::SeqCst)
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
        let first = {
            let mut r = lock(&self.pool.returned);
            r.push(self.bid);
            self.pool.any_returned.store(true, Ordering::SeqCst);
            r.len() == 1
        };
        if first {
            let w = lock(&self.pool.waker).as_ref().and_then(Weak::upgrade);
            if let Some(w) = w {
                w.buffers_returned();
            }
        }
    }
}
