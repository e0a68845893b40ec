#!/usr/bin/env bash
# Cargo runner for x86_64-pc-windows-gnu: runs a Windows test binary under Wine 8.0.
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=/abs/path/ci/windows/wine-runner.sh
#
#   env IOCP_WINEPREFIX      Wine prefix made by setup.sh. Cargo runs test binaries from the
#                            package folder, so give an absolute path (run.sh does). Default:
#                            <repo root>/target/wineprefix.
#   env IOCP_WINE_TIMEOUT    seconds per test binary (default 300); on expiry exit 124 (137 if
#                            the binary also ignored SIGTERM for 10 s).
# The binary's exit code passes through (101 for a failed libtest run). Note: Unix keeps only
# the low 8 bits, so an NTSTATUS crash code such as 0xC0000005 shows up as 5; a crash that
# Wine reports with exit 0 becomes 3.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${IOCP_WINEPREFIX:-$(dirname "$(dirname "$here")")/target/wineprefix}"

WINE64=""
for c in /usr/lib/wine/wine64 /usr/lib/x86_64-linux-gnu/wine/wine64 "$(command -v wine64 || true)"; do
  [[ -n "$c" && -x "$c" ]] && { WINE64="$c"; break; }
done
if [[ -z "$WINE64" ]]; then
  echo "wine-runner: wine64 not found; run ci/windows/setup.sh" >&2; exit 127
fi
if [[ ! -f "$prefix/drive_c/windows/system32/bcryptprimitives.dll" ]]; then
  echo "wine-runner: no prepared Wine prefix at $prefix (missing ProcessPrng shim);" \
       "run ci/windows/setup.sh with the same IOCP_WINEPREFIX" >&2
  exit 127
fi

export WINEPREFIX="$prefix" WINEDEBUG="${WINEDEBUG:--all}" WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
unset DISPLAY WAYLAND_DISPLAY

# Start Wine's session processes (services.exe, explorer.exe, winedevice.exe, ...) with stdio on
# /dev/null. Otherwise the first test binary's wine64 forks them with ITS stdout/stderr, and they
# keep those pipes open until the wineserver exits: rustdoc (doctests are run through this runner
# since Rust 1.89) waits for EOF on them, so a one-line doctest took 63 s under `wineserver -p60`.
# Costs ~0.08 s when the session is already up, ~0.9 s when it is not (paid by the test otherwise).
flock "$prefix/.iocp-wineboot.lock" "$WINE64" wineboot </dev/null >/dev/null 2>&1 || true

limit="${IOCP_WINE_TIMEOUT:-300}"
# stderr also goes through `tee` into a file: a program that dies of an unhandled exception
# (Wine prints "wine: Unhandled page fault ..." and runs its debugger) sometimes exits 0 under
# Wine 8.0, which would pass a crashed test binary.
errlog="$(mktemp)"
trap 'rm -f "$errlog"' EXIT
{ timeout --kill-after=10 "$limit" "$WINE64" "$@" 2>&1 1>&3 3>&- | tee "$errlog" >&2; rc=${PIPESTATUS[0]}; } 3>&1
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "wine-runner: TIMEOUT after ${limit}s (exit $rc): $*" >&2
elif grep -q '^wine: Unhandled' "$errlog"; then
  echo "wine-runner: the program died of an unhandled exception (exit $rc): $*" >&2
  # 70 (EX_SOFTWARE), not 3: exit 3 is the leg's "toolchain missing" code.
  [[ $rc -eq 0 ]] && rc=70
fi
exit $rc
