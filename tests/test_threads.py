"""How a run picks its CPU threads (workbench.threads): the user's count, OMP_NUM_THREADS, else the free cores."""
from __future__ import annotations

import pytest
import torch

from workbench.threads import choose_threads, configure_threads, usable_cores


def test_the_users_count_wins_then_the_environment() -> None:
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}).threads == 3
    choice = choose_threads(0, environ={"OMP_NUM_THREADS": "2"}, cores=8, load=0.0)
    assert (choice.threads, choice.source) == (2, "OMP_NUM_THREADS")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS = 'two'"):
        choose_threads(0, environ={"OMP_NUM_THREADS": "two"})


@pytest.mark.parametrize(("cores", "load", "processes", "expected"), [
    (2, 0.1, 1, 2),   # an idle machine: every core
    (2, 1.2, 1, 1),   # another job keeps one core busy: the other one
    (2, 6.0, 1, 1),   # overloaded: never below one thread
    (8, 2.6, 1, 5),   # 3 cores busy (load rounded)
    (8, 0.0, 2, 4),   # torchrun with 2 processes here: half each
    (1, 0.0, 1, 1),
])
def test_auto_takes_the_cores_other_jobs_leave(cores, load, processes, expected) -> None:
    choice = choose_threads(0, environ={}, cores=cores, load=load, local_processes=processes)
    assert (choice.threads, choice.source) == (expected, "auto")
    assert f"{cores} usable core" in choice.reason and f"{load:.1f}" in choice.reason


def test_configure_sets_torch_and_never_raises_what_the_process_was_given(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_threads().threads == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        torch.set_num_threads(1)  # e.g. a notebook that set it: auto keeps it (at most what is free)
        assert configure_threads().threads == 1
        # a crowded run lowered the count; the next run in this process may take the cores back
        import workbench.threads as wt

        torch.set_num_threads(2)
        monkeypatch.setattr(wt, "machine_load", lambda: 1.0)
        monkeypatch.setattr(wt, "usable_cores", lambda: 2)
        assert configure_threads().threads == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(wt, "machine_load", lambda: 0.0)
        assert configure_threads().threads == 2 and torch.get_num_threads() == 2
        assert 1 <= usable_cores()
    finally:
        torch.set_num_threads(before)


def test_a_run_records_its_threads(tmp_path, monkeypatch) -> None:
    from workbench.config import from_params
    from workbench.engine import pretrain
    from workbench.runs import RunFolder

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    before = torch.get_num_threads()
    try:
        result = pretrain(from_params({"preset": "smoke", "pretrain_epochs": 1, "threads": 1, "tensorboard": False}),
                          tmp_path / "s1")
    finally:
        torch.set_num_threads(before)
    assert RunFolder(result.run_dir).record().threads == 1


def test_importing_workbench_first_makes_openmp_waits_passive() -> None:
    import os
    import subprocess
    import sys

    code = "import os, workbench, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "PASSIVE"
    kept = subprocess.run([sys.executable, "-c", code], env=env | {"OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                          text=True).stdout.strip()
    assert kept == "ACTIVE"  # the user's choice stays
    late = "import os, torch, workbench; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True).stdout.strip() == "None"
