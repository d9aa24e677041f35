"""The records of runs: what each finished stage-2 run did and measured, as a table row.

A record is one finished stage-2 run as a row: what it did (config, start checkpoint, seed, commit),
its metrics, where it started and what L_MDL did, read from sweep folders (:func:`run_records`) or from
a results folder's ``runs.csv`` (:func:`read_records`); :func:`label_rows` matches records to a table's
rows on what a run did, not on how its sweep named it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported inside the functions that need it
    import pandas as pd

from workbench.errors import ConfigError, MissingFileError
from workbench.experiments.catalog import Experiment
from workbench.experiments.folder import ResultsFolder
from workbench.evaluation.names import METRIC_KEYS
from workbench.experiments.results import collect, select
from workbench.runs import PointFolder, RunFolder

# ----------------------------------------------------------------------------- run records

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"preset": config.get("preset")}
    for group in (g for g in config.values() if isinstance(g, Mapping)):  # data, model, train, settings (or loss)
        for key, value in group.items():
            out[key] = "+".join(map(str, value)) if key == "stages" else (
                "x".join(map(str, value)) if isinstance(value, list) else value)
    return out


def _commit_of(run: Path, metrics: Mapping[str, Any]) -> str | None:
    """The commit a run recorded; for runs older than that record, the pinned checkout its sweep ran from.

    (``status.json`` of the sweep point above the run names the notebook it executed; the sweeps of the
    evidence runs execute notebooks of a ``git worktree`` pinned to one commit.)
    """
    if metrics.get("commit"):
        return str(metrics["commit"])
    import subprocess

    notebook = (PointFolder(run.parent).status() or {}).get("notebook")
    if not notebook:
        return None
    try:
        return subprocess.run(["git", "-C", str(Path(notebook).parent), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _start_of(checkpoint: str | None) -> dict[str, Any]:
    """What the stage-2 run started from: the stage-1 run next to its checkpoint (commit, seed, epochs)."""
    if not checkpoint:
        return {"stage1": False}
    folder = RunFolder(Path(checkpoint).parent)
    run = folder.path
    metrics, config = _read_json(folder.metrics_path), _read_json(folder.config_path)
    flat = _flat_config(config) if config else {}
    return {"stage1": True, "stage1_commit": _commit_of(run, metrics), "stage1_seed": flat.get("seed"),
            "stage1_epochs": metrics.get("epochs", flat.get("pretrain_epochs")),
            "stage1_init": _init_of(flat.get("pretrained")) if config else None,
            "stage1_rank1": metrics.get("rank1"), "stage1_mAP": metrics.get("mAP")}


def _init_of(pretrained: Any) -> str:
    return "random" if pretrained in (None, "", "none") else "imagenet"


def run_records(sweeps: Sequence[str | os.PathLike]) -> "tuple[pd.DataFrame, pd.DataFrame]":
    """Every finished stage-2 point of these sweep folders as one record, and their histories.

    Args:
        sweeps: sweep folders of ``03_train_mar.ipynb`` (each point holds ``mar/`` and ``metrics.json``).

    Returns:
        ``(records, histories)``: one row per finished point (see the module docstring), and the
        per-epoch histories with ``run`` (the point name), ``seed`` and an epoch-0 row holding the start
        metrics. Points that failed or are still running are left out (``collect`` shows them).

    Raises:
        MissingFileError: a sweep folder that does not exist.
    """
    import pandas as pd

    records, histories = [], []
    for sweep_dir in map(Path, sweeps):
        if not sweep_dir.is_dir():
            raise MissingFileError(f"sweep folder {sweep_dir} does not exist")
        points = collect(sweep_dir)
        for _, point in points[points["state"] == "done"].iterrows():
            point_folder = PointFolder(point["path"])
            folder, run = point_folder.path, point_folder.run("mar")
            config, stage2 = _read_json(run.config_path), _read_json(run.metrics_path)
            if not config or not stage2:
                continue
            record = run.record()  # the engine's record (rebuilt from the run's files for older runs)
            flat = _flat_config(config)
            status = point_folder.status() or {}
            hist = pd.read_csv(run.history_path) if run.history_path.is_file() else pd.DataFrame()
            last = hist.iloc[-1] if len(hist) else {}
            rec: dict[str, Any] = {
                "run": folder.name, "sweep": sweep_dir.name, "seed": flat.get("seed"),
                "commit": _commit_of(run.path, stage2), "finished": status.get("finished"),
                "wall_seconds": status.get("seconds"),  # of the attempt that finished (a resumed run: its rest)
                "train_seconds": float(pd.to_numeric(hist["seconds"], errors="coerce").sum())
                if "seconds" in hist else None,  # every epoch's training, whichever attempt ran it
                "init": _init_of(flat.get("pretrained")), **_start_of(record.start_checkpoint),
                **{m: stage2.get(m) for m in METRIC_KEYS},
                **{f"start_{m}": (stage2.get("initial") or {}).get(m) for m in METRIC_KEYS},
                "num_query": stage2.get("num_query"), "num_valid": stage2.get("num_valid"),
                "init_threshold": record.init_threshold,
                "final_threshold": record.final_threshold,
                "final_n_pos": last.get("n_pos") if len(hist) else None,
                "final_n_neg": last.get("n_neg") if len(hist) else None,
                "final_pos_precision": record.final_pos_precision,
                "seconds_per_epoch": record.seconds_per_epoch,
                "images_per_s": record.images_per_s,
            }
            if rec["stage1"] and rec.get("stage1_init"):  # the init of the first network trained
                rec["init"] = rec["stage1_init"]
            for key, value in flat.items():
                rec.setdefault(key, value)
            records.append(rec)
            if len(hist):
                start = {"epoch": 0, **{m: rec[f"start_{m}"] for m in METRIC_KEYS},
                         "threshold": rec["init_threshold"]}
                h = pd.concat([pd.DataFrame([start]), hist], ignore_index=True)
                h.insert(0, "seed", rec["seed"])
                h.insert(0, "run", rec["run"])
                histories.append(h)
    df = pd.DataFrame(records)
    first = ["run", "sweep", "seed", "commit", "finished", "wall_seconds", "train_seconds", "init", "stage1", "stage1_commit",
             "stage1_seed", "stage1_epochs", "stage1_init", "stage1_rank1", "stage1_mAP"]
    df = df[[c for c in first if c in df] + [c for c in df if c not in first]]  # the same order whatever came first
    hist_df = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return df, hist_df


def records_at_epoch(records: "pd.DataFrame", histories: "pd.DataFrame", epoch: int
                     ) -> "tuple[pd.DataFrame, pd.DataFrame]":
    """The runs as they stood after ``epoch`` stage-2 epochs: a table of runs that trained longer, read
    from their per-epoch evaluations (the paper's schedule is the same computation up to its first lr
    decay, however many epochs a run went on for).

    Each record that was evaluated at ``epoch`` gets that evaluation's metrics, the epoch's threshold,
    mined pairs and their precision, ``epochs = epoch`` and ``trained_epochs`` (what it ran); its
    history is cut after ``epoch``. Runs that were not evaluated there are left out.
    """
    import pandas as pd

    if not len(records) or not len(histories) or "mAP" not in histories:
        return records.iloc[0:0], histories.iloc[0:0]
    at = histories[(histories["epoch"] == epoch) & pd.to_numeric(histories["mAP"], errors="coerce").notna()]
    at = at.drop_duplicates("run").set_index("run")
    out = records[records["run"].isin(at.index)].copy()
    if "trained_epochs" not in out:  # (a results folder's runs.csv already has it)
        out.insert(out.columns.get_loc("epochs") if "epochs" in out else len(out.columns), "trained_epochs",
                   out.get("epochs"))
    out["epochs"] = epoch
    row = at.reindex(out["run"])
    for m in METRIC_KEYS:
        if m in row:
            out[m] = row[m].to_numpy()
    for column, source in (("final_threshold", "threshold"), ("final_n_pos", "n_pos"), ("final_n_neg", "n_neg"),
                           ("final_pos_precision", "pos_precision")):
        if source in row:
            out[column] = row[source].to_numpy()
    cut = histories[histories["run"].isin(out["run"]) & (histories["epoch"] <= epoch)]
    return out.reset_index(drop=True), cut.reset_index(drop=True)


def label_rows(records: "pd.DataFrame", experiment: Experiment, *, epochs: int | None = None) -> "pd.DataFrame":
    """The records that are rows of ``experiment``'s table, with a ``row`` column (in row order).

    Args:
        records: :func:`run_records`.
        experiment: e.g. ``EXPERIMENTS["loss_ablation"]``.
        epochs: only runs of this many stage-2 epochs (default: the most common among the matches,
            so that every row of a table was trained alike; for an experiment whose rows are compared
            at equal wall clock (``same_budget``), the most common within each row).
    """
    import pandas as pd

    parts = []
    for label, wanted in experiment.rows.items():
        rows = select(records, **{**experiment.base, **wanted}).copy()
        rows.insert(0, "row", label)
        parts.append(rows)
    out = pd.concat(parts, ignore_index=True) if parts else records.iloc[0:0]
    if len(out) and "epochs" in out:
        if experiment.same_budget and epochs is None:  # rows train their own epochs: alike within a row
            modes = out.groupby("row")["epochs"].agg(lambda e: int(e.mode().iloc[0]))
            out = out[out["epochs"] == out["row"].map(modes)]
        else:
            keep = epochs if epochs is not None else int(out["epochs"].mode().iloc[0])
            out = out[out["epochs"] == keep]
    order = {label: i for i, label in enumerate(experiment.rows)}
    out = out.assign(_order=out["row"].map(order)).sort_values(["_order", "seed"], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def read_records(sources: Sequence[str | os.PathLike]) -> "tuple[pd.DataFrame, pd.DataFrame]":
    """Records and histories (as :func:`run_records` returns them) from sweep folders, or from results
    folders' ``runs.csv`` + ``histories.csv``: one pipeline for fresh sweeps and committed results.

    A run read from more than one source (a committed results folder together with the sweep that grows
    it) is one run: the first source that holds it gives its record and history.

    Raises:
        MissingFileError: a source that does not exist.
        ConfigError: two different runs under one name (histories are keyed by run name).
    """
    import pandas as pd

    records, histories = [], []
    named: dict[str, tuple[tuple, str]] = {}  # run name -> (its execution key, the source that gave it)
    for source in map(Path, sources):
        if (folder := ResultsFolder(source)).has_runs:
            r, h = folder.runs().drop(columns=["row"], errors="ignore"), folder.histories()
        else:
            r, h = run_records([source])
        if not len(r):
            continue
        fresh = []
        for record in r.to_dict("records"):
            key, name = _execution_key(record), str(record["run"])
            if name in named and named[name][0] != key:
                raise ConfigError(f"two different runs are named {name!r}: one in {named[name][1]}, one in "
                                  f"{source} (a results table keys each run's history by its name); read "
                                  f"them into separate tables")
            fresh.append(name not in named)
            named.setdefault(name, (key, str(source)))
        r = r[fresh]
        records.append(r)
        if len(h):
            histories.append(h[h["run"].astype(str).isin(set(r["run"].astype(str)))])
    records = [r for r in records if len(r)]
    histories = [h for h in histories if len(h)]
    return (pd.concat(records, ignore_index=True) if records else pd.DataFrame(),
            pd.concat(histories, ignore_index=True).drop_duplicates() if histories else pd.DataFrame())


def _execution_key(record: Mapping[str, Any]) -> tuple:
    """What makes a run record one execution: its sweep, point name, seed and when it finished (a committed
    runs.csv and the sweep folder it was made from give the same key)."""
    def plain(value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return tuple(plain(record.get(k)) for k in ("sweep", "run", "seed", "finished"))
