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
:func:`agent_similarity`) keep the notebooks to wiring and display.

Example:
    >>> df = sweep("notebooks/03_train_mar.ipynb", {"use_cml": [True, False]}, "runs/sweeps/cml",
    ...            base_params={"preset": "smoke"})                              # doctest: +SKIP
    >>> df[["use_cml", "state", "rank1", "mAP"]]                                 # doctest: +SKIP

Command line: ``python -m workbench sweep NOTEBOOK --grid grid.yaml --out DIR`` and
``python -m workbench.experiments strip notebooks/*.ipynb`` (clear outputs before committing).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import os
import re
import socket
import sys
import time
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them
    import pandas as pd
    import torch

    from workbench.config import Config
    from workbench.engine import RunResult

from workbench.errors import ConfigError, MissingFileError

log = logging.getLogger("workbench.experiments")

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
#: the metrics shown first by :func:`collect` and the CLI (fractions in [0, 1])
MAIN_METRICS = ("rank1", "rank5", "rank10", "mAP", "mAP_devkit", "mINP")

# ----------------------------------------------------------------------------- the paper's numbers

_NAN = float("nan")


def _paper_row(market: tuple[float, float] | None = None, duke: tuple[float, float] | None = None,
               source: str = "") -> dict[str, Any]:
    def pair(v: tuple[float, float] | None) -> dict[str, float]:
        return {"rank1": v[0], "mAP": v[1]} if v is not None else {"rank1": _NAN, "mAP": _NAN}
    return {"market1501": pair(market), "dukemtmc": pair(duke), "source": source}


#: Published rank-1 / mAP (percent), MSMT17 as the reference set. Only numbers stated in the papers
#: (Yu et al. CVPR 2019 "MAR"; Zhang et al. 2020, Opto-Electronic Engineering 47(12): 190636) are
#: filled in; NaN means "fill from the paper" (the ablation rows were not at hand when this was
#: written; do not guess them).
PAPER_RESULTS: dict[str, dict[str, dict[str, Any]]] = {
    # Yu et al. 2019, Table 3: loss ablation
    "loss_ablation": {
        "full": _paper_row((67.7, 40.0), (67.1, 48.0), "Yu et al. 2019, MAR"),
        "w/o CML": _paper_row(source="fill from the paper (Yu et al. 2019, Table 3)"),
        "w/o RAL": _paper_row(source="fill from the paper (Yu et al. 2019, Table 3)"),
        "w/o both": _paper_row(source="fill from the paper (Yu et al. 2019, Table 3)"),
    },
    # Zhang et al. 2020, Table 2: multi-level feature fusion (ResNet-50)
    "feature_fusion": {
        "layer4": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 2)"),
        "layer1+layer3": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 2)"),
        "layer1+layer4": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 2)"),
        "layer2+layer3": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 2)"),
        "layer2+layer4": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 2)"),
        "layer3+layer4": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 2)"),
        "layer1+layer3+layer4": _paper_row((68.97, 41.2), (68.6, 50.1), "Zhang et al. 2020"),
    },
    # Zhang et al. 2020, Table 1: backbone × ImageNet init × reference pretraining
    "pretraining": {
        "resnet50, imagenet, reference": _paper_row((67.7, 40.0), (67.1, 48.0), "Yu et al. 2019, MAR"),
        "resnet50, imagenet, no reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
        "resnet50, random, reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
        "resnet50, random, no reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
        "seresnet50, imagenet, reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
        "seresnet50, imagenet, no reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
        "seresnet50, random, reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
        "seresnet50, random, no reference": _paper_row(source="fill from the paper (Zhang et al. 2020, Table 1)"),
    },
}

#: Yu et al. 2019 Table 3: the loss switches of each ablation row (L_RAL = L_AL + β·L_RJ).
LOSS_ABLATION: dict[str, dict[str, bool]] = {
    "full": {"use_mdl": True, "use_cml": True, "use_al": True, "use_rj": True},
    "w/o CML": {"use_mdl": True, "use_cml": False, "use_al": True, "use_rj": True},
    "w/o RAL": {"use_mdl": True, "use_cml": True, "use_al": False, "use_rj": False},
    "w/o both": {"use_mdl": True, "use_cml": False, "use_al": False, "use_rj": False},
}

#: Zhang et al. 2020 Table 2: layer4 alone and the six fused combinations (tests/test_models.py FUSIONS).
FUSION_COMBINATIONS: tuple[str, ...] = (
    "layer4", "layer1+layer3", "layer1+layer4", "layer2+layer3", "layer2+layer4", "layer3+layer4",
    "layer1+layer3+layer4",
)

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


def load_grid(grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]] | str | os.PathLike) -> list[dict[str, Any]]:
    """The points of a grid.

    Args:
        grid: a dict of lists (cartesian product, in key order), a list of dicts (explicit points),
            or the path of a YAML/JSON file holding either. A scalar value in a dict counts as a
            one-value list.

    Returns:
        One parameter dict per point, duplicates removed (first kept).

    Raises:
        ValueError: an empty grid, a malformed one, or a file that is neither.
        FileNotFoundError: a grid file that does not exist.

    Example:
        >>> load_grid({"lr": [0.1, 0.01], "use_cml": [True]})
        [{'lr': 0.1, 'use_cml': True}, {'lr': 0.01, 'use_cml': True}]
    """
    if isinstance(grid, (str, os.PathLike)):
        import yaml

        path = Path(grid)
        if not path.is_file():
            raise MissingFileError(f"grid file not found: {path}")
        grid = _fix_yaml_scalar(yaml.safe_load(path.read_text()))
        if grid is None:
            raise ConfigError(f"grid file {path} is empty")
    if isinstance(grid, Mapping):
        if not grid:
            raise ConfigError("empty grid: give at least one parameter with a list of values")
        keys = list(grid)
        values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        for key, vals in zip(keys, values):
            if not vals:
                raise ConfigError(f"grid parameter {key!r} has no values")
        points = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    elif isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)):
        points = []
        for i, point in enumerate(grid):
            if not isinstance(point, Mapping):
                raise ConfigError(f"grid point {i} is not a dict of parameters: {point!r}")
            points.append(dict(point))
        if not points:
            raise ConfigError("empty grid: the list of points is empty")
    else:
        raise ConfigError(f"a grid is a dict of lists, a list of dicts or a YAML file, got {type(grid).__name__}")
    unique: list[dict[str, Any]] = []
    seen: set[str] = set()
    for point in points:
        key = _canonical(point)
        if key not in seen:
            seen.add(key)
            unique.append(point)
    return unique


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
    # the kernel's own start-up warnings would land in the output of a notebook that runs a sweep
    engine_kwargs: dict[str, Any] = {"extra_arguments": ["--IPKernelApp.log_level=ERROR"]}
    if timeout is not None:
        engine_kwargs["execution_timeout"] = timeout
    pm.execute_notebook(str(path), str(output), parameters={k: _plain(v) for k, v in params.items()},
                        kernel_name=kernel_name, cwd=str(path.parent), progress_bar=progress,
                        log_output=False, **engine_kwargs)
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
        ValueError: a bad grid or a parameter the notebook does not declare (checked before
            anything runs). A failing point raises nothing: its status says ``failed``.
    """
    from tqdm.auto import tqdm

    nb_path = Path(path).resolve()
    declared = notebook_parameters(nb_path)
    base = _absolute_paths(dict(base_params or {}))
    points = [_absolute_paths(p) for p in load_grid(grid)]
    for point in points:
        _check_params(nb_path, {**base, **point}, declared)
        if "out_dir" in {**base, **point}:
            raise ConfigError("out_dir is the sweep's to set (each point gets its own folder); leave it out of "
                             "the grid and base_params")
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
        note = (paper or {}).get(row_label, {}).get("source", "")
        if len(failed) and failed["error"].notna().any():
            note = str(failed["error"].dropna().iloc[0]).splitlines()[0][:200]
        entry["note"] = note
        table.append(pd.Series(entry, name=row_label))
    return pd.DataFrame(table)


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


# ----------------------------------------------------------------------------- notebook-side helpers

def notebook_config(preset: str, params: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> "Config":
    """The config of a notebook's parameters cell: the preset, then every non-None parameter.

    Args:
        preset: base preset name (``demo``, ``smoke``, ``cpu``, ``paper``).
        params: config fields from the parameters cell; ``None`` keeps the preset's value (use the
            string ``"none"`` for an explicit None, e.g. ``pretrained="none"``).
        extra: any other config fields (``{"mining_ratio": 0.01}``), applied last.

    Raises:
        ValueError: an unknown field or a value of the wrong type.
    """
    from workbench.config import from_params

    values = {k: v for k, v in params.items() if v is not None}
    values |= dict(extra or {})
    return from_params(values, base=preset)


def notebook_out_dir(out_dir: str | os.PathLike | None, kind: str) -> Path:
    """The folder a notebook writes to: ``out_dir`` (created), or a new ``runs/<time>-<kind>``."""
    from workbench.runs import new_run_dir

    if out_dir is None:
        return new_run_dir(kind)
    path = Path(out_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_run(stage: str, cfg: "Config", run_dir: str | os.PathLike, *,
               init_checkpoint: str | os.PathLike | None = None, callbacks: Sequence[Callable] = ()) -> "RunResult":
    """Run a training stage in ``run_dir``, or reuse it: finished → reloaded, interrupted → resumed.

    This is what makes a notebook re-runnable (a failed sweep point continues where it stopped). It
    is the engine's one resume path (:func:`workbench.engine.run_stage` with ``resume=True``).

    Args:
        stage: ``"pretrain"`` (stage 1) or ``"mar"`` (stage 2).
        cfg: the configuration.
        run_dir: the run folder.
        init_checkpoint: stage 2's starting checkpoint (None: no reference pretraining).
        callbacks: passed to the engine.

    Raises:
        ConfigError: an unknown stage.
        RunFolderError: ``run_dir`` holds a run of another configuration (the message lists the
            differing fields).
    """
    from workbench.engine import run_stage

    return run_stage(stage, cfg, Path(run_dir), init_checkpoint=init_checkpoint, resume=True, callbacks=callbacks)


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


# ----------------------------------------------------------------------------- stripping notebooks

def strip_notebook(path: str | os.PathLike, *, write: bool = True) -> bool:
    """Remove outputs, execution counts and run metadata (papermill, widgets, timings) from a notebook.

    Cell tags (``parameters``) and the kernelspec are kept.

    Args:
        path: the ``.ipynb`` file.
        write: rewrite the file (atomically) when something changes; False only reports.

    Returns:
        True when the notebook had something to strip.
    """
    import nbformat

    from workbench.runs import atomic_write_text

    path = Path(path)
    original = path.read_text(encoding="utf-8")
    nb = nbformat.reads(original, as_version=4)
    for key in ("papermill", "widgets", "execution"):
        nb.metadata.pop(key, None)
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    for cell in nb.cells:
        for key in ("papermill", "execution", "collapsed", "scrolled", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    text = nbformat.writes(nb)
    text += "" if text.endswith("\n") else "\n"
    if text == original:
        return False
    if write:
        atomic_write_text(path, text)
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.experiments strip [--check] NOTEBOOK...``."""
    parser = argparse.ArgumentParser(prog="python -m workbench.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    strip = sub.add_parser("strip", help="remove outputs and execution counts from notebooks")
    strip.add_argument("notebooks", nargs="+")
    strip.add_argument("--check", action="store_true", help="only report; exit 1 if any notebook has outputs")
    args = parser.parse_args(argv)
    changed = [p for p in args.notebooks if strip_notebook(p, write=not args.check)]
    for p in changed:
        print(f"{'has outputs' if args.check else 'stripped'}: {p}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
