"""A regenerated results folder beside the committed one: row by row, the committed mean, spread and runs,
the regenerated mean, the difference and whether it lies inside the committed seeds' range (what
``workbench reproduce`` prints when it has written a folder)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from workbench.experiments.recipes import Recipe

from workbench.experiments.execute import repo_relative
from workbench.experiments.folder import ResultsFolder

#: the metrics the comparison prints
COMPARED = ("rank1", "mAP")


def read_runs(folder: Path) -> "pd.DataFrame":
    return ResultsFolder(folder).runs()


def _row_labels(runs: "pd.DataFrame", recipe: Recipe) -> "pd.Series":
    """Each run's row: the ``row`` column of a table, else the varied parameters of a curve."""
    import pandas as pd

    if "row" in runs:
        return runs["row"].astype(str)
    from workbench.experiments.catalog import EXPERIMENTS

    keys = [k for k in EXPERIMENTS[recipe.experiment].curves if k in runs]
    if not keys:
        return pd.Series(["all"] * len(runs), index=runs.index)
    return runs[keys].astype(str).apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1)


def compare(recipe: Recipe, committed: "pd.DataFrame", regenerated: "pd.DataFrame") -> "pd.DataFrame":
    """Row by row (percent): the committed mean, std, seed range and runs, the regenerated mean and runs, Δ,
    and whether the regenerated mean lies inside the committed seeds' range."""
    import pandas as pd

    out = []
    labels_new = _row_labels(regenerated, recipe) if len(regenerated) else pd.Series(dtype=str)
    labels_old = _row_labels(committed, recipe) if len(committed) else pd.Series(dtype=str)
    order = list(dict.fromkeys([*labels_new, *labels_old]))
    for label in order:
        old = committed[labels_old == label] if len(committed) else committed
        new = regenerated[labels_new == label] if len(regenerated) else regenerated
        entry = {"row": label, "runs": len(old), "runs now": len(new)}
        for m in COMPARED:
            o = 100 * pd.to_numeric(old[m], errors="coerce") if m in old else pd.Series(dtype=float)
            n = 100 * pd.to_numeric(new[m], errors="coerce") if m in new else pd.Series(dtype=float)
            entry |= {f"{m}": o.mean() if len(o) else float("nan"), f"{m} std": o.std() if len(o) > 1 else float("nan"),
                      f"{m} now": n.mean() if len(n) else float("nan")}
            entry[f"Δ {m}"] = entry[f"{m} now"] - entry[m]
            if len(o) > 1 and len(n):
                entry[f"{m} inside"] = "yes" if o.min() - 1e-9 <= n.mean() <= o.max() + 1e-9 else "no"
            else:
                entry[f"{m} inside"] = "–"
        out.append(entry)
    return pd.DataFrame(out)


def format_comparison(table: "pd.DataFrame", recipe: Recipe) -> str:
    """The comparison as a markdown table."""
    if not len(table):
        return "nothing to compare (no runs)"

    def num(v) -> str:
        return "–" if v != v else f"{v:+.1f}" if isinstance(v, float) and v < 0 else (f"{v:.1f}" if isinstance(v, float) else str(v))

    lines = ["", f"{repo_relative(recipe.folder)}: regenerated beside committed (percent; inside: the regenerated mean "
                 "lies within the committed seeds' range)", ""]
    cols = ["row", "runs", "runs now"] + [c for m in COMPARED for c in (m, f"{m} std", f"{m} now", f"Δ {m}", f"{m} inside")]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("| " + " | ".join("---" for _ in cols) + " |")
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c.startswith("Δ") and v == v:
                cells.append(f"{v:+.1f}")
            else:
                cells.append(num(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
