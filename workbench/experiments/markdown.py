"""Results as markdown: the tables of a results folder's README and ``report`` (mean ± std over seeds,
paired differences with their intervals, the paper beside), and the numbers a hand-written diagnosis
quotes from the folder's files (:func:`fill_numbers`). Text only: nothing here computes a statistic.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported inside the functions that need it
    import pandas as pd

from workbench.errors import ConfigError
from workbench.experiments.catalog import Experiment


def pm(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if std is None or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def delta(mean: float, low: float, high: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:+.1f}" if math.isnan(low) else f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def num(value: Any, digits: int = 1) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def summary_markdown(summary: "pd.DataFrame", experiment: Experiment, *,
                     reference_rows: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> str:
    """The table of the generated README: mean ± std over seeds, paired Δ with its 95 % CI, the paper beside.

    Args:
        summary: :func:`seed_summary`.
        experiment: its experiment (baseline name).
        reference_rows: ``(label, metrics as fractions)`` shown first, outside the statistics
            (direct transfer, stage 1 alone).
    """
    base = experiment.baseline
    head = ["", "runs", "start mAP", "rank-1", "mAP", "mAP*", "mINP", f"Δ rank-1 vs {base}", f"Δ mAP vs {base}",
            "paper rank-1", "paper mAP", "paper Δ mAP"]
    bound = experiment.upper_bound if "gap_closed_mAP" in summary else None
    if bound:  # each row's share of the way from its start to the upper bound's mAP
        head.insert(9, "mAP gap closed")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, m in reference_rows:
        cells = [label, "1", "", *(num(100 * m[k]) if m.get(k) is not None else "–"
                                    for k in ("rank1", "mAP", "mAP_devkit", "mINP")), "", "", "", "", ""]
        if bound:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    for label, r in summary.iterrows():
        cells = [str(label), str(int(r["runs"])), num(r.get("start_mAP_mean")),
                 *(pm(r[f"{k}_mean"], r[f"{k}_std"]) for k in ("rank1", "mAP", "mAP_devkit", "mINP"))]
        for k in ("rank1", "mAP"):
            cells.append("(baseline)" if label == base else delta(r.get(f"delta_{k}", math.nan),
                                                                   r.get(f"delta_{k}_low", math.nan),
                                                                   r.get(f"delta_{k}_high", math.nan)))
        if bound:
            gap = r.get("gap_closed_mAP", math.nan)
            cells.append("(the bound)" if label == bound else ("–" if math.isnan(gap) else f"{gap:.0f} %"))
        cells += [num(r.get("paper_rank1")), num(r.get("paper_mAP")),
                  "(baseline)" if label == base else (
                      "–" if math.isnan(r.get("paper_delta_mAP", math.nan)) else f"{r['paper_delta_mAP']:+.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_markdown(paper: Mapping[str, Mapping[str, Any]]) -> str:
    """A published table in markdown: rank-1 and mAP on Market-1501 and DukeMTMC-reID per method."""
    cells = ("market1501", "rank1"), ("market1501", "mAP"), ("dukemtmc", "rank1"), ("dukemtmc", "mAP")
    lines = ["| | Market-1501 rank-1 | Market-1501 mAP | DukeMTMC-reID rank-1 | DukeMTMC-reID mAP |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in paper.items():
        values = [(row.get(d) or {}).get(m) for d, m in cells]
        lines.append(f"| {name} | " + " | ".join("–" if v is None or math.isnan(float(v)) else f"{v:g}"
                                                 for v in values) + " |")
    return "\n".join(lines)


def budget_markdown(budget: "pd.DataFrame", baseline: str) -> str:
    """:func:`~workbench.experiments.stats.at_budget`'s table in markdown (percent)."""
    lines = ["| | epochs | training min | rank-1 | mAP | Δ mAP |", "| --- | --- | --- | --- | --- | --- |"]
    for label, r in budget.iterrows():
        change = "" if label == baseline else delta(r.get("delta_mAP"), r.get("delta_mAP_low"), r.get("delta_mAP_high"))
        lines.append(f"| {label} | {num(r['epochs'])} | {num(r['seconds'] / 60)} | "
                     f"{pm(r['rank1_mean'], r['rank1_std'])} | {pm(r['mAP_mean'], r['mAP_std'])} | {change} |")
    return "\n".join(lines)


