//! What a packet names, written and read in one place: the completion key
//! of every socket the server associates with a port ([`Route`]), and the
//! token of its control packets ([`Ctrl`]).
//!
//! A key's top two bits say what it names; the rest says which one:
//!
//! | bits 63-62 | bits 61-0 |
//! |---|---|
//! | `00` connection | 0 (bits 61-56), generation (55-24, never 0), slot index (23-0) |
//! | `01` listener | 0 (61-32), listener index (31-0) |
//! | `10` UDP socket | 0 (61-32), socket index (31-0) |
//! | `11` control | 0 |
//!
//! A connection's slot is reused by later connections under a new
//! generation, so a packet naming one that is gone is told apart from the
//! slot's new occupant. A key that breaks the layout (a set reserved bit,
//! generation 0) names nothing: [`Route::from_key`] refuses it.

use std::io;
use std::time::Duration;

use completion_port::{OpId, Port};

/// Connection slot indices have this many bits.
pub(crate) const IDX_BITS: u32 = 24;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
const TAG_SHIFT: u32 = 62;
const TAG_CONN: u64 = 0;
const TAG_LISTENER: u64 = 1;
const TAG_UDP: u64 = 2;
const TAG_CONTROL: u64 = 3;
/// Below the tag: a connection's generation and index (56 bits used).
const CONN_RESERVED: u64 = ((1 << TAG_SHIFT) - 1) & !((1 << (IDX_BITS + 32)) - 1);
/// Below the tag: an index of 32 bits.
const INDEX_RESERVED: u64 = ((1 << TAG_SHIFT) - 1) & !(u32::MAX as u64);

/// What a completion key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A connection: its table slot (below 2^24) and the slot's generation
    /// when it was admitted (never 0).
    Conn { idx: u32, gen: u32 },
    /// Listener `i` of its port (its standing accept, its back-off timer).
    Listener(u32),
    /// UDP socket `i` of its port.
    Udp(u32),
    /// Control packets: posted by the server to itself and its timers; the
    /// token says which ([`Ctrl`]).
    Control,
}

impl Route {
    /// The completion key. Panics on a connection outside the layout (an
    /// index of 2^24 or more, generation 0): the tables never hand those out.
    pub(crate) fn to_key(self) -> u64 {
        match self {
            Route::Conn { idx, gen } => {
                assert!(
                    u64::from(idx) <= IDX_MASK && gen != 0,
                    "connection slot {idx} generation {gen} has no key"
                );
                TAG_CONN << TAG_SHIFT | u64::from(gen) << IDX_BITS | u64::from(idx)
            }
            Route::Listener(i) => TAG_LISTENER << TAG_SHIFT | u64::from(i),
            Route::Udp(i) => TAG_UDP << TAG_SHIFT | u64::from(i),
            Route::Control => TAG_CONTROL << TAG_SHIFT,
        }
    }

    /// What `key` names; `None` for a key no [`Route::to_key`] makes.
    pub(crate) fn from_key(key: u64) -> Option<Route> {
        let body = key & ((1 << TAG_SHIFT) - 1);
        match key >> TAG_SHIFT {
            TAG_CONN if body & CONN_RESERVED == 0 => {
                let gen = (body >> IDX_BITS) as u32;
                (gen != 0).then_some(Route::Conn {
                    idx: (body & IDX_MASK) as u32,
                    gen,
                })
            }
            TAG_LISTENER if body & INDEX_RESERVED == 0 => Some(Route::Listener(body as u32)),
            TAG_UDP if body & INDEX_RESERVED == 0 => Some(Route::Udp(body as u32)),
            TAG_CONTROL if body == 0 => Some(Route::Control),
            _ => None,
        }
    }
}

/// A control packet (key [`Route::Control`]); its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctrl {
    /// The first stop request: drain.
    Shutdown,
    /// A later stop request: drain, and cut what is open now.
    Cut,
    /// The drain deadline: cut what is open.
    Deadline,
    /// A worker stops (a shard's passes the packet on to the next one).
    Quit,
    /// Connections still closing 2 s after the cut: quit anyway.
    ForceQuit,
    /// The idle and drain sweep of timer chain `epoch` (below 2^56): a
    /// sweep of a superseded chain is dropped.
    Sweep { epoch: u64 },
}

const C_SHUTDOWN: u64 = 1;
const C_CUT: u64 = 2;
const C_DEADLINE: u64 = 3;
const C_QUIT: u64 = 4;
const C_FORCE_QUIT: u64 = 5;
const C_SWEEP: u64 = 6;

