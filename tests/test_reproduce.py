"""Recipes, ``workbench reproduce`` and the zoo: every committed folder's recipe is valid and plans the runs
its committed table holds; two recipes run end to end at smoke scale; a zoo file is checked by sha256."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from workbench.config import RUN_ONLY_FIELDS, computation_key, from_params, get_preset, parse_value
from workbench.errors import CheckpointError, ConfigError, MissingFileError
from workbench.experiments.plan import plan
from workbench.experiments.recipes import find_recipes, load_recipe
from workbench.experiments.reproduce import reproduce
from workbench.runs import RunFolder
from workbench.runs.zoo import Zoo

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
RECIPES = find_recipes(RESULTS)


def _folders_without_recipe() -> list[str]:
    holders = {p.parent for p in RECIPES}
    out = []
    for folder in [RESULTS, *sorted(p for p in RESULTS.rglob("*") if p.is_dir())]:
        files = [f for f in folder.iterdir() if f.is_file() and f.name != "README.md"]
        if files and folder not in holders:
            out.append(str(folder.relative_to(REPO)))
    return out


def test_every_results_folder_has_a_recipe() -> None:
    assert not _folders_without_recipe()


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.parent.relative_to(RESULTS)) for p in RECIPES])
def test_every_committed_recipe_plans_its_runs(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    if recipe.kind == "commands":
        assert recipe.commands
        reproduce(path.parent, runs=tmp_path, dry_run=True, echo=lambda s: None)
        return
    steps = plan(recipe, tmp_path)
    points = [s for s in steps if s.kind == "point"]
    assert len(points) == len(recipe.points()) and all(s.state == "todo" for s in points)
    assert {s.name for s in steps if s.kind == "stage1"} == {r.stage1 for r in recipe.rows if r.stage1}
    lines = []
    reproduce(path.parent, runs=tmp_path, dry_run=True, echo=lines.append)
    assert "expected CPU time" in lines[-1] and "?" not in lines[-1].split("expected CPU time")[1][:8]


def _plain(value):
    if isinstance(value, (list, tuple)):
        value = "x".join(map(str, value)) if value and not isinstance(value[0], str) else "+".join(value)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@pytest.mark.parametrize("path", [p for p in RECIPES if (p.parent / "runs.csv").is_file() and load_recipe(p).kind == "table"],
                         ids=lambda p: str(p.parent.relative_to(RESULTS)))
def test_a_recipe_plans_the_committed_runs_settings(path: Path) -> None:
    """Each committed run of a row is one of the recipe's points of that row: same seed, same value in every
    config column of runs.csv (the epochs a table reads excepted)."""
    recipe = load_recipe(path)
    runs = pd.read_csv(path.parent / "runs.csv")
    points = recipe.points()
    for _, run in runs.iterrows():
        label = run["row"] if "row" in run else None
        candidates = [p for p in points if (label is None or p.row == label) and p.seed == int(run["seed"])]
        assert candidates, f"{path}: no point for {label!r} seed {run['seed']}"
        mismatches = []
        for point in candidates:
            flat = point.cfg().flat()
            diff = [k for k, v in flat.items() if k in run.index and k not in RUN_ONLY_FIELDS | {"epochs", "eval_every"}
                    and _plain(v) != _plain(run[k])]
            if not diff:
                break
            mismatches.append(diff)
        else:
            pytest.fail(f"{path}: row {label!r} seed {run['seed']}: differs in {mismatches}")


# ----------------------------------------------------------------------------- bad recipes


def _recipe(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "results" / "x"
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(text)
    return folder


GOOD = """
experiment: loss_ablation
stage1:
  s: {config: {preset: smoke, seed: 0}}
base: {preset: smoke, epochs: 1}
seeds: [0, 1]
rows:
  full: {}
  w/o CML: {use_cml: false}
