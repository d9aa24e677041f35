"""A run's life: start, resume, reload — decided in one place, :func:`run_stage`.

Example:
    >>> from workbench.config import get_preset
    >>> stage1 = pretrain(get_preset("smoke"))                                # doctest: +SKIP
    >>> stage2 = train_mar(get_preset("smoke"), init_checkpoint=stage1.checkpoint)  # doctest: +SKIP
    >>> stage2.metrics["rank1"], stage2.run_dir                              # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from workbench.config import Config, config_differences, method_of
from workbench.engine.pretrain import PretrainTrainer
from workbench.engine.progress import STAGE_TITLES
from workbench.engine.trainer import STAGE_COMMANDS, RunResult
from workbench.errors import CheckpointError, ConfigError, RunFolderError
from workbench.runs import RunFolder

#: the two stages of a run: stage 1 is one trainer, stage 2 (``"mar"``, the folder's historical name) is
#: the trainer of the config's method (workbench.methods, found through workbench.config.methods)
STAGES = ("pretrain", "mar")


def check_run_folder(stage: str, cfg: Config, run_dir: str | Path | RunFolder, *, resume: bool) -> None:
    """Refuse to start in a folder that holds another run.

    Raises:
        RunFolderError: ``resume`` is False and the folder holds a run (a config, a checkpoint or
            metrics: a fresh start would mix its files with theirs); or ``resume`` is True and the
            folder holds a run of the other stage, or its ``config.json`` differs from ``cfg`` in a
            field that changes what is computed (the message names each field with both values).
            Nothing in the folder is touched.
        RunInUseError: another process is writing the folder.
    """
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    if folder.state == "running":
        folder.acquire()  # raises RunInUseError naming the holder
    if not resume:
        if found := folder.run_files():
            raise RunFolderError(f"{folder.path} already holds a run ({', '.join(found)}); pass resume=True "
                                 "(--resume) to continue it, or choose another run folder")
        return
    check_stage(folder, stage)
    saved = folder.config_or_none()
    if saved is not None:
        diff = config_differences(saved, cfg, stage)
        if diff:
            raise RunFolderError(f"{folder.path} holds a {stage} run with another configuration: {'; '.join(diff)}. "
                                 "Resume it with its own configuration, or choose another run folder")


def check_stage(folder: RunFolder, stage: str) -> None:
    """Refuse to resume (or reload) a run of one stage as the other.

    Raises:
        RunFolderError: the folder's record says another stage (naming the command that resumes it).
    """
    record = folder.record_or_none()
    held = record.stage if record is not None else ""
    if held in STAGES and held != stage:
        raise RunFolderError(f"{folder.path} holds a {STAGE_TITLES[held]} run ({held}), not {STAGE_TITLES[stage]}; "
                             f"resume it with: python -m workbench {STAGE_COMMANDS[held]} --run-dir {folder.path} "
                             "--resume")


def load_result(run_dir: str | Path) -> RunResult | None:
    """The result of a finished run (its metrics and history) without rebuilding model, data or
    caches; None when the run has not finished."""
    folder = RunFolder(run_dir)
    if not folder.is_finished:
        return None
    return RunResult(folder.path, folder.metrics(), folder.history())


def run_stage(stage: str, cfg: Config, run_dir: str | Path | None = None, *,
              init_checkpoint: str | Path | None = None, resume: bool = False,
              callbacks: Sequence[Callable] = ()) -> RunResult:
    """The one way a stage starts, resumes or is reloaded (CLI, :func:`resume_run` and notebooks).

    * ``resume=False``: a fresh run; a folder that already holds a checkpoint is refused.
    * ``resume=True``: the folder's ``config.json`` must match ``cfg`` (else :class:`RunFolderError`
      naming the fields); a finished run is reloaded without building model or data; an
      interrupted one continues from its checkpoint; an empty folder starts.

    The folder's lock is taken before anything is read or built, and held until the run ends: a
    second process writing the same folder is refused with :class:`~workbench.errors.RunInUseError`.

    Raises:
        ConfigError: unknown stage.
        RunFolderError: see above.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if run_dir is None:
        return _make(stage, cfg, None, init_checkpoint, resume, callbacks).fit()
    folder = RunFolder(run_dir)
    if resume and folder.is_finished:
        check_run_folder(stage, cfg, folder, resume=True)
        return load_result(folder.path)
    with _main_rank_lock(folder):
        check_run_folder(stage, cfg, folder, resume=resume)
        return _make(stage, cfg, folder, init_checkpoint, resume, callbacks).fit()


