//! Files and pipes on the port: reads and writes at offsets, the end of a
//! file, flushes, cancel and close with operations in flight; pipes read
//! and written as streams, a peer's close, a child process's stdio; what
//! cannot be associated.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Seek};
use std::process::{Command, Stdio};
use std::time::Duration;

use completion_port::{Completion, FileHandle, OpId, OpKind, OpOptions, Port};

use crate::util::*;

/// A file in `dir` holding `content`, opened for reading and writing as a
/// port needs it, and a second descriptor of the same open file (sharing
/// its position) to look at afterwards.
fn file_with(dir: &TempDir, name: &str, content: &[u8]) -> (File, File) {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    let f = completion_port::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let probe = f.try_clone().unwrap();
    (f, probe)
}

/// A port (concurrency 4) with at most `file_threads` file threads on epoll,
/// and a file holding `content`, in a new directory named after `dir`,
/// associated with `key`.
fn pooled_file(
    t: &Target,
    file_threads: usize,
    dir: &str,
    content: &[u8],
    key: u64,
) -> (Port, TempDir, FileHandle) {
    let port = t.build(t.builder().concurrency(4).file_threads(file_threads));
    let dir = TempDir::new(dir);
    let (f, _) = file_with(&dir, "f", content);
    let fh = port.associate_file(f, key).unwrap();
    (port, dir, fh)
}

/// Takes `n` completions, by token; fails if a token comes twice.
#[track_caller]
fn take_by_token(port: &Port, n: usize) -> HashMap<u64, Completion> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let c = get(port);
        let t = c.token;
        if let Some(old) = m.insert(t, c) {
            panic!("token {t} completed twice: {}", brief(&old));
        }
    }
    m
}

/// Concurrent writes and reads at distinct offsets land where they are
/// told, whatever order they complete in; the file's own position is
/// never used or moved.
pub fn file_offsets_concurrent(t: &Target) {
    const CHUNKS: usize = 48;
    let port = t.port();
    let dir = TempDir::new("offsets");
    let (f, mut probe) = file_with(&dir, "f", &[]);
    let fh = port.associate_file(f, 5).unwrap();
    // Chunks of uneven sizes; chunk i starts at `starts[i]`.
    let sizes: Vec<usize> = (0..CHUNKS).map(|i| 1000 + (i * 7919) % 9000).collect();
    let starts: Vec<u64> = sizes
        .iter()
        .scan(0u64, |at, &n| {
            let s = *at;
            *at += n as u64;
            Some(s)
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let chunk = |i: usize| pattern(i * 31, sizes[i]);
    // Even chunks first, issued back to front.
    for i in (0..CHUNKS).step_by(2).rev() {
        port.write_at(&fh, chunk(i), starts[i], i as u64).unwrap();
    }
    let done = take_by_token(&port, CHUNKS / 2);
    for (tok, c) in &done {
        assert_eq!(c.kind, OpKind::Write, "{}", brief(c));
        assert_eq!(c.key, 5);
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&sizes[*tok as usize]),
            "{}",
            brief(c)
        );
    }
    // Then, all at once: odd chunks written while even chunks are read.
    for i in 0..CHUNKS {
        let tok = 1000 + i as u64;
        if i % 2 == 1 {
            port.write_at(&fh, chunk(i), starts[i], tok).unwrap();
        } else {
            port.read_at(&fh, Vec::with_capacity(sizes[i]), starts[i], tok)
                .unwrap();
        }
    }
    let mut done = take_by_token(&port, CHUNKS);
    for (i, size) in sizes.iter().enumerate() {
        let c = done.get_mut(&(1000 + i as u64)).unwrap();
        assert_eq!(c.result.as_ref().ok(), Some(size), "{}", brief(c));
        if i % 2 == 0 {
            assert_eq!(c.kind, OpKind::Read);
            assert!(
                c.take_buf().unwrap().as_slice() == chunk(i),
                "chunk {i} read back differs"
            );
        }
    }
    // Everything read back at once, front to back, into one buffer each.
    for i in 0..CHUNKS {
        port.read_at(
            &fh,
            vec![0u8; sizes[i]].into_boxed_slice(),
            starts[i],
            i as u64,
        )
        .unwrap();
    }
    let mut done = take_by_token(&port, CHUNKS);
    for (i, &size) in sizes.iter().enumerate() {
        let c = done.get_mut(&(i as u64)).unwrap();
        assert_eq!(c.bytes(), size);
        assert!(
            c.take_buf().unwrap().as_slice() == chunk(i),
            "chunk {i} differs"
        );
    }
    let whole = std::fs::read(dir.join("f")).unwrap();
    assert_eq!(whole.len(), total);
    for i in 0..CHUNKS {
        let s = starts[i] as usize;
        assert!(
            whole[s..s + sizes[i]] == chunk(i),
            "chunk {i} in the file differs"
        );
    }
    assert_eq!(
        probe.stream_position().unwrap(),
        0,
        "the file's own position moved"
    );
    port.close();
}

