"""The notebooks: committed clean, and each of 00–07 executes with papermill at smoke scale.

Execution tests (marker ``notebooks``) run on the synthetic smoke data, generated once for the
session under a temporary ``WORKBENCH_DATA``; runs go under a temporary ``WORKBENCH_RUNS`` and the
notebooks' ``out_dir``. Sweep notebooks get two-point grids and one or two epochs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from workbench import experiments as ex

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
EXECUTED = [f"{i:02d}_{name}" for i, name in enumerate(
    ["quickstart", "data", "pretrain_reference", "train_mar", "loss_ablation", "hyperparameter_curves",
     "feature_fusion", "pretraining_ablation"])]
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
    assert not ex.strip_notebook(path, write=False)


# ----------------------------------------------------------------------------- execution

@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The synthetic smoke sets, generated once for the session."""
    from workbench.config import from_params
    from workbench.engine import load_domains

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
    assert m["epochs_run"] == 2 and m["feature_dim"] == 1280
    config = json.loads((tmp_path / "mar" / "config.json").read_text())
    assert config["loss"]["use_cml"] is False and config["loss"]["lambda_ref"] == 10.0
    steps = (tmp_path / "mar" / "steps.csv").read_text()
    assert "threshold" in steps.splitlines()[0]
    # run again in the same folder: both finished runs are reused, nothing is trained again
    stamp = (tmp_path / "mar" / "checkpoint.pt").stat().st_mtime_ns
    execute("03_train_mar", params, tmp_path)
    assert (tmp_path / "mar" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert metrics(tmp_path)["rank1"] == m["rank1"]


@pytest.mark.notebooks
def test_04_loss_ablation(nb_env, stage1: Path, tmp_path: Path) -> None:
    execute("04_loss_ablation", {**FAST, "variants": ["full", "w/o both"], "init_checkpoint": str(stage1)}, tmp_path)
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done", "done"], df["error"].tolist()
    assert sorted(df["use_cml"].tolist()) == [False, True] and df["rank1"].notna().all()
    assert not (tmp_path / "pretrain").exists()  # the given stage-1 checkpoint was used
    for point in map(Path, df["path"]):  # each point's runs live in its own folder
        assert (point / "mar" / "checkpoint.pt").is_file() and not (point / "pretrain").exists()
        assert (point / "03_train_mar.ipynb").is_file() and (point / "metrics.json").is_file()


@pytest.mark.notebooks
def test_05_hyperparameter_curves(nb_env, stage1: Path, tmp_path: Path) -> None:
    execute("05_hyperparameter_curves", {**FAST, "epochs_grid": [1], "lr_grid": [0.01, 0.02],
                                         "weight_decay_grid": [], "init_checkpoint": str(stage1)}, tmp_path)
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done", "done"], df["error"].tolist()
    assert sorted(df["lr"].tolist()) == [0.01, 0.02]
    assert ex.curve(df, "lr", {"epochs": 1, "lr": 0.01, "weight_decay": 5e-4}).shape == (2, 2)


@pytest.mark.notebooks
def test_06_feature_fusion(nb_env, tmp_path: Path) -> None:
    execute("06_feature_fusion", {**FAST, "combinations": ["layer4", "layer1+layer4"],
                                  "reference_pretraining": False}, tmp_path)
    df = ex.collect(tmp_path / "points")
    assert df["state"].tolist() == ["done", "done"], df["error"].tolist()
    assert dict(zip(df["stages"], df["feature_dim"])) == {"layer4": 1280, "layer1+layer4": 1304}


@pytest.mark.notebooks
def test_07_pretraining_ablation_records_missing_weights(nb_env, tmp_path: Path, monkeypatch) -> None:
    # no cached weights and no way to download them: the ImageNet point must fail, cleanly
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    params = {"preset": "smoke", "epochs": 1, "backbones": ["mobilenet_v2"], "imagenet": [True, False],
              "reference_pretraining": [False]}
    execute("07_pretraining_ablation", params, tmp_path)
    df = ex.collect(tmp_path / "points").set_index("pretrained")
    assert df.loc["none", "state"] == "done" and df.loc["none", "seconds_per_epoch"] > 0
    assert df.loc["imagenet", "state"] == "failed"
    assert "WeightsError: ImageNet weights for 'mobilenet_v2'" in df.loc["imagenet", "error"]
    assert (Path(df.loc["imagenet", "path"]) / "03_train_mar.ipynb").is_file()  # partial notebook kept
