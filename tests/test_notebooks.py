"""The notebooks: committed clean, and each of 00–07 executes with papermill at smoke scale.

Execution tests (marker ``notebooks``) run on the synthetic smoke data, generated once for the
session under a temporary ``WORKBENCH_DATA``; runs go under a temporary ``WORKBENCH_RUNS`` and the
notebooks' ``out_dir``. Sweep notebooks get two-point grids and one or two epochs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from workbench import experiments as ex

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
EXECUTED = [f"{i:02d}_{name}" for i, name in enumerate(
    ["quickstart", "data", "pretrain_reference", "train_mar", "loss_ablation", "hyperparameter_curves",
     "feature_fusion", "pretraining_ablation", "soft_label_explorer", "method_comparison"])]
SMOKE = {"preset": "smoke"}
FAST = {"preset": "smoke", "backbone": "mobilenet_v2", "epochs": 1}


# ----------------------------------------------------------------------------- committed notebooks

def test_every_notebook_is_there() -> None:
    present = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert set(EXECUTED) <= present, sorted(set(EXECUTED) - present)
    assert (NOTEBOOKS / "README.md").is_file()


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_committed_notebooks_are_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "papermill" not in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], f"{path.name}: a cell has outputs (make notebooks-strip)"
        assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    assert tagged[0] is code[0], f"{path.name}: the parameters cell is not the first code cell"
    assert ex.notebook_parameters(path), f"{path.name}: papermill finds no parameter"


def test_nbstripout_finds_nothing_to_strip() -> None:
    """nbstripout's own check (``make notebooks-strip`` strips with it; cell ids are kept)."""
    pytest.importorskip("nbstripout", reason="nbstripout is not installed (pip install -e '.[test]')")
    notebooks = sorted(str(p) for p in NOTEBOOKS.glob("*.ipynb"))
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", "--keep-id", *notebooks],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"notebooks with outputs or run metadata (make notebooks-strip): {done.stdout}"


# ----------------------------------------------------------------------------- execution

@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The synthetic smoke sets, generated once for the session."""
    from workbench.config import from_params
    from workbench.builders import load_domains

    root = tmp_path_factory.mktemp("workbench-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_DATA", str(root))
        load_domains(from_params(SMOKE).data)
    return root


@pytest.fixture(scope="module")
def nb_env(smoke_data: Path, tmp_path_factory):
    """WORKBENCH_DATA / WORKBENCH_RUNS for the kernels (they inherit the environment)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_DATA", str(smoke_data))
        mp.setenv("WORKBENCH_RUNS", str(tmp_path_factory.mktemp("workbench-runs")))
        mp.setenv("CI", os.environ.get("CI", "true"))  # no tqdm bars from the engine
        yield


@pytest.fixture(scope="module")
def stage1(nb_env, tmp_path_factory) -> Path:
    """One stage-1 checkpoint (smoke, MobileNetV2, layer4) shared by the sweep notebooks."""
    from workbench.config import from_params
    from workbench.engine import pretrain

    return pretrain(from_params(SMOKE), tmp_path_factory.mktemp("stage1") / "pretrain").checkpoint


