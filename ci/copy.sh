#!/usr/bin/env bash
# The copy example (crates/iocp/examples/copy.rs) on each backend named
# (default: uring epoll): an empty file, an odd-sized one (1 MiB + 7 bytes)
# and a few-MiB one, each checked with cmp; then the failures it must report
# with exit 1 (a missing source, a destination that cannot be created, a
# directory as the source).
#
#   bash ci/copy.sh [uring] [epoll] [iocp]
#
# `iocp` cross-builds the example for x86_64-pc-windows-gnu and runs it under
# Wine (ci/windows/wine-runner.sh: the prefix ci/windows/setup.sh made). The
# copy stage of ci/test.sh runs the Linux backends, its windows stage `iocp`.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
backends=("$@")
[ ${#backends[@]} -eq 0 ] && backends=(uring epoll)

win=0
for b in "${backends[@]}"; do [ "$b" = iocp ] && win=1; done
linux=0
for b in "${backends[@]}"; do [ "$b" != iocp ] && linux=1; done
if [ $linux = 1 ]; then
  cargo build -q -p completion-port --example copy || exit 1
fi
if [ $win = 1 ]; then
  cargo build -q --target x86_64-pc-windows-gnu -p completion-port --example copy || exit 1
  export IOCP_WINEPREFIX="${IOCP_WINEPREFIX:-$PWD/target/wineprefix}"
fi
# run BACKEND ARGS...: the example on BACKEND (paths as Windows sees them
# under Wine: Z: is the Unix root).
run() {
  local b=$1; shift
  if [ "$b" = iocp ]; then
    local args=() a
    for a in "$@"; do case $a in /*) args+=("Z:$a");; *) args+=("$a");; esac; done
    IOCP_BACKEND=iocp bash ci/windows/wine-runner.sh target/x86_64-pc-windows-gnu/debug/examples/copy.exe "${args[@]}"
  else
    IOCP_BACKEND=$b target/debug/examples/copy "$@"
  fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$tmp/empty"
head -c $((1048576 + 7)) /dev/urandom > "$tmp/odd"
head -c $((5 * 1048576 + 4093)) /dev/urandom > "$tmp/five"

rc=0
for backend in "${backends[@]}"; do
  for f in empty odd five; do
    for args in "" "--depth 3 --chunk 64K"; do
      rm -f "$tmp/out"
      # shellcheck disable=SC2086
      if ! out=$(run "$backend" $args "$tmp/$f" "$tmp/out" 2>&1); then
        echo "copy.sh: $backend $f $args: exit non-zero: $out"; rc=1; continue
      fi
      if ! cmp "$tmp/$f" "$tmp/out"; then
        echo "copy.sh: $backend $f $args: the copy differs"; rc=1; continue
      fi
      case "$out" in *"backend $backend"*) ;; *)
        echo "copy.sh: $backend $f $args: ran on another backend: $out"; rc=1; continue;; esac
      echo "copy.sh: ok: $backend $f $args: $out"
    done
  done
done

# Each failure: exit 1 and a message naming the file (on the first backend).
expect_fail() { # what, pattern, args...
  local what=$1 pattern=$2; shift 2
  local out code
  out=$(run "${backends[0]}" "$@" 2>&1); code=$?
  if [ $code -ne 1 ] || [[ "$out" != *"$pattern"* ]]; then
    echo "copy.sh: $what: expected exit 1 and '$pattern', got exit $code: $out"; rc=1
  else
    echo "copy.sh: ok: $what: $out"
  fi
}
# Under Wine the example sees the paths with their drive; Windows cannot
# open a directory as a file at all, so there it is "cannot open source".
z=""; dir_says="it is a directory"
[ "${backends[0]}" = iocp ] && { z="Z:"; dir_says="cannot open source '$z$tmp'"; }
expect_fail "missing source" "cannot open source '$z$tmp/missing'" "$tmp/missing" "$tmp/out2"
expect_fail "unwritable destination" "cannot create destination '$z$tmp/no/such/dir'" "$tmp/odd" "$tmp/no/such/dir"
expect_fail "directory as source" "$dir_says" "$tmp" "$tmp/out3"
[ -e "$tmp/out3" ] && { echo "copy.sh: a refused copy created its destination"; rc=1; }
echo "copy.sh: ${backends[*]}: $((SECONDS - t0)) s"
exit $rc
