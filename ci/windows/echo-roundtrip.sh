#!/usr/bin/env bash
# An iocp-echo server/client round trip under Wine: both the server and the
# client are the Windows build (x86_64-pc-windows-gnu) of iocp-echo, on the
# native IOCP backend; then the server's --metrics endpoints (served on an
# IOCP port of their own) are read from Linux over loopback. Expects the
# environment ci/windows/run.sh sets up.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$(dirname "$(dirname "$here")")"

cargo build --target x86_64-pc-windows-gnu -p iocp-echo || exit 1
exe="${CARGO_TARGET_DIR:-target}/x86_64-pc-windows-gnu/debug/iocp-echo.exe"
# wine64 directly, not the cargo runner: the runner's `wineboot` step waits
# while another Wine program (the server) runs.
: "${WINE64:?run this from ci/windows/run.sh}"
log=$(mktemp -d)
trap 'kill "$spid" 2>/dev/null; rm -rf "$log"' EXIT

RUST_LOG=info timeout 120 "$WINE64" "$exe" server --listen 127.0.0.1:0 --workers 2 --metrics 127.0.0.1:0 \
  >"$log/out" 2>"$log/err" &
spid=$!
addr=""
for _ in $(seq 1 200); do
  addr=$(sed -n 's|^listening on tcp://||p' "$log/out" | head -n1)
  [[ -n "$addr" ]] && break
  sleep 0.1
done
if [[ -z "$addr" ]]; then
  echo "echo-roundtrip: the server printed no address"; cat "$log/out" "$log/err"; exit 1
fi
echo "echo-roundtrip: server (Wine) on $addr; backend line: $(grep -m1 -io 'backend[^,]*' "$log/err" || true)"
if ! grep -qi "iocp" "$log/err"; then
  echo "echo-roundtrip: the server's start-up log does not name the iocp backend"; cat "$log/err"; exit 1
fi
out=$(timeout 60 "$WINE64" "$exe" client "$addr" --message "hello from wine" --count 50 2>&1)
rc=$?
echo "$out" | tail -n 3
if [[ $rc -ne 0 ]]; then echo "echo-roundtrip: client exit $rc"; exit 1; fi

# GET over a bash /dev/tcp socket: prints the whole reply.
http() { # host:port method path
  local host=${1%:*} port=${1##*:}
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf '%s %s HTTP/1.1\r\nHost: %s\r\n\r\n' "$2" "$3" "$1" >&3
    timeout 10 cat <&3
  )
}
maddr=$(sed -n 's|^metrics on http://||p' "$log/out" | head -n1)
[[ -n "$maddr" ]] || { echo "echo-roundtrip: no 'metrics on' line"; cat "$log/out"; exit 1; }
m=$(http "$maddr" GET /metrics | tr -d '\r')
for want in 'HTTP/1.1 200 OK' 'iocp_echo_build_info{version=' 'backend="iocp"' \
  'iocp_echo_connections_total 1' 'iocp_echo_handled_completions_total{worker="1"}' \
  'iocp_echo_engine_completions_total{shard="0"}' 'process_resident_memory_bytes ' 'process_open_fds '; do
  grep -qF "$want" <<<"$m" || { echo "echo-roundtrip: /metrics under Wine lacks: $want"; echo "$m"; exit 1; }
done
rss=$(sed -n 's/^process_resident_memory_bytes //p' <<<"$m")
fds=$(sed -n 's/^process_open_fds //p' <<<"$m")
# The handle count may be 0 here: older Wine stubs ProcessHandleCount (the
# query behind GetProcessHandleCount) with a 0; Windows counts them.
[[ "$rss" -gt 1000000 && "$fds" -ge 0 ]] || { echo "echo-roundtrip: RSS $rss, handles $fds"; exit 1; }
r=$(http "$maddr" GET /readyz | tr -d '\r')
grep -q '^HTTP/1.1 200' <<<"$r" || { echo "echo-roundtrip: /readyz under Wine: $r"; exit 1; }
r=$(http "$maddr" POST /readyz | tr -d '\r')
grep -q '^HTTP/1.1 405' <<<"$r" || { echo "echo-roundtrip: POST /readyz under Wine: $r"; exit 1; }
echo "echo-roundtrip: /metrics, /readyz and 405 under Wine ok (working set $rss bytes, $fds handles)"
echo "echo-roundtrip: ok"
