"""Check filterscope's import graph: exit 1 on an import cycle or on an import up the floors.

The floors, lowest first (data flows one way: a module imports only its own floor and those below):

    0 base     errors, version, plugins, data  (no filterscope import, or only each other)
    1 models   models/, results (per-layer result types built on models.layers, used by optvis and up)
    2 optvis   optvis/
    3 outputs  outputs/
    4 jobs     jobs/
    5 serve    serve/
    6 cli      cli
    7 package  filterscope/__init__.py (the public API: lazy attributes over every floor)

A module never imports a private name (``_x``) of a module on another floor: what a higher floor uses (the
explorer calling a job, a job calling the renderer) is that module's public API.

Every import counts: module-level, function-level and ``if TYPE_CHECKING:`` ones alike. A type-checking
import does not run, but it is a real layering dependency (the module uses the other's types), so a cycle
or an upward arrow through one is one in the design. Run by ``.ci/run``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
FLOORS = {"base": 0, "models": 1, "optvis": 2, "outputs": 3, "jobs": 4, "serve": 5, "cli": 6, "package": 7}
# the top-level modules and packages of filterscope → their floor
PLACE = {
    "errors": "base",
    "version": "base",
    "plugins": "base",
    "data": "base",
    "defaults": "base",
    "models": "models",
    "results": "models",
    "optvis": "optvis",
    "outputs": "outputs",
    "jobs": "jobs",
    "serve": "serve",
    "cli": "cli",
    "cli_options": "cli",
    "__main__": "cli",
}


def floor(module: str) -> int | None:
    """The floor of ``filterscope.X…`` (the package itself is the top); -1 for a filterscope module on no
    floor (a new top-level module: place it in :data:`PLACE`); None outside filterscope."""
    parts = module.split(".")
    if parts[0] != "filterscope":
        return None
    if len(parts) == 1:
        return FLOORS["package"]
    return FLOORS[PLACE[parts[1]]] if parts[1] in PLACE else -1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    name = module_name(path)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != name}


def private_imports(path: Path, modules: set[str]) -> list[tuple[str, str]]:
    """``(module, "target._name")`` for each private name ``path`` imports from a module on another floor."""
    name = module_name(path)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = pkg.split(".")
        base = base[: len(base) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        if target not in modules or floor(target) == floor(name):
            continue
        private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
        out += [(name, f"{target}.{n}") for n in private]
    return out


def main() -> int:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports(f, modules) for f in files}
    cycles, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cyc = tuple(stack[stack.index(nxt) :])
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cyc + (nxt,))
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for m in sorted(graph):
        visit(m, [m])
    for c in cycles:
        print("cycle: " + " → ".join(c))
    unplaced = sorted(m for m in graph if floor(m) == -1)
    for m in unplaced:
        print(f"no floor: {m} (add it to PLACE in scripts/check_imports.py)")
    upward = sorted(
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if floor(a) is not None and floor(b) is not None and floor(a) >= 0 and floor(b) > floor(a)
    )
    for a, b in upward:
        print(f"upward: {a} (floor {floor(a)}) imports {b} (floor {floor(b)})")
    private = sorted(p for f in files for p in private_imports(f, modules))
    for a, b in private:
        print(f"private: {a} imports {b} (a private name of another floor: make it public API)")
    print(
        f"{len(graph)} modules, {len(cycles)} import cycles, {len(upward)} imports up the floors, "
        f"{len(private)} private imports across floors"
    )
    return 1 if cycles or upward or unplaced or private else 0


if __name__ == "__main__":
    sys.exit(main())
