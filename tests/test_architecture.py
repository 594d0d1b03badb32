"""The shape of the package: no import cycles, and no argparse in the library.

The import graph is read from the source of the package as it is imported (compress/, and the
top-level kernels/, export/, hardware_profiles/ behind their front doors), with ast; imports
inside functions count, since a function-local import is still a dependency that doubles back.
An import of a name from a package counts as an import of that package's module (or of the
submodule, when the name is one).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRONT_DOORS = ("kernels", "export", "hardware_profiles")   # compress/<name>.py, modules in <name>/
# Standalone scripts copied into exported artifacts (they run without compress installed): they
# are programs with their own command line, not library code.
STANDALONE = {"compress.export.run_ort", "compress.export.run_tvm", "compress.export.build_trt"}
CLI = ("compress.cli", "compress.commands")


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((ROOT / "compress").rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    for name in FRONT_DOORS:
        for f in sorted((ROOT / name).rglob("*.py")):
            out[".".join(["compress", name, *f.relative_to(ROOT / name).with_suffix("").parts])] = f
    return out


def _is_package(name: str, path: Path) -> bool:
    return path.name == "__init__.py" or name in {f"compress.{n}" for n in FRONT_DOORS}


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The modules of ours that `name` imports, anywhere in its source."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if _is_package(name, path) else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, mods) for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_graph_reader_sees_function_local_and_relative_imports():
    edges = graph()
    assert "compress.errors" in edges["compress.cli"]
    assert "compress.kernels.bsr_matmul" in edges["compress.kernels.ops"]        # relative, module level
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    edges = graph()
    found = cycles(edges)
    detail = ["; ".join(f"{m} -> {sorted(edges[m] & set(c))}" for m in c) for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_no_argparse_in_the_library():
    offenders = []
    for name, path in modules().items():
        if name.startswith(CLI) or name in STANDALONE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names) or (
                    isinstance(node, ast.ImportFrom) and node.module == "argparse"):
                offenders.append(name)
    assert not offenders, f"argparse outside compress/cli.py and compress/commands/: {sorted(set(offenders))}"
