//! Pooled receives waiting for a pool buffer, oldest first.
//!
//! An engine parks a pooled receive that found no buffer (`Park::Starved`)
//! and resumes the oldest ones as buffers come back, no more of them than
//! there are buffers: resuming them all on every return would make all but
//! a few starve again at once. An entry names where the operation lives (a
//! Linux engine's slot, the Windows engine's handle) and the operation it
//! held; an entry that has moved on (the operation ended, or the slot holds
//! another) is skipped when met, never searched for.

use std::collections::VecDeque;

use super::phase::{Park, Phase};

/// The starved receives of one engine: (where, operation id), oldest first.
pub(crate) struct Starved<S = usize>(VecDeque<(S, u64)>);

impl<S> Default for Starved<S> {
    fn default() -> Self {
        Starved(VecDeque::new())
    }
}

impl<S> Starved<S> {
    /// Operation `op`, found at `at`, just parked as starved.
    pub(crate) fn push(&mut self, at: S, op: u64) {
        self.0.push_back((at, op));
    }

    // The Windows engine needs neither: its queue is looked at only when a
    // buffer is free, and goes with its port.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The oldest entry that `live` says is still starved, taken off the
    /// queue. Stale entries before it go.
    pub(crate) fn pop_first(&mut self, live: impl Fn(&S, u64) -> bool) -> Option<(S, u64)> {
        while let Some((at, op)) = self.0.pop_front() {
            if live(&at, op) {
                return Some((at, op));
            }
        }
        None
    }
}

// The Windows engine keeps no slots.
#[cfg_attr(windows, allow(dead_code))]
impl Starved<usize> {
    /// The oldest slot still parked as starved with the operation it was
    /// queued with, taken off the queue; `slot` gives a slot's operation id
    /// and phase (`None`: the slot is empty). Stale entries before it go.
    pub(crate) fn pop_live(
        &mut self,
        slot: impl Fn(usize) -> Option<(u64, Phase)>,
    ) -> Option<usize> {
        let starved = |&i: &usize, op| slot(i) == Some((op, Phase::Parked(Park::Starved)));
        self.pop_first(starved).map(|(i, _)| i)
    }
}
