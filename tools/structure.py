"""Structure report: the largest modules, imports inside functions, and circles of imports.

Usage: ``python -m tools.structure [package ...]`` (default: ``apps inventiv agent``).
Prints a table; used for the closing notes of structure work and kept as a check anyone can run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp


def _python_files(package: str) -> list[Path]:
    return [p for p in Path(package).rglob("*.py") if "migrations" not in p.parts]


def local_imports(paths: list[Path]) -> list[tuple[str, int, str]]:
    """Imports inside functions (not under ``if TYPE_CHECKING``), as (file, line, module)."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    found.extend((str(path), node.lineno, a.name) for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    found.append((str(path), node.lineno, node.module or "."))
    return sorted(set(found))


def import_cycles(packages: list[str]) -> list[list[str]]:
    """Strongly connected groups of modules (module-level imports, TYPE_CHECKING excluded)."""
    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True)
    modules = sorted(m for m in graph.modules if ".migrations" not in m)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for module in modules:
        if module not in index:
            visit(module)
    return groups


def main(argv: list[str]) -> int:
    packages = argv or ["apps", "inventiv", "agent"]
    sys.path.insert(0, str(Path.cwd()))
    paths = [p for package in packages for p in _python_files(package)]
    sizes = sorted(((len(p.read_text().splitlines()), str(p)) for p in paths), reverse=True)
    print("largest modules:")
    for lines, path in sizes[:8]:
        print(f"  {lines:5d}  {path}")
    server = [p for p in paths if p.parts[0] in ("apps", "inventiv")]
    imports = local_imports(server)
    print(f"imports inside functions (apps, inventiv): {len(imports)}")
    for path, line, module in imports:
        print(f"  {path}:{line}  {module}")
    cycles = import_cycles(packages)
    print(f"circles of imports: {len(cycles)}")
    for group in cycles:
        print(f"  {len(group)} modules: {', '.join(group)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