/// A read at or past the end of a file completes with 0 bytes; one that
/// crosses the end gets the bytes up to it.
pub fn file_eof_is_zero_bytes(t: &Target) {
    let port = t.port();
    let dir = TempDir::new("eof");
    let content = pattern(3, 1000);
    let (f, _) = file_with(&dir, "f", &content);
    let fh = port.associate_file(f, 1).unwrap();
    let (e, _) = file_with(&dir, "empty", &[]);
    let eh = port.associate_file(e, 2).unwrap();
    port.read_at(&fh, Vec::with_capacity(64), 1000, 1).unwrap();
    port.read_at(&fh, Vec::with_capacity(64), 1 << 40, 2)
        .unwrap();
    port.read_at(&fh, Vec::with_capacity(4096), 900, 3).unwrap();
    port.read_at(&eh, Vec::with_capacity(64), 0, 4).unwrap();
    let mut done = take_by_token(&port, 4);
    for tok in [1, 2, 4] {
        let c = done.get_mut(&tok).unwrap();
        assert_eq!(
            (c.kind, c.result.as_ref().ok()),
            (OpKind::Read, Some(&0)),
            "{}",
            brief(c)
        );
        assert!(c.take_buf().unwrap().is_empty());
    }
    let c = done.get_mut(&3).unwrap();
    assert_eq!(c.bytes(), 100, "{}", brief(c));
    assert_eq!(c.take_buf().unwrap().as_slice(), &content[900..]);
    // An offset no file can have is refused before it starts.
    let mut e = port
        .read_at(&fh, vec![1u8, 2], u64::MAX, 5)
        .expect_err("offset 2^64-1");
    assert_eq!(e.error.kind(), ErrorKind::InvalidInput);
    assert!(
        e.error.to_string().contains("18446744073709551615"),
        "{}",
        e.error
    );
    assert_eq!(e.take_buf().unwrap().as_slice(), &[1, 2]);
    no_packet(&port, Duration::from_millis(20));
    port.close();
}

/// A write past the end extends the file (the gap reads as zeros);
/// `fsync` and `fdatasync` complete with 0 bytes.
pub fn file_write_past_end_extends(t: &Target) {
    let port = t.port();
    let dir = TempDir::new("extend");
    let (f, _) = file_with(&dir, "f", b"0123456789");
    let fh = port.associate_file(f, 1).unwrap();
    port.write_at(&fh, b"end".to_vec(), 1_000_000, 1).unwrap();
    assert_eq!(get(&port).result.unwrap(), 3);
    port.fsync(&fh, 2).unwrap();
    port.fdatasync(&fh, 3).unwrap();
    let done = take_by_token(&port, 2);
    for tok in [2, 3] {
        let c = &done[&tok];
        assert_eq!(
            (c.kind, c.result.as_ref().ok()),
            (OpKind::Flush, Some(&0)),
            "{}",
            brief(c)
        );
    }
    assert_eq!(std::fs::metadata(dir.join("f")).unwrap().len(), 1_000_003);
    port.read_at(&fh, Vec::with_capacity(100), 10, 4).unwrap();
    port.read_at(&fh, Vec::with_capacity(100), 999_998, 5)
        .unwrap();
    let mut done = take_by_token(&port, 2);
    assert_eq!(
        done.get_mut(&4).unwrap().take_buf().unwrap().as_slice(),
        &[0u8; 100][..]
    );
    assert_eq!(
        done.get_mut(&5).unwrap().take_buf().unwrap().as_slice(),
        b"\0\0end"
    );
    port.close();
}