def _make(stage, cfg, folder, init_checkpoint, resume, callbacks):
    kwargs = dict(resume=resume, callbacks=callbacks)
    if stage == "mar":
        return method_of(cfg.train.method).trainer(cfg, folder, init_checkpoint=init_checkpoint, **kwargs)
    return PretrainTrainer(cfg, folder, **kwargs)


class _main_rank_lock:
    """The folder's lock on rank 0 (torchrun's other ranks write nothing)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder, self.main = folder, os.environ.get("RANK", "0") == "0"

    def __enter__(self) -> RunFolder:
        if self.main:
            self.folder.acquire()
        return self.folder

    def __exit__(self, *exc) -> None:
        if self.main:
            self.folder.release()


def resume_run(run_dir: str | Path, cfg: Config | None = None, callbacks: Sequence[Callable] = (), *,
               stage: str | None = None) -> RunResult:
    """Continue (or reload) the run in ``run_dir``, from whatever it holds: its ``config.json`` and
    ``run.json`` say the stage and the start checkpoint, so a run killed before its first
    checkpoint resumes too.

    Args:
        run_dir: a run folder (at least ``config.json`` written: the run started).
        cfg: the configuration the caller expects (None: the saved one); a different one is refused.
        callbacks: passed to the trainer.
        stage: the stage the caller expects (None: whichever the folder holds); another is refused.

    Raises:
        CheckpointError: ``run_dir`` holds no run to resume.
        RunFolderError: ``cfg`` differs from the saved configuration, or the run is of another stage.
    """
    folder = RunFolder(run_dir)
    if not folder.has_config:
        raise CheckpointError(f"{folder.path} holds no run to resume (no {folder.CONFIG}: it never started)")
    record = folder.record()
    if record.stage not in STAGES:
        raise CheckpointError(f"{folder.path}: cannot tell which stage the run is ({folder.RECORD} and the "
                              "checkpoint are missing)")
    if stage is not None:
        check_stage(folder, stage)
    cfg = folder.config() if cfg is None else cfg
    return run_stage(record.stage, cfg, folder.path, init_checkpoint=record.start_checkpoint, resume=True,
                     callbacks=callbacks)


def pretrain(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
             callbacks: Sequence[Callable] = ()) -> RunResult:
    """Stage 1: train backbone and agents on the reference set with L_AL; evaluate on the target.

    Args:
        cfg: configuration (``get_preset(...)`` / ``from_params(...)``).
        run_dir: run folder (default: a new ``runs/<time>-pretrain``).
        resume: continue the run in ``run_dir`` (a finished run is only reloaded; one with another
            configuration is refused, see :func:`check_run_folder`).
        callbacks: ``cb(trainer, epoch, row)`` after every epoch.
    """
    return run_stage("pretrain", cfg, run_dir, resume=resume, callbacks=callbacks)


def train_mar(cfg: Config, run_dir: str | Path | None = None, *, init_checkpoint: str | Path | None = None,
              resume: bool = False, callbacks: Sequence[Callable] = ()) -> RunResult:
    """Stage 2: joint MAR training from a stage-1 checkpoint; evaluates every ``eval_every`` epochs.

    Args:
        cfg: configuration.
        run_dir: run folder (default: a new ``runs/<time>-mar``).
        init_checkpoint: stage-1 checkpoint (None: no reference pretraining).
        resume: continue the run in ``run_dir`` (as in :func:`pretrain`).
        callbacks: ``cb(trainer, epoch, row)`` after every epoch.
    """
    return run_stage("mar", cfg, run_dir, init_checkpoint=init_checkpoint, resume=resume, callbacks=callbacks)
