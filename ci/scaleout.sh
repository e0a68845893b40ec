#!/usr/bin/env bash
# Scale-out test: three iocp-echo servers behind HAProxy, two verifying
# load generators, one server drained mid-run.
#
#   bash ci/scaleout.sh            (ci/test.sh runs it as the stage `scaleout`)
#
# * HAProxy (Debian's package, installed here; if it cannot be had the test
#   FAILS) in TCP mode, balance leastconn, health checks on each server's
#   GET /readyz, in front of three servers of mixed models and engines:
#   a = pool/uring, b = per-core/epoll, c = per-core/uring, each with
#   --metrics, --drain-delay 2s and --drain-timeout 1s;
# * `promtool check metrics` (Debian's prometheus package) on a live scrape
#   of each server, under load;
# * two `iocp-echo bench --reconnect --hist` runs through HAProxy, and a
#   bounded stream of short client connections (so new connections keep
#   arriving while server a drains);
# * mid-run, server a gets SIGTERM: its /readyz turns 503, HAProxy marks it
#   DOWN, it keeps accepting for the drain delay, then stops accepting and
#   cuts its connections at the drain timeout; the benches reconnect.
#
# Checks: HAProxy's stats socket (`show stat`) shows a got no new session
# after it was marked DOWN; both benches exit 0 (every echoed byte
# verified: zero corrupted); the reconnects of both benches add up to the
# connections a closed while draining; the bytes lost in flight are at most
# reconnects x depth x size. Prints the merged report, the connections each
# server served, the reconnect count and a's 503 window (SIGTERM to the last
# connection it accepted).
#
# Loopback only (127.0.0.1). Every loop is bounded in count and time; every
# process started here is killed on exit. IOCP_SCALEOUT_PLOT=FILE.svg also
# writes the merged run's plot (`bench merge --plot`) there;
# IOCP_SCALEOUT_KEEP=1 keeps the logs (their folder is printed).
set -uo pipefail
cd "$(dirname "$0")/.."

DELAY_MS=2000   # --drain-delay of every server
DEPTH=2         # bench --depth
SIZE_MAX=1024   # bench --size 64..SIZE_MAX
CONNS=24        # connections per bench

work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "${IOCP_SCALEOUT_KEEP:-}" ]; then echo "scaleout: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

