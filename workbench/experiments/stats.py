"""Statistics over seeds: mean ± std per row, paired differences with Student-t intervals, Fig. 6's
curves, and what stage 2 did per row (loss terms, T, mined pairs)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported inside the functions that need it
    import pandas as pd

from workbench.experiments.catalog import EXPERIMENTS, Experiment
from workbench.evaluation.names import CAMERA_COLUMNS, CAMERA_TITLES, METRIC_KEYS
from workbench.experiments.results import curve, select

#: the metrics of a summary table (percent)
SUMMARY_METRICS = ("rank1", "mAP", "mAP_devkit", "mINP")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided Student-t confidence interval of the mean: ``(mean, low, high)``.

    One value gives ``(value, nan, nan)``.

    Example:
        >>> [round(v, 3) for v in t_interval([1.0, 2.0, 3.0])]
        [2.0, -0.484, 4.484]
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def seed_summary(rows: "pd.DataFrame", experiment: Experiment, metrics: Sequence[str] = SUMMARY_METRICS,
                 *, dataset: str = "market1501") -> "pd.DataFrame":
    """Per row of the table: runs, seeds, mean and std (percent) and the paired difference to the baseline.

    The paired difference of a metric is the mean over the seeds both rows ran of (row − baseline),
    with its 95 % Student-t interval; the baseline row itself gets none. The paper's value and its
    difference to the paper's baseline sit beside ours (``paper_<metric>``, ``paper_delta_<metric>``).
    With an upper-bound row (``experiment.upper_bound``), ``gap_closed_<metric>``: the share (percent) of
    the way from the row's start to the bound's mean that the row went.

    Returns:
        Index: the row labels in the experiment's order (rows without a run included, with ``runs`` 0).
    """
    import pandas as pd

    base_rows = rows[rows["row"] == experiment.baseline] if experiment.baseline else rows.iloc[0:0]
    base_by_seed = {int(r["seed"]): r for r in base_rows.to_dict("records")}
    out = {}
    for label in experiment.rows:
        mine = rows[rows["row"] == label]
        entry: dict[str, Any] = {"runs": len(mine), "seeds": " ".join(str(int(s)) for s in mine["seed"])}
        for m in metrics:
            values = 100 * pd.to_numeric(mine[m], errors="coerce")
            entry[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            entry[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            if experiment.baseline and label != experiment.baseline:
                diffs = [100 * (float(r[m]) - float(base_by_seed[int(r["seed"])][m]))
                         for r in mine.to_dict("records") if int(r["seed"]) in base_by_seed]
                mean, low, high = t_interval(diffs)
                entry |= {f"delta_{m}": mean, f"delta_{m}_low": low, f"delta_{m}_high": high,
                          "pairs": len(diffs)}
            paper_row = (experiment.paper.get(label) or {}).get(dataset) or {}
            entry[f"paper_{m}"] = paper_row.get(m, math.nan)
            base_paper = (experiment.paper.get(experiment.baseline) or {}).get(dataset) or {}
            if label != experiment.baseline:
                entry[f"paper_delta_{m}"] = paper_row.get(m, math.nan) - base_paper.get(m, math.nan)
        for m in ("rank1", "mAP"):  # the model stage 2 started from: stage 1's direct transfer, or the init
            if f"start_{m}" in mine:
                values = 100 * pd.to_numeric(mine[f"start_{m}"], errors="coerce")
                entry[f"start_{m}_mean"] = float(values.mean()) if len(values) else math.nan
        for key in ("final_threshold", "final_pos_precision", "final_n_pos", "wall_seconds"):
            if key in mine:
                entry[f"{key}_mean"] = float(pd.to_numeric(mine[key], errors="coerce").mean()) if len(mine) else math.nan
        out[label] = entry
    frame = pd.DataFrame.from_dict(out, orient="index")
    bound = experiment.upper_bound
    if bound in frame.index and "start_mAP_mean" in frame:  # how far each row went from its start to the bound
        for m in ("rank1", "mAP"):
            room = frame.loc[bound, f"{m}_mean"] - frame[f"start_{m}_mean"]
            frame[f"gap_closed_{m}"] = 100 * (frame[f"{m}_mean"] - frame[f"start_{m}_mean"]) / room
    return frame


# ----------------------------------------------------------------------------- curves

def budget_runs(records: "pd.DataFrame", experiment: Experiment, param: str | None = None) -> "pd.DataFrame":
    """The runs on ``experiment``'s base setting (all but ``param`` fixed) at its most common stage-2 budget
    (epochs), so that a curve compares runs trained alike."""
    others = {k: v for k, v in experiment.base.items() if k != param}
    matching = select(records, **others)
    if not len(matching):
        return matching
    return matching[matching["epochs"] == int(matching["epochs"].mode().iloc[0])]


def experiment_curves(records: "pd.DataFrame", histories: "pd.DataFrame", experiment: Experiment
                      ) -> dict[str, "pd.DataFrame"]:
    """Fig. 6: mAP and rank-1 against each of ``experiment.curves``, mean ± std over the seeds present
    (:func:`workbench.experiments.results.curve`); ``epochs`` from the per-epoch evaluations of the
    base-setting runs with the most epochs (epoch 0: where stage 2 started)."""
    curves = {p: curve(budget_runs(records, experiment, p), p) for p in experiment.curves if p != "epochs"}
    full = select(records, **experiment.base)
    if len(full):
        full = full[full["epochs"] == full["epochs"].max()]
    h = histories[histories["run"].isin(full["run"])] if len(histories) and len(full) else histories.iloc[0:0]
    return {"epochs": curve(h, "epoch").rename_axis("epochs"), **curves}


def diagnostics(rows: "pd.DataFrame", histories: "pd.DataFrame") -> "pd.DataFrame":
    """What stage 2 did, per row (mean over its runs, last epoch): the weighted loss terms as they enter
    L_MAR (L_MDL, λ1·L_CML, λ2·L_AL, λ2·β·L_RJ), T at the start and the end, the mined positive and
    negative pairs of the last epoch and the share of mined positives that are true matches.
    """
    import pandas as pd

    if not len(rows) or not len(histories):
        return pd.DataFrame()
    last = histories[histories["epoch"] > 0].sort_values("epoch").groupby("run").tail(1).set_index("run")
    out = {}
    for label, group in rows.groupby("row", sort=False):
        h = last.reindex(group["run"])
        for column in ("mdl", "cml", "al", "rj", "threshold", "n_pos", "n_neg", "pos_precision", "pair_precision",
                       "n_clusters", "n_outliers", *CAMERA_COLUMNS):
            if column not in h:  # a history without the term (an older run, another method)
                h[column] = math.nan
        w = group.set_index("run").reindex(columns=[*group.columns, "lambda_cml", "lambda_ref", "beta",
                                                    "init_threshold"]).loc[:, lambda d: ~d.columns.duplicated()]
        terms = {"L_MDL": h["mdl"], "λ1·L_CML": w["lambda_cml"] * h["cml"], "λ2·L_AL": w["lambda_ref"] * h["al"],
                 "λ2·β·L_RJ": w["lambda_ref"] * w["beta"] * h["rj"]}
        entry = {k: float(pd.to_numeric(v, errors="coerce").mean()) for k, v in terms.items()}
        entry |= {"T start": float(w["init_threshold"].mean()), "T end": float(h["threshold"].mean()),
                  "mined +": float(h["n_pos"].mean()), "mined −": float(h["n_neg"].mean()),
                  "true among mined + (%)": float(100 * pd.to_numeric(h["pos_precision"], errors="coerce").mean())}
        if pd.to_numeric(h["n_clusters"], errors="coerce").notna().any():  # a clustering method's supervision
            entry |= {"clusters": float(pd.to_numeric(h["n_clusters"], errors="coerce").mean()),
                      "outliers": float(pd.to_numeric(h["n_outliers"], errors="coerce").mean()),
                      "true same-cluster pairs (%)": float(100 * pd.to_numeric(h["pair_precision"],
                                                                               errors="coerce").mean())}
        entry |= {title: float(100 * pd.to_numeric(h[column], errors="coerce").mean())
                  for column, title in CAMERA_TITLES.items()}  # the cameras of the supervising pairs
        out[label] = entry
    frame = pd.DataFrame.from_dict(out, orient="index")
    return frame.dropna(axis=1, how="all")


def gradient_table(rows: "pd.DataFrame", histories: "pd.DataFrame") -> "pd.DataFrame":
    """Per row, :func:`gradient_shares` of its runs over the epochs after L_MDL's warm-up (the records'
    ``mdl_warmup_epochs``; in those first epochs L_MDL is off by design); empty when no run measured them."""
    import pandas as pd

    if not len(histories):
        return pd.DataFrame()
    warmup = (rows.set_index("run")["mdl_warmup_epochs"] if "mdl_warmup_epochs" in rows
              else pd.Series(0, index=rows["run"]))
    after = histories["epoch"] > histories["run"].map(pd.to_numeric(warmup, errors="coerce")).fillna(0)
    out = {label: gradient_shares(histories[after & histories["run"].isin(group["run"])])
           for label, group in rows.groupby("row", sort=False)}
    out = {label: entry for label, entry in out.items() if entry}
    return pd.DataFrame.from_dict(out, orient="index")


#: the L_MAR terms as ``grad_terms_every`` names them, and as the tables write them
GRADIENT_TERMS = {"mdl": "L_MDL", "cml": "λ1·L_CML", "al": "λ2·L_AL", "rj": "λ2·β·L_RJ"}


def gradient_shares(histories: "pd.DataFrame") -> dict[str, float]:
    """Each L_MAR term's share of the update of the shared weights and its gradient norm, averaged over
    the epochs (> 0) of these runs' histories that measured them (``grad_terms_every``); ``{}`` when none did.

    Keys: ``"share <term> (%)"`` (``100·<g_term, g>/‖g‖²``: the shares add up to 100), ``"‖g <term>‖"`` and
    ``"‖g‖"`` (the step's whole gradient).
    """
    import pandas as pd

    if not len(histories) or "grad_total" not in histories:
        return {}
    h = histories[(histories["epoch"] > 0) & pd.to_numeric(histories["grad_total"], errors="coerce").notna()]
    if not len(h):
        return {}
    per_run = h.groupby("run").mean(numeric_only=True)  # each run's epochs alike, then the runs alike
    out: dict[str, float] = {}
    for key, title in GRADIENT_TERMS.items():
        if f"share_{key}" in per_run:
            out[f"share {title} (%)"] = float(100 * per_run[f"share_{key}"].mean())
    for key, title in GRADIENT_TERMS.items():
        if f"grad_{key}" in per_run:
            out[f"‖g {title}‖"] = float(per_run[f"grad_{key}"].mean())
    out["‖g‖"] = float(per_run["grad_total"].mean())
    return out


def per_epoch(rows: "pd.DataFrame", histories: "pd.DataFrame") -> "pd.DataFrame":
    """Per row and epoch, the mean over the row's runs of the cumulative training minutes, rank-1 and
    mAP (fractions), the precision of what supervised the target that epoch (MAR's true mined
    positives or the clusters' true same-cluster pairs), the cameras of those pairs (``CAMERA_COLUMNS``)
    and, for clustering, clusters, outliers and purity: the curves of a table whose rows train differently."""
    import pandas as pd

    h = histories[histories["run"].isin(rows["run"])].sort_values(["run", "epoch"]).copy()
    if not len(h):
        return pd.DataFrame()
    h["minutes"] = pd.to_numeric(h.get("seconds"), errors="coerce").fillna(0).groupby(h["run"]).cumsum() / 60
    precision = pd.Series(float("nan"), index=h.index)
    for column in ("pos_precision", "pair_precision"):
        if column in h:
            precision = precision.fillna(pd.to_numeric(h[column], errors="coerce"))
    h["precision"] = precision
    h["row"] = h["run"].map(dict(zip(rows["run"], rows["row"])))
    columns = [c for c in ("minutes", "rank1", "mAP", "precision", "n_clusters", "n_outliers", "purity",
                           *CAMERA_COLUMNS) if c in h]
    h[columns] = h[columns].apply(pd.to_numeric, errors="coerce")
    order = {label: i for i, label in enumerate(dict.fromkeys(rows["row"]))}
    out = h.groupby(["row", "epoch"], sort=False)[columns].mean().reset_index()
    out["runs"] = h.groupby(["row", "epoch"], sort=False).size().to_numpy()
    return out.sort_values(["row", "epoch"], key=lambda c: c.map(order) if c.name == "row" else c).reset_index(drop=True)


def at_budget(rows: "pd.DataFrame", histories: "pd.DataFrame", baseline: str,
              metrics: Sequence[str] = ("rank1", "mAP")) -> "pd.DataFrame":
    """Every row at the training wall clock of the baseline row: its evaluation after the last epoch
    whose cumulative training time (``seconds`` in the history: the epochs' training, clustering
    included, evaluation excluded) is within the baseline's median total; epoch 0 (the start) when
    none is. The baseline's runs are taken at their end. Rows whose methods cost different time per epoch are compared at equal cost this way,
    from their per-epoch evaluations (``eval_every=1``), never by looking at the test accuracy.

    Returns:
        Index: row labels; columns ``budget_s`` (the baseline's median seconds), ``epochs`` and
        ``seconds`` (mean over the row's runs of the epoch reached and its cumulative seconds), and
        mean / std (percent) of each metric at that epoch, with the paired Δ to the baseline.
    """
    import pandas as pd

    if not len(rows) or not len(histories) or "seconds" not in histories:
        return pd.DataFrame()
    h = histories[histories["run"].isin(rows["run"])].sort_values(["run", "epoch"]).copy()
    h["cumulative"] = pd.to_numeric(h["seconds"], errors="coerce").fillna(0).groupby(h["run"]).cumsum()
    totals = h.groupby("run")["cumulative"].max()
    base_runs = rows.loc[rows["row"] == baseline, "run"]
    if not len(base_runs):
        return pd.DataFrame()
    budget = float(totals.reindex(base_runs).median())
    picked = {}
    for run, part in h.groupby("run"):
        evaluated = part[pd.to_numeric(part[metrics[-1]], errors="coerce").notna()]
        if run in set(base_runs):  # the baseline's own runs define the budget: each at its end
            picked[run] = evaluated.iloc[-1]
            continue
        within = evaluated[evaluated["cumulative"] <= budget + 1e-6]
        picked[run] = within.iloc[-1] if len(within) else evaluated.iloc[0]
    base_by_seed = {int(r["seed"]): picked[r["run"]] for r in rows[rows["row"] == baseline].to_dict("records")
                    if r["run"] in picked}
    out = {}
    for label, group in rows.groupby("row", sort=False):
        chosen = [picked[r] for r in group["run"] if r in picked]
        if not chosen:
            continue
        entry: dict[str, Any] = {"budget_s": budget, "epochs": sum(float(c["epoch"]) for c in chosen) / len(chosen),
                                 "seconds": sum(float(c["cumulative"]) for c in chosen) / len(chosen)}
        for m in metrics:
            values = [100 * float(c[m]) for c in chosen]
            entry[f"{m}_mean"] = sum(values) / len(values)
            entry[f"{m}_std"] = float(pd.Series(values).std(ddof=1)) if len(values) > 1 else math.nan
            if label != baseline:
                diffs = [100 * (float(picked[r["run"]][m]) - float(base_by_seed[int(r["seed"])][m]))
                         for r in group.to_dict("records") if r["run"] in picked and int(r["seed"]) in base_by_seed]
                mean, low, high = t_interval(diffs)
                entry |= {f"delta_{m}": mean, f"delta_{m}_low": low, f"delta_{m}_high": high}
        out[label] = entry
    return pd.DataFrame.from_dict(out, orient="index")


def label_points(df: "pd.DataFrame", name: str) -> "pd.DataFrame":
    """A sweep's :func:`collect` table (or a committed ``runs.csv``) with the ``row`` of ``name``'s table.

    A committed ``runs.csv`` already has its ``row``; a notebook's own sweep is labelled by the row's
    parameters that its columns hold (``use_cml=False`` → "w/o CML"). Points without a ``seed`` column
    count as seed 0; only finished points are kept.
    """
    import pandas as pd

    from workbench.config import off_by_default

    exp = EXPERIMENTS[name]
    done = df[df["state"] == "done"] if "state" in df else df
    if "row" in done:
        out = done.copy()
    else:
        parts = []
        switches = off_by_default()
        for label, wanted in exp.rows.items():  # what the table's columns say (a switch absent from them is off)
            keys = {k: v for k, v in wanted.items() if k in done or (isinstance(v, bool) and k in switches)}
            if not keys:
                continue
            rows = select(done, **keys).copy()
            rows.insert(0, "row", label)
            parts.append(rows)
        out = pd.concat(parts, ignore_index=True) if parts else done.iloc[0:0].assign(row=[])
    for m in METRIC_KEYS:  # a sweep's table names the start "initial_<metric>" (metrics.json's "initial")
        if f"start_{m}" not in out and f"initial_{m}" in out:
            out[f"start_{m}"] = out[f"initial_{m}"]
    if "seed" not in out or out["seed"].isna().all():
        out = out.assign(seed=0)
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce").fillna(0).astype(int)
    return out.reset_index(drop=True)


def seed_table(df: "pd.DataFrame", name: str, *, dataset: str = "market1501") -> "pd.DataFrame":
    """:func:`seed_summary` of a sweep's or a committed table: mean ± std, paired Δ with 95 % CI, paper."""
    return seed_summary(label_points(df, name), EXPERIMENTS[name], dataset=dataset)
