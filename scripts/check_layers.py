#!/usr/bin/env python3
"""check_layers.py — the include rules of docs/architecture.md, checked on every source file.

Layers, lowest first: base -> kernels -> formats -> core (model and forward pass) -> methods ->
pipeline (pipeline/, sensitivity/, presets/) -> cli and tui. A file may include its own layer or a
lower one, never a higher one; every quoted include names its directory ("core/model.h"); and the
module graph (x.c + x.h + x.cu = one module) has no cycles; and the forward pass computes only through
its backend table (core/backend.h), so the files in FORWARD include no BLAS, LAPACK or CUDA header.
Exit 1 with one line per violation."""
import os, re, sys

RANK = {"base": 0, "kernels": 1, "formats": 2, "core": 3, "methods": 4,
        "pipeline": 5, "sensitivity": 5, "presets": 5, "cli": 6, "tui": 6}
FREE = {"tests", "fuzz", "bench"}  # test-side code: may include anything; product code may not include it
EXTS = (".c", ".h", ".cu", ".cuh")
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
FORWARD = {"core/infer.c", "core/infer.h", "core/ppl.c"}  # compute goes through core/backend_*.c
COMPUTE_INC = re.compile(r'^\s*#\s*include\s+<(cblas|lapacke|cuda|cublas|cusolver)[^>]*>', re.M)

def main(root):
    os.chdir(root)
    bad, edges = [], {}
    files = [os.path.join(d, f) for d in sorted(RANK) + sorted(FREE) if os.path.isdir(d)
             for f in sorted(os.listdir(d)) if f.endswith(EXTS)]
    for path in files:
        src_dir = path.split("/")[0]
        text = open(path, encoding="utf-8", errors="replace").read()
        if path in FORWARD:
            for m in COMPUTE_INC.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{path}:{line}: the forward pass calls its backend table, not <{m.group(1)}...>")
        for m in INC.finditer(text):
            inc = m.group(1)
            line = text.count("\n", 0, m.start()) + 1
            where = f"{path}:{line}"
            if "/" not in inc:
                bad.append(f'{where}: include "{inc}" does not name its directory')
                continue
            if not os.path.isfile(inc):
                bad.append(f'{where}: include "{inc}" is not a file of the tree')
                continue
            dst_dir = inc.split("/")[0]
            if dst_dir in FREE and src_dir not in FREE:
                bad.append(f'{where}: includes test/bench code "{inc}"')
            if src_dir in RANK and dst_dir in RANK and RANK[dst_dir] > RANK[src_dir]:
                bad.append(f'{where}: "{inc}" is in a higher layer ({dst_dir} > {src_dir})')
            a, b = os.path.splitext(path)[0], os.path.splitext(inc)[0]
            if a != b and src_dir in RANK:
                edges.setdefault(a, set()).add(b)
    # cycles between modules (Tarjan's strongly connected components)
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: sccs.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index: strong(v)
    for comp in sccs:
        bad.append("include cycle: {" + ", ".join(comp) + "}")
    for b in bad: print("check-layers:", b)
    if not bad:
        print(f"check-layers: {len(files)} files, {sum(len(v) for v in edges.values())} module edges, "
              "no upward include, no cycle")
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
