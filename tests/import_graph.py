"""The import graph of a package, read from its source: which module imports which.

    graph = import_graph(Path("lorp_lightning"))     # {"lorp_lightning.search": {"lorp_lightning.stats", ...}, ...}
    cycles(graph)                                    # the strongly connected groups of more than one module
    upward_edges(graph, layer_of)                    # (importer, imported) where the importer's layer is the lower

Every ``import`` and ``from ... import`` statement counts, at module level or inside a function
(an import deferred to call time is still a dependency), ``if TYPE_CHECKING:`` included. Only
modules of the package itself are nodes. ``from package import name`` counts as an import of
the submodule ``package.name`` where that is a module, else of ``package`` (its ``__init__``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` (a folder with ``__init__.py``) -> its file."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node.level, node.module)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected, two or more), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycle_edges(graph: dict[str, set[str]], group: list[str]) -> list[tuple[str, str]]:
    """The imports that tie a group of ``cycles`` together."""
    members = set(group)
    return sorted((a, b) for a in group for b in graph[a] if b in members)


def upward_edges(graph: dict[str, set[str]], layer_of: Callable[[str], int | None]) -> list[tuple[str, str]]:
    """The imports (importer, imported) from a lower layer into a higher one; a module whose layer is None (a
    package's ``__init__`` that only gathers names) is left out on either side."""
    edges = []
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        low, high = layer_of(importer), layer_of(imported)
        if low is not None and high is not None and low < high:
            edges.append((importer, imported))
    return edges
