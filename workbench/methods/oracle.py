"""The supervised upper bound (``method="oracle"``): Cluster-Contrast's memory and loss with the target's
true identities as the clusters. It reads the labels every other method may only use to diagnose, and
so is not unsupervised: it answers how far each method is from what this backbone, data and budget
allow (Table 4's upper-bound row).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.config import register_method
from workbench.methods.cluster_contrast import ClusterContrastTrainer, MemorySettings

__all__ = ["OracleSettings", "OracleTrainer"]


@dataclass
class OracleSettings(MemorySettings):
    """The cluster memory's settings only: the labels are given."""


@register_method("oracle", OracleSettings, title="supervised upper bound (true identities)", uses_labels=True)
class OracleTrainer(ClusterContrastTrainer):
    """Cluster-Contrast trained on the true identities of the target training set."""

    labels_are = "true identities"

    def epoch_labels(self, feats: torch.Tensor) -> np.ndarray:
        return self._pids.astype(np.int64)  # relabeled 0..n−1 by the dataset reader

    def no_labels_message(self, n: int) -> str:
        return f"the target training set has no identity among its {n} images"
