#!/usr/bin/env python3
"""Smoke-test the peer echo servers: start each, check echo correctness, kill it.

usage: python3 bench/verify_peers.py [BIN_DIR] [NAME...]
BIN_DIR defaults to bench/target/release; NAMEs default to every echo-* peer.
Loopback only. Exits 1 if any check fails.
"""
import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

PEERS = ["echo-tokio-ct", "echo-tokio-mt1", "echo-monoio", "echo-compio", "echo-std", "echo-raw-uring"]
LINE = re.compile(r"^listening on tcp://(\[[0-9a-f:]+\]|[0-9.]+):(\d+)$")


async def echo_check(host, port, payload, chunk=65536):
    """Send payload, half-close, read until EOF; the server must echo every byte, then close."""
    r, w = await asyncio.open_connection(host, port)

    async def send():
        for i in range(0, len(payload), chunk):
            w.write(payload[i:i + chunk])
            await w.drain()
        w.write_eof()

    sender = asyncio.create_task(send())
    got = bytearray()
    while True:
        b = await r.read(1 << 20)
        if not b:
            break
        got += b
    await sender
    w.close()
    if bytes(got) != payload:
        off = next((i for i, (a, b) in enumerate(zip(got, payload)) if a != b), min(len(got), len(payload)))
        raise AssertionError(f"echo mismatch: sent {len(payload)} got {len(got)}, first diff at {off}")


def reset_storm(host, port, n=20, size=1 << 20):
    """Clients that send a lot, never read, and reset: the server must survive."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect((host, port))
        s.setblocking(False)
        try:
            s.send(os.urandom(size))
        except BlockingIOError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("Threads:")).split()[1])


async def run_checks(host, port):
    await echo_check(host, port, b"hello, echo\n")
    await echo_check(host, port, os.urandom(1 << 20))  # 1 MiB
    await asyncio.gather(*(echo_check(host, port, os.urandom(256 * 1024 + i), chunk=4096 + i) for i in range(50)))
    reset_storm(host, port)
    await echo_check(host, port, os.urandom(1 << 20))  # still alive and correct after resets


def verify(path, listen):
    proc = subprocess.Popen([path, "--listen", listen], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().rstrip("\n")
        m = LINE.match(line)
        if not m:
            raise AssertionError(f"bad first line {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")
        host, port = m.group(1).strip("[]"), int(m.group(2))
        if port == 0:
            raise AssertionError("port 0 announced")
        t0 = threads(proc.pid)
        start = time.monotonic()
        asyncio.run(run_checks(host, port))
        took = time.monotonic() - start
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        time.sleep(0.2)  # let the server finish closing its side
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        return f"ok   {listen:<14} threads at start {t0}, now {threads(proc.pid)}; open fds after {fds}; {took:.2f}s"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().strip()
        if err:
            print(f"     stderr: {err[:300]}")


def main():
    args = sys.argv[1:]
    bindir = args.pop(0) if args and os.path.isdir(args[0]) else os.path.join(os.path.dirname(os.path.abspath(__file__)), "target", "release")
    names = args or PEERS
    failed = 0
    for name in names:
        for listen in ("127.0.0.1:0", "[::1]:0"):
            try:
                print(f"{name:<15} {verify(os.path.join(bindir, name), listen)}", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                failed += 1
                print(f"{name:<15} FAIL {listen}: {type(e).__name__}: {e}", flush=True)
    print(f"{len(names) * 2 - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
