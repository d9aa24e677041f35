"""Training: the epoch loop (:mod:`.trainer`), the two stages (:mod:`.stages`; stage 2 by clustering in
:mod:`.cluster_contrast`, ``method="cluster_contrast"``) and a run's life —
start, resume, reload — (:mod:`.lifecycle`). :func:`pretrain` and :func:`train_mar` are the entry points.

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
from workbench.engine.cluster_contrast import ClusterContrastTrainer
from workbench.engine.stages import MARTrainer, PretrainTrainer, mined_pair_precision
from workbench.engine.trainer import RunResult, Trainer, TrainingDiverged, TrainingInterrupted

__all__ = ["ClusterContrastTrainer", "MARTrainer", "PretrainTrainer", "RunResult", "Trainer", "TrainingDiverged",
           "TrainingInterrupted", "check_run_folder", "check_stage", "load_result", "mined_pair_precision", "pretrain",
           "resume_run", "run_stage", "train_mar"]
