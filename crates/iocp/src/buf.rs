//! The owned buffers an operation takes and gives back: [`Buf`] and the
//! [`IoBuf`] types that convert into it.
//!
//! An operation owns its buffer from the moment it is started until its final
//! completion hands the buffer back: nothing can free or move it while the
//! kernel may still write into it.

use std::fmt;

use crate::pool::PooledBuf;

/// An owned byte buffer an operation can take and give back.
///
/// Receives write into the buffer's spare room: for `Vec<u8>` and `BytesMut`
/// that is `len..capacity` (the length grows by the bytes received); for
/// `Box<[u8]>` it is the whole slice from the start. Sends send the
/// initialised bytes (`..len`, or the whole `Box<[u8]>`).
///
/// A receive into a buffer with no room transfers nothing: like a zero-byte
/// `WSARecv`, its 0-byte completion does not by itself mean the peer
/// closed — only a read with room that returns 0 does.
pub enum Buf {
    /// A vector; receives append into its spare capacity.
    Vec(Vec<u8>),
    /// A boxed slice; receives fill it from the start.
    Boxed(Box<[u8]>),
    /// A `bytes::BytesMut`; receives append into its spare capacity.
    #[cfg(feature = "bytes")]
    Bytes(bytes::BytesMut),
    /// A buffer lent by the library's pool; it goes back to the pool on drop.
    Pooled(PooledBuf),
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Buf::Vec(_) => "Vec",
            Buf::Boxed(_) => "Boxed",
            #[cfg(feature = "bytes")]
            Buf::Bytes(_) => "Bytes",
            Buf::Pooled(_) => "Pooled",
        };
        write!(f, "Buf::{kind}({} bytes)", self.len())
    }
}

impl Buf {
    /// The initialised bytes (what a send sends, what a receive appended to).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Boxed(b) => b,
            #[cfg(feature = "bytes")]
            Buf::Bytes(b) => b,
            Buf::Pooled(p) => p,
        }
    }

    /// `as_slice().len()`.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as a vector (copies only for pool buffers and `Bytes`).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Buf::Vec(v) => v,
            Buf::Boxed(b) => b.into_vec(),
            #[cfg(feature = "bytes")]
            Buf::Bytes(b) => b.to_vec(),
            Buf::Pooled(p) => p.to_vec(),
        }
    }

    /// Where a receive may write, and how much: the spare room described on
    /// [`Buf`]. Pool buffers are full already and offer nothing.
    pub(crate) fn spare(&mut self) -> (*mut u8, usize) {
        match self {
            Buf::Vec(v) => {
                let len = v.len();
                let spare = v.capacity() - len;
                // SAFETY: `len <= capacity`, so the pointer stays inside (or one
                // past the end of) the allocation.
                (unsafe { v.as_mut_ptr().add(len) }, spare)
            }
            Buf::Boxed(b) => (b.as_mut_ptr(), b.len()),
            #[cfg(feature = "bytes")]
            Buf::Bytes(b) => {
                let len = b.len();
                let spare = b.capacity() - len;
                // SAFETY: as for `Vec`: the pointer stays inside the allocation.
                (unsafe { b.as_mut_ptr().add(len) }, spare)
            }
            Buf::Pooled(_) => (std::ptr::null_mut(), 0),
        }
    }

    /// Records that a receive wrote `n` bytes at [`Buf::spare`].
    ///
    /// # Safety
    /// The first `n` bytes of the spare room must have been initialised.
    pub(crate) unsafe fn advance(&mut self, n: usize) {
        match self {
            Buf::Vec(v) => {
                debug_assert!(v.len() + n <= v.capacity());
                // SAFETY: the caller guarantees the bytes are initialised and
                // `n` fits in the spare capacity.
                unsafe { v.set_len(v.len() + n) }
            }
            Buf::Boxed(_) => {}
            #[cfg(feature = "bytes")]
            Buf::Bytes(b) => {
                // SAFETY: as for `Vec`.
                unsafe { b.set_len(b.len() + n) }
            }
            Buf::Pooled(_) => {}
        }
    }
}

impl From<Vec<u8>> for Buf {
    fn from(v: Vec<u8>) -> Self {
        Buf::Vec(v)
    }
}
impl From<Box<[u8]>> for Buf {
    fn from(b: Box<[u8]>) -> Self {
        Buf::Boxed(b)
    }
}
#[cfg(feature = "bytes")]
impl From<bytes::BytesMut> for Buf {
    fn from(b: bytes::BytesMut) -> Self {
        Buf::Bytes(b)
    }
}
impl From<PooledBuf> for Buf {
    fn from(p: PooledBuf) -> Self {
        Buf::Pooled(p)
    }
}

/// An owned buffer type an operation accepts: `Vec<u8>`, `Box<[u8]>`,
/// `bytes::BytesMut` (feature `bytes`), a pool buffer, or [`Buf`] itself.
pub trait IoBuf: Into<Buf> + Send + 'static {}
impl<T: Into<Buf> + Send + 'static> IoBuf for T {}
