#!/usr/bin/env python3
"""User-space instructions and syscalls per echoed message, of one server process.

Unlike CPU time, these counts repeat on a loaded machine, so they make a
before/after figure for a change to the server's hot path:

* instructions: the server runs under `valgrind --tool=callgrind`; its total
  instruction count (Ir) is taken at two message counts and the difference is
  divided by the difference in messages, so start-up, accepting and shutdown
  cancel out;
* syscalls: the same difference, with the server under `strace -f -c`.

The load is `iocp-echo bench` (closed loop, depth 1, one client thread, not
under valgrind). Both must be built first:

    cargo build --release -p iocp-echo
    (cd bench && cargo build --release --bin echo-raw-uring)   # for --server raw-uring
    python3 bench/instructions.py --conns 1,16 --size 64

Kernel work (most of an echo server's CPU) is not in the instruction count:
the syscall counts stand for it.
"""

import argparse
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"listening on tcp://([0-9.]+):(\d+)")


def server_argv(a, listen):
    if a.server == "iocp":
        return [a.bin, "server", "--model", a.model, "--workers", "1",
                "--listen", listen, "--idle-timeout", "off", "--drain-timeout", "5s"]
    return [a.bin, "--listen", listen]


def free_port():
    """A port nobody listens on now (the server binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(a, wrap, conns, n, env):
    """Starts the server under `wrap`, echoes `n` messages on `conns` connections, stops it."""
    listen = f"127.0.0.1:{free_port()}"
    p = subprocess.Popen(wrap + server_argv(a, listen), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    addr = None
    try:
        t0 = time.monotonic()
        out = b""
        while addr is None and time.monotonic() - t0 < 120:
            if not select.select([p.stdout], [], [], 20)[0]:
                # Valgrind (3.19) runs io_uring_enter holding its big lock: a
                # shard that blocks in the ring before the main thread printed
                # its line stalls the whole process until a completion comes.
                poke(listen)
                continue
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
            m = LINE.search(out.decode(errors="replace"))
            if m:
                addr = f"{m.group(1)}:{m.group(2)}"
        if addr is None:
            sys.exit(f"{a.server}: no 'listening on' line")
        client = [a.client, "bench", addr, "-c", str(conns), "-t", "1", "-s", str(a.size),
                  "-n", str(n), "--warmup", "0s", "--ramp", "0", "--timeout", "60s", "--json"]
        r = subprocess.run(client, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            sys.exit(f"client failed ({r.returncode}): {r.stderr[-2000:]}")
    finally:
        stop(p, addr)


def stop(p, addr):
    """SIGTERM: iocp-echo drains and exits; the raw peer dies of it. Either way
    valgrind and strace write their figures on the way out. Valgrind delivers a
    signal only at the end of a time slice, not to a thread blocked in
    `io_uring_enter`, so the server is kept busy with a little echo traffic
    until it goes (a bounded amount: at most one time slice of instructions)."""
    target = p.pid
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    if kids:  # under strace: the server is its child
        target = int(kids[0])
    os.kill(target, signal.SIGTERM)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 120:
        if addr is not None:
            poke(addr)
        try:
            p.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def poke(addr):
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            for _ in range(50):
                s.sendall(b"x" * 64)
                got = 0
                while got < 64:
                    b = s.recv(64 - got)
                    if not b:
                        return
                    got += len(b)
    except OSError:
        pass


def instructions(a, conns, n, tmp, env):
    out = os.path.join(tmp, f"cg.{conns}.{n}")
    run_once(a, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no"],
             conns, n, env)
    total = 0
    for f in os.listdir(tmp):
        if f.startswith(os.path.basename(out)):
            with open(os.path.join(tmp, f)) as fh:
                for line in fh:
                    if line.startswith("totals:") or line.startswith("summary:"):
                        total = max(total, int(line.split()[1]))
    if total == 0:
        sys.exit(f"no callgrind totals in {out}")
    return total


def syscalls(a, conns, n, tmp, env):
    out = os.path.join(tmp, f"st.{conns}.{n}")
    run_once(a, ["strace", "-f", "-c", "-U", "name,calls", "-o", out], conns, n, env)
    counts = {}
    with open(out) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and not parts[0].startswith("-"):
                counts[parts[0]] = int(parts[1])
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["iocp", "raw-uring"], default="iocp")
    ap.add_argument("--model", default="per-core", help="iocp-echo --model (default per-core)")
    ap.add_argument("--bin", help="the server binary (default: target/release/iocp-echo, or the raw peer)")
    ap.add_argument("--client", default=os.path.join(ROOT, "target", "release", "iocp-echo"))
    ap.add_argument("--conns", default="1,16", help="connection counts, comma separated")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--messages", default="2000,12000", help="the two message counts N1,N2")
    ap.add_argument("--skip", default="", help="leave out: instructions, syscalls")
    a = ap.parse_args()
    if a.bin is None:
        a.bin = (os.path.join(ROOT, "target", "release", "iocp-echo") if a.server == "iocp"
                 else os.path.join(ROOT, "bench", "target", "release", "echo-raw-uring"))
    n1, n2 = (int(x) for x in a.messages.split(","))
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("IOCP_") and a.server != "iocp":
            del env[k]
    tmp = tempfile.mkdtemp(prefix="instr-")
    try:
        for conns in (int(c) for c in a.conns.split(",")):
            label = f"{a.server}{'/' + a.model if a.server == 'iocp' else ''} {conns}x{a.size}B"
            if "instructions" not in a.skip:
                i1 = instructions(a, conns, n1, tmp, env)
                i2 = instructions(a, conns, n2, tmp, env)
                print(f"{label}: {(i2 - i1) / (n2 - n1):.0f} instructions/message "
                      f"(Ir {i1} at {n1}, {i2} at {n2})", flush=True)
            if "syscalls" not in a.skip:
                s1 = syscalls(a, conns, n1, tmp, env)
                s2 = syscalls(a, conns, n2, tmp, env)
                per = {k: (s2.get(k, 0) - s1.get(k, 0)) / (n2 - n1) for k in set(s1) | set(s2)}
                per = {k: v for k, v in per.items() if abs(v) >= 0.005 and k != "total"}
                total = sum(per.values())
                desc = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
                print(f"{label}: {total:.2f} syscalls/message ({desc})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
