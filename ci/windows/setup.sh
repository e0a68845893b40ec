#!/usr/bin/env bash
# Prepare this (Debian) machine to build iocp for x86_64-pc-windows-gnu and run its tests under Wine.
# Idempotent: every step is skipped when its result is already there.
#
#   env IOCP_WINEPREFIX        Wine prefix folder (default: $PWD/target/wineprefix)
#   env IOCP_RUSTUP_TIMEOUT    seconds allowed for `rustup target add` (default 300)
#   env IOCP_APT_TIMEOUT       seconds allowed for apt-get update + install (default 900)
#
# Exit codes: 0 ready; 3 SKIPPED (toolchain could not be obtained: the caller skips the leg, loudly);
# anything else is a real failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=x86_64-pc-windows-gnu
prefix="${IOCP_WINEPREFIX:-$PWD/target/wineprefix}"
mkdir -p "$(dirname "$prefix")"
prefix="$(cd "$(dirname "$prefix")" && pwd)/$(basename "$prefix")"   # absolute
shim_dir="$(dirname "$prefix")/windows-shim"

log() { echo "[windows/setup] $*"; }
skip() { echo "SKIPPED: windows ($*)"; echo "SKIPPED: windows ($*)" >&2; exit 3; }
t_step=0
step_begin() { t_step=$SECONDS; log "$1 ..."; }
step_end() { log "$1 ($((SECONDS - t_step)) s)"; }
t_all=$SECONDS

# --- 1. Debian packages: mingw linker and Wine 8.0 --------------------------------------------
step_begin "packages"
pkgs=(gcc-mingw-w64-x86-64 wine64)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  apt_t="${IOCP_APT_TIMEOUT:-900}"
  export DEBIAN_FRONTEND=noninteractive
  log "installing ${missing[*]}"
  # Try without a refresh first (fast when the lists are current), then update and retry.
  if ! $SUDO timeout "$apt_t" apt-get install -y --no-install-recommends "${missing[@]}"; then
    $SUDO timeout "$apt_t" apt-get update || skip "apt-get update failed"
    $SUDO timeout "$apt_t" apt-get install -y --no-install-recommends "${missing[@]}" \
      || skip "apt-get install ${missing[*]} failed"
  fi
  step_end "packages installed"
else
  step_end "packages already installed"
fi

# Where Debian puts the 64-bit loader and server (wine64 package: /usr/lib/wine/).
WINE64=""
for c in /usr/lib/wine/wine64 /usr/lib/x86_64-linux-gnu/wine/wine64 "$(command -v wine64 || true)"; do
  [[ -n "$c" && -x "$c" ]] && { WINE64="$c"; break; }
done
[[ -n "$WINE64" ]] || { echo "setup: wine64 not found after install" >&2; exit 1; }
WINESERVER=""
for c in "$(dirname "$WINE64")/wineserver" "$(dirname "$WINE64")/wineserver64" "$(command -v wineserver || true)"; do
  [[ -n "$c" && -x "$c" ]] && { WINESERVER="$c"; break; }
done
[[ -n "$WINESERVER" ]] || { echo "setup: wineserver not found after install" >&2; exit 1; }
log "wine64: $WINE64 ($("$WINE64" --version 2>/dev/null || echo '?')), wineserver: $WINESERVER"

# --- 2. Rust std for the Windows target ------------------------------------------------------
step_begin "rustup target add $target"
if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  step_end "rust target already installed"
else
  if ! out="$(timeout "${IOCP_RUSTUP_TIMEOUT:-300}" rustup target add "$target" 2>&1)"; then
    echo "$out" >&2
    skip "rustup target add failed: $(echo "$out" | grep -v '^\s*$' | tail -n1)"
  fi
  echo "$out"
  step_end "rust target installed"
fi

# --- 3. ProcessPrng shim (bcryptprimitives.dll) ----------------------------------------------
step_begin "ProcessPrng shim"
dll="$shim_dir/bcryptprimitives.dll"
if [[ -f "$dll" && "$dll" -nt "$here/processprng.c" ]]; then
  step_end "shim up to date: $dll"
else
  mkdir -p "$shim_dir"
  x86_64-w64-mingw32-gcc -shared -O2 -s -static-libgcc -o "$dll.tmp" "$here/processprng.c" -ladvapi32
  mv -f "$dll.tmp" "$dll"
  step_end "shim built: $dll"
fi

# --- 4. Wine prefix --------------------------------------------------------------------------
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
unset DISPLAY WAYLAND_DISPLAY
step_begin "wine prefix $prefix"
sys32="$prefix/drive_c/windows/system32"
if [[ -f "$prefix/system.reg" && -d "$sys32" ]]; then
  step_end "wine prefix already exists"
else
  mkdir -p "$prefix"
  # stdio off the caller's pipe: Wine's session processes would otherwise hold it open.
  if ! "$WINE64" wineboot -i </dev/null >"$prefix.wineboot.log" 2>&1; then
    cat "$prefix.wineboot.log" >&2; echo "setup: wineboot -i failed" >&2; exit 1
  fi
  "$WINESERVER" -w          # wait until wineboot's processes are done and the registry is written
  [[ -d "$sys32" ]] || { echo "setup: wineboot did not create $sys32" >&2; exit 1; }
  step_end "wine prefix created"
fi
if ! cmp -s "$dll" "$sys32/bcryptprimitives.dll"; then
  cp -f "$dll" "$sys32/bcryptprimitives.dll"
  log "installed shim into $sys32"
fi

log "ready in $((SECONDS - t_all)) s (WINEPREFIX=$prefix)"
