"""ReID workbench: unsupervised person re-identification by soft multilabel learning.

The public API, re-exported (imported on first use, so ``python -m workbench --help`` stays fast)::

    import workbench as wb
    cfg = wb.from_params({"preset": "demo"})
    stage1 = wb.pretrain(cfg)                                    # L_AL on the reference set
    stage2 = wb.train_mar(cfg, init_checkpoint=stage1.checkpoint)  # L_MAR on the target set
    print(stage2.metrics["rank1"], stage2.metrics["mAP"])
"""
from __future__ import annotations

from workbench.lazy import lazy_exports

import os
import sys

# OpenMP threads that wait sleep instead of spinning: two jobs sharing the cores then do not slow each
# other down 2-3x, and a job alone loses nothing (results/benchmarks/threads.txt). It must be set before
# torch loads its OpenMP runtime; an explicit OMP_WAIT_POLICY is kept. See workbench.threads.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
#: whether torch's OpenMP threads wait passively (known only when torch loaded after this module):
#: code that may run on a busy machine (re-ranking's sparse passes) uses all threads only then
OPENMP_PASSIVE = "torch" not in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "load_dataset": "workbench.data.datasets", "Sample": "workbench.data.datasets",
    "Split": "workbench.data.datasets", "DatasetError": "workbench.data.datasets",
    "ensure_synthetic": "workbench.data.synthetic",
    # configuration
    "Config": "workbench.config", "from_params": "workbench.config", "get_preset": "workbench.config",
    "load_config": "workbench.config",
    # model
    "MARNet": "workbench.models.net", "Output": "workbench.models.net", "summary": "workbench.models.net",
    "build_backbone": "workbench.models.backbones", "MultiLevelFusion": "workbench.models.fusion",
    "SEModule": "workbench.models.layers",
    # losses
    "MARLoss": "workbench.losses", "soft_multilabel": "workbench.losses", "agreement": "workbench.losses",
    "agent_loss": "workbench.losses", "joint_embedding_loss": "workbench.losses",
    "discriminative_loss": "workbench.losses", "cross_view_loss": "workbench.losses",
    # training
    "pretrain": "workbench.engine", "train_mar": "workbench.engine", "resume_run": "workbench.engine", "run_stage": "workbench.engine",
    "load_result": "workbench.engine",
    "load_model": "workbench.builders", "load_domains": "workbench.builders",
    "build_model": "workbench.builders", "RunResult": "workbench.engine", "TrainingDiverged": "workbench.engine",
    # evaluation
    "rank_metrics": "workbench.evaluation", "evaluate": "workbench.evaluation",
    "extract_features": "workbench.evaluation", "pairwise_distance": "workbench.evaluation",
    "re_ranking": "workbench.evaluation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports('workbench', _EXPORTS, globals())
