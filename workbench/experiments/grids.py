"""Grids of sweep parameters: YAML/JSON files or Python, expanded into points with readable names."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, MissingFileError

log = logging.getLogger("workbench.experiments")

# ----------------------------------------------------------------------------- grids and point names

from workbench.config import fix_yaml_scalar, parse_value  # noqa: F401  (the one parser of values, re-exported)


def _read_grid_file(path: Path) -> tuple[Any, dict[tuple, str]]:
    """A grid file's content and where each value sits: ``{(key, i) or (i, key): "line L, column C"}``.

    Raises:
        ValueError: malformed YAML/JSON, as one line naming the file, line and column.
    """
    import yaml

    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        what = " ".join(str(x) for x in (err.context, err.problem) if x)
        raise ConfigError(f"{path}: {where}: malformed grid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed grid YAML: {' '.join(str(err).split())}") from None

    def at(n) -> str:
        return f"line {n.start_mark.line + 1}, column {n.start_mark.column + 1}"

    positions: dict[tuple, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for i, item in enumerate(items):
                positions[(key_node.value, i)] = at(item)
    elif isinstance(node, yaml.SequenceNode):
        for i, point_node in enumerate(node.value):
            if isinstance(point_node, yaml.MappingNode):
                for key_node, value_node in point_node.value:
                    positions[(i, key_node.value)] = at(value_node)
    return fix_yaml_scalar(data), positions


def _grid_points(grid: Any, positions: Mapping[tuple, str] | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The points of a loaded grid and, per point, where each of its values came from."""
    positions = positions or {}
    if isinstance(grid, Mapping):
        if not grid:
            raise ConfigError("empty grid: give at least one parameter with a list of values")
        keys = list(grid)
        values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        for key, vals in zip(keys, values):
            if not vals:
                raise ConfigError(f"grid parameter {key!r} has no values")
        combos = itertools.product(*[range(len(v)) for v in values])
        points, where = [], []
        for combo in combos:
            points.append({k: values[j][i] for j, (k, i) in enumerate(zip(keys, combo))})
            where.append({k: positions[(k, i)] for k, i in zip(keys, combo) if (k, i) in positions})
        return points, where
    if isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)):
        points = []
        for i, point in enumerate(grid):
            if not isinstance(point, Mapping):
                raise ConfigError(f"grid point {i} is not a dict of parameters: {point!r}")
            points.append(dict(point))
        if not points:
            raise ConfigError("empty grid: the list of points is empty")
        return points, [{k: positions[(i, k)] for k in p if (i, k) in positions} for i, p in enumerate(points)]
    raise ConfigError(f"a grid is a dict of lists, a list of dicts or a YAML file, got {type(grid).__name__}")


def read_grid(grid: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]], str | None]:
    """:func:`load_grid` plus each point's value positions and the grid file (None for in-memory grids)."""
    source, positions = None, {}
    if isinstance(grid, (str, os.PathLike)):
        path = Path(grid)
        if not path.is_file():
            raise MissingFileError(f"grid file not found: {path.resolve()}")
        grid, positions = _read_grid_file(path)
        source = str(path)
        if grid is None:
            raise ConfigError(f"grid file {path} is empty")
    try:
        points, where = _grid_points(grid, positions)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    unique: list[dict[str, Any]] = []
    unique_where: list[dict[str, str]] = []
    seen: set[str] = set()
    for point, pos in zip(points, where):
        key = _canonical(point)
        if key not in seen:
            seen.add(key)
            unique.append(point)
            unique_where.append(pos)
    return unique, unique_where, source


def load_grid(grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]] | str | os.PathLike) -> list[dict[str, Any]]:
    """The points of a grid.

    Args:
        grid: a dict of lists (cartesian product, in key order), a list of dicts (explicit points),
            or the path of a YAML/JSON file holding either. A scalar value in a dict counts as a
            one-value list.

    Returns:
        One parameter dict per point, duplicates removed (first kept).

    Raises:
        ValueError: an empty grid, a malformed one (a YAML syntax error names the file, line and
            column), or a file that is neither.
        FileNotFoundError: a grid file that does not exist.

    Example:
        >>> load_grid({"lr": [0.1, 0.01], "use_cml": [True]})
        [{'lr': 0.1, 'use_cml': True}, {'lr': 0.01, 'use_cml': True}]
    """
    return read_grid(grid)[0]


def one_at_a_time(fixed: Mapping[str, Any], grids: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Points that vary one parameter at a time around fixed values (hyperparameter curves).

    Args:
        fixed: the value of every swept parameter while another one varies.
        grids: ``{parameter: values}``; each parameter must be a key of ``fixed``.

    Returns:
        Explicit points (a list of dicts for :func:`sweep`); the point where every value equals
        ``fixed`` appears once.

    Example:
        >>> one_at_a_time({"lr": 0.01, "epochs": 2}, {"lr": [0.01, 0.1], "epochs": [1, 2]})
        [{'lr': 0.01, 'epochs': 2}, {'lr': 0.1, 'epochs': 2}, {'lr': 0.01, 'epochs': 1}]
    """
    unknown = set(grids) - set(fixed)
    if unknown:
        raise ConfigError(f"grids for {sorted(unknown)} have no fixed value in {sorted(fixed)}")
    points = [dict(fixed, **{name: value}) for name, values in grids.items() for value in values]
    return load_grid(points) if points else [dict(fixed)]


def _canonical(params: Mapping[str, Any]) -> str:
    return json.dumps({str(k): plain_value(v) for k, v in params.items()}, sort_keys=True, default=str)


def plain_value(value: Any) -> Any:
    """JSON-friendly form of a parameter (tuples → lists, paths → str, numpy scalars → Python)."""
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    return value


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = "+".join(_slug(v) for v in value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        slug = "-" + slug  # a number keeps its sign: lr=-0.1 is not lr=0.1
    return slug


def point_name(point: Mapping[str, Any], hash_params: Mapping[str, Any] | None = None, *,
               max_len: int = 80) -> str:
    """A stable, filesystem-safe folder name for a sweep point.

    Args:
        point: the point's own parameters (what varies across the grid): the readable part,
            ``key=value`` joined by ``,`` in sorted key order.
        hash_params: everything the point runs with (default: ``point``): the 8-hex-digit hash, so
            two points that differ only in base parameters still get their own folder.
        max_len: the readable part is cut to this length (the hash keeps names unique).

    Example:
        >>> point_name({"use_cml": False, "lr": 0.01})
        'lr=0.01,use_cml=False-2ae7459a'
    """
    digest = hashlib.sha1(_canonical(point if hash_params is None else hash_params).encode()).hexdigest()[:8]
    readable = ",".join(f"{_slug(k)}={_slug(plain_value(point[k]))}" for k in sorted(point, key=str))
    readable = readable[:max_len].rstrip(",=-.") or "default"
    return f"{readable}-{digest}"