"""


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("seeds:", "sedes:"), "unknown key 'sedes'; did you mean 'seeds'?"),
    (GOOD.replace("use_cml", "use_cmll"), "rows.w/o CML: unknown config field 'use_cmll'; did you mean 'use_cml'?"),
    (GOOD.replace("epochs: 1", "epochz: 1"), "base: unknown config field 'epochz'; did you mean 'epochs'?"),
    (GOOD.replace("  full: {}", "  fulll: {}"), "loss_ablation has no row 'fulll'; did you mean 'full'?"),
    (GOOD.replace("experiment: loss_ablation", "experiment: loss_ablaton"), "did you mean 'loss_ablation'?"),
    (GOOD.replace("  full: {}", "  full: {stage1: t}"), "stage1: 't' is not a stage 1 of the recipe"),
    (GOOD.replace("epochs: 1", "epochs: 0"), "epochs = 0 is out of range"),
    (GOOD.replace("{preset: smoke, seed: 0}", "{preset: smoke, seed: 0, lr: -1}"), "stage1.s.config: lr = -1"),
    (GOOD.replace("seeds: [0, 1]", "seeds: zero"), "seeds: a list of whole numbers"),
])
def test_a_bad_recipe_is_one_error_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    folder = _recipe(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_recipe(folder)
    assert message in str(err.value) and str(folder / "recipe.yaml") in str(err.value)


def test_a_missing_recipe_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no recipe at"):
        load_recipe(tmp_path)


def test_set_values_read_as_yaml_with_the_same_suggestion() -> None:
    assert parse_value("1e-3") == 0.001 and parse_value("false") is False and parse_value("12,17") == "12,17"
    cfg = from_params({"preset": "smoke", "lr": parse_value("1e-3"), "milestones": parse_value("[3, 4]"),
                       "use_cml": parse_value("no")})
    assert cfg.train.lr == 0.001 and cfg.train.milestones == (3, 4) and cfg.settings.use_cml is False
    with pytest.raises(ConfigError, match="unknown config field 'lamda_cml'; did you mean 'lambda_cml'"):
        from_params({"lamda_cml": 0})


def test_the_computation_key_follows_what_stage_1_computes() -> None:
    cpu = get_preset("cpu")
    assert computation_key(cpu) == computation_key(from_params({"preset": "cpu", "epochs": 20, "lr": 1.0,
                                                                "threads": 1, "progress": False}))
    assert computation_key(cpu) != computation_key(from_params({"preset": "cpu", "seed": 1}))
    assert computation_key(cpu) != computation_key(from_params({"preset": "cpu", "embed_dim": 2048}))
    assert computation_key(cpu, "mar") != computation_key(from_params({"preset": "cpu", "epochs": 20}), "mar")


# ----------------------------------------------------------------------------- end to end at smoke scale


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> Path:
    """``reproduce --smoke`` of Table 4 and of Table 3 at the paper's schedule, into one runs folder."""
    from workbench.viz import experiment_figures

    runs = tmp_path_factory.mktemp("reproduce")
    for folder in ("results/method_comparison", "results/paper_schedule/loss_ablation"):
        result = reproduce(REPO / folder, runs=runs, smoke=True, threads=1, echo=lambda s: None,
                           figures=experiment_figures)
        assert not result.failed
    return runs


