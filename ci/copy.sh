#!/usr/bin/env bash
# The copy example (crates/iocp/examples/copy.rs) on every Linux backend:
# an empty file, an odd-sized one (1 MiB + 7 bytes) and a few-MiB one, each
# checked with cmp; then the failures it must report with exit 1 (a missing
# source, a destination that cannot be created, a directory as the source).
# Part of the workspace stage of ci/test.sh.
set -uo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p completion-port --example copy || exit 1
copy=target/debug/examples/copy
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$tmp/empty"
head -c $((1048576 + 7)) /dev/urandom > "$tmp/odd"
head -c $((5 * 1048576 + 4093)) /dev/urandom > "$tmp/five"

rc=0
for backend in uring epoll; do
  for f in empty odd five; do
    for args in "" "--depth 3 --chunk 64K"; do
      rm -f "$tmp/out"
      # shellcheck disable=SC2086
      if ! out=$(IOCP_BACKEND=$backend "$copy" $args "$tmp/$f" "$tmp/out" 2>&1); then
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

# Each failure: exit 1 and a message naming the file.
expect_fail() { # what, pattern, args...
  local what=$1 pattern=$2; shift 2
  local out code
  out=$("$copy" "$@" 2>&1); code=$?
  if [ $code -ne 1 ] || [[ "$out" != *"$pattern"* ]]; then
    echo "copy.sh: $what: expected exit 1 and '$pattern', got exit $code: $out"; rc=1
  else
    echo "copy.sh: ok: $what: $out"
  fi
}
expect_fail "missing source" "cannot open source '$tmp/missing'" "$tmp/missing" "$tmp/out2"
expect_fail "unwritable destination" "cannot create destination '$tmp/no/such/dir'" "$tmp/odd" "$tmp/no/such/dir"
expect_fail "directory as source" "it is a directory" "$tmp" "$tmp/out3"
[ -e "$tmp/out3" ] && { echo "copy.sh: a refused copy created its destination"; rc=1; }
exit $rc
