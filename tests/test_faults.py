"""Fault injection: real kills, a full disk, a second writer, corrupt and non-finite checkpoints, bad input.

Every fault is injected for real — ``SIGKILL`` of a training process at a named point of its run
(:mod:`workbench.faults`), ``ENOSPC`` raised by a write, a second process locking the folder, broken
files on disk — and the test asserts what a user sees: the resumed run equals the uninterrupted one
(weights, metrics, every CSV row but the timings), or the command fails with one ``error:`` line
naming the file, exit status 2. docs/cli.md's reliability paragraph lists the cases as pytest collects
them (``python -m workbench report --readme docs/cli.md``).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench import faults
from workbench.cli import main
from workbench.config import from_params
from workbench.engine import pretrain
from workbench.runs import RunFolder, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.faults  # `make test` runs them; `make test-fast` leaves them out

#: (kill point, what it stands for) — each kills a 3-epoch stage-2 run, which then resumes with
#: ``train --run-dir R --resume`` alone (config, stage and start checkpoint come from the folder)
KILLS = [
    ("step#7", "mid-epoch (SIGKILL after the 7th step of epoch 2)"),
    ("history.csv#1", "before the first checkpoint (while the first epoch's rows are written)"),
    ("checkpoint.pt#2", "mid-write of the second checkpoint (its temporary file left behind)"),
    ("after-checkpoint#2", "right after the second checkpoint's rename"),
    ("steps.csv#3", "between the last epoch's history row and its steps rows"),
    ("after-checkpoint#3", "between the final checkpoint and metrics.json"),
    ("metrics.json#1", "while metrics.json is written"),
]
TIMINGS = {"seconds", "images_per_s"}  # the only columns a resumed run may differ in
EPOCHS = ["--set", "epochs=3", "--set", "eval_every=0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of the processes under test: synthetic smoke data in a module folder, one thread."""
    data = tmp_path_factory.mktemp("data")
    out = {k: v for k, v in os.environ.items() if k != faults.ENV}
    out |= {"WORKBENCH_DATA": str(data), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    return out


@pytest.fixture(scope="module")
def stage1(env, tmp_path_factory) -> Path:
    old = os.environ.get("WORKBENCH_DATA")
    os.environ["WORKBENCH_DATA"] = env["WORKBENCH_DATA"]
    try:
        result = pretrain(from_params({"preset": "smoke", "tensorboard": False}), tmp_path_factory.mktemp("s1") / "pre")
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_DATA", None)
        else:
            os.environ["WORKBENCH_DATA"] = old
    return result.checkpoint


def workbench(env: dict, *args: str, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m workbench ARGS`` in its own process, with a fail point armed when given."""
    run_env = dict(env) | ({faults.ENV: fault} if fault else {})
    return subprocess.run([sys.executable, "-m", "workbench", *args], env=run_env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_as_in_a_terminal)


def _as_in_a_terminal() -> None:
    """SIGINT at its default in the child, as a terminal leaves it: under ``nohup ... &`` (or a CI runner that
    starts the suite in the background) the shell sets it to "ignore", the child inherits that, Python then
    installs no KeyboardInterrupt handler and a Ctrl-C test would see the run finish instead."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def resume(env: dict, run: Path, monkeypatch) -> int:
    """``train --run-dir R --resume`` alone (no --init, no --set: the folder says), in this process (the
    killed run was another process; resuming here saves a second interpreter start)."""
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    monkeypatch.delenv(faults.ENV, raising=False)
    # the killed and the reference runs ran on one thread (OMP_NUM_THREADS=1); so must the resume, or
    # its reductions add up in another order and the weights differ in the last bits
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", env["OMP_NUM_THREADS"])  # the run's thread choice reads it
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    try:
        return main(["train", "--run-dir", str(run), "--resume"])
    finally:
        torch.set_num_threads(threads)


def train(env: dict, run: Path, stage1: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return workbench(env, "train", "--preset", "smoke", "--init", str(stage1), "--run-dir", str(run),
                     "--no-tensorboard", *EPOCHS, *extra, fault=fault)


def rows(path: Path, drop: set[str] = TIMINGS) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def assert_same_run(run: Path, reference: Path) -> None:
    """The resumed run equals the uninterrupted one: weights and loss state, metrics, every CSV row."""
    got, want = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert got["epoch"] == want["epoch"]
    for part in ("model", "criterion"):
        for key, value in want[part].items():
            assert torch.equal(got[part][key], value), f"{part}.{key} differs after the resume"
    for name in ("history.csv", "steps.csv"):
        assert rows(run / name) == rows(reference / name), f"{name} differs after the resume"
    drop = {"commit"} | TIMINGS  # metrics.json holds the evaluation's seconds
    a, b = json.loads((run / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"
    assert RunFolder(run).state == "finished"


def one_error_line(proc: subprocess.CompletedProcess | tuple[int, str], *, names: str | Path) -> str:
    code, err = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    lines = [line for line in err.strip().splitlines() if line.strip() and " INFO " not in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(names) in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (but its lock), for "nothing was touched"."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def reference_run(env, stage1, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "mar"
    proc = train(env, run, stage1)
    assert proc.returncode == 0, proc.stderr
    return run


# ----------------------------------------------------------------------------- kills

@pytest.mark.parametrize("point", [p for p, _ in KILLS], ids=[p for p, _ in KILLS])
def test_a_run_killed_anywhere_resumes_to_the_same_result(env, stage1, reference_run, tmp_path, point,
                                                          monkeypatch) -> None:
    run = tmp_path / "mar"
    killed = train(env, run, stage1, fault=f"kill@{point}")
    assert killed.returncode == -signal.SIGKILL, f"the fail point {point} was never reached:\n{killed.stderr}"
    assert RunFolder(run).state == "interrupted"
    assert resume(env, run, monkeypatch) == 0
    assert_same_run(run, reference_run)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_a_run_in_one_line_and_it_resumes(env, stage1, reference_run, tmp_path, signal_name,
                                                               monkeypatch) -> None:
    """Issue 36, case 8: Ctrl-C (SIGINT at its default, as a terminal sends it; SIGTERM as ``kill`` and
    schedulers send it) ended in a 34-line traceback with run.json left "running"."""
    run = tmp_path / "mar"
    action = {"SIGINT": "interrupt", "SIGTERM": "terminate"}[signal_name]
    stopped = train(env, run, stage1, fault=f"{action}@after-checkpoint#1")
    lines = [line for line in stopped.stderr.strip().splitlines() if " INFO " not in line]
    assert stopped.returncode == 130 and len(lines) == 1, stopped.stderr
    assert lines[0] == (f"interrupted: stage 2 in {run} stopped, its checkpoint holds epoch 1/3; resume it with: "
                        f"python -m workbench train --run-dir {run} --resume")
    assert RunFolder(run).state == "interrupted" and RunFolder(run).record().state == "interrupted"
    assert RunFolder(run).record().epochs_done == 1
    assert resume(env, run, monkeypatch) == 0
    assert_same_run(run, reference_run)


# ----------------------------------------------------------------------------- a full disk

@pytest.mark.parametrize("point", ["checkpoint.pt#2", "metrics.json#1"])
def test_a_full_disk_keeps_the_last_checkpoint_and_resumes(env, stage1, reference_run, tmp_path, point,
                                                           monkeypatch) -> None:
    run = tmp_path / "mar"
    full = train(env, run, stage1, fault=f"enospc@{point}")
    assert "No space left on device" in one_error_line(full, names=run)
    assert not list(run.glob(".*.tmp"))  # the temporary file went with the failed write
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == (0 if point.startswith("checkpoint") else 2)
    assert RunFolder(run).state == "failed" and "No space left" in RunFolder(run).record().error
    assert resume(env, run, monkeypatch) == 0
    assert_same_run(run, reference_run)


def test_a_full_disk_before_the_projector_is_repaired_on_resume(env, stage1, tmp_path, monkeypatch) -> None:
    run = tmp_path / "mar"
    args = ("train", "--preset", "smoke", "--init", str(stage1), "--run-dir", str(run), *EPOCHS[:2])
    full = workbench(env, *args, fault="enospc@projector")
    assert "No space left on device" in one_error_line(full, names=run) and not (run / "metrics.json").exists()
    assert resume(env, run, monkeypatch) == 0
    metadata = list((run / "tensorboard").rglob("metadata.tsv"))
    assert metadata and all(p.stat().st_size > 0 for p in metadata)
    assert RunFolder(run).state == "finished"


def mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``folder`` (root only); False where that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until not one byte more fits."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(bytes(chunk))
            except OSError:
                pass


def train_until_the_disk_fills(env: dict, run: Path, stage1: Path) -> subprocess.CompletedProcess:
    """Stage 2 on a tmpfs that this test fills once the first checkpoint is written (the run paused
    meanwhile with SIGSTOP): every write after it fails, run.json's too."""
    args = [sys.executable, "-m", "workbench", "train", "--preset", "smoke", "--init", str(stage1), "--run-dir",
            str(run), *EPOCHS]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
        fill(run.parent)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


#: (tmpfs size, whether the test fills it after the first checkpoint, the fail point standing in for it
#: where no tmpfs can be mounted): a smoke checkpoint is 18 MB, so 2 MiB holds none and 30 MiB one
DISKS = {"2MiB": ("2m", False, "checkpoint.pt#1"), "30MiB": ("30m", False, "checkpoint.pt#2"),
         "64MiB-filled": ("64m", True, "history.csv#2")}


@pytest.mark.parametrize("disk", list(DISKS))
def test_a_full_disk_is_one_line_naming_the_folder(env, stage1, reference_run, tmp_path, disk, monkeypatch) -> None:
    """Issue 36, cases 9-11: a run folder on a small tmpfs (TensorBoard on, as by default) ended in a
    30-59-line ``OSError`` traceback that did not name the folder, and a disk filled after the first
    checkpoint left run.json "running". Now one line names the file, the folder and the resume, run.json
    says failed, and the run resumes exactly once there is room."""
    size, filled, point = DISKS[disk]
    mounted = mount_tmpfs(tmp_path / "disk", size)
    run = tmp_path / "disk" / "mar"
    try:
        if mounted and filled:
            full = train_until_the_disk_fills(env, run, stage1)
        else:
            full = workbench(env, "train", "--preset", "smoke", "--init", str(stage1), "--run-dir", str(run), *EPOCHS,
                             fault=None if mounted else f"enospc@{point}")
        line = one_error_line(full, names=run)
        assert "No space left on device" in line and f"train --run-dir {run} --resume" in line
        assert RunFolder(run).state == "failed" and RunFolder(run).record().state == "failed"
        assert not list(run.glob(".*.tmp"))
        moved = tmp_path / "mar"  # room again: the folder where there is space
        shutil.copytree(run, moved)
    finally:
        if mounted:
            subprocess.run(["umount", str(tmp_path / "disk")], check=True)
    assert resume(env, moved, monkeypatch) == 0
    assert_same_run(moved, reference_run)


# ----------------------------------------------------------------------------- one run per folder

def test_a_fresh_start_in_a_folder_holding_a_run_is_refused(env, stage1, reference_run, tmp_path) -> None:
    """Issue 36, case 1: a copy of a finished run without its checkpoint took a fresh start (another
    seed); killed after its first checkpoint, the folder read finished, with the new run's config.json
    beside the old run's metrics.json."""
    run = tmp_path / "h1"
    shutil.copytree(reference_run, run)
    (run / "checkpoint.pt").unlink()
    before = snapshot(run)
    fresh = train(env, run, stage1, "--seed", "11", fault="kill@after-checkpoint#1")
    line = one_error_line(fresh, names=run)
    assert "already holds a run (config.json, metrics.json)" in line and "--resume" in line
    assert snapshot(run) == before
    assert RunFolder(run).config().train.seed == json.loads((run / "metrics.json").read_text())["seed"] == 0


def test_no_file_of_an_earlier_run_survives_a_fresh_start(env, stage1, reference_run, tmp_path) -> None:
    """Issue 36, case 1: what an earlier run left beside no config, checkpoint or metrics (its rows, its
    record, its TensorBoard events) is removed before a fresh start writes anything: killed before its
    first rows, the new run's folder holds none of the old run's."""
    run = tmp_path / "h1"
    shutil.copytree(reference_run, run)
    for name in ("checkpoint.pt", "config.json", "metrics.json"):
        (run / name).unlink()
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old")
    killed = train(env, run, stage1, "--seed", "11", fault="kill@history.csv#1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in run.iterdir() if not p.name.endswith(".tmp")) == [".lock", "config.json", "run.json"]
    assert RunFolder(run).config().train.seed == RunFolder(run).record().seed == 11
    assert RunFolder(run).state == "interrupted"


def test_a_run_dir_that_is_a_file_is_one_error_line(env, stage1, tmp_path, capsys, monkeypatch) -> None:
    """Issue 36, case 12: ``--run-dir`` naming a regular file was a FileExistsError traceback."""
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    path = tmp_path / "notes.txt"
    path.write_text("not a run\n")
    for argv in (["train", "--preset", "smoke", "--init", str(stage1), "--run-dir", str(path), "--no-tensorboard"],
                 ["pretrain", "--preset", "smoke", "--run-dir", str(path), "--no-tensorboard"],
                 ["train", "--run-dir", str(path), "--resume"]):
        line = one_error_line((main(argv), capsys.readouterr().err), names=path)
        assert "a file, not a run folder" in line
    assert path.read_text() == "not a run\n"


def test_a_failed_start_leaves_no_folder_behind(env, tmp_path, capsys, monkeypatch) -> None:
    """Issue 36, also seen: a start that failed at once (here a bad ``--init``) left a run folder
    holding only ``.lock``."""
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    run = tmp_path / "new"
    code = main(["train", "--preset", "smoke", "--init", str(bad), "--run-dir", str(run), "--no-tensorboard"])
    one_error_line((code, capsys.readouterr().err), names=bad)
    assert not run.exists()


class _Crafted:
    """Unpickled by a trusting loader (``weights_only=False``), it makes a folder: what a crafted
    "checkpoint" could do instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


@pytest.mark.parametrize("option", ["--pretrained", "--init"])
def test_a_crafted_pickle_is_not_a_weights_file_and_nothing_more(env, tmp_path, option, capsys, monkeypatch) -> None:
    """Issue 36, also seen: ``pretrain --pretrained evil.pt`` showed torch's advice to retry with
    ``weights_only=False``, which would run what the file holds; the file is named as not a weights
    file, and nothing else is said (nor run, nor left behind)."""
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Crafted(str(marker))}, evil)
    run = tmp_path / "run"
    command = ["pretrain", "--pretrained"] if option == "--pretrained" else ["train", "--init"]
    code = main([*command, str(evil), "--preset", "smoke", "--run-dir", str(run), "--no-tensorboard"])
    line = one_error_line((code, capsys.readouterr().err), names=evil)
    assert "not a weights file" in line and "weights_only" not in line and "can still be loaded" not in line
    assert not marker.exists() and not run.exists()


#: issue 36, cases 4-7: ``--resume`` where it cannot continue what is there once trained something else
RESUMES = ["pretrain on no such folder", "train on an empty folder", "train with another --init",
           "train on a stage-1 folder"]


def _resume_case(case: str, tmp_path: Path, stage1: Path, reference_run: Path) -> tuple[list[str], Path, str]:
    """``(argv, the folder the error must name, what it must say)`` of a case of RESUMES."""
    if case == "pretrain on no such folder":  # once trained a fresh stage 1 of the default preset
        run = tmp_path / "no-such-run"
        return ["pretrain", "--run-dir", str(run), "--resume", "--pretrain-epochs", "1"], run, "no such folder"
    if case == "train on an empty folder":  # once answered "train needs --init"
        run = tmp_path / "empty"
        run.mkdir()
        return ["train", "--run-dir", str(run), "--resume"], run, "nothing to resume"
    if case == "train with another --init":  # once ignored --init without a word
        other = tmp_path / "other.pt"
        shutil.copy(stage1, other)
        run = tmp_path / "mar"
        shutil.copytree(reference_run, run)
        return ["train", "--run-dir", str(run), "--resume", "--init", str(other)], run, f"not {other}"
    run = tmp_path / "pre"  # once printed "after joint training" with the stage-1 metrics
    shutil.copytree(stage1.parent, run)
    return ["train", "--run-dir", str(run), "--resume"], run, f"pretrain --run-dir {run} --resume"


@pytest.mark.parametrize("case", RESUMES)
def test_resume_refuses_what_it_cannot_continue(env, stage1, reference_run, tmp_path, case, capsys,
                                                monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    argv, run, says = _resume_case(case, tmp_path, stage1, reference_run)
    before = snapshot(run) if run.exists() else None
    line = one_error_line((main(argv), capsys.readouterr().err), names=run)
    assert says in line, line
    assert (snapshot(run) if run.exists() else None) == before  # nothing written, nothing trained


# ----------------------------------------------------------------------------- two writers

def test_a_second_writer_is_refused_while_the_first_holds_the_folder(env, stage1, tmp_path) -> None:
    run = tmp_path / "mar"
    holder = RunFolder(run)
    holder.acquire()  # the first writer (this process)
    try:
        second = train(env, run, stage1, "--seed", "7")
        line = one_error_line(second, names=run)
        assert f"pid {os.getpid()}" in line
        assert not (run / "config.json").exists()  # nothing of the second writer landed
        assert RunFolder(run).state in ("new", "running")
    finally:
        holder.release()
    assert train(env, run, stage1).returncode == 0  # free again


def test_a_writer_killed_with_sigkill_never_leaves_the_folder_locked(env, stage1, tmp_path) -> None:
    run = tmp_path / "mar"
    code = f"from workbench.runs import RunFolder; RunFolder({str(run)!r}).acquire(); print('locked', flush=True); " \
           "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert RunFolder(run).state == "new" and RunFolder(run).locked_by_other()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert not RunFolder(run).locked_by_other()
    assert train(env, run, stage1).returncode == 0


# ----------------------------------------------------------------------------- broken checkpoints

def _broken(tmp_path: Path, kind: str, good: Path) -> Path:
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("epoch 3, loss 0.5\n")
    else:  # non-finite weights, in a BatchNorm buffer as a diverged run leaves them
        state = torch.load(good, weights_only=True)
        key = next(k for k in state["model"] if k.endswith("running_var"))
        state["model"][key] = torch.full_like(state["model"][key], float("nan"))
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "nonfinite"])
def test_a_broken_checkpoint_is_one_error_line_naming_the_file(env, stage1, tmp_path, kind, capsys,
                                                              monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    path = _broken(tmp_path, kind, stage1)
    for argv in (["evaluate", "--checkpoint", str(path), "--dataset", "synthetic", "--preset", "smoke"],
                 ["train", "--preset", "smoke", "--init", str(path), "--run-dir", str(tmp_path / "new"),
                  "--no-tensorboard"]):
        code = main(argv)
        one_error_line((code, capsys.readouterr().err), names=path)
    # found by --resume: the folder's own checkpoint (config.json beside it says a run started there)
    (path.parent / "config.json").write_text(from_params({"preset": "smoke"}).to_json())
    (path.parent / "run.json").write_text(json.dumps({"stage": "mar", "state": "running"}))
    code = main(["train", "--run-dir", str(path.parent), "--resume"])
    one_error_line((code, capsys.readouterr().err), names=path)


@pytest.mark.parametrize("lr", ["1e6", "1e12"])
def test_divergence_names_only_a_good_checkpoint(env, stage1, tmp_path, lr, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_DATA", env["WORKBENCH_DATA"])
    run = tmp_path / "mar"
    code = main(["train", "--preset", "smoke", "--init", str(stage1), "--run-dir", str(run), "--no-tensorboard",
                 "--set", f"lr={lr}", *EPOCHS])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: non-finite"), line
    assert "epoch 0" not in line  # epochs count from 1, as the logs do
    if "last good checkpoint is" in line:
        named = Path(line.split("last good checkpoint is ")[1].split(" (epoch")[0])
        assert named.is_file() and load_checkpoint(named)["epoch"] >= 0  # loads: every weight is finite
    else:
        assert "no checkpoint was written" in line and not (run / "checkpoint.pt").exists()
    assert RunFolder(run).state == "failed"


# ----------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("args, field", [(["--set", "lr=-0.1"], "lr"), (["--set", "epochs=0"], "epochs"),
                                         (["--epochs", "-1"], "epochs")], ids=["lr=-0.1", "epochs=0", "--epochs -1"])
def test_out_of_range_values_are_refused_before_anything_loads(tmp_path, capsys, args, field) -> None:
    started = time.perf_counter()
    code = main(["train", "--preset", "smoke", "--no-pretraining", "--run-dir", str(tmp_path / "r"), *args])
    line = one_error_line((code, capsys.readouterr().err), names=f"{field} = ")
    assert "out of range" in line and not (tmp_path / "r").exists()
    assert time.perf_counter() - started < 10


# ----------------------------------------------------------------------------- sweeps

def test_a_sweep_point_killed_mid_run_resumes_from_its_last_epoch_checkpoint(env, stage1, tmp_path) -> None:
    """Issue 19: a restarted sweep continues an interrupted point from its last epoch checkpoint."""
    out = tmp_path / "sweep"
    args = ("sweep", str(REPO / "notebooks" / "03_train_mar.ipynb"), "--out", str(out), "--set", "preset=smoke",
            "--set", f"init_checkpoint={stage1}", "--set", "epochs=3", "--set", "extra={eval_every: 0}")
    first = workbench(env, *args, fault="kill@after-checkpoint#2", timeout=600)
    assert first.returncode != 0
    (point,) = [p for p in out.iterdir() if p.is_dir()]
    run = point / "mar"
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # two epochs done, then the kernel died
    before = rows(run / "history.csv", drop=set())
    again = workbench(env, *args, timeout=600)
    assert again.returncode == 0, again.stderr
    after = rows(run / "history.csv", drop=set())
    assert len(after) == 3
    # epochs 1-2 were not trained again: even their timings are the same (the last epoch adds metric columns)
    assert [{k: row[k] for k in before[0]} for row in after[:2]] == before
    assert json.loads((point / "status.json").read_text())["state"] == "done"


def sleep_notebook(folder: Path) -> Path:
    """A notebook that sleeps ``seconds`` (its one parameter besides ``out_dir``)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("seconds = 1\nout_dir = None", metadata={"tags": ["parameters"]}),
                             new_code_cell("import time\ntime.sleep(seconds)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "sleep.ipynb")
    return folder / "sleep.ipynb"


def wait_until_sleeping(out: Path, points: int, timeout: float = 120) -> None:
    """Until the kernels of ``points`` points of a sweep of :func:`sleep_notebook` execute the sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executed = list(out.glob("*/sleep.ipynb"))
        if len(executed) == points and all("time.sleep" in p.read_text() for p in executed):
            return
        time.sleep(0.5)
    raise AssertionError(f"no sweep point of {out} started sleeping in {timeout} s")


def test_a_second_identical_sweep_leaves_the_busy_point_alone(env, tmp_path) -> None:
    """Issue 36, case 2: a sweep folder had no lock; a second identical sweep ran the busy point again,
    marked it failed in its live status.json and replaced its executed notebook. Now it is refused in
    one line naming the folder and the sweep that holds it, and touches nothing."""
    (tmp_path / "grid.yaml").write_text("seconds: [30]\n")
    out = tmp_path / "sweep"
    args = ("sweep", str(sleep_notebook(tmp_path)), "--grid", str(tmp_path / "grid.yaml"), "--out", str(out))
    first = subprocess.Popen([sys.executable, "-m", "workbench", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_until_sleeping(out, 1)
        (point,) = [p for p in out.iterdir() if p.is_dir()]

        def started() -> str:  # the executed notebook's start, which a second run would replace
            return json.loads((point / "sleep.ipynb").read_text())["metadata"]["papermill"]["start_time"]

        status, notebook = (point / "status.json").read_bytes(), started()
        assert json.loads(status)["state"] == "running"
        second = workbench(env, *args, timeout=120)
        line = one_error_line(second, names=out)
        assert f"in use by pid {first.pid}" in line and "another sweep folder" in line
        assert (point / "status.json").read_bytes() == status and started() == notebook
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(timeout=60)
        finally:
            first.kill()


def test_a_background_sweep_stops_its_workers_at_once(env, tmp_path) -> None:
    """A sweep started as `... &` by a non-interactive shell has SIGINT ignored, and so had its workers:
    stopping it (SIGTERM) sent them SIGINT in vain and killed them 20 s later. Now they stop at once."""
    sleep_notebook(tmp_path)
    (tmp_path / "grid.yaml").write_text("seconds: [120, 121]\n")
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "sweep", str(tmp_path / "sleep.ipynb"), "--grid",
                             str(tmp_path / "grid.yaml"), "--out", str(out), "--jobs", "2"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `cmd &` does
    try:
        wait_until_sleeping(out, 2)
        time.sleep(3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert time.monotonic() - started < 15, "the workers ignored SIGINT and were killed after the grace time"
    finally:
        proc.kill()
    states = [json.loads(p.read_text())["state"] for p in out.glob("*/status.json")]
    assert states == ["interrupted", "interrupted"]


def test_a_parameter_the_notebook_does_not_declare_stops_it_before_anything_runs(env, tmp_path) -> None:
    """Issue 36, case 3: ``papermill 03_train_mar.ipynb out.ipynb -p prest smoke`` (papermill's own
    command line, outside the workbench's checks): papermill warned "Passed unknown parameter" and the
    notebook trained the demo preset. Now the cell after the parameters cell stops it, with the
    declared name closest to the typo, before any run folder exists."""
    out, runs = tmp_path / "point", tmp_path / "runs"
    executed = tmp_path / "out.ipynb"
    done = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "03_train_mar.ipynb"),
                           str(executed), "-p", "prest", "smoke", "-p", "out_dir", str(out),
                           "-p", "pretrain_epochs", "1", "-p", "epochs", "1"],
                          env=env | {"WORKBENCH_RUNS": str(runs)}, cwd=REPO / "notebooks", capture_output=True,
                          text=True, timeout=600)
    assert done.returncode != 0, "the notebook ran with a parameter it does not declare"
    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [
        ("NotebookParameterError", "this notebook declares no parameter 'prest'; did you mean 'preset'?")]
    assert not out.exists() and not runs.exists()


def test_run_files_follow_the_umask(tmp_path) -> None:
    """Atomic writes go through mkstemp (mode 0600); the file that lands takes the process umask, as any
    other file the user writes (0644 under the usual 022)."""
    from workbench.runs import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o002)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o664
