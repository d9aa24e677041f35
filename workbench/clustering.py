"""Pseudo labels by clustering and the cluster-memory contrastive loss: the Cluster-Contrast baseline
(Dai et al., "Cluster Contrast for Unsupervised Person Re-Identification", 2021), written from its
recipe for the workbench's method comparison (Zhang et al. 2020, Table 4's setting).

Each epoch: features of every target training image, the k-reciprocal Jaccard distance among them
(:func:`workbench.evaluation.jaccard_distance`), DBSCAN on it (outliers, label −1, sit the epoch
out), one memory row per cluster initialised from the cluster's normalized centroid, and an
InfoNCE loss of each image against all rows with temperature τ; after each step the rows of the
batch's clusters move towards its features with momentum (``m ← μ·m + (1 − μ)·f``, renormalized).

Example:
    >>> f = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    >>> memory = ClusterMemory(4, temperature=0.05, momentum=0.2)
    >>> memory.reset(cluster_centroids(f, np.array([0, 0, 1, 1, -1, 1])))
    >>> memory.memory.shape
    torch.Size([2, 4])
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distributed import all_gather_cat
from workbench.evaluation.rerank import jaccard_distance

__all__ = ["cluster_distance", "cluster_pseudo_labels", "cluster_centroids", "cluster_quality", "ClusterMemory"]


def cluster_distance(features: Tensor | np.ndarray, *, k1: int = 30, k2: int = 6, multilabels: Tensor | None = None,
                     label_weight: float = 0.0) -> np.ndarray:
    """What DBSCAN clusters on: the k-reciprocal Jaccard distance of ``features`` (N, D), and with
    ``label_weight`` w > 0 the soft-multilabel hybrid ``(1 − w)·jaccard + w·(1 − A)``, where
    ``A(y_i, y_j) = Σ_k min(y_i^k, y_j^k)`` is MAR's agreement of the images' soft multilabels (N, Np).

    Returns:
        float32 (N, N) in [0, 1].
    """
    dist = jaccard_distance(features, k1, k2)
    if label_weight:
        if multilabels is None:
            raise ValueError("label_weight > 0 needs the soft multilabels")
        from workbench.losses import agreement

        y = torch.as_tensor(multilabels).float()
        dist = (1.0 - label_weight) * dist + label_weight * (1.0 - agreement(y, y).clamp_(0, 1).numpy())
    return dist.astype(np.float32)


def cluster_pseudo_labels(features: Tensor | np.ndarray, *, eps: float = 0.6, min_samples: int = 4, k1: int = 30,
                          k2: int = 6, multilabels: Tensor | None = None, label_weight: float = 0.0) -> np.ndarray:
    """DBSCAN on :func:`cluster_distance` of ``features`` (N, D) (and of their soft multilabels).

    Args:
        eps: DBSCAN's neighbourhood radius on the Jaccard distance (Cluster-Contrast: 0.6).
        min_samples: images within ``eps`` (the image itself included, as in scikit-learn) that make a
            core image (Cluster-Contrast: 4).
        k1, k2: the Jaccard distance's neighbourhoods (Cluster-Contrast: 30, 6).
        multilabels, label_weight: the soft-multilabel hybrid (:func:`cluster_distance`).

    Returns:
        int64 labels (N,): 0..C−1 for the clusters, −1 for outliers.
    """
    from sklearn.cluster import DBSCAN

    dist = cluster_distance(features, k1=k1, k2=k2, multilabels=multilabels, label_weight=label_weight)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(dist).astype(np.int64)


def cluster_centroids(features: Tensor, labels: np.ndarray | Tensor) -> Tensor:
    """L2-normalized mean feature of each cluster, in label order: (C, D); outliers (−1) left out."""
    labels = torch.as_tensor(np.asarray(labels), device=features.device)
    num = int(labels.max()) + 1 if labels.numel() else 0
    keep = labels >= 0
    sums = torch.zeros(num, features.shape[1], device=features.device, dtype=torch.float32)
    sums.index_add_(0, labels[keep], features[keep].float())
    return F.normalize(sums, dim=1)


def cluster_quality(labels: np.ndarray, pids: np.ndarray) -> dict[str, float]:
    """How well pseudo labels match the identities the method never sees (a diagnostic, as MAR's
    mined-pair precision): clusters, outliers, purity, NMI and the pair precision/recall.

    ``purity`` = share of clustered images whose cluster's most frequent identity is theirs;
    ``pair_precision`` = share of same-cluster pairs that show one person (comparable to L_MDL's
    mined-positive precision); ``pair_recall`` = share of same-person pairs put in one cluster
    (outliers count as missed); ``nmi`` over the clustered images (scikit-learn's, arithmetic mean).
    """
    from sklearn.metrics import normalized_mutual_info_score

    labels, pids = np.asarray(labels), np.asarray(pids)
    clustered = labels >= 0
    out: dict[str, float] = {"n_clusters": float(len(np.unique(labels[clustered]))),
                             "n_outliers": float((~clustered).sum())}
    if not clustered.any():
        return out | {"purity": float("nan"), "nmi": float("nan"), "pair_precision": float("nan"),
                      "pair_recall": 0.0}
    lab, pid = labels[clustered], pids[clustered]
    keys, joint = np.unique(np.stack([lab, pid], 1), axis=0, return_counts=True)  # (cluster, identity) sizes
    _, per_cluster = np.unique(lab, return_counts=True)
    _, per_identity = np.unique(pids, return_counts=True)
    majority = np.zeros(int(lab.max()) + 1, dtype=np.int64)
    np.maximum.at(majority, keys[:, 0], joint)  # the largest identity of each cluster

    def pairs(n: np.ndarray) -> float:
        return float((n * (n - 1) // 2).sum())

    same = pairs(joint)
    out["purity"] = float(majority.sum()) / float(clustered.sum())
    out["nmi"] = float(normalized_mutual_info_score(pid, lab))
    out["pair_precision"] = same / pairs(per_cluster) if pairs(per_cluster) else float("nan")
    out["pair_recall"] = same / pairs(per_identity) if pairs(per_identity) else float("nan")
    return out


class ClusterMemory(nn.Module):
    """One L2-normalized row per cluster; InfoNCE of each feature against all rows; momentum update.

    Args:
        dim: feature dimension.
        temperature: τ of the softmax over ``feature · memoryᵀ / τ`` (Cluster-Contrast: 0.05).
        momentum: μ of the update ``m_y ← μ·m_y + (1 − μ)·f`` (Cluster-Contrast: 0.2), applied image by
            image in batch order and renormalized after each.
    """

    def __init__(self, dim: int, temperature: float = 0.05, momentum: float = 0.2) -> None:
        super().__init__()
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.register_buffer("memory", torch.zeros(0, dim))

    @torch.no_grad()
    def reset(self, centroids: Tensor) -> None:
        """New clusters: the rows become these (normalized) centroids."""
        self.memory = F.normalize(centroids.detach().float(), dim=1).to(self.memory.device)

    def forward(self, features: Tensor, labels: Tensor) -> dict[str, Any]:
        """The loss over the batch's clustered images (label ≥ 0), then the update of their rows.

        Under DDP the update uses every rank's images (gathered, rank order), so the memory stays
        identical on all ranks; the loss is each rank's own mean.

        Returns:
            ``{"loss": InfoNCE mean (0 when no image is clustered), "n": clustered images}``.
        """
        keep = labels >= 0
        f = F.normalize(features.float(), dim=1)
        logits = f[keep] @ self.memory.clone().t() / self.temperature  # (B', C): the rows before this step
        loss = F.cross_entropy(logits, labels[keep]) if bool(keep.any()) else f.sum() * 0.0
        self.update(all_gather_cat(f.detach()), all_gather_cat(labels))
        return {"loss": loss, "n": keep.sum()}

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        m = self.momentum
        for f, y in zip(features, labels.tolist()):
            if y >= 0:
                row = self.memory[y].mul_(m).add_(f, alpha=1.0 - m)
                row.div_(row.norm().clamp_min(1e-12))


# ----------------------------------------------------------------------------- cross-camera supervision

#: what every stage-2 method logs per epoch about the pairs that supervise it (read from the hidden labels)
CAMERA_COLUMNS = ("cross_share", "cross_precision", "recall_same_cam", "recall_cross_cam")


def _pairs(n: np.ndarray) -> float:
    return float((n * (n - 1) // 2).sum())


def _group_pairs(*columns: np.ndarray) -> float:
    """Pairs within the groups of equal rows of ``columns``: Σ C(n_g, 2)."""
    if not len(columns[0]):
        return 0.0
    _, counts = np.unique(np.stack(columns, 1), axis=0, return_counts=True)
    return _pairs(counts)


def cluster_camera_counts(labels: np.ndarray, pids: np.ndarray, camids: np.ndarray) -> dict[str, float]:
    """The camera counts of clusters as supervision (every same-cluster pair is a positive), for
    :func:`camera_ratios`: positives, cross-camera positives, true cross- and same-camera positives, and
    the same-identity pairs there are within and across cameras (outliers are in no cluster)."""
    labels, pids, camids = np.asarray(labels), np.asarray(pids), np.asarray(camids)
    c = labels >= 0
    lab, pid, cam = labels[c], pids[c], camids[c]
    pos, pos_same = _group_pairs(lab), _group_pairs(lab, cam)
    true_all, true_same = _group_pairs(lab, pid), _group_pairs(lab, pid, cam)
    id_all, id_same = _group_pairs(pids), _group_pairs(pids, camids)
    return {"pos": pos, "pos_cross": pos - pos_same, "true_cross": true_all - true_same, "true_same": true_same,
            "pairs_same": id_same, "pairs_cross": id_all - id_same}


def camera_ratios(counts: dict[str, float]) -> dict[str, float]:
    """:data:`CAMERA_COLUMNS` from camera counts: the share of positives that are cross-camera, their
    precision, and the recall of same-identity pairs within one camera and across cameras (NaN for 0/0)."""
    def ratio(a: float, b: float) -> float:
        return float(a) / float(b) if float(b) else float("nan")

    return {"cross_share": ratio(counts["pos_cross"], counts["pos"]),
            "cross_precision": ratio(counts["true_cross"], counts["pos_cross"]),
            "recall_same_cam": ratio(counts["true_same"], counts["pairs_same"]),
            "recall_cross_cam": ratio(counts["true_cross"], counts["pairs_cross"])}
