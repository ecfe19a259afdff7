"""Architecture checks: no import cycles among kdrun's modules, no kdrun import inside a
function or at the bottom of a file, and the longest functions. Exit 1 on a cycle or a
misplaced import.

    python scripts/check_architecture.py [--longest N]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kdrun"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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
    edges, misplaced = graph(modules)
    # Edges from a package's __init__ to its own submodules are registration, not layering.
    for m in edges:
        edges[m] = {t for t in edges[m] if not is_package_init(t, m)}
    found = cycles(edges)
    n_edges = sum(len(v) for v in edges.values())
    print(f"{len(modules)} modules, {n_edges} import edges, {len(found)} cycles")
    for c in found:
        print("cycle:", " <-> ".join(c))
    for m in misplaced:
        print("misplaced:", m)
    for n, f in function_lengths(modules)[: ns.longest]:
        print(f"{n:4d} lines  {f}")
    return 1 if found or misplaced else 0


if __name__ == "__main__":
    sys.exit(main())