/// Cancels, deadlines and a close with many operations in flight on a
/// file (flushes among them): each operation completes exactly once — with
/// its result, aborted, or (a deadline) `TimedOut` — its buffer handed
/// back; nothing after.
pub fn file_cancel_and_close_in_flight(t: &Target) {
    const OPS: u64 = 60;
    const FLUSHES: u64 = 3;
    const CHUNK: usize = 64 * 1024;
    // One file thread on epoll, so most operations wait in its queue.
    let (port, _dir, fh) = pooled_file(t, 1, "cancel", &pattern(0, CHUNK * 16), 9);
    let mut ids: HashMap<OpId, u64> = HashMap::new();
    for tok in 0..OPS {
        let at = (tok as usize % 16 * CHUNK) as u64;
        let id = if tok % 3 == 0 {
            port.write_at(&fh, pattern(0, CHUNK), at, tok)
        } else if tok % 10 == 1 {
            let opts = OpOptions::with_timeout(tok, Duration::ZERO);
            port.read_at(&fh, Vec::with_capacity(CHUNK), at, opts)
        } else {
            port.read_at(&fh, Vec::with_capacity(CHUNK), at, tok)
        }
        .unwrap();
        ids.insert(id, tok);
    }
    // Flushes in flight too (tokens past the reads and writes; one is
    // cancelled).
    for tok in OPS..OPS + FLUSHES {
        let id = if tok % 2 == 0 {
            port.fsync(&fh, tok)
        } else {
            port.fdatasync(&fh, tok)
        }
        .unwrap();
        ids.insert(id, tok);
    }
    for (id, tok) in &ids {
        if tok % 2 == 0 {
            fh.cancel(*id).unwrap();
        }
    }
    fh.close();
    let (mut ok, mut aborted, mut timed_out) = (0, 0, 0);
    let mut seen = HashMap::new();
    for _ in 0..OPS + FLUSHES {
        let mut c = get(&port);
        assert_eq!(c.key, 9);
        assert_eq!(ids.get(&c.op), Some(&c.token), "{}", brief(&c));
        assert!(
            seen.insert(c.op, ()).is_none(),
            "completed twice: {}",
            brief(&c)
        );
        let flush = c.token >= OPS;
        assert_eq!(c.kind == OpKind::Flush, flush, "{}", brief(&c));
        assert_eq!(
            c.take_buf().is_some(),
            !flush,
            "buffer not handed back (or one for a flush): {}",
            brief(&c)
        );
        match &c.result {
            Ok(n) => {
                assert_eq!(*n, if flush { 0 } else { CHUNK }, "{}", brief(&c));
                ok += 1;
            }
            Err(_) if c.is_aborted() => aborted += 1,
            Err(e) if e.kind() == ErrorKind::TimedOut && c.token % 10 == 1 => timed_out += 1,
            Err(e) => panic!("unexpected error {e}: {}", brief(&c)),
        }
    }
    no_packet(&port, Duration::from_millis(50));
    say(format!(
        "{}: {ok} completed, {aborted} aborted, {timed_out} timed out",
        t.name()
    ));
    assert!(fh.is_closed());
    let e = port
        .read_at(&fh, Vec::with_capacity(8), 0, 99)
        .expect_err("the handle is closed");
    assert_eq!(e.error.kind(), ErrorKind::NotConnected);
    port.close();
}

