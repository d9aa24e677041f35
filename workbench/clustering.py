"""Pseudo labels by clustering and the cluster-memory contrastive loss: the Cluster-Contrast baseline
(Dai et al., "Cluster Contrast for Unsupervised Person Re-Identification", 2021), written from its
recipe for the workbench's method comparison (Zhang et al. 2020, Table 4's setting).

Each epoch: features of every target training image, the k-reciprocal Jaccard distance among them
(:func:`workbench.evaluation.jaccard_distance`), DBSCAN on it (outliers, label −1, sit the epoch
out; DBSCAN is given only the pairs within its eps, :func:`sparse_cluster_distance`), one memory
row per cluster initialised from the cluster's normalized centroid, and an InfoNCE loss of each
image against all rows with temperature τ; after each step the rows of the batch's clusters move
towards its features with momentum (``m ← μ·m + (1 − μ)·f``, renormalized).

Example:
    >>> f = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    >>> memory = ClusterMemory(4, temperature=0.05, momentum=0.2)
    >>> memory.reset(cluster_centroids(f, np.array([0, 0, 1, 1, -1, 1])))
    >>> memory.memory.shape
    torch.Size([2, 4])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distributed import all_gather_cat
from workbench.evaluation.rerank import jaccard_distance, sparse_jaccard_distance

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

__all__ = ["cluster_distance", "sparse_cluster_distance", "cluster_pseudo_labels", "cluster_centroids",
           "cluster_quality", "ClusterMemory"]


def cluster_distance(features: Tensor | np.ndarray, *, k1: int = 30, k2: int = 6, multilabels: Tensor | None = None,
                     label_weight: float = 0.0) -> np.ndarray:
    """What DBSCAN clusters on: the k-reciprocal Jaccard distance of ``features`` (N, D), and with
    ``label_weight`` w > 0 the soft-multilabel hybrid ``(1 − w)·jaccard + w·(1 − A)``, where
    ``A(y_i, y_j) = Σ_k min(y_i^k, y_j^k)`` is MAR's agreement of the images' soft multilabels (N, Np).

    Computed where the tensors are (CPU or GPU). The agreement of all pairs is an N²·Np L1 distance:
    :func:`cluster_pseudo_labels` uses this dense form only when eps ≥ 1 − w, else
    :func:`sparse_cluster_distance`.

    Returns:
        float32 (N, N) in [0, 1].
    """
    dist = jaccard_distance(features, k1, k2)
    if label_weight:
        from workbench.losses import agreement

        y = _multilabels(multilabels)
        dist = (1.0 - label_weight) * dist + label_weight * (1.0 - agreement(y, y).clamp_(0, 1).cpu().numpy())
    return dist.astype(np.float32)


def sparse_cluster_distance(features: Tensor | np.ndarray, *, max_distance: float, k1: int = 30, k2: int = 6,
                            multilabels: Tensor | None = None, label_weight: float = 0.0,
                            pair_budget: int = 1 << 22) -> csr_matrix:
    """The entries of :func:`cluster_distance` up to ``max_distance`` (< 1 − w), as a sparse matrix.

    A pair that shares no k-reciprocal neighbour has Jaccard distance 1, hence a hybrid distance of at
    least 1 − w > ``max_distance``; a pair within ``max_distance`` has a Jaccard distance of at most
    ``max_distance / (1 − w)``. Only those pairs are computed (:func:`sparse_jaccard_distance`, then
    the agreement of each pair once, through the L1 ``cdist`` kernel of
    :func:`workbench.losses.agreement`), with the operations of :func:`cluster_distance`: the same
    float32 values, bit for bit, on the same device. As DBSCAN reads it (``metric="precomputed"``,
    ``eps = max_distance``): an absent entry is no neighbour, an explicit 0 is.

    Args:
        features, k1, k2, multilabels, label_weight: as in :func:`cluster_distance`.
        max_distance: the largest distance kept; must be below ``1 − label_weight``.
        pair_budget: multilabel values gathered at once (two (pairs, Np) blocks of this size).

    Returns:
        float32 CSR (N, N), symmetric, the diagonal stored, each row's columns in order.

    Raises:
        ValueError: ``max_distance >= 1 − label_weight`` (pairs with no shared neighbour would be
            neighbours too: use :func:`cluster_distance`), or ``label_weight > 0`` without multilabels.

    Example:
        >>> f = F.normalize(torch.randn(30, 8), dim=1)
        >>> y = torch.softmax(torch.randn(30, 5), dim=1)
        >>> near = sparse_cluster_distance(f, max_distance=0.5, k1=5, k2=2, multilabels=y, label_weight=0.25)
        >>> dense = cluster_distance(f, k1=5, k2=2, multilabels=y, label_weight=0.25)
        >>> bool((near.toarray()[dense <= 0.5] == dense[dense <= 0.5]).all()), near.nnz == int((dense <= 0.5).sum())
        (True, True)
    """
    from scipy import sparse

    w = float(label_weight)
    if not _sparse_suffices(max_distance, w):
        raise ValueError(f"max_distance = {max_distance} must be below 1 - label_weight = {1.0 - w}: pairs that "
                         "share no k-reciprocal neighbour are within it too (use cluster_distance)")
    y = _multilabels(multilabels) if w else None
    # (1 − w)·J <= distance: the Jaccard distances that can be within max_distance, with room for rounding
    bound = min(1.0, max_distance / (1.0 - w) * (1.0 + 1e-4))
    rows, cols, jac = sparse_jaccard_distance(features, k1, k2, max_distance=bound)  # (P,) each, J <= bound
    upper = rows <= cols  # both distances are symmetric bit for bit: each pair once
    rows, cols, jac = rows[upper], cols[upper], jac[upper].cpu().numpy()
    if y is None:
        dist = jac
    else:
        agree = _pair_agreement(y, rows.to(y.device), cols.to(y.device), pair_budget).cpu().numpy()
        dist = (1.0 - w) * jac + w * (1.0 - agree)  # cluster_distance's float32 arithmetic
    dist = dist.astype(np.float32)
    keep = dist <= max_distance  # DBSCAN's own test, on the same float32 values
    r, c, dist = rows.cpu().numpy()[keep], cols.cpu().numpy()[keep], dist[keep]
    off = r != c
    r, c, dist = np.concatenate([r, c[off]]), np.concatenate([c, r[off]]), np.concatenate([dist, dist[off]])
    order = np.lexsort((c, r))
    n = len(features)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])
    # built from its arrays, not from (row, col) pairs: explicit zeros (the diagonal, duplicates) stay stored
    return sparse.csr_matrix((dist[order], c[order], indptr), shape=(n, n))


def cluster_pseudo_labels(features: Tensor | np.ndarray, *, eps: float = 0.6, min_samples: int = 4, k1: int = 30,
                          k2: int = 6, multilabels: Tensor | None = None, label_weight: float = 0.0) -> np.ndarray:
    """DBSCAN on :func:`cluster_distance` of ``features`` (N, D) (and of their soft multilabels).

    The distances are computed where ``features`` and ``multilabels`` are (CPU or GPU), DBSCAN runs
    on the CPU. With ``eps < 1 − label_weight`` DBSCAN gets only the pairs within ``eps``
    (:func:`sparse_cluster_distance`), else the dense :func:`cluster_distance`: the same float32
    distances either way, hence the same labels.

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

    kwargs: dict[str, Any] = dict(k1=k1, k2=k2, multilabels=multilabels, label_weight=label_weight)
    if _sparse_suffices(eps, float(label_weight)):
        dist = sparse_cluster_distance(features, max_distance=eps, **kwargs)
    else:
        dist = cluster_distance(features, **kwargs)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(dist).astype(np.int64)


