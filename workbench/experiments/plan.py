"""The plan of a recipe (:mod:`.recipes`): its stage 1s and points, where each lives under ``--runs``, which
already exist (reused by name, or by computing the same thing under another name), and what the others
will cost from the committed runs' own timings; ``reproduce --dry-run`` prints it, and
:func:`recipes_markdown` lists every recipe with its command and CPU time (``results/README.md``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import ConfigError
from workbench.experiments.folder import ResultsFolder
from workbench.experiments.recipes import Recipe, Stage1, find_recipes, load_recipe, slug

log = logging.getLogger("workbench.experiments")


@dataclass
class Step:
    """One run of a plan: a stage 1 or a point, where it lives and what it will cost."""

    kind: str                    # "stage1" | "point"
    name: str                    # the stage 1's name or the point's row
    folder: Path                 # its sweep-point folder under --runs
    state: str                   # "zoo" | "done" | "partial" | "todo"
    epochs_done: int = 0
    epochs: int = 0
    seconds: float | None = None  # expected CPU seconds (from the committed runs' own timings)
    seed: int | None = None
    source: str = ""             # the zoo entry, or "train"


def folder_tag(recipe: Recipe) -> str:
    """The recipe's folder under ``--runs`` (``results_method_comparison``; ``-smoke`` at smoke scale)."""
    rel = recipe.folder.resolve()
    try:
        from workbench.experiments.execute import repo_root

        rel = rel.relative_to(repo_root().resolve())
    except ValueError:
        pass
    return slug(str(rel).replace(os.sep, "_")) + ("-smoke" if recipe.smoke_scale else "")


def runs_layout(runs: Path, recipe: Recipe) -> tuple[Path, Path]:
    """``(stage-1 folder, points folder)`` of a recipe under ``--runs``: stage 1s are shared by every recipe
    (found by their computation key), points belong to the folder they fill."""
    return runs / "stage1", runs / folder_tag(recipe) / "points"


def _committed_costs(recipe: Recipe) -> dict[str, float]:
    """Per row of the committed folder: median seconds per stage-2 epoch, from its ``runs.csv``."""
    import pandas as pd

    runs = ResultsFolder(recipe.folder).runs()
    if "wall_seconds" not in runs:
        return {}
    epochs = pd.to_numeric(runs["trained_epochs"], errors="coerce").fillna(runs["epochs"]) \
        if "trained_epochs" in runs else pd.to_numeric(runs["epochs"], errors="coerce")
    per_epoch = pd.to_numeric(runs["wall_seconds"], errors="coerce") / epochs
    out = per_epoch.groupby(runs["row"]).median().dropna().to_dict() if "row" in runs else {}
    if per_epoch.notna().any():
        out["*"] = float(per_epoch.median())  # a row the folder has no run of: the median of the others
    return out


def _stage1_cost(recipe: Recipe, stage1: Stage1) -> float | None:
    if not stage1.history or not (recipe.folder / stage1.history).is_file():
        return None
    import pandas as pd

    h = pd.read_csv(recipe.folder / stage1.history)
    return float(pd.to_numeric(h.get("seconds"), errors="coerce").sum()) * 1.15  # + the evaluations


def plan(recipe: Recipe, runs: str | os.PathLike) -> list[Step]:
    """The stage 1s (first) and points of a recipe, with what already exists under ``runs``."""
    from workbench.runs import PointFolder
    from workbench.runs.zoo import Zoo

    runs = Path(runs)
    stage1_dir, points_dir = runs_layout(runs, recipe)
    steps: list[Step] = []
    zoo = Zoo()
    for s in recipe.used_stage1():
        folder = stage1_dir / s.folder_name
        if not folder.is_dir():  # made under another name (an older code's key): the same computation is reused
            folder = _same_run(stage1_dir, "pretrain", s.cfg()) or folder
        run = PointFolder(folder).run("pretrain")
        epochs = s.cfg().train.pretrain_epochs
        if run.is_finished:
            state = "done"
        elif s.zoo and not recipe.smoke_scale and s.zoo in zoo.entries():
            entry = zoo.entry(s.zoo)
            if entry.key != s.key:
                raise ConfigError(f"{recipe.path}: stage1.{s.name}: zoo entry {s.zoo!r} was made with another "
                                  f"config (key {entry.key}, this recipe's {s.key})")
            state = "zoo"
        else:
            if s.zoo and not recipe.smoke_scale:
                log.warning("%s: stage1.%s: no zoo entry %r in %s; it will be trained", recipe.path, s.name, s.zoo,
                            zoo.manifest_path)
            state = "partial" if run.history() else "todo"
        cost = None if state in ("zoo", "done") or recipe.smoke_scale else _stage1_cost(recipe, s)
        steps.append(Step("stage1", s.name, folder, state, len(run.history()), epochs, cost, source=s.zoo or "train"))
    per_epoch = {} if recipe.smoke_scale else _committed_costs(recipe)
    fallback = per_epoch.get("*")
    stage1_cfg = {s.name: s.cfg() for s in recipe.used_stage1()}
    for p in recipe.points():
        folder = points_dir / p.name
        if not folder.is_dir():
            folder = _same_run(points_dir, "mar", p.cfg(), stage1_cfg.get(p.stage1) if p.stage1 else None) or folder
        run = PointFolder(folder).run("mar")
        done = (PointFolder(folder).status() or {}).get("state") == "done"
        state = "done" if done else ("partial" if run.history() else "todo")
        rate = per_epoch.get(p.row, fallback)
        remaining = p.epochs - len(run.history())
        cost = None if done or rate is None else rate * max(remaining, 0)
        steps.append(Step("point", p.row, folder, state, len(run.history()), p.epochs, cost, p.seed))
    return steps


