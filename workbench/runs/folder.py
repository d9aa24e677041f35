"""The run folder: the one owner of a training run's file names, its state, its lock and its record.

A run folder holds, for one stage (``pretrain`` or ``mar``):

============== ==================================================================================
``config.json``   the run's configuration (written once, at a fresh start, which first removes
                  every file an earlier run left in the folder)
``run.json``      the record the engine keeps: stage, seed, commit, start checkpoint and the metrics
                  it started from, per-epoch cost, final threshold and mined-pair precision, state
``history.csv``   one row per epoch (losses, lr, seconds, images/s, metrics when evaluated)
``steps.csv``     one row per step
``checkpoint.pt`` the last finished epoch (model, optimizer, scheduler, RNG, history)
``metrics.json``  the final metrics; its presence means the run is finished
``tensorboard/``  event files
``.lock``         held (``flock``, :class:`~workbench.runs.lock.FolderLock`) by the process writing
                  the run; the OS drops it when that process dies, so a ``kill -9`` never leaves
                  the folder locked
============== ==================================================================================

Nothing outside this module spells those names: callers ask a :class:`RunFolder`.

Example:
    >>> folder = RunFolder("/tmp/no-such-run")
    >>> folder.state
    'new'
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from workbench.errors import RunFolderError
from workbench.runs.files import (
    DISK_FULL,
    atomic_write_text,
    json_text,
    load_checkpoint,
    overwrite_in_place,
    read_rows,
    write_csv,
    write_json,
)
from workbench.runs.lock import FolderLock

if TYPE_CHECKING:
    from workbench.config import Config

#: the states of a run folder, in the order a run goes through them
STATES = ("new", "running", "interrupted", "failed", "finished")


@dataclass
class RunRecord:
    """What the engine records about a run, beside its config and metrics (``run.json``).

    Every field is written by the engine itself (no notebook adds keys): the tables and figures of
    ``experiments`` read runs through this record.
    """

    stage: str = ""                          # pretrain | mar (stage 2, whatever its method)
    method: str | None = None                # stage 2: the method that trained it (workbench.methods)
    state: str = "running"                   # running | interrupted (Ctrl-C, SIGTERM) | failed | finished
    seed: int | None = None
    commit: str | None = None                # source commit of the code that trained (None: not a checkout)
    started: str | None = None               # ISO time of the fresh start
    finished: str | None = None
    epochs_done: int = 0
    seconds_per_epoch: float | None = None   # median training time of an epoch (evaluation excluded)
    images_per_s: float | None = None        # median over epochs
    feature_dim: int | None = None           # dimension of the retrieval feature (after fusion and embedding)
    threads: int | None = None               # CPU threads the run computed with (workbench.threads; per process)
    start_checkpoint: str | None = None      # stage 2: the stage-1 checkpoint it started from (None: none)
    start_metrics: dict = field(default_factory=dict)  # stage 2: the evaluation before joint training
    init_threshold: float | None = None      # stage 2: T at the start (L_MDL's agreement threshold)
    final_threshold: float | None = None     # stage 2: T after the last epoch
    final_pos_precision: float | None = None  # stage 2: share of the last epoch's mined positives that are true
    error: str | None = None                 # why the run failed or stopped (state "failed", "interrupted")
    curve: list = field(default_factory=list)  # per evaluated epoch: {"epoch", "rank1", "mAP"} (epoch 0: the start)

    @classmethod
    def from_dict(cls, values: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class RunFolder:
    """One run's folder: file names, state, lock, record, and reading what the run wrote.

    Args:
        path: the folder (it need not exist yet).
    """

    CONFIG = "config.json"
    RECORD = "run.json"
    HISTORY = "history.csv"
    STEPS = "steps.csv"
    CHECKPOINT = "checkpoint.pt"
    METRICS = "metrics.json"
    TENSORBOARD = "tensorboard"
    LOCK = FolderLock.NAME
    #: what makes a folder hold a run: a fresh start is refused while any of them is there
    RUN_FILES = (CONFIG, CHECKPOINT, METRICS)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = FolderLock(self.path, "run folder")

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- names
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def record_path(self) -> Path:
        return self.path / self.RECORD

    @property
    def history_path(self) -> Path:
        return self.path / self.HISTORY

    @property
    def steps_path(self) -> Path:
        return self.path / self.STEPS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    # -- state
    @property
    def is_finished(self) -> bool:
        return self.metrics_path.is_file()

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    @property
    def has_config(self) -> bool:
        return self.config_path.is_file()

    @property
    def state(self) -> str:
        """``new`` (nothing written), ``running`` (another process holds the lock), ``interrupted``
        (started, not finished, nobody holds it), ``failed`` (the engine recorded an error) or
        ``finished`` (``metrics.json`` written)."""
        if self.is_finished:
            return "finished"
        if not self.path.is_dir() or not (self.has_config or self.has_checkpoint):
            return "new"
        if self._lock.held or self.locked_by_other():
            return "running"
        record = self.record_or_none()
        if record is not None and record.state == "failed":
            return "failed"
        return "interrupted"

    # -- the lock
    def locked_by_other(self) -> bool:
        """True when another process (or another open of this folder) holds the lock now."""
        return self._lock.locked_by_other()

    def acquire(self) -> None:
        """Take the folder's lock (exclusive, non-blocking) and remove temporary files a killed writer left.

        Raises:
            RunFolderError: the path is a file.
            RunInUseError: another process holds it (the message names its pid and command).
        """
        if self._lock.held:
            return
        self._lock.acquire()
        for stale in self.path.glob(".*.tmp"):  # a writer killed mid-write (the real file is intact)
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Let the lock go; a folder left holding nothing but it is removed (a run that failed at once)."""
        self._lock.release()

    @contextmanager
    def lock(self) -> Iterator["RunFolder"]:
        """Hold the lock for the ``with`` block (see :meth:`acquire`)."""
        taken = not self._lock.held
        self.acquire()
        try:
            yield self
        finally:
            if taken:
                self.release()

    # -- reading
    def config(self) -> "Config":
        from workbench.config import load_config

        if not self.has_config:
            raise RunFolderError(f"{self.path} holds no run ({self.CONFIG} is missing)")
        return load_config(self.config_path)

    def config_or_none(self) -> "Config | None":
        return self.config() if self.has_config else None

    def metrics(self) -> dict:
        """The final metrics. Raises RunFolderError when the run has not finished."""
        if not self.is_finished:
            raise RunFolderError(f"{self.path} is not a finished run ({self.METRICS} is missing)")
        return json.loads(self.metrics_path.read_text())

    def history(self) -> list[dict]:
        """Per-epoch rows (numbers as floats); [] before the first epoch."""
        return read_rows(self.history_path) if self.history_path.is_file() else []

    def steps(self) -> list[dict]:
        return read_rows(self.steps_path) if self.steps_path.is_file() else []

    def checkpoint(self, map_location: Any = "cpu") -> dict:
        return load_checkpoint(self.checkpoint_path, map_location=map_location)

    def record_or_none(self) -> RunRecord | None:
        """``run.json``, or None when absent or unreadable (torn by a kill during a full-disk rewrite)."""
        try:
            return RunRecord.from_dict(json.loads(self.record_path.read_text()))
        except (OSError, ValueError):
            return None

    def record(self) -> RunRecord:
        """The engine's record; for folders written before ``run.json`` existed, rebuilt from
        ``metrics.json``, ``history.csv`` and the checkpoint."""
        record = self.record_or_none()
        return record if record is not None else self._derived_record()

    def _derived_record(self) -> RunRecord:
        metrics = self.metrics() if self.is_finished else {}
        history = self.history()
        record = RunRecord(stage=str(metrics.get("stage", "")), seed=metrics.get("seed"),
                           commit=metrics.get("commit"), epochs_done=len(history),
                           state="finished" if self.is_finished else "running",
                           start_metrics=dict(metrics.get("initial", {})),
                           init_threshold=metrics.get("init_threshold"))
        record.__dict__.update(epoch_summary(history))
        if self.has_checkpoint:  # legacy folders: stage and start checkpoint live in the checkpoint
            state = self.checkpoint()
            record.stage = record.stage or str(state.get("stage", ""))
            record.start_checkpoint = state.get("init_checkpoint") or None
        return record

    def run_files(self) -> list[str]:
        """The files of :attr:`RUN_FILES` the folder holds (a fresh start needs none of them)."""
        return [name for name in self.RUN_FILES if (self.path / name).is_file()]

    # -- writing (the engine)
    def clear_run(self) -> None:
        """Remove every file an earlier run left, ``metrics.json`` first (so the folder never reads
        finished meanwhile) and ``config.json`` last: a fresh start writes into a folder where nothing
        of another run can survive beside its own files."""
        import shutil

        for name in (self.METRICS, self.CHECKPOINT, self.HISTORY, self.STEPS, self.RECORD):
            (self.path / name).unlink(missing_ok=True)
        if self.tensorboard_dir.is_dir():
            shutil.rmtree(self.tensorboard_dir)
        self.config_path.unlink(missing_ok=True)

    def write_config(self, cfg: "Config") -> None:
        write_json(self.config_path, cfg.to_dict())

    def write_record(self, record: RunRecord) -> None:
        """``run.json``, atomically; on a full disk, rewritten in place instead, so that a run stopped by
        the full disk is still recorded as failed (the existing file's blocks hold the few bytes more).

        Raises:
            OSError: it could not be written either way.
        """
        text = json_text(asdict(record))
        try:
            atomic_write_text(self.record_path, text)
        except OSError as err:
            if err.errno not in DISK_FULL or not self.record_path.is_file():
                raise
            overwrite_in_place(self.record_path, text)

    def write_logs(self, history: list[dict], steps: list[dict]) -> None:
        write_csv(self.history_path, history)
        write_csv(self.steps_path, steps)

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_path, metrics)


