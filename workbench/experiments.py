"""Experiments: run a parameterized notebook with papermill, sweep it over a grid, collect the results.

A sweep runs one notebook once per point of a grid, each point in its own folder::

    <out_dir>/
      backbone=resnet50,use_cml=False-1a2b3c4d/   one folder per point (readable + short hash)
        status.json          state running | done | failed, params, error, traceback tail, times
        03_train_mar.ipynb   the executed notebook (kept, partial, when the point failed)
        metrics.json         what the notebook recorded (record_metrics)
        pretrain/ mar/       the notebook's run folders (it receives out_dir = this folder)

Re-running a sweep skips the points whose status is ``done`` and runs the others again (failed,
interrupted or new ones); a failing point never stops the others. :func:`collect` turns a sweep
folder into one DataFrame row per point (parameters + metrics + status), :func:`paper_table` puts
our numbers beside the paper's.

The notebook-side helpers (:func:`notebook_config`, :func:`ensure_run`, :func:`record_metrics`,
:func:`agent_similarity`, :func:`resolve_notebook`, :func:`repo_path`, :func:`find_run`,
:func:`in_percent`, :func:`paper_rows`) keep the notebooks to wiring and display. The paper's numbers
live in :mod:`workbench.paper` and are re-exported here (``PAPER_RESULTS`` ...).

Example:
    >>> df = sweep("notebooks/03_train_mar.ipynb", {"use_cml": [True, False]}, "runs/sweeps/cml",
    ...            base_params={"preset": "smoke"})                              # doctest: +SKIP
    >>> df[["use_cml", "state", "rank1", "mAP"]]                                 # doctest: +SKIP

Command line: ``python -m workbench sweep NOTEBOOK --grid grid.yaml --out DIR [--jobs N | --executor ray]``
(where points run: :mod:`workbench.executors`). Notebooks are committed without outputs:
``make notebooks-strip`` (nbstripout).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import os
import re
import socket
import time
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from workbench.paper import (  # re-exported: the notebooks read them as ex.PAPER_RESULTS ...
    FUSION_COMBINATIONS,
    LOSS_ABLATION,
    PAPER_METRICS,
    PAPER_NETWORKS,
    PAPER_RESULTS,
    PRETRAINING_ABLATION,
    pretraining_points,
)

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them
    import pandas as pd
    import torch

    from workbench.config import Config
    from workbench.engine import RunResult
    from workbench.executors import Attempt, Executor

log = logging.getLogger("workbench.experiments")

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
#: the metrics shown first by :func:`collect` and the CLI (fractions in [0, 1])
MAIN_METRICS = ("rank1", "rank5", "rank10", "mAP", "mAP_devkit", "mINP")

# ----------------------------------------------------------------------------- grids and point names

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _fix_yaml_scalar(value: Any) -> Any:
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); turn such strings into floats."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_fix_yaml_scalar(v) for v in value]
    if isinstance(value, dict):
        return {k: _fix_yaml_scalar(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """A parameter value from the command line, read as YAML: ``0.01``, ``1e-3``, ``true``, ``none``,
    ``[1, 2]``; anything else stays a string.

    Example:
        >>> parse_value("1e-3"), parse_value("false"), parse_value("none"), parse_value("layer1+layer4")
        (0.001, False, None, 'layer1+layer4')
    """
    import yaml

    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return _fix_yaml_scalar(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


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
        raise ValueError(f"{path}: {where}: malformed grid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: malformed grid YAML: {' '.join(str(err).split())}") from None

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
    return _fix_yaml_scalar(data), positions


def _grid_points(grid: Any, positions: Mapping[tuple, str] | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The points of a loaded grid and, per point, where each of its values came from."""
    positions = positions or {}
    if isinstance(grid, Mapping):
        if not grid:
            raise ValueError("empty grid: give at least one parameter with a list of values")
        keys = list(grid)
        values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        for key, vals in zip(keys, values):
            if not vals:
                raise ValueError(f"grid parameter {key!r} has no values")
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
                raise ValueError(f"grid point {i} is not a dict of parameters: {point!r}")
            points.append(dict(point))
        if not points:
            raise ValueError("empty grid: the list of points is empty")
        return points, [{k: positions[(i, k)] for k in p if (i, k) in positions} for i, p in enumerate(points)]
    raise ValueError(f"a grid is a dict of lists, a list of dicts or a YAML file, got {type(grid).__name__}")


def _load_grid(grid: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]], str | None]:
    """:func:`load_grid` plus each point's value positions and the grid file (None for in-memory grids)."""
    source, positions = None, {}
    if isinstance(grid, (str, os.PathLike)):
        path = Path(grid)
        if not path.is_file():
            raise FileNotFoundError(f"grid file not found: {path.resolve()}")
        grid, positions = _read_grid_file(path)
        source = str(path)
        if grid is None:
            raise ValueError(f"grid file {path} is empty")
    try:
        points, where = _grid_points(grid, positions)
    except ValueError as err:
        raise ValueError(f"{source}: {err}" if source else str(err)) from None
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
    return _load_grid(grid)[0]


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
        raise ValueError(f"grids for {sorted(unknown)} have no fixed value in {sorted(fixed)}")
    points = [dict(fixed, **{name: value}) for name, values in grids.items() for value in values]
    return load_grid(points) if points else [dict(fixed)]


