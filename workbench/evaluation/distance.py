"""Input checks shared by the evaluation modules, and query × gallery distances.

``pairwise_distance`` is one GEMM written straight into the output, the constant part put there
first (``beta = 1``): ``1 − q̂·ĝ`` (cosine) or ``‖q‖² + ‖g‖² − 2 q·g`` (squared Euclidean), then
clamped at 0 in place.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.ops import to_numpy

__all__ = ["ArrayLike", "Metric", "pairwise_distance"]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
Metric = Literal["cosine", "euclidean"]


# --------------------------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------------------------

def _labels(x: ArrayLike, name: str) -> np.ndarray:
    a = to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(a.shape)}")
    if a.size and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            pass
        else:
            raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _distance_matrix(distmat: ArrayLike) -> np.ndarray:
    d = to_numpy(distmat)
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(d.shape)}")
    if d.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
            raise ValueError(f"distmat must be numeric, got dtype {d.dtype}")
        d = d.astype(np.float64 if d.dtype.itemsize > 4 or np.issubdtype(d.dtype, np.integer)
                     else np.float32)
    return d


def _check_label_shapes(shape: tuple[int, int], q_pids: np.ndarray, g_pids: np.ndarray,
                        q_camids: np.ndarray, g_camids: np.ndarray) -> None:
    num_q, num_g = shape
    for name, arr, n, what in (("q_pids", q_pids, num_q, "rows (queries)"),
                               ("q_camids", q_camids, num_q, "rows (queries)"),
                               ("g_pids", g_pids, num_g, "columns (gallery)"),
                               ("g_camids", g_camids, num_g, "columns (gallery)")):
        if arr.shape[0] != n:
            raise ValueError(f"shape mismatch: distmat has shape {shape} ({n} {what}) but {name} "
                             f"has shape {tuple(arr.shape)}")


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``num_threads`` torch intra-op threads (None: leave the setting alone)."""
    if num_threads is None or num_threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _features(x: ArrayLike, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_images, dim), got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.float()
    return t.float()


# --------------------------------------------------------------------------------------------
# distances
# --------------------------------------------------------------------------------------------

def _prepare(x: torch.Tensor, metric: str, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalized features (cosine) or features + squared norms (euclidean)."""
    if metric == "cosine":
        if inplace:  # the same arithmetic as F.normalize, without a copy
            return x.div_(x.norm(dim=1, keepdim=True).clamp_min_(1e-12)), None
        return F.normalize(x, dim=1), None
    if metric == "euclidean":
        return x, torch.bmm(x[:, None, :], x[:, :, None]).view(-1)  # (N,) row dot products, no (N, D) temporary
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def _block_distance(a: torch.Tensor, a_sq: torch.Tensor | None, b: torch.Tensor,
                    b_sq: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Distances between prepared rows ``a`` (n, D) and ``b`` (m, D), clamped at 0 → (n, m).

    One GEMM with the constant part already in the output (``beta = 1``), then an in-place clamp:
    ``1 − a·b`` (cosine) or ``|a|² + |b|² − 2 a·b`` (squared Euclidean). ``out`` may be a
    preallocated (n, m) buffer (reused: no fresh pages to fault in).
    """
    if out is None:
        out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device)
    if a_sq is None:  # cosine
        out.fill_(1.0).addmm_(a, b.t(), alpha=-1.0)
    else:  # squared euclidean
        torch.add(a_sq[:, None], b_sq[None, :], out=out).addmm_(a, b.t(), alpha=-2.0)
    return out.clamp_(min=0.0)


def pairwise_distance(qf: ArrayLike, gf: ArrayLike, metric: Metric = "cosine", *,
                      chunk_size: int | None = None) -> np.ndarray:
    """Distance matrix between query and gallery features.

    Args:
        qf: query features (Q, D), numpy or torch (any device; computed there).
        gf: gallery features (G, D).
        metric: ``"cosine"`` = 1 − cosine similarity (features L2-normalized here), in [0, 2];
            ``"euclidean"`` = *squared* Euclidean distance, as torchreid's ``compute_distance_matrix``.
            Both are clamped at 0 (float rounding can make them slightly negative).
        chunk_size: query rows per matrix product (default: all at once on the CPU, where the
            product is written straight into the output; about 16M distances elsewhere).

    Returns:
        float32 numpy array (Q, G).

    Example:
        >>> q, g = torch.randn(3, 8), torch.randn(5, 8)
        >>> pairwise_distance(q, g, "cosine").shape
        (3, 5)
    """
    q, g = _features(qf, "qf"), _features(gf, "gf")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: qf has shape {tuple(q.shape)}, "
                         f"gf has shape {tuple(g.shape)}")
    g = g.to(q.device)
    qp, q_sq = _prepare(q, metric)
    gp, g_sq = _prepare(g, metric)
    num_q, num_g = q.shape[0], g.shape[0]
    # torch's allocator, not np.empty: numpy asks for transparent huge pages on large arrays, and on a
    # kernel that compacts memory for them on the first touch (defrag=madvise) faulting the matrix in
    # cost up to 0.8 s of a 6 s product (results/benchmarks/evaluation.txt)
    out_t = torch.empty((num_q, num_g), dtype=torch.float32)
    out = out_t.numpy()
    if num_q == 0 or num_g == 0:
        return out
    on_cpu = q.device.type == "cpu"
    # on the CPU one GEMM straight into the output; elsewhere chunks of about 16M distances
    step = chunk_size or (num_q if on_cpu else max(1, (1 << 24) // num_g))
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        a_sq = None if q_sq is None else q_sq[s:e]
        if on_cpu:
            _block_distance(qp[s:e], a_sq, gp, g_sq, out=out_t[s:e])
        else:
            out_t[s:e].copy_(_block_distance(qp[s:e], a_sq, gp, g_sq))
    return out
