"""Computations behind the soft-multilabel figures: 2-D embeddings, per-camera mean multilabels, pair
agreements and ranked galleries. Arrays in, arrays out; :mod:`workbench.viz` draws them.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from workbench.data import Sample
from workbench.evaluation.metrics import valid_gallery_mask
from workbench.losses import agreement, pair_agreement
from workbench.ops import to_numpy

__all__ = ["embed_2d", "camera_means", "pair_agreements", "rank_gallery"]


def embed_2d(features: Any, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D coordinates of features.

    Args:
        features: (N, d) array.
        method: ``"umap"`` (umap-learn, ``n_neighbors=min(15, N-1)``; PCA below 4 points), ``"pca"`` (fast) or
            ``"precomputed"`` (features already are (N, 2) coordinates).
        seed: UMAP random state.

    Returns:
        (N, 2) float32.
    """
    x = to_numpy(features).astype(np.float32)  # (N, d)
    if method == "precomputed":
        return x[:, :2]
    if method == "umap" and len(x) > 3:
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral init fallbacks
            reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed)
            return reducer.fit_transform(x).astype(np.float32)
    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap', 'pca' or 'precomputed', got {method!r}")
    centred = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T  # (N, <=2)
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1]))).astype(np.float32)


def camera_means(multilabels: Any, camids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean soft multilabel per camera.

    Args:
        multilabels: (N, Np).
        camids: (N,).

    Returns:
        ``(cameras (C,), means (C, Np))``.
    """
    y = to_numpy(multilabels).astype(np.float64)  # (N, Np)
    cams, inverse = np.unique(to_numpy(camids), return_inverse=True)
    onehot = np.zeros((len(cams), len(y)))  # (C, N)
    onehot[inverse.reshape(-1), np.arange(len(y))] = 1.0
    return cams, (onehot @ y) / onehot.sum(1, keepdims=True)  # (C, Np)


def pair_agreements(multilabels: Any, pids: Any, *, max_pairs: int = 200_000, seed: int = 0,
                    chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Agreements ``A(i, j) = Σ_k min(y_ik, y_jk)`` of image pairs and whether they share an identity.

    All pairs ``i < j`` when there are at most ``max_pairs`` (one agreement matrix), otherwise
    ``max_pairs`` random pairs ``i ≠ j`` (computed ``chunk`` pairs at a time).

    Args:
        multilabels: (N, Np) soft multilabels.
        pids: (N,) identities.
        max_pairs: the most pairs returned.
        seed: random state of the sampled pairs.
        chunk: pairs per vectorized block when sampling.

    Returns:
        ``(agreements (P,) float32, same_identity (P,) bool)``.
    """
    y = torch.as_tensor(to_numpy(multilabels), dtype=torch.float32)  # (N, Np)
    pids = to_numpy(pids)
    n = len(y)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        a = agreement(y, y).numpy()[i, j]  # (P,)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = (i + rng.integers(1, n, max_pairs)) % n  # j ≠ i
        a = np.concatenate([
            pair_agreement(y[i[s:s + chunk]], y[j[s:s + chunk]]).numpy()  # (chunk,)
            for s in range(0, max_pairs, chunk)])
    return a.astype(np.float32), pids[i] == pids[j]


def rank_gallery(distmat: Any, query: Sequence[Sample], gallery: Sequence[Sample], queries: Sequence[int],
                 k: int) -> np.ndarray:
    """Top-k gallery indices per query, Market protocol: same pid *and* camera (and pid −1) removed.

    Args:
        distmat: (Q, G) distances.
        query, gallery: the samples of the rows and columns.
        queries: row indices.
        k: list length.

    Returns:
        (len(queries), k) int64, ``-1`` where fewer than k valid gallery images exist.
    """
    rows = np.asarray(list(queries), dtype=np.int64)
    d = to_numpy(distmat)[rows].astype(np.float64)  # (R, G)
    q_pid = np.array([query[r].pid for r in rows])[:, None]
    q_cam = np.array([query[r].camid for r in rows])[:, None]
    g_pid = np.array([s.pid for s in gallery])[None, :]
    g_cam = np.array([s.camid for s in gallery])[None, :]
    junk = ~valid_gallery_mask(q_pid, q_cam, g_pid, g_cam)  # (R, G) the Market junk rule
    d = np.where(junk, np.inf, d)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]  # (R, k)
    valid = np.take_along_axis(~junk, order, axis=1)
    order = np.where(valid, order, -1)
    return np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)
