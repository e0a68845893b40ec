#!/usr/bin/env bash
# Windows test leg: cross-build for x86_64-pc-windows-gnu and run the tests under Wine 8.0.
#
#   bash ci/windows/run.sh [extra libtest args...]
#
#   env IOCP_WIN_PACKAGES    space-separated cargo packages to test (default: "completion-port")
#   env IOCP_WIN_CARGO_ARGS  extra cargo args before `--` (default: empty), e.g. "--release"
#   env IOCP_WIN_TEST_ARGS   libtest args after `--` (default: "--test-threads=1"); positional
#                            arguments to this script are appended to them
#   env IOCP_WINEPREFIX      Wine prefix (default: <repo root>/target/wineprefix)
#   env IOCP_WINE_TIMEOUT    seconds per test binary (default 300)
#
# Exit codes: cargo's (0 pass, 101 test failure, ...); 3 when the leg is SKIPPED because the
# toolchain could not be obtained (setup prints a `SKIPPED: windows (...)` line).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${IOCP_REPO_ROOT:-$(dirname "$(dirname "$here")")}"
cd "$root"
export IOCP_WINEPREFIX="${IOCP_WINEPREFIX:-$root/target/wineprefix}"
case "$IOCP_WINEPREFIX" in /*) ;; *) IOCP_WINEPREFIX="$root/$IOCP_WINEPREFIX" ;; esac

t0=$SECONDS
bash "$here/setup.sh"
rc=$?
if [[ $rc -ne 0 ]]; then
  [[ $rc -eq 3 ]] && echo "SKIPPED: windows leg (see setup output above)" || echo "windows/setup.sh failed (exit $rc)" >&2
  exit $rc
fi
echo "[windows/run] setup took $((SECONDS - t0)) s"

# Same server as the runner uses; keep it alive between test binaries, and kill it at the end
# so a failing or hanging test leaves no Wine processes behind.
WINE64=""
for c in /usr/lib/wine/wine64 /usr/lib/x86_64-linux-gnu/wine/wine64 "$(command -v wine64 || true)"; do
  [[ -n "$c" && -x "$c" ]] && { WINE64="$c"; break; }
done
WINESERVER="$(dirname "$WINE64")/wineserver"
[[ -x "$WINESERVER" ]] || WINESERVER="$(command -v wineserver || echo wineserver)"
export WINE64
export WINEPREFIX="$IOCP_WINEPREFIX" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
unset DISPLAY WAYLAND_DISPLAY
# Note: `-p60` (no space). Exits 2 when a server already runs for this prefix.
"$WINESERVER" -p60 || true
trap '"$WINESERVER" -k 2>/dev/null || true' EXIT
# Start the Wine session processes now, detached from our stdout (the runner does it too; see there).
"$WINE64" wineboot </dev/null >/dev/null 2>&1 || true

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$here/wine-runner.sh"

pkg_args=()
for p in ${IOCP_WIN_PACKAGES:-completion-port}; do pkg_args+=(-p "$p"); done
# shellcheck disable=SC2206
cargo_extra=(${IOCP_WIN_CARGO_ARGS:-})
# shellcheck disable=SC2206
test_args=(${IOCP_WIN_TEST_ARGS:---test-threads=1} "$@")

t1=$SECONDS
echo "[windows/run] cargo test --target x86_64-pc-windows-gnu ${pkg_args[*]} ${cargo_extra[*]} -- ${test_args[*]}"
cargo test --target x86_64-pc-windows-gnu "${pkg_args[@]}" "${cargo_extra[@]}" -- "${test_args[@]}"
rc=$?
echo "[windows/run] cargo test exit $rc after $((SECONDS - t1)) s (total $((SECONDS - t0)) s)"
[[ $rc -ne 0 ]] && exit $rc

# The product must build for Windows without warnings, and its server and
# client must talk to each other there.
if [[ -z "${IOCP_REPO_ROOT:-}" ]]; then
  t2=$SECONDS
  echo "[windows/run] cargo clippy --target x86_64-pc-windows-gnu -p completion-port -p iocp-echo --all-targets -- -D warnings"
  cargo clippy --target x86_64-pc-windows-gnu -p completion-port -p iocp-echo --all-targets -- -D warnings || exit 1
  echo "[windows/run] clippy took $((SECONDS - t2)) s"
  t3=$SECONDS
  bash "$here/echo-roundtrip.sh" || exit 1
  echo "[windows/run] echo round trip under Wine took $((SECONDS - t3)) s"
fi
exit 0
