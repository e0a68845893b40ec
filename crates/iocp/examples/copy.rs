//! Jeffrey Richter's FileCopy, in `iocp`'s terms: copies SRC to DST with K
//! reads in flight at distinct offsets; each completed read starts the
//! write of its bytes at the same offset, and each completed write starts
//! the next read into its buffer. One thread, one port, two file handles.
//!
//! ```text
//! cargo run --release -p completion-port --example copy -- SRC DST
//! cargo run --release -p completion-port --example copy -- --depth 16 --chunk 256K SRC DST
//! IOCP_BACKEND=epoll cargo run --release -p completion-port --example copy -- SRC DST
//! ```
//!
//! It prints the bytes copied and the throughput, and exits 0 only when the
//! whole of SRC is in DST; 1 with a message naming the file, the offset and
//! the error otherwise; 2 for a usage error. `--method std` (`std::fs::copy`)
//! and `--method loop` (a plain `read`/`write` loop with one buffer of
//! `--chunk` bytes) time the same copy another way, for comparison
//! (`bench/copy.sh`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use completion_port::{Port, PortBuilder};

/// The completion keys of the two files.
const SRC: u64 = 1;
const DST: u64 = 2;

const USAGE: &str = "usage: copy [--depth K] [--chunk SIZE] [--method port|std|loop] SRC DST
  --depth K       reads (and writes) in flight at once, 1-4096 [default: 8]
  --chunk SIZE    bytes per read: 65536, 64K, 1M [default: 1M]
  --method M      port (the completion port, default), std (std::fs::copy) or
                  loop (read/write with one buffer), for comparison";

struct Args {
    depth: usize,
    chunk: usize,
    method: String,
    src: String,
    dst: String,
}

