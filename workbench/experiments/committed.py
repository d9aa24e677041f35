"""Committed results as notebooks and ``report`` show them: a results folder's setting, README (figures
inline) and headline table, recomputed from its files (:class:`~workbench.experiments.folder.ResultsFolder`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from workbench.errors import ConfigError, MissingFileError
from workbench.experiments.catalog import EXPERIMENTS
from workbench.experiments.folder import ResultsFolder
from workbench.experiments.markdown import budget_markdown, curves_markdown, frame_markdown, num, summary_markdown
from workbench.experiments.stats import at_budget, label_points, seed_table


def folder_table(folder: str | os.PathLike) -> str:
    """The headline table of a committed ``results/<experiment>/`` (what README shows and
    ``python -m workbench report results/<experiment>`` prints), recomputed from its files."""
    results = ResultsFolder(folder)
    folder = results.path
    name = results.experiment()
    if name is None:
        raise ConfigError(f"{folder}: not an experiment folder (no {ResultsFolder.EXPERIMENT}, and its name is none "
                          f"of {', '.join(EXPERIMENTS)})")
    exp = EXPERIMENTS[name]
    shown = committed_results(folder.resolve())
    if shown is None:
        raise MissingFileError(f"{folder}: no {ResultsFolder.RUNS}")
    if exp.rows:
        table = summary_markdown(seed_table(shown.runs, name), exp)
        if exp.same_budget and exp.baseline and results.histories_path.is_file():
            budget = at_budget(label_points(shown.runs, name), results.histories(), exp.baseline)
            if len(budget):
                table += (f"\n\nAt the {exp.baseline} row's training wall clock "
                          f"({num(float(budget['budget_s'].iloc[0]) / 60)} min):\n\n"
                          + budget_markdown(budget, exp.baseline))
        shares = results.table("gradient_shares", index_col="row")
        if shares is not None:  # grad_terms_every runs: where each row's update came from
            shares = shares[[c for c in shares if c.startswith("share") or c == "‖g‖"]]
            table += ("\n\nEach term's share of the update of the shared weights (%, after L_MDL's warm-up) and "
                      "the step's gradient norm:\n\n" + frame_markdown(shares))
        return table
    return curves_markdown(committed_curves(shown, exp.curves))


@dataclass
class CommittedResults:
    """``results/<experiment>/`` as a notebook shows it: its README (tables, figures) and its runs."""

    folder: Path
    runs: "pd.DataFrame"
    readme: str
    experiment: str | None = None  # the EXPERIMENTS key the folder holds (ResultsFolder.experiment)

    def _repr_markdown_(self) -> str:
        # figures are relative links in the README: show them inline from this folder
        import base64

        def inline(match: "re.Match[str]") -> str:
            path = self.folder / match.group(2)
            if not path.is_file():
                return match.group(0)
            return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

        text = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, self.readme)
        # one heading level down: the README sits under the notebook's own section headings
        return re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + 1, 6) + " ", text, flags=re.M)


def committed_results(results_dir: str | os.PathLike | None) -> CommittedResults | None:
    """The committed results of an experiment, or None when ``results_dir`` is None or has no ``runs.csv``.

    Args:
        results_dir: e.g. ``"results/loss_ablation"``; relative paths are taken from the repository
            root (so a notebook finds them whatever its working directory).
    """
    from workbench.experiments.execute import repo_path

    path = repo_path(results_dir)
    if path is None or not ResultsFolder(path).has_runs:
        return None
    folder = ResultsFolder(path)
    runs = folder.runs()
    runs["state"] = "done"
    return CommittedResults(folder.path, runs, folder.readme(), folder.experiment())


def committed_curves(committed: CommittedResults, names: Sequence[str] = ("epochs", "lr", "weight_decay")
                     ) -> dict[str, "pd.DataFrame"]:
    """The committed Fig. 6 curves (``curve_<name>.csv``, as :func:`~workbench.experiments.results.curve`
    returns them): ``{name: table}`` indexed by the parameter's values."""
    import pandas as pd

    folder = ResultsFolder(committed.folder)
    out = {}
    for name in names:
        curve = folder.table(f"curve_{name}", index_col=0)
        out[name] = curve if curve is not None else pd.DataFrame(columns=["rank1", "mAP"])
    return out


def results_setting(runs: "pd.DataFrame") -> str:
    """One sentence saying what committed runs are: data, backbone, input size, stage-2 budget, seeds, code."""
    def one(key: str) -> str | None:
        values = sorted({str(v) for v in runs[key].dropna()}) if key in runs else []
        return ", ".join(values) or None

    def name(root: str | None) -> str | None:
        return None if root is None else ", ".join(Path(r).name for r in root.split(", "))

    parts = [f"target {name(one('target_root')) or one('target')}, reference {name(one('reference_root')) or one('reference')}",
             f"{one('backbone')} at {one('image_size')}", f"preset {one('preset')}",
             f"stage 2 for {one('epochs')} epoch(s)", f"{len(runs)} run(s), seeds {one('seed')}",
             f"code {one('commit')}"]
    return "; ".join(p for p in parts if "None" not in p)


def show_committed(results_dir: str | os.PathLike | None) -> CommittedResults | None:
    """A notebook's first look: the setting of ``results_dir``'s committed results, then their README
    (figures inline); None when ``results_dir`` is None (the notebook then runs its own sweep).

    Raises:
        NotebookParameterError: ``results_dir`` names a folder that does not exist or holds no ``runs.csv``
            (a typo must not start a sweep).
    """
    from IPython.display import Markdown, display

    from workbench.experiments.execute import NotebookParameterError, repo_path, repo_root

    if repo_path(results_dir) is None:
        display(Markdown("`results_dir = None`: the sweep below runs with this notebook's parameters."))
        return None
    committed = committed_results(results_dir)
    if committed is None:
        raise NotebookParameterError(f"results_dir = {str(results_dir)!r}: no committed results there "
                                     f"({repo_path(results_dir)} has no runs.csv); set results_dir = None to "
                                     "run the sweep yourself")
    shown = committed.folder  # as the repository names it, however the parameter was given
    try:
        shown = committed.folder.resolve().relative_to(repo_root().resolve())
    except ValueError:
        pass
    display(Markdown(f"**What is shown** (committed in `{shown}`, nothing trains): "
                     f"{results_setting(committed.runs)}. The parameters cell's `preset`, `backbone` and data "
                     "apply only to a sweep of your own (`results_dir = None`)."))
    display(committed)
    return committed


def shown_above(committed: CommittedResults, what: str) -> None:
    """In place of a table or figure that the committed block at the top already shows: one line
    saying where it is (a notebook opened on its committed results shows each once)."""
    from IPython.display import Markdown, display

    from workbench.experiments.execute import repo_root

    folder = committed.folder
    try:
        folder = folder.resolve().relative_to(repo_root().resolve())
    except ValueError:
        pass
    display(Markdown(f"{what}: in the committed block above (`{folder.as_posix()}/README.md`), shown once; "
                     "a sweep of your own (`results_dir = None`) draws it here."))