def execute(name: str, params: dict, out: Path) -> nbformat.NotebookNode:
    """Run a notebook with papermill into ``out``; fail with the cell's error if one raised."""
    path = ex.run_notebook(NOTEBOOKS / f"{name}.ipynb", params, out, timeout=600)  # out_dir = out when declared
    nb = nbformat.read(path, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.notebooks
def test_00_quickstart(nb_env, tmp_path: Path) -> None:
    nb = execute("00_quickstart", {**SMOKE, "epochs": 1}, tmp_path)
    m = metrics(tmp_path)
    assert 0 <= m["rank1"] <= 1 and 0 <= m["pretrain_rank1"] <= 1 and len(m["cmc"]) >= 10
    assert (tmp_path / "pretrain" / "checkpoint.pt").is_file() and (tmp_path / "mar" / "history.csv").is_file()
    assert images(nb) >= 4  # samples, two training-curve figures, CMC


@pytest.mark.notebooks
def test_01_data(nb_env, tmp_path: Path) -> None:
    nb = execute("01_data", SMOKE, tmp_path)
    assert images(nb) >= 2
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "gallery" in text and "16 identities (agents)" in text


@pytest.mark.notebooks
def test_02_pretrain_reference(nb_env, tmp_path: Path) -> None:
    nb = execute("02_pretrain_reference", SMOKE, tmp_path)
    m = metrics(tmp_path)
    assert m["agents_num_agents"] == 16 and -1 <= m["agents_mean"] <= m["agents_max"] <= 1
    assert m["seconds_per_epoch"] > 0 and images(nb) >= 2


@pytest.mark.notebooks
def test_03_train_mar_runs_stage1_then_reuses_it(nb_env, tmp_path: Path) -> None:
    params = {**SMOKE, "epochs": 2, "use_cml": False, "lambda_ref": 10.0}
    execute("03_train_mar", params, tmp_path)
    m = metrics(tmp_path)
    for key in ("rank1", "mAP", "initial_rank1", "pretrain_rank1", "init_threshold", "seconds_per_epoch",
                "feature_dim", "final_pos_precision"):
        assert key in m, key
    assert m["epochs_done"] == 2 and m["feature_dim"] == 1280
    config = json.loads((tmp_path / "mar" / "config.json").read_text())
    assert config["settings"]["use_cml"] is False and config["settings"]["lambda_ref"] == 10.0
    steps = (tmp_path / "mar" / "steps.csv").read_text()
    assert "threshold" in steps.splitlines()[0]
    # run again in the same folder: both finished runs are reused, nothing is trained again
    stamp = (tmp_path / "mar" / "checkpoint.pt").stat().st_mtime_ns
    execute("03_train_mar", params, tmp_path)
    assert (tmp_path / "mar" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert metrics(tmp_path)["rank1"] == m["rank1"]


@pytest.mark.notebooks
def test_training_in_a_notebook_shows_a_progress_bar_per_epoch(nb_env, stage1: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    """Issue 22: a notebook that trains is not silent — a tqdm bar per epoch (a widget in JupyterLab) with
    the stage, epoch, loss terms, T and images/s."""
    monkeypatch.delenv("CI", raising=False)  # as a user's kernel: bars on
    nb = execute("03_train_mar", {**SMOKE, "epochs": 2, "init_checkpoint": str(stage1)},
                 tmp_path)  # the smoke preset's own settings show the bars (issue 38: they were off)
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                  for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert widgets >= 2, "no progress widget in the executed notebook"
    assert "stage 2 (mar) epoch 1/2" in text and "stage 2 (mar) epoch 2/2" in text


@pytest.mark.notebooks
def test_one_parameter_path_train_set_and_sweep_set_make_the_same_config(nb_env, tmp_path: Path) -> None:
    """`train --set` and `sweep --set` type values the same way (config.from_params): `pretrained=none` is a
    randomly initialised backbone in both, not the preset's ImageNet weights."""
    from workbench.cli import main
    from workbench.config import RUN_ONLY_FIELDS, Config
    from workbench.runs import PointFolder, RunFolder

    sets = ["pretrained=none", "lr=3e-4", "stages=layer3+layer4", "use_cml=false", "epochs=1"]
    argv = [item for s in sets for item in ("--set", s)]
    assert main(["train", "--preset", "smoke", "--no-pretraining", "--run-dir", str(tmp_path / "train"),
                 "--no-tensorboard", *argv]) == 0
    assert main(["sweep", str(NOTEBOOKS / "03_train_mar.ipynb"), "--out", str(tmp_path / "sweep"), "--set",
                 "preset=smoke", "--set", "reference_pretraining=false", *argv]) == 0
    (point,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]

    def flat(cfg: Config) -> dict:
        return {k: v for k, v in cfg.flat().items() if k not in RUN_ONLY_FIELDS | {"tensorboard"}}

    via_train, via_sweep = RunFolder(tmp_path / "train").config(), PointFolder(point).run("mar").config()
    assert via_train.model.pretrained is None and via_sweep.model.pretrained is None
    assert flat(via_sweep) == flat(via_train)


def _papermill_cli(notebook: str, out: Path, params: dict, cwd: Path) -> subprocess.CompletedProcess:
    """``papermill NOTEBOOK OUT -y PARAMS`` as a user types it, from ``cwd`` (no --cwd)."""
    cmd = [sys.executable, "-m", "papermill", notebook, str(out), "-y", json.dumps(params), "--no-progress-bar"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.notebooks
@pytest.mark.parametrize("where", ["repository root", "notebooks/"])
def test_04_loss_ablation_with_papermill_from(where: str, nb_env, stage1: Path, tmp_path: Path) -> None:
    # the documented command, without --cwd: train_notebook is found beside 04 wherever the kernel starts
    cwd, notebook = (REPO, "notebooks/04_loss_ablation.ipynb") if where == "repository root" else (
        NOTEBOOKS, "04_loss_ablation.ipynb")
    variants = ["full", "w/o both"] if where == "repository root" else ["w/o both"]
    params = {**FAST, "variants": variants, "init_checkpoint": str(stage1), "out_dir": str(tmp_path),
              "results_dir": None}
    proc = _papermill_cli(notebook, tmp_path / "04.ipynb", params, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done"] * len(variants), df["error"].tolist()
    assert df["rank1"].notna().all()
    assert not (tmp_path / "pretrain").exists()  # the given stage-1 checkpoint was used
    for point in map(Path, df["path"]):  # each point's runs live in its own folder
        assert (point / "mar" / "checkpoint.pt").is_file() and not (point / "pretrain").exists()
        assert (point / "03_train_mar.ipynb").is_file() and (point / "metrics.json").is_file()
    nb = nbformat.read(tmp_path / "04.ipynb", as_version=4)
    streams = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "stream")
    assert "KeyboardInterrupt" not in streams  # no kernel-shutdown noise after the sweep
    tables = [o["data"]["text/plain"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "text/plain" in o.get("data", {})]
    markdown = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if "text/markdown" in o.get("data", {})]
    paper = ex.PAPER_RESULTS["loss_ablation"][variants[0]]["market1501"]["rank1"]
    assert any("paper rank-1" in t and f"{paper:.1f}" in t for t in markdown)  # the paper beside ours, Table 3
    assert any("`results_dir = None`: the sweep below runs" in t for t in markdown)
    assert any("rank1 (%)" in t for t in tables)  # percent, not fractions
    assert images(nb) >= 1  # ours beside the paper as bars


@pytest.mark.notebooks
def test_09_method_comparison_runs_the_four_methods_from_one_stage1(nb_env, stage1: Path, tmp_path: Path) -> None:
    from workbench.runs import RunFolder

    nb = execute("09_method_comparison", {**FAST, "seeds": [0], "init_checkpoint": str(stage1), "results_dir": None,
                                          "cluster": {"cc_min_samples": 2, "cc_eps": 0.7, "optimizer": "adam",
                                                      "lr": 3.5e-4, "epochs": 2},
                                          "extra": {"eval_every": 1}}, tmp_path)
    shown = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
    # at smoke scale an epoch takes seconds: no same-wall-clock table of 0.0 min, and the noise is said
    assert "the same-wall-clock comparison is noise" in shown and "| | epochs | training min |" not in shown
    assert "at this scale the rows' differences are noise" in shown
    assert "- Cluster-Contrast: 2 epochs, adam at lr 0.00035" in shown
    df = ex.collect(tmp_path / "points")
    assert sorted(df["method"]) == ["cluster_contrast", "mar", "oracle", "soft_cluster"], df[["method", "state", "error"]]
    assert set(df["state"]) == {"done"}, df["error"].tolist()
    summary = ex.seed_table(df, "method_comparison")
    ran = summary[summary["runs"] > 0]  # the camera-aware rows are the recipe's, not this sweep's
    assert list(ran.index) == list(ex.METHOD_COMPARISON)[:4] and ran["runs"].tolist() == [1, 1, 1, 1]
    starts = {json.loads((Path(p) / "mar" / "config.json").read_text())["train"]["method"]:
              RunFolder(Path(p) / "mar").record().start_checkpoint for p in df["path"]}
    assert set(starts.values()) == {str(stage1)}  # one stage 1 for every method
    configs = {json.loads((Path(p) / "mar" / "config.json").read_text())["train"]["method"]:
               json.loads((Path(p) / "mar" / "config.json").read_text())["train"] for p in df["path"]}
    assert configs["mar"]["optimizer"] == "sgd" and configs["mar"]["epochs"] == 1
    assert configs["soft_cluster"]["optimizer"] == "adam" and configs["soft_cluster"]["epochs"] == 2


@pytest.mark.notebooks
def test_a_sweep_of_03_reaches_the_clustering_baseline_by_its_method_field(nb_env, stage1: Path, tmp_path: Path) -> None:
    """method is a field like any other: `sweep --set method=cluster_contrast` trains the baseline."""
    df = ex.sweep(NOTEBOOKS / "03_train_mar.ipynb", [{"method": "cluster_contrast"}], tmp_path,
                  base_params={**SMOKE, "epochs": 1, "init_checkpoint": str(stage1),
                               "extra": {"cc_min_samples": 2, "cc_eps": 0.7}})
    assert df["state"].tolist() == ["done"], df["error"].tolist()
    point = Path(df["path"].iloc[0])
    config = json.loads((point / "mar" / "config.json").read_text())
    assert config["train"]["method"] == "cluster_contrast" and config["settings"]["cc_min_samples"] == 2
    history = (point / "mar" / "history.csv").read_text().splitlines()
    assert "n_clusters" in history[0] and "pair_precision" in history[0] and len(history) == 2
    assert 0 <= df["mAP"].iloc[0] <= 1


@pytest.mark.notebooks
def test_a_wrong_train_notebook_is_one_line_with_the_paths_tried(nb_env, stage1: Path, tmp_path: Path) -> None:
    params = {**FAST, "variants": ["full"], "init_checkpoint": str(stage1), "train_notebook": "03_typo.ipynb",
              "results_dir": None}
    proc = _papermill_cli("notebooks/04_loss_ablation.ipynb", tmp_path / "04.ipynb", params, REPO)
    assert proc.returncode != 0
    nb = nbformat.read(tmp_path / "04.ipynb", as_version=4)
    (error,) = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert error["traceback"] == [f"NotebookParameterError: {error['evalue']}"]  # one line, no traceback
    assert f"tried {NOTEBOOKS}/03_typo.ipynb" in error["evalue"] or f"{NOTEBOOKS}/03_typo.ipynb" in error["evalue"]
    # papermill prints its own traceback first; what to fix is the last line the user sees
    last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1]
    assert last.startswith("NotebookParameterError: train_notebook = '03_typo.ipynb'"), proc.stderr[-2000:]


@pytest.mark.notebooks
def test_05_hyperparameter_curves(nb_env, stage1: Path, tmp_path: Path) -> None:
    # the smoke preset's lr (2e-4) is the fixed value: the lr grid shares that point with the epochs grid
    execute("05_hyperparameter_curves", {**FAST, "epochs_grid": [1], "lr_grid": [2e-4, 1e-3],
                                         "weight_decay_grid": [], "init_checkpoint": str(stage1),
                                         "results_dir": None}, tmp_path)
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done", "done"], df["error"].tolist()
    assert sorted(df["lr"].tolist()) == [2e-4, 1e-3]
    lr = ex.curve(df, "lr", {"epochs": 1, "lr": 2e-4, "weight_decay": 5e-4})
    assert lr.shape == (2, 5) and list(lr.columns) == ["rank1", "rank1_std", "mAP", "mAP_std", "n"]


@pytest.mark.notebooks
def test_06_feature_fusion_one_stage1_per_combination_shared_by_the_seeds(nb_env, tmp_path: Path) -> None:
    execute("06_feature_fusion", {**FAST, "combinations": ["layer1+layer4"], "seeds": [0, 1],
                                  "pretrain_epochs": 1, "results_dir": None}, tmp_path)
    stage1 = ex.collect(tmp_path / "stage1")
    assert stage1["stages"].tolist() == ["layer1+layer4"] and stage1["state"].tolist() == ["done"]
    checkpoint = Path(stage1["path"][0]) / "pretrain" / "checkpoint.pt"
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done", "done"], df["error"].tolist()
    assert sorted(df["seed"]) == [0, 1] and set(df["stages"]) == {"layer1+layer4"}
    for _, point in df.iterrows():  # both seeds start from the combination's one stage 1
        start = json.loads((Path(point["path"]) / "metrics.json").read_text())["start_checkpoint"]
        assert Path(start) == checkpoint
        assert not (Path(point["path"]) / "pretrain").exists()  # no stage 1 of its own
    assert set(df["feature_dim"]) == {1304}  # MobileNetV2: 24 (layer1) + 1280 (layer4)


@pytest.mark.notebooks
def test_06_feature_fusion_without_stage1(nb_env, tmp_path: Path) -> None:
    execute("06_feature_fusion", {**FAST, "combinations": ["layer4"], "reference_pretraining": False,
                                  "results_dir": None}, tmp_path)
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done"], df["error"].tolist()
    assert df["feature_dim"].tolist() == [1280]
    assert not (tmp_path / "stage1").exists() and not (Path(df["path"][0]) / "pretrain").exists()


@pytest.mark.notebooks
def test_07_pretraining_ablation_runs_table_1_rows(nb_env, tmp_path: Path, monkeypatch) -> None:
    # no cached weights and no way to download them: the ImageNet point must fail, cleanly
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    params = {"preset": "smoke", "epochs": 1, "pretrain_epochs": 1,
              "rows": ["ResNet50 / none", "ResNet50 / ResNet50 (random init)"],
              "networks": {"ResNet50": "mobilenet_v2"}, "results_dir": None}  # Table 1's protocol, CPU backbone
    nb = execute("07_pretraining_ablation", params, tmp_path)
    df = ex.collect(tmp_path / "points").set_index("pretrained")
    assert df.loc["none", "state"] == "done" and df.loc["none", "seconds_per_epoch"] > 0
    assert df.loc["none", "reference_pretraining"] == True  # noqa: E712 - stage 1 from random init, then stage 2
    assert df.loc["none", "pretrain_seconds_per_epoch"] > 0
    assert df.loc["imagenet", "state"] == "failed" and df.loc["imagenet", "reference_pretraining"] == False  # noqa
    assert "WeightsError: ImageNet weights for 'mobilenet_v2'" in df.loc["imagenet", "error"]
    assert (Path(df.loc["imagenet", "path"]) / "03_train_mar.ipynb").is_file()  # partial notebook kept
    tables = [o["data"]["text/plain"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "text/plain" in o.get("data", {})]
    assert any("61.401" in t and "42.548" in t for t in tables)  # Table 1's two rows beside ours


@pytest.mark.notebooks
@pytest.mark.parametrize("name,experiment", [("04_loss_ablation", "loss_ablation"),
                                             ("05_hyperparameter_curves", "hyperparameters"),
                                             ("06_feature_fusion", "feature_fusion"),
                                             ("07_pretraining_ablation", "pretraining"),
                                             ("04_loss_ablation", "paper_schedule/loss_ablation"),
                                             ("05_hyperparameter_curves", "paper_schedule/epochs"),
                                             ("06_feature_fusion", "paper_schedule/feature_fusion"),
                                             ("09_method_comparison", "method_comparison")])
def test_opened_from_the_repository_the_notebook_shows_the_committed_results(name: str, experiment: str,
                                                                           nb_env, tmp_path: Path) -> None:
    # the defaults, as JupyterLab opens it: results/<experiment>/ is shown and nothing trains (the
    # paper-schedule folders of issue 19: the same notebooks with results_dir pointed at them)
    folder = REPO / "results" / experiment
    assert (folder / "runs.csv").is_file(), f"{folder} is committed with the repository"
    runs_root = Path(os.environ["WORKBENCH_RUNS"])
    before = sorted(runs_root.iterdir())
    nb = execute(name, {} if "/" not in experiment else {"results_dir": f"results/{experiment}"}, tmp_path)
    assert sorted(runs_root.iterdir()) == before  # no new run folder
    assert not any((tmp_path / d).exists() for d in ("points", "pretrain", "stage1"))
    markdown = "".join(o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                       if "text/markdown" in o.get("data", {}))
    assert (folder / "README.md").read_text().splitlines()[0] in markdown  # the generated README, shown
    assert "data:image/png;base64," in markdown
    # the setting of what is shown comes first, before the tables (issue 22: the parameters cell says
    # preset="smoke", backbone="resnet50" above real-data MobileNetV2 results)
    assert markdown.startswith(f"**What is shown** (committed in `results/{experiment}`, nothing trains): "
                               "target cuhk01-market, reference cuhk03-msmt; mobilenet_v2 at 128x64; preset cpu")
    # issue 38: each table and figure once (04 showed Table 3 and its figure in the committed block and again
    # from its own cells): the README's first table row and its figure appear once in everything shown
    readme = (folder / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("| ---"))
    first_row = next(line for line in readme[start + 1:] if "direct transfer" not in line)  # a row of ours
    shown = "".join(str(v) for c in nb.cells if c.cell_type == "code" for o in c.outputs  # what a reader sees
                    for v in [o.get("data", {}).get("text/markdown", ""), o.get("data", {}).get("text/html", ""),
                              o.get("text", "")])
    assert shown.count(first_row) == 1, first_row  # the notebook's own table cell wrote the same row
    assert markdown.count("data:image/png;base64,") == sum("](" in line and ".png)" in line for line in readme)
    assert images(nb) == 0, "a figure drawn again below the committed block"
    assert "in the committed block above" in markdown


# ----------------------------------------------------------------------------- parameters

TRAINING = ["00_quickstart", "01_data", "02_pretrain_reference", "03_train_mar", "04_loss_ablation",
            "05_hyperparameter_curves", "06_feature_fusion", "07_pretraining_ablation", "08_soft_label_explorer"]


@pytest.mark.parametrize("name", TRAINING)
def test_every_notebook_that_trains_or_evaluates_declares_the_data(name: str) -> None:
    declared = ex.notebook_parameters(NOTEBOOKS / f"{name}.ipynb")
    assert set(ex.DATA_PARAMETERS) <= set(declared), sorted(set(ex.DATA_PARAMETERS) - set(declared))


@pytest.mark.notebooks
def test_data_parameters_are_used_and_relative_to_the_repository(nb_env, shared_data: Path, tmp_path: Path) -> None:
    import papermill as pm

    root = os.path.relpath(shared_data / "mini-market1501", REPO)  # "../shared/data/mini-market1501"
    out = tmp_path / "01.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / "01_data.ipynb"), str(out), cwd=str(NOTEBOOKS), progress_bar=False,
                        parameters={"preset": "smoke", "target": "market1501", "target_root": root})
    text = "".join(str(o.get("text", "")) for c in nbformat.read(out, as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert f"market1501 at {shared_data / 'mini-market1501'}" in text


@pytest.mark.notebooks
def test_a_bad_parameter_is_one_line_at_the_top_of_the_failed_output(nb_env, tmp_path: Path) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS / "03_train_mar.ipynb"), str(tmp_path / "03.ipynb"), progress_bar=False,
                            parameters={"preset": "smoke", "use_cml": "ture"}, cwd=str(NOTEBOOKS))
    assert err.value.traceback == ["NotebookParameterError: use_cml must be a boolean, got 'ture'"]


@pytest.mark.notebooks
def test_08_opens_the_newest_fitting_run_and_never_trains_by_surprise(nb_env, tmp_path: Path, monkeypatch) -> None:
    """Issue 22: after only `make demo` 08 opens runs/<time>-demo/mar; with no run it says so in one line and
    names the command, training nothing."""
    from workbench.config import from_params
    from workbench.engine import pretrain, train_mar
    from workbench.paths import runs_root

    runs = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS", str(runs))
    runs.mkdir()
    with pytest.raises(Exception, match=r"no finished stage-2 run of preset 'smoke'.*make demo"):
        execute("08_soft_label_explorer", {"preset": "smoke", "embedding": "pca", "save_figures": False},
                tmp_path / "none")
    assert list(runs.iterdir()) == []  # nothing trained
    cfg = from_params({**SMOKE, "epochs": 1})
    demo = runs_root() / "20250101-000000-demo"
    train_mar(cfg, demo / "mar", init_checkpoint=pretrain(cfg, demo / "pretrain").checkpoint)
    nb = execute("08_soft_label_explorer", {"preset": "smoke", "embedding": "pca", "save_figures": False},
                 tmp_path / "found")
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"run: {demo / 'mar'}" in printed
    # issue 38: it says which run it picked and how to open another
    assert ("opened the newest finished stage-2 run of preset 'smoke' and this data under" in printed
            and "(1 found); to open another, set run_dir in the parameters cell" in printed), printed
    assert sorted(p.name for p in runs.iterdir()) == ["20250101-000000-demo"]  # still nothing else trained
    # a typo in run_dir: the folder does not exist (not "holds no checkpoint"), with the close name
    with pytest.raises(Exception, match=r"run_dir = '\S*/mra': the folder \S*/mra does not exist; did you mean "
                                        r"\S*20250101-000000-demo/mar\?"):
        execute("08_soft_label_explorer", {"run_dir": str(demo / "mra"), "embedding": "pca", "save_figures": False},
                tmp_path / "typo")


@pytest.mark.notebooks
def test_a_mistyped_results_dir_is_an_error_not_a_sweep(nb_env, tmp_path: Path) -> None:
    """Issue 22: results/loss_ablaton (a typo) used to print one line and start a ResNet-50 smoke sweep."""
    with pytest.raises(Exception, match=r"results_dir = '\S*results/loss_ablaton': no committed results there"):
        execute("04_loss_ablation", {"results_dir": "results/loss_ablaton"}, tmp_path)
    assert not (tmp_path / "points").exists() and not list(tmp_path.glob("*/status.json"))
