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
/// Receives write into the buffer's spare room: for `Vec<u8>`, `BytesMut`
/// and `AlignedBuf` that is `len..capacity` (the length grows by the bytes
/// received); for
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
    /// An aligned buffer (direct I/O); receives and reads append into its
    /// spare capacity.
    Aligned(AlignedBuf),
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Buf::Vec(_) => "Vec",
            Buf::Boxed(_) => "Boxed",
            #[cfg(feature = "bytes")]
            Buf::Bytes(_) => "Bytes",
            Buf::Pooled(_) => "Pooled",
            Buf::Aligned(_) => "Aligned",
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
            Buf::Aligned(a) => a,
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
            Buf::Aligned(a) => a.to_vec(),
        }
    }

    /// Where a receive or a read would write, and how much (see
    /// [`Buf::spare`]), without borrowing the buffer mutably: for checks.
    pub(crate) fn room(&self) -> (usize, usize) {
        match self {
            Buf::Vec(v) => (v.as_ptr() as usize + v.len(), v.capacity() - v.len()),
            Buf::Boxed(b) => (b.as_ptr() as usize, b.len()),
            #[cfg(feature = "bytes")]
            Buf::Bytes(b) => (b.as_ptr() as usize + b.len(), b.capacity() - b.len()),
            Buf::Pooled(_) => (0, 0),
            Buf::Aligned(a) => (a.as_ptr() as usize + a.len(), a.capacity() - a.len()),
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
            Buf::Aligned(a) => a.spare(),
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
            Buf::Aligned(a) => a.grow(n),
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
impl From<AlignedBuf> for Buf {
    fn from(a: AlignedBuf) -> Self {
        Buf::Aligned(a)
    }
}

/// A byte buffer whose first byte sits at an address aligned to a power of
/// two, as direct I/O (`O_DIRECT`, `FILE_FLAG_NO_BUFFERING`) needs: reads
/// and writes of a file opened with [`crate::fs::OpenOptions::direct`] must
/// use a buffer, a length and an offset aligned as the file system says,
/// and are refused before they start otherwise, naming the alignment.
///
/// Like a `Vec`, it has a length (the bytes a write writes) and a fixed
/// capacity; a read appends into the room between them (keep the length a
/// multiple of the alignment, or 0, so that room is aligned too). Its
/// memory starts zeroed and never moves.
///
/// ```
/// let mut b = completion_port::AlignedBuf::new(8192, 4096);
/// assert_eq!(b.as_ptr() as usize % 4096, 0);
/// b.extend_from_slice(&[7; 4096]);
/// assert_eq!((b.len(), b.capacity()), (4096, 8192));
/// ```
pub struct AlignedBuf {
    /// Room for `cap` aligned bytes: `cap + align - 1` zeroed bytes.
    mem: Box<[u8]>,
    /// Where the aligned bytes start in `mem`.
    start: usize,
    len: usize,
    cap: usize,
    align: usize,
}

impl AlignedBuf {
    /// An empty buffer of `capacity` bytes starting at a multiple of
    /// `align`. Panics, naming it, if `align` is not a power of two.
    pub fn new(capacity: usize, align: usize) -> AlignedBuf {
        assert!(
            align.is_power_of_two(),
            "AlignedBuf: alignment {align} is not a power of two"
        );
        let mem = vec![0u8; capacity + align - 1].into_boxed_slice();
        let start = mem.as_ptr().align_offset(align);
        AlignedBuf {
            mem,
            start,
            len: 0,
            cap: capacity,
            align,
        }
    }

    /// An empty buffer of `capacity` bytes aligned to 4096 bytes (enough
    /// for every common file system and disk).
    pub fn with_capacity(capacity: usize) -> AlignedBuf {
        AlignedBuf::new(capacity, 4096)
    }

    /// The bytes in it.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The alignment of its first byte.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// Appends `s`. Panics, naming the sizes, if it does not fit.
    pub fn extend_from_slice(&mut self, s: &[u8]) {
        let end = self.len + s.len();
        assert!(
            end <= self.cap,
            "AlignedBuf: {} more bytes do not fit ({} of {} used)",
            s.len(),
            self.len,
            self.cap
        );
        self.mem[self.start + self.len..self.start + end].copy_from_slice(s);
        self.len = end;
    }

    /// Sets the length to `len`, filling new bytes with `value`. Panics,
    /// naming the sizes, past the capacity.
    pub fn resize(&mut self, len: usize, value: u8) {
        assert!(
            len <= self.cap,
            "AlignedBuf: length {len} is past the capacity {}",
            self.cap
        );
        if len > self.len {
            self.mem[self.start + self.len..self.start + len].fill(value);
        }
        self.len = len;
    }

    /// Cuts the length to `len` (no effect if it is shorter already).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Empties it (the capacity stays).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The spare room (where a read writes): its start and length.
    fn spare(&mut self) -> (*mut u8, usize) {
        let room = &mut self.mem[self.start + self.len..self.start + self.cap];
        (room.as_mut_ptr(), room.len())
    }

    /// A read wrote `n` bytes into the spare room.
    fn grow(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.cap);
        self.len = (self.len + n).min(self.cap);
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .field("alignment", &self.align)
            .finish()
    }
}

/// An owned buffer type an operation accepts: `Vec<u8>`, `Box<[u8]>`,
/// `bytes::BytesMut` (feature `bytes`), a pool buffer, an [`AlignedBuf`],
/// or [`Buf`] itself.
pub trait IoBuf: Into<Buf> + Send + 'static {}
impl<T: Into<Buf> + Send + 'static> IoBuf for T {}
