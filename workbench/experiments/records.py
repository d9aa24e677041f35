"""The experiments (:data:`EXPERIMENTS`: the paper's tables and figure) and the records of their runs.

A record is one finished stage-2 run as a row: what it did (config, start checkpoint, seed, commit),
its metrics, where it started and what L_MDL did, read from sweep folders (:func:`run_records`) or from
a results folder's ``runs.csv`` (:func:`read_records`); :func:`label_rows` matches records to a table's
rows on what a run did, not on how its sweep named it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported inside the functions that need it
    import pandas as pd

from workbench.errors import ConfigError, MissingFileError
from workbench.experiments.paper import FUSION_COMBINATIONS, LOSS_ABLATION, METHOD_COMPARISON, PAPER_RESULTS
from workbench.experiments.results import MAIN_METRICS, collect, select
from workbench.runs import PointFolder, RunFolder

@dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments, as rows over run records.

    Attributes:
        name: the folder under ``results/``.
        title: the paper's table or figure.
        base: record values every row shares (``init="imagenet"``, ``lr=2e-4`` ...).
        rows: ``{row label: record values}`` on top of ``base``; empty for curves.
        baseline: the row the paired differences are taken against.
        paper: ``{row label: PAPER_RESULTS row}`` shown beside ours.
        curves: for a hyperparameter figure: the record keys varied one at a time around ``base``.
        note: what the rows mean here, in words (goes into the generated README).
    """

    name: str
    title: str
    base: Mapping[str, Any]
    rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    paper: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    curves: Sequence[str] = ()
    note: str = ""
    same_budget: bool = False  # also compare the rows at the baseline's training wall clock (stats.at_budget)
    paper_table: str | None = None  # a PAPER_RESULTS table shown whole in the README (Table 4's methods)
    at_epoch: int | None = None  # rows and parameter curves read at this epoch of each run (records_at_epoch)


_FULL = dict(LOSS_ABLATION["full"])
_DEFAULTS = dict(init="imagenet", stage1=True, lr=2e-4, weight_decay=5e-4, stages="layer4")
_PAPER_SCHEDULE = dict(_DEFAULTS, weight_decay=0.025, milestones="12x17")