def _canonical(params: Mapping[str, Any]) -> str:
    return json.dumps({str(k): _plain(v) for k, v in params.items()}, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    """JSON-friendly form of a parameter (tuples → lists, paths → str, numpy scalars → Python)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
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
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


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
    readable = ",".join(f"{_slug(k)}={_slug(_plain(point[k]))}" for k in sorted(point, key=str))
    readable = readable[:max_len].rstrip(",=-.") or "default"
    return f"{readable}-{digest}"


# ----------------------------------------------------------------------------- running notebooks

def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell: ``{name: default source}``.

    Raises:
        FileNotFoundError: no such notebook.
    """
    import papermill as pm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook not found: {path}")
    return {name: info.get("default") for name, info in pm.inspect_notebook(str(path)).items()}


def _check_params(path: Path, params: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"{path.name} declares no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {', '.join(declared) or '(none: no cell tagged parameters)'}")


_PATH_SUFFIXES = ("_dir", "_checkpoint", "_root", "_path", "_file")


def _absolute_paths(params: Mapping[str, Any]) -> dict[str, Any]:
    """Relative paths become absolute from here (the notebook runs in its own folder).

    Parameters named ``*_dir`` always (a folder may not exist yet); ``*_checkpoint``, ``*_root``,
    ``*_path``, ``*_file`` when the path exists from here.
    """
    out = dict(params)
    for key, value in params.items():
        if key.endswith(_PATH_SUFFIXES) and isinstance(value, (str, os.PathLike)) and str(value):
            p = Path(value).expanduser()
            if not p.is_absolute() and (key.endswith("_dir") or p.exists()):
                out[key] = str(p.resolve())
    return out


# ----------------------------------------------------------------------------- where things are

#: set for the kernel while :func:`run_notebook` executes a notebook: that notebook's path
NOTEBOOK_ENV = "WORKBENCH_NOTEBOOK"


class NotebookParameterError(ValueError):
    """A bad value in a notebook's parameters cell.

    IPython shows it as one line (``_render_traceback_``), so the failed cell of a notebook (and the
    papermill error, and a sweep point's ``error``) starts with what to fix, not a traceback.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"NotebookParameterError: {self}"]


def check_choices(parameter: str, values: Sequence[Any], allowed: Iterable[Any]) -> None:
    """Every value of a list parameter (``variants``, ``rows`` ...) must be one of ``allowed``.

    Raises:
        NotebookParameterError: naming the parameter, the unknown values and the choices.

    Example:
        >>> check_choices("variants", ["full"], LOSS_ABLATION)
    """
    allowed = list(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise NotebookParameterError(f"{parameter}: unknown {', '.join(map(repr, unknown))}; choose from "
                                     f"{', '.join(map(repr, allowed))}")


def repo_root() -> Path:
    """The repository root (the checkout holding ``workbench/``); the current folder for an installed
    package."""
    from workbench.paths import checkout_root

    return checkout_root() or Path.cwd()


def repo_path(value: str | os.PathLike | None) -> Path | None:
    """A path from a notebook's parameters: absolute as given, relative ones from the repository root
    (wherever the kernel was started), ``~`` expanded; None stays None.

    Example:
        >>> repo_path("runs/x") == repo_root() / "runs" / "x"
        True
    """
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(repo_root() / path))


def notebook_folders() -> list[Path]:
    """Where a notebook looks for the notebooks it names, in order: its own folder (known when
    :func:`run_notebook` or JupyterLab started the kernel), the kernel's working folder, and the
    checkout's ``notebooks/``."""
    folders = []
    for env in (NOTEBOOK_ENV, "JPY_SESSION_NAME"):
        value = os.environ.get(env)
        if value and Path(value).suffix == ".ipynb" and Path(value).is_absolute():
            folders.append(Path(value).parent)
    folders += [Path.cwd(), repo_root() / "notebooks"]
    unique: list[Path] = []
    for folder in folders:
        if folder.resolve() not in [f.resolve() for f in unique]:
            unique.append(folder)
    return unique


def resolve_notebook(name: str | os.PathLike, parameter: str = "train_notebook") -> Path:
    """The absolute path of a notebook named in a parameters cell (``train_notebook``).

    A relative name is looked up in :func:`notebook_folders`: the calling notebook's own folder first,
    so ``"03_train_mar.ipynb"`` finds its neighbour whether papermill runs from the repository root,
    from ``notebooks/`` or anywhere else.

    Raises:
        NotebookParameterError: no such notebook, naming every absolute path tried.
    """
    path = Path(name).expanduser()
    tried = [path] if path.is_absolute() else [(folder / path).resolve() for folder in notebook_folders()]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise NotebookParameterError(f"{parameter} = {str(name)!r}: notebook not found; tried "
                                 + ", ".join(str(t) for t in tried))


def run_notebook(path: str | os.PathLike, params: Mapping[str, Any] | None, out_dir: str | os.PathLike, *,
                 kernel_name: str = "python3", timeout: float | None = None, progress: bool = False) -> Path:
    """Execute a notebook with papermill into ``out_dir/<notebook name>``.

    The kernel runs in the notebook's own folder (as in JupyterLab), so ``"03_train_mar.ipynb"``
    in a notebook refers to its neighbour. When the notebook declares an ``out_dir`` parameter and
    ``params`` sets none, it receives ``out_dir`` (absolute), so its runs land beside the executed
    notebook.

    Args:
        path: the notebook to run.
        params: values for its ``parameters`` cell (every name must be declared there).
        out_dir: folder for the executed notebook (created).
        kernel_name: Jupyter kernel.
        timeout: per-cell timeout in seconds (None: no limit).
        progress: papermill's per-cell progress bar.

    Returns:
        The executed notebook's path.

    Raises:
        ValueError: a parameter the notebook does not declare.
        papermill.PapermillExecutionError: a cell raised; the executed notebook is written up to
            that cell.
    """
    import papermill as pm

    path = Path(path).resolve()
    declared = notebook_parameters(path)
    params = _absolute_paths(dict(params or {}))
    _check_params(path, params, declared)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if "out_dir" in declared and params.get("out_dir") is None:
        params["out_dir"] = str(out_dir)
    output = out_dir / path.name
    # The kernel's own log (start-up warnings, and "KeyboardInterrupt caught in kernel" when
    # jupyter_client interrupts it before shutting it down) would land in the output of a notebook
    # that runs a sweep; cell errors reach papermill through the kernel's messages, not its log.
    engine_kwargs: dict[str, Any] = {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]}
    if timeout is not None:
        engine_kwargs["execution_timeout"] = timeout
    previous = os.environ.get(NOTEBOOK_ENV)
    os.environ[NOTEBOOK_ENV] = str(path)  # the kernel inherits it: resolve_notebook finds neighbours
    try:
        pm.execute_notebook(str(path), str(output), parameters={k: _plain(v) for k, v in params.items()},
                            kernel_name=kernel_name, cwd=str(path.parent), progress_bar=progress,
                            log_output=False, **engine_kwargs)
    finally:
        if previous is None:
            os.environ.pop(NOTEBOOK_ENV, None)
        else:
            os.environ[NOTEBOOK_ENV] = previous
    return output


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_of(err: BaseException) -> tuple[str, str]:
    """A one-line error and the tail of its traceback (ANSI colours removed)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        message = f"{err.ename}: {_ANSI.sub('', str(err.evalue))}"
        tb = _ANSI.sub("", "\n".join(err.traceback or []))
    else:
        message = f"{type(err).__name__}: {err}"
        tb = "".join(_traceback.format_exception(type(err), err, err.__traceback__))
    lines = tb.rstrip().splitlines()
    return message.strip(), "\n".join(lines[-40:])[-6000:]


def read_status(point_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A point's ``status.json`` (None when absent or unreadable)."""
    path = Path(point_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _literal(source: Any) -> Any:
    """A parameter's default from its source text (``"True"`` → True); the text when not a literal."""
    import ast

    try:
        return ast.literal_eval(source) if isinstance(source, str) else source
    except (ValueError, SyntaxError):
        return source


def _type_error(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a parameter whose default is ``default`` (None: it can)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) or value is None else f"{key} must be true or false, got {value!r}"
    if isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok or value is None else f"{key} must be a number, got {value!r}"
    if isinstance(default, list):
        return None if isinstance(value, (list, tuple)) or value is None else f"{key} must be a list, got {value!r}"
    return None


def _backbone_names() -> list[str]:
    from workbench.models.backbones import BACKBONES

    return sorted(BACKBONES)


def check_points(notebook: str | os.PathLike, points: Sequence[Mapping[str, Any]],
                 base_params: Mapping[str, Any] | None = None, *, where: Sequence[Mapping[str, str]] | None = None,
                 source: str | None = None) -> None:
    """Check every point of a sweep before any kernel starts.

    Each point (with ``base_params``) must only name parameters the notebook declares; a value must
    fit its declared default (true/false for a boolean, a number for a number, a list for a list);
    and when the notebook declares ``preset``, the preset and every config field among the
    parameters must make a valid config (:func:`workbench.config.from_params`).

    Args:
        notebook: the notebook the sweep runs.
        points: the grid's points.
        base_params: parameters shared by every point.
        where: per point, ``{parameter: "line L, column C"}`` in the grid file.
        source: the grid file, for the message.

    Raises:
        ValueError: one line naming the grid file, the position, the point and what is wrong (and
            how many other points are wrong).
    """
    from workbench.config import _FIELD_GROUP, from_params

    path = Path(notebook)
    declared = notebook_parameters(path)
    defaults = {k: _literal(v) for k, v in declared.items()}
    base = dict(base_params or {})
    problems: list[str] = []

    def add(message: str, point_index: int | None, key: str | None) -> None:
        pos = (where[point_index].get(key) if where and point_index is not None and key else None)
        origin = ", ".join(x for x in (source if point_index is not None else None, pos) if x)
        label = (f"point {point_name(points[point_index])[:-9]}: " if point_index is not None
                 else "shared parameters (--set / base_params): ")
        text = f"{origin}: {label}{message}" if origin else f"{label}{message}"
        if text not in problems:
            problems.append(text)

    def config_error(params: Mapping[str, Any]) -> str | None:
        if "preset" not in declared:
            return None
        preset = params.get("preset", defaults.get("preset"))
        fields = {k: v for k, v in params.items() if k in _FIELD_GROUP and v is not None}
        if isinstance(params.get("extra"), Mapping):
            fields |= dict(params["extra"])
        try:
            cfg = from_params(fields, base=preset if isinstance(preset, str) else None)
        except ValueError as err:
            return str(err)
        for key in ("backbone", "pretrain_backbone"):
            name = params.get(key) or (cfg.model.backbone if key == "backbone" else None)
            if name is not None and name not in _backbone_names():
                return f"{key} = {name!r}: unknown backbone; choose one of {', '.join(_backbone_names())}"
        return None

    for key, value in base.items():
        if key in declared and (why := _type_error(key, value, defaults[key])):
            add(why, None, key)
    shared = config_error(base)
    if shared:
        add(shared, None, None)
    for i, point in enumerate(points):
        params = {**base, **point}
        _check_params(path, params, declared)
        if "out_dir" in params:
            raise ValueError("out_dir is the sweep's to set (each point gets its own folder); leave it out of "
                             "the grid and base_params")
        wrong_type = [(key, why) for key, value in point.items() if (why := _type_error(key, value, defaults.get(key)))]
        for key, why in wrong_type:
            add(why, i, key)
        error = None if wrong_type else config_error(params)
        if error and error != shared:
            add(error, i, next((k for k in point if k in error), None))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)


