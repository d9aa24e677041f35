"""The package's import graph: no cycles, no private names imported across modules.

Every ``import`` and ``from ... import`` of a ``workbench`` module counts, at module level or inside a
function (an import moved into a function still ties the two modules together).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(module: str) -> list[tuple[str, str]]:
    """``(imported module, imported name)`` for every workbench import in ``module`` ('' for a plain import)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if base.split(".")[0] != "workbench":
                continue
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                # a submodule imported by name is a module, not a name from it
                found.append((target, "" if target == f"{base}.{alias.name}" else alias.name))
        elif isinstance(node, ast.Import):
            found += [(_resolve(a.name), "") for a in node.names if a.name.split(".")[0] == "workbench"]
    return [(t, n) for t, n in found if t and t != module]


GRAPH = {m: {t for t, _ in _imports(m)} for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles() == [], "modules that import each other (directly or through others)"


def test_a_cycle_is_found() -> None:
    GRAPH["workbench.ops"].add("workbench.config")  # config imports paths/errors only; ops → config → ... closes
    GRAPH["workbench.config"].add("workbench.ops")
    try:
        assert ["workbench.config", "workbench.ops"] in _cycles()
    finally:
        GRAPH["workbench.ops"].discard("workbench.config")
        GRAPH["workbench.config"].discard("workbench.ops")


def test_no_private_name_is_imported_from_another_module() -> None:
    private = [f"{m} imports {n} from {t}" for m in MODULES for t, n in _imports(m)
               if n.startswith("_") and not n.startswith("__") and t.rpartition(".")[0] != m.rpartition(".")[0]]
    assert private == [], "private names used across packages: make them public or move them"


def test_one_metric_name_table() -> None:
    from workbench.evaluation import METRIC_KEYS
    from workbench.experiments.results import MAIN_METRICS, METRIC_TITLES

    assert tuple(METRIC_TITLES) == MAIN_METRICS == METRIC_KEYS
