"""Sweeps: one notebook over a grid, each point in its own folder (running one notebook: :mod:`.execute`).

A sweep runs one notebook once per point, each point in its own folder with ``status.json``
(running | done | failed, params, error, times), the executed notebook and ``metrics.json``.
Re-running a sweep skips the points that are done; a failing point never stops the others. The sweep
folder's ``.lock`` is held while a sweep runs it: a second sweep of the same folder is refused.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them
    import pandas as pd

    from workbench.experiments.executors import Attempt, Executor

from workbench.errors import ConfigError
from workbench.experiments.execute import (
    absolute_paths,
    notebook_parameters,
    now,
    repo_path,
    resolve_notebook,
    unknown_parameter,
)
from workbench.experiments.grids import point_name, read_grid
from workbench.runs import FolderLock, PointFolder

STATUS_FILE = PointFolder.STATUS
#: what runs one attempt of a point, handed to the executors (which know no notebook runner themselves)
RUN_NOTEBOOK = "workbench.experiments.execute:attempt"

log = logging.getLogger("workbench.experiments")


def read_status(point_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A point's ``status.json`` (None when absent or unreadable)."""
    return PointFolder(point_dir).status()


def _literal(source: Any) -> Any:
    """A parameter's default from its source text (``"True"`` → True); the text when not a literal."""
    import ast

    try:
        return ast.literal_eval(source) if isinstance(source, str) else source
    except (ValueError, SyntaxError):
        return source


def _type_error(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a parameter whose default is ``default`` (None: it can).

    Config fields are typed by :func:`workbench.config.from_params` (``config_error`` below); this
    checks the notebook's own parameters (``seeds``, ``jobs``, switches) against their defaults."""
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
    from workbench.config import all_field_names, from_params

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
        known = set(all_field_names())
        fields = {k: v for k, v in params.items() if k in known and v is not None}
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

    def missing_file(key: str, value: Any) -> str | None:
        """A parameter naming a checkpoint, dataset root or file that is not there (found before any kernel)."""
        if not key.endswith(("_checkpoint", "_root", "_file", "_path")) or not isinstance(value, (str, os.PathLike)):
            return None
        where_ = repo_path(value)
        return None if where_ is None or where_.exists() else f"{key} = {str(value)!r}: no such file or folder {where_}"

    for key in base:
        if key not in declared:
            add(unknown_parameter(path, key, declared), None, key)
    for key, value in base.items():
        if key in declared and (why := _type_error(key, value, defaults[key]) or missing_file(key, value)):
            add(why, None, key)
    # the shared parameters alone (what every point has in common), unless the points choose the method: its
    # settings among the shared ones are then checked with each point's method
    chooses_method = any("method" in p or "method" in (p.get("extra") or {}) for p in points)
    shared = config_error(base) if not problems and not chooses_method else None
    if shared:
        add(shared, None, None)
    for i, point in enumerate(points):
        params = {**base, **point}
        unknown = [key for key in point if key not in declared]
        for key in unknown:
            add(unknown_parameter(path, key, declared), i, key)
        if unknown or any(key not in declared for key in base):
            continue
        if "out_dir" in params:
            raise ConfigError("out_dir is the sweep's to set (each point gets its own folder); leave it out of "
                             "the grid and base_params")
        wrong_type = [(key, why) for key, value in point.items()
                      if (why := _type_error(key, value, defaults.get(key)) or missing_file(key, value))]
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
          progress: bool = True, kernel_name: str = "python3", timeout: float | None = None,
          jobs: int | None = None, devices: str | Sequence[int | str] | None = None,
          gpus_per_point: int | None = None, cpus_per_point: float | None = None,
          executor: "str | Executor" = "local", address: str | None = None,
          names: Sequence[str] | None = None) -> "pd.DataFrame":
    """Run a notebook once per grid point, one folder per point; skip points already done.

    Args:
        path: the notebook (it should declare ``out_dir`` and record its metrics with
            :func:`record_point`).
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
        executor: ``"local"``, ``"ray"`` or a :class:`workbench.experiments.executors.Executor`.
        address: the Ray cluster (``"auto"``, ``"HOST:PORT"``); None: the runtime already started in
            this process, else Ray's default (``RAY_ADDRESS``, or a new local runtime).
        names: the points' folder names, one per point (default: :func:`point_name` of each point);
            ``workbench reproduce`` names them by row, seed and a hash of what they compute.

    Returns:
        :func:`collect` of this grid's points (one row each, in grid order), the same whatever the
        executor.

    Raises:
        ValueError: a bad grid, a parameter the notebook does not declare, a value of the wrong type
            or an invalid config (:func:`check_points`, before any kernel starts). A failing point
            raises nothing: its status says ``failed``.
        workbench.experiments.executors.SharedStorageError: with Ray, a node that does not see the sweep folder.
        RunInUseError: another sweep is running in ``out_dir`` (its ``.lock``); nothing was touched.
        KeyboardInterrupt: after every running point was stopped and recorded as interrupted.
    """
    from workbench.experiments.executors import Attempt
    from workbench.experiments.results import collect  # results reads the status files written here

    nb_path = Path(path).resolve()
    base = absolute_paths(dict(base_params or {}))
    points, where, source = read_grid(grid)
    points = [absolute_paths(p) for p in points]
    check_points(nb_path, points, base, where=where, source=source)  # the whole grid, before any kernel
    given = list(names) if names is not None else None
    if given is not None and len(given) != len(points):
        raise ConfigError(f"names: {len(given)} names for {len(points)} (distinct) points")
    out_dir = Path(out_dir).resolve()
    # one sweep at a time: a second one would run again the points this one is running, mark them
    # failed in their status.json and replace their executed notebooks
    with FolderLock(out_dir, "sweep folder"):
        runner = make_executor(executor, jobs=jobs, devices=devices, gpus_per_point=gpus_per_point,
                               cpus_per_point=cpus_per_point, address=address)
        names = []
        todo: list[tuple[Attempt, dict | None]] = []
        for i, point in enumerate(points):
            params = {**base, **point}
            name = given[i] if given is not None else point_name(point, params)
            names.append(name)
            status = read_status(out_dir / name)
            if status is None or status.get("state") != "done":
                todo.append((Attempt(name, nb_path, params, out_dir / name, kernel_name, timeout,
                                      call=RUN_NOTEBOOK),
                             {"point": point, "previous": status}))
        if todo:
            runner.prepare(out_dir, nb_path)
        counts = _run_points(todo, runner, retries=retries, progress=progress, label=f"sweep {nb_path.stem}",
                             skipped=len(points) - len(todo))
        log.info("sweep %s: %d run, %d skipped (done before), %d failed → %s", nb_path.name, counts["done"],
                 len(points) - len(todo), counts["failed"], out_dir)
        return collect(out_dir, names=names)


