"""Notebook-side helpers: the parameters papermill gave checked, a parameters cell to a config, output
folders, finished runs, recorded point summaries. (Notebooks are committed without outputs by nbstripout: ``make notebooks-strip``.)"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them

    from workbench.config import Config
    from workbench.engine import RunResult

from workbench.errors import WorkbenchError
from workbench.evaluation.names import METRIC_KEYS
from workbench.experiments.results import flatten_metrics
from workbench.experiments.execute import NOTEBOOK_ENV, NotebookParameterError, repo_path, unknown_parameter
from workbench.runs import RunFolder

log = logging.getLogger("workbench.experiments")

# ----------------------------------------------------------------------------- notebook-side helpers

#: how papermill's ``injected-parameters`` cell starts in a Python kernel (its default comment)
INJECTED_CELL_START = "# Parameters\n"


def check_parameters() -> None:
    """Stop the notebook when papermill was given a parameter that its parameters cell does not declare.

    papermill (``papermill NB OUT -p NAME VALUE``, ``execute_notebook(parameters=...)``) writes the
    values it is given into a cell tagged ``injected-parameters`` right after the parameters cell and
    only warns ("Passed unknown parameter") about a name the notebook does not declare: ``-p prest
    smoke`` ran the default preset. Called first thing after the parameters cell, this reads the
    kernel's input history: every name the last injected cell assigns must have been assigned by a
    cell run before it (the parameters cell; papermill's ``PAPERMILL_*`` paths excepted). Outside a
    kernel, or in a notebook nobody parameterized, it does nothing. (:func:`run_notebook` and sweeps
    refuse such a parameter before any kernel starts.)

    Raises:
        NotebookParameterError: one line naming the parameter and the declared name closest to it.

    Example:
        >>> check_parameters()  # outside a kernel: nothing to check
    """
    cells = _kernel_inputs()
    injected = [i for i, cell in enumerate(cells) if cell.startswith(INJECTED_CELL_START)]
    if not injected:
        return
    declared = sorted(set().union(*(_assigned(cells[i]) for i in range(injected[-1]) if i not in injected)))
    given = _assigned(cells[injected[-1]])
    unknown = sorted(name for name in given if name not in declared and not name.startswith("PAPERMILL_"))
    if unknown:
        more = f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
        raise NotebookParameterError(unknown_parameter(_notebook_name(), unknown[0], declared) + more)


def _kernel_inputs() -> list[str]:
    """The code cells this kernel ran, in order (IPython's history, magics translated); [] outside one."""
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    return list(shell.history_manager.input_hist_parsed) if shell is not None else []


def _assigned(source: str) -> set[str]:
    """The names a cell assigns at its top level (``name = ...``, ``name: type = ...``)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _notebook_name() -> str:
    """The running notebook's file name, when :func:`run_notebook` or JupyterLab said it."""
    for env in (NOTEBOOK_ENV, "JPY_SESSION_NAME"):
        value = os.environ.get(env)
        if value and value.endswith(".ipynb"):
            return Path(value).name
    return "this notebook"


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


class RunInterrupted(WorkbenchError):
    """A training cell stopped by Kernel → Interrupt; IPython shows it as one line saying where the run is."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def notebook_out_dir(out_dir: str | os.PathLike | None, kind: str) -> Path:
    """The folder a notebook writes to: ``out_dir`` (created; a relative one from the repository root),
    or a new ``runs/<time>-<kind>``."""
    from workbench.runs import new_run_dir

    path = repo_path(out_dir)
    if path is None:
        return new_run_dir(kind)
    path.mkdir(parents=True, exist_ok=True)
    return path


def finished_runs(kind: str | None = None, stage: str = "mar", cfg: "Config | None" = None,
                  root: str | os.PathLike | None = None) -> list[Path]:
    """The finished runs of a stage under the runs folder, newest first: ``<runs>/<name>/<stage>`` (what
    ``demo``, the notebooks and sweeps write) or ``<runs>/<name>`` itself (``train --run-dir runs/<name>``).

    Args:
        kind: only folders named ``*-<kind>`` (``"quickstart"``, ``"demo"``); None: any.
        stage: ``"mar"`` (stage 2) or ``"pretrain"``.
        cfg: when given, only runs with the same preset and data.
        root: where runs live (default ``$WORKBENCH_RUNS`` or ``runs/``).

    Returns:
        The run folders, newest ``metrics.json`` first ([] when there is none).
    """
    from workbench.paths import runs_root

    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    candidates = []
    for folder in root.glob(f"*-{kind}" if kind else "*"):
        for run in (RunFolder(folder / stage), RunFolder(folder)):
            if run.is_finished and run.has_config and run.metrics().get("stage") == stage:
                candidates.append((run.metrics_path.stat().st_mtime, run))
                break
    found = []
    for _, run in sorted(candidates, key=lambda c: c[0], reverse=True):
        if cfg is not None:
            saved, wanted = run.config().flat(), cfg.flat()
            if any(saved.get(k) != wanted.get(k) for k in ("preset", *DATA_PARAMETERS, "synthetic_size")):
                continue
        found.append(run.path)
    return found


def find_run(kind: str | None = None, stage: str = "mar", cfg: "Config | None" = None,
             root: str | os.PathLike | None = None) -> Path | None:
    """The newest of :func:`finished_runs` (same arguments), or None."""
    found = finished_runs(kind, stage, cfg, root)
    return found[0] if found else None


def shown_path(path: str | os.PathLike) -> str:
    """A path as a parameter would name it: relative to the repository root when under it."""
    from workbench.experiments.execute import repo_root

    try:
        return Path(path).resolve().relative_to(repo_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def run_choice(found: Sequence[str | os.PathLike], what: str, parameter: str = "run_dir", shown: int = 4) -> str:
    """Which run a notebook opened by itself and how to open another, for the notebook to print.

    Args:
        found: the runs it could open, newest first (:func:`finished_runs`); it opened the first.
        what: what they have in common, e.g. ``"stage-2 run of preset 'demo' and this data"``.
        parameter: the parameter that names a run instead.
        shown: other runs listed.
    """
    if not found:
        return ""
    text = (f"opened the newest finished {what} ({len(found)} found); to open another, set {parameter} in the "
            f"parameters cell, e.g. {parameter} = \"{shown_path(found[min(1, len(found) - 1)])}\"")
    others = [shown_path(p) for p in found[1:shown + 1]]
    if others:
        text += "\nothers, newest first: " + ", ".join(others) + (" …" if len(found) > shown + 1 else "")
    return text


def existing_folder(parameter: str, value: str | os.PathLike) -> Path:
    """A folder named by a notebook parameter (relative: from the repository root) that must exist.

    Raises:
        NotebookParameterError: it does not exist; the message names the absolute path tried and, when
            a folder on the way has a close name, that one.
    """
    import difflib

    path = repo_path(value)
    if path is not None and path.is_dir():
        return path
    hint = ""
    parent, missing = path.parent, path.name
    while not parent.is_dir() and parent != parent.parent:
        parent, missing = parent.parent, parent.name
    if parent.is_dir():
        close = difflib.get_close_matches(missing, [p.name for p in parent.iterdir() if p.is_dir()], n=1)
        if close:
            hint = f"; did you mean {shown_path(parent / close[0])}?"
    raise NotebookParameterError(f"{parameter} = {str(value)!r}: the folder {path} does not exist{hint}")


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

    try:
        return run_stage(stage, cfg, Path(run_dir), init_checkpoint=init_checkpoint, resume=True,
                         callbacks=callbacks)
    except KeyboardInterrupt:  # Kernel → Interrupt: say where the run is, not a torch traceback
        record = RunFolder(run_dir).record_or_none()
        done = record.epochs_done if record is not None else 0
        epochs = cfg.train.pretrain_epochs if stage == "pretrain" else cfg.train.epochs
        where = (f"its checkpoint holds epoch {done}/{epochs}" if done else "no epoch had finished")
        raise RunInterrupted(f"interrupted: {'stage 1' if stage == 'pretrain' else 'stage 2'} in {run_dir}, "
                             f"{where}; run this cell again to resume from there") from None


def record_point(out_dir: str | os.PathLike, result: "RunResult", *, pretrain: "RunResult | None" = None,
                 **extra: Any) -> Path:
    """Write a notebook's summary ``out_dir/metrics.json`` (one row of :func:`collect`) from what the
    engine recorded; the notebook adds nothing it computed itself but ``extra``.

    The row holds the run's metrics (``initial`` = the evaluation where stage 2 started, flattened as
    ``initial_rank1`` …), ``run_dir``, and the run's record (``run.json``): seed, commit, epochs done,
    seconds per epoch, images/s, feature dimension and, for stage 2, the start checkpoint, T at start
    and end, and the last epoch's mined-pair precision. With ``pretrain`` (stage 1 trained in the same
    point), its metrics and cost as ``pretrain_rank1`` … ``pretrain_seconds_per_epoch``.

    Arrays such as ``cmc`` are kept as lists; ``distmat``/``qf``/``gf`` are dropped.

    Args:
        out_dir: the notebook's output folder (a sweep point's folder under papermill).
        result: the run the point is about (``RunResult`` of :func:`ensure_run`).
        pretrain: the stage 1 this point trained, if any.
        **extra: values only the notebook has (e.g. 02's agent diagnostics); nested dicts are flattened.

    Returns:
        The written path.
    """
    from workbench.runs import PointFolder, write_json

    def summary(run: "RunResult") -> dict[str, Any]:
        record = RunFolder(run.run_dir).record()
        keep = ("seed", "commit", "epochs_done", "seconds_per_epoch", "images_per_s", "feature_dim")
        if record.stage == "mar":
            keep += ("start_checkpoint", "init_threshold", "final_threshold", "final_pos_precision")
        return {"run_dir": str(run.run_dir), **{k: getattr(record, k) for k in keep}}

    values: dict[str, Any] = {**result.metrics, **summary(result)}
    if pretrain is not None:
        stage1 = summary(pretrain)
        values["pretrain"] = {**{k: pretrain.metrics[k] for k in METRIC_KEYS if k in pretrain.metrics},
                              "run_dir": stage1["run_dir"], "seconds_per_epoch": stage1["seconds_per_epoch"]}
    values |= extra
    drop = {"distmat", "qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids"}
    path = PointFolder(out_dir).summary_path
    write_json(path, flatten_metrics({k: v for k, v in values.items() if k not in drop}))
    return path


