#!/usr/bin/env bash
# The teardown and smoke tests under AddressSanitizer (with LeakSanitizer):
# operations cancelled or abandoned in flight, ports closed and dropped under
# them — no use-after-free, no buffer freed while the kernel may write it, no
# leak at exit.
#
#   bash ci/asan.sh
#
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (sanitizers are a -Z flag)
# and its own target directory, so the normal build's cache is untouched.
# An explicit --target keeps build scripts and proc-macros uninstrumented.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${IOCP_ASAN_TARGET_DIR:-$PWD/target/asan}
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address ${RUSTFLAGS:-}"
export RUSTDOCFLAGS="-Zsanitizer=address"
# Leaks are errors; report the whole stack; make a failure fail the test.
export ASAN_OPTIONS=${ASAN_OPTIONS:-"detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0"}
export LSAN_OPTIONS=${LSAN_OPTIONS:-"report_objects=1"}

echo "asan: target $host, target dir $CARGO_TARGET_DIR"
cargo test -p completion-port --target "$host" --test teardown --test smoke -- --nocapture
