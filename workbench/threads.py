"""How many CPU threads a run uses, chosen so that jobs sharing a machine do not fight.

PyTorch starts one OpenMP thread per core. Two jobs doing that on one machine oversubscribe it, and
OpenMP threads that spin while they wait for each other then run at a fraction of their speed
(``benchmarks/threads.py``; its output on this project's 2-core machine is
``results/benchmarks/threads.txt``). A run therefore takes

1. the count it is given (``threads`` in the config, ``--threads`` on the command line), else
2. ``OMP_NUM_THREADS`` when it is set (the sweep executors set it for each worker), else
3. the cores this process may use (its CPU affinity, ``os.sched_getaffinity``) less the load the
   machine already carries (the 1-minute load average), divided among the processes of a
   ``torchrun`` job on this host — at least 1, and never more than torch was already set to,

and logs the choice and why. Importing ``workbench`` before torch also sets ``OMP_WAIT_POLICY=PASSIVE``
unless it is set (waiting OpenMP threads sleep instead of spinning), which is what keeps two jobs at
full thread counts from fighting (``results/benchmarks/threads.txt``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("workbench.threads")

__all__ = ["ThreadChoice", "usable_cores", "machine_load", "choose_threads", "configure_threads"]


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


def machine_load() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS does not report it."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def choose_threads(requested: int | None = 0, *, environ: dict | None = None, cores: int | None = None,
                   load: float | None = None, local_processes: int = 1) -> ThreadChoice:
    """The thread count for this process (see the module's docstring for the order of the rules).

    Args:
        requested: a count > 0 set by the user; 0 or None: choose.
        environ: the environment to read ``OMP_NUM_THREADS`` from (default ``os.environ``).
        cores, load: the usable cores and the load average (default: measured now).
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
    load = machine_load() if load is None else float(load)
    busy = 0 if load is None else min(cores - 1, int(load + 0.5))  # cores other jobs keep busy
    per_process = max(1, (cores - busy) // max(1, local_processes))
    load_text = "unknown" if load is None else f"{load:.1f}"
    return ThreadChoice(per_process, "auto", f"{cores} usable core{'s' if cores != 1 else ''}, load average "
                        f"{load_text}, {local_processes} process{'es' if local_processes != 1 else ''} of this job here")


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
