"""Where the points of a sweep run: here, in worker processes on this machine, or as Ray tasks.

:func:`workbench.experiments.sweep` keeps the bookkeeping (which points are done, ``status.json``,
retries, :func:`~workbench.experiments.collect`) and hands each attempt of a point to an executor:

- :class:`InProcess` (``jobs=1``, the default): the attempt runs in the sweep's own process.
- :class:`LocalProcesses` (``jobs=N`` or ``devices``): up to N attempts at once, each in its own
  ``python -m workbench.experiments.executors run-point`` process with its own environment: ``CUDA_VISIBLE_DEVICES``
  (``gpus_per_point`` of ``devices`` each) and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = cores // N,
  which the notebook's kernel inherits (torch takes its thread count from them).
- :class:`RayExecutor`: each attempt is a Ray task with ``num_cpus``/``num_gpus``; Ray sets
  ``CUDA_VISIBLE_DEVICES``. The tasks write their point folders themselves, so the sweep folder (and
  the notebook, and the data) must be at the same path on every node: :func:`check_shared_storage`
  checks it before the first point.

An executor's :meth:`~Executor.start` returns a handle, :meth:`~Executor.finished` the handles whose
attempt ended with that attempt's record (``state`` done | failed, ``error``, ``traceback``,
``started``, ``finished``, ``seconds``, ``host``, ``pid``), :meth:`~Executor.stop` interrupts the
running ones (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("workbench.experiments.executors")

#: the worker's record of one attempt, read back by the driver and then removed
ATTEMPT_FILE = ".attempt.json"
#: a worker process's stdout and stderr (kept: start-up errors, papermill warnings)
WORKER_LOG = "worker.log"
#: seconds a worker gets to shut its kernel down after Ctrl-C before it is killed
STOP_GRACE = 20.0
#: bytes of object store for a local Ray runtime (the tasks only return their small records)
LOCAL_OBJECT_STORE = 256 * 1024 ** 2


@dataclass
class Attempt:
    """One attempt of a sweep point: what a worker needs to run it."""

    name: str            # the point's folder name
    notebook: Path       # the notebook (absolute)
    params: dict         # its parameters (the point's and the shared ones)
    point_dir: Path      # the point's folder (absolute)
    kernel_name: str = "python3"
    timeout: float | None = None
    placement: dict = field(default_factory=dict)  # filled by the executor: devices, threads, host
    call: str = ""       # what runs it: "module:function" (notebook, params, point_dir, kernel_name, timeout)
                         # -> the attempt's record; the sweep hands it over (workbench.experiments.execute.attempt)

    def spec(self) -> dict:
        """What a worker process or a Ray task needs to run it (JSON)."""
        return {"notebook": str(self.notebook), "params": self.params, "point_dir": str(self.point_dir),
                "kernel_name": self.kernel_name, "timeout": self.timeout, "call": self.call}


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parse_devices(devices: str | Sequence[int | str] | None) -> list[str]:
    """``"0,1,2"`` or ``[0, 1, 2]`` → ``["0", "1", "2"]``; None or empty → ``[]``.

    Raises:
        ValueError: a repeated device.
    """
    if devices is None:
        return []
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = [str(d).strip() for d in items if str(d).strip()]
    if len(set(out)) != len(out):
        raise ValueError(f"devices lists a device twice: {','.join(out)}")
    return out


def worker_env(threads: int, devices: Sequence[str] | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one worker: ``threads`` for OpenMP/MKL (torch follows), and
    ``CUDA_VISIBLE_DEVICES`` when ``devices`` is given (else the parent's value is kept)."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, int(threads)))
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


class Executor:
    """Runs attempts of sweep points; see the module's docstring."""

    kind = "executor"
    capacity = 1  # attempts at once

    def prepare(self, out_dir: Path, notebook: Path) -> None:
        """Check, before any point, that the attempts can run and write ``out_dir``."""

    def can_start(self) -> bool:
        raise NotImplementedError

    def start(self, attempt: Attempt) -> Any:
        raise NotImplementedError

    def finished(self, timeout: float) -> list[tuple[Any, dict]]:
        raise NotImplementedError

    def stop(self) -> list[Any]:
        """Interrupt every running attempt; returns their handles."""
        return []

    def close(self) -> None:
        pass


