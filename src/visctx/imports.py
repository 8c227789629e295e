"""The library's import graph, read from the sources (no module is imported): which modules a
command runs, for the rules' code digests, and the test that the layers have no cycle.

Why not hand-kept lists: a rule's digest that omits a module its command imports (``fits`` once
covered only ``fit.py`` though it imports ``context`` and ``config``) leaves Snakemake thinking a
job is current after that module changed. Every ``import`` counts, at module level or inside a
function (lazy imports run too), and so does the package's ``__init__`` (it runs before any module
of the package: it pins the CPU kernels, so :mod:`visctx.cpu` is in every command's code; feature
encoding once escaped a change of the pin because its closure had no ``cpu``).
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "visctx"
INIT = "__init__"  # the package's own module: imported first by every ``import visctx.<module>``
SRC = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def direct_imports(module: str, src: Path = SRC) -> frozenset[str]:
    """The ``visctx`` modules ``module`` (a name like ``fit``) imports anywhere in its source."""
    tree = ast.parse((src / f"{module}.py").read_text(), filename=f"{module}.py")
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == PACKAGE else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1 and (src / f"{parts[1]}.py").is_file():
                found.add(parts[1])
    found.discard(module)
    return frozenset(found)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def closure(*modules: str, src: Path = SRC) -> list[str]:
    """``modules``, the package's ``__init__`` and everything they import, transitively (sorted names)."""
    seen: set[str] = set()
    todo = list(modules) + ([INIT] if (src / f"{INIT}.py").is_file() else [])
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        if not (src / f"{m}.py").is_file():
            raise ValueError(f"{src / f'{m}.py'}: no such module of {PACKAGE}")
        seen.add(m)
        todo.extend(direct_imports(m, src) - seen)
    return sorted(seen)


def digest(*modules: str, src: Path = SRC) -> str:
    """Digest of the sources of ``modules`` and all they import (12 hex digits): a rule's code version."""
    h = hashlib.sha256()
    for m in closure(*modules, src=src):
        h.update(m.encode() + b"\0" + (src / f"{m}.py").read_bytes())
    return h.hexdigest()[:12]


def cycles(src: Path = SRC) -> list[list[str]]:
    """Every import cycle among the package's modules (strongly connected components of size > 1)."""
    graph = {p.stem: direct_imports(p.stem, src) for p in sorted(src.glob("*.py")) if p.stem != "__main__"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(out)