def make_executor(executor: "str | Executor" = "local", *, jobs: int | None = None,
                  devices: str | Sequence[int | str] | None = None, gpus_per_point: int | None = None,
                  cpus_per_point: float | None = None, address: str | None = None) -> "Executor":
    """An executor from :func:`~workbench.experiments.sweep`'s options.

    ``"local"`` with ``jobs`` 1 (or None) and no ``devices``: :class:`InProcess`; otherwise
    :class:`LocalProcesses` (``gpus_per_point`` default 1, ``cpus_per_point``: threads per worker,
    default cores // jobs). ``"ray"``: :class:`RayExecutor` (``cpus_per_point`` default 1,
    ``gpus_per_point`` default 0).
    """
    from workbench.experiments.executors import Executor, InProcess, LocalProcesses, parse_devices

    if isinstance(executor, Executor):
        return executor
    if executor == "local":
        if (jobs is None or jobs == 1) and not parse_devices(devices):
            return InProcess()
        return LocalProcesses(jobs, devices, gpus_per_point or 1,
                              threads=int(cpus_per_point) if cpus_per_point else None)
    if executor == "ray":
        if devices:
            raise ValueError("devices is for the local executor; Ray gives each point gpus_per_point GPUs")
        from workbench.experiments.ray_executor import RayExecutor  # ray: only when asked for

        return RayExecutor(address, num_cpus=cpus_per_point or 1, num_gpus=gpus_per_point or 0, jobs=jobs)
    raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")


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
                          "attempts": int(previous.get("attempts", 0)) + n + 1, "started": now(),
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
                "state": "interrupted", "error": "interrupted (Ctrl-C or SIGTERM); run the sweep again to resume it",
                "finished": now(),
                "seconds": round(time.time() - started, 3)})
        raise
    finally:
        bar.close()
        runner.close()
    return counts


def shared_stage1(points: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, *,
                  base_params: Mapping[str, Any] | None = None, notebook: str | os.PathLike = "02_pretrain_reference.ipynb",
                  **sweep_kwargs: Any) -> "tuple[pd.DataFrame, list[Path | None]]":
    """One stage 1 per point, run as a sweep of ``02_pretrain_reference.ipynb``, for stage-2 points to share.

    The protocol of the committed Tables 1 and 2: one stage-1 run per (backbone init, fused stages)
    combination, and every stage-2 seed of that combination starts from its checkpoint, so the spread over
    seeds is the spread of stage 2. (Each stage-2 point running its own stage 1 also varies stage 1.)

    Args:
        points: one dict of notebook-02 parameters per stage 1, e.g. ``[{"stages": "layer3+layer4"}]``.
        out_dir: the stage-1 sweep folder; points already done there are reused.
        base_params: parameters shared by every point; those notebook 02 does not declare (stage-2
            parameters such as ``epochs``) are left out, so a stage-2 sweep's base can be passed as is.
        notebook: the stage-1 notebook (relative: looked up like ``train_notebook``).
        **sweep_kwargs: ``jobs``, ``retries``, ``progress`` ... as :func:`sweep` takes them.

    Returns:
        ``(frame, checkpoints)``: :func:`sweep`'s frame of the stage-1 points, and per point (in order) its
        ``pretrain/checkpoint.pt``, or None where that point failed (its ``error`` is in the frame).
    """
    nb_path = resolve_notebook(notebook, "shared_stage1(notebook=...)")
    declared = notebook_parameters(nb_path)
    base = {k: v for k, v in (base_params or {}).items() if k in declared}
    df = sweep(nb_path, [dict(p) for p in points], out_dir, base_params=base, **sweep_kwargs)
    checkpoints: list[Path | None] = []
    for state, path in zip(df["state"], df["path"]):
        run = PointFolder(path).run("pretrain")
        checkpoints.append(run.checkpoint_path if state == "done" and run.has_checkpoint else None)
    return df, checkpoints
