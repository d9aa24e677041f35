"""Training engine: both stages at smoke scale, run folders, resume, NaN guard, bf16, DDP (gloo)."""
from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.config import from_params
from workbench.builders import load_domains, load_model
from workbench.engine import TrainingDiverged, pretrain, train_mar
from workbench.methods import MARTrainer
from workbench.runs import RunFolder, load_checkpoint

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
    assert metrics["seed"] == 0 and metrics["stage"] == "pretrain"
    assert metrics["commit"] is None or len(metrics["commit"].split("-")[0]) == 12  # the code that ran
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
    _, reference = load_domains(cfg.data)
    assert cfg.train.epoch_length == "reference"  # the official epoch: one pass over the reference set
    assert len(steps) == 2 * (len(reference) // cfg.train.n_reference)
    metrics = result.metrics
    assert {"initial", "init_threshold", "rank1", "mAP", "mAP_devkit", "mINP"} <= set(metrics)
    # the engine's record: where stage 2 started, its per-epoch curve (epoch 0: the start), T, cost
    record = RunFolder(tmp_path / "mar").record()
    assert record.stage == "mar" and record.state == "finished" and record.start_checkpoint == str(stage1.checkpoint)
    assert [p["epoch"] for p in record.curve] == [0, 1, 2]
    assert record.curve[0]["mAP"] == metrics["initial"]["mAP"] and record.curve[-1]["mAP"] == metrics["mAP"]
    assert record.final_threshold == pytest.approx(float(history[-1]["threshold"]))
    assert record.seconds_per_epoch > 0 and record.epochs_done == 2
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
    with pytest.raises(FileExistsError, match="already holds a run"):
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
    again = engine.pretrain(from_params({"preset": "smoke", "pretrain_epochs": 2}), stage1.run_dir, resume=True)
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
    # epochs and steps counted as the logs count them (1-based); the checkpoint named exists and is epoch 1
    with pytest.raises(TrainingDiverged, match=r"epoch 2/2, step 1/\d+: term 'cml' = nan; the last good "
                                               r"checkpoint is .*nan/checkpoint\.pt \(epoch 1\)"):
        train_mar(cfg, tmp_path / "nan", init_checkpoint=stage1.checkpoint)
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["epoch"] == 0
    assert RunFolder(tmp_path / "nan").state == "failed"
    assert "TrainingDiverged" in RunFolder(tmp_path / "nan").record().error


def test_bf16_autocast_on_cpu(stage1, tmp_path) -> None:
    from workbench.methods import MARTrainer
    from workbench.evaluation import extract_features

    cfg = from_params({"preset": "smoke", "epochs": 2, "amp": True, "eval_every": 0})
    result = train_mar(cfg, tmp_path / "bf16", init_checkpoint=stage1.checkpoint)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    # bf16 on a CPU trains and evaluates channels_last (the format oneDNN's bf16 kernels want); fp32 does not
    trainer = MARTrainer(cfg, tmp_path / "bf16-check", init_checkpoint=stage1.checkpoint)
    conv = next(m for m in trainer.net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert trainer.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not MARTrainer(from_params({"preset": "smoke"}), tmp_path / "fp32-check").channels_last
    # bf16 features stay those of fp32: cosine >= 0.99 per image (the smoke model, the stage-1 weights)
    loader = [{"img": torch.randn(8, 3, *cfg.data.image_size), "pid": torch.arange(8), "camid": torch.zeros(8)}]
    f32, _, _ = extract_features(trainer.net, loader)
    bf16, _, _ = extract_features(trainer.net, loader, amp=True, channels_last=True)
    assert torch.nn.functional.cosine_similarity(f32, bf16).min() >= 0.99


def test_ablation_switches_remove_terms(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 2, "use_cml": False, "use_rj": False, "eval_every": 0})
    history = train_mar(cfg, tmp_path / "abl", init_checkpoint=stage1.checkpoint).history
    assert all(r["cml"] == 0.0 and r["rj"] == 0.0 for r in history)
    assert history[-1]["mdl"] > 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_ddp_and_single(data_env, tmp_path: Path, common: list[str]) -> None:
    """``train`` with the same arguments under torchrun (2 CPU processes, gloo) into tmp_path/ddp and in
    one process into tmp_path/one; both must succeed."""
    env = {**os.environ, "WORKBENCH_DATA": str(data_env), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "workbench", "train", "--run-dir", str(tmp_path / "ddp"), *common]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "workbench", "train", "--run-dir", str(tmp_path / "one"), *common],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]


