"""Results of sweeps: collect a sweep folder into a table, select rows, put the paper beside us, curves."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports (torch, pandas, papermill) stay inside the functions that need them
    import pandas as pd

from workbench.evaluation.names import METRIC_KEYS, METRIC_TITLES
from workbench.experiments.grids import plain_value
from workbench.experiments.paper import PAPER_METRICS  # noqa: F401
from workbench.runs import PointFolder

METRICS_FILE = PointFolder.SUMMARY

log = logging.getLogger("workbench.experiments")

# ----------------------------------------------------------------------------- collecting results

def flatten_metrics(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten_metrics(value, f"{name}_")
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
            PointFolder(p).status_path.is_file() or PointFolder(p).summary_path.is_file())) if out_dir.is_dir() else []
    else:
        folders = [out_dir / n for n in names]
    rows: list[dict[str, Any]] = []
    param_cols: list[str] = []
    for folder in folders:
        status = PointFolder(folder).status() or {}
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
        for key, value in flatten_metrics(metrics).items():
            row[f"metric_{key}" if key in params or key in ("name", "state", "error", "seconds", "path") else key] = value
        row["path"] = str(folder)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["name", "state", "error", "seconds", *METRIC_KEYS, "path"])
    first = ["name", *param_cols, "state", "error", "seconds"]
    metrics_first = [m for m in METRIC_KEYS if m in df.columns]
    rest = [c for c in df.columns if c not in first and c not in metrics_first and c != "path"]
    for m in METRIC_KEYS:  # always present, NaN for failed points
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
    return plain_value(value) == plain_value(wanted)


def select(df: "pd.DataFrame", **params: Any) -> "pd.DataFrame":
    """The rows of :func:`collect` whose parameters equal ``params`` (no row when a column is missing, but for
    a switch asked to be off: a record without it ran with it off).

    Example:
        >>> select(df, use_cml=False, backbone="resnet50")     # doctest: +SKIP
    """
    from workbench.config import off_by_default

    mask = [True] * len(df)
    for key, wanted in params.items():
        off = wanted is False and key in off_by_default()
        if key not in df.columns:
            if off:
                continue
            return df.iloc[0:0]
        values = df[key].tolist()
        if off:
            values = [False if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
        mask = [m and _matches(v, wanted) for m, v in zip(mask, values)]
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


def curve(df: "pd.DataFrame", param: str, fixed: Mapping[str, Any] | None = None,
          metrics: Sequence[str] = ("rank1", "mAP")) -> "pd.DataFrame":
    """The one curve function: a metric against one parameter, mean ± std over the runs (seeds) present.

    The same for a fresh sweep (:func:`collect`'s table), committed runs (``runs.csv``) and per-epoch
    histories (``param="epoch"``), so a figure means the same whatever its source.

    Args:
        df: one row per run (or per run and epoch); rows with a ``state`` other than ``done`` and rows
            without the first metric (an epoch that was not evaluated) are left out.
        param: the varied parameter (the x axis).
        fixed: the values of the other parameters along this curve (None: every row).
        metrics: metric columns (fractions), returned in percent.

    Returns:
        Index: the values of ``param`` (sorted); columns per metric ``<m>`` (mean) and ``<m>_std``
        (sample std over the rows there, NaN for one), and ``n`` (rows averaged).

    Example:
        >>> curve(collect("runs/sweeps/fig6"), "lr", {"epochs": 2, "weight_decay": 5e-4})  # doctest: +SKIP
    """
    import pandas as pd

    columns = [c for m in metrics for c in (m, f"{m}_std")] + ["n"]
    others = {k: v for k, v in (fixed or {}).items() if k != param}
    rows = select(df, **others) if len(df) and others else df
    if len(rows) and "state" in rows:
        rows = rows[rows["state"] == "done"]
    if not len(rows) or param not in rows or metrics[0] not in rows:
        return pd.DataFrame(columns=columns, index=pd.Index([], name=param))
    rows = rows[pd.to_numeric(rows[metrics[0]], errors="coerce").notna()]
    values = pd.DataFrame({m: 100 * pd.to_numeric(rows[m], errors="coerce") for m in metrics})
    groups = values.groupby(rows[param])
    out = pd.DataFrame({c: s for m in metrics for c, s in ((m, groups[m].mean()), (f"{m}_std", groups[m].std(ddof=1)))})
    out["n"] = groups.size()
    return out[columns].rename_axis(param).sort_index()


def metrics_table(runs: Mapping[str, Mapping[str, Any]]) -> "pd.DataFrame":
    """Rank-1/5/10, mAP (both AP conventions) and mINP in percent, one row per named run.

    Args:
        runs: ``{row label: metrics dict}`` (``RunResult.metrics``, its ``"initial"`` entry, a
            ``metrics.json`` read back); missing metrics show as NaN.
    """
    import pandas as pd

    table = {label: {title: 100 * float(m[key]) if m.get(key) is not None else math.nan
                     for key, title in METRIC_TITLES.items()} for label, m in runs.items()}
    return pd.DataFrame.from_dict(table, orient="index").round(1)


def in_percent(df: "pd.DataFrame", columns: Sequence[str] | None = None, *, digits: int = 1) -> "pd.DataFrame":
    """A copy of a table with its metric columns (fractions) in percent, named ``<column> (%)``.

    Args:
        df: e.g. :func:`collect`'s table or a run's history.
        columns: the fraction columns (default: those of :data:`METRIC_KEYS` present, and
            ``pos_precision``, ``final_pos_precision``, ``train_acc`` and the clustering baseline's
            ``purity``, ``nmi``, ``pair_precision``, ``pair_recall``).
        digits: decimals kept.
    """
    import pandas as pd

    fractions = (*METRIC_KEYS, "pos_precision", "final_pos_precision", "train_acc", "purity", "nmi", "pair_precision",
                 "pair_recall")
    columns = [c for c in (columns if columns is not None else fractions) if c in df.columns]
    out = df.copy()
    for c in columns:
        out[c] = (100 * pd.to_numeric(out[c], errors="coerce")).round(digits)
    return out.rename(columns={c: f"{c} (%)" for c in columns})
