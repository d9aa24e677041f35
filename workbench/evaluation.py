"""Evaluation: features → distances → rank metrics (CMC, mAP, mINP), and k-reciprocal re-ranking.

Protocol (Market-1501 single query, as the devkit and torchreid): for each query the gallery images
of the same identity *and* the same camera are removed, junk images (pid ``-1``) never count
(removed), distractors (pid ``0`` in Market/Duke) count as wrong matches. Queries with no valid
match left are skipped and counted in ``num_valid``.

Two AP conventions are supported (``rank_metrics(..., ap=...)``):

- ``"standard"``: non-interpolated AP (torchreid, fast-reid): mean over the hits of the precision
  at each hit.
- ``"devkit"``: the Market-1501 devkit / MAR official trapezoid: at each hit
  ``d_recall * (old_precision + precision) / 2`` with ``old_precision = i / rank_i`` (1.0 when the
  hit is at rank 0).

mINP follows Ye et al. (TPAMI 2021): number of positives / (rank of the hardest positive + 1).

Speed: ``rank_metrics`` never sorts a row of the distance matrix. Only the ranks of the few
positives matter; they are obtained by bucketing every gallery distance of a chunk of queries
against the sorted distances of that query's positives (a monotone float map + a histogram), and
resolving exactly, with the gallery index as tie-breaker, only the few distances that fall into a
bucket holding a positive. Results equal a per-query loop over ``np.argsort(kind="stable")``.

``re_ranking`` (Zhong et al., CVPR 2017) works from features with bounded memory: neighbour lists
from a blocked, symmetric pass over the (Q+G)² distances (never stored), sparse k-reciprocal
vectors, and the query × gallery Jaccard distance through an inverted index.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "pairwise_distance",
    "rank_metrics",
    "re_ranking",
    "extract_features",
    "evaluate_features",
    "evaluate",
]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
Metric = Literal["cosine", "euclidean"]
APConvention = Literal["standard", "devkit", "both"]

_NUM_BUCKETS = 4096  # resolution of the per-row bucketing in rank_metrics
_CHUNK_ELEMENTS = 1 << 22  # distances handled at once in rank_metrics (≈ 4M, tens of MB of scratch)


# --------------------------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------------------------

def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(x: ArrayLike, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(a.shape)}")
    if a.size and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            pass
        else:
            raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _distance_matrix(distmat: ArrayLike) -> np.ndarray:
    d = _to_numpy(distmat)
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
        return x, (x * x).sum(1)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def _block_distance(a: torch.Tensor, a_sq: torch.Tensor | None, b: torch.Tensor,
                    b_sq: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Distances between prepared rows ``a`` (n, D) and ``b`` (m, D), clamped at 0 → (n, m)."""
    d = torch.mm(a, b.t(), out=out)  # (n, m)
    if a_sq is None:  # cosine: 1 - cos
        d.neg_().add_(1.0)
    else:  # squared euclidean: |a|² + |b|² - 2 a·b
        d.mul_(-2.0).add_(a_sq[:, None]).add_(b_sq[None, :])
    return d.clamp_(min=0.0)


def pairwise_distance(qf: ArrayLike, gf: ArrayLike, metric: Metric = "cosine", *,
                      chunk_size: int | None = None) -> np.ndarray:
    """Distance matrix between query and gallery features.

    Args:
        qf: query features (Q, D), numpy or torch (any device; computed there).
        gf: gallery features (G, D).
        metric: ``"cosine"`` = 1 − cosine similarity (features L2-normalized here), in [0, 2];
            ``"euclidean"`` = *squared* Euclidean distance, as torchreid's ``compute_distance_matrix``.
            Both are clamped at 0 (float rounding can make them slightly negative).
        chunk_size: query rows per matrix product (default: about 16M distances at once).

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
    out = np.empty((num_q, num_g), dtype=np.float32)
    if num_q == 0 or num_g == 0:
        return out
    out_t = torch.from_numpy(out)
    step = chunk_size or max(1, (1 << 24) // max(num_g, 1))
    on_cpu = q.device.type == "cpu"
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        a_sq = None if q_sq is None else q_sq[s:e]
        if on_cpu:
            _block_distance(qp[s:e], a_sq, gp, g_sq, out=out_t[s:e])
        else:
            out_t[s:e].copy_(_block_distance(qp[s:e], a_sq, gp, g_sq))
    return out


# --------------------------------------------------------------------------------------------
# rank metrics
# --------------------------------------------------------------------------------------------

def _positions_among(e_rows: np.ndarray, e_d: np.ndarray, e_cols: np.ndarray, t_rows: np.ndarray,
                     t_d: np.ndarray, t_cols: np.ndarray, t_start: np.ndarray) -> np.ndarray:
    """For each element (row, d, col): how many thresholds of its row precede it.

    Order is lexicographic on (distance, gallery column), i.e. a stable argsort of the row. A
    threshold identical to an element (a positive seen as an element) does not precede it.
    ``t_start[row]`` is the offset of the row's thresholds in the (row-sorted) threshold arrays.
    """
    n_e = e_rows.shape[0]
    if n_e == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate([e_rows, t_rows])
    d = np.concatenate([e_d, t_d])
    cols = np.concatenate([e_cols, t_cols])
    flag = np.concatenate([np.zeros(n_e, np.int8), np.ones(t_rows.shape[0], np.int8)])
    order = np.lexsort((flag, cols, d, rows))
    is_t = flag[order].astype(np.int64)
    before = np.cumsum(is_t) - is_t  # thresholds strictly before each sorted position
    elem = is_t == 0
    pos = np.empty(n_e, dtype=np.int64)
    pos[order[elem]] = before[elem] - t_start[rows[order[elem]]]
    return pos


class _Scratch:
    """Buffers reused by every chunk of ``rank_metrics`` (fresh large tensors page-fault each time)."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, num_buckets: int) -> None:
        self.y = torch.empty(rows, cols, dtype=dtype)  # scaled distances
        self.bucket = torch.empty(rows, cols, dtype=torch.int64)  # bucket of every distance
        self.mask = torch.empty(rows, cols, dtype=torch.bool)  # distance shares a bucket with a positive
        self.hist = torch.empty(rows, num_buckets + 3, dtype=torch.int32)
        self.ones = torch.ones((1, 1), dtype=torch.int32).expand(rows, cols)