def _same_run(root: Path, stage: str, cfg, start=None) -> Path | None:
    """A finished point under ``root`` that computed what ``cfg`` computes (its ``config.json`` differs in no
    field that changes the result) from a stage 1 of config ``start`` (stage 2; None: no stage 1): a run
    named by an older version of the naming, or by another recipe's spelling of the same settings."""
    from workbench.config import config_differences
    from workbench.errors import WorkbenchError
    from workbench.runs import PointFolder, RunFolder

    if not root.is_dir():
        return None
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        point = PointFolder(folder)
        run = point.run(stage)
        status = point.status()  # (a zoo stage 1 installed by reproduce has none)
        if (status is not None and status.get("state") != "done") or not run.is_finished:
            continue
        try:
            if config_differences(run.config(), cfg, stage):
                continue
            if stage == "mar":
                started = run.record().start_checkpoint
                if (started is None) != (start is None):
                    continue
                if started is not None and config_differences(RunFolder(Path(started).parent).config(), start,
                                                              "pretrain"):
                    continue
        except (WorkbenchError, OSError, ValueError):
            continue
        return folder
    return None


def format_plan(recipe: Recipe, steps: Sequence[Step], runs: Path) -> str:
    """The dry-run's text: one line per stage 1 and point, then the expected CPU time."""
    def hours(s: float | None) -> str:
        return "?" if s is None else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min")

    lines = [f"{recipe.folder}: {recipe.experiment}" + (" (smoke scale)" if recipe.smoke_scale else ""),
             f"runs under {runs}"]
    for s in steps:
        what = (f"stage 1 {s.name!r}" if s.kind == "stage1" else f"point {s.name!r} seed {s.seed}")
        state = {"zoo": f"from the zoo ({s.source})", "done": "done (reused)",
                 "partial": f"resumes after epoch {s.epochs_done}/{s.epochs}", "todo": f"to run ({s.epochs} epochs)"}
        cost = "" if s.state in ("zoo", "done") or recipe.smoke_scale else hours(s.seconds)
        lines.append(f"  {what:<58} {state[s.state]:<34} {cost}".rstrip())
    todo = [s for s in steps if s.state in ("todo", "partial")]
    known = [s.seconds for s in todo if s.seconds is not None]
    unknown = len(todo) - len(known)
    if recipe.smoke_scale:
        lines.append(f"{len(todo)} of {len(steps)} runs to do at smoke scale (seconds each)")
    else:
        lines.append(f"{len(todo)} of {len(steps)} runs to do; expected CPU time {hours(sum(known))} at one thread a "
                     f"run (from the committed runs' own timings{f'; {unknown} without one' if unknown else ''})")
    return "\n".join(lines)


def recipes_markdown(root: str | os.PathLike) -> str:
    """Every recipe under ``root`` as a markdown table: the folder, what it holds, the command that
    regenerates it, and the CPU time that command expects on a fresh clone (the zoo's stage 1s count as
    there; from the committed runs' own timings, one thread a run)."""
    import tempfile

    from workbench.experiments.execute import repo_root

    root = Path(root)
    lines = ["| folder | what | regenerate it | expected CPU time |", "| --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as empty:
        for path in find_recipes(root):
            recipe = load_recipe(path)
            try:
                rel = path.parent.resolve().relative_to(repo_root().resolve()).as_posix()
            except ValueError:
                rel = path.parent.as_posix()
            link = path.parent.relative_to(root).as_posix() + "/"
            if recipe.kind == "table":
                steps = [s for s in plan(recipe, Path(empty)) if s.state in ("todo", "partial")]
                seconds = sum(s.seconds or 0.0 for s in steps)
                missing = sum(s.seconds is None for s in steps)
                cost = (f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min") + \
                    (f" (+{missing} run(s) without a timing)" if missing else "")
                what = f"{recipe.description or recipe.experiment} ({len(recipe.points())} runs)"
            else:
                cost, what = "not estimated (commands)", recipe.description or "commands"
            lines.append(f"| [`{link}`]({link}) | {what} | `python -m workbench reproduce {rel}` | {cost} |")
    return "\n".join(lines)
