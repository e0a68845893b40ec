#!/usr/bin/env python3
"""Side-by-side echo benchmarks: `iocp-echo server` against the peers in bench/peers.

usage: python3 bench/run.py [--quick] [--out bench/results/latest.json] [--md bench/results/latest.md]
                            [--repeats N] [--duration S] [--warmup S] [--only NAME,...]
                            [--skip matrix,openloop,memory,clients] [--no-build] [--perf SERVER]
                            [--points CxS,...] [--baseline REV]

One command builds everything (release), then runs, with every server pinned to CPU 0
(`taskset -c 0`, ours with `--workers 1`) and every load generator pinned to CPU 1:

1. closed loop, depth 1: connections {1, 16, 256, 2048} x size {64 B, 4 KiB}, servers interleaved
   (A B C ... A B C ...), >= 3 repeats, a fresh server process per run;
2. open loop at 50 % of the best async peer's closed-loop rate at 16 x 64 B (p99 etc.);
3. memory: RSS growth per idle connection at 10,000 connections, and the accept rate;
4. load generators compared against one server (iocp-echo bench, tcp-echo-benchmark, client-tokio).

`iocp-pool2-uring` (the pool model with 2 workers, on CPUs 0 and 1) runs only when named in
`--only`: it shares CPU 1 with the load generator, so its figures are contended by design.

`--baseline REV` also builds `iocp-echo` as it was at commit REV (its tree exported into a
temporary directory) and runs its servers as extra rows `iocp-…@REV`, interleaved with ours in every round;
the report then gives paired new ÷ old ratios of server CPU per message and of msgs/s.

Markdown tables go to stdout and to --md; every raw number goes to --out (JSON).
Python 3 standard library only. `--hold-client ADDR N` is the internal connection-holding client
of step 3 (a separate process, pinned to CPU 1).
"""
import argparse
import atexit
import datetime
import json
import math
import os
import platform
import random
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LINE = re.compile(r"listening on tcp://(\[[0-9a-fA-F:]+\]|[0-9.]+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU, CLIENT_CPU = "0", "1"

# name, kind, argv after the binary. Ours get --max-conns above the memory test's 10,000.
OURS = {
    f"iocp-{model}-{backend}": ["server", "--listen", "127.0.0.1:0", "--workers", "1",
                                "--model", model, "--backend", backend, "--max-conns", "30000"]
    for model in ("per-core", "pool") for backend in ("uring", "epoll")
}
# The pool model with 2 workers on both CPUs: contended (the load generator shares CPU 1), so it
# is only ever reported as such, and never run unless asked for with --only.
OURS["iocp-pool2-uring"] = ["server", "--listen", "127.0.0.1:0", "--workers", "2", "--model", "pool",
                            "--backend", "uring", "--max-conns", "30000"]
CONTENDED = {"iocp-pool2-uring": "0,1"}
PEERS = ["tokio-ct", "tokio-mt1", "monoio", "compio", "std", "raw-uring"]
ASYNC_PEERS = ["tokio-ct", "tokio-mt1", "monoio", "compio"]
ALL_SERVERS = list(OURS) + PEERS
DEFAULT_SERVERS = [s for s in ALL_SERVERS if s not in CONTENDED]


def ours(name):
    """Whether `name` is one of our servers, this build's (`iocp-pool-epoll`) or a baseline's
    (`iocp-pool-epoll@1788edf`)."""
    return name.partition("@")[0] in OURS

# ----------------------------------------------------------------------------- child processes

CHILDREN = {}  # pid -> Popen; every child runs in its own session (process group)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    CHILDREN[p.pid] = p
    return p


def kill(p, sig=signal.SIGKILL, wait=5.0):
    """Kill one child's whole process group and reap it."""
    if p is None:
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    CHILDREN.pop(p.pid, None)


def kill_all():
    for p in list(CHILDREN.values()):
        kill(p, wait=2.0)


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------- /proc helpers

def cpu_ticks(pid):
    """utime + stime of the whole process (all threads, live and exited), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def cpus_busy_ticks(cpus=(SERVER_CPU, CLIENT_CPU)):
    """Busy ticks (everything but idle and iowait) of the benchmark CPUs, from /proc/stat."""
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *v = line.split()
                if name in ("cpu" + c for c in cpus):
                    v = [int(x) for x in v[:8]]
                    total += sum(v) - v[3] - v[4]
    except OSError:
        return None
    return total


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def nfds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def interp(samples, t):
    """CPU ticks at time t, linearly interpolated between (time, ticks) samples."""
    if not samples:
        return None
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return samples[-1][1]


# ----------------------------------------------------------------------------- servers

class ServerFailed(Exception):
    pass


class Server:
    def __init__(self, name, bins, logdir):
        self.name = name
        base, at, rev = name.partition("@")
        if base in OURS:
            argv = [bins["iocp-echo" + at + rev]] + OURS[base]
        else:
            argv = [bins[f"echo-{name}"], "--listen", "127.0.0.1:0"]
        self.argv = ["taskset", "-c", CONTENDED.get(base, SERVER_CPU)] + argv
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.proc = None
        self.addr = None

    def start(self, timeout=10.0):
        log = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = spawn(self.argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                break
            r, _, _ = select.select([fd], [], [], min(left, 0.2))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        m = LINE.search(buf.decode(errors="replace"))
        if not m:
            rc = self.proc.poll()
            self.stop()
            raise ServerFailed(f"{self.name}: no 'listening on' line within {timeout:.0f}s "
                               f"(exit {rc}); stderr tail: {tail(self.log_path)!r}")
        self.addr = f"{m.group(1)}:{m.group(2)}"
        return self

    @property
    def pid(self):
        return self.proc.pid  # taskset execs the server: same pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is not None:
            self.proc.stdout.close()
            kill(self.proc)
            self.proc = None


def tail(path, n=400):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def run_load(server, argv, timeout, measured_s, poll=0.02):
    """Run one load generator (already pinned) against a started server, sampling the server's
    CPU time (and the generator's own) meanwhile. Returns (rc, stdout, stderr, (server, generator)
    CPU seconds over the last measured_s seconds before the generator exited, wall s, timed_out)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = spawn(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        samples, lsamples, bsamples = [], [], []
        timed_out = False
        while p.poll() is None:
            c, lc, bc = cpu_ticks(server.pid), cpu_ticks(p.pid), cpus_busy_ticks()
            now = time.monotonic()
            if c is not None:
                samples.append((now, c))
            if lc is not None:
                lsamples.append((now, lc))
            if bc is not None:
                bsamples.append((now, bc))
            if time.monotonic() - t0 > timeout:
                timed_out = True
                break
            time.sleep(poll)
        t_end = time.monotonic()
        c, bc = cpu_ticks(server.pid), cpus_busy_ticks()
        if c is not None:
            samples.append((t_end, c))
        if bc is not None:
            bsamples.append((t_end, bc))
        kill(p)
        out.seek(0)
        err.seek(0)
        so, se = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    def window(ss, end):
        if not ss or not measured_s:
            return None
        return (interp(ss, end) - interp(ss, end - measured_s)) / CLK_TCK
    # the generator's last sample is taken just before it exited
    srv, gen, busy = window(samples, t_end), window(lsamples, lsamples[-1][0] if lsamples else t_end), \
        window(bsamples, t_end)
    # "other": CPU time on CPUs 0 and 1 used by anything else (other users' work, kernel threads)
    other = None if None in (srv, gen, busy) else max(0.0, busy - srv - gen)
    cpu = (srv, gen, other)
    return (None if timed_out else p.returncode), so, se, cpu, t_end - t0, timed_out


def parse_json_line(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


# ----------------------------------------------------------------------------- the runner

class Runner:
    def __init__(self, args, bins, logdir):
        self.a = args
        self.bins = bins
        self.logdir = logdir
        self.failed = {}  # server -> reason (skipped from then on)
        self.data = {"runs": [], "openloop": [], "memory": [], "clients": [], "failed_servers": self.failed,
                     "notes": []}

    def servers(self):
        return [s for s in self.a.servers if s not in self.failed]

    def start(self, name):
        try:
            return Server(name, self.bins, self.logdir).start()
        except ServerFailed as e:
            self.failed[name] = str(e)
            print(f"  !! {e} -- skipping {name} from now on", file=sys.stderr, flush=True)
            return None

    def bench(self, name, conns, size, rate=None, kind="closed", rep=0):
        srv = self.start(name)
        if srv is None:
            return None
        a = self.a
        ramp = a.ramp
        argv = ["taskset", "-c", CLIENT_CPU, self.bins["iocp-echo"], "bench", srv.addr,
                "--connections", str(conns), "--threads", "1", "--size", str(size),
                "--warmup", f"{a.warmup}s", "--duration", f"{a.duration}s", "--ramp", f"{ramp}/s", "--json"]
        argv += ["--rate", f"{rate:.0f}"] if rate else ["--depth", "1"]
        timeout = conns / ramp + a.warmup + a.duration + 30
        load = open("/proc/loadavg").read().split()[0]
        rc, so, se, (cpu, lcpu, ocpu), wall, to = run_load(srv, argv, timeout, a.duration)
        alive = srv.alive()
        srv.stop()
        rep_ = parse_json_line(so)
        rec = {"kind": kind, "server": name, "connections": conns, "size": size, "rate": rate, "repeat": rep,
               "rc": rc, "timed_out": to, "wall_s": round(wall, 3), "server_cpu_s": cpu, "loadgen_cpu_s": lcpu,
               "other_cpu_s": ocpu,
               "loadavg_1m_before": float(load),
               "server_alive_after": alive, "report": rep_,
               "stderr": se.strip()[-600:] if (rc != 0 or not rep_) else ""}
        ok = rep_ is not None and not to
        msg = (f"{rep_['msgs_per_s']:>10.0f} msgs/s p99 {rep_['latency_us']['p99']:>6} us "
               f"cpu {cpu if cpu is not None else float('nan'):.2f}s load-gen {lcpu if lcpu is not None else float('nan'):.2f}s "
               f"other {ocpu if ocpu is not None else float('nan'):.2f}s"
               if ok else f"FAILED rc={rc} timeout={to}")
        bad = "" if ok and rc == 0 and alive else f"  [rc={rc} alive={alive} {se.strip()[-200:]!r}]"
        print(f"  [{kind} r{rep}] {name:<20} c={conns:<5} s={size:<5}{' rate=%d' % rate if rate else ''} "
              f"{msg}{bad}", file=sys.stderr, flush=True)
        if not alive and not self.failed.get(name):
            self.data["notes"].append(f"{name} was not alive after the run at c={conns} s={size} (crashed?): "
                                      f"{tail(srv.log_path)!r}")
        return rec

    # -- 1. closed loop matrix
    def order(self, *key):
        """The servers of one round: each once, in a seeded random order per round (unless
        --fixed-order), so that a burst of outside load does not always hit the same neighbours."""
        names = self.servers()
        if not self.a.fixed_order:
            random.Random(repr(key)).shuffle(names)
        self.data.setdefault("orders", []).append({"round": list(key), "order": names})
        return names

    def matrix(self):
        a = self.a
        for rep in range(a.repeats):
            for conns, size in a.points:
                for name in self.order("closed", rep, conns, size):
                    r = self.bench(name, conns, size, rep=rep)
                    if r:
                        self.data["runs"].append(r)

    # -- 2. open loop at 50 % of the best async peer's closed-loop rate at 16 x 64
    def openloop(self):
        best, who = 0.0, None
        for p in ASYNC_PEERS:
            v = med([r["report"]["msgs_per_s"] for r in self.data["runs"]
                     if r["server"] == p and r["connections"] == 16 and r["size"] == 64 and r["report"]])
            if v and v > best:
                best, who = v, p
        if not best:
            self.data["notes"].append("open loop skipped: no async peer closed-loop result at 16 x 64 B")
            return
        rate = 0.5 * best
        self.data["openloop_rate"] = {"rate": rate, "from": who, "closed_loop_msgs_per_s": best}
        for rep in range(self.a.repeats):
            for name in self.order("open", rep):
                r = self.bench(name, 16, 64, rate=rate, kind="open", rep=rep)
                if r:
                    self.data["openloop"].append(r)

    # -- 3. memory per idle connection and accept rate
    def memory(self):
        n = self.a.mem_conns
        for name in self.servers():
            srv = self.start(name)
            if srv is None:
                continue
            rec = {"server": name, "connections": n}
            holder = None
            try:
                time.sleep(0.3)
                rss0 = status_kb(srv.pid, "VmRSS")
                fds0 = nfds(srv.pid)
                c0 = cpu_ticks(srv.pid)
                holder = spawn(["taskset", "-c", CLIENT_CPU, sys.executable, os.path.abspath(__file__),
                                "--hold-client", srv.addr, str(n)],
                               stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
                fd = holder.stdout.fileno()
                r, _, _ = select.select([fd], [], [], 120)
                line = holder.stdout.readline().decode() if r else ""
                c1 = cpu_ticks(srv.pid)
                res = json.loads(line) if line.startswith("{") else None
                if res is None:
                    rec["error"] = f"holding client gave no result: {line!r}"
                else:
                    time.sleep(0.5)  # let the server settle (lazy frees, pending accepts)
                    rss1 = status_kb(srv.pid, "VmRSS")
                    rec.update(res)
                    rec.update({
                        "rss0_kib": rss0, "rss1_kib": rss1, "server_fds_added": (nfds(srv.pid) or 0) - (fds0 or 0),
                        "threads": status_kb(srv.pid, "Threads"),
                        "server_cpu_s_during_connect": (c1 - c0) / CLK_TCK if c0 is not None and c1 is not None else None,
                    })
                    if rss0 is not None and rss1 is not None and res["echoed"]:
                        rec["bytes_per_conn"] = (rss1 - rss0) * 1024 / res["echoed"]
                rec["server_alive"] = srv.alive()
            finally:
                srv.stop()  # the server closes first: TIME_WAIT lands on its side, not on client ports
                if holder is not None:
                    try:
                        holder.stdin.close()
                    except OSError:
                        pass
                    kill(holder, signal.SIGTERM)
            self.data["memory"].append(rec)
            bpc = rec.get("bytes_per_conn")
            print(f"  [memory] {name:<20} {rec.get('echoed', 0)}/{n} conns, "
                  f"{bpc / 1024 if bpc is not None else float('nan'):.1f} KiB/conn, "
                  f"{rec.get('accept_rate', 0):.0f} conn/s {rec.get('error', '')}", file=sys.stderr, flush=True)

    # -- 4. load generators compared against one server
    def clients(self):
        a = self.a
        name = a.client_server
        conns = 16
        d_int = max(1, int(math.ceil(a.duration)))
        tools = {
            "iocp-echo bench": lambda addr: (["taskset", "-c", CLIENT_CPU, self.bins["iocp-echo"], "bench", addr,
                                              "--connections", str(conns), "--threads", "1", "--size", "64",
                                              "--depth", "1", "--warmup", f"{a.warmup}s",
                                              "--duration", f"{a.duration}s", "--json"], a.duration),
            "client-tokio": lambda addr: (["taskset", "-c", CLIENT_CPU, self.bins["client-tokio"], addr,
                                           "--connections", str(conns), "--size", "64", "--warmup", str(a.warmup),
                                           "--duration", str(a.duration)], a.duration),
            "tcp-echo-benchmark": lambda addr: (["taskset", "-c", CLIENT_CPU, self.bins["tcp-echo-benchmark"],
                                                 "-a", addr, "-l", "64", "-c", str(conns), "-t", str(d_int)], d_int),
        }
        if not self.bins.get("tcp-echo-benchmark"):
            del tools["tcp-echo-benchmark"]
            self.data["notes"].append("tcp-echo-benchmark is not installed: left out of the client comparison")
        for rep in range(a.repeats):
            for tool, mk in tools.items():
                srv = self.start(name)
                if srv is None:
                    return
                argv, dur = mk(srv.addr)
                rc, so, se, (cpu, lcpu, ocpu), wall, to = run_load(srv, argv, a.warmup + dur + 30, dur)
                srv.stop()
                rt = None
                if tool == "tcp-echo-benchmark":
                    m = re.search(r"Total: (\d+) requests, (\d+) responses", so)
                    rt = int(m.group(2)) / dur if m else None
                else:
                    j = parse_json_line(so)
                    if j:
                        rt = j.get("msgs_per_s", j.get("round_trips_per_s"))
                rec = {"tool": tool, "server": name, "connections": conns, "size": 64, "repeat": rep, "rc": rc,
                       "timed_out": to, "round_trips_per_s": rt, "server_cpu_s": cpu, "client_cpu_s": lcpu, "other_cpu_s": ocpu, "measured_s": dur,
                       "argv": argv, "stdout": so.strip()[-400:], "stderr": se.strip()[-400:] if rc else ""}
                self.data["clients"].append(rec)
                print(f"  [clients r{rep}] {tool:<20} vs {name}: "
                      f"{rt if rt is not None else float('nan'):>10.0f} rt/s, server cpu "
                      f"{(cpu or 0) / dur * 100:.0f}% client cpu {(lcpu or 0) / dur * 100:.0f}% rc={rc}", file=sys.stderr, flush=True)

    # -- optional: perf profile of one server under 16 x 64 closed-loop load
    def perf(self, name):
        srv = self.start(name)
        if srv is None:
            return None
        a = self.a
        perf_data = os.path.join(self.a.results_dir, f"perf-{name}.data")
        dur = max(3.0, a.duration)
        load = spawn(["taskset", "-c", CLIENT_CPU, self.bins["iocp-echo"], "bench", srv.addr, "--connections", "16",
                      "--threads", "1", "--size", "64", "--depth", "1", "--warmup", "1s",
                      "--duration", f"{dur + 2}s", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-g", "-p", str(srv.pid), "-o", perf_data,
                              "--", "sleep", str(dur)], capture_output=True, text=True)
        kill(load)
        srv.stop()
        def perf_report(sort, limit):
            out = subprocess.run(["perf", "report", "-i", perf_data, "--stdio", "--no-children", "--sort", sort,
                                  "-g", "none", "--percent-limit", str(limit)], capture_output=True, text=True).stdout
            rows = []
            for line in out.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+(.*?)\s*(?:-\s+-\s*)?$", line)
                if m and not line.startswith("#"):
                    rows.append(f"{float(m.group(1)):6.2f}%  {re.sub(r'  +', '  ', m.group(2))}")
            return rows
        by_dso = perf_report("dso", 0.1)
        top = perf_report("dso,symbol", 0.5)[:30]
        user = [l for l in perf_report("dso,symbol", 0.1) if "[.]" in l][:20]
        out = os.path.join(self.a.results_dir, f"perf-{name}.txt")
        with open(out, "w") as f:
            f.write("\n".join(["# by dso"] + by_dso + ["", "# top symbols"] + top + ["", "# user-space symbols"]
                              + user) + "\n")
        return {"server": name, "data": perf_data, "report": out, "by_dso": by_dso, "top": top, "user": user,
                "record_stderr": rec.stderr.strip()[-300:]}


# ----------------------------------------------------------------------------- statistics, tables

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_rate(x):
    return "–" if x is None else (f"{x / 1e3:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M")


def fmt_ratio(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def ok_run(r):
    return r["report"] is not None and not r["timed_out"]


def cpu_us_per_msg(r, duration):
    """Server CPU µs per echoed message over the measured window, or None."""
    if not ok_run(r) or r["server_cpu_s"] is None or not r["report"]["msgs_per_s"]:
        return None
    return r["server_cpu_s"] * 1e6 / (r["report"]["msgs_per_s"] * duration)


def new_over_old(runs, new, old, conns, size, value):
    """Per repeat: value(new's run) ÷ value(old's run) at one point, the two from the same round."""
    by = {}
    for r in runs:
        if r["connections"] == conns and r["size"] == size and r["server"] in (new, old):
            v = value(r)
            if v is not None:
                by.setdefault(r["repeat"], {})[r["server"]] = v
    return [d[new] / d[old] for _, d in sorted(by.items()) if d.get(new) is not None and d.get(old)]


def run_flags(rs):
    """'!' if any run had errors, connect failures or a non-zero exit."""
    for r in rs:
        rep = r["report"] or {}
        if r["rc"] != 0 or rep.get("errors") or rep.get("connect_failures") or not r.get("server_alive_after", True):
            return " !"
    return ""


def paired(runs, ours, conns, size, against):
    """Per repeat: ours / (best of `against`) at one point, in the same repeat."""
    by = {}
    for r in runs:
        if r["connections"] == conns and r["size"] == size and ok_run(r):
            by.setdefault(r["repeat"], {})[r["server"]] = r["report"]["msgs_per_s"]
    ratios = []
    for rep, d in sorted(by.items()):
        base = [d[p] for p in against if d.get(p)]
        if ours in d and base:
            ratios.append(d[ours] / max(base))
    return ratios


def baseline_report(runs, a, servers, pts, hdr):
    """The new build against the baseline's: per server and point, new ÷ old in the same round."""
    rev = a.baseline_rev
    pairs = [(s, f"{s}@{rev}") for s in servers if s in OURS and f"{s}@{rev}" in servers]
    md = [f"## This build ÷ baseline {rev} — paired per round, median (min–max); \"all\" pools every point\n"]
    for what, value, note in (
            ("server CPU µs per message", lambda r: cpu_us_per_msg(r, a.duration),
             "below 1 = this build spends less server CPU per message"),
            ("msgs/s", lambda r: r["report"]["msgs_per_s"] if ok_run(r) else None,
             "above 1 = this build echoes more")):
        rows = []
        for new, old in pairs:
            per_point = [new_over_old(runs, new, old, c, z, value) for c, z in pts]
            rows.append([new] + [fmt_ratio(x) for x in per_point] + [fmt_ratio(sum(per_point, []))])
        md.append(f"### {what}, new ÷ old ({note})\n")
        md.append(table(hdr + ["all"], rows) + "\n")
    return "\n".join(md)


def report(data, a):
    md = []
    runs = data["runs"]
    pts = [p for p in a.points if any(r["connections"] == p[0] and r["size"] == p[1] for r in runs)]
    servers = [s for s in a.servers if any(r["server"] == s for r in runs)]
    size_s = lambda s: "64 B" if s == 64 else (f"{s // 1024} KiB" if s % 1024 == 0 else f"{s} B")
    if runs:
        md.append("## Closed loop, depth 1 — median msgs/s (server on CPU 0, load on CPU 1)\n")
        hdr = ["server"] + [f"{c}×{size_s(s)}" for c, s in pts]
        rows = []
        for s in servers:
            row = [s]
            for c, z in pts:
                rs = [r for r in runs if r["server"] == s and r["connections"] == c and r["size"] == z]
                row.append(fmt_rate(med([r["report"]["msgs_per_s"] for r in rs if ok_run(r)])) + run_flags(rs))
            rows.append(row)
        md.append(table(hdr, rows))
        md.append("\n`!` = some run of that cell had errors, connect failures, a non-zero exit or a dead server.\n")
        if a.baseline:
            md.append(baseline_report(runs, a, servers, pts, hdr))

        md.append("## Paired ratios — ours ÷ best async peer (tokio-ct, tokio-mt1, monoio, compio) in the same "
                  "repeat; median (min–max)\n")
        rows = [[o] + [fmt_ratio(paired(runs, o, c, z, ASYNC_PEERS)) for c, z in pts] for o in servers if ours(o)]
        md.append(table(hdr[:1] + hdr[1:], rows))
        md.append("\n## Server CPU µs per message (median over repeats; lower is better; less sensitive than msgs/s "
                  "to a saturated load generator)\n")
        rows = []
        for s in servers:
            row = [s]
            for c, z in pts:
                v = med([cpu_us_per_msg(r, a.duration) for r in runs
                         if r["server"] == s and r["connections"] == c and r["size"] == z])
                row.append("–" if v is None else f"{v:.2f}")
            rows.append(row)
        md.append(table(hdr, rows))
        md.append("\n## Paired ratios — ours ÷ raw-uring (the ceiling)\n")
        rows = [[o] + [fmt_ratio(paired(runs, o, c, z, ["raw-uring"])) for c, z in pts] for o in servers if ours(o)]
        md.append(table(hdr, rows))
        # which async peer was best, per point
        best = []
        for c, z in pts:
            meds = {p: med([r["report"]["msgs_per_s"] for r in runs if r["server"] == p and r["connections"] == c
                            and r["size"] == z and ok_run(r)]) for p in ASYNC_PEERS}
            meds = {k: v for k, v in meds.items() if v}
            best.append(max(meds, key=meds.get) if meds else "–")
        md.append("\nBest async peer (by median) per point: " +
                  ", ".join(f"{c}×{size_s(z)}: {b}" for (c, z), b in zip(pts, best)) + "\n")

        md.append("## Closed loop, per point — median msgs/s [min–max], median p99 µs, median CPU s of the server "
                  f"and of the load generator over the {a.duration:g} s measured window, server CPU µs per message\n")
        md.append(f"A server CPU well below {a.duration:g} s means the server was not the bottleneck: the one-thread "
                  "load generator (load-gen CPU near the window) or other work on the machine was. Then msgs/s "
                  "understates the server and server CPU µs/msg is the fairer comparison. `other CPU s` is what "
                  "everything else (other users' jobs, kernel threads) used of CPUs 0 and 1 in the window: the noise.\n")
        for c, z in pts:
            md.append(f"### {c} connections × {size_s(z)}\n")
            rows = []
            for s in servers:
                rs = [r for r in runs if r["server"] == s and r["connections"] == c and r["size"] == z]
                good = [r for r in rs if ok_run(r)]
                if not good:
                    rows.append([s, "failed", "", "", "", "", "", "", ""])
                    continue
                v = [r["report"]["msgs_per_s"] for r in good]
                cpu = med([r["server_cpu_s"] for r in good])
                lg = med([r["loadgen_cpu_s"] for r in good])
                oc = med([r.get("other_cpu_s") for r in good])
                upm = med([cpu_us_per_msg(r, a.duration) for r in good])
                rows.append([s + run_flags(rs), f"{med(v):.0f} [{min(v):.0f}–{max(v):.0f}]",
                             f"{med([r['report']['latency_us']['p99'] for r in good]):.0f}",
                             "–" if cpu is None else f"{cpu:.2f}", "–" if lg is None else f"{lg:.2f}",
                             "–" if oc is None else f"{oc:.2f}",
                             "–" if upm is None else f"{upm:.2f}",
                             fmt_ratio(paired(runs, s, c, z, ASYNC_PEERS)) if ours(s) else "",
                             fmt_ratio(paired(runs, s, c, z, ["raw-uring"])) if ours(s) else ""])
            md.append(table(["server", "msgs/s", "p99 µs", "server CPU s", "load-gen CPU s", "other CPU s", "server CPU µs/msg",
                             "÷ best async", "÷ raw-uring"],
                            rows) + "\n")

    ol = data["openloop"]
    if ol:
        info = data["openloop_rate"]
        md.append(f"## Open loop, 16 × 64 B at {info['rate']:.0f} msgs/s (50 % of {info['from']}'s closed-loop "
                  f"median {info['closed_loop_msgs_per_s']:.0f}); latency from the scheduled send time; medians over "
                  "repeats\n")
        rows = []
        for s in [s for s in a.servers if any(r["server"] == s for r in ol)]:
            rs = [r for r in ol if r["server"] == s]
            good = [r for r in rs if ok_run(r)]
            if not good:
                rows.append([s, "failed"] + [""] * 6)
                continue
            L = lambda k: f"{med([r['report']['latency_us'][k] for r in good]):.0f}"
            p99s = [r["report"]["latency_us"]["p99"] for r in good]
            cpu = med([r["server_cpu_s"] for r in good])
            rows.append([s + run_flags(rs), f"{med([r['report']['msgs_per_s'] for r in good]):.0f}", L("p50"),
                         f"{med(p99s):.0f} [{min(p99s)}–{max(p99s)}]", L("p999"), L("max"),
                         "–" if cpu is None else f"{cpu:.2f}",
                         "–" if cpu is None else f"{cpu / a.duration * 100:.0f} %"])
        md.append(table(["server", "msgs/s", "p50 µs", "p99 µs [min–max]", "p99.9 µs", "max µs", "CPU s",
                         "CPU busy"], rows) + "\n")

    mem = data["memory"]
    if mem:
        md.append(f"## Memory per idle connection ({a.mem_conns} connections, each echoed 64 B once, then idle; "
                  "server VmRSS growth ÷ connections; socket buffers in the kernel are not in RSS)\n")
        rows = []
        for r in mem:
            bpc = r.get("bytes_per_conn")
            busy = r.get("server_cpu_s_during_connect")
            rows.append([r["server"], f"{r.get('echoed', 0)}/{r['connections']}",
                         "–" if bpc is None else f"{bpc / 1024:.2f}",
                         "–" if r.get("rss0_kib") is None else f"{r['rss0_kib'] / 1024:.1f} → {r['rss1_kib'] / 1024:.1f}",
                         f"{r.get('accept_rate', 0):.0f}",
                         "–" if busy is None or not r.get("connect_s") else f"{busy / r['connect_s'] * 100:.0f} %",
                         r.get("threads", ""), r.get("error", "")])
        md.append(table(["server", "echoed/opened", "KiB/conn", "RSS MiB before → after", "accept+echo conn/s",
                         "server CPU busy while connecting", "threads", "error"], rows))
        md.append("\nThe accept rate is what one Python client (on CPU 1, 64 connects in flight) achieves "
                  "connecting, sending 64 B and reading the echo; where the server's CPU is well below 100 % "
                  "the client, not the server, is the limit.\n")

    cl = data["clients"]
    if cl:
        srv = cl[0]["server"]
        md.append(f"## Load generators against one server ({srv} on CPU 0; each client on CPU 1; 16 connections, "
                  "depth 1, 64 B)\n")
        rows = []
        for tool in dict.fromkeys(r["tool"] for r in cl):
            rs = [r for r in cl if r["tool"] == tool]
            v = [r["round_trips_per_s"] for r in rs if r["round_trips_per_s"]]
            busy = med([r["server_cpu_s"] / r["measured_s"] * 100 for r in rs if r["server_cpu_s"] is not None])
            cbusy = med([r["client_cpu_s"] / r["measured_s"] * 100 for r in rs if r.get("client_cpu_s") is not None])
            rows.append([tool, "failed" if not v else f"{med(v):.0f} [{min(v):.0f}–{max(v):.0f}]",
                         "–" if busy is None else f"{busy:.0f} %", "–" if cbusy is None else f"{cbusy:.0f} %",
                         ",".join(str(r["rc"]) for r in rs)])
        md.append(table(["client", "round trips/s median [min–max]", "server CPU busy", "client CPU busy", "exit codes"], rows))
        md.append("\n`iocp-echo bench` verifies every byte and records latency; `client-tokio` "
                  "(bench/peers/src/bin/client-tokio.rs) is a current_thread tokio loop of write_all/read_exact; "
                  "`tcp-echo-benchmark` (crates.io 0.1.1) runs tokio's multi-thread runtime (2 workers, both "
                  "on CPU 1 here), has no warm-up and whole-second durations.\n")

    for p in data.get("perf") or []:
        md.append(f"## perf: {p['server']} under 16 × 64 B closed loop (cpu-clock, self time, top symbols)\n")
        md.append("```\n# by dso\n" + "\n".join(p["by_dso"]) + "\n# top symbols\n" + "\n".join(p["top"][:20])
                  + "\n# user-space symbols\n" + "\n".join(p["user"][:12]) + "\n```\n")

    if data["failed_servers"] or data["notes"]:
        md.append("## Failures and notes\n")
        for k, v in data["failed_servers"].items():
            md.append(f"- **{k} failed to start** and was skipped: {v}")
        for n in data["notes"]:
            md.append(f"- {n}")
        md.append("")
    return "\n".join(md)


# ----------------------------------------------------------------------------- machine info, build

def machine_info(argv):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass

    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(x) for x in ["python3", os.path.relpath(os.path.abspath(argv[0]), ROOT)]
                            + argv[1:]),
        "rustc": sh(["rustc", "--version"]),
        "git": sh(["git", "rev-parse", "--short", "HEAD"]) + (" (dirty)" if sh(["git", "status", "--porcelain"]) else ""),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    }


def build(a):
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    bins = {"iocp-echo": os.path.join(target, "release", "iocp-echo")}
    for p in PEERS:
        bins[f"echo-{p}"] = os.path.join(BENCH, "target", "release", f"echo-{p}")
    bins["client-tokio"] = os.path.join(BENCH, "target", "release", "client-tokio")
    tools = os.path.join(BENCH, "target", "tools")
    bins["tcp-echo-benchmark"] = os.path.join(tools, "bin", "tcp-echo-benchmark")
    if not a.no_build:
        steps = [(["cargo", "build", "--release"], BENCH), (["cargo", "build", "--release", "-p", "iocp-echo"], ROOT)]
        if not os.path.exists(bins["tcp-echo-benchmark"]) and "clients" not in a.skip:
            steps.append((["cargo", "install", "--locked", "tcp-echo-benchmark", "--version", "0.1.1",
                           "--root", tools], BENCH))
        for cmd, cwd in steps:
            print(f"$ (cd {os.path.relpath(cwd, ROOT) or '.'} && {' '.join(cmd)})", file=sys.stderr, flush=True)
            p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if p.returncode != 0:
                if "tcp-echo-benchmark" in cmd:
                    print("  tcp-echo-benchmark could not be installed; the client comparison will leave it out",
                          file=sys.stderr)
                    continue
                sys.exit(f"build failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    if a.baseline:
        bins[f"iocp-echo@{a.baseline_rev}"] = build_baseline(a.baseline)
    for k, v in list(bins.items()):
        if not os.path.exists(v):
            if k in ("tcp-echo-benchmark",):
                bins[k] = None
            elif k == "iocp-echo":
                sys.exit(f"missing {v} (set CARGO_TARGET_DIR to where iocp-echo is built)")
            else:
                bins[k] = v  # its server will fail to start and be reported
    return bins


def git(*args):
    p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout.strip()


def build_baseline(rev):
    """`iocp-echo` (release) as it was at commit `rev`: its tree exported (`git archive`) into a
    temporary directory, removed afterwards, and built into bench/target/baseline/<commit>, which is
    kept, so the next run against the same commit builds nothing. `-p iocp-echo` names the binary's
    package at every commit (the library's package was renamed; the binary's was not)."""
    full = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    target = os.path.join(BENCH, "target", "baseline", full)
    exe = os.path.join(target, "release", "iocp-echo")
    if os.path.exists(exe):
        return exe
    tree = tempfile.mkdtemp(prefix=f"iocp-bench-{rev}-")
    try:
        archive = subprocess.Popen(["git", "archive", full], cwd=ROOT, stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", tree], stdin=archive.stdout)
        archive.stdout.close()
        if archive.wait() != 0 or untar.returncode != 0:
            sys.exit(f"could not export the tree of {rev} with git archive")
        cmd = ["cargo", "build", "--release", "--locked", "-p", "iocp-echo"]
        print(f"$ (cd <tree of {rev}> && CARGO_TARGET_DIR={os.path.relpath(target, ROOT)} {' '.join(cmd)})",
              file=sys.stderr, flush=True)
        p = subprocess.run(cmd, cwd=tree, env=dict(os.environ, CARGO_TARGET_DIR=target),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(f"baseline build failed: {' '.join(cmd)} at {rev}\n{p.stderr[-3000:]}")
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return exe


# ----------------------------------------------------------------------------- the holding client

def hold_client(addr, n, window=64, size=64, limit_s=90.0):
    """Open n connections (at most `window` handshakes in flight), send `size` bytes on each and
    read the echo; print one JSON line; then hold every socket until stdin closes."""
    host, port = addr.rsplit(":", 1)
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ep = select.epoll()
    st = {}
    held = []
    msg = b"m" * size
    started = echoed = failed = inflight = 0
    t0 = time.monotonic()
    while echoed + failed < n and time.monotonic() - t0 < limit_s:
        while inflight < window and started < n:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            st[s.fileno()] = [s, 0]  # phase 0: connecting; else bytes of echo received + 1
            ep.register(s.fileno(), select.EPOLLOUT)
            started += 1
            inflight += 1
        for fd, ev in ep.poll(1.0):
            s, got = st[fd]
            try:
                if got == 0:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.send(msg)
                    st[fd][1] = 1
                    ep.modify(fd, select.EPOLLIN)
                else:
                    b = s.recv(size)
                    if not b:
                        raise OSError("closed by peer")
                    st[fd][1] += len(b)
                    if st[fd][1] - 1 >= size:
                        ep.unregister(fd)
                        del st[fd]
                        held.append(s)
                        echoed += 1
                        inflight -= 1
            except OSError:
                ep.unregister(fd)
                del st[fd]
                s.close()
                failed += 1
                inflight -= 1
    dt = time.monotonic() - t0
    print(json.dumps({"echoed": echoed, "failed": failed, "unfinished": n - echoed - failed,
                      "connect_s": round(dt, 3), "accept_rate": echoed / dt if dt > 0 else 0}), flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    for s in held:
        s.close()


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer points, 1 repeat, 1 s runs (< 3 min)")
    ap.add_argument("--out", default=os.path.join(BENCH, "results", "latest.json"))
    ap.add_argument("--md", default=None, help="markdown output [default: --out with .md]")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--duration", type=float, help="measured seconds per run [3; quick 1]")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run [1; quick 0.5]")
    ap.add_argument("--ramp", type=float, default=5000, help="connections/s while connecting [5000]")
    ap.add_argument("--mem-conns", type=int, default=10000)
    ap.add_argument("--only", help="comma-separated servers to run (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated parts: matrix,openloop,memory,clients")
    ap.add_argument("--client-server", default="raw-uring", help="server for the client comparison")
    ap.add_argument("--perf", metavar="SERVER", help="also perf-record SERVER[,SERVER...] under 16 x 64 B "
                    "(e.g. iocp-per-core-uring,raw-uring); needs `perf` (Debian: linux-perf)")
    ap.add_argument("--fixed-order", action="store_true",
                    help="run each round's servers in the listed order, not a seeded shuffle")
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries already built (a --baseline build is still made if missing)")
    ap.add_argument("--points", dest="points_spec", metavar="CxS,...", help="closed-loop points CONNSxSIZE,... (e.g. 16x64,2048x64) "
                    "[quick: 1x64,16x64,2048x64,16x4096; else {1,16,256,2048} x {64,4096}]")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run our servers as built at commit REV, as rows iocp-…@REV interleaved "
                    "with this build's, and report new ÷ old (e.g. --baseline 1788edf)")
    ap.add_argument("--hold-client", nargs=2, metavar=("ADDR", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hold_client:
        return hold_client(a.hold_client[0], int(a.hold_client[1]))

    a.repeats = a.repeats or (1 if a.quick else 3)
    a.duration = a.duration or (1.0 if a.quick else 3.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 1.0)
    a.points = ([(1, 64), (16, 64), (2048, 64), (16, 4096)] if a.quick else
                [(c, s) for s in (64, 4096) for c in (1, 16, 256, 2048)])
    if a.points_spec:
        try:
            a.points = [tuple(int(x) for x in p.split("x")) for p in a.points_spec.split(",")]
        except ValueError:
            a.points = None
        if not a.points or any(len(p) != 2 or min(p) < 1 for p in a.points):
            ap.error(f"--points: expected CONNSxSIZE,... (e.g. 16x64), got {a.points_spec!r}")
    a.skip = set(x for x in a.skip.split(",") if x)
    a.servers = DEFAULT_SERVERS if not a.only else [s.strip() for s in a.only.split(",")]
    unknown = [s for s in a.servers if s not in ALL_SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {unknown}; known: {ALL_SERVERS}")
    if a.perf and any(n.strip() not in ALL_SERVERS for n in a.perf.split(",")):
        ap.error(f"--perf: unknown server in {a.perf!r}; known: {ALL_SERVERS}")
    if a.baseline:
        a.baseline_rev = git("rev-parse", "--short", "--verify", f"{a.baseline}^{{commit}}")
        old = [f"{s}@{a.baseline_rev}" for s in a.servers if s in OURS]
        if not old:
            ap.error("--baseline: none of our servers (iocp-…) is selected to compare")
        a.servers = a.servers + old
    a.md = a.md or os.path.splitext(a.out)[0] + ".md"
    a.results_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(a.results_dir, exist_ok=True)

    atexit.register(kill_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    t_start = time.monotonic()
    info = machine_info(sys.argv)
    t_build = time.monotonic()
    bins = build(a)
    build_s = round(time.monotonic() - t_build, 1)
    logdir = tempfile.mkdtemp(prefix="iocp-bench-logs-")
    r = Runner(a, bins, logdir)
    r.data["machine"] = info
    r.data["build_s"] = build_s
    r.data["config"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items() if k != "hold_client"}
    r.data["server_argv"] = {s: Server(s, bins, logdir).argv for s in a.servers}
    interrupted = False
    try:
        for part, fn in (("matrix", r.matrix), ("openloop", r.openloop), ("memory", r.memory),
                         ("clients", r.clients)):
            if part in a.skip:
                continue
            t = time.monotonic()
            print(f"== {part}", file=sys.stderr, flush=True)
            fn()
            r.data.setdefault("part_seconds", {})[part] = round(time.monotonic() - t, 1)
        if a.perf:
            print(f"== perf {a.perf}", file=sys.stderr, flush=True)
            r.data["perf"] = [x for x in (r.perf(n.strip()) for n in a.perf.split(",")) if x]
    except KeyboardInterrupt as e:
        interrupted = True
        print(f"\ninterrupted ({e}); writing partial results", file=sys.stderr)
    finally:
        kill_all()
    r.data["interrupted"] = interrupted
    r.data["elapsed_s"] = round(time.monotonic() - t_start, 1)
    head = (f"# iocp side-by-side echo benchmarks{' (INTERRUPTED, partial)' if interrupted else ''}\n\n"
            f"- command: `{info['command']}`\n- date: {info['date']}\n- CPU: {info['cpu']} ({info['cpus']} CPUs)\n"
            f"- kernel: {info['kernel']}\n- rustc: {info['rustc']}\n- git: {info['git']}\n"
            f"- load average at start: {' '.join(info['loadavg_at_start'])}\n"
            f"- repeats {a.repeats}, warm-up {a.warmup:g} s, measured {a.duration:g} s per run, servers "
            f"interleaved ({'fixed order' if a.fixed_order else 'each round in a seeded random order'}), a fresh server process per run; elapsed {r.data['elapsed_s']:.0f} s "
            f"(of which building {build_s:.0f} s)\n"
            f"- servers: `taskset -c 0` (ours: `--workers 1`); load: `taskset -c 1 iocp-echo bench … --threads 1 "
            f"--json`\n")
    if a.baseline:
        head += (f"- baseline: rows `…@{a.baseline_rev}` are `iocp-echo` built (release) at commit "
                 f"{a.baseline_rev}, run in the same rounds as this build's\n")
    text = head + "\n" + report(r.data, a)
    print(text)
    with open(a.md, "w") as f:
        f.write(text)
    with open(a.out, "w") as f:
        json.dump(r.data, f, indent=1)
    print(f"wrote {a.md} and {a.out} in {r.data['elapsed_s']:.0f} s", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