def _chunk_counts(dc: torch.Tensor, s_first: np.ndarray, s_last: np.ndarray, n_pos: np.ndarray,
                  t_rows: np.ndarray, t_d: np.ndarray, t_cols: np.ndarray,
                  junk: torch.Tensor | None, scratch: _Scratch, num_buckets: int) -> torch.Tensor:
    """counts (C, P+1): per query row of ``dc`` (C, G), how many gallery items precede exactly k of
    its positives, k = 0..P, in the stable order (distance, column). Junk columns are left out.

    The positives of the chunk are the flat arrays ``t_*``, sorted by (row, distance, column);
    ``s_first`` / ``s_last`` hold each row's smallest / largest positive distance.

    Every distance is mapped to one of ``num_buckets + 2`` buckets by a per-row monotone map
    (subtract, multiply by a positive scale, clamp, truncate: each step is monotone and computed
    element-wise by the same IEEE operations, so equal distances share a bucket). A distance in a
    bucket without positives precedes exactly the positives of the lower buckets; the few
    distances that share a bucket with a positive are placed exactly, ties broken by column.
    """
    num_c, num_g = dc.shape
    mb = num_buckets
    num_p = int(n_pos.max())
    has = n_pos > 0
    width = s_last - s_first
    span = np.where(width > 0, width, np.maximum(np.abs(s_first), 1e-30))  # any positive scale is exact
    scale = np.where(has, np.minimum((mb - 1) / span, 1e30), 0.0)
    shift = np.where(has, s_first - 1.0 / np.where(has, scale, 1.0), 0.0)  # first positive → bucket ≈ 1
    scale_t = torch.from_numpy(scale).to(dc.dtype)[:, None]
    shift_t = torch.from_numpy(shift).to(dc.dtype)[:, None]

    y = torch.sub(dc, shift_t, out=scratch.y[:num_c])
    y.mul_(scale_t).clamp_(0.0, float(mb + 1))
    bucket = scratch.bucket[:num_c]
    bucket.copy_(y)  # truncation == floor on values >= 0
    if junk is not None:
        bucket.index_fill_(1, junk, mb + 2)  # a bucket of its own, never counted
    hist = scratch.hist[:num_c].zero_()
    hist.scatter_add_(1, bucket, scratch.ones[:num_c])  # (C, M+3)
    hist[:, mb + 2] = 0

    tr, tc = torch.from_numpy(t_rows), torch.from_numpy(t_cols)
    t_bucket = bucket[tr, tc]  # the positives' own buckets
    at = torch.zeros(num_c * (mb + 3), dtype=torch.int64)
    at.index_add_(0, tr * (mb + 3) + t_bucket, torch.ones(tr.shape[0], dtype=torch.int64))
    at = at.view(num_c, mb + 3)
    bound = at > 0  # (C, M+3) buckets holding a positive
    below = at.cumsum(1).sub_(at)  # positives in strictly lower buckets
    counts = torch.zeros(num_c, num_p + 1, dtype=torch.int64)
    counts.scatter_add_(1, below, hist.masked_fill_(bound, 0).to(torch.int64))

    mask = torch.gather(bound, 1, bucket, out=scratch.mask[:num_c])
    e_r, e_c = mask.nonzero(as_tuple=True)  # distances sharing a bucket with a positive
    e_d = dc[e_r, e_c].numpy()
    e_r_np, e_c_np = e_r.numpy(), e_c.numpy()
    t_start = np.cumsum(n_pos) - n_pos
    pos = _positions_among(e_r_np, e_d, e_c_np, t_rows, t_d, t_cols, t_start)
    flat = torch.from_numpy(e_r_np * (num_p + 1) + pos)
    counts.view(-1).index_add_(0, flat, torch.ones(flat.shape[0], dtype=torch.int64))
    return counts


