"""Measure the package's import structure: cycles, imports inside functions, imports that climb the layers.

    python scripts/import_graph.py            # the figures, one per line
    python scripts/import_graph.py --list     # and every in-function / upward import, file:line

Reads the source (nothing is imported or run). An edge A -> B is a ``ts_neuralode`` import in module A that names
module B (``from ts_neuralode.x import y`` names ``ts_neuralode.x.y`` when that is a module, else ``ts_neuralode.x``);
imports under ``if TYPE_CHECKING:`` are left out (they never run). Cycles are the strongly connected components of
that graph with more than one module, counting the imports inside functions too. The layers are read from the
``layers`` contract of ``[tool.importlinter]`` in pyproject.toml (highest first; ``|`` separates independent
modules of one layer); an import whose target sits on a higher layer than its importer climbs up.
``tests/test_architecture.py`` holds the figures to their targets.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ts_neuralode"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges(root: Path = ROOT) -> list[Edge]:
    """Every project import of the package (see the module docstring)."""
    known = modules(root)
    out: list[Edge] = []
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, in_function: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for sub in child.orelse:
                        visit(sub, in_function)
                    continue
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names if a.name.split(".")[0] == PACKAGE]
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        base = base[: len(base) - (child.level - 1)]
                        prefix = ".".join(base + ([child.module] if child.module else []))
                    else:
                        prefix = child.module or ""
                    if prefix.split(".")[0] == PACKAGE:
                        targets = [
                            f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in child.names
                        ]
                for t in targets:
                    target = _resolve(t, known)
                    if target and target != mod:
                        out.append(Edge(mod, target, child.lineno, in_function))
                visit(child, inner)

        visit(tree, False)
    return out


def cycles(graph_edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in graph_edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def layers(root: Path = ROOT) -> list[list[str]]:
    """The layers of the first ``layers`` contract in pyproject.toml, highest first."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    for contract in cfg.get("tool", {}).get("importlinter", {}).get("contracts", []):
        if contract.get("type") == "layers":
            container = (contract.get("containers") or [""])[0]
            return [
                [f"{container}.{m.strip()}" if container else m.strip() for m in layer.split("|")]
                for layer in contract["layers"]
            ]
    return []


def layer_of(module: str, order: list[list[str]]) -> int | None:
    """The index of ``module``'s layer (0 = highest), None when it belongs to none."""
    for i, layer in enumerate(order):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    return None


def upward(graph_edges: list[Edge], order: list[list[str]]) -> list[Edge]:
    """The imports whose target sits on a higher layer than their source."""
    out = []
    for e in graph_edges:
        s, t = layer_of(e.source, order), layer_of(e.target, order)
        if s is not None and t is not None and t < s:
            out.append(e)
    return out


def largest_modules(root: Path = ROOT, n: int = 5) -> list[tuple[int, str]]:
    sizes = [(len(p.read_text().splitlines()), m) for m, p in modules(root).items()]
    return sorted(sizes, reverse=True)[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list every in-function and upward import")
    args = parser.parse_args(argv)
    es = edges()
    order = layers()
    inner = [e for e in es if e.in_function]
    up = upward(es, order)
    cyc = cycles(es)
    print(f"modules: {len(modules())}")
    print(f"project imports: {len(es)}")
    print(f"cycles (counting imports inside functions): {len(cyc)}")
    for c in cyc:
        print(f"  {len(c)} modules: {', '.join(c)}")
    print(f"project imports inside functions: {len(inner)}")
    print(f"imports climbing up the layers: {len(up)}")
    print("largest modules: " + ", ".join(f"{m} {n}" for n, m in largest_modules()))
    if args.list:
        for title, rows in (("inside functions", inner), ("upward", up)):
            print(f"-- {title}")
            for e in rows:
                print(f"  {e.source}:{e.line} -> {e.target}")


if __name__ == "__main__":
    main()
