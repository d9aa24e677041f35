"""Running notebooks: papermill with checked parameters, notebook paths, and sweeps over a grid.

A sweep runs one notebook once per point, each point in its own folder with ``status.json``
(running | done | failed, params, error, times), the executed notebook and ``metrics.json``.
Re-running a sweep skips the points that are done; a failing point never stops the others.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import socket
import time
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them
    import pandas as pd

from workbench.errors import ConfigError, MissingFileError
from workbench.experiments.grids import _load_grid, _plain, point_name

STATUS_FILE = "status.json"

log = logging.getLogger("workbench.experiments")

# ----------------------------------------------------------------------------- running notebooks

def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell: ``{name: default source}``.

    Raises:
        FileNotFoundError: no such notebook.
    """
    import papermill as pm

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"notebook not found: {path}")
    return {name: info.get("default") for name, info in pm.inspect_notebook(str(path)).items()}


def _check_params(path: Path, params: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"{path.name} declares no parameter {', '.join(map(repr, unknown))}; "
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


class NotebookParameterError(ConfigError):
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
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


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
            raise ConfigError("out_dir is the sweep's to set (each point gets its own folder); leave it out of "
                             "the grid and base_params")
        wrong_type = [(key, why) for key, value in point.items() if (why := _type_error(key, value, defaults.get(key)))]
        for key, why in wrong_type:
            add(why, i, key)
        error = None if wrong_type else config_error(params)
        if error and error != shared:
            add(error, i, next((k for k in point if k in error), None))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)


def sweep(path: str | os.PathLike, grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]] | str | os.PathLike,
          out_dir: str | os.PathLike, *, base_params: Mapping[str, Any] | None = None, retries: int = 0,
          progress: bool = True, kernel_name: str = "python3", timeout: float | None = None) -> "pd.DataFrame":
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

    Returns:
        :func:`collect` of this grid's points (one row each, in grid order).

    Raises:
        ValueError: a bad grid, a parameter the notebook does not declare, a value of the wrong type
            or an invalid config (:func:`check_points`, before any kernel starts). A failing point
            raises nothing: its status says ``failed``.
    """
    from tqdm.auto import tqdm

    nb_path = Path(path).resolve()
    base = _absolute_paths(dict(base_params or {}))
    points, where, source = _load_grid(grid)
    points = [_absolute_paths(p) for p in points]
    check_points(nb_path, points, base, where=where, source=source)  # the whole grid, before any kernel
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    done = failed = skipped = 0
    bar = tqdm(points, desc=f"sweep {nb_path.stem}", unit="point", disable=not progress, dynamic_ncols=True)
    for point in bar:
        params = {**base, **point}
        name = point_name(point, params)
        names.append(name)
        point_dir = out_dir / name
        status = read_status(point_dir)
        if status is not None and status.get("state") == "done":
            skipped += 1
            bar.set_postfix(done=done, skipped=skipped, failed=failed)
            continue
        bar.set_postfix_str(name[:40])
        ok = _run_point(nb_path, point, params, point_dir, retries=retries, kernel_name=kernel_name,
                        timeout=timeout, previous=status)
        done += ok
        failed += not ok
        bar.set_postfix(done=done, skipped=skipped, failed=failed)
    bar.close()
    log.info("sweep %s: %d run, %d skipped (done before), %d failed → %s", nb_path.name, done, skipped, failed,
             out_dir)
    from workbench.experiments.results import collect  # results reads the status files written here

    return collect(out_dir, names=names)


def _run_point(nb_path: Path, point: dict, params: dict, point_dir: Path, *, retries: int, kernel_name: str,
               timeout: float | None, previous: dict | None) -> bool:
    """Run one point with retries, writing ``status.json`` before and after each attempt."""
    from workbench.runs import write_json

    point_dir.mkdir(parents=True, exist_ok=True)
    attempts = int(previous.get("attempts", 0)) if previous else 0
    status: dict[str, Any] = {
        "state": "running", "name": point_dir.name, "notebook": str(nb_path), "point": point, "params": params,
        "executed_notebook": nb_path.name, "host": socket.gethostname(), "pid": os.getpid(),
    }
    for attempt in range(retries + 1):
        attempts += 1
        started = time.time()
        status |= {"state": "running", "attempts": attempts, "started": _now(), "finished": None,
                   "seconds": None, "error": None, "traceback": None}
        write_json(point_dir / STATUS_FILE, status)
        log.info("point %s (attempt %d)", point_dir.name, attempts)
        try:
            run_notebook(nb_path, params, point_dir, kernel_name=kernel_name, timeout=timeout)
        except KeyboardInterrupt:
            write_json(point_dir / STATUS_FILE, status | {"state": "failed", "error": "KeyboardInterrupt: interrupted",
                                                          "finished": _now(),
                                                          "seconds": round(time.time() - started, 3)})
            raise
        except Exception as err:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
            message, tb = _error_of(err)
            status |= {"state": "failed", "error": message, "traceback": tb, "finished": _now(),
                       "seconds": round(time.time() - started, 3)}
            write_json(point_dir / STATUS_FILE, status)
            log.warning("point %s failed (attempt %d/%d): %s", point_dir.name, attempt + 1, retries + 1, message)
            continue
        status |= {"state": "done", "finished": _now(), "seconds": round(time.time() - started, 3)}
        write_json(point_dir / STATUS_FILE, status)
        return True
    return False