def _positive_ranks(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                    g_camids: np.ndarray, *, chunk_size: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank (0-based, among the valid gallery items, stable order) of every positive of every query.

    Returns ``(rows, k, rank, n_pos)``: flat arrays over all positives sorted by (query, rank)
    — ``k`` is the positive's index within its query — and the number of positives per query.
    """
    num_q, num_g = dist.shape
    real = np.flatnonzero(g_pids != -1)  # junk never counts
    junk = None if real.shape[0] == num_g else torch.from_numpy(np.flatnonzero(g_pids == -1))

    # Gallery items with the query's pid: contiguous runs of the pid-sorted (non-junk) gallery.
    order = real[np.argsort(g_pids[real], kind="stable")]
    sorted_pids = g_pids[order]
    lo = np.searchsorted(sorted_pids, q_pids, "left")
    lens = np.searchsorted(sorted_pids, q_pids, "right") - lo
    rows = np.repeat(np.arange(num_q), lens)
    within = np.arange(rows.shape[0]) - np.repeat(np.cumsum(lens) - lens, lens)
    cols = order[np.repeat(lo, lens) + within]
    d = dist[rows, cols]
    is_pos = g_camids[cols] != q_camids[rows]

    # Positives, sorted by (query, distance, column); same-id same-camera items are removed.
    p_rows, p_cols, p_d = rows[is_pos], cols[is_pos], d[is_pos]
    o = np.lexsort((p_cols, p_d, p_rows))
    p_rows, p_cols, p_d = p_rows[o], p_cols[o], p_d[o]
    n_pos = np.bincount(p_rows, minlength=num_q).astype(np.int64)
    p_start = np.cumsum(n_pos) - n_pos
    p_k = np.arange(p_rows.shape[0]) - p_start[p_rows]
    has = n_pos > 0
    s_first = np.zeros(num_q)
    s_last = np.zeros(num_q)
    s_first[has] = p_d[p_start[has]]
    s_last[has] = p_d[p_start[has] + n_pos[has] - 1]
    r_rows, r_cols, r_d = rows[~is_pos], cols[~is_pos], d[~is_pos]
    r_pos = _positions_among(r_rows, r_d, r_cols, p_rows, p_d, p_cols, p_start)

    ranks = np.empty(p_rows.shape[0], dtype=np.int64)
    num_buckets = _NUM_BUCKETS
    step = max(1, min(num_q, chunk_size or _CHUNK_ELEMENTS // max(num_g, 1)))
    scratch = None
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        block = dist[s:e]
        dc = torch.from_numpy(block if block.flags.c_contiguous else np.ascontiguousarray(block))
        if not bool(torch.isfinite(dc.sum())):  # NaN/inf, or an overflowing sum of finite values
            bad = ~torch.isfinite(dc)
            if bool(bad.any()):
                r, c = (int(v) for v in bad.nonzero()[0])
                raise ValueError(f"distmat contains {int(bad.sum())} NaN/inf value(s) in rows "
                                 f"{s}..{e - 1}, first at [{s + r}, {c}] = {float(dc[r, c])}")
        npc = n_pos[s:e]
        if npc.max(initial=0) == 0:
            continue
        if scratch is None:
            scratch = _Scratch(step, num_g, dc.dtype, num_buckets)
        a, b = p_start[s], p_start[e - 1] + n_pos[e - 1]
        t_rows, t_k = p_rows[a:b] - s, p_k[a:b]
        counts = _chunk_counts(dc, s_first[s:e], s_last[s:e], npc, t_rows, p_d[a:b], p_cols[a:b],
                               junk, scratch, num_buckets)
        num_p = counts.shape[1] - 1
        before = counts.cumsum(1)[:, :num_p].numpy()  # (C, P) items up to positive k, itself included
        # minus the removed (same id, same camera) items up to each positive
        ra, rb = np.searchsorted(r_rows, [s, e])
        removed = np.bincount((r_rows[ra:rb] - s) * (num_p + 1) + r_pos[ra:rb],
                              minlength=(e - s) * (num_p + 1)).reshape(e - s, num_p + 1)
        before = before - np.cumsum(removed, axis=1)[:, :num_p]
        ranks[a:b] = before[t_rows, t_k] - 1
    return p_rows, p_k, ranks, n_pos


def rank_metrics(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                 g_camids: ArrayLike, *, max_rank: int = 50, ap: APConvention = "standard",
                 per_query: bool = False, chunk_size: int | None = None,
                 num_threads: int | None = 1) -> dict[str, Any]:
    """CMC, mAP and mINP under the Market-1501 protocol, without sorting the distance matrix.

    For each query, gallery items with the same pid and the same camera are removed, junk (pid −1)
    is removed, distractors (pid 0) count as wrong. Equal distances are ordered by gallery index
    (the result equals a per-query loop over ``np.argsort(row, kind="stable")``).

    Args:
        distmat: (Q, G) distances, numpy or torch, finite; float32/float64 kept as is.
        q_pids, g_pids, q_camids, g_camids: integer labels, lengths Q, G, Q, G.
        max_rank: length of the CMC curve (≥ 1). Entries past the gallery size repeat the last value.
        ap: ``"standard"`` (non-interpolated, torchreid / fast-reid), ``"devkit"`` (Market devkit /
            MAR official trapezoid), or ``"both"`` (``mAP`` standard plus ``mAP_devkit``, one pass).
        per_query: also return per-query arrays ``AP`` (and ``AP_devkit``), ``INP``, ``first_hit``
            (0-based rank of the first match) and ``valid``; NaN / −1 for skipped queries.
        chunk_size: query rows handled at once (default: about 4M distances, tens of MB of scratch).
        num_threads: torch threads used inside (default 1: the passes are short and memory-bound;
            on a busy machine a second thread costs more in synchronization than it saves).
            ``None`` keeps the current ``torch.get_num_threads()``.

    Returns:
        dict with ``cmc`` (float64 array of length ``max_rank``, fractions), ``mAP``, ``mINP``
        (fractions in [0, 1]), ``num_valid`` (queries with at least one valid match), ``num_query``
        and ``ap`` (the convention of ``mAP``); ``mAP_devkit`` when ``ap="both"``.

    Raises:
        ValueError: shape mismatch, NaN/inf distances, ``max_rank < 1``, unknown ``ap``, or no
            query with a valid match.

    Example:
        >>> d = np.array([[0.1, 0.5, 0.3]])
        >>> m = rank_metrics(d, [1], [1, 2, 1], [0], [1, 1, 2], max_rank=3)
        >>> m["cmc"].tolist(), round(m["mAP"], 4)
        ([1.0, 1.0, 1.0], 1.0)
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be an integer >= 1, got {max_rank!r}")
    if ap not in ("standard", "devkit", "both"):
        raise ValueError(f"ap must be 'standard', 'devkit' or 'both', got {ap!r}")
    dist = _distance_matrix(distmat)
    qp, gp = _labels(q_pids, "q_pids"), _labels(g_pids, "g_pids")
    qc, gc = _labels(q_camids, "q_camids"), _labels(g_camids, "g_camids")
    _check_label_shapes(dist.shape, qp, gp, qc, gc)
    max_rank = int(max_rank)
    num_q = dist.shape[0]

    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    with _torch_threads(num_threads):
        rows, k, rank, n_pos = _positive_ranks(dist, qp, gp, qc, gc, chunk_size=chunk_size)
    valid = n_pos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"no query has a valid match: none of the {num_q} queries has a gallery image of the same "
            f"id from another camera (junk pid -1 and same-camera matches are removed)")

    first = np.full(num_q, -1, dtype=np.int64)
    first[rows[k == 0]] = rank[k == 0]
    hits = np.bincount(np.minimum(first[valid], max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hits) / num_valid

    nv = n_pos[valid].astype(np.float64)
    precision = (k + 1) / (rank + 1)
    ap_std = np.bincount(rows, weights=precision, minlength=num_q)[valid] / nv
    last = np.zeros(num_q, dtype=np.int64)
    is_last = k == n_pos[rows] - 1
    last[rows[is_last]] = rank[is_last]
    inp = nv / (last[valid] + 1)
    result: dict[str, Any] = {"cmc": cmc}
    ap_dev = None
    if ap in ("devkit", "both"):
        old = np.where(rank == 0, 1.0, k / np.maximum(rank, 1))
        ap_dev = np.bincount(rows, weights=(old + precision) / 2, minlength=num_q)[valid] / nv
    if ap == "devkit":
        result["mAP"] = float(ap_dev.mean())
    else:
        result["mAP"] = float(ap_std.mean())
        if ap == "both":
            result["mAP_devkit"] = float(ap_dev.mean())
    result.update(mINP=float(inp.mean()), num_valid=num_valid, num_query=num_q, ap=ap)
    if per_query:
        def spread(values: np.ndarray) -> np.ndarray:
            full = np.full(num_q, np.nan)
            full[valid] = values
            return full
        result["AP"] = spread(ap_dev if ap == "devkit" else ap_std)
        if ap == "both":
            result["AP_devkit"] = spread(ap_dev)
        result.update(INP=spread(inp), first_hit=first, valid=valid)
    return result


# --------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# --------------------------------------------------------------------------------------------

def _merge_rows(top_d: torch.Tensor, top_i: torch.Tensor, r0: int, r1: int, cand_d: torch.Tensor,
                cand_i: torch.Tensor) -> None:
    """Keep the ``K`` smallest of the running lists of rows ``r0:r1`` and the candidates (sorted)."""
    all_d = torch.cat([top_d[r0:r1], cand_d], dim=1)
    all_i = torch.cat([top_i[r0:r1], cand_i], dim=1)
    v, j = torch.topk(all_d, top_d.shape[1], dim=1, largest=False, sorted=True)
    top_d[r0:r1] = v
    top_i[r0:r1] = all_i.gather(1, j)


def _offer(top_d: torch.Tensor, top_i: torch.Tensor, r0: int, r1: int, rows: torch.Tensor,
           cols: torch.Tensor, vals: torch.Tensor) -> None:
    """Offer candidate neighbours (row, col, distance), rows sorted, to the lists of rows r0:r1."""
    if rows.numel() == 0:
        return
    count = torch.bincount(rows, minlength=r1 - r0)
    slot = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(count, 0) - count)[rows]
    width = int(count.max())
    cand_d = torch.full((r1 - r0, width), math.inf, device=vals.device)
    cand_i = torch.full((r1 - r0, width), -1, dtype=torch.int64, device=vals.device)
    cand_d[rows, slot] = vals
    cand_i[rows, slot] = cols
    _merge_rows(top_d, top_i, r0, r1, cand_d, cand_i)


