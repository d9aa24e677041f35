"""Stage 2 by clustering features and soft multilabels together (``method="soft_cluster"``): the workbench's
hybrid of MAR and Cluster-Contrast. DBSCAN clusters on ``(1 − w)·jaccard + w·(1 − A)``, the features'
k-reciprocal Jaccard distance mixed with the disagreement of the images' soft multilabels over the
(frozen) stage-1 agents (MAR's agreement ``A``); everything else is Cluster-Contrast's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.clustering import cluster_pseudo_labels
from workbench.config import FRACTION, register_method, setting
from workbench.losses import soft_multilabel
from workbench.methods.cluster_contrast import ClusterContrastTrainer, ClusterSettings

__all__ = ["HybridSettings", "SoftClusterTrainer"]


@dataclass
class HybridSettings(ClusterSettings):
    """Cluster-Contrast's settings and the weight of the soft multilabels in the distance."""

    cc_label_weight: float = setting(0.25, range=FRACTION, stage="stage2")  # w: DBSCAN's distance is
                                                                            # (1 − w)·jaccard + w·(1 − agreement)


@register_method("soft_cluster", HybridSettings, title="soft-label clustering (hybrid)")
class SoftClusterTrainer(ClusterContrastTrainer):
    """Cluster-Contrast whose clusters also read the soft multilabels (see the module docstring)."""

    def epoch_labels(self, feats: torch.Tensor) -> np.ndarray:
        st = self.cfg.settings
        multilabels = soft_multilabel(feats, self.net.agents.detach(), self.cfg.model.scale)  # (N, Np)
        return cluster_pseudo_labels(self.clustering_features(feats), eps=st.cc_eps, min_samples=st.cc_min_samples,
                                     k1=st.cc_k1, k2=st.cc_k2, multilabels=multilabels,
                                     label_weight=st.cc_label_weight)