class InProcess(Executor):
    """One attempt at a time, in this process (the sweep's default)."""

    kind = "in-process"

    def __init__(self) -> None:
        self._done: list[tuple[Any, dict]] = []

    def can_start(self) -> bool:
        return not self._done

    def start(self, attempt: Attempt) -> Any:
        self._done.append((attempt, run_attempt(attempt.spec())))
        return attempt

    def finished(self, timeout: float) -> list[tuple[Any, dict]]:
        done, self._done = self._done, []
        return done


class LocalProcesses(Executor):
    """Up to ``jobs`` attempts at once, each in its own worker process on this machine.

    Args:
        jobs: attempts at once (None: one per ``gpus_per_point`` devices, or 1 without devices).
        devices: GPU ids (``"0,1,2,3"``); each running attempt gets ``gpus_per_point`` of them of its
            own (``CUDA_VISIBLE_DEVICES``), so at most ``len(devices) // gpus_per_point`` run at once.
        gpus_per_point: devices per attempt (with ``devices``).
        threads: OpenMP/MKL (and so torch) threads per worker (None: this machine's cores // jobs).
    """

    kind = "processes"

    def __init__(self, jobs: int | None = None, devices: str | Sequence[int | str] | None = None,
                 gpus_per_point: int = 1, threads: int | None = None) -> None:
        self.devices = parse_devices(devices)
        if gpus_per_point < 1:
            raise ValueError(f"gpus_per_point must be at least 1, got {gpus_per_point}")
        self.gpus_per_point = gpus_per_point
        if self.devices and len(self.devices) < gpus_per_point:
            raise ValueError(f"a point asks for {gpus_per_point} GPUs; devices gives {len(self.devices)}")
        by_devices = len(self.devices) // gpus_per_point if self.devices else None
        jobs = jobs if jobs is not None else (by_devices or 1)
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        if by_devices is not None and jobs > by_devices:
            log.warning("%d jobs but %d devices for %d GPUs per point: %d points at once", jobs,
                        len(self.devices), gpus_per_point, by_devices)
            jobs = by_devices
        self.capacity = jobs
        self.threads = threads if threads is not None else max(1, cpu_cores() // jobs)
        self._free = list(self.devices)
        self._running: dict[subprocess.Popen, tuple[Attempt, list[str], Any]] = {}

    def can_start(self) -> bool:
        return len(self._running) < self.capacity and (not self.devices or len(self._free) >= self.gpus_per_point)

    def start(self, attempt: Attempt) -> Any:
        devices = [self._free.pop(0) for _ in range(self.gpus_per_point)] if self.devices else []
        attempt.placement = {"threads": self.threads, **({"devices": ",".join(devices)} if devices else {})}
        attempt.point_dir.mkdir(parents=True, exist_ok=True)
        (attempt.point_dir / ATTEMPT_FILE).unlink(missing_ok=True)
        spec = attempt.spec()
        logfile = open(attempt.point_dir / WORKER_LOG, "ab")  # noqa: SIM115 - closed when the worker ends
        # its own session: the terminal's Ctrl-C reaches the sweep only, which stops the workers itself
        proc = subprocess.Popen([sys.executable, "-m", "workbench.experiments.executors", "run-point", json.dumps(spec)],
                                stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                env=worker_env(self.threads, devices or None), start_new_session=True)
        self._running[proc] = (attempt, devices, logfile)
        return attempt

    def _release(self, proc: subprocess.Popen) -> Attempt:
        attempt, devices, logfile = self._running.pop(proc)
        logfile.close()
        self._free += devices
        return attempt

    def finished(self, timeout: float) -> list[tuple[Any, dict]]:
        deadline = time.monotonic() + timeout
        while True:
            ended = [p for p in self._running if p.poll() is not None]
            if ended or not self._running or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return [(attempt, _read_attempt(attempt, proc.returncode))
                for proc in ended for attempt in [self._release(proc)]]

    def stop(self) -> list[Any]:
        procs = list(self._running)
        for proc in procs:
            _signal(proc, signal.SIGINT)  # the worker interrupts its kernel and shuts it down
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %.0f s: killed", proc.pid, STOP_GRACE)
                _signal(proc, signal.SIGKILL)
                proc.wait()
        return [self._release(proc) for proc in procs]


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the worker and what it started in its session
    except (ProcessLookupError, PermissionError):
        pass


def _read_attempt(attempt: Attempt, returncode: int) -> dict:
    """The record a worker left in the point folder; a failure naming the exit code when there is none."""
    path = attempt.point_dir / ATTEMPT_FILE
    try:
        record = json.loads(path.read_text())
        path.unlink()
        return record
    except (OSError, ValueError):
        return {"state": "failed", "error": f"WorkerError: the worker exited with code {returncode} and left no "
                f"record (see {attempt.point_dir / WORKER_LOG})", "traceback": _tail(attempt.point_dir / WORKER_LOG)}


def _tail(path: Path, lines: int = 40) -> str | None:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return None


def _stop_when_orphaned(parent: int, every: float = 1.0) -> threading.Thread:
    """Interrupt this worker once the sweep that started it is gone (killed, or its notebook kernel
    shut down), as the sweep's own stop would: SIGINT to the worker's session (its kernel too), so
    the attempt is recorded "interrupted" and resumes with the sweep instead of training on unseen."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        log.warning("the sweep that started this worker (pid %d) is gone: stopping", parent)
        if os.getpgid(0) == os.getpid():  # a session of its own (LocalProcesses): the kernel too
            os.killpg(os.getpid(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    thread.start()
    return thread


def run_point_main(argv: list[str] | None = None) -> int:
    """``python -m workbench.experiments.executors run-point SPEC_JSON``: one attempt; its record goes to
    ``<point_dir>/.attempt.json``. Exit code 0 done, 1 failed, 130 interrupted."""
    parser = argparse.ArgumentParser(prog="python -m workbench.experiments.executors")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("run-point", help="run one attempt of a sweep point (started by a sweep)")
    rp.add_argument("spec", help="JSON: notebook, params, point_dir, kernel_name, timeout")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    # a sweep started as a background job of a non-interactive shell (`... &`) hands its workers SIGINT
    # ignored; the sweep stops its workers with SIGINT, so take it back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _stop_when_orphaned(os.getppid())
    import datetime

    from workbench.runs import write_json

    point_dir = Path(spec["point_dir"])
    logging.getLogger("papermill").setLevel(logging.WARNING)
    started = time.time()
    try:
        record = run_attempt(spec)
    except KeyboardInterrupt:
        finished = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
        record = {"state": "interrupted", "error": "interrupted; run the sweep again to resume it", "finished": finished,
                  "seconds": round(time.time() - started, 3), "host": socket.gethostname(), "pid": os.getpid()}
        write_json(point_dir / ATTEMPT_FILE, record)
        return 130
    write_json(point_dir / ATTEMPT_FILE, record)
    return 0 if record["state"] == "done" else 1


class SharedStorageError(RuntimeError):
    """The sweep folder (or the notebook) is not at the same path on every Ray node."""


def run_attempt(spec: dict) -> dict:
    """Run one attempt as its spec says: ``spec["call"]`` (``"module:function"``, what the sweep handed the
    executor) with the notebook, parameters, point folder, kernel and timeout; the attempt's record."""
    import importlib

    module, _, function = spec["call"].partition(":")
    call = getattr(importlib.import_module(module), function)
    return call(Path(spec["notebook"]), spec["params"], Path(spec["point_dir"]), kernel_name=spec["kernel_name"],
                timeout=spec["timeout"])


if __name__ == "__main__":
    sys.exit(run_point_main())