/// The file pool of the epoll engine: at most `file_threads` threads,
/// its queue in `engine_stats()` (empty once everything completed);
/// io_uring runs file operations in the kernel, with no pool.
pub fn file_pool_bounded(t: &Target) {
    const OPS: u64 = 200;
    const CHUNK: usize = 256 * 1024;
    let (port, _dir, fh) = pooled_file(t, 2, "pool", &pattern(7, CHUNK * 4), 1);
    for tok in 0..OPS {
        let at = (tok as usize % 4 * CHUNK) as u64;
        port.read_at(&fh, Vec::with_capacity(CHUNK), at, tok)
            .unwrap();
    }
    let epoll = port.backend().backend == completion_port::Backend::Epoll;
    let mut max_queue = 0;
    for _ in 0..OPS {
        let s = port.engine_stats();
        max_queue = max_queue.max(s.file_queue);
        if epoll {
            assert!(
                s.file_threads <= 2,
                "{} file threads for a pool of 2",
                s.file_threads
            );
        } else {
            assert_eq!(
                (s.file_threads, s.file_queue),
                (0, 0),
                "io_uring and IOCP run no file thread"
            );
        }
        assert_eq!(get(&port).bytes(), CHUNK);
    }
    let s = port.engine_stats();
    assert_eq!(s.file_queue, 0, "{s:?}");
    if epoll {
        // (Whether the queue was seen non-empty depends on scheduling; the
        // engine's unit tests check it with calls that block.)
        assert!(
            s.file_threads >= 1,
            "threads stay until the port closes: {s:?}"
        );
    }
    say(format!("{}: longest file queue seen {max_queue}", t.name()));
    port.close();
}

/// Pipes: bytes written through the port come out of the other end in
/// order, however the writes are cut; every writer closing gives the
/// reader 0 bytes (EOF); a write after the reader closed fails with
/// `BrokenPipe`.
pub fn pipe_round_trip_and_eof(t: &Target) {
    let port = t.port();
    let (r, w) = completion_port::fs::pipe().unwrap();
    let rh = port.associate_pipe(r, 1).unwrap();
    let wh = port.associate_pipe(w, 2).unwrap();
    let msgs: Vec<Vec<u8>> = (0..8).map(|i| pattern(i, 50_000 + i * 1000)).collect();
    let expect: Vec<u8> = msgs.concat();
    for (i, m) in msgs.iter().enumerate() {
        port.write(&wh, m.clone(), 100 + i as u64).unwrap();
    }
    let mut got = Vec::new();
    let mut writes = 0;
    port.read(&rh, Vec::with_capacity(16 * 1024), 1).unwrap();
    while got.len() < expect.len() || writes < msgs.len() {
        let mut c = get(&port);
        match c.kind {
            OpKind::Write => {
                assert_eq!(c.token, 100 + writes as u64, "writes complete in order");
                assert_eq!(c.result.as_ref().ok(), Some(&msgs[writes].len()));
                writes += 1;
            }
            OpKind::Read => {
                let n = *c.result.as_ref().unwrap();
                assert!(n > 0, "EOF before the end");
                got.extend_from_slice(c.take_buf().unwrap().as_slice());
                if got.len() < expect.len() {
                    port.read(&rh, Vec::with_capacity(16 * 1024), 1).unwrap();
                }
            }
            k => panic!("unexpected {k:?}"),
        }
    }
    assert!(got == expect, "the pipe's bytes differ");
    // Two reads pending, then the only writer closes: the first gets EOF,
    // and so does the one behind it.
    port.read(&rh, Vec::with_capacity(64), 2).unwrap();
    port.read(&rh, Vec::with_capacity(64), 3).unwrap();
    wh.close();
    for tok in [2, 3] {
        let c = get(&port);
        assert_eq!(
            (c.token, c.result.as_ref().ok()),
            (tok, Some(&0)),
            "{}",
            brief(&c)
        );
    }

    let (r, w) = completion_port::fs::pipe().unwrap();
    let wh = port.associate_pipe(w, 3).unwrap();
    drop(r);
    port.write(&wh, b"nobody reads".to_vec(), 4).unwrap();
    let mut c = get(&port);
    let e = c.result.as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{}", brief(&c));
    assert_eq!(c.take_buf().unwrap().as_slice(), b"nobody reads");
    port.close();
}

/// What the Windows child (`cat_child`) writes before the bytes it copies.
pub const CAT_MARKER: &[u8] = b"== cat_child ==\n";