def _sparse_suffices(eps: float, label_weight: float) -> bool:
    """Is every pair with Jaccard distance 1 farther than ``eps``? Its hybrid distance is at least
    ``(1 − w)·1`` as float32 computes it; ``eps`` is compared both as given and as float32."""
    far = np.float32(1.0 - label_weight)
    return bool(eps < far and np.float32(eps) < far)


def _multilabels(multilabels: Tensor | np.ndarray | None) -> Tensor:
    if multilabels is None:
        raise ValueError("label_weight > 0 needs the soft multilabels")
    return torch.as_tensor(multilabels).float()


def _pair_agreement(y: Tensor, rows: Tensor, cols: Tensor, budget: int) -> Tensor:
    """``agreement(y, y)[rows, cols].clamp(0, 1)`` (P,) without the (N, N) matrix, bit for bit: the
    same L1 ``cdist`` kernel, one pair per batch entry, ``budget // Np`` pairs at a time, their rows
    gathered into two reused buffers."""
    out = torch.empty(rows.shape[0], device=y.device)
    step = min(rows.shape[0], max(1, budget // max(1, y.shape[1])))
    buf_a, buf_b = y.new_empty(step, y.shape[1]), y.new_empty(step, y.shape[1])
    for s in range(0, rows.shape[0], step):
        a, b = rows[s:s + step], cols[s:s + step]
        ya = torch.index_select(y, 0, a, out=buf_a[:a.shape[0]])  # (p, Np)
        yb = torch.index_select(y, 0, b, out=buf_b[:b.shape[0]])
        out[s:s + step] = torch.cdist(ya.unsqueeze(1), yb.unsqueeze(1), p=1.0).view(-1)  # (p, 1, Np)² → (p, 1, 1)
    return (1.0 - 0.5 * out).clamp_(0, 1)


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
    """``evaluation.names.CAMERA_COLUMNS`` from camera counts: the share of positives that are cross-camera, their
    precision, and the recall of same-identity pairs within one camera and across cameras (NaN for 0/0)."""
    def ratio(a: float, b: float) -> float:
        return float(a) / float(b) if float(b) else float("nan")

    return {"cross_share": ratio(counts["pos_cross"], counts["pos"]),
            "cross_precision": ratio(counts["true_cross"], counts["pos_cross"]),
            "recall_same_cam": ratio(counts["true_same"], counts["pairs_same"]),
            "recall_cross_cam": ratio(counts["true_cross"], counts["pairs_cross"])}