@pytest.mark.slow
def test_two_recipes_run_end_to_end_at_smoke_scale_and_share_their_stage_1(smoke_runs: Path) -> None:
    stage1 = [p for p in (smoke_runs / "stage1").iterdir() if p.is_dir()]
    assert len(stage1) == 1  # both recipes need stage 1 {preset: cpu, seed: 0}: at smoke scale one folder
    assert RunFolder(stage1[0] / "pretrain").is_finished
    for tag, rows, experiment in (("results_method_comparison-smoke", len(load_recipe(RESULTS / "method_comparison").rows),
                                   "method_comparison"),
                                  ("results_paper_schedule_loss_ablation-smoke", 4, "paper_schedule_loss_ablation")):
        out = smoke_runs / tag / "results"
        runs = pd.read_csv(out / "runs.csv")
        assert runs["row"].nunique() == rows and len(runs) == rows  # one seed at smoke scale
        assert json.loads((out / "experiment.json").read_text())["experiment"] == experiment
        assert (out / "recipe.yaml").is_file() and (out / "summary.csv").is_file()
        readme = (out / "README.md").read_text()
        assert "python -m workbench reproduce results/" in readme and str(smoke_runs) not in readme
        assert f"]({experiment}.png)" in readme and (out / f"{experiment}.png").is_file()  # drawn by viz
    # the recipe's commands that read every run: the index of points, and the cameras of each model's clusters
    index = pd.read_csv(smoke_runs / "results_method_comparison-smoke" / "points.csv")
    assert len(index) == len(load_recipe(RESULTS / "method_comparison").rows) and index["run"].map(
        lambda p: (Path(p) / "checkpoint.pt").is_file()).all()
    import runpy

    stage1 = next(p for p in (smoke_runs / "stage1").iterdir() if p.is_dir()) / "pretrain"
    out = smoke_runs / "results_method_comparison-smoke" / "camera_clusters.csv"  # recipe's after (none at smoke)
    script = runpy.run_path(str(REPO / "scripts" / "camera_clusters.py"))
    assert script["main"](["--points", str(smoke_runs / "results_method_comparison-smoke" / "points.csv"),
                           "--stage1", str(stage1), "--out", str(out)]) == 0
    cameras = pd.read_csv(out)
    assert len(cameras) == 2 * (1 + len(index)) and set(cameras["camera_norm"]) == {True, False}
    assert {"recall_same_cam", "recall_cross_cam", "cross_share"} <= set(cameras)


@pytest.mark.slow
def test_reproduce_again_reuses_every_run_and_compares_with_the_committed_rows(smoke_runs: Path) -> None:
    lines: list[str] = []
    result = reproduce(REPO / "results/method_comparison", runs=smoke_runs, smoke=True, echo=lines.append)
    assert all(s.state == "done" for s in result.steps)
    runs = 1 + len(load_recipe(RESULTS / "method_comparison").rows)  # the stage 1 and one seed of each row
    assert f"0 of {runs} runs to do" in "\n".join(lines)
    table = result.comparison.set_index("row")
    committed = pd.read_csv(REPO / "results/method_comparison/runs.csv")
    mar = committed[committed["row"] == "MAR (soft multilabels)"]
    assert table.loc["MAR (soft multilabels)", "mAP"] == pytest.approx(100 * mar["mAP"].mean())
    assert table.loc["MAR (soft multilabels)", "runs now"] == 1
    text = "\n".join(lines)
    assert "| MAR (soft multilabels) |" in text and "Δ mAP" in text
    kept = pd.read_csv(smoke_runs / "results_method_comparison-smoke" / "comparison.csv")  # outlives the terminal
    assert kept.set_index("row").loc["MAR (soft multilabels)", "mAP"] == pytest.approx(100 * mar["mAP"].mean(), abs=1e-3)


# ----------------------------------------------------------------------------- the zoo


def test_the_zoo_checks_sha256_and_installs_a_finished_stage_1(smoke_runs: Path, tmp_path: Path) -> None:
    stage1 = next(p for p in (smoke_runs / "stage1").iterdir() if p.is_dir()) / "pretrain"
    zoo = Zoo(tmp_path / "zoo")
    entry = zoo.add(stage1, "smoke-s1", recipe="test")
    assert entry.key == computation_key(RunFolder(stage1).config()) and entry.bytes < 25e6
    assert zoo.verify() == [("smoke-s1", "ok")]
    with pytest.raises(ConfigError, match="exists"):
        zoo.add(stage1, "smoke-s1")
    installed = zoo.install("smoke-s1", tmp_path / "runs" / "pretrain")
    folder = RunFolder(installed.parent)
    assert folder.is_finished and folder.metrics()["zoo"] == "smoke-s1"
    assert folder.record().stage == "pretrain" and len(folder.history()) == len(RunFolder(stage1).history())
    data = bytearray((zoo.root / entry.file).read_bytes())
    data[-100] ^= 0xFF
    (zoo.root / entry.file).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.path("smoke-s1")
    (zoo.root / entry.file).unlink()
    with pytest.raises(MissingFileError, match="is missing"):
        zoo.path("smoke-s1")
    with pytest.raises(MissingFileError, match="did you mean 'smoke-s1'"):
        zoo.entry("smoke-s2")