EXPERIMENTS: dict[str, Experiment] = {
    "loss_ablation": Experiment(
        "loss_ablation", "Table 3: loss ablation", base=_DEFAULTS,
        rows={label: dict(switches) for label, switches in LOSS_ABLATION.items()}, baseline="full",
        paper=PAPER_RESULTS["loss_ablation"],
        note="L_RAL = L_AL + β·L_RJ. Every row starts from the same stage-1 checkpoint; the seeds are the "
             "same in every row, so differences to the full row are paired by seed."),
    "pretraining": Experiment(
        "pretraining", "Table 1: pretraining", base={**_DEFAULTS, **_FULL},
        rows={"ImageNet + stage 1": dict(init="imagenet", stage1=True),
              "random init + stage 1": dict(init="random", stage1=True),
              "ImageNet, no stage 1": dict(init="imagenet", stage1=False),
              "random init, no stage 1": dict(init="random", stage1=False)},
        baseline="ImageNet + stage 1",
        paper={"ImageNet + stage 1": PAPER_RESULTS["pretraining"]["ResNet50 / ResNet50"],
               "random init + stage 1": PAPER_RESULTS["pretraining"]["ResNet50 / ResNet50 (random init)"],
               "ImageNet, no stage 1": PAPER_RESULTS["pretraining"]["ResNet50 / none"]},
        note="MobileNetV2 analogues of the paper's ResNet50 rows: the network of stage 2 is the network of "
             "stage 1. init = the backbone's weights before anything is trained (the ImageNet file or "
             "random); no stage 1 = stage 2 starts from those weights with randomly initialised agents."),
    "feature_fusion": Experiment(
        "feature_fusion", "Table 2: multi-level feature fusion", base={**_DEFAULTS, **_FULL},
        rows={c: dict(stages=c) for c in FUSION_COMBINATIONS}, baseline="layer4",
        paper=PAPER_RESULTS["feature_fusion"],
        note="Each fusion has its own stage 1 (the fused feature is what the agents classify)."),
    "method_comparison": Experiment(
        "method_comparison", "Table 4's question: soft multilabels against clustering",
        base=dict(init="imagenet", stage1=True),
        rows={label: dict(m) for label, m in METHOD_COMPARISON.items()}, baseline="MAR (soft multilabels)",
        paper={"MAR (soft multilabels)": PAPER_RESULTS["comparison"]["MAR"]},
        note="Every row starts from the same stage-1 checkpoint and is evaluated the same way; what supervises "
             "the target differs (L_MAR's soft multilabels, clusters of features, clusters of features and soft "
             "multilabels), and each method may train with its own recipe and epochs (the runs' config says "
             "which), so the rows are also compared at the MAR row's training wall clock. For the clustering "
             "rows, \"What stage 2 did\" gives the last epoch's clusters, outliers (images left out of it) and "
             "the share of same-cluster pairs that are the same identity (checked against the hidden labels, "
             "the counterpart of MAR's true mined positives). The last row is not unsupervised: it trains "
             "Cluster-Contrast's memory and loss on the target's true identities (method `oracle`, the only one that "
             "reads them), the upper bound of what this backbone, data and budget allow. The paper column is MAR as "
             "Zhang et al.'s Table 4 quotes it; "
             "Cluster-Contrast's published 82.1 mAP on Market-1501 uses no reference set and a ResNet-50.",
        same_budget=True, paper_table="comparison"),
    "hyperparameters": Experiment(
        "hyperparameters", "Fig. 6: stage-2 epochs, learning rate, weight decay", base={**_DEFAULTS, **_FULL},
        curves=("epochs", "lr", "weight_decay"),
        note="One parameter varies, the others keep the preset's values; the epochs curve is the per-epoch "
             "evaluation of the full-L_MAR runs (epoch 0: the stage-1 model). The point at the default "
             "value carries the spread over seeds as an error bar."),
    # the paper's stage-2 schedule (issue 19): lr 2e-4, weight decay 0.025, ×0.1 from epochs 12 and 17
    "paper_schedule_epochs": Experiment(
        "paper_schedule_epochs", "Fig. 6's epochs axis at the paper's stage-2 schedule",
        base={**_PAPER_SCHEDULE, **_FULL}, curves=("epochs",),
        note="The full L_MAR for the paper's 20 epochs (lr 2e-4, ×0.1 from epochs 12 and 17, weight decay "
             "0.025), evaluated after every epoch; epoch 0 is the stage-1 model every run starts from."),
    "paper_schedule_loss_ablation": Experiment(
        "paper_schedule_loss_ablation", "Table 3 at the paper's stage-2 schedule (epoch 10)",
        base=_PAPER_SCHEDULE, rows={label: dict(switches) for label, switches in LOSS_ABLATION.items()},
        baseline="full", paper=PAPER_RESULTS["loss_ablation"], at_epoch=10,
        note="Every row is read at epoch 10 of the paper's schedule (lr 2e-4, weight decay 0.025; the lr decays "
             "only from epoch 12, so the full row's 20-epoch runs are the same computation up to epoch 10). "
             "L_RAL = L_AL + β·L_RJ. Every row starts from the same stage-1 checkpoint; the seeds are the same "
             "in every row, so differences to the full row are paired by seed."),
    "paper_schedule_feature_fusion": Experiment(
        "paper_schedule_feature_fusion",
        "Table 2 with the paper's 2048-d embedding after fusion, at the paper's stage-2 schedule (epoch 10)",
        base={**_PAPER_SCHEDULE, **_FULL, "embed_dim": 2048},
        rows={c: dict(stages=c) for c in FUSION_COMBINATIONS}, baseline="layer4",
        paper=PAPER_RESULTS["feature_fusion"], at_epoch=10,
        note="As the paper builds it: the fused vector (the stages' pooled outputs, concatenated) goes through "
             "a 2048-d embedding (linear + batch norm) before the agents, so every combination's feature has "
             "the same size. Each combination has its own stage 1 (the committed recipe with the embedding); "
             "stage 2 follows the paper's schedule (lr 2e-4, weight decay 0.025) and is read at epoch 10, as "
             "Table 3 at this schedule is. The seeds are the same in every row: differences to layer4 are "
             "paired by seed."),
    "paper_schedule_loss_ablation_embedding": Experiment(
        "paper_schedule_loss_ablation_embedding",
        "Table 3 at the paper's stage-2 schedule (epoch 10), on layer4 with the 2048-d embedding",
        base={**_PAPER_SCHEDULE, "embed_dim": 2048},
        rows={label: dict(switches) for label, switches in LOSS_ABLATION.items()},
        baseline="full", paper=PAPER_RESULTS["loss_ablation"], at_epoch=10,
        note="Table 3 on the model of Table 2's layer4 row at the paper's schedule (`../feature_fusion/`): layer4 "
             "with the paper's 2048-d embedding after it, from that row's stage 1, read at epoch 10 of the "
             "schedule (lr 2e-4, weight decay 0.025). Its full row is that row's runs. L_RAL = L_AL + β·L_RJ. "
             "The seeds are the same in every row, so differences to the full row are paired by seed."),
    "paper_schedule_terms": Experiment(
        "paper_schedule_terms", "Why stage 2 moves little: λ2, the mining ratio and each term's share of the update",
        base=_PAPER_SCHEDULE,
        rows={"λ2 = 50, mining 0.005 (official)": dict(_FULL, lambda_ref=50.0, mining_ratio=0.005),
              "λ2 = 5": dict(_FULL, lambda_ref=5.0, mining_ratio=0.005),
              "λ2 = 0": dict(_FULL, lambda_ref=0.0, mining_ratio=0.005),
              "mining 0.02": dict(_FULL, lambda_ref=50.0, mining_ratio=0.02)},
        baseline="λ2 = 50, mining 0.005 (official)", at_epoch=4,
        note="One seed per row, the paper's stage-2 schedule read at epoch 4, every L_MAR term's gradient on the "
             "shared weights (backbone, fusion, embedding) measured every 10 steps (grad_terms_every): its norm "
             "and its share of the step's update, 100·<g_term, g>/‖g‖² (the shares add up to 100 %; a negative share "
             "pulls against the others)."),
    "paper_schedule_terms_embedding": Experiment(
        "paper_schedule_terms_embedding",
        "λ2 at the paper's stage-2 schedule (epoch 10), on layer4 with the 2048-d embedding",
        base={**_PAPER_SCHEDULE, "embed_dim": 2048, "mining_ratio": 0.005},
        rows={"λ2 = 50 (official)": dict(_FULL, lambda_ref=50.0),
              "λ2 = 5": dict(_FULL, lambda_ref=5.0),
              "w/o L_RAL (λ2 = 0)": dict(LOSS_ABLATION["w/o RAL"], lambda_ref=50.0)},
        baseline="λ2 = 50 (official)", at_epoch=10,
        note="Run 4's λ2 curve at Table 3's length of the schedule (10 epochs, lr 2e-4, weight decay 0.025) on "
             "Table 2's layer4 model with the embedding, every row from that model's stage 1 on one machine, the "
             "same seeds in every row (differences paired by seed). λ2 = 50 is Table 2's layer4 row; the λ2 = 0 "
             "end of the curve is Table 3's w/o L_RAL row of `../loss_ablation_embedding/` (L_AL and L_RJ off: "
             "λ2 = 0 but for the agents' weight decay, which a run with lambda_ref=0 still applies). The λ2 = 5 runs also "
             "measured every L_MAR term's gradient on the shared weights every 25 steps (grad_terms_every): its "
             "norm and its share of the step's update, 100·<g_term, g>/‖g‖²."),
}


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
                **{m: stage2.get(m) for m in MAIN_METRICS},
                **{f"start_{m}": (stage2.get("initial") or {}).get(m) for m in MAIN_METRICS},
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
                start = {"epoch": 0, **{m: rec[f"start_{m}"] for m in MAIN_METRICS},
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
    for m in MAIN_METRICS:
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
        if (source / "runs.csv").is_file():
            r = pd.read_csv(source / "runs.csv").drop(columns=["row"], errors="ignore")
            h = pd.read_csv(source / "histories.csv") if (source / "histories.csv").is_file() else pd.DataFrame()
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
