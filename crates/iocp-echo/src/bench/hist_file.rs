//! Reading a `--hist` file (an HdrHistogram interval log, see
//! [`super::report`]) for `bench merge`, as untrusted input: a truncated,
//! corrupt, empty or foreign file is an error that says what is wrong and
//! on which line, never a panic and never an unbounded allocation.
//!
//! The histogram bytes are checked before `hdrhistogram` decodes them: the
//! DEFLATE layer is inflated here with a size cap, the V2 header's payload
//! length must fit in what is there, and every varint count must be one
//! the decoder can take (a crafted `i64::MIN` overflows its negation).

use std::io::{self, Read};
use std::path::Path;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::{DeserializeError, Deserializer};
use hdrhistogram::Histogram;

use super::report::{new_hist, Report, Run, Series, META, SERIES};

/// The V2 encoding's cookie, and that of V2 + DEFLATE.
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;
/// Bytes of a V2 header: cookie, payload length, normalizing offset,
/// significant digits, lowest, highest, integer-to-double ratio.
const V2_HEADER: usize = 4 + 4 + 4 + 4 + 8 + 8 + 8;
/// The most a histogram may inflate to (ours are under 1 MiB).
const MAX_DECODED: usize = 64 << 20;

/// The most slices a throughput series may have (a day of 100 ms slices).
const MAX_SLICES: usize = 864_000;

/// Reads a `--hist` file: its report (when the file has the
/// `#iocp-echo-bench` line), its histograms added together, and its
/// throughput series (the `#iocp-echo-bench-series` line), labelled with
/// the file's name. The error says what is wrong (the caller names the
/// file).
pub fn read_hist(path: &Path) -> Result<Run, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut run = parse_hist(&bytes)?;
    run.label = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    Ok(run)
}

/// A series line's JSON, checked so that plotting it stays finite.
fn parse_series(json: &[u8]) -> Result<Series, String> {
    let s: Series = serde_json::from_slice(json.trim_ascii_end())
        .map_err(|e| format!("bad #{SERIES}line: {e}"))?;
    if !(s.slice_s.is_finite() && (0.001..=3600.0).contains(&s.slice_s)) {
        return Err(format!(
            "bad #{SERIES}line: slice_s {} is not between 0.001 and 3600 seconds",
            s.slice_s
        ));
    }
    if !(s.start_unix_s.is_finite() && s.start_unix_s >= 0.0) {
        return Err(format!(
            "bad #{SERIES}line: start_unix_s {} is not a time",
            s.start_unix_s
        ));
    }
    if s.messages.len().max(s.reconnects.len()) > MAX_SLICES {
        return Err(format!("bad #{SERIES}line: more than {MAX_SLICES} slices"));
    }
    Ok(s)
}

/// Parses the bytes of a `--hist` file.
pub fn parse_hist(bytes: &[u8]) -> Result<Run, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let mut meta = None;
    let mut series = None;
    let mut total = new_hist();
    let mut found = 0;
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let at = |why: String| format!("line {}: {why}", i + 1);
        if !line.ends_with(b"\n") {
            return Err(at(
                "the file ends in the middle of this line (truncated?)".into()
            ));
        }
        if let Some(json) = line
            .strip_prefix(b"#")
            .and_then(|l| l.strip_prefix(META.as_bytes()))
        {
            let r: Report = serde_json::from_slice(json.trim_ascii_end())
                .map_err(|e| at(format!("bad #{}line: {e}", META)))?;
            meta = Some(r);
            continue;
        }
        if let Some(json) = line
            .strip_prefix(b"#")
            .and_then(|l| l.strip_prefix(SERIES.as_bytes()))
        {
            series = Some(parse_series(json).map_err(at)?);
            continue;
        }
        match IntervalLogIterator::new(line).next() {
            // A comment, or the column legend.
            None => {}
            Some(Ok(LogEntry::Interval(h))) => {
                let hist = decode(h.encoded_histogram()).map_err(at)?;
                total.add(&hist).map_err(|_| {
                    at("a latency beyond 1 hour, more than a --hist file holds".into())
                })?;
                found += 1;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(at("not an HdrHistogram interval log line".into())),
        }
    }
    if found == 0 {
        return Err("no histogram line in the file (truncated?)".into());
    }
    Ok(Run {
        label: String::new(),
        report: meta,
        hist: total,
        series,
    })
}

/// Decodes one base64 histogram (V2, or V2 + DEFLATE).
fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let raw = base64_decode(text).ok_or("bad base64 in the histogram")?;
    let v2 = match be_u32(&raw, 0) {
        Some(V2_COMPRESSED_COOKIE) => {
            let len = be_u32(&raw, 4).ok_or("the histogram is truncated")? as usize;
            let body = &raw[8..];
            if body.len() < len {
                return Err(format!(
                    "the histogram is truncated ({} of {len} compressed bytes)",
                    body.len()
                ));
            }
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(&body[..len])
                .take(MAX_DECODED as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("corrupt compressed histogram: {e}"))?;
            if out.len() > MAX_DECODED {
                return Err(format!(
                    "the histogram inflates to more than {MAX_DECODED} bytes"
                ));
            }
            out
        }
        Some(V2_COOKIE) => raw,
        Some(c) => return Err(format!("not a V2 histogram (cookie {c:#010x})")),
        None => return Err("the histogram is truncated".into()),
    };
    check_v2(&v2)?;
    Deserializer::new()
        .deserialize(&mut io::Cursor::new(&v2))
        .map_err(|e| {
            format!(
                "corrupt histogram: {}",
                match e {
                    DeserializeError::IoError(e) => e.to_string(),
                    DeserializeError::InvalidCookie => "unknown encoding".into(),
                    DeserializeError::UnsupportedFeature =>
                        "uses a feature this reader lacks (normalizing offset, or doubles)".into(),
                    DeserializeError::UnsuitableCounterType => "a count out of range".into(),
                    DeserializeError::InvalidParameters =>
                        "bad bounds or significant digits".into(),
                    DeserializeError::UsizeTypeTooSmall => "too many counts".into(),
                    DeserializeError::EncodedArrayTooLong =>
                        "more counts than its value range has".into(),
                }
            )
        })
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// What `Deserializer` would trust: the payload length, and each count.
fn check_v2(b: &[u8]) -> Result<(), String> {
    if be_u32(b, 0) != Some(V2_COOKIE) {
        return Err("not a V2 histogram inside the compressed data".into());
    }
    if b.len() < V2_HEADER {
        return Err("the histogram header is truncated".into());
    }
    let len = be_u32(b, 4).unwrap_or_default() as usize;
    let payload = &b[V2_HEADER..];
    if payload.len() < len {
        return Err(format!(
            "the histogram is truncated ({} of {len} bytes of counts)",
            payload.len()
        ));
    }
    let mut rest = &payload[..len];
    while !rest.is_empty() {
        let (v, used) = varint(rest).ok_or("the histogram's last count is truncated")?;
        // zig-zag decoding: u64::MAX is i64::MIN, whose negation overflows.
        if v == u64::MAX {
            return Err("corrupt histogram: a count out of range".into());
        }
        rest = &rest[used..];
    }
    Ok(())
}

/// One LEB128 varint as HdrHistogram writes it (at most 9 bytes; the
/// ninth contributes all its 8 bits): the value and the bytes it took.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(9) {
        if i == 8 {
            return Some((v | u64::from(byte) << 56, 9));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Standard base64 (with or without padding); `None` on a bad character.
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim().trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
