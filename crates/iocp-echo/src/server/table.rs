//! The connection table: slots found by completion key, never by descriptor.
//!
//! A connection's completion key is `generation << 24 | slot index`. A slot's
//! generation changes every time it is freed, so a packet that names a
//! connection that is gone (and whose slot may hold a new one) is recognised
//! and dropped instead of being applied to the wrong connection. In practice
//! such packets do not arrive: a slot is freed only after every operation
//! started on it has delivered its final completion (the connection counts
//! its pending operations), which is the close protocol of the classic IOCP
//! bug list (B.9 #5).
//!
//! Each slot has its own mutex, so in the pool model two workers touch the
//! same lock only when they handle packets of the same connection. Slots are
//! allocated lazily in chunks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Slot indices have 24 bits.
pub(crate) const MAX_SLOTS: usize = (1 << 24) - 1;
const CHUNK: usize = 256;
const IDX_MASK: u64 = (1 << 24) - 1;

/// One slot: the connection (if any) and the generation its key carries.
pub(crate) struct Entry<T> {
    pub gen: u32,
    pub item: Option<Box<T>>,
}

type Chunk<T> = Box<[Mutex<Entry<T>>]>;

pub(crate) struct Table<T> {
    chunks: Vec<OnceLock<Chunk<T>>>,
    free: Mutex<Vec<u32>>,
    fresh: AtomicUsize,
    cap: usize,
    len: AtomicUsize,
}

pub(crate) fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds a key from a slot index and its generation.
pub(crate) fn key(idx: u32, gen: u32) -> u64 {
    (gen as u64) << 24 | idx as u64
}

/// Splits a key into slot index and generation.
pub(crate) fn split(key: u64) -> (u32, u32) {
    ((key & IDX_MASK) as u32, (key >> 24) as u32)
}

impl<T> Table<T> {
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.clamp(1, MAX_SLOTS);
        let n = cap.div_ceil(CHUNK);
        Table {
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
            free: Mutex::new(Vec::new()),
            fresh: AtomicUsize::new(0),
            cap,
            len: AtomicUsize::new(0),
        }
    }

    /// Live entries.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The slot at `idx`, if it was ever allocated.
    pub(crate) fn slot(&self, idx: u32) -> Option<&Mutex<Entry<T>>> {
        let i = idx as usize;
        let chunk = self.chunks.get(i / CHUNK)?.get()?;
        chunk.get(i % CHUNK)
    }

    fn slot_or_init(&self, idx: usize) -> &Mutex<Entry<T>> {
        let chunk = self.chunks[idx / CHUNK].get_or_init(|| {
            (0..CHUNK)
                .map(|_| Mutex::new(Entry { gen: 1, item: None }))
                .collect()
        });
        &chunk[idx % CHUNK]
    }

    /// Takes a free slot and returns it locked (empty). `None` when every
    /// slot is in use.
    pub(crate) fn alloc(&self) -> Option<(u32, MutexGuard<'_, Entry<T>>)> {
        let idx = match lock(&self.free).pop() {
            Some(i) => i as usize,
            None => {
                let i = self.fresh.fetch_add(1, Ordering::Relaxed);
                if i >= self.cap {
                    self.fresh.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                i
            }
        };
        let g = lock(self.slot_or_init(idx));
        debug_assert!(g.item.is_none());
        Some((idx as u32, g))
    }

    /// Marks a slot taken by [`Table::alloc`] as live (call after storing
    /// the item).
    pub(crate) fn commit(&self) {
        self.len.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives back a slot taken by `alloc` that was never committed.
    pub(crate) fn abandon(&self, idx: u32, mut g: MutexGuard<'_, Entry<T>>) {
        g.item = None;
        drop(g);
        lock(&self.free).push(idx);
    }

    /// Frees a live slot: takes its item, bumps its generation, returns the
    /// index to the free list. Returns the item and the live count left.
    pub(crate) fn free(
        &self,
        idx: u32,
        mut g: MutexGuard<'_, Entry<T>>,
    ) -> (Option<Box<T>>, usize) {
        let item = g.item.take();
        g.gen = g.gen.wrapping_add(1).max(1);
        drop(g);
        lock(&self.free).push(idx);
        let left = self.len.fetch_sub(1, Ordering::AcqRel) - 1;
        (item, left)
    }

    /// Every slot index ever allocated (for sweeps).
    pub(crate) fn allocated(&self) -> usize {
        self.fresh.load(Ordering::Relaxed).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_generations() {
        let t: Table<u32> = Table::new(2);
        let (i, mut g) = t.alloc().unwrap();
        let k = key(i, g.gen);
        g.item = Some(Box::new(7));
        drop(g);
        t.commit();
        assert_eq!(t.len(), 1);
        let (j, g2) = t.alloc().unwrap();
        t.abandon(j, g2);
        let (i2, gen) = split(k);
        assert_eq!(i2, i);
        let g = lock(t.slot(i).unwrap());
        assert_eq!(g.gen, gen);
        let (item, left) = t.free(i, g);
        assert_eq!(item.as_deref(), Some(&7));
        assert_eq!(left, 0);
        // The slot is reused under a new generation: the old key is stale.
        let (i3, g3) = t.alloc().unwrap();
        assert!(i3 == i || i3 == j);
        if i3 == i {
            assert_ne!(g3.gen, gen);
        }
        drop(g3);
        let _ = t.alloc();
        assert!(t.alloc().is_none(), "capacity 2");
    }
}