def sweep(path: str | os.PathLike, grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]] | str | os.PathLike,
          out_dir: str | os.PathLike, *, base_params: Mapping[str, Any] | None = None, retries: int = 0,
          progress: bool = True, kernel_name: str = "python3", timeout: float | None = None,
          jobs: int | None = None, devices: str | Sequence[int | str] | None = None,
          gpus_per_point: int | None = None, cpus_per_point: float | None = None,
          executor: "str | Executor" = "local", address: str | None = None) -> "pd.DataFrame":
    """Run a notebook once per grid point, one folder per point; skip points already done.

    Args:
        path: the notebook (it should declare ``out_dir`` and record its metrics with
            :func:`record_metrics`).
        grid: see :func:`load_grid` (dict of lists, list of dicts, or a YAML/JSON file).
        out_dir: the sweep folder.
        base_params: parameters shared by every point (a point's own values win).
        retries: extra attempts for a failing point within this call.
        progress: a tqdm bar over the points.
        kernel_name, timeout: see :func:`run_notebook`.
        jobs: points at once (None or 1: one after another in this process; N: N worker processes,
            each with cores // N OpenMP/MKL threads; with ``executor="ray"``: tasks in flight, default
            what the cluster holds).
        devices: GPU ids for the local workers (``"0,1,2,3"``); each running point gets
            ``gpus_per_point`` of them as ``CUDA_VISIBLE_DEVICES``.
        gpus_per_point: GPUs per point (local with ``devices``: default 1; Ray: ``num_gpus``, default 0).
        cpus_per_point: threads per local worker (default cores // jobs); Ray: ``num_cpus`` (default 1).
        executor: ``"local"``, ``"ray"`` or a :class:`workbench.executors.Executor`.
        address: the Ray cluster (``"auto"``, ``"HOST:PORT"``); None: the runtime already started in
            this process, else Ray's default (``RAY_ADDRESS``, or a new local runtime).

    Returns:
        :func:`collect` of this grid's points (one row each, in grid order), the same whatever the
        executor.

    Raises:
        ValueError: a bad grid, a parameter the notebook does not declare, a value of the wrong type
            or an invalid config (:func:`check_points`, before any kernel starts). A failing point
            raises nothing: its status says ``failed``.
        workbench.executors.SharedStorageError: with Ray, a node that does not see the sweep folder.
        KeyboardInterrupt: after every running point was stopped and recorded as interrupted.
    """
    from workbench.executors import Attempt, make_executor

    nb_path = Path(path).resolve()
    base = _absolute_paths(dict(base_params or {}))
    points, where, source = _load_grid(grid)
    points = [_absolute_paths(p) for p in points]
    check_points(nb_path, points, base, where=where, source=source)  # the whole grid, before any kernel
    runner = make_executor(executor, jobs=jobs, devices=devices, gpus_per_point=gpus_per_point,
                           cpus_per_point=cpus_per_point, address=address)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    todo: list[tuple[Attempt, dict | None]] = []
    for point in points:
        params = {**base, **point}
        name = point_name(point, params)
        names.append(name)
        status = read_status(out_dir / name)
        if status is None or status.get("state") != "done":
            todo.append((Attempt(name, nb_path, params, out_dir / name, kernel_name, timeout),
                         {"point": point, "previous": status}))
    if todo:
        runner.prepare(out_dir, nb_path)
    counts = _run_points(todo, runner, retries=retries, progress=progress, label=f"sweep {nb_path.stem}",
                         skipped=len(points) - len(todo))
    log.info("sweep %s: %d run, %d skipped (done before), %d failed → %s", nb_path.name, counts["done"],
             len(points) - len(todo), counts["failed"], out_dir)
    return collect(out_dir, names=names)


