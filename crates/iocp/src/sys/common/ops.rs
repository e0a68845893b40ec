//! What both engines' operations share: whose an operation is, what every
//! operation type says about itself, and [`op_sum`], the one list of
//! operations each engine implements, which also declares the operation
//! types whose memory is the same on both.

use std::io;

use crate::buf::Buf;
use crate::op::{Completion, OpId, OpKind};

/// Whose an operation is and what names it: all of an operation in flight
/// but its phase and its memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpMeta {
    pub hid: u64,
    pub key: u64,
    pub id: u64,
    pub token: u64,
}

impl OpMeta {
    /// A completion of this operation.
    pub(crate) fn completion(&self, kind: OpKind, result: io::Result<usize>) -> Completion {
        let mut c = Completion::new(kind, self.key, self.token, OpId(self.id), result);
        if kind == OpKind::RecvPooled {
            // A pooled receive's completions are a stream: one strand per
            // handle, so no two threads handle two of its chunks at once.
            c.strand = self.hid;
        }
        c
    }

    /// A completion of this standing operation with more to follow.
    pub(crate) fn more(&self, kind: OpKind, result: io::Result<usize>) -> Completion {
        let mut c = self.completion(kind, result);
        c.more = true;
        c
    }
}

/// The bytes of `bufs` past the first `sent`, buffer by buffer (what a
/// vectored send still has to send).
pub(crate) fn unsent(bufs: &[Buf], sent: usize) -> impl Iterator<Item = &[u8]> {
    let mut skip = sent;
    bufs.iter().filter_map(move |b| {
        let s = b.as_slice();
        if skip >= s.len() {
            skip -= s.len();
            return None;
        }
        let rest = &s[skip..];
        skip = 0;
        Some(rest)
    })
}

/// What every operation type of a Linux engine says about itself; each
/// engine's own trait (its SQEs, or its attempts) builds on it.
pub(crate) trait OpBase {
    /// The kind its completions carry.
    const KIND: OpKind;
    /// The kind its completions carry (of a value).
    fn kind(&self) -> OpKind {
        Self::KIND
    }
    /// Hands its memory back in its final completion, whose result is set.
    fn complete(self, c: &mut Completion);
    /// Bytes of it already sent (what a failed send reports).
    fn sent(&self) -> usize {
        0
    }
}

/// Hands an operation's buffer back in its final completion.
pub(crate) fn hand_back(buf: Buf, c: &mut Completion) {
    c.buf = Some(buf);
}

/// Implements [`OpBase`] for an operation type `$t` of kind `$kind`:
/// * `op_base!(T: Kind)`: it holds no memory to hand back;
/// * `op_base!(T: Kind, hands back buf)`: its final completion carries its
///   `buf` (`via f`: as `f(buf, completion)` leaves it);
/// * `op_base!(T: Kind, sends buf)`: that, and it reports `sent`, the bytes
///   of `buf` sent so far.
macro_rules! op_base {
    ($t:ident: $kind:ident) => {
        impl $crate::sys::common::OpBase for $t {
            const KIND: $crate::op::OpKind = $crate::op::OpKind::$kind;

            fn complete(self, _c: &mut $crate::op::Completion) {}
        }
    };
    ($t:ident: $kind:ident, hands back buf) => {
        $crate::sys::common::op_base!($t: $kind, hands back buf via $crate::sys::common::hand_back);
    };
    ($t:ident: $kind:ident, hands back buf via $f:path) => {
        impl $crate::sys::common::OpBase for $t {
            const KIND: $crate::op::OpKind = $crate::op::OpKind::$kind;

            fn complete(self, c: &mut $crate::op::Completion) {
                $f(self.buf, c);
            }
        }
    };
    ($t:ident: $kind:ident, sends buf) => {
        impl $crate::sys::common::OpBase for $t {
            const KIND: $crate::op::OpKind = $crate::op::OpKind::$kind;

            fn complete(self, c: &mut $crate::op::Completion) {
                $crate::sys::common::hand_back(self.buf, c);
            }

            fn sent(&self) -> usize {
                self.sent
            }
        }
    };
}
pub(crate) use op_base;

