"""Architecture checks of kdrun's modules (docs/ARCHITECTURE.md draws what they check):

- layers: a package imports only packages on floors below its own (LAYERS, top to bottom);
- no module imports through its own package's ``__init__`` (``from kdrun.pkg import x``
  inside kdrun/pkg/): siblings are imported by full path, so importing one module never
  drags in, or cycles back through, the rest of its package;
- no import cycle among modules, and no kdrun import inside a function or after code;
- no function longer than MAX_LINES, except the few in LONG_ALLOWED (each with its reason).

Exit 1 on any violation.

    python scripts/check_architecture.py [--longest N]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kdrun"

# Floors, top to bottom ("kdrun": the root package's __init__).
LAYERS: list[set[str]] = [
    {"__main__"},  # python -m kdrun
    {"cli"},
    {"experiments"},  # experiment kinds and what they share (context, analyses, job)
    {"commands", "condense", "report", "trackers"},
    {"tasks"},
    {"methods"},
    {"config", "engine"},
    {"data", "models"},
    {"store"},
    # conf/ read as plain files (names, one-liners, versions) and kdrun.log's logger: both
    # without torch or Hydra, so that --help and a typo answer at once
    {"catalog", "runlog"},
    {"errors", "kdrun"},
]
MAX_LINES = 60
# Functions allowed above MAX_LINES, with why.
LONG_ALLOWED: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from kdrun.x import y` may import the submodule kdrun.x.y
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def graph(modules: dict[str, ast.Module]) -> tuple[dict[str, set[str]], list[str]]:
    """Edges between kdrun modules (top-level imports), and the misplaced imports found."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    misplaced = []
    for name, tree in modules.items():
        top = set(map(id, tree.body))
        seen_code = False
        for node in tree.body:
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)):
                seen_code = True
            elif seen_code and any(i.startswith("kdrun") for i in imported(node)):
                misplaced.append(f"{name}:{node.lineno} import after code")
        for node in ast.walk(tree):
            targets = [i for i in imported(node) if i.split(".")[0] == "kdrun"]
            if targets and id(node) not in top:
                misplaced.append(f"{name}:{node.lineno} import inside a function or block")
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges, misplaced


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def is_package_init(child: str, parent: str) -> bool:
    """A package's __init__ importing its own submodules (registration) is not a cycle."""
    return child.startswith(parent + ".")


def top_package(module: str) -> str:
    """kdrun.engine.loop -> engine; kdrun.errors -> errors; kdrun -> kdrun."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kdrun"


def floor(package: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if package in layer), None)


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """Imports of a package on the same floor or above, and packages on no floor."""
    out = []
    for src, targets in sorted(edges.items()):
        a = top_package(src)
        if floor(a) is None:
            out.append(f"{src}: package '{a}' is on no floor of LAYERS (add it, and to the docs)")
            continue
        for t in sorted(targets):
            b = top_package(t)
            fa, fb = floor(a), floor(b)
            if a != b and fb is not None and fb <= fa:  # type: ignore[operator]
                where = "upward" if fb < fa else "sideways"  # type: ignore[operator]
                out.append(f"{src} -> {t}: {where} ({a} on floor {fa}, {b} on floor {fb})")
    return out


def through_own_init(modules: dict[str, ast.Module], packages: set[str]) -> list[str]:
    """``from kdrun.pkg import x`` (or ``import kdrun.pkg``) in a module of kdrun.pkg."""
    out = []
    for name, tree in modules.items():
        own = name if name in packages else name.rpartition(".")[0]
        if name == own:  # a package's __init__ imports its submodules: registration
            continue
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == own:
                out.append(f"{name}:{node.lineno} imports through its package's __init__ ({own})")
            elif isinstance(node, ast.Import) and any(a.name == own for a in node.names):
                out.append(f"{name}:{node.lineno} imports its own package {own}")
    return out


def function_lengths(modules: dict[str, ast.Module]) -> list[tuple[int, str]]:
    out = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(out, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--longest", type=int, default=5)
    ns = ap.parse_args()
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f): ast.parse(f.read_text(), str(f)) for f in files}
    packages = {module_name(f) for f in files if is_package(f)}
    edges, misplaced = graph(modules)
    # Edges from a package's __init__ to its own submodules are registration, not layering.
    for m in edges:
        edges[m] = {t for t in edges[m] if not is_package_init(t, m)}
    found = cycles(edges)
    layers = layer_violations(edges)
    own_init = through_own_init(modules, packages)
    lengths = function_lengths(modules)
    long = [(n, f) for n, f in lengths if n > MAX_LINES and f not in LONG_ALLOWED]
    n_edges = sum(len(v) for v in edges.values())
    print(f"{len(modules)} modules, {n_edges} import edges, {len(found)} cycles")
    problems = [f"cycle: {' <-> '.join(c)}" for c in found]
    problems += [f"misplaced: {m}" for m in misplaced]
    problems += [f"layer: {v}" for v in layers]
    problems += [f"own __init__: {v}" for v in own_init]
    problems += [f"too long ({n} > {MAX_LINES} lines): {f}" for n, f in long]
    for p in problems:
        print(p)
    for n, f in lengths[: ns.longest]:
        why = f"  (allowed: {LONG_ALLOWED[f]})" if f in LONG_ALLOWED else ""
        print(f"{n:4d} lines  {f}{why}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