def _attempt(nb_path: Path, params: Mapping[str, Any], point_dir: Path, *, kernel_name: str = "python3",
             timeout: float | None = None) -> dict[str, Any]:
    """One attempt of a sweep point, here: its record (``state`` done | failed, ``error``, ``traceback``,
    ``started``, ``finished``, ``seconds``, ``host``, ``pid``). KeyboardInterrupt goes through."""
    started = time.time()
    record: dict[str, Any] = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                              "error": None, "traceback": None}
    try:
        run_notebook(nb_path, params, point_dir, kernel_name=kernel_name, timeout=timeout)
        record["state"] = "done"
    except Exception as err:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
        message, tb = _error_of(err)
        record |= {"state": "failed", "error": message, "traceback": tb}
    return record | {"finished": _now(), "seconds": round(time.time() - started, 3)}


def _run_points(todo: list[tuple["Attempt", dict]], runner: "Executor", *, retries: int, progress: bool, label: str,
                skipped: int = 0) -> dict[str, int]:
    """Run the attempts of ``todo`` (with ``{"point", "previous"}`` status) on ``runner`` with retries,
    writing each point's ``status.json`` when an attempt starts and when it ends (then with the
    attempt's own start and end times); Ctrl-C stops the running ones and records them as interrupted."""
    from collections import deque

    from tqdm.auto import tqdm

    from workbench.runs import write_json

    counts = {"done": 0, "failed": 0}
    queue = deque((attempt, extra, 0) for attempt, extra in todo)
    running: dict[str, tuple[Attempt, dict, int, dict[str, Any], float]] = {}
    bar = tqdm(total=len(todo) + skipped, initial=skipped, desc=label, unit="point", disable=not progress,
               dynamic_ncols=True)
    try:
        while queue or running:
            while queue and runner.can_start():
                attempt, extra, n = queue.popleft()
                previous = extra["previous"] or {}
                attempt.point_dir.mkdir(parents=True, exist_ok=True)
                status = {"state": "running", "name": attempt.name, "notebook": str(attempt.notebook),
                          "point": extra["point"], "params": attempt.params,
                          "executed_notebook": attempt.notebook.name, "host": socket.gethostname(),
                          "pid": os.getpid(), "executor": runner.kind,
                          "attempts": int(previous.get("attempts", 0)) + n + 1, "started": _now(),
                          "finished": None, "seconds": None, "error": None, "traceback": None}
                running[attempt.name] = (attempt, extra, n, status, time.time())
                log.info("point %s (attempt %d)", attempt.name, status["attempts"])
                write_json(attempt.point_dir / STATUS_FILE, status)
                runner.start(attempt)
                if attempt.placement:
                    status["placement"] = attempt.placement
                    write_json(attempt.point_dir / STATUS_FILE, status)
            for attempt, record in runner.finished(timeout=0.5):
                _, extra, n, status, _ = running.pop(attempt.name)
                status |= record
                write_json(attempt.point_dir / STATUS_FILE, status)
                if status["state"] != "done":
                    log.warning("point %s failed (attempt %d/%d): %s", attempt.name, n + 1, retries + 1,
                                status["error"])
                    if n < retries:
                        queue.appendleft((attempt, extra, n + 1))
                        continue
                counts["done" if status["state"] == "done" else "failed"] += 1
                bar.update(1)
                bar.set_postfix(done=counts["done"], skipped=skipped, failed=counts["failed"])
    except KeyboardInterrupt:
        runner.stop()
        for attempt, _, _, status, started in running.values():
            write_json(attempt.point_dir / STATUS_FILE, status | {
                "state": "failed", "error": "KeyboardInterrupt: interrupted", "finished": _now(),
                "seconds": round(time.time() - started, 3)})
        raise
    finally:
        bar.close()
        runner.close()
    return counts