def _update_block(top_d: torch.Tensor, top_i: torch.Tensor, dblk: torch.Tensor, a0: int, b0: int) -> None:
    """Update the neighbour lists of the rows (a0..) and, off the diagonal, of the columns (b0..)
    of the distance block ``dblk``. Lists not yet full take the block's top-K; full lists only
    look at the distances below their current K-th (a cheap mask), which are few."""
    num_k = top_d.shape[1]
    na, nb = dblk.shape
    sides = [(a0, dblk, b0)] if a0 == b0 else [(a0, dblk, b0), (b0, dblk.t(), a0)]
    filtered = []
    for r0, mat, c0 in sides:
        thr = top_d[r0:r0 + mat.shape[0], num_k - 1]
        if bool(torch.isinf(thr).any()):  # first visit: plain top-k of the block
            v, i = torch.topk(mat, min(num_k, mat.shape[1]), dim=1, largest=False, sorted=False)
            _merge_rows(top_d, top_i, r0, r0 + mat.shape[0], v, i.add_(c0))
        else:
            filtered.append((r0, c0, thr))
    if not filtered:
        return
    # one pass finds the distances below a row's or a column's current K-th distance
    mask = None
    for r0, c0, thr in filtered:
        m = dblk < (thr[:, None] if r0 == a0 else thr[None, :])
        mask = m if mask is None else mask.logical_or_(m)
    r, c = mask.nonzero(as_tuple=True)
    vals = dblk[r, c]
    for r0, c0, thr in filtered:
        if r0 == a0:  # row side (rows come sorted)
            keep = vals < thr[r]
            _offer(top_d, top_i, a0, a0 + na, r[keep], c[keep] + b0, vals[keep])
        else:  # column side: group by column
            keep = vals < thr[c]
            cc, rr, vv = c[keep], r[keep], vals[keep]
            order = torch.argsort(cc, stable=True)
            _offer(top_d, top_i, b0, b0 + nb, cc[order], rr[order] + a0, vv[order])


