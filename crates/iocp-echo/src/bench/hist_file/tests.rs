//! `--hist` files: a real one round-trips; truncated, corrupt, empty and
//! foreign files give an error naming the line and the problem, and no
//! input of any shape panics.

use std::io::Write;
use std::time::SystemTime;

use hdrhistogram::serialization::Serializer as _;
use proptest::prelude::*;

use super::*;
use crate::bench::report::write_hist;

/// A `--hist` file as `bench --hist` writes it, with 1..=1000 µs.
fn valid_file() -> Vec<u8> {
    let path = std::env::temp_dir().join(format!(
        "iocp-echo-hist-{}-{:?}.hist",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut h = new_hist();
    for v in 1..=1000u64 {
        h.record(v).unwrap();
    }
    let r = Report {
        target: "t".into(),
        messages: 1000,
        duration_s: 1.0,
        runs: 1,
        ..Report::default()
    };
    let series = Series {
        start_unix_s: 1e9,
        slice_s: 0.1,
        messages: vec![3, 0, 7],
        reconnects: vec![0, 2],
    };
    write_hist(&path, &h, &r, Some(&series), SystemTime::now()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    bytes
}

fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

/// A V2 histogram: header fields as given, then `counts` (raw varint
/// bytes), with `len` as the header's payload length.
fn v2(digits: u32, low: u64, high: u64, len: u32, counts: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&V2_COOKIE.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&digits.to_be_bytes());
    b.extend_from_slice(&low.to_be_bytes());
    b.extend_from_slice(&high.to_be_bytes());
    b.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
    b.extend_from_slice(counts);
    b
}

/// `v2` bytes wrapped in DEFLATE (or not), base64, on an interval line.
fn line_of(v2: &[u8], compress: bool) -> Vec<u8> {
    let raw = if compress {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(v2).unwrap();
        let body = z.finish().unwrap();
        let mut raw = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
        raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
        raw.extend_from_slice(&body);
        raw
    } else {
        v2.to_vec()
    };
    format!("0.000,1.000,1.000,{}\n", base64_encode(&raw)).into_bytes()
}

#[test]
fn round_trip() {
    let run = parse_hist(&valid_file()).unwrap();
    assert_eq!(run.report.unwrap().messages, 1000);
    let series = run.series.unwrap();
    assert_eq!(
        (series.messages, series.reconnects),
        (vec![3, 0, 7], vec![0, 2])
    );
    let h = run.hist;
    assert_eq!(h.len(), 1000);
    assert_eq!(h.max(), new_hist().highest_equivalent(1000));
    // The uncompressed V2 encoding is read too.
    let counts = [2u8, 2, 2]; // zig-zag 1, three times: values 0, 1, 2 once each
    let h = parse_hist(&line_of(&v2(3, 1, 3_600_000_000, 3, &counts), false))
        .unwrap()
        .hist;
    assert_eq!((h.len(), h.max()), (3, 2));
}

#[test]
fn base64() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
    assert!(base64_decode("a*").is_none());
    assert_eq!(
        base64_decode(&base64_encode(b"hello!?")).unwrap(),
        b"hello!?"
    );
}

#[test]
fn bad_files_say_what_is_wrong() {
    let good = valid_file();
    let text = String::from_utf8(good.clone()).unwrap();
    let last = text.lines().count();
    let hist_at = text.rfind("\n0.000,").unwrap() + 1;
    // The histogram line with its base64 cut short (the line still ends).
    let mut short = text[..text.len() - 40].to_string();
    short.push('\n');
    let mut big = Histogram::<u64>::new(3).unwrap();
    big.record(u64::MAX / 4).unwrap();
    let mut beyond = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(&big, &mut beyond)
        .unwrap();
    let foreign = format!(
        "0.000,1.000,1.000,{}\n",
        base64_encode(b"\x1c\x84\x93\x03abcd")
    );
    let cases: Vec<(Vec<u8>, String)> = vec![
        (vec![], "the file is empty".into()),
        // A throughput series that could not be drawn.
        (
            b"#iocp-echo-bench-series {\"start_unix_s\":1e9,\"slice_s\":0,\"messages\":[1]}\n"
                .to_vec(),
            "line 1: bad #iocp-echo-bench-series line: slice_s 0 is not between 0.001 and 3600 seconds"
                .into(),
        ),
        (
            b"#iocp-echo-bench-series {\"slice_s\":0.1}\n".to_vec(),
            "line 1: bad #iocp-echo-bench-series line: missing field `start_unix_s` at line 1 column 15"
                .into(),
        ),
        (
            good[..good.len() - 10].to_vec(),
            format!("line {last}: the file ends in the middle of this line (truncated?)"),
        ),
        (
            good[..hist_at].to_vec(),
            "no histogram line in the file (truncated?)".into(),
        ),
        (
            b"garbage\n".to_vec(),
            "line 1: not an HdrHistogram interval log line".into(),
        ),
        (
            b"{\"messages\": 3}\n".to_vec(),
            "line 1: not an HdrHistogram interval log line".into(),
        ),
        (
            b"#iocp-echo-bench {\"messages\":\n".to_vec(),
            "line 1: bad #iocp-echo-bench line: EOF while parsing a value at line 1 column 12"
                .into(),
        ),
        (
            b"0.000,1.000,1.000,HIST*AAA\n".to_vec(),
            "line 1: bad base64 in the histogram".into(),
        ),
        (
            foreign.into_bytes(),
            "line 1: not a V2 histogram (cookie 0x1c849303)".into(),
        ),
        (
            short.into_bytes(),
            format!("line {last}: the histogram is truncated ("),
        ),
        (
            line_of(&v2(3, 1, 1000, 100, &[2, 2]), true),
            "line 1: the histogram is truncated (2 of 100 bytes of counts)".into(),
        ),
        // A payload length of 4 GiB in a 100-byte file: the decoder would
        // allocate and zero all of it before finding the end.
        (
            line_of(&v2(3, 1, 1000, u32::MAX, &[2]), true),
            "line 1: the histogram is truncated (1 of 4294967295 bytes of counts)".into(),
        ),
        (
            line_of(&v2(3, 1, 1000, 2, &[2, 0x80]), false),
            "line 1: the histogram's last count is truncated".into(),
        ),
        // A varint of u64::MAX is i64::MIN after zig-zag decoding: the
        // decoder's negation of it overflows.
        (
            line_of(&v2(3, 1, 1000, 9, &[0xff; 9]), true),
            "line 1: corrupt histogram: a count out of range".into(),
        ),
        (
            line_of(&v2(9, 1, 1000, 0, &[]), true),
            "line 1: corrupt histogram: bad bounds or significant digits".into(),
        ),
        // Values beyond what a --hist file holds (1 hour in µs).
        (
            line_of(&beyond, false),
            "line 1: a latency beyond 1 hour, more than a --hist file holds".into(),
        ),
    ];
    for (bytes, want) in cases {
        let e = parse_hist(&bytes).unwrap_err();
        assert!(e.starts_with(&want), "want {want:?}, got {e:?}");
        assert!(want.ends_with('(') || e == want, "want {want:?}, got {e:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_parse_or_explain(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_hist(&bytes) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn truncated_files_are_errors(frac in 0.0f64..1.0) {
        let good = valid_file();
        let n = (good.len() as f64 * frac) as usize;
        prop_assert!(parse_hist(&good[..n]).is_err());
    }

    #[test]
    fn damaged_files_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut f = valid_file();
        let i = at.index(f.len());
        f[i] = byte;
        let _ = parse_hist(&f);
    }

    #[test]
    fn crafted_histograms_never_panic(
        digits in prop_oneof![0u32..=5, any::<u32>()],
        low in prop_oneof![1u64..=1000, any::<u64>()],
        high in prop_oneof![1000u64..=4_000_000_000, any::<u64>()],
        counts in prop::collection::vec(any::<u8>(), 0..64),
        len_delta in -3i64..3,
        compress in any::<bool>(),
    ) {
        let len = (counts.len() as i64 + len_delta).max(0) as u32;
        let _ = parse_hist(&line_of(&v2(digits, low, high, len, &counts), compress));
    }
}