# ----------------------------------------------------------------------------- collecting results

def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{name}_")
        else:
            out[name] = value
    return out


def _papermill_params(notebook: Path) -> dict[str, Any]:
    try:
        meta = json.loads(notebook.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return {}
    return dict(meta.get("papermill", {}).get("parameters", {}) or {})


def collect(out_dir: str | os.PathLike, *, names: Iterable[str] | None = None) -> "pd.DataFrame":
    """One row per sweep point: parameters, status and the metrics its notebook recorded.

    Parameters come from ``status.json`` (else from the executed notebook's papermill metadata);
    metrics from the point's ``metrics.json`` (nested dicts flattened as ``initial_rank1``; a metric
    named like a parameter becomes ``metric_<name>``).

    Args:
        out_dir: a sweep folder.
        names: only these point folders, in this order (default: every point folder, sorted).

    Returns:
        A DataFrame with columns ``name``, the parameters, ``state`` (done | failed | running |
        unknown), ``error``, ``seconds``, the metrics (``rank1``, ``mAP`` … as fractions) and
        ``path``. Empty (with those first columns) when there is no point.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    if names is None:
        folders = sorted(p for p in out_dir.iterdir() if p.is_dir() and (
            (p / STATUS_FILE).is_file() or (p / METRICS_FILE).is_file())) if out_dir.is_dir() else []
    else:
        folders = [out_dir / n for n in names]
    rows: list[dict[str, Any]] = []
    param_cols: list[str] = []
    for folder in folders:
        status = read_status(folder) or {}
        params = dict(status.get("params") or {})
        if not params:
            notebooks = sorted(folder.glob("*.ipynb"))
            params = _papermill_params(notebooks[0]) if notebooks else {}
        params.pop("out_dir", None)
        param_cols += [k for k in params if k not in param_cols]
        row: dict[str, Any] = {"name": folder.name, **params}
        row["state"] = status.get("state", "unknown" if not (folder / METRICS_FILE).is_file() else "done")
        row["error"] = status.get("error")
        row["seconds"] = status.get("seconds")
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text())
        except (OSError, ValueError):
            metrics = {}
        for key, value in _flatten(metrics).items():
            row[f"metric_{key}" if key in params or key in ("name", "state", "error", "seconds", "path") else key] = value
        row["path"] = str(folder)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["name", "state", "error", "seconds", *MAIN_METRICS, "path"])
    first = ["name", *param_cols, "state", "error", "seconds"]
    metrics_first = [m for m in MAIN_METRICS if m in df.columns]
    rest = [c for c in df.columns if c not in first and c not in metrics_first and c != "path"]
    for m in MAIN_METRICS:  # always present, NaN for failed points
        if m not in df.columns:
            df[m] = math.nan
            metrics_first.append(m)
    return df[first + metrics_first + rest + ["path"]].reset_index(drop=True)


def _matches(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return value is None or (isinstance(value, float) and math.isnan(value))
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return _plain(value) == _plain(wanted)


def select(df: "pd.DataFrame", **params: Any) -> "pd.DataFrame":
    """The rows of :func:`collect` whose parameters equal ``params`` (no row when a column is missing).

    Example:
        >>> select(df, use_cml=False, backbone="resnet50")     # doctest: +SKIP
    """
    mask = [True] * len(df)
    for key, wanted in params.items():
        if key not in df.columns:
            return df.iloc[0:0]
        mask = [m and _matches(v, wanted) for m, v in zip(mask, df[key].tolist())]
    return df[mask]


def paper_table(df: "pd.DataFrame", rows: Mapping[str, Mapping[str, Any]],
                paper: Mapping[str, Mapping[str, Any]] | None = None, *, dataset: str = "market1501",
                metrics: Sequence[str] = ("rank1", "mAP")) -> "pd.DataFrame":
    """Our numbers beside the paper's, in the paper's format (percent, one decimal).

    Args:
        df: :func:`collect`'s table.
        rows: ``{row label: parameter values}``; the row shows the mean over the matching ``done``
            points (several seeds average).
        paper: ``{row label: {dataset: {"rank1": %, "mAP": %}, "source": ...}}``, e.g.
            ``PAPER_RESULTS["loss_ablation"]``; rows it lacks get NaN.
        dataset: which of the paper's columns to show (``market1501`` or ``dukemtmc``).
        metrics: metric names of ``df`` (fractions) to show.

    Returns:
        Index: the row labels; columns ``<metric> (ours)``, ``<metric> (paper)`` for each metric, then
        ``runs`` (matching done points), ``state`` (done / failed / missing) and ``note`` (the first
        error of a failed point, or the paper's source).
    """
    import pandas as pd

    label = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10"}
    table = []
    for row_label, wanted in rows.items():
        matching = select(df, **wanted) if len(df) else df
        ok = matching[matching["state"] == "done"] if len(matching) else matching
        entry: dict[str, Any] = {}
        for m in metrics:
            ours = pd.to_numeric(ok[m], errors="coerce").mean() * 100 if len(ok) and m in ok else math.nan
            theirs = ((paper or {}).get(row_label, {}).get(dataset, {}) or {}).get(m, math.nan)
            entry[f"{label.get(m, m)} (ours)"] = round(float(ours), 1) if not math.isnan(ours) else math.nan
            entry[f"{label.get(m, m)} (paper)"] = theirs
        failed = matching[matching["state"] != "done"] if len(matching) else matching
        entry["runs"] = len(ok)
        entry["state"] = "done" if len(ok) else ("missing" if not len(matching) else str(failed["state"].iloc[0]))
        paper_row = (paper or {}).get(row_label, {})
        note = (paper_row.get(dataset) or {}).get("source") or paper_row.get("source", "")
        if len(failed) and failed["error"].notna().any():
            note = str(failed["error"].dropna().iloc[0]).splitlines()[0][:200]
        entry["note"] = note
        table.append(pd.Series(entry, name=row_label))
    return pd.DataFrame(table)


def paper_rows(paper: Mapping[str, Mapping[str, Any]], dataset: str = "market1501",
               metrics: Sequence[str] = PAPER_METRICS) -> "pd.DataFrame":
    """Published rows as a table (percent; NaN: not reported) with each row's source.

    Example:
        >>> paper_rows(PAPER_RESULTS["reference"]).loc["MAR (Yu et al. 2019)", "mAP"]
        40.0
    """
    import pandas as pd

    label = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10"}
    return pd.DataFrame({name: {**{label.get(m, m): row[dataset][m] for m in metrics},
                                "source": row.get("paper", row[dataset]["source"])}
                         for name, row in paper.items()}).T


def curve(df: "pd.DataFrame", param: str, fixed: Mapping[str, Any],
          metrics: Sequence[str] = ("rank1", "mAP")) -> "pd.DataFrame":
    """A metric-against-one-parameter curve from a one-at-a-time sweep (see :func:`one_at_a_time`).

    Args:
        df: :func:`collect`'s table.
        param: the varied parameter.
        fixed: the values of the other swept parameters along this curve.
        metrics: metric columns (fractions), returned in percent.

    Returns:
        Index: the values of ``param`` (sorted), columns: ``metrics`` in percent (mean over the
        matching done points).
    """
    import pandas as pd

    others = {k: v for k, v in fixed.items() if k != param}
    rows = select(df, **others) if len(df) else df
    rows = rows[rows["state"] == "done"] if len(rows) else rows
    if not len(rows) or param not in rows:
        return pd.DataFrame(columns=list(metrics), index=pd.Index([], name=param))
    values = rows[[param, *metrics]].copy()
    for m in metrics:
        values[m] = 100 * pd.to_numeric(values[m], errors="coerce")
    return values.groupby(param).mean().sort_index()


def metrics_table(runs: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """Rank-1/5/10, mAP (both AP conventions) and mINP in percent, one row per named run.

    Args:
        runs: ``{row label: metrics dict}`` (``RunResult.metrics``, its ``"initial"`` entry, a
            ``metrics.json`` read back); missing metrics show as NaN.
    """
    import pandas as pd

    names = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10", "mAP": "mAP",
             "mAP_devkit": "mAP (devkit)", "mINP": "mINP"}
    table = {label: {title: 100 * float(m[key]) if m.get(key) is not None else math.nan
                     for key, title in names.items()} for label, m in runs.items()}
    return pd.DataFrame.from_dict(table, orient="index").round(1)


def in_percent(df: "pd.DataFrame", columns: Sequence[str] | None = None, *, digits: int = 1) -> "pd.DataFrame":
    """A copy of a table with its metric columns (fractions) in percent, named ``<column> (%)``.

    Args:
        df: e.g. :func:`collect`'s table or a run's history.
        columns: the fraction columns (default: those of :data:`MAIN_METRICS` present, and
            ``pos_precision``, ``final_pos_precision``, ``train_acc``).
        digits: decimals kept.
    """
    import pandas as pd

    fractions = (*MAIN_METRICS, "pos_precision", "final_pos_precision", "train_acc")
    columns = [c for c in (columns if columns is not None else fractions) if c in df.columns]
    out = df.copy()
    for c in columns:
        out[c] = (100 * pd.to_numeric(out[c], errors="coerce")).round(digits)
    return out.rename(columns={c: f"{c} (%)" for c in columns})


# ----------------------------------------------------------------------------- notebook-side helpers

#: the dataset fields every notebook that trains or evaluates declares (README: "the same fields in a
#: notebook's parameters" as ``--target``/``--target-root``/``--reference``/``--reference-root``)
DATA_PARAMETERS = ("target", "target_root", "reference", "reference_root")
_PATH_FIELDS = ("target_root", "reference_root")


def notebook_config(preset: str, params: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> "Config":
    """The config of a notebook's parameters cell: the preset, then every non-None parameter.

    Relative dataset roots (``target_root``, ``reference_root``) are read from the repository root,
    wherever the kernel was started, and must exist.

    Args:
        preset: base preset name (``demo``, ``smoke``, ``cpu``, ``paper``).
        params: config fields from the parameters cell; ``None`` keeps the preset's value (use the
            string ``"none"`` for an explicit None, e.g. ``pretrained="none"``).
        extra: any other config fields (``{"mining_ratio": 0.01}``), applied last.

    Raises:
        NotebookParameterError: an unknown preset or field, a value of the wrong type, or a dataset
            root that does not exist (naming the absolute path tried); one line in the notebook.
    """
    from workbench.config import from_params

    values = {k: v for k, v in params.items() if v is not None}
    values |= dict(extra or {})
    for key in _PATH_FIELDS:
        if isinstance(values.get(key), (str, os.PathLike)) and str(values[key]).lower() != "none":
            path = repo_path(values[key])
            if not path.exists():
                raise NotebookParameterError(f"{key} = {str(values[key])!r}: no such folder or file {path}")
            values[key] = str(path)
    try:
        return from_params(values, base=preset)
    except ValueError as err:
        raise NotebookParameterError(str(err)) from None


def notebook_out_dir(out_dir: str | os.PathLike | None, kind: str) -> Path:
    """The folder a notebook writes to: ``out_dir`` (created; a relative one from the repository root),
    or a new ``runs/<time>-<kind>``."""
    from workbench.runs import new_run_dir

    if out_dir is None:
        return new_run_dir(kind)
    path = repo_path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_run(kind: str, stage: str = "mar", cfg: "Config | None" = None,
             root: str | os.PathLike | None = None) -> Path | None:
    """The newest finished run of a notebook: ``<runs>/<time>-<kind>/<stage>`` with ``metrics.json``.

    Args:
        kind: the notebook's run kind (``"quickstart"`` for ``00_quickstart``'s runs).
        stage: the run folder inside it (``"mar"``, ``"pretrain"``).
        cfg: when given, only a run with the same preset and datasets.
        root: where runs live (default ``$WORKBENCH_RUNS`` or ``runs/``).

    Returns:
        The run folder, or None.
    """
    from workbench.config import load_config
    from workbench.paths import runs_root

    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return None
    for folder in sorted(root.glob(f"*-{kind}"), reverse=True):
        run = folder / stage
        if not (run / "metrics.json").is_file() or not (run / "config.json").is_file():
            continue
        if cfg is not None:
            saved = load_config(run / "config.json").flat()
            wanted = cfg.flat()
            if any(saved.get(k) != wanted.get(k) for k in ("preset", *DATA_PARAMETERS, "synthetic_size")):
                continue
        return run
    return None


#: fields that do not change what a run computes (a finished run with other values is reused)
_RUN_ONLY_FIELDS = {"progress", "device", "workers", "eval_batch_size", "cache_images", "preset"}
#: stage-2 fields that a stage-1 run ignores
_STAGE2_FIELDS = {"epochs", "n_target", "n_reference", "lr", "weight_decay", "milestones", "mining_ratio",
                  "lambda_cml", "lambda_ref", "beta", "use_mdl", "use_cml", "use_al", "use_rj",
                  "mdl_warmup_epochs", "margin"}


def _config_differences(saved: "Config", cfg: "Config", stage: str) -> list[str]:
    ignore = _RUN_ONLY_FIELDS | (_STAGE2_FIELDS if stage == "pretrain" else set())
    a, b = saved.flat(), cfg.flat()
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in b if k not in ignore and a.get(k) != b.get(k)]


def ensure_run(stage: str, cfg: "Config", run_dir: str | os.PathLike, *,
               init_checkpoint: str | os.PathLike | None = None, callbacks: Sequence[Callable] = ()) -> "RunResult":
    """Run a training stage in ``run_dir``, or reuse it: finished → reloaded, interrupted → resumed.

    This is what makes a notebook re-runnable (a failed sweep point continues where it stopped).

    Args:
        stage: ``"pretrain"`` (stage 1) or ``"mar"`` (stage 2).
        cfg: the configuration.
        run_dir: the run folder.
        init_checkpoint: stage 2's starting checkpoint (None: no reference pretraining).
        callbacks: passed to the engine.

    Raises:
        ValueError: an unknown stage, or ``run_dir`` holding a run of another configuration (the
            message lists the differing fields).
    """
    from workbench.config import load_config
    from workbench.engine import pretrain, train_mar

    if stage not in ("pretrain", "mar"):
        raise ValueError(f"stage must be 'pretrain' or 'mar', got {stage!r}")
    run_dir = Path(run_dir)
    resume = (run_dir / "checkpoint.pt").is_file()
    if resume and (run_dir / "config.json").is_file():
        diff = _config_differences(load_config(run_dir / "config.json"), cfg, stage)
        if diff:
            raise ValueError(f"{run_dir} holds a {stage} run with another configuration ({'; '.join(diff[:6])}); "
                             "choose another out_dir or delete that folder")
    if resume:
        log.info("%s: reusing/resuming %s", stage, run_dir)
    if stage == "pretrain":
        return pretrain(cfg, run_dir, resume=resume, callbacks=callbacks)
    return train_mar(cfg, run_dir, init_checkpoint=init_checkpoint, resume=resume, callbacks=callbacks)


def record_metrics(out_dir: str | os.PathLike, metrics: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``out_dir/metrics.json`` for :func:`collect`: the metrics, flattened, plus ``extra``.

    Arrays such as ``cmc`` are kept as lists; ``distmat``/``qf``/``gf`` are dropped.

    Args:
        out_dir: the notebook's output folder (a sweep point's folder under papermill).
        metrics: e.g. ``RunResult.metrics``.
        **extra: more values (``pretrain={...}`` is flattened to ``pretrain_rank1`` ...).

    Returns:
        The written path.
    """
    from workbench.runs import write_json

    drop = {"distmat", "qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids"}
    flat = _flatten({k: v for k, v in {**metrics, **extra}.items() if k not in drop})
    path = Path(out_dir) / METRICS_FILE
    write_json(path, flat)
    return path


