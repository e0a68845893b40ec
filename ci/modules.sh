#!/usr/bin/env bash
# No module of the library uses a module that uses it back.
#
#   bash ci/modules.sh
#
# The graph is cargo-modules' (`cargo modules dependencies`), reduced to modules and
# their "uses" edges; `tsort` orders it and fails on a loop, naming the modules in it.
# Checked for Linux and for Windows (x86_64-pc-windows-gnu), since each builds other
# backend modules. Prints each target's modules in dependency order (ARCHITECTURE.md
# lists the same order).
#
# Why not `cargo modules dependencies --acyclic`: in cargo-modules 0.27.0 (the last
# release that builds with Rust 1.95; 0.28 needs 1.98) `--acyclic` checks the graph of
# every item whatever the --no-fns/--no-types filters say, and there a type and its own
# method form a loop ("circular dependency between `completion_port::pool::PooledBuf` and
# `completion_port::pool::PooledBuf::id`"), so it fails on any crate. The module graph it prints
# honours the filters. It sees `use` declarations and item signatures, not paths written
# inside function bodies: import what a module uses.
#
#   env IOCP_MODULES_TARGETS  targets to check (default: the host and x86_64-pc-windows-gnu)
set -uo pipefail
cd "$(dirname "$0")/.."

version=0.27.0
if ! cargo modules --version 2>/dev/null | grep -qx "cargo-modules $version"; then
  echo "[modules] installing cargo-modules $version (once; about 10 minutes of CPU)"
  cargo install cargo-modules --version "$version" --locked --quiet || {
    echo "[modules] cargo install cargo-modules failed" >&2; exit 1; }
fi

host=$(rustc -vV | sed -n 's/^host: //p')
targets=${IOCP_MODULES_TARGETS:-"$host x86_64-pc-windows-gnu"}

# Uses-edges that close a loop today, each left to the helper that owns the code; they are
# taken out before the check, so any other loop fails, and an entry whose edge is gone
# fails too (delete the line). None today.
# (cargo-modules credits an impl block to its type's module: a trait of one module
# implemented on a type of another makes the type's module use the trait's.)
known_loops=(
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
for t in $targets; do
  if ! cargo modules dependencies -p completion-port --lib --target "$t" \
      --no-externs --no-sysroot --no-fns --no-types --no-traits --no-owns \
      >"$tmp/graph.dot" 2>"$tmp/err"; then
    echo "[modules] $t: cargo modules failed:" >&2; cat "$tmp/err" >&2; failed=1; continue
  fi
  # `"a" -> "b" [label="uses", ...]` -> `a b`. Left out: edges from the crate root (its
  # re-exports; nothing uses the root back) and edges between a module and its own
  # submodules (a parent names what its children define, children use their parent's
  # shared items: one unit). Loops between any other modules fail.
  grep -F 'label="uses"' "$tmp/graph.dot" \
    | sed -E 's/^[[:space:]]*"([^"]+)" -> "([^"]+)".*/\1 \2/' \
    | awk '$1 != "completion_port" && index($2, $1 "::") != 1 && index($1, $2 "::") != 1' >"$tmp/edges"
  if [ ! -s "$tmp/edges" ]; then
    echo "[modules] $t: no edges found: the graph format changed?" >&2; failed=1; continue
  fi
  cp "$tmp/edges" "$tmp/checked"
  for k in "${known_loops[@]}"; do
    # A target builds only its own platform's modules: an entry names one platform's.
    case "$k" in *::windows::*) [ "$t" = x86_64-pc-windows-gnu ] || continue ;;
                 *) [ "$t" = x86_64-pc-windows-gnu ] && continue ;; esac
    if grep -qxF "$k" "$tmp/edges"; then
      grep -vxF "$k" "$tmp/checked" >"$tmp/next"; mv "$tmp/next" "$tmp/checked"
      echo "[modules] $t: known loop edge, left to its owner: $k"
    else
      echo "[modules] $t: the known loop edge '$k' is gone: remove it from known_loops" >&2
      failed=1
    fi
  done
  if order=$(tsort "$tmp/checked" 2>"$tmp/loop"); then
    echo "[modules] $t: $(wc -l <"$tmp/edges") uses-edges, no loop; dependency order:"
    echo "$order" | tac | sed 's/^/  /'
  else
    echo "[modules] $t: modules that use each other:" >&2
    grep -v 'input contains a loop' "$tmp/loop" | sed 's/^tsort: /  /' >&2
    failed=1
  fi
done
exit $failed
