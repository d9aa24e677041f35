"""The paper's experiments as results folders: ``results/<experiment>/`` from finished runs, in three steps:
tables (numbers computed from the run records), figures (drawn by whoever calls, from those tables: the
``results`` and ``reproduce`` commands pass :func:`workbench.viz.experiment_figures`), README (text).

Rows are matched on what a run *did* (its ``config.json`` and start checkpoint), not on how the sweep
named its point: a full-L_MAR run of the loss-ablation sweep is also the "ImageNet + stage 1" row of the
pretraining table and the default point of the learning-rate curve; or they are given, as a recipe
planned them (``labels``). The folder's files are :class:`~workbench.experiments.folder.ResultsFolder`'s.

Command line: ``python -m workbench results EXPERIMENT SOURCE [SOURCE ...] --out results/EXPERIMENT``, or
``python -m workbench reproduce results/EXPERIMENT``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported inside the functions that need it
    import pandas as pd

from workbench.errors import ConfigError, MissingFileError
from workbench.evaluation.names import CAMERA_TITLES, METRIC_KEYS
from workbench.experiments.catalog import EXPERIMENTS, Experiment
from workbench.experiments.execute import repo_relative
from workbench.experiments.folder import ResultsFolder
from workbench.experiments.markdown import (
    budget_markdown,
    curves_markdown,
    fill_numbers,
    frame_markdown,
    num,
    paper_markdown,
    summary_markdown,
)
from workbench.experiments.paper import PAPER_RESULTS
from workbench.experiments.records import label_rows, read_records, records_at_epoch
from workbench.experiments.results import select
from workbench.experiments.stats import at_budget, diagnostics, experiment_curves, gradient_table, per_epoch, seed_summary

#: draws a folder's figures from its tables into its folder: ``{kind: file name}`` of what it drew
#: (kinds: ``table``, ``curves``, ``cameras``, ``gradients``); :func:`workbench.viz.experiment_figures` is the one
FigureDrawer = Callable[["Tables", Path], Mapping[str, str]]


@dataclass
class Tables:
    """A results folder's numbers, computed from run records, before anything is drawn or written."""

    experiment: Experiment
    runs: "pd.DataFrame"                 # the runs the folder keeps (runs.csv), read at the table's epoch
    histories: "pd.DataFrame"            # their whole per-epoch histories (histories.csv)
    summary: "pd.DataFrame | None" = None  # per row: seeds, mean ± std, paired Δ, the paper
    budget: "pd.DataFrame | None" = None   # per row at the baseline's training wall clock
    per_epoch: "pd.DataFrame | None" = None  # per row and epoch: cumulative training time and metrics
    diagnostics: "pd.DataFrame | None" = None
    gradient_shares: "pd.DataFrame | None" = None
    curves: dict = field(default_factory=dict)  # Fig. 6: {parameter: curve}
    reference_rows: list = field(default_factory=list)  # (label, metrics): rows shown before the statistics


def _experiment(name: "str | Experiment") -> Experiment:
    if isinstance(name, Experiment):
        return name
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _labelled(records: "pd.DataFrame", exp: Experiment, labels: Mapping[str, str] | None) -> "pd.DataFrame":
    """The records that are rows of the table, with ``row`` first, in row order then seed."""
    if labels is None:
        return label_rows(records, exp)
    rows = records.assign(row=records["run"].astype(str).map(labels))
    order = {label: i for i, label in enumerate(exp.rows)}
    rows = rows.assign(_order=rows["row"].map(order)).sort_values(["_order", "seed"], kind="stable")
    rows = rows.drop(columns="_order")
    return rows[["row"] + [c for c in rows.columns if c != "row"]].reset_index(drop=True)