def test_the_committed_zoo_is_intact() -> None:
    zoo = Zoo(REPO / "zoo")
    entries = zoo.entries()
    for name, state in zoo.verify():
        assert state == "ok", f"{name}: {state}"
    for entry in entries.values():
        assert entry.bytes < 25e6 and entry.key == computation_key(
            __import__("workbench.config", fromlist=["Config"]).Config.from_dict(entry.config))
    assert len(entries) <= 3


def test_rows_picks_a_part_of_the_plan(tmp_path: Path) -> None:
    lines: list[str] = []
    result = reproduce(RESULTS / "method_comparison", runs=tmp_path, dry_run=True, echo=lines.append,
                       rows=["supervised upper bound (true identities)"])
    points = [s for s in result.steps if s.kind == "point"]
    assert {s.name for s in points} == {"supervised upper bound (true identities)"} and len(points) == 3
    with pytest.raises(ConfigError, match="did you mean 'supervised upper bound"):
        reproduce(RESULTS / "method_comparison", runs=tmp_path, dry_run=True, echo=lines.append,
                  rows=["supervised upper bund"])


def test_seeds_picks_every_row_at_some_seeds(tmp_path: Path) -> None:
    lines: list[str] = []
    result = reproduce(RESULTS / "paper_schedule" / "loss_ablation", runs=tmp_path, dry_run=True, echo=lines.append,
                       seeds=[0])
    points = [s for s in result.steps if s.kind == "point"]
    assert {s.seed for s in points} == {0} and len(points) == len(result.recipe.rows) == 4
    assert result.recipe.partial
    with pytest.raises(ConfigError, match=r"no row runs seed\(s\) \[7\]"):
        reproduce(RESULTS / "paper_schedule" / "loss_ablation", runs=tmp_path, dry_run=True, echo=lines.append,
                  seeds=[7])


def test_finished_only_runs_nothing_and_says_when_nothing_is_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no point of it is finished under"):
        reproduce(RESULTS / "paper_schedule" / "loss_ablation", runs=tmp_path, dry_run=True, echo=lambda s: None,
                  finished_only=True)


@pytest.mark.slow
def test_finished_only_writes_the_finished_points_of_a_plan(smoke_runs: Path, tmp_path: Path) -> None:
    from workbench.experiments.reproduce import only_finished

    recipe = load_recipe(RESULTS / "paper_schedule" / "loss_ablation").smoke()
    steps = plan(recipe, smoke_runs)
    assert all(s.state == "done" for s in steps if s.kind == "point")
    cut, kept = only_finished(recipe, steps, smoke_runs)
    assert not cut.partial and len(kept) == len(steps)
    first = next(s for s in steps if s.kind == "point")
    steps = [replace(s, state="todo") if s is first else s for s in steps]  # as if its run were still going
    cut, kept = only_finished(recipe, steps, smoke_runs)
    assert cut.partial and first not in kept and len(cut.points()) == len(recipe.points()) - 1
    lines: list[str] = []
    result = reproduce(RESULTS / "paper_schedule" / "loss_ablation", runs=smoke_runs, smoke=True, finished_only=True,
                       out=tmp_path / "out", echo=lines.append)
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == len(recipe.points()) and not result.failed