impl Ctrl {
    /// The token: the kind in the low byte, a sweep's epoch above it.
    pub(crate) fn to_token(self) -> u64 {
        match self {
            Ctrl::Shutdown => C_SHUTDOWN,
            Ctrl::Cut => C_CUT,
            Ctrl::Deadline => C_DEADLINE,
            Ctrl::Quit => C_QUIT,
            Ctrl::ForceQuit => C_FORCE_QUIT,
            Ctrl::Sweep { epoch } => {
                assert!(epoch < 1 << 56, "sweep epoch {epoch} has no token");
                C_SWEEP | epoch << 8
            }
        }
    }

    /// The control packet `token` names; `None` for a token no
    /// [`Ctrl::to_token`] makes.
    pub(crate) fn from_token(token: u64) -> Option<Ctrl> {
        let (kind, rest) = (token & 0xff, token >> 8);
        let plain = |c| (rest == 0).then_some(c);
        match kind {
            C_SHUTDOWN => plain(Ctrl::Shutdown),
            C_CUT => plain(Ctrl::Cut),
            C_DEADLINE => plain(Ctrl::Deadline),
            C_QUIT => plain(Ctrl::Quit),
            C_FORCE_QUIT => plain(Ctrl::ForceQuit),
            C_SWEEP => Some(Ctrl::Sweep { epoch: rest }),
            _ => None,
        }
    }

    /// Posts it to `port` (`PostQueuedCompletionStatus`).
    pub(crate) fn post(self, port: &Port) -> io::Result<()> {
        port.post(Route::Control.to_key(), 0, self.to_token())
    }

    /// Posts it to `port` after `after` (a timer).
    pub(crate) fn post_after(self, port: &Port, after: Duration) -> io::Result<OpId> {
        port.post_after(after, Route::Control.to_key(), self.to_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip() {
        let routes = [
            Route::Conn { idx: 0, gen: 1 },
            Route::Conn {
                idx: (1 << IDX_BITS) - 1,
                gen: u32::MAX,
            },
            Route::Conn {
                idx: 12_345,
                gen: 0x8000_0001,
            },
            Route::Listener(0),
            Route::Listener(u32::MAX),
            Route::Udp(0),
            Route::Udp(7),
            Route::Udp(u32::MAX),
            Route::Control,
        ];
        let mut keys = Vec::new();
        for r in routes {
            let k = r.to_key();
            assert_eq!(Route::from_key(k), Some(r), "{r:?} -> {k:#x}");
            keys.push(k);
        }
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), routes.len(), "distinct routes, distinct keys");
    }

    #[test]
    fn garbage_keys_name_nothing() {
        let conn = Route::Conn { idx: 5, gen: 9 }.to_key();
        for bad in [
            // Generation 0 (a slot never has it).
            5,
            0,
            // A reserved bit between the generation and the tag.
            conn | 1 << 56,
            conn | 1 << 61,
            // Listener and UDP indices above 32 bits.
            Route::Listener(3).to_key() | 1 << 32,
            Route::Udp(3).to_key() | 1 << 61,
            // Anything below the control tag.
            Route::Control.to_key() | 1,
            u64::MAX,
        ] {
            assert_eq!(Route::from_key(bad), None, "{bad:#x}");
        }
    }

    #[test]
    #[should_panic(expected = "has no key")]
    fn a_slot_beyond_the_layout_has_no_key() {
        let _ = Route::Conn {
            idx: 1 << IDX_BITS,
            gen: 1,
        }
        .to_key();
    }

    #[test]
    fn control_tokens_round_trip() {
        let all = [
            Ctrl::Shutdown,
            Ctrl::Cut,
            Ctrl::Deadline,
            Ctrl::Quit,
            Ctrl::ForceQuit,
            Ctrl::Sweep { epoch: 0 },
            Ctrl::Sweep { epoch: 3 },
            Ctrl::Sweep {
                epoch: (1 << 56) - 1,
            },
        ];
        for c in all {
            assert_eq!(Ctrl::from_token(c.to_token()), Some(c), "{c:?}");
        }
        for bad in [0, 7, 0xff, C_SHUTDOWN | 1 << 8, C_QUIT | 1 << 63, u64::MAX] {
            assert_eq!(Ctrl::from_token(bad), None, "{bad:#x}");
        }
    }
}
