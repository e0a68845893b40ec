//! How an SQE names what it is for: its `user_data`.
//!
//! An operation's `user_data` names its slot and the slot's generation:
//! bits 0..32 the slab index, bits 32..62 the generation (the slab bumps it
//! each time the slot is freed), bit 62 the poll-mode flag. A CQE or an
//! `AsyncCancel` carrying an earlier generation never matches the slot's
//! next occupant. Bit 63 is never set in an operation's name, so the four
//! engine-internal names below cannot collide with one.
//!
//! A leaf: the slots (which make names), the SQE builders and the CQE
//! handling (which read them) all use it, and it uses none of them.

/// The eventfd read's `user_data`.
pub(super) const WAKE_UD: u64 = u64::MAX;
/// The `user_data` of every `AsyncCancel` (its CQE is ignored).
pub(super) const CANCEL_UD: u64 = u64::MAX - 1;
/// The `user_data` of the messages that wake a driven engine (ignored).
pub(super) const MSG_UD: u64 = u64::MAX - 2;
/// The `user_data` of the timeouts that keep the engine's earliest timer
/// in the kernel.
pub(super) const TIMER_UD: u64 = u64::MAX - 3;
/// Marks the `POLL_ADD` of a poll-mode pooled receive.
pub(super) const POLL_BIT: u64 = 1 << 62;
/// The slab index's bits.
pub(super) const INDEX_MASK: u64 = (1 << 32) - 1;
/// Where the generation starts.
pub(super) const GEN_SHIFT: u32 = 32;
/// The generation's bits, once shifted down.
pub(super) const GEN_MASK: u64 = (1 << 30) - 1;