/// Declares an engine's operations, in its `ops` module:
/// * the operation types whose memory is the same on both engines
///   (`Connect`, `Send`, `SendV` — whose `msg` is `$msg`, what the engine
///   keeps besides the buffers —, `AcceptStream`, `RecvPooled`, `Write`,
///   `Flush`), each an
///   [`OpBase`]; the engine's family files implement its own trait for them;
/// * `$sum`, the operation in flight: one variant per operation type, the
///   same list on both engines — so every operation the application may
///   start exists on each — built from the request's [`OpData`]
///   (the engine defines the other types: `Accept`, `Recv`, `RecvFrom`,
///   `SendTo`, `Read`);
/// * `dispatch!(self, o => expr)`, which forwards to the variant.
///
/// The shared types are declared in each engine rather than here so that
/// each engine's trait is implemented on a type of its own module: an impl
/// belongs to its type's module, and engine impls on types defined here
/// made this module use every engine's `ops`, which use it back.
///
/// [`OpData`]: crate::op::OpData
macro_rules! op_sum {
    ($(#[$doc:meta])* $sum:ident, vectored msg: $msg:ty) => {
        /// A connect to `addr`.
        pub(in crate::sys) struct Connect {
            pub addr: Box<socket2::SockAddr>,
        }

        $crate::sys::common::op_base!(Connect: Connect);

        /// A send of `buf`, `sent` bytes of it so far.
        pub(in crate::sys) struct Send {
            pub buf: $crate::buf::Buf,
            pub sent: usize,
        }

        $crate::sys::common::op_base!(Send: Send, sends buf);

        /// A vectored send of `bufs`, `sent` bytes of them so far, with what
        /// the engine keeps besides (`msg`).
        pub(in crate::sys) struct SendV {
            pub bufs: Vec<$crate::buf::Buf>,
            pub sent: usize,
            // (epoll keeps nothing besides: `()`, never read.)
            #[allow(dead_code)]
            pub msg: $msg,
        }

        impl $crate::sys::common::OpBase for SendV {
            const KIND: $crate::op::OpKind = $crate::op::OpKind::Send;

            fn complete(self, c: &mut $crate::op::Completion) {
                c.set_extra($crate::op::Extra::Vectored(self.bufs));
            }

            fn sent(&self) -> usize {
                self.sent
            }
        }

        /// A standing accept: one `more` completion per connection.
        pub(in crate::sys) struct AcceptStream;

        $crate::sys::common::op_base!(AcceptStream: Accept);

        /// A standing receive into pool buffers.
        pub(in crate::sys) struct RecvPooled;

        $crate::sys::common::op_base!(RecvPooled: RecvPooled);

        /// A write of every byte of `buf` to a file at `at`, or to a pipe
        /// (`at` `None`), `sent` bytes of it so far.
        pub(in crate::sys) struct Write {
            pub buf: $crate::buf::Buf,
            pub at: Option<u64>,
            pub sent: usize,
        }

        $crate::sys::common::op_base!(Write: Write, sends buf);

        /// `fsync`, or `fdatasync` when `data_only`.
        pub(in crate::sys) struct Flush {
            pub data_only: bool,
        }

        $crate::sys::common::op_base!(Flush: Flush);

        $crate::sys::common::op_sum!(@enum $(#[$doc])* $sum:
            Accept, AcceptStream, Connect, Recv, Send, SendV, RecvFrom, SendTo, RecvPooled, Read,
            Write, Flush);

        impl $sum {
            /// The operation the application asked for.
            pub fn new(data: $crate::op::OpData) -> $sum {
                use $crate::op::OpData as D;
                match data {
                    D::Accept => $sum::Accept(Accept::new()),
                    D::AcceptMulti => $sum::AcceptStream(AcceptStream),
                    D::Connect(addr) => $sum::Connect(Connect { addr }),
                    D::Recv(buf) => $sum::Recv(Recv { buf }),
                    D::RecvPooled => $sum::RecvPooled(RecvPooled),
                    D::Send(buf) => $sum::Send(Send { buf, sent: 0 }),
                    D::SendV(bufs) => $sum::SendV(SendV::new(bufs)),
                    D::RecvFrom(buf) => $sum::RecvFrom(RecvFrom::new(buf)),
                    D::SendTo(buf, to) => $sum::SendTo(SendTo::new(buf, to)),
                    D::Read(buf, at) => $sum::Read(Read { buf, at }),
                    D::Write(buf, at) => $sum::Write(Write { buf, at, sent: 0 }),
                    D::Flush(data_only) => $sum::Flush(Flush { data_only }),
                }
            }

            pub fn kind(&self) -> $crate::op::OpKind {
                dispatch!(self, o => o.kind())
            }

            pub fn complete(self, c: &mut $crate::op::Completion) {
                dispatch!(self, o => o.complete(c))
            }

            pub fn sent(&self) -> usize {
                dispatch!(self, o => o.sent())
            }
        }
    };
    // The enum of the operation types and `dispatch!`, from one list.
    (@enum $(#[$doc:meta])* $sum:ident: $($op:ident),*) => {
        $(#[$doc])*
        pub(super) enum $sum {
            $($op($op),)*
        }

        /// Forwards `$e` to the operation inside `$s` (bound as `$o`).
        macro_rules! dispatch {
            ($s:expr, $o:ident => $e:expr) => {
                match $s {
                    $($sum::$op($o) => $e,)*
                }
            };
        }
    };
}
pub(crate) use op_sum;
