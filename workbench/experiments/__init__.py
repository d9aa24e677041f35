"""Experiments: run parameterized notebooks with papermill, sweep them over grids, collect results.

One module per step, every public name re-exported here (notebooks use ``ex.<name>``)::

    grids.py     grid files and dicts → points with readable names (load_grid, one_at_a_time)
    sweep.py     notebook parameters and paths, run_notebook, check_points, sweep (one folder a point),
                 shared_stage1 (one stage 1 per combination, shared by its stage-2 seeds)
    results.py   collect a sweep folder, select, paper_table / paper_rows, curve, metrics tables
    report.py    markdown tables and results CSVs (``python -m workbench report``)
    paper.py     the paper's numbers (PAPER.md) and the ablation / fusion / pretraining definitions
    notebook.py  notebook-side helpers: check_parameters, notebook_config, ensure_run, find_run, finished_runs,
                 run_choice, existing_folder, record_point
    catalog.py   EXPERIMENTS: the paper's tables and figures as rows over run records
    records.py   run records from sweep folders and results folders
    stats.py     seeds, paired intervals, budgets, curves (numbers)
    folder.py    ResultsFolder: the one owner of a results folder's files
    summary.py   a results folder from runs: tables → figures (drawn by the caller) → README
    markdown.py  the tables as markdown, the numbers a diagnosis quotes (fill_numbers)
    committed.py committed results as notebooks and ``report`` show them
    recipes.py   recipe.yaml: what makes a results folder; plan.py: its runs and their cost
    reproduce.py ``workbench reproduce``: a recipe back into its folder; comparison.py: it beside the committed one
    render.py    an executed notebook as HTML that reads the same offline on any machine
                 (``python -m workbench render``; imported from its module, not re-exported)

A sweep runs one notebook once per point of a grid, each point in its own folder::

    <out_dir>/
      backbone=resnet50,use_cml=False-1a2b3c4d/   one folder per point (readable + short hash)
        status.json          state running | done | failed, params, error, traceback tail, times
        03_train_mar.ipynb   the executed notebook (kept, partial, when the point failed)
        metrics.json         the point's summary (record_point: the run's metrics and record)
        pretrain/ mar/       the notebook's run folders (it receives out_dir = this folder)

Re-running a sweep skips the points whose status is ``done`` and runs the others again; a failing
point never stops the others.

Example:
    >>> df = sweep("notebooks/03_train_mar.ipynb", {"use_cml": [True, False]}, "runs/sweeps/cml",
    ...            base_params={"preset": "smoke"})                              # doctest: +SKIP
    >>> df[["use_cml", "state", "rank1", "mAP"]]                                 # doctest: +SKIP

Command line: ``python -m workbench sweep NOTEBOOK --grid grid.yaml --out DIR [--jobs N | --executor ray]``
(running one notebook: :mod:`.execute`; where points run: :mod:`.executors`). Notebooks are committed without outputs:
``make notebooks-strip`` (nbstripout).
"""
from __future__ import annotations

from workbench.experiments.execute import (
    NOTEBOOK_ENV,
    NotebookParameterError,
    check_choices,
    notebook_parameters,
    repo_path,
    repo_root,
    resolve_notebook,
    run_notebook,
)
from workbench.experiments.grids import (
    load_grid,
    one_at_a_time,
    parse_value,
    point_name,
)
from workbench.experiments.notebook import (
    DATA_PARAMETERS,
    check_parameters,
    ensure_run,
    existing_folder,
    find_run,
    finished_runs,
    notebook_config,
    notebook_out_dir,
    record_point,
    run_choice,
    shown_path,
)
from workbench.experiments.paper import (
    FUSION_COMBINATIONS,
    LOSS_ABLATION,
    METHOD_COMPARISON,
    PAPER_METRICS,
    PAPER_NETWORKS,
    PAPER_RESULTS,
    PRETRAINING_ABLATION,
    pretraining_points,
)
from workbench.experiments.results import (
    METRICS_FILE,
    collect,
    curve,
    in_percent,
    metrics_table,
    paper_rows,
    paper_table,
    select,
)
from workbench.experiments.catalog import EXPERIMENTS
from workbench.experiments.records import records_at_epoch
from workbench.experiments.stats import at_budget, gradient_table, label_points, seed_summary, seed_table
from workbench.experiments.committed import (
    CommittedResults,
    committed_curves,
    committed_results,
    show_committed,
    shown_above,
)
from workbench.experiments.folder import ResultsFolder
from workbench.experiments.markdown import budget_markdown, summary_markdown
from workbench.experiments.summary import compute_tables, write_experiment
from workbench.experiments.sweep import (
    STATUS_FILE,
    check_points,
    read_status,
    shared_stage1,
    sweep,
)

__all__ = [
    "load_grid", "one_at_a_time", "parse_value", "point_name",
    "DATA_PARAMETERS", "check_parameters", "ensure_run", "existing_folder", "find_run", "finished_runs", "run_choice",
    "shown_path", "notebook_config", "notebook_out_dir",
    "record_point",
    "FUSION_COMBINATIONS", "LOSS_ABLATION", "METHOD_COMPARISON", "PAPER_METRICS", "PAPER_NETWORKS", "PAPER_RESULTS",
    "PRETRAINING_ABLATION", "pretraining_points",
    "METRICS_FILE", "collect", "curve", "in_percent", "metrics_table", "paper_rows", "paper_table",
    "select",
    "NOTEBOOK_ENV", "STATUS_FILE", "NotebookParameterError", "check_choices", "check_points", "notebook_parameters",
    "read_status", "repo_path", "repo_root", "resolve_notebook", "run_notebook", "shared_stage1", "sweep",
    "EXPERIMENTS", "CommittedResults", "at_budget", "budget_markdown", "committed_curves", "committed_results", "gradient_table", "label_points", "records_at_epoch",
    "seed_summary", "seed_table",
    "show_committed", "shown_above", "summary_markdown", "write_experiment", "compute_tables", "ResultsFolder",
    "agent_similarity",
]


def __getattr__(name: str):
    if name == "agent_similarity":  # a model diagnostic (workbench.models.net); imported on use: torch is heavy
        from workbench.models.net import agent_similarity

        return agent_similarity
    raise AttributeError(f"module 'workbench.experiments' has no attribute {name!r}")