def compute_tables(name: "str | Experiment", sources: Sequence[str | os.PathLike], *,
                   labels: Mapping[str, str] | None = None, reference: str | os.PathLike | None = None) -> Tables:
    """The numbers of an experiment's folder from the runs in ``sources`` (sweep folders, or results folders
    whose records hold them): its rows over seeds with paired differences, the diagnostics, or Fig. 6's curves.

    Args:
        labels: ``{run name: row label}``: the rows as a recipe planned them; default: every record matched
            to the experiment's rows on what its run did.
        reference: a results CSV whose direct-transfer and stage-1 rows head the table.
    """
    exp = _experiment(name)
    records, histories = read_records(sources)
    if labels is not None and len(records):
        records = records[records["run"].astype(str).isin(set(labels))].reset_index(drop=True)
    read = histories
    if exp.at_epoch:
        records, read = records_at_epoch(records, histories, exp.at_epoch)
    refs = _reference_rows(reference)
    if not exp.rows:
        used = select(records, **{k: v for k, v in exp.base.items() if k not in exp.curves})
        return Tables(exp, used, histories, curves=experiment_curves(records, histories, exp), reference_rows=refs)
    rows = _labelled(records, exp, labels)
    tables = Tables(exp, rows, histories, summary=seed_summary(rows, exp), reference_rows=refs,
                    diagnostics=diagnostics(rows, read), gradient_shares=gradient_table(rows, read))
    if exp.same_budget and exp.baseline:
        budget = at_budget(rows, read, exp.baseline)
        if len(budget):
            tables.budget, tables.per_epoch = budget, per_epoch(rows, read)
    return tables


def write_tables(folder: ResultsFolder, tables: Tables) -> dict[str, Path]:
    """The records (runs.csv, histories.csv) and every computed table, atomically."""
    written: dict[str, Path] = {}
    if len(tables.runs):
        folder.write_records(tables.runs, tables.histories)
        written["runs"] = folder.runs_path
        if folder.histories_path.is_file():
            written["histories"] = folder.histories_path
    for kind in ("summary", "at_budget", "diagnostics", "gradient_shares"):
        frame = tables.budget if kind == "at_budget" else getattr(tables, kind)
        if frame is not None and len(frame):
            fmt = "%.4f" if kind in ("summary", "at_budget") else "%.5g"
            written[kind] = folder.write_table(kind, frame.rename_axis("row"), float_format=fmt)
    if tables.per_epoch is not None and len(tables.per_epoch):
        written["per_epoch"] = folder.write_table("per_epoch", tables.per_epoch, index=False, float_format="%.5g")
    for parameter, curve in tables.curves.items():
        if len(curve):
            written[f"curve_{parameter}"] = folder.write_table(f"curve_{parameter}", curve)
    return written


def _commit_list(values: Any) -> str:
    return ", ".join(sorted({str(v) for v in values if isinstance(v, str) and v}))


