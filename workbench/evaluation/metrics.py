"""Rank metrics under the Market-1501 single-query protocol: CMC, mAP (two conventions), mINP.

Protocol (as the devkit and torchreid): for each query the gallery images of the same identity
*and* the same camera are removed, junk images (pid ``-1``) never count (removed), distractors
(pid ``0`` in Market/Duke) count as wrong matches. Queries with no valid match left are skipped
and counted in ``num_valid``.

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
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from workbench.evaluation.names import METRIC_KEYS, METRIC_TITLES
from workbench.evaluation.distance import (
    ArrayLike,
    _check_label_shapes,
    _distance_matrix,
    _labels,
    _torch_threads,
)

__all__ = ["APConvention", "JUNK_PID", "METRIC_KEYS", "METRIC_TITLES", "format_metrics", "valid_gallery_mask", "rank_metrics",
           "rank_metrics_reference", "METRIC_TITLES"]

APConvention = Literal["standard", "devkit", "both"]

_NUM_BUCKETS = 4096  # resolution of the per-row bucketing in rank_metrics
_CHUNK_ELEMENTS = 1 << 22  # distances handled at once in rank_metrics (≈ 4M, tens of MB of scratch)
JUNK_PID = -1  # gallery images with this pid never count



def format_metrics(metrics: Any) -> str:
    """One line in percent: ``rank-1 61.2  rank-5 80.1  rank-10 85.3  mAP 40.0 (devkit 38.1)  mINP 12.3``.

    When some queries have no valid match (``num_valid`` < ``num_query``: no image of the same person
    from another camera in the gallery), the line ends with over how many queries the scores are, e.g.
    ``… mINP 12.3  over 23 of 32 queries (9 have no match in another camera)``.
    """
    m = {k: 100.0 * float(metrics[k]) for k in METRIC_KEYS}
    line = (f"rank-1 {m['rank1']:.1f}  rank-5 {m['rank5']:.1f}  rank-10 {m['rank10']:.1f}  mAP {m['mAP']:.1f} "
            f"(devkit {m['mAP_devkit']:.1f})  mINP {m['mINP']:.1f}")
    valid, queries = metrics.get("num_valid"), metrics.get("num_query")
    if valid is not None and queries is not None and int(valid) < int(queries):
        skipped = int(queries) - int(valid)
        line += (f"  over {int(valid)} of {int(queries)} queries ({skipped} ha{'ve' if skipped != 1 else 's'} no "
                 "match in another camera)")
    return line


def valid_gallery_mask(q_pid: Any, q_camid: Any, g_pids: Any, g_camids: Any) -> np.ndarray:
    """The Market-1501 junk rule: which gallery images count for a query (True = kept).

    Removed: junk images (pid −1) and the images of the query's identity taken by the query's
    camera. Distractors (pid 0) are kept: they count as wrong matches.

    Args:
        q_pid, q_camid: the query's labels; scalars, or arrays that broadcast against the gallery
            labels, e.g. (R, 1) for R queries at once.
        g_pids, g_camids: gallery labels, e.g. (G,).

    Returns:
        bool array of the broadcast shape, e.g. (G,) or (R, G).

    Example:
        >>> valid_gallery_mask(1, 0, [1, 1, 2, -1, 0], [0, 1, 0, 1, 0]).tolist()
        [False, True, True, False, True]
    """
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    same_view = (g_pids == np.asarray(q_pid)) & (g_camids == np.asarray(q_camid))
    return (g_pids != JUNK_PID) & ~same_view


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
    real = np.flatnonzero(g_pids != JUNK_PID)  # junk columns: left out of every row
    junk = None if real.shape[0] == num_g else torch.from_numpy(np.flatnonzero(g_pids == JUNK_PID))

    # Gallery items with the query's pid: contiguous runs of the pid-sorted (non-junk) gallery.
    order = real[np.argsort(g_pids[real], kind="stable")]
    sorted_pids = g_pids[order]
    lo = np.searchsorted(sorted_pids, q_pids, "left")
    lens = np.searchsorted(sorted_pids, q_pids, "right") - lo
    rows = np.repeat(np.arange(num_q), lens)
    within = np.arange(rows.shape[0]) - np.repeat(np.cumsum(lens) - lens, lens)
    cols = order[np.repeat(lo, lens) + within]
    d = dist[rows, cols]
    is_pos = valid_gallery_mask(q_pids[rows], q_camids[rows], g_pids[cols], g_camids[cols])

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


def rank_metrics_reference(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                           q_camids: ArrayLike, g_camids: ArrayLike, *, max_rank: int = 50,
                           ) -> dict[str, Any]:
    """What :func:`rank_metrics` computes, written as the plain per-query loop (slow; for tests
    and benchmarks): stable argsort of each row, :func:`valid_gallery_mask`, ranks of the hits.

    Returns:
        the keys of ``rank_metrics(..., ap="both", per_query=True)``: ``cmc``, ``mAP``,
        ``mAP_devkit``, ``mINP``, ``num_valid``, ``num_query`` and the per-query ``AP``,
        ``AP_devkit``, ``INP`` (NaN where skipped), ``first_hit`` (−1 where skipped), ``valid``.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q = distmat.shape[0]
    ap, ap_dev, inp = np.full(num_q, np.nan), np.full(num_q, np.nan), np.full(num_q, np.nan)
    first = np.full(num_q, -1, dtype=np.int64)
    cmc_rows = []
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        keep = valid_gallery_mask(q_pids[i], q_camids[i], g_pids[order], g_camids[order])
        hits = np.flatnonzero(g_pids[order][keep] == q_pids[i])  # 0-based ranks of the matches
        if hits.size == 0:
            continue
        n = hits.size
        precision = np.arange(1, n + 1) / (hits + 1)
        old_precision = np.where(hits == 0, 1.0, np.arange(n) / np.maximum(hits, 1))
        ap[i] = precision.mean()
        ap_dev[i] = np.sum((old_precision + precision) / 2) / n
        inp[i] = n / (hits[-1] + 1)
        first[i] = hits[0]
        cmc_rows.append(np.arange(max_rank) >= hits[0])
    valid = first >= 0
    if not valid.any():
        raise ValueError("no query has a valid match")
    return dict(cmc=np.mean(cmc_rows, axis=0), mAP=ap[valid].mean(), mAP_devkit=ap_dev[valid].mean(),
                mINP=inp[valid].mean(), num_valid=int(valid.sum()), num_query=num_q, AP=ap,
                AP_devkit=ap_dev, INP=inp, first_hit=first, valid=valid)
