"""How many CPU threads a run uses, chosen so that jobs sharing a machine do not fight.

PyTorch starts one OpenMP thread per core. Two jobs doing that on one machine oversubscribe it, and
OpenMP threads that spin while they wait for each other then run at a fraction of their speed
(``benchmarks/threads.py``; its output on this project's 2-core machine is
``results/benchmarks/threads.txt``). A run therefore takes

1. the count it is given (``threads`` in the config, ``--threads`` on the command line), else
2. ``OMP_NUM_THREADS`` when it is set (the sweep executors set it for each worker), else
3. the cores this process may use (its CPU affinity, ``os.sched_getaffinity``) that are idle now —
   their idle share over a fifth of a second, read twice from ``/proc/stat`` — divided among the
   processes of a ``torchrun`` job on this host: at least 1, and never more than torch was already
   set to,

and logs the choice and what it saw. The 1-minute load average is not used where ``/proc/stat``
can be read: it lags by minutes (right after a ``pip install`` it still reads about 1 on an idle
machine, which halved the demo's speed on 2 cores); it is the fallback on systems without
``/proc/stat`` and is shown beside the idle share in the log line. Importing ``workbench`` before torch also sets ``OMP_WAIT_POLICY=PASSIVE``
unless it is set (waiting OpenMP threads sleep instead of spinning), which is what keeps two jobs at
full thread counts from fighting (``results/benchmarks/threads.txt``).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

log = logging.getLogger("workbench.threads")

__all__ = ["ThreadChoice", "usable_cores", "usable_cpu_ids", "idle_cores", "machine_load", "choose_threads",
           "configure_threads"]

#: seconds between the two readings of ``/proc/stat`` (long enough to average over a few scheduler
#: ticks, short enough not to be felt at the start of a run)
IDLE_SAMPLE_S = 0.2


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and where it came from (``"config"``, ``"OMP_NUM_THREADS"`` or ``"auto"``)."""

    threads: int
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.source}: {self.reason})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def usable_cpu_ids() -> set[int] | None:
    """The ids of the CPUs this process may run on, or None where the OS does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _read_proc_stat() -> str:
    with open("/proc/stat", encoding="ascii") as f:
        return f.read()


def _cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """``{cpu id: (idle ticks, total ticks)}`` from the ``cpuN`` lines of ``/proc/stat``.

    Idle counts ``idle`` and ``iowait``; total counts user, nice, system, idle, iowait, irq, softirq
    and steal (guest time is already inside user).
    """
    times = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in rest.split()[:8]]
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def idle_cores(cpus: Collection[int] | None = None, interval: float = IDLE_SAMPLE_S, *,
               read: Callable[[], str] | None = None, sleep: Callable[[float], None] | None = None) -> float | None:
    """How many of ``cpus`` were idle over the last ``interval`` seconds (the sum of their idle shares).

    Args:
        cpus: CPU ids to count (default: this process's affinity; all CPUs where unknown).
        interval: seconds between the two readings of ``/proc/stat``.
        read, sleep: how to read ``/proc/stat`` and to wait (default: the file, ``time.sleep``; tests
            pass recorded readings).

    Returns:
        A number between 0 and ``len(cpus)``, e.g. 1.9 of 2 cores on an idle machine, 1.0 while one
        other job keeps a core busy; None where ``/proc/stat`` cannot be read (not Linux).
    """
    read = read or _read_proc_stat
    sleep = sleep or time.sleep
    try:
        first = _cpu_times(read())
        sleep(interval)
        second = _cpu_times(read())
    except (OSError, ValueError, IndexError):
        return None
    ids = [i for i in (usable_cpu_ids() if cpus is None else cpus) or second if i in first and i in second]
    if not ids:
        return None
    idle = 0.0
    for i in ids:
        d_idle, d_total = second[i][0] - first[i][0], second[i][1] - first[i][1]
        idle += min(1.0, max(0.0, d_idle / d_total)) if d_total > 0 else 1.0  # no tick counted: nothing ran
    return idle


def machine_load() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS does not report it."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def choose_threads(requested: int | None = 0, *, environ: dict | None = None, cores: int | None = None,
                   idle: float | None = None, load: float | None = None, local_processes: int = 1) -> ThreadChoice:
    """The thread count for this process (see the module's docstring for the order of the rules).

    Args:
        requested: a count > 0 set by the user; 0 or None: choose.
        environ: the environment to read ``OMP_NUM_THREADS`` from (default ``os.environ``).
        cores: the usable cores (default: this process's affinity).
        idle: how many of them are idle now (default: :func:`idle_cores`, measured now); the free
            cores are ``idle`` rounded, at least 1.
        load: the 1-minute load average, used only when ``idle`` is unknown (no ``/proc/stat``);
            default: read now. It is shown in the reason either way.
        local_processes: processes of this job on this host (``LOCAL_WORLD_SIZE`` under torchrun);
            they share the free cores.

    Raises:
        ValueError: ``OMP_NUM_THREADS`` is set but not a positive integer (naming its value).
    """
    if requested:
        return ThreadChoice(int(requested), "config", "threads set for this run")
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"OMP_NUM_THREADS = {value!r}: expected a positive integer (or unset it)")
        return ThreadChoice(int(value), "OMP_NUM_THREADS", "set in the environment")
    cores = usable_cores() if cores is None else int(cores)
    if idle is None:
        idle = idle_cores()
    load = machine_load() if load is None else float(load)
    load_text = "unknown" if load is None else f"{load:.1f}"
    if idle is not None:
        free = min(cores, max(1, int(min(float(idle), cores) + 0.5)))
        seen = (f"{min(float(idle), cores):.1f} of them idle over the last {IDLE_SAMPLE_S:g} s (/proc/stat; the "
                f"1-minute load average {load_text} lags and is not used)")
    else:  # no /proc/stat (not Linux): the load average is all there is
        free = cores - (0 if load is None else min(cores - 1, int(load + 0.5)))  # less the cores others keep busy
        seen = f"load average {load_text} (no /proc/stat to see which cores are idle now)"
    per_process = max(1, free // max(1, local_processes))
    return ThreadChoice(per_process, "auto", f"{cores} usable core{'s' if cores != 1 else ''}, {seen}, "
                        f"{local_processes} process{'es' if local_processes != 1 else ''} of this job here")


#: the process's own thread count (torch's, or what someone else set since our last call) and ours
_seen: dict[str, int | None] = {"cap": None, "ours": None}


def configure_threads(requested: int | None = 0) -> ThreadChoice:
    """Choose the thread count (:func:`choose_threads`), give it to torch, and log it.

    An automatic choice never exceeds what the process had before the first run in it (or what
    its owner set with ``torch.set_num_threads`` since), so a later run in the same kernel can take
    back the cores an earlier, crowded one left.
    """
    import torch

    choice = choose_threads(requested, local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    current = torch.get_num_threads()
    if _seen["ours"] is None or current != _seen["ours"]:
        _seen["cap"] = current
    cap = int(_seen["cap"] or current)
    if choice.source == "auto" and cap < choice.threads:
        choice = ThreadChoice(cap, "auto", f"the process was set to {cap}; " + choice.reason)
    if current != choice.threads:
        torch.set_num_threads(choice.threads)
    _seen["ours"] = choice.threads
    log.info("CPU threads: %s; --threads N (or the threads field) overrides", choice)
    return choice
