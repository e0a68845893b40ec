#!/usr/bin/env bash
# The library's conformance, fastpath, smoke and teardown tests under
# ThreadSanitizer, on every Linux engine (io_uring and epoll, engine thread
# and inline): the port's queue, the engines' command queues, the buffer pool
# and teardown, raced by real threads — any data race fails the stage.
#
#   bash ci/tsan.sh
#
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (sanitizers and
# -Zbuild-std are -Z flags). The standard library is rebuilt with the
# sanitizer (-Zbuild-std, which needs the rust-src component), so its Mutex,
# Condvar, channels and thread spawn/join are visible to TSan as the
# synchronisation they are. An explicit --target keeps build scripts and
# proc-macros uninstrumented; the stage has its own target directory.
#
# opt-level 1 (debug assertions and overflow checks stay on): unoptimised
# code runs ~30x slower under TSan, enough to push the tests' 10 s I/O
# timeouts on a loaded machine (generating one 8 MiB test pattern took 25 s).
#
# Suppressions: none. io_uring's rings and buffer ring are memory the kernel
# shares with us, and TSan sees only our side of it: the io-uring crate reads
# and writes the ring heads and tails with atomics, and only the engine
# thread touches the ring entries and publishes buffers, so no access there
# can be reported. Buffers the kernel filled travel between threads only
# through the engine's command queue, the port's queue and the pool's return
# list, all behind std Mutexes that TSan understands. A suppression must
# never name a frame of our own crates; one for a third-party frame must say
# why the report is false.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
rustup component add rust-src >/dev/null 2>&1 || rustup component add rust-src

export CARGO_TARGET_DIR=${IOCP_TSAN_TARGET_DIR:-$PWD/target/tsan}
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=thread ${RUSTFLAGS:-}"
export RUSTDOCFLAGS="-Zsanitizer=thread"
export CARGO_PROFILE_DEV_OPT_LEVEL=1
# Report every race: TSan then exits 66, which fails the test binary.
export TSAN_OPTIONS=${TSAN_OPTIONS:-"halt_on_error=0 second_deadlock_stack=1"}

echo "tsan: target $target, target dir $CARGO_TARGET_DIR"
args=(-Zbuild-std -p completion-port --target "$target" --test conformance --test fastpath --test smoke --test teardown)
# Build first, and make sure every test binary really carries the TSan
# runtime (a stage that silently ran uninstrumented would prove nothing).
exes=$(cargo test "${args[@]}" --no-run --message-format=json-render-diagnostics \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[ "$(echo "$exes" | grep -c .)" -eq 4 ] || { echo "tsan: expected 4 test binaries, got: $exes"; exit 1; }
for exe in $exes; do
  nm "$exe" | grep ' T __tsan_init$' >/dev/null || { echo "tsan: $exe is not instrumented"; exit 1; }
done
cargo test "${args[@]}" --no-fail-fast -- --nocapture
