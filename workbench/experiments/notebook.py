"""Notebook-side helpers: a parameters cell to a config, output folders, finished runs, recorded
metrics; and the notebook stripper (``python -m workbench.experiments strip``)."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them
    import pandas as pd

    from workbench.config import Config
    from workbench.engine import RunResult

from workbench.experiments.results import METRICS_FILE, _flatten  # noqa: F401
from workbench.experiments.sweep import NotebookParameterError, repo_path

log = logging.getLogger("workbench.experiments")

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
