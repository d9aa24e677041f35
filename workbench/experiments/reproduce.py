"""``workbench reproduce``: a results folder's recipe turned back into the folder.

For a table's recipe (:mod:`.recipes`): the stage 1s first (a zoo entry installed as a finished run, a
finished one under ``--runs`` reused, the others trained through ``02_pretrain_reference.ipynb``), then
every point through ``03_train_mar.ipynb`` by the sweep machinery (``jobs`` worker processes of
``threads`` threads each; a point that stopped resumes from its last epoch checkpoint when the command
runs again), then the folder written by :func:`~workbench.experiments.summary.write_experiment` into
``out`` and the regenerated rows printed beside the committed ones. For a recipe of commands: the
commands, with ``{out}`` the folder to write.

Where things go under ``--runs`` (default ``$WORKBENCH_RUNS/reproduce``)::

    stage1/<preset>-<backbone>-seed<k>-<key>/pretrain/   one per stage-1 config, shared by every recipe
    <folder>/points/<row>-seed<k>-<hash>/mar/            the folder's stage-2 runs
    <folder>/results/                                    the regenerated folder (default --out)
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import ConfigError
from workbench.experiments.execute import repo_relative as relative
from workbench.experiments.execute import repo_root
from workbench.experiments.comparison import compare, format_comparison, read_runs
from workbench.experiments.plan import Step, folder_tag, format_plan, plan, runs_layout
from workbench.experiments.recipes import (STAGE1_NOTEBOOK, Recipe, load_recipe, only_points, only_rows,
                                           only_seeds, stage1_folder_name)

if TYPE_CHECKING:
    import pandas as pd

    from workbench.experiments.summary import FigureDrawer

log = logging.getLogger("workbench.experiments")

@dataclass
class Reproduced:
    """What :func:`reproduce` did: the plan, where the folder went, and the comparison with the committed one."""

    recipe: Recipe
    steps: list[Step]
    out: Path | None = None
    comparison: "pd.DataFrame | None" = None
    failed: list[str] = field(default_factory=list)


def default_runs() -> Path:
    from workbench.paths import runs_root

    return runs_root() / "reproduce"


def reproduce(folder: str | os.PathLike, *, runs: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
              jobs: int = 1, threads: int = 1, dry_run: bool = False, smoke: bool = False,
              rows: Sequence[str] | None = None, seeds: Sequence[int] | None = None, finished_only: bool = False,
              figures: "FigureDrawer | None" = None,
              echo: Callable[[str], None] = print) -> Reproduced:
    """Regenerate a results folder from its recipe (see the module docstring).

    Args:
        folder: the results folder (or its ``recipe.yaml``).
        runs: where the runs go (default ``$WORKBENCH_RUNS/reproduce``); what is there is reused.
        out: where the folder is written (default ``<runs>/<folder>/results``: the committed folder is
            overwritten only when named here).
        jobs: runs at once, each in its own process.
        threads: torch threads per run.
        dry_run: print the plan (and the expected CPU time) and run nothing.
        smoke: the same plan at smoke scale (synthetic data, 1 seed, 1 epoch): a minute, for tests.
        rows: only these rows of the table (their runs, then a folder of them alone); None: every row.
        seeds: only these seeds of each row (e.g. every row at seed 0 first, so that a paired table exists
            early; the folder then holds them alone); None: every seed.
        finished_only: run nothing; write the folder from the points finished under ``runs`` (while the
            others still run, or after a block was stopped); it is marked partial when some are missing.
        figures: draws the folder's figures from its tables (the command passes
            :func:`workbench.viz.experiment_figures`); None: none drawn.
        echo: where the plan and the comparison are printed.

    Raises:
        ConfigError, MissingFileError: a bad recipe (one line naming the file and the key).
    """
    recipe = load_recipe(folder)
    if smoke:
        if recipe.kind != "table":
            raise ConfigError(f"{recipe.path}: a recipe of commands has no smoke scale")
        recipe = recipe.smoke()
    if rows is not None:
        recipe = only_rows(recipe, rows)
    if seeds is not None:
        recipe = only_seeds(recipe, seeds)
    runs = Path(runs) if runs is not None else default_runs()
    if recipe.kind == "commands":
        return _run_commands(recipe, runs, out, dry_run, echo)
    steps = plan(recipe, runs)
    if finished_only:
        recipe, steps = only_finished(recipe, steps, runs)
    echo(format_plan(recipe, steps, runs))
    result = Reproduced(recipe, steps)
    if dry_run:
        return result
    stage1_dir, points_dir = runs_layout(runs, recipe)
    checkpoints = _stage1s(recipe, steps, stage1_dir, jobs, threads, result)
    folders = {(s.name, s.seed): s.folder for s in steps if s.kind == "point"}  # by name, or an adopted run's
    if not finished_only:  # (a sweep still running on the folder holds its lock: nothing here touches it)
        _points(recipe, checkpoints, folders, points_dir, jobs, threads, result)
    committed = read_runs(recipe.folder)
    result.out = Path(out) if out is not None else points_dir.parent / "results"
    _write(recipe, folders, points_dir, result.out, checkpoints, figures, echo)
    result.comparison = compare(recipe, committed, read_runs(result.out))
    echo(format_comparison(result.comparison, recipe))
    from workbench.runs import atomic_write_text

    # kept beside the runs: what the folder held before (the committed one) against what came back
    atomic_write_text(points_dir.parent / "comparison.csv", result.comparison.to_csv(index=False, float_format="%.3f"))
    echo(f"regenerated folder: {result.out}" + ("" if result.out.resolve() == recipe.folder.resolve() else
                                               f" (the committed one, {relative(recipe.folder)}, is untouched)"))
    if result.failed:
        echo(f"{len(result.failed)} run(s) failed: " + "; ".join(result.failed))
    return result


def only_finished(recipe: Recipe, steps: list[Step], runs: Path) -> tuple[Recipe, list[Step]]:
    """The recipe and plan cut to the points finished under ``runs`` (partial when some are left out).

    Raises:
        ConfigError: no point is finished there.
    """
    done = {(s.name, s.seed) for s in steps if s.kind == "point" and s.state == "done"}
    if not done:
        raise ConfigError(f"{recipe.path}: no point of it is finished under {runs}")
    missing = sum(1 for s in steps if s.kind == "point") - len(done)
    cut = replace(only_points(recipe, lambda label, seed: (label, seed) in done), partial=recipe.partial or missing > 0)
    return cut, [s for s in steps if s.kind != "point" or (s.name, s.seed) in done]


# ----------------------------------------------------------------------------- the steps


def _executor(jobs: int, threads: int):
    from workbench.experiments.executors import LocalProcesses

    return LocalProcesses(jobs, threads=threads)


def _stage1s(recipe: Recipe, steps: list[Step], stage1_dir: Path, jobs: int, threads: int,
             result: Reproduced) -> dict[str, Path]:
    """Every stage 1 the rows use, as a checkpoint: installed from the zoo, reused, or trained."""
    from workbench.experiments.sweep import sweep
    from workbench.runs import PointFolder
    from workbench.runs.zoo import Zoo

    out: dict[str, Path] = {}
    todo = []
    for step in (s for s in steps if s.kind == "stage1"):
        spec = recipe.stage1[step.name]
        run = PointFolder(step.folder).run("pretrain")
        if step.state == "zoo":
            out[step.name] = Zoo().install(spec.zoo, run.path)
            log.info("stage 1 %r: zoo entry %s installed in %s", step.name, spec.zoo, run.path)
        elif step.state == "done":
            out[step.name] = run.checkpoint_path
        else:
            todo.append((step, spec))
    if todo:
        points = [{"preset": s.config.get("preset", "demo"),
                   "extra": {k: v for k, v in s.config.items() if k != "preset"} | {"threads": threads}}
                  for _, s in todo]
        df = sweep(repo_root() / STAGE1_NOTEBOOK, points, stage1_dir, names=[st.folder.name for st, _ in todo],
                   executor=_executor(jobs, threads), progress=False)
        for (step, _), state, error in zip(todo, df["state"], df.get("error", [None] * len(df))):
            run = PointFolder(step.folder).run("pretrain")
            if state == "done" and run.is_finished:
                out[step.name] = run.checkpoint_path
            else:
                result.failed.append(f"stage 1 {step.name!r}: {error}")
    missing = [r.label for r in recipe.rows if r.stage1 and r.stage1 not in out]
    if missing:
        raise ConfigError(f"{recipe.path}: no stage 1 for the rows {missing} ({'; '.join(result.failed)})")
    return out


def _point_params(point, checkpoint: Path | None, threads: int) -> dict:
    fields = dict(point.fields)
    preset = fields.pop("preset", "demo")
    seed = fields.pop("seed")
    params = {"preset": preset, "seed": seed, "extra": fields | {"threads": threads}}
    if checkpoint is not None:
        params["init_checkpoint"] = str(checkpoint)
    else:
        params["reference_pretraining"] = False
    return params


def _points(recipe: Recipe, checkpoints: dict[str, Path], folders: dict[tuple, Path], points_dir: Path, jobs: int,
            threads: int, result: Reproduced) -> None:
    from workbench.experiments.sweep import sweep

    points = recipe.points()
    params = [_point_params(p, checkpoints.get(p.stage1) if p.stage1 else None, threads) for p in points]
    df = sweep(repo_root() / recipe.notebook, params, points_dir, names=[folders[p.row, p.seed].name for p in points],
               executor=_executor(jobs, threads), progress=sys.stderr.isatty())
    for p, state, error in zip(points, df["state"], df.get("error", [None] * len(df))):
        if state != "done":
            result.failed.append(f"{p.row} seed {p.seed}: {error}")


def _write(recipe: Recipe, folders: dict[tuple, Path], points_dir: Path, out: Path, checkpoints: dict[str, Path],
           figures: "FigureDrawer | None", echo: Callable[[str], None] = print) -> None:
    """The folder: tables, figures and README by ``write_experiment``, the recipe and notes beside them,
    then the recipe's ``after`` commands."""
    from workbench.experiments.catalog import EXPERIMENTS
    from workbench.experiments.summary import write_experiment
    from workbench.runs import atomic_write_text

    exp = EXPERIMENTS[recipe.experiment]
    if recipe.smoke_scale:  # synthetic data, random init, one epoch: every run is its row's
        exp = replace(exp, base={}, at_epoch=1 if exp.at_epoch else None)
    out.mkdir(parents=True, exist_ok=True)
    same = out.resolve() == recipe.folder.resolve()
    if not same:
        shutil.copyfile(recipe.path, out / recipe.path.name)
    # at smoke scale the notes (written about the real table) are left out; for some rows or seeds only
    # (a partial folder) they are kept where every number they quote is in it, else left out with a word
    notes = recipe.folder / recipe.notes if recipe.notes and not recipe.smoke_scale else None
    if notes is not None and not same:
        shutil.copyfile(notes, out / notes.name)
    # which run folder is which point, for the recipe's commands that read every run (scripts/camera_clusters.py)
    import csv
    import io

    index = io.StringIO()
    writer = csv.writer(index, lineterminator="\n")
    writer.writerows([("row", "seed", "run"), *((p.row, p.seed, folders[p.row, p.seed] / "mar") for p in recipe.points())])
    atomic_write_text(points_dir.parent / "points.csv", index.getvalue())
    for line in recipe.after:  # the folder's other files first: the notes may read numbers from them
        _shell(line, recipe, out, {n: checkpoints[n].parent for n in checkpoints}, folders, points_dir.parent.parent)
    reference = None
    if recipe.reference == "stage1":
        reference = stage1_reference({n: checkpoints[n].parent for n in checkpoints}, out / "stage1.csv")
    elif recipe.reference:
        reference = recipe.folder / recipe.reference
    labels = {folders[p.row, p.seed].name: p.row for p in recipe.points()} if exp.rows else None
    command = f"python -m workbench reproduce {relative(recipe.folder)}" + (" --smoke" if recipe.smoke_scale else "")

    def write(notes: Path | None) -> None:
        write_experiment(exp, [points_dir], out, reference=reference, notes=notes, labels=labels,
                         command=f"{command}` from its `recipe.yaml", figures=figures)

    try:
        write(notes)
    except ConfigError as error:
        if not (recipe.partial and notes is not None and "notes placeholder" in str(error)):
            raise
        echo(f"the notes are left out of this partial folder: {error}")
        if not same:
            (out / notes.name).unlink(missing_ok=True)
        write(None)
    for notebook in () if recipe.smoke_scale else recipe.render:  # the notebooks that open on it, as offline HTML
        from workbench.experiments.render import render_notebook

        try:
            render_notebook(repo_root() / notebook, out / f"{Path(notebook).stem}.html", {"results_dir": relative(out)})
        except Exception as error:  # noqa: BLE001 - a partial table a notebook cannot show: say so, keep the folder
            if not recipe.partial:
                raise
            echo(f"{notebook} not rendered on this partial folder: {str(error).splitlines()[0] if str(error) else error!r}")