def readme_text(tables: Tables, folder: ResultsFolder, *, figures: Mapping[str, str] | None = None,
                notes: str | os.PathLike | None = None, command: str | None = None) -> str:
    """The folder's README: what made it, the tables, the figures that were drawn, the runs, the notes."""
    import pandas as pd

    exp, figures = tables.experiment, dict(figures or {})
    where = repo_relative(folder.path)
    made = f"Generated by `{command}`" if command else (
        f"Generated by `python -m workbench results {exp.name} SOURCE... --out {where}` from the runs of "
        "`notebooks/03_train_mar.ipynb` (or from this folder's own records)"
        + (f"; `python -m workbench reproduce {where}` runs them again from its `recipe.yaml`"
           if folder.recipe_path.is_file() else ""))
    body = [f"# {exp.title}", "", f"{made}; do not edit (notes: `{ResultsFolder.NOTES}`).", "", exp.note, ""]

    def figure(kind: str, alt: str) -> list[str]:
        return [f"![{alt}]({figures[kind]})", ""] if kind in figures else []

    if tables.summary is not None:
        body += ["## Table", "", summary_markdown(tables.summary, exp, reference_rows=tables.reference_rows), "",
                 f"Percent on the target's test split{_queries(tables.runs)}. start mAP: the model stage 2 started from "
                 "(stage 1's direct transfer, or the initial weights without stage 1), mean over the row's runs. "
                 "mean ± std over seeds; Δ: the paired difference to the baseline row over the seeds both ran, with "
                 "its 95 % Student-t interval (no interval with one pair). mAP = standard AP, mAP* = Market devkit "
                 "AP. The paper's numbers: Zhang et al. 2020 (ResNet-50, MSMT17 → Market-1501, see "
                 "`PAPER_RESULTS`).", "", *figure("table", exp.title)]
        if exp.paper_table:
            body += ["## The paper's table, as published", "", paper_markdown(PAPER_RESULTS[exp.paper_table]), "",
                     "Zhang et al. 2020, Table 4 (each method with its own data, backbone and budget; percent; "
                     "– not reported). Compare orderings, not values, with the rows above.", ""]
        if tables.budget is not None:
            budget_min = num(float(tables.budget["budget_s"].iloc[0]) / 60)
            body += ["## At the same training wall clock", "", budget_markdown(tables.budget, exp.baseline), "",
                     f"Each row's evaluation after the last epoch whose cumulative training time is within the "
                     f"{exp.baseline} row's median total ({budget_min} min: training and, for the clustering "
                     "methods, the clustering at each epoch's start; evaluation excluded), from the per-epoch "
                     "evaluations; epoch 0 is the start. Percent, mean ± std over seeds, Δ paired with the "
                     "baseline's seeds (95 % Student-t interval).", "", *figure("curves", "per epoch"),
                     "`per_epoch.csv`: the curves' numbers (mean over each row's runs per epoch: cumulative "
                     "training minutes, rank-1, mAP, the precision of the pairs that supervised the target, "
                     "clusters, outliers, purity).", ""]
        if tables.diagnostics is not None and len(tables.diagnostics):
            cameras = any(title in tables.diagnostics for title in CAMERA_TITLES.values())
            body += ["## What stage 2 did (last epoch, mean over the row's runs)", "",
                     frame_markdown(tables.diagnostics), "", _DIAGNOSTICS_TEXT + (_CAMERAS_TEXT if cameras else ""),
                     "", *figure("cameras", "the cameras of the supervising pairs, per epoch")]
        if tables.gradient_shares is not None and len(tables.gradient_shares):
            body += ["## Each term's part in the update of the shared weights", "",
                     frame_markdown(tables.gradient_shares), "", _GRADIENTS_TEXT, "",
                     *figure("gradients", "gradient shares")]
    else:
        body += ["## Curves", "", curves_markdown(tables.curves), "",
                 "Percent; every point is the mean ± std over the seeds run there (n: how many); epochs: the "
                 "per-epoch evaluations of the full-L_MAR runs (epoch 0: where stage 2 started).", "",
                 *figure("table", exp.title)]
    runs = tables.runs
    if len(runs):
        wall = pd.to_numeric(runs["wall_seconds"], errors="coerce")
        body += ["## Runs", "",
                 f"{len(runs)} run(s) ({', '.join(f'{k}: {v}' for k, v in _settings(runs).items())}), code at "
                 f"commit {_commit_list(runs['commit'])}, stage 1 at commit "
                 f"{_commit_list(runs.get('stage1_commit', []))}; seeds {sorted(set(int(s) for s in runs['seed']))}. "
                 f"Wall time{' of the attempts that finished' if _training_time(runs) else ''} "
                 f"{wall.sum() / 3600:.2f} h in all, {num(wall.median() / 60)} min median per run (training at "
                 f"{num(pd.to_numeric(runs['images_per_s']).median(), 0)} images/s, median over runs). "
                 f"{_training_time(runs)}`{ResultsFolder.RUNS}`: one row per run; `{ResultsFolder.HISTORIES}`: their "
                 "per-epoch history (epoch 0: the start).", ""]
    if notes is not None and Path(notes).is_file():
        body += [fill_numbers(Path(notes).read_text().strip(), folder.path, beside=Path(notes).parent), ""]
    return "\n".join(body)


_DIAGNOSTICS_TEXT = (
    "The loss terms as they enter L_MAR (λ1 = lambda_cml, λ2 = lambda_ref); T: the agreement threshold of L_MDL at "
    "the start of stage 2 and after the last epoch; mined +/−: the pairs L_MDL used in the last epoch; true among "
    "mined +: the share of mined positives that are the same identity (the trainer checks them against the "
    "labels the loss never sees).")
