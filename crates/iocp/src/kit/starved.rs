//! Pooled receives waiting for a pool buffer, oldest first.
//!
//! An engine parks a pooled receive that found no buffer (`Park::Starved`)
//! and resumes the oldest ones as buffers come back, no more of them than
//! there are buffers: resuming them all on every return would make all but
//! a few starve again at once. An entry names a slot and the operation it
//! held; an entry whose slot has moved on (the operation ended, or the slot
//! holds another) is skipped when met, never searched for.

use std::collections::VecDeque;

use super::phase::{Park, Phase};

/// The starved receives of one engine: (slot, operation id), oldest first.
#[derive(Default)]
pub(crate) struct Starved(VecDeque<(usize, u64)>);

impl Starved {
    /// Slot `slot`'s operation `op` just parked as starved.
    pub(crate) fn push(&mut self, slot: usize, op: u64) {
        self.0.push_back((slot, op));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The oldest slot still parked as starved with the operation it was
    /// queued with, taken off the queue; `slot` gives a slot's operation id
    /// and phase (`None`: the slot is empty). Stale entries before it go.
    pub(crate) fn pop_live(
        &mut self,
        slot: impl Fn(usize) -> Option<(u64, Phase)>,
    ) -> Option<usize> {
        while let Some((idx, op)) = self.0.pop_front() {
            if slot(idx) == Some((op, Phase::Parked(Park::Starved))) {
                return Some(idx);
            }
        }
        None
    }
}
