#!/usr/bin/env python3
"""No module of the library uses a module that uses it back.

    python3 ci/modules.py [SRC_DIR]      (default: crates/iocp/src)

Reads the library's source files and builds its module graph: one node per
module file (lib.rs is the crate root, a/mod.rs and a.rs are `a`, a/b.rs is
`a::b`), one edge for every path a module names that leads into another
module: `crate::…`, `super::…` and `self::…` paths, in `use` declarations
(braced groups expanded) and anywhere in the code. Comments and string
literals are left out, so a doc link is not a use. A path counts for the
deepest module it names (`crate::sys::uring::slot::Slot` uses
`sys::uring::slot`).

Left out, as units: edges from the crate root (its re-exports; nothing uses
the root back) and edges between a module and its own submodules (a parent
declares and re-exports its children, a child uses its parent's shared
items). Every platform's modules are read at once, so a loop is found
whatever the target. Any other loop fails, naming the modules in it; without
one, the modules are printed in dependency order (ARCHITECTURE.md lists the
same order), each after every module it uses.

Standard library only: no build, no install, a second of run time.
"""
import os
import re
import sys


def module_of(rel):
    """`sys/uring/mod.rs` -> `sys::uring`; `lib.rs` -> ``."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return "::".join(parts)


def strip(code):
    """The code without comments, string and char literals (kept as blanks)."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
        elif code.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if code.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif code.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', code[i:i + 10]) and not re.match(r"\w", code[i - 1:i] or " "):
            hashes = re.match(r'r(#*)"', code[i:]).group(1)
            end = code.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and code[i] != '"':
                i += 2 if code[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", code[i:i + 4]):
            i = code.index("'", i + 2) + 1 if code[i + 1] == "\\" else i + 3
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand(tree):
    """`a::{b, c::{d, e}}` -> [`a::b`, `a::c::d`, `a::c::e`]."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.groups()
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    return [p for it in items if it for p in expand(prefix + it)]


def kahn(nodes, edges):
    """`nodes` ordered so each comes after every node it has an edge to (ties by name)."""
    order, done = [], set()
    while len(order) < len(nodes):
        ready = sorted(n for n in nodes - done if edges.get(n, set()) & nodes <= done)
        order.append(ready[0])
        done.add(ready[0])
    return order


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "crates", "iocp", "src")
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_of(os.path.relpath(path, src))] = path
    modules = set(files)
    # A directory of modules names a module too, even with no file of its own: a/b.rs implies `a`.
    for m in list(modules):
        parts = m.split("::")
        for k in range(1, len(parts)):
            modules.add("::".join(parts[:k]))

    def deepest(segments):
        best = None
        for k in range(1, len(segments) + 1):
            cand = "::".join(segments[:k])
            if cand in modules:
                best = cand
        return best

    def resolve(me, path):
        segs = path.split("::")
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        elif segs[0] in ("super", "self"):
            # The module a file's `self` is: for a/b.rs and a/b/mod.rs alike, a::b.
            base = me.split("::") if me else []
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        else:
            return None
        return deepest(base + [s for s in segs if s and s != "*"])

    edges = {}
    for me, path in sorted(files.items()):
        code = strip(open(path, encoding="utf-8").read())
        found = set()
        for m in re.finditer(r"\buse\s+([^;]*);", code):
            for p in expand(m.group(1)):
                found.add(p)
        for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", code):
            found.add(m.group(1))
        for p in found:
            target = resolve(me, p)
            if target is None or target == me or me == "":
                continue
            if target.startswith(me + "::") or me.startswith(target + "::") or target == "":
                continue
            edges.setdefault(me, set()).add(target)

    # Tarjan's strongly connected components: any with more than one module is a loop.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules - {""}):
        if v not in index:
            visit(v)
    loops = [sorted(c) for c in sccs if len(c) > 1]
    n_edges = sum(len(t) for t in edges.values())
    if loops:
        print(f"[modules] {len(loops)} loop(s) among the library's modules:", file=sys.stderr)
        for comp in loops:
            print("  " + ", ".join(comp), file=sys.stderr)
            for a in comp:
                for b in sorted(edges.get(a, ())):
                    if b in comp:
                        print(f"    {a} uses {b}", file=sys.stderr)
        return 1
    print(f"[modules] {len(modules) - 1} modules, {n_edges} uses-edges, no loop; dependency order")
    print("[modules] (each module after every module it uses; a parent stands for its children):")
    for m in kahn(modules - {""}, edges):
        print(f"  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