class PointFolder:
    """A sweep point's folder: ``status.json`` (the sweep's bookkeeping: state, params, error, times),
    the executed notebook, the notebook's summary ``metrics.json``, and the run folders the notebook
    wrote (``pretrain/``, ``mar/``)."""

    STATUS = "status.json"
    SUMMARY = "metrics.json"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    def status(self) -> dict | None:
        """``status.json`` (None when absent or unreadable)."""
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None

    def summary(self) -> dict | None:
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None

    def run(self, stage: str) -> RunFolder:
        """The run folder of a stage inside the point (``"pretrain"``, ``"mar"``)."""
        return RunFolder(self.path / stage)


def epoch_summary(history: list[dict]) -> dict:
    """Cost (medians over epochs) and the last epoch's stage-2 diagnostics from per-epoch rows."""
    import math
    import statistics

    def finite(values):
        return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]

    out: dict = {"epochs_done": len(history),
                 "curve": [{"epoch": int(r["epoch"]), "rank1": r["rank1"], "mAP": r["mAP"]} for r in history
                           if finite([r.get("mAP")]) and finite([r.get("rank1")])]}
    seconds = finite(r.get("seconds") for r in history)
    rates = finite(r.get("images_per_s") for r in history)
    out["seconds_per_epoch"] = round(statistics.median(seconds), 3) if seconds else None  # median: robust to
    out["images_per_s"] = round(statistics.median(rates), 2) if rates else None  # an epoch slowed by other jobs
    if history:
        last = history[-1]
        for key, name in (("threshold", "final_threshold"), ("pos_precision", "final_pos_precision")):
            value = finite([last.get(key)])
            out[name] = value[0] if value else None
    return out


def run_state(path: str | os.PathLike) -> str:
    """The state of the run folder at ``path`` (see :attr:`RunFolder.state`)."""
    return RunFolder(path).state
