//! The connection table: slots found by completion key, never by descriptor.
//!
//! A connection's completion key names its slot index and the slot's
//! generation ([`Route::Conn`](super::route::Route::Conn)). A slot's
//! generation changes every time it is freed, so a packet that names a
//! connection that is gone (and whose slot may hold a new one) is recognised
//! and dropped instead of being applied to the wrong connection. In practice
//! such packets do not arrive: a slot is freed only after every operation
//! started on it has delivered its final completion (the connection counts
//! its pending operations), so no completion can name a freed slot.
//!
//! Each slot has its own mutex, so in the pool model two workers touch the
//! same lock only when they handle packets of the same connection. Slots are
//! allocated lazily in chunks.
//!
//! The live count and a *sealed* bit share one atomic word. [`Table::seal`]
//! (the drain) sets the bit and reads the count in one step, and every
//! allocation reserves its place in the count only while the bit is clear,
//! so the count sealed is exactly the set of connections served during the
//! drain: an admission racing the seal on another worker is either counted
//! or refused, never served uncounted. Every free says whether it happened
//! after the seal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Slot indices fit the bits a completion key gives them.
pub(crate) const MAX_SLOTS: usize = (1 << super::route::IDX_BITS) - 1;
const CHUNK: usize = 256;
/// The top bit of the live count: sealed, no more allocations.
const SEALED: usize = 1 << (usize::BITS - 1);

/// Why [`Table::alloc`] gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every slot is in use.
    Full,
    /// The table is sealed (draining).
    Sealed,
}

/// What freeing a slot left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Left {
    /// Live entries left.
    pub live: usize,
    /// The table was sealed when the slot was freed.
    pub sealed: bool,
}

/// One slot: the connection (if any) and the generation its key carries
/// (never 0).
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
    /// Live (reserved) entries, plus [`SEALED`].
    live: AtomicUsize,
}

pub(crate) fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            live: AtomicUsize::new(0),
        }
    }

    /// Live entries (allocated and not yet freed or abandoned).
    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Acquire) & !SEALED
    }

    /// Refuses every later allocation; returns the live entries at that
    /// moment. Idempotent.
    pub(crate) fn seal(&self) -> usize {
        self.live.fetch_or(SEALED, Ordering::AcqRel) & !SEALED
    }

    /// Counts one entry fewer; says what is left.
    fn release(&self) -> Left {
        let before = self.live.fetch_sub(1, Ordering::AcqRel);
        Left {
            live: (before & !SEALED) - 1,
            sealed: before & SEALED != 0,
        }
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

    /// Takes a free slot, counts it live and returns it locked (empty).
    /// Refused when every slot is in use, or once the table is sealed.
    pub(crate) fn alloc(&self) -> Result<(u32, MutexGuard<'_, Entry<T>>), Refused> {
        let idx = match lock(&self.free).pop() {
            Some(i) => i as usize,
            None => {
                let i = self.fresh.fetch_add(1, Ordering::Relaxed);
                if i >= self.cap {
                    self.fresh.fetch_sub(1, Ordering::Relaxed);
                    return Err(Refused::Full);
                }
                i
            }
        };
        let reserved = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n & SEALED == 0).then_some(n + 1)
            });
        if reserved.is_err() {
            lock(&self.free).push(idx as u32);
            return Err(Refused::Sealed);
        }
        let g = lock(self.slot_or_init(idx));
        debug_assert!(g.item.is_none());
        Ok((idx as u32, g))
    }

    /// Gives back a slot taken by `alloc` whose item never went live.
    pub(crate) fn abandon(&self, idx: u32, mut g: MutexGuard<'_, Entry<T>>) -> Left {
        g.item = None;
        drop(g);
        lock(&self.free).push(idx);
        self.release()
    }

    /// Frees a live slot: takes its item, bumps its generation, returns the
    /// index to the free list. Returns the item and what is left.
    pub(crate) fn free(&self, idx: u32, mut g: MutexGuard<'_, Entry<T>>) -> (Option<Box<T>>, Left) {
        let item = g.item.take();
        g.gen = g.gen.wrapping_add(1).max(1);
        drop(g);
        lock(&self.free).push(idx);
        (item, self.release())
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
        let gen = g.gen;
        assert_ne!(gen, 0);
        g.item = Some(Box::new(7));
        drop(g);
        assert_eq!(t.len(), 1);
        let (j, g2) = t.alloc().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.abandon(j, g2),
            Left {
                live: 1,
                sealed: false
            }
        );
        let g = lock(t.slot(i).unwrap());
        assert_eq!(g.gen, gen);
        let (item, left) = t.free(i, g);
        assert_eq!(item.as_deref(), Some(&7));
        assert_eq!(left.live, 0);
        // The slot is reused under a new generation: the old key is stale.
        let (i3, g3) = t.alloc().unwrap();
        assert!(i3 == i || i3 == j);
        if i3 == i {
            assert_ne!(g3.gen, gen);
        }
        drop(g3);
        let _ = t.alloc();
        assert_eq!(t.alloc().err(), Some(Refused::Full), "capacity 2");
    }

    /// The seal counts every slot allocated before it (even one whose item
    /// is not stored yet) and refuses every allocation after it; frees and
    /// abandons after it say so.
    #[test]
    fn seal_counts_what_it_serves() {
        let t: Table<u32> = Table::new(8);
        let (a, mut ga) = t.alloc().unwrap();
        ga.item = Some(Box::new(1));
        drop(ga);
        // Allocated, item not stored yet (another worker mid-admission).
        let (b, gb) = t.alloc().unwrap();
        let (c, mut gc) = t.alloc().unwrap();
        gc.item = Some(Box::new(3));
        drop(gc);
        let (_, left) = t.free(c, lock(t.slot(c).unwrap()));
        assert!(!left.sealed);
        assert_eq!(t.seal(), 2);
        assert_eq!(t.seal(), 2, "idempotent");
        assert_eq!(t.len(), 2);
        assert_eq!(t.alloc().err(), Some(Refused::Sealed));
        assert_eq!(t.len(), 2, "a refused allocation is not counted");
        assert_eq!(
            t.abandon(b, gb),
            Left {
                live: 1,
                sealed: true
            }
        );
        let (item, left) = t.free(a, lock(t.slot(a).unwrap()));
        assert_eq!(item.as_deref(), Some(&1));
        assert_eq!(
            left,
            Left {
                live: 0,
                sealed: true
            }
        );
        assert_eq!(t.alloc().err(), Some(Refused::Sealed));
    }
}