def _neighbours(xp: torch.Tensor, x_sq: torch.Tensor | None, num_q: int, num_k: int, block: int,
                out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One blocked pass over the symmetric (N, N) distances (each block computed once, used for its
    rows and its columns): the ``num_k`` nearest neighbours of every image (sorted, distances and
    indices), every row's maximum, and the raw query × gallery distances written into ``out``."""
    n, dev = xp.shape[0], xp.device
    top_d = torch.full((n, num_k), math.inf, device=dev)
    top_i = torch.full((n, num_k), -1, dtype=torch.int64, device=dev)
    row_max = torch.zeros(n, device=dev)
    starts = list(range(0, n, block))
    for bi, a0 in enumerate(starts):
        a1 = min(a0 + block, n)
        a_sq = None if x_sq is None else x_sq[a0:a1]
        for b0 in starts[bi:]:
            b1 = min(b0 + block, n)
            b_sq = None if x_sq is None else x_sq[b0:b1]
            dblk = _block_distance(xp[a0:a1], a_sq, xp[b0:b1], b_sq)  # (na, nb)
            torch.maximum(row_max[a0:a1], dblk.amax(1), out=row_max[a0:a1])
            if b0 != a0:
                torch.maximum(row_max[b0:b1], dblk.amax(0), out=row_max[b0:b1])
            _update_block(top_d, top_i, dblk, a0, b0)
            r1, c0 = min(a1, num_q), max(b0, num_q)  # query rows × gallery columns of this block
            if r1 > a0 and b1 > c0:
                out[a0:r1, c0 - num_q:b1 - num_q].copy_(dblk[: r1 - a0, c0 - b0:])
    return top_d, top_i, row_max


def _reciprocal(nb: torch.Tensor, width: int, rows: slice) -> torch.Tensor:
    """(n, width) bool: is ``nb[i, t]`` (t < width) a k-reciprocal neighbour of ``i``, i.e. is ``i``
    among the first ``width`` neighbours of ``nb[i, t]``?"""
    fwd = nb[rows, :width]  # (n, w)
    me = torch.arange(rows.start, rows.stop, device=nb.device)
    return (nb[:, :width][fwd] == me[:, None, None]).any(2)  # (n, w, w) → (n, w)


def _expansion_sets(nb: torch.Tensor, k1: int, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """k-reciprocal expansion sets R*(i, k1) of every image as CSR-like flat arrays ``(rows, cols)``
    sorted by (row, col): R(i, k1) plus the R(c, k1/2) of its candidates c that share more than
    2/3 of their members with R(i, k1)."""
    n = nb.shape[0]
    w1 = min(k1 + 1, n)
    w2 = min(int(np.around(k1 / 2.0)) + 1, n)
    rec2 = torch.cat([_reciprocal(nb, w2, slice(s, min(s + chunk, n))) for s in range(0, n, chunk)])
    out_rows, out_cols = [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        fwd = nb[s:e, :w1]  # (c, w1) candidates
        rec1 = _reciprocal(nb, w1, slice(s, e))  # (c, w1) R(i, k1)
        sets = nb[:, :w2][fwd]  # (c, w1, w2) first k1/2 neighbours of each candidate
        in_set = rec2[fwd]  # (c, w1, w2) R(candidate, k1/2)
        member = ((sets[..., None] == fwd[:, None, None, :]) & rec1[:, None, None, :]).any(-1)
        inter = (member & in_set).sum(-1)  # (c, w1) |R(cand, k1/2) ∩ R(i, k1)|
        size = in_set.sum(-1)
        accept = rec1 & (inter.double() > (2.0 / 3) * size.double())
        take = torch.cat([rec1, (in_set & accept[..., None]).flatten(1)], dim=1)
        cols = torch.cat([fwd, sets.flatten(1)], dim=1).masked_fill_(~take, n)
        cols = cols.sort(dim=1).values
        first = torch.ones_like(cols, dtype=torch.bool)
        first[:, 1:] = cols[:, 1:] != cols[:, :-1]
        keep = first & (cols < n)
        r, c = keep.nonzero(as_tuple=True)
        out_rows.append(r + s)
        out_cols.append(cols[r, c])
    return torch.cat(out_rows), torch.cat(out_cols)


def _pair_distance(xp: torch.Tensor, x_sq: torch.Tensor | None, i: torch.Tensor, j: torch.Tensor,
                   chunk: int = 1 << 14) -> torch.Tensor:
    """Distances of the pairs (i[t], j[t]), computed element-wise in chunks."""
    out = torch.empty(i.shape[0], device=xp.device)
    for s in range(0, i.shape[0], chunk):
        a, b = i[s:s + chunk], j[s:s + chunk]
        dot = (xp[a] * xp[b]).sum(1)
        out[s:s + chunk] = (1.0 - dot) if x_sq is None else (x_sq[a] + x_sq[b] - 2.0 * dot)
    return out.clamp_(min=0.0)


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, num: int) -> torch.Tensor:
    return torch.zeros(num, dtype=values.dtype, device=values.device).index_add_(0, segment, values)


def _expand_ranges(starts: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated ranges ``starts[t] .. starts[t] + lens[t]``: (owner t of each item, item)."""
    owner = torch.repeat_interleave(torch.arange(lens.shape[0], device=lens.device), lens)
    first = torch.cumsum(lens, 0) - lens
    item = torch.arange(owner.shape[0], device=lens.device) - first[owner] + starts[owner]
    return owner, item


def re_ranking(qf: ArrayLike, gf: ArrayLike, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
               metric: Metric = "cosine", device: str | torch.device | None = None,
               block_size: int = 2048, num_stored: int = 64, jaccard_budget: int = 1 << 22,
               num_threads: int | None = None) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) from features, with bounded memory.

    Same result (to float rounding) as the reference formulation on the dense distance matrices
    (torchreid's ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``): distances
    squared and divided by their column maximum over all query + gallery images, k-reciprocal sets
    with the 2/3 expansion, Gaussian-weighted sparse vectors V, local query expansion over the k2
    nearest neighbours, Jaccard distance, ``final = (1 − λ)·jaccard + λ·original``.

    Memory: no (Q+G)² matrix is formed. The neighbour lists come from one blocked pass over the
    symmetric distances (each ``block_size``² block computed once); V is sparse (the expansion sets);
    the query × gallery Jaccard distance goes through an inverted index of V, ``jaccard_budget``
    (query entry, gallery entry) pairs at a time. The output (Q, G) float32 is the largest array.

    Args:
        qf: query features (Q, D); gf: gallery features (G, D); numpy or torch.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
        metric: base distance, ``"cosine"`` or ``"euclidean"`` (squared), as :func:`pairwise_distance`.
        device: where to compute (default: the device of ``qf`` if a tensor, else CPU).
        block_size: rows/columns of one distance block.
        num_stored: neighbours kept per image (≥ k1 + 1); distances to expansion-set members outside
            them are recomputed from the features.
        jaccard_budget: pairs handled at once in the Jaccard step.
        num_threads: torch threads to use (default: the current ``torch.get_num_threads()``). On a
            machine whose cores are busy with other work, 1 can be several times faster.

    Returns:
        float32 numpy array (Q, G): the re-ranked distances.

    Example:
        >>> q, g = torch.randn(4, 16), torch.randn(30, 16)
        >>> re_ranking(q, g, k1=5, k2=3).shape
        (4, 30)
    """
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    q, g = _features(qf, "qf"), _features(gf, "gf")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: qf has shape {tuple(q.shape)}, "
                         f"gf has shape {tuple(g.shape)}")
    dev = torch.device(device) if device is not None else q.device
    num_q, num_g = q.shape[0], g.shape[0]
    n = num_q + num_g
    out = np.empty((num_q, num_g), dtype=np.float32)
    if num_q == 0 or num_g == 0:
        return out
    x = torch.cat([q.to(dev), g.to(dev)])  # (N, D)
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    xp, x_sq = _prepare(x, metric, inplace=True)
    k1, k2 = int(k1), int(k2)
    num_k = min(n, max(k1 + 1, k2, int(num_stored)))
    with _torch_threads(num_threads):
        return _re_rank(xp, x_sq, num_q, k1, k2, float(lambda_value), num_k, block_size, jaccard_budget, out)


def _re_rank(xp: torch.Tensor, x_sq: torch.Tensor | None, num_q: int, k1: int, k2: int, lam: float,
             num_k: int, block_size: int, jaccard_budget: int, out: np.ndarray) -> np.ndarray:
    """The body of :func:`re_ranking` on prepared features ``xp`` (N, D), queries first."""
    dev = xp.device
    n = xp.shape[0]
    num_g = n - num_q
    raw = torch.empty((num_q, num_g), device=dev) if dev.type != "cpu" else torch.from_numpy(out)

    # 1. neighbour lists, row maxima and the raw query × gallery distances: one blocked pass
    top_d, nb, row_max = _neighbours(xp, x_sq, num_q, num_k, block_size, raw)
    max_sq = (row_max * row_max).clamp_(min=torch.finfo(torch.float32).tiny)  # max of d² per row

    # 2. sparse V: Gaussian weights of the (normalized, squared) distances over the expansion sets
    v_rows, v_cols = _expansion_sets(nb, k1)
    stored_keys = (torch.arange(n, device=dev)[:, None] * n + nb).flatten()
    stored_keys, perm = stored_keys.sort()
    stored_d = top_d.flatten()[perm]
    keys = v_rows * n + v_cols
    at = torch.searchsorted(stored_keys, keys).clamp_(max=stored_keys.shape[0] - 1)
    found = stored_keys[at] == keys
    dist = torch.where(found, stored_d[at], torch.zeros((), device=dev))
    miss = (~found).nonzero(as_tuple=True)[0]
    if miss.numel():
        dist[miss] = _pair_distance(xp, x_sq, v_rows[miss], v_cols[miss])
    weight = torch.exp(-(dist * dist / max_sq[v_rows]))
    v_vals = weight / _segment_sum(weight, v_rows, n)[v_rows]
    del stored_keys, stored_d, keys, at, found, dist, weight, top_d
    logger.debug("re_ranking: %d V entries, %d distances recomputed", v_rows.numel(), miss.numel())

    # 3. local query expansion: V_qe[i] = mean of V over the k2 nearest neighbours of i
    if k2 != 1:
        v_rows, v_cols, v_vals = _query_expansion(v_rows, v_cols, v_vals, nb[:, :min(k2, n)], n)
    del nb

    # 4. Jaccard distance query × gallery via an inverted index of the gallery rows of V
    is_g = v_rows >= num_q
    g_rows, g_cols, g_vals = v_rows[is_g] - num_q, v_cols[is_g], v_vals[is_g]
    order = torch.argsort(g_cols, stable=True)
    g_rows, g_cols, g_vals = g_rows[order], g_cols[order], g_vals[order]
    col_count = torch.bincount(g_cols, minlength=n)
    col_start = torch.cumsum(col_count, 0) - col_count
    q_rows, q_cols, q_vals = v_rows[~is_g], v_cols[~is_g], v_vals[~is_g]
    del v_rows, v_cols, v_vals, is_g, order
    pairs = col_count[q_cols]  # gallery entries met by each query entry
    q_start = torch.searchsorted(q_rows, torch.arange(num_q + 1, device=dev))
    cum_pairs = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(pairs, 0)])
    per_query = cum_pairs[q_start].cpu().numpy()  # pairs before each query's first entry
    max_rows = max(1, jaccard_budget // num_g)  # dense (rows, G) scratch of the same size
    r0 = 0
    while r0 < num_q:
        r1 = int(np.searchsorted(per_query, per_query[r0] + jaccard_budget, "right")) - 1
        r1 = min(max(r1, r0 + 1), num_q, r0 + max_rows)
        e0, e1 = int(q_start[r0]), int(q_start[r1])
        owner, item = _expand_ranges(col_start[q_cols[e0:e1]], pairs[e0:e1])
        vmin = torch.minimum(q_vals[e0:e1][owner], g_vals[item])
        flat = (q_rows[e0:e1][owner] - r0) * num_g + g_rows[item]
        del owner
        tmin = torch.zeros((r1 - r0) * num_g, device=dev).index_add_(0, flat, vmin).view(r1 - r0, num_g)
        del item, vmin, flat
        jaccard = 1.0 - tmin / (2.0 - tmin)
        block = raw[r0:r1]
        original = block * block / max_sq[r0:r1, None]
        block.copy_(jaccard * (1.0 - lam) + original * lam)
        r0 = r1
    if dev.type != "cpu":
        out[:] = raw.cpu().numpy()
    return out


def _query_expansion(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, nbk: torch.Tensor,
                     n: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse V_qe[i] = mean_t V[nbk[i, t]] for the CSR-like (rows, cols, vals) sorted by row."""
    dev = rows.device
    count = torch.bincount(rows, minlength=n)
    start = torch.cumsum(count, 0) - count
    k = nbk.shape[1]
    out_r, out_c, out_v = [], [], []
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        src = nbk[s:e].flatten()  # (c*k,) rows of V to average, in neighbour order
        owner, item = _expand_ranges(start[src], count[src])
        dst = owner // k + s  # the row of V_qe they go to
        keys = dst * n + cols[item]
        keys, order = torch.sort(keys, stable=True)
        uniq, inverse = torch.unique_consecutive(keys, return_inverse=True)
        summed = _segment_sum(vals[item][order], inverse, uniq.shape[0])
        out_r.append(uniq // n)
        out_c.append(uniq % n)
        out_v.append(summed / k)
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)


# --------------------------------------------------------------------------------------------
# features and the evaluation entry points
# --------------------------------------------------------------------------------------------

def _embed(model: torch.nn.Module, img: torch.Tensor) -> torch.Tensor:
    out = model(img)
    feature = getattr(out, "feature", out)  # a NamedTuple with .feature (MARNet), or a bare tensor
    if not isinstance(feature, torch.Tensor) or feature.ndim != 2:
        raise TypeError("model(img) must return a NamedTuple with a (B, D) `.feature` tensor, got "
                        f"{type(out).__name__}")
    return feature.float()


def _as_label_array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.int64) if isinstance(x, torch.Tensor) \
        else np.asarray(x, dtype=np.int64)


def extract_features(model: torch.nn.Module, loader: Any, *, flip: bool = False,
                     device: str | torch.device = "cpu", amp: bool = False,
                     progress: bool = False) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Embeddings of every image a loader yields.

    Args:
        model: returns a NamedTuple with a ``.feature`` field (B, D), L2-normalized; it must already
            live on ``device``. It is put in eval mode and restored to its previous mode afterwards.
        loader: yields dict batches with ``"img"`` (B, 3, H, W), ``"pid"``, ``"camid"`` and
            optionally ``"index"`` (dataset position: the output follows that order).
        flip: average the features of each image and of its horizontal mirror, then re-normalize
            (``x / (‖x‖ + 1e-7)``, the convention of the model).
        device: where the model runs; batches are moved there with ``non_blocking=True``.
        amp: autocast (bfloat16 on CPU, float16 on CUDA); features are returned in float32.
        progress: show a tqdm bar.

    Returns:
        ``(features (N, D) float32 CPU tensor, pids (N,) int64 array, camids (N,) int64 array)``.

    Example:
        >>> feats, pids, camids = extract_features(model, build_test_loader(split.query,
        ...     image_size=(256, 128)), flip=True)  # doctest: +SKIP
    """
    dev = torch.device(device)
    param = next(model.parameters(), None)
    if param is not None and param.device.type != dev.type:
        raise ValueError(f"the model is on {param.device} but device={str(dev)!r}: move it with "
                         f"model.to(device) or pass its device")
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    feats: list[torch.Tensor] = []
    pids: list[np.ndarray] = []
    camids: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="features", leave=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=amp):
            for batch in batches:
                img = batch["img"].to(dev, non_blocking=True)
                f = _embed(model, img)  # (B, D)
                if flip:
                    f = (f + _embed(model, img.flip(3))) / 2
                    f = f / (f.norm(dim=1, keepdim=True) + 1e-7)
                feats.append(f.to("cpu", torch.float32))
                pids.append(_as_label_array(batch["pid"]))
                camids.append(_as_label_array(batch["camid"]))
                if "index" in batch:
                    indices.append(_as_label_array(batch["index"]))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batch: nothing to extract")
    features = torch.cat(feats)
    pid_arr, cam_arr = np.concatenate(pids), np.concatenate(camids)
    if indices and len(indices) == len(feats):
        order = np.argsort(np.concatenate(indices), kind="stable")
        if not np.array_equal(order, np.arange(order.shape[0])):
            features, pid_arr, cam_arr = features[torch.from_numpy(order)], pid_arr[order], cam_arr[order]
    return features, pid_arr, cam_arr


def evaluate_features(qf: ArrayLike, gf: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                      q_camids: ArrayLike, g_camids: ArrayLike, *, metric: Metric = "cosine",
                      rerank: bool = False, max_rank: int = 50, return_distmat: bool = False,
                      k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                      device: str | torch.device | None = None) -> dict[str, Any]:
    """Distances (optionally re-ranked) → rank metrics, both AP conventions.

    Args:
        qf, gf: query / gallery features (Q, D) / (G, D).
        q_pids, g_pids, q_camids, g_camids: labels (pid −1 = junk, 0 = distractor).
        metric: ``"cosine"`` or ``"euclidean"`` (squared), see :func:`pairwise_distance`.
        rerank: k-reciprocal re-ranking (:func:`re_ranking` with ``k1, k2, lambda_value``).
        max_rank: length of the returned CMC curve.
        return_distmat: also return the (Q, G) float32 distance matrix under ``"distmat"``.
        device: where re-ranking runs (default: the features' device).

    Returns:
        dict: ``rank1``, ``rank5``, ``rank10``, ``mAP`` (standard, non-interpolated), ``mAP_devkit``
        (Market devkit / MAR official trapezoid), ``mINP`` (fractions in [0, 1]), ``cmc`` (array),
        ``num_valid``, ``num_query``, ``num_gallery``, ``metric``, ``rerank``, ``ap="both"``.

    Example:
        >>> qf, gf = torch.randn(4, 8), torch.randn(10, 8)
        >>> m = evaluate_features(qf, gf, [1, 2, 3, 4], [1, 2, 3, 4] * 2 + [0, 0],
        ...                       [0] * 4, [1] * 10)
        >>> sorted(k for k in m if k.startswith("rank"))
        ['rank1', 'rank10', 'rank5']
    """
    num_q, num_g = len(qf), len(gf)
    for name, labels, n, feats in (("q_pids", q_pids, num_q, "qf"), ("q_camids", q_camids, num_q, "qf"),
                                   ("g_pids", g_pids, num_g, "gf"), ("g_camids", g_camids, num_g, "gf")):
        if len(labels) != n:
            raise ValueError(f"shape mismatch: {feats} has {n} rows but {name} has {len(labels)} entries")
    if rerank:
        distmat = re_ranking(qf, gf, k1, k2, lambda_value, metric=metric, device=device)
    else:
        distmat = pairwise_distance(qf, gf, metric)
    m = rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max(int(max_rank), 10),
                     ap="both")
    cmc = m["cmc"]
    result: dict[str, Any] = {
        "rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9]),
        "mAP": m["mAP"], "mAP_devkit": m["mAP_devkit"], "mINP": m["mINP"],
        "cmc": cmc[:max_rank], "num_valid": m["num_valid"], "num_query": num_q,
        "num_gallery": num_g, "metric": metric, "rerank": bool(rerank), "ap": "both",
    }
    if return_distmat:
        result["distmat"] = distmat
    return result


