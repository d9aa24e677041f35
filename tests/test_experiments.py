"""Experiments: papermill runs, sweeps (skip, failure, retry, parallel, Ray), grids, collect, paper tables, CLI.

Everything runs a tiny notebook written to a temporary folder (no training): its parameters cell
declares ``value``, ``fail_flag``, ``counter`` and ``out_dir``; its body appends a line to the
counter file (how many times it ran), raises while ``fail_flag`` exists, and writes
``metrics.json``.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from workbench import experiments as ex

BODY = '''
import json, pathlib
if counter:
    with open(counter, "a") as fh:
        fh.write(f"{value}\\n")
if fail_flag and pathlib.Path(fail_flag).exists():
    raise RuntimeError(f"boom at value={value}")
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "metrics.json").write_text(json.dumps(
    {"rank1": value / 10, "mAP": value / 20, "initial": {"rank1": 0.0}, "value": 99}))
print("finished", value)
'''


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A notebook with a parameters cell, a markdown cell and a body that records how often it ran."""
    nb = new_notebook(cells=[
        new_markdown_cell("# tiny"),
        new_code_cell('value = 1\nfail_flag = None\ncounter = None\nout_dir = None', metadata={"tags": ["parameters"]}),
        new_code_cell(BODY.strip()),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb" / "tiny.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def runs_of(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


# ----------------------------------------------------------------------------- run_notebook

def test_run_notebook_injects_params_and_out_dir(tiny: Path, tmp_path: Path) -> None:
    out = ex.run_notebook(tiny, {"value": 3}, tmp_path / "run")
    assert out == (tmp_path / "run" / "tiny.ipynb").resolve()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["rank1"] == pytest.approx(0.3)
    executed = nbformat.read(out, as_version=4)
    assert executed.metadata.papermill.parameters["value"] == 3
    assert executed.metadata.papermill.parameters["out_dir"] == str((tmp_path / "run").resolve())
    assert "finished 3" in executed.cells[-1].outputs[0]["text"]
    assert ex.notebook_parameters(tiny) == {"value": "1", "fail_flag": "None", "counter": "None", "out_dir": "None"}


def test_run_notebook_rejects_undeclared_parameter(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"declares no parameter 'valeu'; did you mean 'value'\?"):
        ex.run_notebook(tiny, {"valeu": 3}, tmp_path / "run")
    with pytest.raises(ValueError, match=r"declares no parameter 'zzz'; its parameters: value, fail_flag"):
        ex.run_notebook(tiny, {"zzz": 3}, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        ex.run_notebook(tmp_path / "missing.ipynb", {}, tmp_path / "run")


# ----------------------------------------------------------------------------- sweeps

def test_sweep_runs_each_point_once_and_skips_done(tiny: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    out = tmp_path / "sweep"
    df = ex.sweep(tiny, {"value": [1, 2]}, out, base_params={"counter": str(counter)}, progress=False)
    assert list(df["value"]) == [1, 2] and list(df["state"]) == ["done", "done"]
    assert df["rank1"].tolist() == pytest.approx([0.1, 0.2])
    assert df["initial_rank1"].tolist() == [0.0, 0.0]          # nested metrics flattened
    assert df["metric_value"].tolist() == [99, 99]              # a metric named like a parameter
    assert sorted(runs_of(counter)) == ["1", "2"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/tiny.ipynb")}
    assert len(mtimes) == 2

    again = ex.sweep(tiny, {"value": [1, 2]}, out, base_params={"counter": str(counter)}, progress=False)
    assert sorted(runs_of(counter)) == ["1", "2"]               # nothing executed again
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/tiny.ipynb")} == mtimes
    pd.testing.assert_frame_equal(again.drop(columns=["seconds"]), df.drop(columns=["seconds"]))
    status = json.loads((Path(df["path"][0]) / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 1 and status["params"]["value"] == 1
    assert status["started"] and status["finished"] and status["seconds"] > 0


def test_failed_point_is_recorded_others_finish_and_rerun_retries_it(tiny: Path, tmp_path: Path) -> None:
    counter, flag = tmp_path / "counter.txt", tmp_path / "broken"
    flag.touch()
    grid = [{"value": 1}, {"value": 2, "fail_flag": str(flag)}, {"value": 3}]
    out = tmp_path / "sweep"
    df = ex.sweep(tiny, grid, out, base_params={"counter": str(counter)}, progress=False)
    assert list(df["state"]) == ["done", "failed", "done"]
    failed = df.iloc[1]
    assert failed["error"] == "RuntimeError: boom at value=2"
    assert math.isnan(failed["rank1"])
    status = json.loads((Path(failed["path"]) / "status.json").read_text())
    assert "boom at value=2" in status["traceback"] and "\x1b[" not in status["traceback"]
    partial = nbformat.read(Path(failed["path"]) / "tiny.ipynb", as_version=4)  # kept, with the error
    assert any(o.get("ename") == "RuntimeError" for c in partial.cells if c.cell_type == "code" for o in c.outputs)
    assert sorted(runs_of(counter)) == ["1", "2", "3"]

    flag.unlink()  # the cause is fixed: only the failed point runs again
    df = ex.sweep(tiny, grid, out, base_params={"counter": str(counter)}, progress=False)
    assert list(df["state"]) == ["done", "done", "done"]
    assert sorted(runs_of(counter)) == ["1", "2", "2", "3"]
    assert df["error"].isna().all()
    assert json.loads((Path(df["path"][1]) / "status.json").read_text())["attempts"] == 2


def test_retries_run_a_failing_point_again(tiny: Path, tmp_path: Path) -> None:
    counter, flag = tmp_path / "counter.txt", tmp_path / "broken"
    flag.touch()
    df = ex.sweep(tiny, {"value": [5], "fail_flag": [str(flag)], "counter": [str(counter)]}, tmp_path / "s",
                  retries=2, progress=False)
    assert df["state"].tolist() == ["failed"]
    assert runs_of(counter) == ["5", "5", "5"]
    assert json.loads((Path(df["path"][0]) / "status.json").read_text())["attempts"] == 3


def test_sweep_checks_parameters_before_running(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="declares no parameter 'lr'"):
        ex.sweep(tiny, {"value": [1], "lr": [0.1]}, tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="out_dir is the sweep's"):
        ex.sweep(tiny, {"value": [1]}, tmp_path / "s", base_params={"out_dir": "x"}, progress=False)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


# ----------------------------------------------------------------------------- grids and names

def test_grid_forms(tmp_path: Path) -> None:
    assert ex.load_grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert ex.load_grid({"a": 3}) == [{"a": 3}]
    assert ex.load_grid([{"a": 1}, {"a": 1}, {"b": True}]) == [{"a": 1}, {"b": True}]  # duplicates dropped
    (tmp_path / "dict.yaml").write_text("lr: [1e-3, 0.01]\nuse_cml: [true, false]\n")
    assert ex.load_grid(tmp_path / "dict.yaml") == [
        {"lr": 0.001, "use_cml": True}, {"lr": 0.001, "use_cml": False},
        {"lr": 0.01, "use_cml": True}, {"lr": 0.01, "use_cml": False}]
    (tmp_path / "list.yaml").write_text("- {stages: layer4}\n- {stages: layer1+layer3+layer4, epochs: 2}\n")
    assert ex.load_grid(str(tmp_path / "list.yaml")) == [{"stages": "layer4"},
                                                         {"stages": "layer1+layer3+layer4", "epochs": 2}]
    (tmp_path / "grid.json").write_text(json.dumps({"seed": [0, 1]}))
    assert ex.load_grid(tmp_path / "grid.json") == [{"seed": 0}, {"seed": 1}]
    for bad in ({}, [], {"a": []}, [1, 2], "nope"):
        with pytest.raises((ValueError, FileNotFoundError)):
            ex.load_grid(bad)
    assert ex.one_at_a_time({"lr": 0.01, "wd": 1}, {"lr": [0.01, 0.1], "wd": [1, 2]}) == [
        {"lr": 0.01, "wd": 1}, {"lr": 0.1, "wd": 1}, {"lr": 0.01, "wd": 2}]
    assert ex.parse_value("1e-3") == 0.001 and ex.parse_value("none") == "none" and ex.parse_value("null") is None
    assert ex.parse_value("[1, 2]") == [1, 2]
    # `sweep --set pretrained=none` reaches the notebook as "none", which its config reads as None (random
    # init), as `train --set` does; it used to become None and be dropped, leaving the preset's weights
    assert ex.notebook_config("cpu", {"pretrained": ex.parse_value("none")}).model.pretrained is None
    assert ex.notebook_config("cpu", {"pretrained": ex.parse_value("null")}).model.pretrained is not None
    assert ex.repo_path("none") is None


def test_point_names_are_stable_readable_and_safe() -> None:
    point = {"stages": "layer1+layer3", "variant": "w/o CML", "lr": 1e-3, "ckpt": "/a b/c.pt", "ok": True}
    name = ex.point_name(point)
    assert name == ex.point_name(dict(reversed(list(point.items()))))  # key order does not matter
    assert re.fullmatch(r"[A-Za-z0-9._+,=-]+", name), name
    assert name.startswith("ckpt=a-b-c.pt,lr=0.001,ok=True,stages=layer1+layer3,variant=w-o-CML-")
    assert re.search(r"-[0-9a-f]{8}$", name)
    assert ex.point_name(point) != ex.point_name({**point, "lr": 1e-2})
    assert ex.point_name(point, {**point, "preset": "smoke"}) != ex.point_name(point)  # base params in the hash
    assert len(ex.point_name({f"p{i}": "x" * 50 for i in range(10)})) <= 80 + 9
    assert ex.point_name({}).startswith("default-")
    assert ex.point_name({"lr": -0.1}).startswith("lr=-0.1-")  # the sign is kept (lr=0.1 is another point)


# ----------------------------------------------------------------------------- collect and tables

def _fake_point(root: Path, name: str, params: dict, state: str, metrics: dict | None, error: str | None = None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"state": state, "params": params, "error": error, "seconds": 1.5}))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_collect_a_sweep_folder(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _fake_point(root, "a", {"use_cml": True, "lr": 0.01, "out_dir": "/x"}, "done", {"rank1": 0.5, "mAP": 0.25,
                                                                                    "cmc": [0.5, 1.0]})
    _fake_point(root, "b", {"use_cml": False, "lr": 0.01}, "failed", None, "ValueError: bad")
    # a point without status.json: parameters from the executed notebook's papermill metadata
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nb.metadata["papermill"] = {"parameters": {"use_cml": True, "lr": 0.1, "out_dir": "/y"}}
    (root / "c").mkdir()
    nbformat.write(nb, root / "c" / "03_train_mar.ipynb")
    (root / "c" / "metrics.json").write_text(json.dumps({"rank1": 0.75, "mAP": 0.5}))
    (root / "not-a-point").mkdir()
    df = ex.collect(root)
    assert df["name"].tolist() == ["a", "b", "c"]
    assert df.columns[:6].tolist() == ["name", "use_cml", "lr", "state", "error", "seconds"]
    assert "out_dir" not in df.columns
    assert df["state"].tolist() == ["done", "failed", "done"]
    assert df["lr"].tolist() == [0.01, 0.01, 0.1]
    assert df["rank1"].iloc[[0, 2]].tolist() == [0.5, 0.75] and math.isnan(df["rank1"][1])
    assert df["error"][1] == "ValueError: bad" and df["cmc"][0] == [0.5, 1.0]
    assert ex.collect(root, names=["c"])["name"].tolist() == ["c"]
    empty = ex.collect(tmp_path / "nothing")
    assert empty.empty and {"name", "state", "rank1", "mAP"} <= set(empty.columns)

    assert ex.select(df, use_cml=True)["name"].tolist() == ["a", "c"]
    assert ex.select(df, use_cml=True, lr=0.1)["name"].tolist() == ["c"]
    assert ex.select(df, missing=1).empty

    paper = {"full": {"market1501": {"rank1": 67.7, "mAP": 40.0}, "source": "MAR"}}
    table = ex.paper_table(df, {"full": {"use_cml": True, "lr": 0.01}, "w/o CML": {"use_cml": False},
                                "absent": {"lr": 5.0}}, paper)
    assert table.loc["full", "rank-1 (ours)"] == 50.0 and table.loc["full", "mAP (ours)"] == 25.0
    assert table.loc["full", "rank-1 (paper)"] == 67.7 and table.loc["full", "note"] == "MAR"
    assert table.loc["w/o CML", "state"] == "failed" and table.loc["w/o CML", "note"] == "ValueError: bad"
    assert math.isnan(table.loc["w/o CML", "rank-1 (paper)"])
    assert table.loc["absent", "state"] == "missing" and table.loc["absent", "runs"] == 0

    c = ex.curve(df, "lr", {"use_cml": True, "lr": 0.01})
    assert c.index.tolist() == [0.01, 0.1] and c["rank1"].tolist() == [50.0, 75.0]


PAPER_MD = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "PAPER.md"
_MD_METRICS = {"R1": "rank1", "R5": "rank5", "R10": "rank10", "mAP": "mAP"}


def _paper_md_tables(text: str) -> dict[str, dict[str, dict]]:
    """``{"Table 3": {row label: {"labels": [...], "market1501": {metric: str}, "dukemtmc": {...}}}}``
    from PAPER.md's markdown tables (label cells joined by " | ")."""
    tables: dict[str, dict[str, dict]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("## "):
            m = re.match(r"## (Table \d+)", line)
            name = m.group(1) if m else None
            header = None
            continue
        if name is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= {"-", " "}:
            continue
        if header is None:
            header, dataset = [], "market1501"
            for c in cells:
                dataset = "dukemtmc" if c.startswith("Duke") else dataset
                header.append((dataset, _MD_METRICS.get(c.split()[-1])))
            tables[name] = {}
            continue
        row = {"labels": [], "market1501": {}, "dukemtmc": {}}
        for (dataset, metric), cell in zip(header, cells):
            if metric is None:
                row["labels"].append(cell)
            else:
                row[dataset][metric] = cell
        tables[name][" | ".join(row["labels"])] = row
    return tables


def test_every_paper_cell_equals_paper_md() -> None:
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} is absent: it lives in ../shared/docs beside the checkout")
    md = _paper_md_tables(PAPER_MD.read_text())
    assert set(md) == {"Table 1", "Table 2", "Table 3", "Table 4"}
    for key, table in (("pretraining", "Table 1"), ("feature_fusion", "Table 2"), ("loss_ablation", "Table 3"),
                       ("comparison", "Table 4")):
        ours = ex.PAPER_RESULTS[key]
        assert len(ours) == len(md[table]), f"{key}: {len(ours)} rows, PAPER.md {table} has {len(md[table])}"
        for label, row in ours.items():
            assert row["table"] == table, (key, label)
            found = [r for name, r in md[table].items() if row["row"] in (name, r["labels"][0])]
            assert len(found) == 1, f"{key}/{label}: row {row['row']!r} not in PAPER.md {table}"
            for dataset in ("market1501", "dukemtmc"):
                cells = row[dataset]
                assert cells["source"], (key, label, dataset)
                for metric in ex.PAPER_METRICS:
                    text = found[0][dataset].get(metric)
                    value = cells[metric]
                    if text is None or text == "–":
                        assert math.isnan(value), f"{key}/{label}/{dataset}/{metric}: PAPER.md has none"
                    else:
                        assert value == float(text), f"{key}/{label}/{dataset}/{metric}: {value} != {text}"
                        assert table in cells["source"] and row["row"] in cells["source"]


def test_paper_results_keep_attribution_and_notebook_rows() -> None:
    full = ex.PAPER_RESULTS["loss_ablation"]["full"]["market1501"]
    assert (full["rank1"], full["mAP"]) == (66.627, 39.361)  # Zhang et al.'s own full-L_MAR run, not MAR's
    assert ex.PAPER_RESULTS["feature_fusion"]["layer4"]["market1501"] == {
        **full, "source": ex.PAPER_RESULTS["feature_fusion"]["layer4"]["market1501"]["source"]}
    for key in ("loss_ablation", "feature_fusion", "pretraining"):  # MAR's 67.7/40.0 is no row of Zhang et al.
        for label, row in ex.PAPER_RESULTS[key].items():
            assert "Yu et al" not in row["source"] and row["market1501"]["rank1"] != 67.7, (key, label)
    mar = ex.PAPER_RESULTS["reference"]["MAR (Yu et al. 2019)"]
    assert (mar["market1501"]["rank1"], mar["market1501"]["mAP"]) == (67.7, 40.0)
    assert mar["paper"].startswith("Yu et al., CVPR 2019")
    assert set(ex.PAPER_RESULTS["loss_ablation"]) == set(ex.LOSS_ABLATION)
    assert set(ex.PAPER_RESULTS["feature_fusion"]) == set(ex.FUSION_COMBINATIONS)
    assert set(ex.PAPER_RESULTS["pretraining"]) == set(ex.PRETRAINING_ABLATION)
    assert ex.LOSS_ABLATION["w/o RAL"] == {"use_mdl": True, "use_cml": True, "use_al": False, "use_rj": False}
    points = ex.pretraining_points(list(ex.PRETRAINING_ABLATION))
    assert points["SE_ResNet50 / ResNet50"] == {"backbone": "seresnet50", "pretrained": "imagenet",
                                                "reference_pretraining": True, "pretrain_backbone": "resnet50"}
    assert points["ResNet50 / none"] == {"backbone": "resnet50", "pretrained": "imagenet",
                                         "reference_pretraining": False}
    assert points["ResNet50 / ResNet50 (random init)"]["pretrained"] == "none"
    assert len({json.dumps(p, sort_keys=True) for p in points.values()}) == 6  # six distinct points
    assert ex.pretraining_points(["ResNet50 / none"], {"ResNet50": "mobilenet_v2"})["ResNet50 / none"][
        "backbone"] == "mobilenet_v2"
    with pytest.raises(ValueError, match="unknown Table 1 row"):
        ex.pretraining_points(["ResNet50 / ImageNet"])
    assert ex.paper_rows(ex.PAPER_RESULTS["reference"]).loc["MAR (Yu et al. 2019)", "rank-1"] == 67.7


def test_record_point_writes_the_engines_record_not_the_notebooks(tmp_path: Path) -> None:
    """A point's summary row comes from the run's metrics and run.json; the notebook adds only extras."""
    import numpy as np

    from workbench.engine import RunResult
    from workbench.runs import RunFolder, RunRecord

    def run(name: str, record: RunRecord, metrics: dict) -> RunResult:
        folder = RunFolder(tmp_path / name)
        folder.path.mkdir()
        folder.write_record(record)
        return RunResult(folder.path, metrics)

    stage1 = run("pre", RunRecord(stage="pretrain", seed=0, epochs_done=2, seconds_per_epoch=9.0, feature_dim=1280,
                                  final_threshold=None), {"rank1": 0.1, "mAP": 0.05, "rank5": 0.2})
    stage2 = run("mar", RunRecord(stage="mar", seed=1, commit="abc", epochs_done=3, seconds_per_epoch=3.0,
                                  images_per_s=20.0, feature_dim=1280, start_checkpoint="/s1/checkpoint.pt",
                                  init_threshold=0.3, final_threshold=0.5, final_pos_precision=0.25),
                 {"rank1": np.float64(0.5), "cmc": np.array([0.5, 1.0]), "distmat": [[1]], "initial": {"rank1": 0.25}})
    (tmp_path / "point").mkdir()
    saved = json.loads(ex.record_point(tmp_path / "point", stage2, pretrain=stage1, note="x").read_text())
    assert saved == {"rank1": 0.5, "cmc": [0.5, 1.0], "initial_rank1": 0.25, "run_dir": str(stage2.run_dir),
                     "seed": 1, "commit": "abc", "epochs_done": 3, "seconds_per_epoch": 3.0, "images_per_s": 20.0,
                     "feature_dim": 1280, "start_checkpoint": "/s1/checkpoint.pt", "init_threshold": 0.3,
                     "final_threshold": 0.5, "final_pos_precision": 0.25,
                     "pretrain_rank1": 0.1, "pretrain_rank5": 0.2, "pretrain_mAP": 0.05,
                     "pretrain_run_dir": str(stage1.run_dir),
                     "pretrain_seconds_per_epoch": 9.0, "note": "x"}
    alone = json.loads(ex.record_point(tmp_path / "point", stage1).read_text())
    assert "final_threshold" not in alone and alone["epochs_done"] == 2  # stage 1 has no T
    assert ex.collect(tmp_path).set_index("name").loc["point", "epochs_done"] == 2


def test_metrics_helpers() -> None:
    import torch

    table = ex.metrics_table({"a": {"rank1": 0.5, "mAP": 0.25}})
    assert table.loc["a", "rank-1"] == 50.0 and math.isnan(table.loc["a", "mINP"])
    stats = ex.agent_similarity(torch.eye(4, 8) * 3)
    assert stats["num_agents"] == 4 and stats["max"] == pytest.approx(0.0) and len(stats["cosines"]) == 6
    assert ex.agent_similarity(torch.ones(3, 5))["min"] == pytest.approx(1.0, abs=1e-5)


def test_notebook_config_and_ensure_run_guard(tmp_path: Path) -> None:
    cfg = ex.notebook_config("smoke", {"backbone": None, "epochs": 3, "pretrained": "none"}, {"mining_ratio": 0.1})
    assert (cfg.model.backbone, cfg.train.epochs, cfg.model.pretrained, cfg.settings.mining_ratio) == \
        ("mobilenet_v2", 3, None, 0.1)
    run = tmp_path / "mar"
    run.mkdir()
    (run / "config.json").write_text(ex.notebook_config("smoke", {"epochs": 1}).to_json())
    (run / "checkpoint.pt").write_bytes(b"not used")
    from workbench.errors import RunFolderError

    with pytest.raises(RunFolderError, match=r"another configuration.*epochs: 1 there, 3 here"):
        ex.ensure_run("mar", cfg, run)
    with pytest.raises(ValueError, match="stage must be"):
        ex.ensure_run("finetune", cfg, run)
    assert ex.notebook_out_dir(tmp_path / "new", "x") == tmp_path / "new" and (tmp_path / "new").is_dir()


# ----------------------------------------------------------------------------- CLI

def test_cli_sweep_exit_status(tiny: Path, tmp_path: Path, capsys) -> None:
    from workbench.cli import main

    flag = tmp_path / "broken"
    flag.touch()
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"- {{value: 1}}\n- {{value: 2, fail_flag: '{flag}'}}\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny), "--grid", str(grid), "--out", str(out), "--set", "counter=none"]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 points failed" in captured.err and "RuntimeError: boom at value=2" in captured.err
    assert "value=2" in captured.err and "done" in captured.out and "failed" in captured.out
    flag.unlink()
    assert main(["sweep", str(tiny), "--grid", str(grid), "--out", str(out), "--set", "counter=none"]) == 0
    assert main(["sweep", str(tiny), "--out", str(out), "--set", "nope=1"]) == 2
    assert "declares no parameter 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 13: sweeps checked up front

TRAIN_NB = Path(__file__).resolve().parents[1] / "notebooks" / "03_train_mar.ipynb"


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if anything starts a kernel."""
    import papermill

    def boom(*args, **kwargs):
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", boom)


@pytest.mark.parametrize("grid_text, extra, expected", [
    ("use_cml: [true, false]\n", ["--set", "preset=smok"], r"^error: shared parameters .*unknown preset 'smok'"),
    ("use_cml: [ture, false]\n", ["--set", "preset=smoke"],
     r"^error: .*grid\.yaml, line 1, column 11: point use_cml=ture: use_cml must be a boolean, got 'ture'$"),
    ("- {lr: 0.01}\n- {backbone: resnet5}\n", [], r"^error: .*grid\.yaml, line 2, column 14: point backbone=resnet5: .*unknown backbone"),
    ("use_cml: [true, false\nlr: 1\n", [], r"^error: .*grid\.yaml: line 2, column 3: malformed grid YAML"),
    ("- {lr: 0.01\n", [], r"^error: .*grid\.yaml: line 2, column 1: malformed grid YAML"),
    # a typo: the file, the line and the closest parameter
    ("lr: [0.01]\nuse_cm: [false]\n", [],
     r"^error: .*grid\.yaml, line 2, column \d+: point .*03_train_mar\.ipynb declares no parameter 'use_cm'; "
     r"did you mean 'use_cml'\?"),
    # a missing stage-1 checkpoint is found before any kernel starts
    ("seed: [0, 1]\n", ["--set", "init_checkpoint=runs/no/such/checkpoint.pt"],
     r"^error: shared parameters .*init_checkpoint = 'runs/no/such/checkpoint\.pt': no such file"),
])
def test_cli_sweep_checks_the_whole_grid_before_any_kernel(tmp_path, capsys, no_kernel, grid_text, extra,
                                                           expected) -> None:
    from workbench.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text(grid_text)
    out = tmp_path / "sweep"
    assert main(["sweep", str(TRAIN_NB), "--grid", str(grid), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert re.search(expected, err.strip()), err
    assert not out.exists() or not any(out.iterdir())  # no point folder: nothing ran


def test_sweep_reports_bad_values_of_every_kind(tiny: Path, tmp_path: Path, no_kernel) -> None:
    nb = nbformat.read(tiny, as_version=4)
    nb.cells[1].source += "\nflag = True\nsizes = [1, 2]"
    nbformat.write(nb, tiny)
    with pytest.raises(ValueError, match=r"point flag=yes: flag must be true or false, got 'yes'"):
        ex.sweep(tiny, {"flag": ["yes"]}, tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match=r"value must be a number, got 'x' \(and 1 more\)"):
        ex.sweep(tiny, [{"value": "x"}, {"value": "y"}], tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match=r"sizes must be a list"):
        ex.sweep(tiny, {"value": [1]}, tmp_path / "s", base_params={"sizes": 3}, progress=False)


def test_cli_sweep_ctrl_c_says_how_to_resume(tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import papermill

    from workbench.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert main(["sweep", str(tiny), "--out", str(tmp_path / "s"), "--set", "value=1"]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "interrupted; run the same command to resume (finished points are kept)"
    (status,) = (tmp_path / "s").glob("*/status.json")
    assert json.loads(status.read_text())["state"] == "interrupted"  # runs again next time


def test_notebook_paths_and_parameter_errors(tmp_path: Path, monkeypatch) -> None:
    root = ex.repo_root()
    assert ex.repo_path("runs/x") == root / "runs" / "x" and ex.repo_path(None) is None
    assert ex.repo_path(tmp_path) == tmp_path
    # the presets' roots name the shared folder by placeholder: a notebook passing one on to a sweep
    # (notebooks 04-09 with preset="cpu") has it checked where it really is, not as a relative path
    monkeypatch.setenv("WORKBENCH_SHARED", str(tmp_path))
    assert ex.repo_path("${WORKBENCH_SHARED}/data/x") == tmp_path / "data" / "x"
    (tmp_path / "data" / "x").mkdir(parents=True)
    from workbench.errors import ConfigError
    from workbench.experiments.sweep import check_points

    check_points(TRAIN_NB, [{"seed": 0}], {"target_root": "${WORKBENCH_SHARED}/data/x"})
    with pytest.raises(ConfigError, match=r"target_root = '\$\{WORKBENCH_SHARED\}/data/y': no such file or folder "):
        check_points(TRAIN_NB, [{"seed": 0}], {"target_root": "${WORKBENCH_SHARED}/data/y"})
    monkeypatch.chdir(tmp_path)  # wherever the kernel starts
    monkeypatch.delenv(ex.NOTEBOOK_ENV, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert ex.resolve_notebook("03_train_mar.ipynb") == TRAIN_NB
    with pytest.raises(ex.NotebookParameterError, match=r"train_notebook = 'nope.ipynb': notebook not found; "
                                                        rf"tried {re.escape(str(tmp_path))}/nope.ipynb, .*/notebooks/nope.ipynb"):
        ex.resolve_notebook("nope.ipynb")
    with pytest.raises(ex.NotebookParameterError, match="unknown preset 'smok'") as err:
        ex.notebook_config("smok", {})
    assert err.value._render_traceback_() == [f"NotebookParameterError: {err.value}"]  # one line in IPython
    missing = root / "no-such-dataset"
    with pytest.raises(ex.NotebookParameterError, match=f"target_root = 'no-such-dataset': no such folder or "
                                                        f"file {re.escape(str(missing))}"):
        ex.notebook_config("smoke", {"target": "market1501", "target_root": "no-such-dataset"})
    with pytest.raises(ex.NotebookParameterError, match=r"variants: unknown 'ful'; choose from 'full', 'w/o CML'"):
        ex.check_choices("variants", ["full", "ful"], ex.LOSS_ABLATION)
    cfg = ex.notebook_config("smoke", {"target_root": "notebooks"})  # relative to the repository root
    assert cfg.data.target_root == str(root / "notebooks")
    assert ex.notebook_out_dir("runs-test-tmp/x", "k") == root / "runs-test-tmp" / "x"
    import shutil

    shutil.rmtree(root / "runs-test-tmp")


# ----------------------------------------------------------------------------- report

def _run_folder(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_prints_markdown_from_runs_sweeps_and_csv(tmp_path: Path, capsys) -> None:
    from workbench.cli import main
    from workbench.experiments.report import report

    demo = tmp_path / "demo"
    m1 = {"rank1": 0.345, "rank5": 0.618, "rank10": 0.8, "mAP": 0.288, "mAP_devkit": 0.251, "mINP": 0.149}
    m2 = {"rank1": 0.327, "rank5": 0.745, "rank10": 0.836, "mAP": 0.355, "mAP_devkit": 0.31, "mINP": 0.21,
          "initial": m1}
    _run_folder(demo / "pretrain", m1)
    _run_folder(demo / "mar", m2)
    assert main(["report", str(demo), "--csv", str(tmp_path / "demo.csv")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[:5] == [
        "| | rank-1 | rank-5 | rank-10 | mAP | mAP* | mINP |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| stage 1: reference pretraining (direct transfer) | 34.5 | 61.8 | 80.0 | 28.8 | 25.1 | 14.9 |",
        "| stage 2: joint MAR training | 32.7 | 74.5 | 83.6 | 35.5 | 31.0 | 21.0 |",
        "",
    ]  # the rows `make demo` prints
    assert report(tmp_path / "demo.csv") == report(demo)  # the committed CSV prints the same table
    assert report(demo / "mar").splitlines()[2].startswith("| mar: before joint training | 34.5")
    assert report(demo / "mar").splitlines()[3].startswith("| mar | 32.7")
    _fake_point(tmp_path / "sweep", "a", {"use_cml": True, "preset": "smoke"}, "done", {"rank1": 0.5, "mAP": 0.25})
    _fake_point(tmp_path / "sweep", "b", {"use_cml": False, "preset": "smoke"}, "failed", None, "boom")
    lines = report(tmp_path / "sweep", footnote=False).splitlines()
    assert lines[2] == "| use_cml=True | 50.0 | – | – | 25.0 | – | – |"
    assert lines[3] == "| use_cml=False (failed) | – | – | – | – | – | – |"
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such run folder or results file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 15: parallel and Ray sweeps

ENV_CELL = '''
import os, json, pathlib
import torch
p = pathlib.Path(out_dir, "metrics.json")
p.write_text(json.dumps({**json.loads(p.read_text()), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                         "omp": os.environ.get("OMP_NUM_THREADS", ""), "torch_threads": torch.get_num_threads()}))
'''


def spans(df: pd.DataFrame) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    statuses = [json.loads((Path(p) / "status.json").read_text()) for p in df["path"]]
    return [(pd.Timestamp(s["started"]), pd.Timestamp(s["finished"])) for s in statuses]


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """collect's table without what differs between two runs of one grid (durations, folders)."""
    return df.drop(columns=["seconds", "path"])


def test_jobs_2_runs_points_at_once_and_collects_the_jobs_1_table(tiny: Path, tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    grid = [{"value": 1}, {"value": 2, "fail_flag": str(flag)}, {"value": 3}]
    one = ex.sweep(tiny, grid, tmp_path / "one", progress=False)
    two = ex.sweep(tiny, grid, tmp_path / "two", jobs=2, progress=False)
    pd.testing.assert_frame_equal(comparable(two), comparable(one))
    assert list(two["state"]) == ["done", "failed", "done"] and two["error"][1] == "RuntimeError: boom at value=2"
    first = spans(two)
    (a0, a1), (b0, b1), _ = first   # the first two points started together
    assert a0 < b1 and b0 < a1, f"no overlap: {a0}–{a1} and {b0}–{b1}"
    status = json.loads((Path(two["path"][0]) / "status.json").read_text())
    assert status["executor"] == "processes" and status["pid"] != os.getpid()   # its own process
    assert not list((tmp_path / "two").glob("*/.attempt.json"))     # records read back and removed

    flag.unlink()  # a rerun resumes: only the failed point runs again
    again = ex.sweep(tiny, grid, tmp_path / "two", jobs=2, progress=False)
    assert list(again["state"]) == ["done"] * 3
    assert json.loads((Path(again["path"][1]) / "status.json").read_text())["attempts"] == 2
    assert spans(again)[0] == first[0] and spans(again)[2] == first[2]  # done points kept, not rerun


def test_workers_get_their_devices_and_a_share_of_the_cores(tiny: Path, tmp_path: Path) -> None:
    nb = nbformat.read(tiny, as_version=4)
    nb.cells.append(new_code_cell(ENV_CELL.strip()))
    nbformat.write(nb, tiny)
    df = ex.sweep(tiny, {"value": [1, 2]}, tmp_path / "s", devices="3,5", cpus_per_point=1, progress=False)
    assert sorted(df["cuda"]) == ["3", "5"]                           # one GPU each, of its own
    assert list(df["omp"]) == ["1", "1"] and list(df["torch_threads"]) == [1, 1]  # torch follows
    from workbench.experiments.executors import LocalProcesses, cpu_cores

    assert LocalProcesses(jobs=2).threads == max(1, cpu_cores() // 2)
    assert LocalProcesses(devices="0,1,2,3", gpus_per_point=2).capacity == 2


def test_cli_sweep_jobs_ctrl_c_stops_every_worker(tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from workbench.experiments import executors
    from workbench.cli import main

    stopped = []
    real_finished = executors.LocalProcesses.finished

    def interrupt_once_both_run(self, timeout):
        if len(self._running) == 2:
            raise KeyboardInterrupt
        return real_finished(self, timeout)

    def stop(self):
        stopped.extend(p.pid for p in self._running)
        return real_stop(self)

    real_stop = executors.LocalProcesses.stop
    monkeypatch.setattr(executors.LocalProcesses, "finished", interrupt_once_both_run)
    monkeypatch.setattr(executors.LocalProcesses, "stop", stop)
    grid = tmp_path / "grid.yaml"
    grid.write_text("value: [1, 2, 3]\n")
    assert main(["sweep", str(tiny), "--grid", str(grid), "--out", str(tmp_path / "s"), "--jobs", "2"]) == 130
    assert capsys.readouterr().err.strip().endswith("run the same command to resume (finished points are kept)")
    assert len(stopped) == 2
    states = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/status.json")]
    assert sorted(s["state"] for s in states) == ["interrupted", "interrupted"]  # the third never started
    assert all(s["error"].startswith("interrupted") for s in states)
    monkeypatch.undo()
    assert main(["sweep", str(tiny), "--grid", str(grid), "--out", str(tmp_path / "s"), "--jobs", "2"]) == 0


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    for attempt in range(3):  # Ray gives its raylet 30 s to register: a busy 2-core machine may need another go
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 ** 2, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - Ray raises a plain Exception when the node times out
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


def test_ray_executor_collects_the_local_table(tiny: Path, tmp_path: Path, ray_runtime) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    grid = [{"value": 1}, {"value": 2, "fail_flag": str(flag)}, {"value": 3}]
    local = ex.sweep(tiny, grid, tmp_path / "local", progress=False)
    remote = ex.sweep(tiny, grid, tmp_path / "ray", executor="ray", retries=1, progress=False)
    pd.testing.assert_frame_equal(comparable(remote), comparable(local))
    status = json.loads((Path(remote["path"][1]) / "status.json").read_text())
    assert status["executor"] == "ray" and status["attempts"] == 2 and status["placement"]["num_cpus"] == 1
    assert "boom at value=2" in status["traceback"]
    assert not list((tmp_path / "ray").glob(".probe-*"))             # the storage check cleaned up


def test_ray_storage_check_names_what_a_node_does_not_see(tmp_path: Path, ray_runtime) -> None:
    from workbench.experiments.executors import SharedStorageError
    from workbench.experiments.ray_executor import check_shared_storage

    with pytest.raises(SharedStorageError, match=r"not on storage every Ray node sees.*no notebook .*missing\.ipynb"):
        check_shared_storage(tmp_path, tmp_path / "missing.ipynb")


def test_an_interrupted_training_cell_is_one_line_saying_where_the_run_is(tmp_path: Path, monkeypatch) -> None:
    import workbench.engine as engine
    from workbench.config import from_params
    from workbench.experiments.notebook import RunInterrupted
    from workbench.runs import RunFolder, RunRecord

    def interrupted(stage, cfg, run_dir, **kwargs):
        RunFolder(run_dir).write_record(RunRecord(stage=stage, epochs_done=3))
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run_stage", interrupted)
    with pytest.raises(RunInterrupted) as info:
        ex.ensure_run("mar", from_params({"preset": "smoke", "epochs": 5}), tmp_path / "mar")
    lines = info.value._render_traceback_()
    assert len(lines) == 1 and "stage 2" in lines[0] and "epoch 3/5" in lines[0]
    assert "run this cell again to resume" in lines[0]



def test_a_worker_whose_sweep_died_stops_and_records_the_interruption(tiny: Path, tmp_path: Path) -> None:
    """A sweep killed outright (SIGKILL, or the kernel of a notebook running it shut down) cannot stop its
    workers; each one notices its parent is gone and interrupts itself instead of training on unseen."""
    import signal
    import subprocess
    import sys
    import time

    nb = nbformat.read(tiny, as_version=4)
    nb.cells.append(new_code_cell("import pathlib, time\npathlib.Path(out_dir, 'started').touch()\ntime.sleep(300)"))
    nbformat.write(nb, tiny)
    point = tmp_path / "point"
    spec = json.dumps({"notebook": str(tiny), "params": {"value": 1, "out_dir": str(point / "out")},
                       "point_dir": str(point), "kernel_name": None, "timeout": None,
                       "call": "workbench.experiments.execute:attempt"})
    # a stand-in for the sweep: starts the worker in a session of its own (as LocalProcesses does), then waits
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen([sys.executable, '-m', 'workbench.experiments.executors', 'run-point', {spec!r}], "
        "start_new_session=True)\nprint(w.pid, flush=True)\ntime.sleep(600)")], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while not (point / "out" / "started").exists():  # the kernel is in the long cell
            assert time.monotonic() < deadline, "the worker's kernel never started the notebook"
            time.sleep(0.5)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60
        while (point / ".attempt.json").exists() is False:
            assert time.monotonic() < deadline, "the orphaned worker did not stop"
            time.sleep(0.5)
        record = json.loads((point / ".attempt.json").read_text())
        assert record["state"] == "interrupted"
        deadline = time.monotonic() + 30
        while Path(f"/proc/{worker}").exists() and "zombie" not in Path(f"/proc/{worker}/status").read_text():
            assert time.monotonic() < deadline, "the worker process is still alive"
            time.sleep(0.5)
    finally:
        for pid in (worker, parent.pid):
            try:
                os.killpg(pid, signal.SIGKILL) if pid == worker else os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