/// The body of the `cat_child` test in a child process: stdin to stdout,
/// then exit before the test harness writes anything else.
pub fn cat_child() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(CAT_MARKER).unwrap();
    std::io::copy(&mut std::io::stdin().lock(), &mut out).unwrap();
    out.flush().unwrap();
    std::process::exit(0);
}

/// `cat`: on Windows this test binary's `cat_child`, whose output starts
/// with the test harness's header, then [`CAT_MARKER`].
fn cat() -> Command {
    if cfg!(windows) {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["cat_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("IOCP_TEST_CAT", "1");
        c
    } else {
        Command::new("cat")
    }
}

/// A child process's stdin and stdout through the port: what is written
/// to its stdin comes back on its stdout (`cat`), and the child's exit
/// gives EOF.
pub fn pipe_child_stdio(t: &Target) {
    let port = t.port();
    let mut child = cat()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning cat");
    let ih = port.associate_pipe(child.stdin.take().unwrap(), 1).unwrap();
    let oh = port
        .associate_pipe(child.stdout.take().unwrap(), 2)
        .unwrap();
    let data = pattern(5, 300_000);
    port.write(&ih, data.clone(), 10).unwrap();
    port.read(&oh, Vec::with_capacity(32 * 1024), 20).unwrap();
    let mut got = Vec::new();
    let mut eof = false;
    while !eof {
        let mut c = get(&port);
        match c.token {
            10 => {
                assert_eq!(c.result.as_ref().ok(), Some(&data.len()), "{}", brief(&c));
                // All of it is in: close stdin, so cat ends.
                ih.close();
            }
            20 => {
                let n = *c.result.as_ref().unwrap();
                got.extend_from_slice(c.take_buf().unwrap().as_slice());
                if n == 0 {
                    eof = true;
                } else {
                    port.read(&oh, Vec::with_capacity(32 * 1024), 20).unwrap();
                }
            }
            _ => panic!("unexpected {}", brief(&c)),
        }
    }
    if cfg!(windows) {
        let at = got
            .windows(CAT_MARKER.len())
            .position(|w| w == CAT_MARKER)
            .expect("the child's marker");
        got.drain(..at + CAT_MARKER.len());
    }
    assert!(
        got == data,
        "cat's output differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
    assert!(child.wait().unwrap().success());
    port.close();
}

/// What is not a file (a directory, a pipe) is refused by
/// `associate_file`, and what is not a pipe (a regular file, a character
/// device) by `associate_pipe`, each with an error naming what it is; the
/// port goes on.
pub fn associate_refuses_other_kinds(t: &Target) {
    let port = t.port();
    let dir = TempDir::new("kinds");
    let refused = |r: std::io::Result<()>, words: &[&str]| {
        let e = r.expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let m = e.to_string();
        for w in words {
            assert!(m.contains(w), "{m:?} does not say {w:?}");
        }
    };
    let d = open_dir(dir.path());
    refused(
        port.associate_file(d, 1).map(drop),
        &["associate_file", "a directory"],
    );
    let (r, _w) = completion_port::fs::pipe().unwrap();
    let as_file = File::from(r);
    refused(
        port.associate_file(as_file, 2).map(drop),
        &["a pipe", "associate_pipe"],
    );
    let (f, _) = file_with(&dir, "f", b"x");
    refused(
        port.associate_pipe(f, 3).map(drop),
        &["associate_pipe", "a regular file", "associate_file"],
    );
    let null = File::open(if cfg!(windows) { "NUL" } else { "/dev/null" }).unwrap();
    refused(
        port.associate_pipe(null, 4).map(drop),
        &["a character device"],
    );
    if cfg!(windows) {
        // Handles opened for synchronous I/O: a file opened by std, and
        // std's anonymous pipe (CreatePipe).
        std::fs::write(dir.join("sync"), b"x").unwrap();
        let sync = File::open(dir.join("sync")).unwrap();
        refused(
            port.associate_file(sync, 5).map(drop),
            &[
                "associate_file",
                "FILE_FLAG_OVERLAPPED",
                "completion_port::fs::open",
            ],
        );
        let (r, _w) = std::io::pipe().unwrap();
        refused(
            port.associate_pipe(r, 6).map(drop),
            &[
                "associate_pipe",
                "FILE_FLAG_OVERLAPPED",
                "completion_port::fs::pipe",
            ],
        );
    }
    // The port still works.
    let (f, _) = file_with(&dir, "g", b"still");
    let fh = port.associate_file(f, 5).unwrap();
    port.read_at(&fh, Vec::with_capacity(8), 0, 6).unwrap();
    assert_eq!(get(&port).take_buf().unwrap().as_slice(), b"still");
    port.close();
}

/// A directory, opened for reading its metadata.
fn open_dir(p: &std::path::Path) -> File {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_FLAG_BACKUP_SEMANTICS: needed to open a directory.
        o.custom_flags(0x0200_0000);
    }
    o.open(p).unwrap()
}

/// Direct I/O (`O_DIRECT`): aligned buffers, lengths and offsets go through;
/// a buffer at a misaligned address, a length or an offset that is not a
/// multiple of the alignment is refused before it starts, naming the
/// alignment, its buffer handed back. The same buffers are fine on a file
/// opened without it.
pub fn file_direct_io(t: &Target) {
    use completion_port::AlignedBuf;
    let port = t.port();
    let dir = TempDir::new("direct");
    let path = dir.join("d");
    let f = match completion_port::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            say(format!(
                "{}: {} refuses O_DIRECT ({e}); direct I/O not checked here",
                t.name(),
                dir.path().display()
            ));
            return;
        }
        Err(e) => panic!("opening {} with O_DIRECT: {e}", path.display()),
    };
    let fh = port.associate_file(f, 1).unwrap();
    let data = pattern(9, 8192);
    let mut w = AlignedBuf::new(8192, 4096);
    w.extend_from_slice(&data);
    port.write_at(&fh, w, 0, 1).unwrap();
    assert_eq!(get(&port).result.unwrap(), 8192);
    port.read_at(&fh, AlignedBuf::new(8192, 4096), 4096, 2)
        .unwrap();
    let mut c = get(&port);
    assert_eq!(c.bytes(), 4096, "up to the end of the file: {}", brief(&c));
    match c.take_buf().unwrap() {
        completion_port::Buf::Aligned(a) => assert!(a[..] == data[4096..], "read back differs"),
        other => panic!("{other:?} came back for an AlignedBuf"),
    }
    let refused = |r: Result<OpId, completion_port::SubmitError>, words: &[&str]| {
        let mut e = r.expect_err("misaligned");
        assert_eq!(e.error.kind(), ErrorKind::InvalidInput, "{}", e.error);
        let m = e.error.to_string();
        assert!(m.contains("direct I/O"), "{m}");
        for w in words {
            assert!(m.contains(w), "{m:?} does not say {w:?}");
        }
        assert!(e.take_buf().is_some(), "the buffer comes back");
    };
    // The room of a buffer holding one byte starts one byte past the
    // alignment.
    let mut one = AlignedBuf::new(8192, 4096);
    one.extend_from_slice(&[1]);
    refused(
        port.read_at(&fh, one, 0, 3),
        &["read_at", "AlignedBuf", "not at a multiple of"],
    );
    let mut short = AlignedBuf::new(4096, 4096);
    short.extend_from_slice(&[2; 100]);
    refused(
        port.write_at(&fh, short, 0, 4),
        &["write_at", "the length 100"],
    );
    let mut block = AlignedBuf::new(4096, 4096);
    block.resize(4096, 3);
    refused(port.write_at(&fh, block, 100, 5), &["the offset 100"]);
    no_packet(&port, Duration::from_millis(20));
    // Without O_DIRECT nothing needs aligning.
    let (g, _) = file_with(&dir, "g", &[]);
    let gh = port.associate_file(g, 2).unwrap();
    let mut short = AlignedBuf::new(4096, 4096);
    short.extend_from_slice(&[2; 100]);
    port.write_at(&gh, short, 100, 6).unwrap();
    assert_eq!(get(&port).result.unwrap(), 100);
    port.close();
}
