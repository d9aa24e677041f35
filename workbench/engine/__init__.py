"""Training: the epoch loop (:mod:`.trainer`), stage 1 (:mod:`.pretrain`) and a run's life — start,
resume, reload — (:mod:`.lifecycle`). Stage 2 is a method of :mod:`workbench.methods`, which the engine
finds through the config's registry and knows by no name. :func:`pretrain` and :func:`train_mar` are the
entry points.

Example:
    >>> from workbench.config import get_preset
    >>> stage1 = pretrain(get_preset("smoke"))                                # doctest: +SKIP
    >>> stage2 = train_mar(get_preset("smoke"), init_checkpoint=stage1.checkpoint)  # doctest: +SKIP
"""
from workbench.engine.lifecycle import (
           check_run_folder,
           check_stage,
           load_result,
           pretrain,
           resume_run,
           run_stage,
           train_mar,
)
from workbench.engine.pretrain import PretrainTrainer
from workbench.engine.trainer import RunResult, Trainer, TrainingDiverged, TrainingInterrupted

__all__ = ["PretrainTrainer", "RunResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "check_run_folder",
           "check_stage", "load_result", "pretrain", "resume_run", "run_stage", "train_mar"]