@pytest.mark.parametrize("terms", ["full", "use_al=false"])
def test_ddp_gloo_two_processes_run_and_agree_with_one_process_within_batchnorm_noise(data_env, stage1, tmp_path,
                                                                                      terms) -> None:
    """torchrun --nproc_per_node=2 -m workbench train on CPU (gloo) vs one process on the same data.

    A smoke-level agreement, not an equality: each rank's BatchNorm sees half the batch, so losses
    agree only loosely (15 % after one epoch, 35 % later); the mined-pair counts and memory rows, computed on the gathered
    batch, agree exactly. ``use_al=false`` (Table 3's "w/o RAL"): no loss moves the agents, which
    must be frozen, or DDP fails on a parameter without gradient.
    """
    extra = [] if terms == "full" else ["--set", terms]
    common = ["--preset", "smoke", "--device", "cpu", "--set", "epochs=2", "--set", "eval_every=0",
              "--init", str(stage1.checkpoint), *extra]
    _train_ddp_and_single(data_env, tmp_path, common)
    ddp, one = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    # same schedule, same global batch: the losses differ only through BatchNorm's per-rank statistics.
    # After one epoch they agree within 15 %; the smoke model then drifts apart chaotically (L_AL steps at
    # lr x 50), measured 4.26 vs 3.97 after epoch 1 and 5.10 vs 4.23 after epoch 2, so later epochs get 35 %
    # (a rank that summed instead of averaged its gradients would be off by 2x)
    for epoch, (a, b) in enumerate(zip(ddp["history"], one["history"])):
        tolerance = 0.15 if epoch == 0 else 0.35
        for key in ("al", "loss"):
            assert math.isfinite(a[key]) and a[key] == pytest.approx(b[key], rel=tolerance), (epoch, key, a[key], b[key])
    # the target-side terms are computed on the gathered global batch: same number of mined pairs
    for a, b in zip(ddp["history"], one["history"]):
        assert a["n_pos"] + a["n_neg"] == b["n_pos"] + b["n_neg"]
    assert ddp["history"][-1]["n_pos"] + ddp["history"][-1]["n_neg"] > 0
    assert ddp["criterion"]["visited"].sum() == one["criterion"]["visited"].sum()
    assert float(ddp["criterion"]["threshold"]) == pytest.approx(float(one["criterion"]["threshold"]), abs=0.05)
    # only rank 0 wrote the run folder
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_agents_are_frozen_without_agent_loss(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 2, "eval_every": 0, "use_al": False})
    result = train_mar(cfg, tmp_path / "noal", init_checkpoint=stage1.checkpoint)
    before = load_checkpoint(stage1.checkpoint)["model"]["agents"]
    after = load_checkpoint(result.checkpoint)["model"]["agents"]
    assert torch.equal(before, after)  # no gradient and no weight decay


def test_milestones_mean_what_the_official_trainer_did() -> None:
    """Official: scheduler.step() at the start of each epoch (PyTorch 0.4), so milestones (12, 17)
    decay the lr from 0-based epochs 11 and 16."""
    from bisect import bisect_right

    from workbench.builders import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = build_scheduler(opt, (12, 17), 0.1)
    got = []
    for epoch in range(20):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    official = [2e-4 * 0.1 ** bisect_right([12, 17], epoch + 1) for epoch in range(20)]
    assert got == pytest.approx(official)
    assert got[10] == pytest.approx(2e-4) and got[11] == pytest.approx(2e-5) and got[16] == pytest.approx(2e-6)


@pytest.mark.parametrize("init_images", ["augmented", "clean"])
def test_loss_initialization_images(stage1, tmp_path, init_images) -> None:
    """Official: the CML centres and T come from one pass of the augmented, shuffled, drop_last training
    loader of the target set; "clean" uses every target training image once, un-augmented."""
    cfg = from_params({"preset": "smoke", "init_images": init_images, "n_target": 10})
    trainer = MARTrainer(cfg, tmp_path / "init", init_checkpoint=stage1.checkpoint)
    feats, camids, index = trainer._initialization_features()
    n = len(trainer.target.train)
    assert feats.shape[0] == len(camids) == len(index)
    if init_images == "augmented":
        assert len(index) == n // 10 * 10 < n  # drop_last
        assert index.tolist() != sorted(index.tolist())  # shuffled
        assert len(set(index.tolist())) == len(index)
    else:
        assert index.tolist() == list(range(n))
    assert torch.equal(camids.cpu(), torch.tensor([trainer.target.train[i].camid for i in index.tolist()]))


