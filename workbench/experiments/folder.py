"""The results folder: the one owner of ``results/<experiment>/``'s file names, its run records and its
tables, as :class:`~workbench.runs.RunFolder` owns a run's.

A results folder holds::

    recipe.yaml       how to make it again (workbench.experiments.recipes; ``workbench reproduce``)
    experiment.json   which experiment's rows it holds (``{"experiment": NAME}``)
    runs.csv          one record per run (the record schema of workbench.experiments.records: its row,
                      seed, commit, wall time, every config field, all metrics, the start metrics, T,
                      mined pairs and their precision, the stage 1 it started from)
    histories.csv     every run's per-epoch history, with ``run`` and ``seed`` (epoch 0: the start)
    summary.csv, at_budget.csv, per_epoch.csv, diagnostics.csv, gradient_shares.csv, curve_<name>.csv
                      the tables computed from the records (workbench.experiments.summary)
    *.png             the figures drawn from those tables (workbench.viz, by whoever writes the folder)
    NOTES.md          the diagnosis, written by hand; its numbers are placeholders read from the tables
    README.md         generated from all of the above

Nothing outside this module spells those names: callers ask a :class:`ResultsFolder`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from workbench.errors import ConfigError
from workbench.runs import atomic_write_text


class ResultsFolder:
    """One results folder: file names, reading its records and tables, writing them atomically.

    Args:
        path: the folder (it need not exist yet).
    """

    RECIPE = "recipe.yaml"
    EXPERIMENT = "experiment.json"
    RUNS = "runs.csv"
    HISTORIES = "histories.csv"
    NOTES = "NOTES.md"
    README = "README.md"
    #: the tables computed from the records, by kind
    TABLES = {"summary": "summary.csv", "at_budget": "at_budget.csv", "per_epoch": "per_epoch.csv",
              "diagnostics": "diagnostics.csv", "gradient_shares": "gradient_shares.csv"}

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultsFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- names
    @property
    def runs_path(self) -> Path:
        return self.path / self.RUNS

    @property
    def histories_path(self) -> Path:
        return self.path / self.HISTORIES

    @property
    def readme_path(self) -> Path:
        return self.path / self.README

    @property
    def notes_path(self) -> Path:
        return self.path / self.NOTES

    @property
    def recipe_path(self) -> Path:
        return self.path / self.RECIPE

    def table_path(self, kind: str) -> Path:
        """``summary``, ``at_budget`` ... (:data:`TABLES`), or ``curve_<parameter>``."""
        if kind.startswith("curve_"):
            return self.path / f"{kind}.csv"
        if kind not in self.TABLES:
            raise ConfigError(f"no table {kind!r} in a results folder; tables: {', '.join(self.TABLES)}, curve_<name>")
        return self.path / self.TABLES[kind]

    # -- state
    @property
    def has_runs(self) -> bool:
        return self.runs_path.is_file()

    def experiment(self) -> str | None:
        """The experiment the folder holds: its ``experiment.json``, else its name when that is an experiment's
        (folders written before the file existed); None for any other folder.

        Raises:
            ConfigError: an ``experiment.json`` that is not one, or names no experiment.
        """
        from workbench.experiments.catalog import EXPERIMENTS

        marker = self.path / self.EXPERIMENT
        if marker.is_file():
            try:
                name = json.loads(marker.read_text()).get("experiment")
            except (OSError, ValueError, AttributeError):
                raise ConfigError(f"{marker}: not a JSON object with an \"experiment\" name") from None
            if name not in EXPERIMENTS:
                raise ConfigError(f"{marker}: unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
            return name
        return self.path.name if self.path.name in EXPERIMENTS else None

    # -- reading
    def runs(self) -> "pd.DataFrame":
        """``runs.csv`` (empty when absent)."""
        import pandas as pd

        return pd.read_csv(self.runs_path) if self.has_runs else pd.DataFrame()

    def histories(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.read_csv(self.histories_path) if self.histories_path.is_file() else pd.DataFrame()

    def table(self, kind: str, **read_csv) -> "pd.DataFrame | None":
        """A computed table, or None when the folder has none of that kind."""
        import pandas as pd

        path = self.table_path(kind)
        return pd.read_csv(path, **read_csv) if path.is_file() else None

    def readme(self) -> str:
        return self.readme_path.read_text() if self.readme_path.is_file() else ""

    # -- writing (atomic)
    def write_table(self, kind: str, frame: "pd.DataFrame", *, index: bool = True, float_format: str = "%.4f") -> Path:
        path = self.table_path(kind)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, frame.to_csv(index=index, float_format=float_format))
        return path

    def write_records(self, runs: "pd.DataFrame", histories: "pd.DataFrame") -> None:
        """``runs.csv`` (the ``row`` column first when there is one) and the histories of those runs."""
        self.path.mkdir(parents=True, exist_ok=True)
        first = ["row"] if "row" in runs else []
        atomic_write_text(self.runs_path, runs[first + [c for c in runs.columns if c not in first]]
                          .to_csv(index=False, float_format="%.6g"))
        if len(histories):
            kept = histories[histories["run"].isin(runs["run"])]
            atomic_write_text(self.histories_path, kept.to_csv(index=False, float_format="%.6g"))

    def write_experiment(self, name: str) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / self.EXPERIMENT, json.dumps({"experiment": name}) + "\n")
        return self.path / self.EXPERIMENT

    def write_readme(self, text: str) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.readme_path, text.rstrip() + "\n")
        return self.readme_path
