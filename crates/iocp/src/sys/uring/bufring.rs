//! A ring-mapped provided-buffer ring (`IORING_REGISTER_PBUF_RING`, 5.19)
//! over the engine's pool. The engine is its only producer: it publishes a
//! buffer when it starts and whenever the application drops a `PooledBuf`.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use crate::pool::PoolShared;

pub(crate) struct BufRing {
    entries: *mut BufRingEntry,
    layout: std::alloc::Layout,
    mask: u16,
    tail: u16,
    pub(crate) bgid: u16,
    pub(crate) pool: Arc<PoolShared>,
}

impl BufRing {
    /// Registers a ring sized for the whole pool and publishes every buffer.
    pub(crate) fn new(ring: &IoUring, pool: Arc<PoolShared>, bgid: u16) -> io::Result<BufRing> {
        let n = pool.count.next_power_of_two();
        let n16 = u16::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let layout =
            std::alloc::Layout::from_size_align(n * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: non-zero size; zeroed memory is a valid (empty) ring.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut BufRingEntry;
        if entries.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `entries` points to `n` page-aligned entries that live until
        // this BufRing is dropped, which the engine does only after reaping
        // every request that could select from it (or never: it leaks the
        // ring when it cannot reap them; see `UringEngine::shutdown`).
        let r = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, n16, bgid, 0)
        };
        if let Err(e) = r {
            // SAFETY: allocated above with this layout and never shared.
            unsafe { std::alloc::dealloc(entries as *mut u8, layout) };
            return Err(e);
        }
        let mut br = BufRing {
            entries,
            layout,
            mask: n16.wrapping_sub(1),
            tail: 0,
            bgid,
            pool,
        };
        for bid in 0..br.pool.count as u16 {
            br.publish(bid);
        }
        br.commit();
        Ok(br)
    }

    /// Writes buffer `bid` at the private tail (visible after `commit`).
    pub(crate) fn publish(&mut self, bid: u16) {
        let i = (self.tail & self.mask) as usize;
        // SAFETY: `i` is within the `mask + 1` entries allocated; the kernel
        // only reads entries between its head and the published tail, and
        // this slot is past the published tail until `commit`.
        let e = unsafe { &mut *self.entries.add(i) };
        e.set_addr(self.pool.addr(bid) as u64);
        e.set_len(self.pool.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.pool.in_kernel.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the tail to the kernel (one release store per batch).
    pub(crate) fn commit(&self) {
        // SAFETY: the tail field lives in entry 0 of our live allocation and
        // is a naturally aligned u16 that the kernel reads atomically.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

// SAFETY: `entries` points into an allocation this ring owns alone (the
// kernel only reads it); moving the ring to another thread moves that
// ownership with it.
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with `layout`; the engine drops a BufRing
        // only once no request that selects from it is in the kernel.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) }
    }
}