def history_summary(history: "pd.DataFrame | Sequence[Mapping[str, Any]]") -> dict[str, float]:
    """Time per epoch of a run's history: median ``seconds`` and ``images_per_s``, epochs run."""
    import pandas as pd

    df = pd.DataFrame(history)
    out: dict[str, float] = {"epochs_run": float(len(df))}
    for column, name in (("seconds", "seconds_per_epoch"), ("images_per_s", "images_per_s")):
        out[name] = float(pd.to_numeric(df[column], errors="coerce").median()) if column in df else math.nan
    return out


def agent_similarity(agents: "torch.Tensor") -> dict[str, Any]:
    """Cosine similarity between reference agents (how spread out stage 1 left them).

    Args:
        agents: (Np, D) agent matrix (normalized inside, as the model does).

    Returns:
        ``mean``, ``max``, ``min``, ``std`` of the off-diagonal cosines, ``num_agents``, and
        ``cosines`` (the Np·(Np−1)/2 upper-triangle values, a numpy array for a histogram).
    """
    import torch

    from workbench.models.layers import l2_normalize

    a = l2_normalize(agents.detach().float().cpu())  # (Np, D)
    n = a.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    cos = (a @ a.T)[iu[0], iu[1]]  # (Np·(Np−1)/2,)
    if cos.numel() == 0:
        return {"num_agents": n, "mean": math.nan, "max": math.nan, "min": math.nan, "std": math.nan,
                "cosines": cos.numpy()}
    return {"num_agents": n, "mean": float(cos.mean()), "max": float(cos.max()), "min": float(cos.min()),
            "std": float(cos.std()) if cos.numel() > 1 else 0.0, "cosines": cos.numpy()}
