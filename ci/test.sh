#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it:
#   bash ci/test.sh
# Installs what the tests need (Debian packages: socat, netcat; the Windows
# cross toolchain and Wine), then runs, timing each stage:
#   1. the workspace tests (library conformance on every engine, server and
#      client integration tests) with cargo-nextest (cargo test without it),
#      then the doctests;
#   1b. copy: the copy example on io_uring and epoll (ci/copy.sh: an empty,
#      an odd-sized and a few-MiB file copied, each checked with cmp);
#   2. the conformance suite again with every io_uring fast path switched off;
#   3. the loom model of the port's queue;
#   4. the teardown tests under AddressSanitizer;
#   5. the conformance, fastpath, smoke and teardown tests under
#      ThreadSanitizer (ci/tsan.sh);
#   6. the soak: the release server under bench load plus churn, 15 s for
#      each engine and model (crates/iocp-echo/tests/soak.rs, --ignored);
#   7. the Windows leg: cross-build, library tests, an echo round trip and
#      the copy example (ci/copy.sh iocp) under Wine (fails if the target or Wine can't be had, unless
#      IOCP_ALLOW_SKIP_WINDOWS=1, which CI never sets);
#   8. the scale-out test: three servers behind HAProxy, two benches, one
#      server drained mid-run (ci/scaleout.sh; installs HAProxy and promtool,
#      and fails, never skips, if they cannot be had);
#   9. no module cycles in the library (ci/modules.py: the module graph read
#      from the sources; Python's standard library only).
# Set IOCP_TEST_STAGES to a subset ("workspace copy features-off loom asan
# tsan soak windows scaleout modules").
set -uo pipefail
cd "$(dirname "$0")/.."

all_stages="workspace copy features-off loom asan tsan soak windows scaleout modules"
stages=${IOCP_TEST_STAGES:-$all_stages}
failed=()
declare -A took

stage() { # name, command...
  local name=$1; shift
  case " $stages " in *" $name "*) ;; *) echo "== $name: not selected"; return 0;; esac
  echo "== stage $name: $*"
  local t0=$SECONDS
  if "$@"; then took[$name]="$((SECONDS - t0))s ok"; else
    local rc=$?; took[$name]="$((SECONDS - t0))s FAILED (exit $rc)"; failed+=("$name"); fi
  echo "== stage $name: ${took[$name]}"
}

need_pkgs() {
  local missing=()
  command -v socat >/dev/null || missing+=(socat)
  command -v nc >/dev/null || missing+=(netcat-openbsd)
  command -v prlimit >/dev/null || missing+=(util-linux)
  command -v python3 >/dev/null || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]} (run as root or install them)"; return 1
  fi
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}

workspace() {
  local rc=0
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast || rc=$?
    # nextest does not run doctests (among them the compile_fail checks of
    # the API's guarantees, e.g. that BlockingGuard is not Send).
    cargo test --workspace --doc || rc=$?
  else
    cargo test --workspace --no-fail-fast || rc=$?
  fi
  return $rc
}

features_off() {
  IOCP_NO_DEFER_TASKRUN=1 IOCP_NO_MULTISHOT_ACCEPT=1 IOCP_NO_MULTISHOT_RECV=1 \
    cargo test -p completion-port --test conformance --test smoke
}

loom() {
  RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p completion-port --test loom --release -- --nocapture
}

asan() { bash ci/asan.sh; }

modules() { python3 ci/modules.py; }

tsan() { bash ci/tsan.sh; }

# The soak cases are #[ignore]d in the normal run; --release builds the
# server binary (target/release/iocp-echo) they drive. One case at a time.
soak() {
  cargo test --release -p iocp-echo --test soak -- --ignored --nocapture --test-threads=1
}

windows() {
  bash ci/windows/run.sh
  local rc=$?
  # The copy example under Wine, on the prefix run.sh prepared.
  if [ $rc -eq 0 ]; then bash ci/copy.sh iocp || rc=$?; fi
  # Exit 3 means the cross toolchain or Wine could not be had. CI must really
  # run the Windows tests, so that fails too unless IOCP_ALLOW_SKIP_WINDOWS=1
  # (for a developer machine without apt; CI never sets it).
  if [ $rc -eq 3 ]; then
    if [ "${IOCP_ALLOW_SKIP_WINDOWS:-}" = 1 ]; then echo "SKIPPED: windows (see the line above; allowed by IOCP_ALLOW_SKIP_WINDOWS=1)"; return 0; fi
    echo "windows: the leg could not run (see the line above); set IOCP_ALLOW_SKIP_WINDOWS=1 to allow that outside CI"
  fi
  return $rc
}

stages="packages $stages"
stage packages need_pkgs
stage workspace workspace
stage copy bash ci/copy.sh uring epoll
stage features-off features_off
stage loom loom
stage asan asan
stage tsan tsan
stage soak soak
stage windows windows
stage scaleout bash ci/scaleout.sh
stage modules modules

echo
echo "== stage times"
for k in packages $all_stages; do
  [ -n "${took[$k]:-}" ] && printf '   %-13s %s\n' "$k" "${took[$k]}"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stages: ${failed[*]}"
  exit 1
fi
echo "all stages passed"