/// A size: bytes, or with a binary suffix K, M or G.
fn size(s: &str) -> Option<usize> {
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        depth: 8,
        chunk: 1 << 20,
        method: "port".into(),
        src: String::new(),
        dst: String::new(),
    };
    let mut files = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--depth" => {
                let v = value("--depth")?;
                a.depth = v
                    .parse()
                    .ok()
                    .filter(|d| (1..=4096).contains(d))
                    .ok_or(format!("invalid value '{v}' for --depth (1-4096)"))?;
            }
            "--chunk" => {
                let v = value("--chunk")?;
                a.chunk = size(&v).filter(|&c| c > 0 && c <= 1 << 30).ok_or(format!(
                    "invalid value '{v}' for --chunk (e.g. 64K, 1M; at most 1G)"
                ))?;
            }
            "--method" => {
                let v = value("--method")?;
                if !["port", "std", "loop"].contains(&v.as_str()) {
                    return Err(format!(
                        "invalid value '{v}' for --method (port, std or loop)"
                    ));
                }
                a.method = v;
            }
            "-h" | "--help" => return Err(String::new()),
            f if f.starts_with("--") => return Err(format!("unknown flag '{f}'")),
            _ => files.push(arg),
        }
    }
    match <[String; 2]>::try_from(files) {
        Ok([src, dst]) => {
            a.src = src;
            a.dst = dst;
            Ok(a)
        }
        Err(f) => Err(format!(
            "expected SRC and DST, got {} file name(s)",
            f.len()
        )),
    }
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("copy: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let t0 = Instant::now();
    let r = match a.method.as_str() {
        "std" => std::fs::copy(&a.src, &a.dst)
            .map_err(|e| format!("copying '{}' to '{}': {e}", a.src, a.dst))
            .map(|n| (n, "std::fs::copy".to_string())),
        "loop" => plain_loop(&a).map(|n| (n, format!("read/write loop, {} B buffer", a.chunk))),
        _ => port_copy(&a),
    };
    match r {
        Ok((n, how)) => {
            let secs = t0.elapsed().as_secs_f64();
            let mib = n as f64 / (1 << 20) as f64 / secs.max(1e-9);
            println!("copied {n} bytes in {secs:.3} s: {mib:.1} MiB/s ({how})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("copy: {e}");
            ExitCode::from(1)
        }
    }
}

/// Opens both files (SRC for reading, DST created or cut to 0 bytes), as
/// a port needs them; the errors name the file.
fn open_both(a: &Args) -> Result<(File, File, u64), String> {
    let src = completion_port::fs::open(&a.src)
        .map_err(|e| format!("cannot open source '{}': {e}", a.src))?;
    let meta = src
        .metadata()
        .map_err(|e| format!("cannot read the size of '{}': {e}", a.src))?;
    if meta.is_dir() {
        return Err(format!("cannot copy '{}': it is a directory", a.src));
    }
    let len = meta.len();
    if Path::new(&a.src).canonicalize().ok() == Path::new(&a.dst).canonicalize().ok() {
        return Err(format!("'{}' and '{}' are the same file", a.src, a.dst));
    }
    let dst = completion_port::fs::create(&a.dst)
        .map_err(|e| format!("cannot create destination '{}': {e}", a.dst))?;
    Ok((src, dst, len))
}

/// The copy through a completion port; returns the bytes copied and how.
fn port_copy(a: &Args) -> Result<(u64, String), String> {
    let (src, dst, len) = open_both(a)?;
    // One thread takes every completion: concurrency 1.
    let port: Port = PortBuilder::default()
        .concurrency(1)
        .build()
        .map_err(|e| format!("cannot build the port: {e}"))?;
    let how = format!(
        "{} reads of {} B in flight, backend {}",
        a.depth,
        a.chunk,
        port.backend().backend
    );
    let sh = port
        .associate_file(src, SRC)
        .map_err(|e| format!("'{}': {e}", a.src))?;
    let dh = port
        .associate_file(dst, DST)
        .map_err(|e| format!("'{}': {e}", a.dst))?;
    let fail = |what: &str, path: &str, at: u64, e: &dyn std::fmt::Display| {
        format!("{what} '{path}' at offset {at}: {e}")
    };

    // The bytes each read in flight asked for, by offset (its token).
    let mut asked: HashMap<u64, usize> = HashMap::new();
    let mut next = 0u64; // the first offset no read has asked for yet
    let mut copied = 0u64;
    let mut busy = 0usize; // reads and writes in flight (one per buffer)
    let read_next = |buf: Vec<u8>, asked: &mut HashMap<u64, usize>, next: &mut u64| {
        let n = (len - *next).min(a.chunk as u64) as usize;
        let at = *next;
        *next += n as u64;
        asked.insert(at, n);
        port.read_at(&sh, buf, at, at)
            .map_err(|e| fail("reading", &a.src, at, &e.error))
    };
    while busy < a.depth && next < len {
        read_next(Vec::with_capacity(a.chunk), &mut asked, &mut next)?;
        busy += 1;
    }
    while busy > 0 {
        let mut c = port
            .get(None)
            .map_err(|e| format!("waiting for a completion: {e}"))?;
        let at = c.token;
        let buf = c.take_buf().expect("a read or write hands its buffer back");
        match c.key {
            SRC => {
                let want = asked.remove(&at).unwrap_or(0);
                let n = c.result.map_err(|e| fail("reading", &a.src, at, &e))?;
                if n == 0 {
                    return Err(format!(
                        "'{}' ended at offset {at}, before its {len} bytes: it shrank during the copy",
                        a.src
                    ));
                }
                if n < want {
                    // Fewer bytes than asked (the file shrank, or a read
                    // was cut): read the rest with a buffer of its own.
                    let rest = (at + n as u64, want - n);
                    asked.insert(rest.0, rest.1);
                    port.read_at(&sh, Vec::with_capacity(rest.1), rest.0, rest.0)
                        .map_err(|e| fail("reading", &a.src, rest.0, &e.error))?;
                    busy += 1;
                }
                port.write_at(&dh, buf, at, at)
                    .map_err(|e| fail("writing", &a.dst, at, &e.error))?;
            }
            _ => {
                copied += c.result.map_err(|e| fail("writing", &a.dst, at, &e))? as u64;
                busy -= 1;
                if next < len {
                    let mut v = buf.into_vec();
                    v.clear();
                    read_next(v, &mut asked, &mut next)?;
                    busy += 1;
                }
            }
        }
    }
    if copied != len {
        return Err(format!("copied {copied} of {len} bytes"));
    }
    Ok((copied, how))
}

/// The plain way: read a buffer, write it, until the end.
fn plain_loop(a: &Args) -> Result<u64, String> {
    let (mut src, mut dst, _) = open_both(a)?;
    let mut buf = vec![0u8; a.chunk];
    let mut copied = 0u64;
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| format!("reading '{}' at offset {copied}: {e}", a.src))?;
        if n == 0 {
            return Ok(copied);
        }
        dst.write_all(&buf[..n])
            .map_err(|e| format!("writing '{}' at offset {copied}: {e}", a.dst))?;
        copied += n as u64;
    }
}