def stage1_reference(stage1: dict[str, Path], path: Path) -> Path:
    """The stage-1 runs' direct-transfer rows as a results CSV (a table's reference rows)."""
    from workbench.experiments.report import results_csv, results_rows
    from workbench.runs import atomic_write_text

    rows = [(f"stage 1 ({name}): {title}" if len(stage1) > 1 else title, metrics)
            for name, run in stage1.items() for title, metrics in results_rows(run)]
    atomic_write_text(path, results_csv(rows))
    return path


def _substitute(line: str, recipe: Recipe, out: Path, stage1: dict[str, Path], folders: dict[tuple, Path],
                runs: Path) -> str:
    """A recipe's command line with its placeholders filled: ``{python}``, ``{out}`` (the folder being
    written), ``{folder}`` (the committed folder), ``{runs}`` (this recipe's runs), ``{stage1:NAME}`` (a
    stage-1 run folder), ``{point:ROW:SEED}`` (a point's stage-2 run folder), ``{zoo:NAME}`` (a zoo entry,
    installed as a finished stage-1 run folder), ``{runs_root}`` (the ``--runs`` folder itself)."""
    import re
    import shlex

    from workbench.config import Config
    from workbench.runs.zoo import Zoo

    def stage1_of(match: "re.Match[str]") -> str:
        name = match.group(1)
        if name not in stage1:
            raise ConfigError(f"{recipe.path}: {line!r}: no stage 1 {name!r}")
        return shlex.quote(str(stage1[name]))

    def point_of(match: "re.Match[str]") -> str:
        row, seed = match.group(1), int(match.group(2))
        if (row, seed) not in folders:
            raise ConfigError(f"{recipe.path}: {line!r}: no point of row {row!r} at seed {seed}")
        return shlex.quote(str(folders[row, seed] / "mar"))

    def zoo_of(match: "re.Match[str]") -> str:
        entry = Zoo().entry(match.group(1))
        folder = runs / "stage1" / stage1_folder_name(Config.from_dict(entry.config)) / "pretrain"
        return shlex.quote(str(Zoo().install(entry.name, folder).parent))

    line = re.sub(r"\{stage1:([^}]+)\}", stage1_of, line)
    line = re.sub(r"\{point:([^}]+):(\d+)\}", point_of, line)
    line = re.sub(r"\{zoo:([^}]+)\}", zoo_of, line)
    return (line.replace("{python}", shlex.quote(sys.executable)).replace("{out}", shlex.quote(str(out)))
            .replace("{folder}", shlex.quote(str(recipe.folder)))
            .replace("{runs_root}", shlex.quote(str(runs)))
            .replace("{runs}", shlex.quote(str(runs / folder_tag(recipe))))
            )


