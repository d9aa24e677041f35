"""The package's import graph: declared floors (README's "Code layout"), no cycles, no private names imported
across modules.

Every ``import`` and ``from ... import`` of a ``workbench`` module counts, at module level or inside a
function (an import moved into a function still ties the two modules together), and so does the package
``__init__`` it runs on the way: importing ``workbench.experiments.results`` executes
``workbench/experiments/__init__.py``, which imports every module of that package.
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


def _with_packages(targets: set[str], importer: str = "") -> set[str]:
    """``targets`` and every package ``__init__`` importing them runs, but the importer's own packages (they
    are already running when it imports a sibling) and the root ``workbench`` (it imports nothing of its
    own and would tie every module to every other)."""
    own = {importer.rsplit(".", k)[0] for k in range(1, importer.count("."))} if importer else set()
    out = set(targets)
    for t in targets:
        parts = t.split(".")
        out |= {p for k in range(2, len(parts)) if (p := ".".join(parts[:k])) in MODULES and p not in own}
    return out


GRAPH = {m: _with_packages({t for t, _ in _imports(m)}, m) - {m} for m in MODULES}

def _floors() -> list[tuple[str, tuple[str, ...]]]:
    """The floors table of docs/architecture.md (README's "Code layout" links it), lowest first."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table = text.split("<!-- floors: tests/test_layers.py reads this table -->", 1)[1]
    floors = []
    for line in table.strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, modules = [c.strip() for c in line.strip("|").split("|")][:2]
        floors.append((name, tuple(re.findall(r"`([\w.]+)`", modules))))
    return floors


#: the floors, lowest first: a module imports only from its own floor or below
FLOORS = _floors()


def floor_of(module: str) -> int:
    """The index of ``module``'s floor: the longest declared prefix it falls under."""
    best, level = -1, None
    for i, (_, members) in enumerate(FLOORS):
        for prefix in members:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, f"{module} is on no floor: add it to FLOORS (and to README's Code layout)"
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({FLOORS[floor_of(m)][0]}) imports {t} ({FLOORS[floor_of(t)][0]})"
                  for m, targets in graph.items() for t in targets if floor_of(t) > floor_of(m))


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


def test_every_module_is_on_a_floor_and_imports_none_above_it() -> None:
    assert upward_imports(GRAPH) == [], "a module imports from a floor above its own"


def test_an_upward_import_is_found() -> None:
    planted = {m: set(t) for m, t in GRAPH.items()}
    planted["workbench.data.datasets"].add("workbench.engine.lifecycle")  # data would depend on the engine
    assert upward_imports(planted) == [
        "workbench.data.datasets (inputs) imports workbench.engine.lifecycle (engine)"]


def test_a_package_init_closes_a_cycle() -> None:
    """``viz.tables`` importing ``experiments.results`` runs ``experiments/__init__``: the edge counts."""
    assert "workbench.experiments" in _with_packages({"workbench.experiments.results"})


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
    """The metric names are defined once, in evaluation: nothing else assigns a table of them."""
    import re

    for module, path in MODULES.items():
        if module == "workbench.evaluation.names":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(METRIC_TITLES|METRIC_KEYS|MAIN_METRICS)\s*=", text, re.M), module
        assert '"mAP_devkit": "mAP*"' not in text, module




def test_experiments_compute_numbers_only_in_modules_one_can_read_at_once() -> None:
    """experiments/ imports no viz (its callers draw the figures) and has no module over 400 lines."""
    for module, path in MODULES.items():
        if module.startswith("workbench.experiments"):
            assert not [t for t in GRAPH[module] if t.startswith("workbench.viz")], f"{module} imports viz"
            assert len(path.read_text().splitlines()) <= 400, f"{module}: {len(path.read_text().splitlines())} lines"
