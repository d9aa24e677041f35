"""Training engine: both stages at smoke scale, run folders, resume, NaN guard, bf16, DDP (gloo)."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.config import from_params
from workbench.engine import MARTrainer, TrainingDiverged, load_domains, load_model, pretrain, train_mar
from workbench.runs import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_env(tmp_path_factory):
    """Synthetic smoke data generated once for the module, under a temporary WORKBENCH_DATA."""
    root = tmp_path_factory.mktemp("data")
    old = os.environ.get("WORKBENCH_DATA")
    os.environ["WORKBENCH_DATA"] = str(root)
    yield root
    if old is None:
        os.environ.pop("WORKBENCH_DATA", None)
    else:
        os.environ["WORKBENCH_DATA"] = old


@pytest.fixture(scope="module")
def stage1(data_env, tmp_path_factory):
    cfg = from_params({"preset": "smoke", "pretrain_epochs": 2})
    return pretrain(cfg, tmp_path_factory.mktemp("runs") / "pre")


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_pretrain_run_folder(stage1) -> None:
    run = stage1.run_dir
    for name in ("config.json", "history.csv", "steps.csv", "metrics.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    history = _rows(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert {"loss", "al", "lr", "seconds", "images_per_s", "train_acc", "rank1", "mAP"} <= set(history[0])
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("rank1", "rank5", "rank10", "mAP", "mAP_devkit", "mINP"):
        assert 0.0 <= metrics[key] <= 1.0
    state = load_checkpoint(run / "checkpoint.pt")  # weights_only=True
    assert state["stage"] == "pretrain" and state["epoch"] == 1
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "history"} <= set(state)
    net = load_model(run / "checkpoint.pt")
    assert net.num_agents == state["num_agents"] == 16


def test_pretraining_learns_the_reference_identities(data_env, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "pretrain_epochs": 6, "pretrain_lr": 0.05})
    history = pretrain(cfg, tmp_path / "pre").history
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["train_acc"] > history[0]["train_acc"]


def test_train_mar_run_folder_and_terms(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 2, "eval_every": 1})
    result = train_mar(cfg, tmp_path / "mar", init_checkpoint=stage1.checkpoint)
    history = _rows(tmp_path / "mar" / "history.csv")
    assert len(history) == 2
    for term in ("loss", "al", "rj", "mdl", "cml", "threshold", "n_pos", "n_neg", "rank1", "mAP", "images_per_s"):
        assert term in history[0], term
    assert float(history[0]["mdl"]) == 0.0  # warm-up epoch
    assert float(history[1]["n_pos"]) + float(history[1]["n_neg"]) > 0  # mining after warm-up
    steps = _rows(tmp_path / "mar" / "steps.csv")
    target, _ = load_domains(cfg.data)
    assert len(steps) == 2 * (len(target.train) // cfg.train.n_target)
    metrics = result.metrics
    assert {"initial", "init_threshold", "rank1", "mAP", "mAP_devkit", "mINP"} <= set(metrics)
    state = load_checkpoint(tmp_path / "mar" / "checkpoint.pt")
    assert {"memory", "visited", "center_mean", "center_std", "threshold"} <= set(state["criterion"])
    assert state["criterion"]["visited"].any()


def test_resume_reaches_the_same_result(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 3, "eval_every": 0})
    full = train_mar(cfg, tmp_path / "full", init_checkpoint=stage1.checkpoint)

    class Interrupt(Exception):
        pass

    def stop_after_first(trainer, epoch, row):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_mar(cfg, tmp_path / "cut", init_checkpoint=stage1.checkpoint, callbacks=[stop_after_first])
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 0
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train_mar(cfg, tmp_path / "cut", init_checkpoint=stage1.checkpoint)
    resumed = train_mar(cfg, tmp_path / "cut", init_checkpoint=stage1.checkpoint, resume=True)
    assert resumed.metrics["rank1"] == full.metrics["rank1"] and resumed.metrics["mAP"] == full.metrics["mAP"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["criterion"]:
        assert torch.equal(a["criterion"][k], b["criterion"][k]), k
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


def test_resuming_a_finished_run_reloads_it_without_building_a_trainer(stage1, monkeypatch) -> None:
    import workbench.engine as engine

    def no_trainer(*args, **kwargs):
        raise AssertionError("a finished run must not rebuild model, data or caches")

    monkeypatch.setattr(engine, "PretrainTrainer", no_trainer)
    again = engine.pretrain(from_params({"preset": "smoke"}), stage1.run_dir, resume=True)
    for key in ("rank1", "rank5", "rank10", "mAP", "mAP_devkit", "mINP"):
        assert again.metrics[key] == pytest.approx(stage1.metrics[key])
    assert list(again.metrics["cmc"]) == pytest.approx(list(stage1.metrics["cmc"]))
    assert [r["epoch"] for r in again.history] == [r["epoch"] for r in stage1.history]
    assert again.history[-1]["loss"] == pytest.approx(stage1.history[-1]["loss"])
    assert engine.load_result(stage1.run_dir / "missing") is None


def test_nan_guard_names_epoch_step_term_and_keeps_checkpoint(stage1, tmp_path, monkeypatch) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 2, "eval_every": 0})
    original = MARTrainer.compute_losses

    def poisoned(self, batch, epoch):
        losses = original(self, batch, epoch)
        if epoch == 1:
            losses["cml"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(MARTrainer, "compute_losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 0: term 'cml' = nan.*checkpoint\.pt"):
        train_mar(cfg, tmp_path / "nan", init_checkpoint=stage1.checkpoint)
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["epoch"] == 0


def test_bf16_autocast_on_cpu(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 2, "amp": True, "eval_every": 0})
    result = train_mar(cfg, tmp_path / "bf16", init_checkpoint=stage1.checkpoint)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


def test_ablation_switches_remove_terms(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 2, "use_cml": False, "use_rj": False, "eval_every": 0})
    history = train_mar(cfg, tmp_path / "abl", init_checkpoint=stage1.checkpoint).history
    assert all(r["cml"] == 0.0 and r["rj"] == 0.0 for r in history)
    assert history[-1]["mdl"] > 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes_matches_single_process(data_env, stage1, tmp_path) -> None:
    """torchrun --nproc_per_node=2 -m workbench train on CPU (gloo) vs one process on the same data."""
    common = ["--preset", "smoke", "--device", "cpu", "--set", "epochs=2", "--set", "eval_every=0",
              "--init", str(stage1.checkpoint)]
    env = {**os.environ, "WORKBENCH_DATA": str(data_env), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "workbench", "train", "--run-dir", str(tmp_path / "ddp"), *common]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "workbench", "train", "--run-dir", str(tmp_path / "one"), *common],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    # same schedule, same global batch: the per-epoch losses agree within BatchNorm's per-rank statistics
    for a, b in zip(ddp["history"], one["history"]):
        assert a["al"] == pytest.approx(b["al"], rel=0.15)
        assert a["loss"] == pytest.approx(b["loss"], rel=0.15)
    # the target-side terms are computed on the gathered global batch: same number of mined pairs
    for a, b in zip(ddp["history"], one["history"]):
        assert a["n_pos"] + a["n_neg"] == b["n_pos"] + b["n_neg"]
    assert ddp["history"][-1]["n_pos"] + ddp["history"][-1]["n_neg"] > 0
    assert ddp["criterion"]["visited"].sum() == one["criterion"]["visited"].sum()
    assert float(ddp["criterion"]["threshold"]) == pytest.approx(float(one["criterion"]["threshold"]), abs=0.05)
    # only rank 0 wrote the run folder
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
