#!/usr/bin/env bash
# An iocp-echo server/client round trip under Wine: both the server and the
# client are the Windows build (x86_64-pc-windows-gnu) of iocp-echo, on the
# native IOCP backend. Expects the environment ci/windows/run.sh sets up.
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

RUST_LOG=info timeout 120 "$WINE64" "$exe" server --listen 127.0.0.1:0 --workers 2 \
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
echo "echo-roundtrip: ok"
