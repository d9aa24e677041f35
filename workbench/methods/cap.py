"""Stage 2 by camera-aware proxies (``method="cap"``, after Wang et al., "Camera-aware Proxies for Unsupervised
Person Re-Identification", AAAI 2021): Cluster-Contrast's clustering, with each cluster split into one proxy
per camera that shows it. Two contrastive terms train the features: an intra-camera one (an image against
the proxies of its own camera: tell people apart where the camera is no cue) and an inter-camera one (an
image against every proxy of its cluster, in every camera, as positives, and the hardest proxies of other
clusters as negatives: pull a person together across cameras). It attacks what the workbench measures as
the limiter of every method here: clusters that split a person by camera (``cross_share``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.clustering import ClusterMemory
from workbench.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, register_method, setting
from workbench.distributed import all_gather_cat
from workbench.methods.cluster_contrast import ClusterContrastTrainer, ClusterSettings

__all__ = ["CAPSettings", "CAPTrainer", "CameraProxyMemory"]


@dataclass
class CAPSettings(ClusterSettings):
    """Cluster-Contrast's clustering and the camera proxies' two terms."""

    cap_temperature: float = setting(0.07, range=POSITIVE, stage="stage2")  # τ of both proxy terms (CAP: 0.07)
    cap_inter_weight: float = setting(0.5, range=NON_NEGATIVE, stage="stage2")  # weight of the inter-camera term
    cap_negatives: int = setting(50, range=AT_LEAST_1, stage="stage2")  # hardest proxies of other clusters that
                                                                        # the inter-camera term pushes away


class CameraProxyMemory(ClusterMemory):
    """One L2-normalized proxy per (cluster, camera); the intra- and inter-camera InfoNCE terms; the proxies
    follow their images with momentum (:class:`~workbench.clustering.ClusterMemory`'s update).

    Args:
        dim, temperature, momentum: as :class:`~workbench.clustering.ClusterMemory`.
        inter_weight: λ of ``L = L_intra + λ·L_inter``.
        negatives: hard negative proxies per image in ``L_inter``.
    """

    def __init__(self, dim: int, temperature: float = 0.07, momentum: float = 0.2, inter_weight: float = 0.5,
                 negatives: int = 50) -> None:
        super().__init__(dim, temperature, momentum)
        self.inter_weight, self.negatives = float(inter_weight), int(negatives)
        self.register_buffer("proxy_cluster", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("proxy_camera", torch.zeros(0, dtype=torch.int64))

    @torch.no_grad()
    def reset_proxies(self, features: Tensor, labels: Tensor, camids: Tensor) -> Tensor:
        """New clusters: one proxy per (cluster, camera) with images, at their normalized centroid.

        Returns:
            (N,) each image's proxy (−1: an outlier).
        """
        keep = labels >= 0
        keys, inverse = torch.unique(torch.stack([labels[keep], camids[keep]], 1), dim=0, return_inverse=True)
        proxy = torch.full_like(labels, -1)
        proxy[keep] = inverse
        sums = features.new_zeros(len(keys), features.shape[1], dtype=torch.float32)
        sums.index_add_(0, inverse, features[keep].float())
        self.reset(sums)  # normalized
        self.proxy_cluster, self.proxy_camera = keys[:, 0].contiguous(), keys[:, 1].contiguous()
        return proxy

    def forward(self, features: Tensor, proxies: Tensor) -> dict[str, Any]:
        """Both terms over the batch's clustered images, then the update of their proxies.

        Returns:
            ``{"loss", "intra", "inter", "n"}`` (0 when no image of the batch is clustered).
        """
        keep = proxies >= 0
        f = F.normalize(features.float(), dim=1)
        if not bool(keep.any()):
            zero = f.sum() * 0.0
            return {"loss": zero, "intra": zero.detach(), "inter": zero.detach(), "n": keep.sum()}
        p = proxies[keep]
        logits = f[keep] @ self.memory.clone().t() / self.temperature  # (B', P): the proxies before this step
        own_camera = self.proxy_camera[None, :] == self.proxy_camera[p][:, None]  # (B', P)
        intra = F.cross_entropy(logits.masked_fill(~own_camera, -torch.inf), p)
        own_cluster = self.proxy_cluster[None, :] == self.proxy_cluster[p][:, None]  # (B', P): the positives
        hard = torch.topk(logits.masked_fill(own_cluster, -torch.inf), min(self.negatives, logits.shape[1]),
                          dim=1).values  # (B', K) the most similar proxies of other clusters (−inf: none left)
        denominator = torch.logsumexp(torch.cat([logits.masked_fill(~own_cluster, -torch.inf), hard], 1), dim=1)
        inter = (denominator - (logits * own_cluster).sum(1) / own_cluster.sum(1)).mean()
        loss = intra + self.inter_weight * inter
        self.update(all_gather_cat(f.detach()), all_gather_cat(proxies))
        return {"loss": loss, "intra": intra.detach(), "inter": inter.detach(), "n": keep.sum()}


@register_method("cap", CAPSettings, title="CAP (camera-aware proxies)")
class CAPTrainer(ClusterContrastTrainer):
    """Cluster-Contrast's clusters, trained through per-camera proxies (see the module docstring)."""

    def make_memory(self) -> CameraProxyMemory:
        st = self.cfg.settings
        return CameraProxyMemory(self.net.feature_dim, st.cap_temperature, st.cc_momentum, st.cap_inter_weight,
                                 st.cap_negatives)

    def reset_memory(self, feats: Tensor, labels: np.ndarray) -> None:
        self.memory_targets = self.memory.reset_proxies(
            feats, torch.as_tensor(labels, device=feats.device), torch.as_tensor(self._camids, device=feats.device))