def frame_markdown(df: "pd.DataFrame", digits: int = 3) -> str:
    head = ["", *map(str, df.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, r in df.iterrows():
        cells = [str(label)] + [num(v, 1 if abs(float(v)) >= 10 else digits) if v == v else "–" for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_markdown(curves: Mapping[str, "pd.DataFrame"]) -> str:
    """Fig. 6's curves as one markdown table: parameter, value, runs, rank-1 and mAP (mean ± std)."""
    lines = ["| parameter | value | runs | rank-1 | mAP |", "| --- | --- | --- | --- | --- |"]
    for p, c in curves.items():
        if not len(c):
            lines.append(f"| {p} | (no run) | 0 | – | – |")
            continue
        for value, r in c.iterrows():
            shown = str(int(value)) if p == "epochs" else f"{value:g}"
            cells = [p, shown, str(int(r["n"])),
                     *(pm(r.get(f"{m}_mean", r.get(m)), r.get(f"{m}_std", math.nan)) for m in ("rank1", "mAP"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_PLACEHOLDER = re.compile(r"\{\{\s*(?P<file>[^:{}]+?):\s*(?P<spec>[^{}]*?)\s*\}\}")


def fill_numbers(text: str, folder: str | os.PathLike, *, beside: str | os.PathLike | None = None) -> str:
    """Replace ``{{ FILE: key=value; ...; COLUMN }}`` in hand-written notes with the number in ``folder/FILE``.

    The row is the first whose columns equal every ``key=value`` (the first column, e.g. ``row``, counts
    too); the value is printed with one decimal (below 1: two significant digits; ``delta_*`` columns
    with a sign); ``COLUMN%`` shows a fraction (``runs.csv``'s ``mAP``) in percent. ``FILE`` is relative
    to the results folder (or, when it is not there, to ``beside``: the folder the notes were written in,
    whose neighbours ``../real/runs.csv`` names). So the numbers a diagnosis quotes are read from the
    committed files each time the README is generated, never typed.

    Example:
        ``{{ summary.csv: row=w/o CML; delta_mAP }}`` → ``-0.5``

    Raises:
        ConfigError: a placeholder naming a missing file, column or row (the placeholder is quoted).
    """
    import pandas as pd

    folder = Path(folder)
    beside = Path(beside) if beside is not None else None
    tables: dict[str, pd.DataFrame] = {}

    def value(match: "re.Match[str]") -> str:
        name, parts = match["file"].strip(), [p.strip() for p in match["spec"].split(";") if p.strip()]
        where = f"notes placeholder {match.group(0)!r}"
        if name not in tables:
            path = folder / name
            if not path.is_file() and beside is not None and (beside / name).is_file():
                path = beside / name  # a file of another folder, named from where the notes live
            if not path.is_file():
                raise ConfigError(f"{where}: no file {folder / name}")
            tables[name] = pd.read_csv(path)
        df, column = tables[name], parts[-1] if parts else ""
        scale = 1.0
        if column.endswith("%") and column[:-1] in df:  # a fraction, shown in percent
            column, scale = column[:-1], 100.0
        if column not in df:
            raise ConfigError(f"{where}: {name} has no column {column!r}")
        for cond in parts[:-1]:
            key, _, wanted = cond.partition("=")
            if key.strip() not in df:
                raise ConfigError(f"{where}: {name} has no column {key.strip()!r}")
            df = df[_matches(df[key.strip()], wanted.strip())]
        if not len(df):
            raise ConfigError(f"{where}: no row of {name} matches")
        number = scale * float(df[column].iloc[0])
        if column.startswith("delta") or column.startswith("paper_delta"):
            return f"{number:+.1f}"
        return f"{number:.1f}" if abs(number) >= 1 or number == 0 else f"{number:.2g}"  # small: 2 significant

    return _PLACEHOLDER.sub(value, text)


def _matches(column: "pd.Series", wanted: str) -> "pd.Series":
    """Which cells of a column are ``wanted``: as text, or as a number where both are numbers (``seed=0``
    matches 0.0, which a seed column with an empty cell is read as)."""
    import pandas as pd

    same = column.astype(str) == wanted
    try:
        number = float(wanted)
    except ValueError:
        return same
    return same | (pd.to_numeric(column, errors="coerce") == number)
