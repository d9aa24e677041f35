"""How a run picks its CPU threads (workbench.threads): the user's count, OMP_NUM_THREADS, else the cores idle now."""
from __future__ import annotations

import pytest
import torch

from workbench.threads import choose_threads, configure_threads, usable_cores


def test_the_users_count_wins_then_the_environment() -> None:
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}).threads == 3
    choice = choose_threads(0, environ={"OMP_NUM_THREADS": "2"}, cores=8, idle=8.0)
    assert (choice.threads, choice.source) == (2, "OMP_NUM_THREADS")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS = 'two'"):
        choose_threads(0, environ={"OMP_NUM_THREADS": "two"})


@pytest.mark.parametrize(("cores", "idle", "processes", "expected"), [
    (2, 1.9, 1, 2),   # an idle machine: every core
    (2, 1.1, 1, 1),   # another job keeps one core busy: the other one
    (2, 0.0, 1, 1),   # overloaded: never below one thread
    (8, 5.4, 1, 5),   # 5 cores idle (rounded)
    (8, 8.0, 2, 4),   # torchrun with 2 processes here: half each
    (1, 1.0, 1, 1),
])
def test_auto_takes_the_cores_idle_now(cores, idle, processes, expected) -> None:
    choice = choose_threads(0, environ={}, cores=cores, idle=idle, load=3.0, local_processes=processes)
    assert (choice.threads, choice.source) == (expected, "auto")
    assert f"{cores} usable core" in choice.reason and f"{idle:.1f} of them idle" in choice.reason


def _proc_stat(*cpus: tuple[int, int]) -> str:
    """A /proc/stat text whose cpuN lines hold (busy ticks, idle ticks)."""
    lines = [f"cpu  {sum(b for b, _ in cpus)} 0 0 {sum(i for _, i in cpus)} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(cpus)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 4", "btime 5", "procs_running 1"]) + "\n"


def test_an_idle_machine_with_a_stale_load_average_gets_every_core(monkeypatch, caplog) -> None:
    """Right after a pip install the 1-minute load average still reads about 1 on an idle 2-core machine:
    the choice follows the cores idle now (two readings of /proc/stat), and says what it saw."""
    import logging

    import workbench.threads as wt

    readings = iter([_proc_stat((1000, 5000), (1200, 4000)),    # then 20 ticks per CPU, all but one idle
                     _proc_stat((1000, 5020), (1201, 4019))])
    monkeypatch.setattr(wt, "_read_proc_stat", lambda: next(readings), raising=False)
    monkeypatch.setattr(wt.os, "getloadavg", lambda: (0.9, 1.7, 1.2), raising=False)
    monkeypatch.setattr(wt, "usable_cpu_ids", lambda: {0, 1}, raising=False)
    monkeypatch.setattr(wt, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO, logger="workbench.threads"):
            choice = configure_threads()
    finally:
        torch.set_num_threads(before)
    assert (choice.threads, choice.source) == (2, "auto"), choice
    line = caplog.text
    assert "2 usable cores, 1.9 of them idle over the last 0.2 s" in line, line
    assert "load average 0.9" in line and "not used" in line, line


def test_idle_cores_reads_the_idle_share_of_the_usable_cpus() -> None:
    from workbench.threads import idle_cores

    readings = iter([_proc_stat((0, 0), (0, 0), (0, 0)), _proc_stat((100, 0), (25, 75), (0, 100))])
    # cpu0 busy, cpu1 a quarter busy, cpu2 idle; the process may use cpu1 and cpu2 only
    idle = idle_cores({1, 2}, read=lambda: next(readings), sleep=lambda s: None)
    assert idle == pytest.approx(1.75)
    assert idle_cores(read=lambda: (_ for _ in ()).throw(OSError("no /proc")), sleep=lambda s: None) is None


def test_without_proc_stat_the_load_average_is_the_fallback(monkeypatch) -> None:
    import workbench.threads as wt

    monkeypatch.setattr(wt, "idle_cores", lambda: None)
    choice = choose_threads(0, environ={}, cores=2, load=1.2)
    assert choice.threads == 1 and "load average 1.2" in choice.reason and "no /proc/stat" in choice.reason
    assert choose_threads(0, environ={}, cores=8, load=2.6).threads == 5  # 3 cores busy (load rounded)


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
        monkeypatch.setattr(wt, "idle_cores", lambda: 1.0)
        monkeypatch.setattr(wt, "usable_cores", lambda: 2)
        assert configure_threads().threads == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(wt, "idle_cores", lambda: 2.0)
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