def _shell(line: str, recipe: Recipe, out: Path, stage1: dict[str, Path], folders: dict[tuple, Path],
           runs: Path) -> None:
    from workbench.paths import shared_root

    command = _substitute(line, recipe, out, stage1, folders, runs)
    env = dict(os.environ)
    shared = shared_root()
    if shared is not None:
        env.setdefault("WORKBENCH_SHARED", str(shared))
    log.info("running %s", command)
    done = subprocess.run(command, shell=True, cwd=repo_root(), env=env)
    if done.returncode != 0:
        raise ConfigError(f"{recipe.path}: {line!r} exited with {done.returncode}")


def _run_commands(recipe: Recipe, runs: Path, out: str | os.PathLike | None, dry_run: bool,
                  echo: Callable[[str], None]) -> Reproduced:
    target = Path(out) if out is not None else runs / folder_tag(recipe) / "results"
    echo(f"{recipe.folder}: {recipe.description or 'commands'}")
    for line in recipe.commands:
        echo(f"  $ {line}")
    echo(f"writes {', '.join(recipe.outputs) or 'the folder'} into {target}")
    result = Reproduced(recipe, [], out=target)
    if dry_run:
        return result
    target.mkdir(parents=True, exist_ok=True)
    if target.resolve() != recipe.folder.resolve():
        shutil.copyfile(recipe.path, target / recipe.path.name)
    for line in recipe.commands:
        _shell(line, recipe, target, {}, {}, runs)
    echo(f"regenerated folder: {target}")
    return result