_CAMERAS_TEXT = (
    " The cameras of every method's positive pairs (MAR: its mined positives; a clustering method: every pair that "
    "shares a cluster): the share of them that are cross-camera, how many of those are true, and how many of the "
    "same-identity pairs the supervision finds within one camera and across two (all from the hidden labels, never "
    "used by a loss).")
_GRADIENTS_TEXT = (
    "Measured every `grad_terms_every` steps on the weights every term trains (backbone, fusion, embedding; not "
    "the agents): share = 100·<g_term, g>/‖g‖², the part of the step's update along g that the term makes (the "
    "shares add up to 100; a negative share pulls against the others), and the gradient norms ‖g_term‖ and ‖g‖; "
    "mean over the measured steps of each epoch, then over the epochs after L_MDL's warm-up and over the row's "
    "runs.")


def write_experiment(name: "str | Experiment", sources: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     reference: str | os.PathLike | None = None, notes: str | os.PathLike | None = None,
                     labels: Mapping[str, str] | None = None, command: str | None = None,
                     figures: FigureDrawer | None = None) -> dict[str, Path]:
    """Write ``results/<name>/``: tables → figures → README.

    Args:
        name: a key of :data:`EXPERIMENTS` (or an :class:`Experiment`).
        sources: sweep folders holding its runs, or results folders whose records hold them (regenerating
            a committed folder from its own files).
        out: the folder to write (created).
        reference: a results CSV with the direct-transfer and stage-1 rows, shown first, outside the statistics.
        notes: the hand-written diagnosis (``NOTES.md``), its placeholders filled from the written tables.
        labels: ``{run name: row label}`` as a recipe planned them (``workbench reproduce``).
        command: the command that writes the folder (its README says so).
        figures: draws the figures from the tables (:data:`FigureDrawer`); None: no figure.

    Returns:
        ``{file kind: path}`` of what was written.

    Raises:
        ConfigError: an unknown experiment. MissingFileError: a source that does not exist.
    """
    tables = compute_tables(name, sources, labels=labels, reference=reference)
    folder = ResultsFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    written = write_tables(folder, tables)
    drawn = dict(figures(tables, folder.path)) if figures is not None else {}
    written |= {f"figure_{kind}": folder.path / file for kind, file in drawn.items()}
    written["experiment"] = folder.write_experiment(tables.experiment.name)
    written["readme"] = folder.write_readme(readme_text(tables, folder, figures=drawn, notes=notes, command=command))
    return written



def _training_time(runs: "pd.DataFrame") -> str:
    """The runs' training time from their per-epoch timings (a sentence; '' for records without them).

    The wall time above is the finishing attempt's; a run interrupted and resumed trained longer."""
    import pandas as pd

    seconds = pd.to_numeric(runs.get("train_seconds", pd.Series(dtype=float)), errors="coerce").dropna()
    if not len(seconds):
        return ""
    return (f"Training {seconds.sum() / 3600:.2f} h in all, {num(seconds.median() / 60)} min median per run "
            "(every epoch's own timing, whichever attempt ran it; evaluations excluded). ")


def _queries(runs: "pd.DataFrame") -> str:
    """`` (972 queries)`` from the runs' metrics (the queries with a match in the gallery), or nothing."""
    import pandas as pd

    counts = set(pd.to_numeric(runs.get("num_valid", pd.Series(dtype=float)), errors="coerce").dropna().astype(int))
    return f" ({counts.pop()} queries)" if len(counts) == 1 else ""


def _settings(runs: "pd.DataFrame") -> dict[str, Any]:
    keys = ("preset", "backbone", "image_size", "epochs", "epoch_length", "n_target", "n_reference")
    out = {}
    for k in keys:
        if k in runs and runs[k].nunique() == 1:
            out[k] = runs[k].iloc[0]
    return out


def _reference_rows(reference: str | os.PathLike | None) -> list[tuple[str, dict[str, Any]]]:
    if reference is None:
        return []
    import pandas as pd

    path = Path(reference)
    if not path.is_file():
        raise MissingFileError(f"reference results {path} do not exist")
    df = pd.read_csv(path)
    rows = []
    for _, r in df[df["stage"].isin(["none", "pretrain"])].iterrows():
        rows.append((str(r["run"]), {m: r[m] for m in METRIC_KEYS if m in r}))
    return rows