def evaluate(model: torch.nn.Module, split: Any, *, image_size: tuple[int, int] = (256, 128),
             batch_size: int = 128, workers: int = 0, device: str | torch.device = "cpu",
             amp: bool = False, flip: bool = False, metric: Metric = "cosine", rerank: bool = False,
             return_distmat: bool = False, max_rank: int = 50, progress: bool = False) -> dict[str, Any]:
    """Evaluate a model on a split's query / gallery sets (Market-1501 protocol).

    Args:
        model: returns a NamedTuple with ``.feature`` (see :func:`extract_features`), on ``device``.
        split: has ``.query`` and ``.gallery`` lists of ``Sample(path, pid, camid)``.
        image_size: (H, W) of the test transform.
        batch_size, workers: of the test loaders (pinned memory on CUDA).
        device, amp, flip: see :func:`extract_features`.
        metric, rerank, max_rank: see :func:`evaluate_features`.
        return_distmat: also return ``distmat``, ``qf``, ``gf`` and the four label arrays.
        progress: tqdm bars during feature extraction.

    Returns:
        the dict of :func:`evaluate_features` (both AP conventions: ``mAP`` standard, ``mAP_devkit``)
        plus ``seconds`` (wall time, extraction included).

    Example:
        >>> split = load_dataset("synthetic", root)  # doctest: +SKIP
        >>> evaluate(model, split, flip=True)["rank1"]  # doctest: +SKIP
    """
    from workbench.data.loaders import build_test_loader

    start = time.perf_counter()
    dev = torch.device(device)
    size = (int(image_size[0]), int(image_size[1]))
    loaders = [build_test_loader(list(samples), image_size=size, batch_size=batch_size,
                                 workers=workers, pin_memory=dev.type == "cuda")
               for samples in (split.query, split.gallery)]
    qf, q_pids, q_camids = extract_features(model, loaders[0], flip=flip, device=dev, amp=amp,
                                            progress=progress)
    gf, g_pids, g_camids = extract_features(model, loaders[1], flip=flip, device=dev, amp=amp,
                                            progress=progress)
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric,
                               rerank=rerank, max_rank=max_rank, return_distmat=return_distmat)
    result["seconds"] = time.perf_counter() - start
    if return_distmat:
        result.update(qf=qf, gf=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                      g_camids=g_camids)
    logger.info("evaluation: rank-1 %.1f%%  mAP %.1f%% (devkit %.1f%%)  mINP %.1f%%  (%d queries, "
                "%d gallery, %.1fs)", 100 * result["rank1"], 100 * result["mAP"],
                100 * result["mAP_devkit"], 100 * result["mINP"], result["num_valid"],
                result["num_gallery"], result["seconds"])
    return result