def test_resume_with_another_config_is_refused_and_config_json_kept(stage1, tmp_path, capsys) -> None:
    import shutil

    from workbench.cli import main
    from workbench.errors import RunFolderError

    run = tmp_path / "copy"
    shutil.copytree(stage1.run_dir, run)
    saved = (run / "config.json").read_bytes()
    assert main(["pretrain", "--resume", "--run-dir", str(run), "--set", "pretrain_lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pretrain_lr" in err and "Traceback" not in err
    assert (run / "config.json").read_bytes() == saved
    with pytest.raises(RunFolderError, match="pretrain_epochs"):  # the smoke preset has 1 epoch, the run 2
        pretrain(from_params({"preset": "smoke"}), run, resume=True)
    # its own configuration (saved + nothing new) reloads it; config.json is never rewritten
    assert main(["pretrain", "--resume", "--run-dir", str(run)]) == 0
    assert "rank-1" in capsys.readouterr().out
    assert (run / "config.json").read_bytes() == saved


def test_a_crash_between_last_checkpoint_and_metrics_is_evaluated_on_resume(data_env, tmp_path, monkeypatch,
                                                                            capsys) -> None:
    from workbench import faults
    from workbench.cli import main
    from workbench.engine import load_result

    cfg = from_params({"preset": "smoke"})
    faults.reset()
    monkeypatch.setenv(faults.ENV, "enospc@metrics.json")  # the disk fills up at the very last write
    with pytest.raises(OSError, match="No space left"):
        pretrain(cfg, tmp_path / "pre")
    monkeypatch.delenv(faults.ENV)
    assert (tmp_path / "pre" / "checkpoint.pt").is_file() and not (tmp_path / "pre" / "metrics.json").exists()
    assert load_result(tmp_path / "pre") is None  # not finished
    assert not list((tmp_path / "pre").glob(".*.tmp"))  # the temporary file was removed
    assert main(["pretrain", "--resume", "--run-dir", str(tmp_path / "pre")]) == 0
    assert "rank-1" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert 0.0 <= metrics["rank1"] <= 1.0 and metrics["stage"] == "pretrain"


def test_progress_lines_when_stderr_is_not_a_tty(data_env, tmp_path, caplog) -> None:
    import logging

    cfg = from_params({"preset": "smoke", "log_every_s": 0.0})
    with caplog.at_level(logging.INFO, logger="workbench"):
        pretrain(cfg, tmp_path / "pre")
    text = caplog.text
    assert "pretrain: preparing" in text  # first line at once
    assert "decoding" in text and "images" in text  # the image cache says what it does
    assert "pretrain epoch 1/1 step 1/" in text and "images/s" in text and "ETA" in text
    assert "evaluating on" in text



def test_smoke_shows_bars_and_a_notebook_without_bars_says_so(data_env, tmp_path, monkeypatch, capsys) -> None:
    """Issue 38: smoke trained silently in notebooks 00 and 03 (progress=False): 10-20 s of [*]."""
    from workbench.engine import trainer as tr

    assert from_params({"preset": "smoke"}).train.progress  # bars in a notebook and on a terminal
    monkeypatch.setattr(tr, "in_notebook", lambda: True)
    monkeypatch.setenv("CI", "true")  # bars off: one line says so
    pretrain(from_params({"preset": "smoke", "tensorboard": False}), tmp_path / "ci")
    err = capsys.readouterr().err
    assert "stage 1: 1 epoch(s) of 4 steps to train, without progress bars (CI is set in the environment)" in err
    pretrain(from_params({"preset": "smoke", "tensorboard": False, "progress": False}), tmp_path / "off")
    assert "without progress bars (progress=False)" in capsys.readouterr().err

def test_the_eta_leaves_out_the_slow_first_step(monkeypatch, caplog) -> None:
    """Step 1 of an epoch starts the loader's workers (on a real target it printed an ETA of 18:48 for an
    epoch of 5.7 min): the ETA is the pace after it, or at step 1 the previous epoch's pace."""
    import logging

    from workbench.engine import progress as pg

    clock = iter([0.0, 60.0, 70.0, 80.0])  # start; step 1 took 60 s, then 10 s a step
    monkeypatch.setattr(pg.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="workbench.engine"):
        log = pg.ProgressLog("mar", 0, 2, 30, every_s=1000.0, enabled=True)
        log.step(1, 16, 1.0)
        log.step(2, 32, 1.0)  # logged at once: step 1's line had no ETA
        log.step(3, 48, 1.0)  # not logged (every_s)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["mar epoch 1/2 step 1/30: loss 1, 0.3 images/s, epoch ETA after the next step",
                     "mar epoch 1/2 step 2/30: loss 1, 0.5 images/s, epoch ETA 4:40"], lines
    caplog.clear()
    clock = iter([100.0, 160.0])
    monkeypatch.setattr(pg.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="workbench.engine"):
        pg.ProgressLog("mar", 1, 2, 30, every_s=1000.0, enabled=True, previous_s_per_step=10.0).step(1, 16, 1.0)
    assert caplog.records[0].getMessage().endswith("epoch ETA 4:50")  # 29 steps at the last epoch's pace


def test_tensorboard_events_and_projector_are_readable(stage1, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = from_params({"preset": "smoke", "epochs": 2, "eval_every": 1})
    result = train_mar(cfg, tmp_path / "tb", init_checkpoint=stage1.checkpoint)
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/al", "train/rj", "train/mdl", "train/cml", "train/threshold", "train/n_pos",
                "train/n_neg", "train/lr", "train/images_per_s", "eval/rank1", "eval/mAP", "eval/mINP"):
        assert tag in tags, tag
    steps = len(_rows(result.run_dir / "steps.csv"))
    # stage 2's steps continue after stage 1's, so that the two stages' curves do not lie on top of each other
    offset = len(_rows(stage1.run_dir / "steps.csv"))
    assert offset > 0
    assert [e.step for e in events.Scalars("train/loss")] == list(range(offset, offset + steps))
    losses = [float(r["loss"]) for r in _rows(result.run_dir / "steps.csv")]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    evals = events.Scalars("eval/mAP")  # before training (where stage 1 ended) and after each epoch, in percent
    assert len(evals) == 3 and evals[-1].value == pytest.approx(100 * result.metrics["mAP"], rel=1e-5)
    stage1_events = EventAccumulator(str(stage1.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    stage1_events.Reload()
    assert max(e.step for e in stage1_events.Scalars("train/loss")) == offset - 1
    assert evals[0].step == offset == stage1_events.Scalars("eval/mAP")[-1].step
    # the projector: soft multilabels and features of the target training set, sprites, metadata
    config = (result.run_dir / "tensorboard" / "projector_config.pbtxt").read_text()
    assert "target/soft_multilabels" in config and "target/features" in config and "sprite" in config
    target, _ = load_domains(cfg.data)
    meta = sorted((result.run_dir / "tensorboard").rglob("metadata.tsv"))
    assert len(meta) == 2
    lines = meta[0].read_text().splitlines()
    assert lines[0] == "pid\tcamera" and len(lines) == len(target.train) + 1


def test_no_tensorboard_writes_no_events(stage1, tmp_path) -> None:
    cfg = from_params({"preset": "smoke", "epochs": 1, "eval_every": 0, "tensorboard": False})
    result = train_mar(cfg, tmp_path / "notb", init_checkpoint=stage1.checkpoint)
    assert not (result.run_dir / "tensorboard").exists()


def test_term_gradient_shares_add_up_to_the_update(stage1, tmp_path) -> None:
    """grad_terms_every: each term's share of the shared weights' update, <g_i, g> / |g|^2, sums to 1."""
    cfg = from_params({"preset": "smoke", "epochs": 2, "eval_every": 0, "grad_terms_every": 2,
                       "tensorboard": False})
    train_mar(cfg, tmp_path / "grad", init_checkpoint=stage1.checkpoint)
    steps = _rows(tmp_path / "grad" / "steps.csv")
    diagnosed = [r for r in steps if r.get("share_al")]
    assert len(diagnosed) == (len(steps) + 1) // 2  # every second step
    for row in diagnosed:
        shares = [float(row[f"share_{t}"]) for t in ("al", "rj", "cml", "mdl")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3)
        assert float(row["grad_total"]) > 0
    assert all(float(r["share_mdl"]) == 0.0 for r in diagnosed if r["epoch"] == "0")  # L_MDL off in epoch 1
    assert any(float(r["share_mdl"]) != 0.0 for r in diagnosed if r["epoch"] == "1")
    history = _rows(tmp_path / "grad" / "history.csv")
    assert "share_rj" in history[0]  # epoch means of the diagnosed steps


def test_ddp_gloo_trains_the_clustering_baseline(data_env, stage1, tmp_path) -> None:
    """method=cluster_contrast under torchrun (2 CPU processes, gloo): rank 0 clusters and broadcasts the
    pseudo labels, the memory is updated with every rank's images (the trainer checks after each epoch
    that the ranks' weights and memory rows are identical), and the first clustering, made by the
    stage-1 model before any step, equals one process's."""
    common = ["--preset", "smoke", "--device", "cpu", "--set", "epochs=2", "--set", "eval_every=0", "--set",
              "method=cluster_contrast", "--set", "n_target=16", "--set", "cc_min_samples=2", "--set", "cc_eps=0.7",
              "--init", str(stage1.checkpoint), "--no-tensorboard"]
    _train_ddp_and_single(data_env, tmp_path, common)
    ddp, one = _rows(tmp_path / "ddp" / "history.csv"), _rows(tmp_path / "one" / "history.csv")
    assert len(ddp) == len(one) == 2
    for key in ("n_clusters", "n_outliers", "purity"):
        assert float(ddp[0][key]) == pytest.approx(float(one[0][key]))
    assert all(math.isfinite(float(r["cc"])) for r in ddp)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
