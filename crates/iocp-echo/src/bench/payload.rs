//! The deterministic byte streams the bench sends and verifies.
//!
//! Connection `c` of a run with seed `s` sends one endless stream whose byte
//! at offset `k` is a pure function of `(s, c, k)`: byte `k % 8` of
//! `mix(key(s, c) ^ (k / 8) * φ)` (SplitMix64's finaliser). Echoes are
//! checked by regenerating the expected bytes at the receive offset, so no
//! copy of what was sent is kept, and a mismatch names the exact offset.
//! Message sizes come from a separate per-connection PRNG stream, drawn in
//! order as messages are created. A connection reopened after a cut
//! (`--reconnect`) starts a new stream ([`reopened_key`]) at offset 0.

const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream key of connection `conn` in a run seeded with `seed`.
pub fn stream_key(seed: u64, conn: u64) -> u64 {
    mix(seed.wrapping_mul(PHI) ^ mix(conn.wrapping_add(1).wrapping_mul(PHI)))
}

/// The stream key of a connection reopened for the `gen`-th time
/// (`--reconnect`): a fresh stream from offset 0, so a byte of the old
/// stream arriving late can never pass for one of the new.
pub fn reopened_key(key: u64, gen: u64) -> u64 {
    if gen == 0 {
        key
    } else {
        mix(key ^ mix(gen.wrapping_mul(PHI) ^ 0x7265_636f_6e6e))
    }
}

#[inline]
fn word(key: u64, block: u64) -> [u8; 8] {
    mix(key ^ block.wrapping_mul(PHI)).to_le_bytes()
}

/// Appends the stream bytes `off..off + len` to `out`.
pub fn append(key: u64, off: u64, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + len, 0);
    fill(key, off, &mut out[start..]);
}

/// Writes the stream bytes `off..off + dst.len()` into `dst`.
fn fill(key: u64, off: u64, dst: &mut [u8]) {
    let head = ((8 - (off & 7)) as usize % 8).min(dst.len());
    if head > 0 {
        let s = (off & 7) as usize;
        dst[..head].copy_from_slice(&word(key, off >> 3)[s..s + head]);
    }
    let mut block = (off + head as u64) >> 3;
    let mut chunks = dst[head..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(key, block));
        block += 1;
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&word(key, block)[..n]);
}

/// Checks `data` against the stream at `off`; returns the index in `data`
/// of the first byte that differs, with the byte expected there.
pub fn verify(key: u64, off: u64, data: &[u8]) -> Option<(usize, u8)> {
    let first_diff = |i: usize, want: &[u8]| -> Option<(usize, u8)> {
        let got = &data[i..i + want.len()];
        (0..want.len())
            .find(|&j| want[j] != got[j])
            .map(|j| (i + j, want[j]))
    };
    let head = ((8 - (off & 7)) as usize % 8).min(data.len());
    if head > 0 {
        let s = (off & 7) as usize;
        let w = word(key, off >> 3);
        if let Some(d) = first_diff(0, &w[s..s + head]) {
            return Some(d);
        }
    }
    let mut block = (off + head as u64) >> 3;
    let mut i = head;
    let mut chunks = data[head..].chunks_exact(8);
    for c in &mut chunks {
        let w = word(key, block);
        if c != w {
            return first_diff(i, &w);
        }
        block += 1;
        i += 8;
    }
    let n = chunks.remainder().len();
    first_diff(i, &word(key, block)[..n])
}

/// A small PRNG (SplitMix64) for message sizes.
pub struct Rng(u64);

impl Rng {
    /// The size stream of connection `conn`.
    pub fn for_sizes(seed: u64, conn: u64) -> Rng {
        Rng(stream_key(seed ^ 0x5153_5a45, conn))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(PHI);
        mix(self.0)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        if lo >= hi {
            return lo;
        }
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_is_a_function_of_offset() {
        let key = stream_key(1, 3);
        let mut whole = Vec::new();
        append(key, 0, 1000, &mut whole);
        let mut parts = Vec::new();
        let mut off = 0u64;
        for n in [1usize, 7, 8, 13, 64, 3, 904] {
            append(key, off, n, &mut parts);
            off += n as u64;
        }
        assert_eq!(whole, parts);
        assert_eq!(verify(key, 0, &whole), None);
        assert_eq!(verify(key, 5, &whole[5..77]), None);
        let mut bad = whole[100..200].to_vec();
        bad[37] ^= 1;
        assert_eq!(verify(key, 100, &bad), Some((37, whole[137])));
        // Another connection's stream differs, and so does a reopened one.
        assert!(verify(stream_key(1, 4), 0, &whole).is_some());
        assert_eq!(reopened_key(key, 0), key);
        assert!(verify(reopened_key(key, 1), 0, &whole).is_some());
        assert_ne!(reopened_key(key, 1), reopened_key(key, 2));
    }

    #[test]
    fn every_alignment_matches_the_byte_function() {
        let key = stream_key(7, 0);
        let byte_at = |k: u64| word(key, k >> 3)[(k & 7) as usize];
        for off in 0..20u64 {
            for len in 0..40usize {
                let mut v = vec![0xaa];
                append(key, off, len, &mut v);
                assert_eq!(v.len(), len + 1);
                let want: Vec<u8> = (off..off + len as u64).map(byte_at).collect();
                assert_eq!(&v[1..], &want[..], "off {off} len {len}");
                assert_eq!(verify(key, off, &want), None);
                for bad in 0..len {
                    let mut w = want.clone();
                    w[bad] ^= 0x10;
                    assert_eq!(
                        verify(key, off, &w),
                        Some((bad, want[bad])),
                        "off {off} len {len} bad {bad}"
                    );
                }
            }
        }
    }
}
