#!/usr/bin/env python3
"""File copy benchmark: `examples/copy.rs` (Richter's FileCopy on the port) against
`cp --reflink=never`, `std::fs::copy` and a plain read/write loop, page cache warm and cold.

usage: python3 bench/copy.py [--size 1G] [--rounds 3] [--dir DIR] [--depth K] [--chunk SIZE]
                             [--md FILE] [--json FILE] [--no-build]

One command builds the example (release), makes a SRC file of --size random bytes in --dir
(default target/copybench, on the repository's file system), and copies it to DST with each
method, --rounds times, in a shuffled order each round:

  port-uring, port-epoll   cargo run --release -p completion-port --example copy -- SRC DST
                           (IOCP_BACKEND=uring / epoll; --depth reads of --chunk bytes in flight)
  loop                     the same binary, --method loop: read/write with one --chunk buffer
  std                      the same binary, --method std: std::fs::copy (copy_file_range on Linux)
  cp                       cp --reflink=never SRC DST (copy_file_range: the in-kernel ceiling)

Page cache warm: SRC is read once before each copy. Cold: `sync` and
`echo 3 > /proc/sys/vm/drop_caches` before each copy (needs root; without it the cold rows say
"skipped"). After each copy DST is synced (untimed) and removed, so dirty pages of one run do
not slow the next. Each run's time is wall time around the command (process start included,
~1 ms). The table gives the median MiB/s per method, and the median of the paired ratios
(port ÷ loop, port ÷ cp, from the same round). Do not run it on a loaded machine: the numbers
are meaningless there. Python 3 standard library only.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
COPY = os.path.join(ROOT, "target", "release", "examples", "copy")
METHODS = ["port-uring", "port-epoll", "loop", "std", "cp"]


def size(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mul > 1 else s) * mul


def command(method, src, dst, args):
    tune = ["--depth", str(args.depth), "--chunk", args.chunk]
    if method == "cp":
        return ["cp", "--reflink=never", src, dst], {}
    if method.startswith("port-"):
        return [COPY, *tune, src, dst], {"IOCP_BACKEND": method[5:]}
    return [COPY, "--method", method, "--chunk", args.chunk, src, dst], {}


def can_drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def prepare(cache, src):
    if cache == "warm":
        with open(src, "rb") as f:
            while f.read(1 << 24):
                pass
    else:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def run_one(method, cache, src, dst, args):
    prepare(cache, src)
    argv, env = command(method, src, dst, args)
    t0 = time.monotonic()
    p = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    secs = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"copy.py: {method} failed (exit {p.returncode}): {p.stderr.strip()}")
    if os.path.getsize(dst) != os.path.getsize(src):
        sys.exit(f"copy.py: {method}: DST has {os.path.getsize(dst)} bytes, SRC {os.path.getsize(src)}")
    if method.startswith("port-") and f"backend {method[5:]}" not in p.stdout:
        sys.exit(f"copy.py: {method} ran on another backend: {p.stdout.strip()}")
    subprocess.run(["sync", dst], check=True)
    os.remove(dst)
    return os.path.getsize(src) / (1 << 20) / secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="SRC size: bytes, or with K, M, G (default 1G)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(ROOT, "target", "copybench"))
    ap.add_argument("--depth", type=int, default=8, help="reads in flight (port methods)")
    ap.add_argument("--chunk", default="1M", help="bytes per read (port and loop)")
    ap.add_argument("--md", help="also write the markdown table here")
    ap.add_argument("--json", help="write every run's MiB/s here")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "completion-port", "--example", "copy"],
                       cwd=ROOT, check=True)
    os.makedirs(args.dir, exist_ok=True)
    src, dst = os.path.join(args.dir, "src"), os.path.join(args.dir, "dst")
    want = size(args.size)
    if not os.path.exists(src) or os.path.getsize(src) != want:
        with open(src, "wb") as f:
            left = want
            while left:
                n = min(left, 1 << 24)
                f.write(os.urandom(n))
                left -= n
        subprocess.run(["sync", src], check=True)
    caches = ["warm", "cold"] if can_drop_caches() else ["warm"]
    runs = {(c, m): [] for c in ["warm", "cold"] for m in METHODS}
    for r in range(args.rounds):
        for cache in caches:
            order = METHODS[:]
            random.shuffle(order)
            for m in order:
                mib = run_one(m, cache, src, dst, args)
                runs[(cache, m)].append(mib)
                print(f"round {r + 1} {cache:4} {m:10} {mib:9.1f} MiB/s", file=sys.stderr)

    def med(xs):
        return statistics.median(xs) if xs else None

    def ratio(cache, a, b):
        return med([x / y for x, y in zip(runs[(cache, a)], runs[(cache, b)])])

    lines = [f"File copy, {args.size} (median of {args.rounds} rounds; depth {args.depth}, "
             f"chunk {args.chunk})", "",
             "| method | warm MiB/s | cold MiB/s |", "|---|---|---|"]
    for m in METHODS:
        cells = []
        for c in ["warm", "cold"]:
            v = med(runs[(c, m)])
            cells.append(f"{v:.0f}" if v is not None else "skipped (cannot drop caches)")
        lines.append(f"| {m} | {cells[0]} | {cells[1]} |")
    lines += ["", "| paired ratio | warm | cold |", "|---|---|---|"]
    for a, b in [("port-uring", "loop"), ("port-epoll", "loop"), ("port-uring", "cp"),
                 ("port-epoll", "cp")]:
        cells = [f"{ratio(c, a, b):.2f}" if runs[(c, a)] else "skipped" for c in ["warm", "cold"]]
        lines.append(f"| {a} ÷ {b} | {cells[0]} | {cells[1]} |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{c}/{m}": v for (c, m), v in runs.items()}, f, indent=1)
    os.remove(src)


if __name__ == "__main__":
    main()