show_logs() {
  local f
  for f in "$work"/*.err "$work"/haproxy.log; do
    [ -f "$f" ] || continue
    echo "---- $(basename "$f") (last 15 lines)"
    tail -n 15 "$f"
  done
}
fail() { echo "scaleout: FAILED: $*"; show_logs; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- packages
need() { # command package
  command -v "$1" >/dev/null && return 0
  [ "$(id -u)" = 0 ] || fail "$1 is missing (Debian package $2) and this is not root to install it"
  echo "scaleout: installing $2"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >"$work/apt.log" 2>&1; then
    apt-get update >>"$work/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >>"$work/apt.log" 2>&1 \
      || { tail -n 5 "$work/apt.log"; fail "cannot install $2"; }
  fi
  command -v "$1" >/dev/null || fail "$2 is installed but has no $1"
}
need haproxy haproxy
need promtool prometheus
need socat socat
need curl curl

cargo build -q -p iocp-echo || fail "cannot build iocp-echo"
bin="${CARGO_TARGET_DIR:-target}/debug/iocp-echo"

# ----------------------------------------------------------------- servers
declare -A spid tcp met desc
start_server() { # name model backend
  local n=$1
  RUST_LOG=info NO_COLOR=1 "$bin" server --listen 127.0.0.1:0 --metrics 127.0.0.1:0 \
    --model "$2" --backend "$3" --workers 2 --drain-delay "${DELAY_MS}ms" --drain-timeout 1s \
    >"$work/$n.out" 2>"$work/$n.err" &
  spid[$n]=$!; pids+=($!); desc[$n]="$2/$3"
  local i
  for i in $(seq 100); do
    tcp[$n]=$(sed -n 's|^listening on tcp://||p' "$work/$n.out")
    met[$n]=$(sed -n 's|^metrics on http://||p' "$work/$n.out")
    [ -n "${tcp[$n]}" ] && [ -n "${met[$n]}" ] && return 0
    kill -0 "${spid[$n]}" 2>/dev/null || fail "server $n exited at start"
    sleep 0.1
  done
  fail "server $n printed no addresses within 10 s"
}
start_server a pool uring
start_server b per-core epoll
start_server c per-core uring

# ----------------------------------------------------------------- HAProxy
sock="$work/haproxy.sock"
write_cfg() { # frontend port
  cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 1000
    stats socket $sock mode 600 level admin
    stats timeout 5s

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s

frontend echo
    bind 127.0.0.1:$1
    default_backend echoes

backend echoes
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
    server a ${tcp[a]} check port ${met[a]##*:}
    server b ${tcp[b]} check port ${met[b]##*:}
    server c ${tcp[c]} check port ${met[c]##*:}
EOF
}
hp=""
for try in $(seq 5); do
  port=$((20000 + (RANDOM % 20000)))
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue   # taken
  write_cfg "$port"
  haproxy -c -f "$work/haproxy.cfg" >"$work/haproxy.check" 2>&1 \
    || { cat "$work/haproxy.check"; fail "HAProxy rejects the configuration"; }
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  hpid=$!; pids+=($hpid)
  for _ in $(seq 50); do
    [ -S "$sock" ] && break
    sleep 0.1
  done
  if kill -0 "$hpid" 2>/dev/null && [ -S "$sock" ]; then hp=$port; break; fi
  echo "scaleout: HAProxy could not start on port $port (try $try); retrying"
done
[ -n "$hp" ] || fail "HAProxy did not start"
front="127.0.0.1:$hp"

stat() { echo "show stat" | socat -T 2 stdio "UNIX-CONNECT:$sock"; }
# field SERVER COLUMN: a column of `show stat` for one server of `echoes`.
field() {
  stat | awk -F, -v s="$1" -v col="$2" '
    NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^# /, "", h); if (h == col) c = i } }
    $1 == "echoes" && $2 == s { print $c }'
}
for _ in $(seq 100); do
  up=0
  for s in a b c; do [ "$(field "$s" status)" = UP ] && up=$((up + 1)); done
  [ $up -eq 3 ] && break
  sleep 0.1
done
[ $up -eq 3 ] || fail "HAProxy does not see all three servers UP"

# ------------------------------------------------------------------- load
for k in 1 2; do
  timeout 60 "$bin" bench "$front" -c $CONNS -t 1 --depth $DEPTH --size "64..$SIZE_MAX" \
    --duration 12s --seed $k --reconnect --hist "$work/b$k.hist" --json \
    >"$work/b$k.json" 2>"$work/b$k.err" &
  eval "bpid$k=$!"; pids+=($!)
done
# New connections all along: one short client every 50 ms (at most 400).
(
  for i in $(seq 400); do
    [ -e "$work/stop-churn" ] && break
    timeout 10 "$bin" client "$front" -m "churn $i" -q || echo "churn client $i failed" >>"$work/churn.err"
    sleep 0.05
  done
) &
cpid=$!; pids+=($cpid)

for _ in $(seq 100); do
  total=0
  for s in a b c; do total=$((total + $(field "$s" stot))); done
  [ "$total" -ge $((2 * CONNS)) ] && break
  sleep 0.1
done
[ "$total" -ge $((2 * CONNS)) ] || fail "the benches did not connect ($total sessions)"
sleep 2   # load on all three

for s in a b c; do
  curl -sf --max-time 5 "http://${met[$s]}/metrics" >"$work/$s.prom" || fail "cannot scrape $s"
  promtool check metrics <"$work/$s.prom" >"$work/$s.promtool" 2>&1 \
    || { cat "$work/$s.promtool"; fail "promtool rejects the /metrics of $s"; }
  grep -q '^iocp_echo_connections_total [1-9]' "$work/$s.prom" || fail "$s: /metrics shows no connection"
done
echo "scaleout: promtool check metrics: the live /metrics of a, b and c pass"

# ------------------------------------------------------------------ drain a
t_sig=$(now_ms)
kill -TERM "${spid[a]}"
t_503=""
for _ in $(seq 200); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://${met[a]}/readyz")
  if [ "$code" = 503 ]; then t_503=$(now_ms); break; fi
  sleep 0.01
done
[ -n "$t_503" ] || fail "a's /readyz did not turn 503 after SIGTERM"
t_down=""
for _ in $(seq 100); do
  st=$(field a status)
  if [ "${st%% *}" = DOWN ]; then t_down=$(now_ms); stot_down=$(field a stot); break; fi
  sleep 0.05
done
[ -n "$t_down" ] || fail "HAProxy did not mark a DOWN within 5 s"
for _ in $(seq 150); do
  kill -0 "${spid[a]}" 2>/dev/null || break
  sleep 0.1
done
kill -0 "${spid[a]}" 2>/dev/null && fail "a did not exit within 15 s of SIGTERM"
wait "${spid[a]}"; rc=$?
[ $rc -eq 0 ] || fail "a exited $rc after SIGTERM"

for k in 1 2; do
  eval "p=\$bpid$k"
  wait "$p"; rc=$?
  [ $rc -eq 0 ] || { cat "$work/b$k.err"; fail "bench $k exited $rc"; }
done
touch "$work/stop-churn"
wait "$cpid"
[ -s "$work/churn.err" ] && { cat "$work/churn.err"; fail "short client connections failed"; }
stot_end=$(field a stot)

# ------------------------------------------------------------------ checks
jget() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$work/b$1.json"; }
for k in 1 2; do
  grep -q '"errors":{}' "$work/b$k.json" || fail "bench $k reports errors: $(cat "$work/b$k.json")"
done
r1=$(jget 1 reconnects); r2=$(jget 2 reconnects)
l1=$(jget 1 lost_bytes); l2=$(jget 2 lost_bytes)
reconnects=$((r1 + r2)); lost=$((l1 + l2))
drain_line=$(grep 'open when the drain began' "$work/a.err" | tail -n1)
drained=$(sed -n 's/.*; drained \([0-9]*\) .*/\1/p' <<<"$drain_line")
cut=$(sed -n 's/.*, cut \([0-9]*\) .*/\1/p' <<<"$drain_line")
[ -n "$drained" ] && [ -n "$cut" ] || fail "a logged no drain summary"
closed_by_a=$((drained + cut))
after_line=$(grep 'accepted after the signal' "$work/a.err" | tail -n1)
n_after=$(sed -n 's/.*admitted_after_signal=\([0-9]*\).*/\1/p' <<<"$after_line")
last_ms=$(sed -n 's/.*last_admit_ms=\([0-9]*\).*/\1/p' <<<"$after_line")

echo
echo "== merged report (bench merge b1.hist b2.hist)"
if [ -n "${IOCP_SCALEOUT_PLOT:-}" ]; then
  "$bin" bench merge "$work/b1.hist" "$work/b2.hist" --plot "$IOCP_SCALEOUT_PLOT" || fail "bench merge --plot"
else
  "$bin" bench merge "$work/b1.hist" "$work/b2.hist" || fail "bench merge"
fi
echo
echo "== connections per server (HAProxy sessions / the server's conns_total)"
for s in a b c; do
  [ "$s" = a ] || kill -TERM "${spid[$s]}"
done
for s in b c; do
  for _ in $(seq 100); do kill -0 "${spid[$s]}" 2>/dev/null || break; sleep 0.1; done
  wait "${spid[$s]}" || fail "$s did not exit 0 after SIGTERM"
done
for s in a b c; do
  served=$(grep 'final stats' "$work/$s.err" | tail -n1 | sed -n 's/.*conns_total=\([0-9]*\).*/\1/p')
  printf '   %s  %-15s %5s sessions / %5s connections\n' "$s" "${desc[$s]}" "$(field "$s" stot)" "$served"
done
echo
echo "== reconnects"
echo "   bench 1: $r1, bench 2: $r2, total $reconnects; connections a closed while draining: $closed_by_a (drained $drained, cut $cut)"
echo "   bytes lost in flight: $lost (at most $reconnects x $DEPTH x $SIZE_MAX = $((reconnects * DEPTH * SIZE_MAX)))"
echo
echo "== 503 window of a"
echo "   SIGTERM at 0 ms; /readyz 503 seen at $((t_503 - t_sig)) ms; HAProxy marked a DOWN at $((t_down - t_sig)) ms"
if [ "${n_after:-0}" -gt 0 ]; then
  echo "   connections accepted after SIGTERM: $n_after, the last at $last_ms ms; accepts stopped at $DELAY_MS ms (drain delay)"
else
  echo "   connections accepted after SIGTERM: 0; accepts stopped at $DELAY_MS ms (drain delay)"
fi
echo "   HAProxy sessions to a: $stot_down when marked DOWN, $stot_end at the end"
echo

[ "$stot_end" = "$stot_down" ] || fail "a got $((stot_end - stot_down)) new session(s) after HAProxy marked it DOWN"
[ "$reconnects" -eq "$closed_by_a" ] || fail "reconnects ($reconnects) != connections a closed while draining ($closed_by_a)"
[ "$reconnects" -gt 0 ] || fail "no reconnect: a had no connection to cut"
[ "$lost" -le $((reconnects * DEPTH * SIZE_MAX)) ] || fail "lost $lost bytes in flight, more than reconnects x depth x size"
if [ "${n_after:-0}" -gt 0 ] && [ "$last_ms" -ge "$((t_down - t_sig + 500))" ]; then
  fail "a accepted a connection ${last_ms} ms after SIGTERM, well after HAProxy marked it DOWN"
fi
echo "scaleout: ok"
