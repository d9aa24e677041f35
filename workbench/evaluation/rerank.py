"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) from features, with bounded memory.

Neighbour lists from a blocked, symmetric pass over the (Q+G)² distances (never stored; each block
offers only the distances below its rows' and columns' current K-th), sparse k-reciprocal vectors,
local query expansion, and the query × gallery Jaccard distance through an inverted index. The
distance GEMMs dominate: ``benchmarks/evaluation.py`` prints the ratio of the whole re-ranking to
the (Q+G)² GEMM.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from workbench.evaluation.distance import (
    ArrayLike,
    Metric,
    _block_distance,
    _features,
    _prepare,
    _torch_threads,
)

__all__ = ["re_ranking", "jaccard_distance", "sparse_jaccard_distance"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# k-reciprocal re-ranking
# --------------------------------------------------------------------------------------------

def _offer(top_d: torch.Tensor, top_i: torch.Tensor, bound: torch.Tensor, rows: torch.Tensor,
           cols: torch.Tensor, vals: torch.Tensor) -> None:
    """Merge candidate neighbours (row, col, distance), grouped by row, into the running lists of
    the rows they touch (unsorted, ``K`` wide) and update those rows' bounds (their K-th distance)."""
    if rows.numel() == 0:
        return
    num_k = top_d.shape[1]
    touched, count = torch.unique_consecutive(rows, return_counts=True)
    owner = torch.repeat_interleave(torch.arange(touched.shape[0], device=rows.device), count)
    slot = torch.arange(rows.shape[0], device=rows.device) - (torch.cumsum(count, 0) - count)[owner]
    width = num_k + int(count.max())
    cand_d = torch.full((touched.shape[0], width), math.inf, device=vals.device)  # (T, K + c)
    cand_i = torch.empty((touched.shape[0], width), dtype=top_i.dtype, device=vals.device)
    cand_d[:, :num_k], cand_i[:, :num_k] = top_d[touched], top_i[touched]
    cand_d[owner, num_k + slot], cand_i[owner, num_k + slot] = vals, cols
    v, j = torch.topk(cand_d, num_k, dim=1, largest=False, sorted=False)
    top_d[touched], top_i[touched] = v, cand_i.gather(1, j)
    bound[touched] = v.amax(1)


def _neighbours(xp: torch.Tensor, x_sq: torch.Tensor | None, num_q: int, num_k: int, block: int,
                out: torch.Tensor, gemm_threads: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One blocked pass over the symmetric (N, N) distances, each block computed once and used for
    its rows and its columns: the ``num_k`` nearest neighbours of every image (sorted: distances and
    indices), every row's maximum, and the raw query × gallery distances written into ``out``.

    The diagonal blocks come first: the top-``num_k`` of a row within its own block is its first
    list, and the list's largest distance bounds the row's true ``num_k``-th distance from above.
    Every other block then only offers the few distances below the bound of their row or column
    (two compares and a nonzero over the block), and the bounds tighten as the lists improve.
    The GEMMs run with ``gemm_threads`` torch threads (None: as set), the rest as set.
    """
    n, dev = xp.shape[0], xp.device
    starts = list(range(0, n, block))
    top_d = torch.full((n, num_k), math.inf, device=dev)  # (N, K) unsorted until the end
    top_i = torch.full((n, num_k), -1, dtype=torch.int64, device=dev)
    row_max = torch.empty(n, device=dev)
    side = min(block, n)
    scratch = torch.empty(side * side, device=dev)  # one block of distances, reused
    below_row = torch.empty(side * side, dtype=torch.bool, device=dev)
    below_col = torch.empty(side * side, dtype=torch.bool, device=dev)

    def distances(a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
        d = scratch[:(a1 - a0) * (b1 - b0)].view(a1 - a0, b1 - b0)
        with _torch_threads(gemm_threads):
            _block_distance(xp[a0:a1], None if x_sq is None else x_sq[a0:a1], xp[b0:b1],
                            None if x_sq is None else x_sq[b0:b1], out=d)
        r1, c0 = min(a1, num_q), max(b0, num_q)  # query rows × gallery columns of this block
        if r1 > a0 and b1 > c0:
            out[a0:r1, c0 - num_q:b1 - num_q].copy_(d[:r1 - a0, c0 - b0:])
        return d

    for a0 in starts:  # diagonal blocks: first lists and bounds
        a1 = min(a0 + block, n)
        d = distances(a0, a1, a0, a1)  # (na, na)
        row_max[a0:a1] = d.amax(1)
        k = min(num_k, a1 - a0)
        v, i = torch.topk(d, k, dim=1, largest=False, sorted=False)
        top_d[a0:a1, :k], top_i[a0:a1, :k] = v, i.add_(a0)
    bound = top_d.amax(1)  # (N,) inf while a list holds fewer than K images

    for bi, a0 in enumerate(starts):  # the blocks above the diagonal, for their rows and columns
        a1 = min(a0 + block, n)
        for b0 in starts[bi + 1:]:
            b1 = min(b0 + block, n)
            d = distances(a0, a1, b0, b1)  # (na, nb)
            torch.maximum(row_max[a0:a1], d.amax(1), out=row_max[a0:a1])
            torch.maximum(row_max[b0:b1], d.amax(0), out=row_max[b0:b1])
            size = d.numel()
            bound_a, bound_b = bound[a0:a1], bound[b0:b1]
            mask = torch.lt(d, bound_a[:, None], out=below_row[:size].view_as(d))
            mask.logical_or_(torch.lt(d, bound_b[None, :], out=below_col[:size].view_as(d)))
            r, c = mask.nonzero(as_tuple=True)  # row-major: grouped by row
            vals = d[r, c]
            keep = vals < bound_a[r]
            _offer(top_d, top_i, bound, r[keep] + a0, c[keep] + b0, vals[keep])
            keep = vals < bound_b[c]
            c, order = torch.sort(c[keep], stable=True)  # group the column side by column
            _offer(top_d, top_i, bound, c + b0, r[keep][order] + a0, vals[keep][order])
    top_d, order = torch.sort(top_d, dim=1)
    return top_d, top_i.gather(1, order), row_max


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
        members = fwd.masked_fill(~rec1, n).sort(dim=1).values  # (c, w1) R(i, k1) sorted, n = none
        flat = sets.flatten(1)  # (c, w1 * w2)
        at = torch.searchsorted(members, flat).clamp_(max=w1 - 1)
        member = (members.gather(1, at) == flat).view_as(sets)  # (c, w1, w2) in R(i, k1)
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
                   chunk: int = 1024) -> torch.Tensor:
    """Distances of the pairs (i[t], j[t]): rows gathered ``chunk`` pairs at a time into two reused
    (chunk, D) buffers (small enough to stay in cache), then row-wise dot products."""
    out = torch.empty(i.shape[0], device=xp.device)
    a_buf = torch.empty(min(chunk, i.shape[0]), xp.shape[1], device=xp.device)
    b_buf = torch.empty_like(a_buf)
    for s in range(0, i.shape[0], chunk):
        a, b = i[s:s + chunk], j[s:s + chunk]
        rows_a = torch.index_select(xp, 0, a, out=a_buf[:a.shape[0]])
        dot = rows_a.mul_(torch.index_select(xp, 0, b, out=b_buf[:b.shape[0]])).sum(1)
        out[s:s + chunk] = (1.0 - dot) if x_sq is None else (x_sq[a] + x_sq[b] - 2.0 * dot)
    return out.clamp_(min=0.0)


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, num: int) -> torch.Tensor:
    return torch.zeros(num, dtype=values.dtype, device=values.device).index_add_(0, segment, values)


def _expand_ranges(starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The concatenated ranges ``starts[t] .. starts[t] + lens[t]`` (the owner t of each item is
    ``repeat_interleave(arange(T), lens)``; callers repeat the owners' values the same way)."""
    first = torch.cumsum(lens, 0) - lens
    total = int(first[-1] + lens[-1]) if lens.numel() else 0
    shift = torch.repeat_interleave((starts - first).to(starts.dtype), lens, output_size=total)
    return shift.add_(torch.arange(total, dtype=starts.dtype, device=lens.device))


def _check_neighbourhoods(k1: int, k2: int) -> None:
    for name, v in (("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def re_ranking(qf: ArrayLike, gf: ArrayLike, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
               metric: Metric = "cosine", device: str | torch.device | None = None,
               block_size: int = 2048, num_stored: int = 64, jaccard_budget: int = 1 << 22,
               num_threads: int | None = None, sparse_threads: int | str | None = "auto") -> np.ndarray:
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
        num_threads: torch threads of the distance GEMMs (default: the current
            ``torch.get_num_threads()``).
        sparse_threads: torch threads of everything else (neighbour bookkeeping, V, query
            expansion, Jaccard): many short, memory-bound passes. ``"auto"`` (default): the same as
            ``num_threads`` when OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, which
            importing ``workbench`` before torch sets), else 1. Measured on 2 cores at Market-1501's
            size (``benchmarks/rerank_threads.py``): idle, 2 threads are 15–28 % faster than 1; with
            both cores busy with other jobs, 4 % slower when waiting passively, and several times
            slower when OpenMP threads spin. ``None``: ``num_threads``; an int: that many.

    Returns:
        float32 numpy array (Q, G): the re-ranked distances.

    Example:
        >>> q, g = torch.randn(4, 16), torch.randn(30, 16)
        >>> re_ranking(q, g, k1=5, k2=3).shape
        (4, 30)
    """
    _check_neighbourhoods(k1, k2)
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    q, g = _features(qf, "qf"), _features(gf, "gf")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: qf has shape {tuple(q.shape)}, "
                         f"gf has shape {tuple(g.shape)}")
    dev = torch.device(device) if device is not None else q.device
    num_q, num_g = q.shape[0], g.shape[0]
    n = num_q + num_g
    out = torch.empty((num_q, num_g), dtype=torch.float32).numpy()  # not np.empty: see pairwise_distance
    if num_q == 0 or num_g == 0:
        return out
    x = torch.cat([q.to(dev), g.to(dev)])  # (N, D)
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    xp, x_sq = _prepare(x, metric, inplace=True)
    k1, k2 = int(k1), int(k2)
    num_k = min(n, max(k1 + 1, k2, int(num_stored)))
    gemm_threads = torch.get_num_threads() if num_threads is None else max(1, int(num_threads))
    with _torch_threads(_sparse_threads(sparse_threads, gemm_threads)):
        return _re_rank(xp, x_sq, num_q, k1, k2, float(lambda_value), num_k, block_size, jaccard_budget,
                        gemm_threads, out)


def _sparse_threads(sparse_threads: int | str | None, gemm_threads: int) -> int:
    """The thread count of re-ranking's sparse passes (see ``sparse_threads`` in :func:`re_ranking`)."""
    if sparse_threads is None:
        return gemm_threads
    if sparse_threads == "auto":
        import workbench

        return gemm_threads if workbench.OPENMP_PASSIVE else 1
    if isinstance(sparse_threads, str) or int(sparse_threads) < 1:
        raise ValueError(f"sparse_threads must be 'auto', None or a positive int, got {sparse_threads!r}")
    return int(sparse_threads)


def jaccard_distance(features: ArrayLike, k1: int = 30, k2: int = 6, *, metric: Metric = "euclidean",
                     device: str | torch.device | None = None, block_size: int = 2048, num_stored: int = 64,
                     jaccard_budget: int = 1 << 22, num_threads: int | None = None,
                     sparse_threads: int | str | None = "auto") -> np.ndarray:
    """The (N, N) k-reciprocal Jaccard distance within one set of images: what clustering methods
    (SpCL, Cluster-Contrast) give DBSCAN as its precomputed distance.

    The same computation as :func:`re_ranking` with every image both query and gallery and λ = 0
    (neighbour lists, k-reciprocal expansion sets, Gaussian weights ``exp(−d²/max d²)``, local
    query expansion over k2 neighbours, ``1 − Σmin / Σmax``), on the N images once (``re_ranking(f,
    f)`` would count every image twice in the neighbourhoods). Cluster-Contrast's own
    ``compute_jaccard_distance`` weights with ``softmax(−d)`` instead; its default ``k1 = 30, k2 = 6``
    and the squared euclidean distance of L2-normalized features (``metric="euclidean"``) are kept.

    Args:
        features: (N, D), numpy or torch.
        k1, k2: k-reciprocal and query-expansion neighbourhood sizes.
        metric, device, block_size, num_stored, jaccard_budget, num_threads, sparse_threads: as in
            :func:`re_ranking`.

    Returns:
        float32 numpy array (N, N), symmetric up to rounding, zero on the diagonal, in [0, 1].

    Example:
        >>> f = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
        >>> d = jaccard_distance(f, k1=5, k2=2)
        >>> d.shape, float(abs(d.diagonal()).max()) < 1e-6
        ((20, 20), True)
    """
    _check_neighbourhoods(k1, k2)
    n = _features(features, "features").shape[0]
    out = np.zeros((n, n), dtype=np.float32)
    if n == 0:
        return out
    with _jaccard_vectors(features, k1, k2, metric, device, block_size, num_stored, num_threads,
                          sparse_threads) as (max_sq, v_rows, v_cols, v_vals):
        dev = v_rows.device
        raw = torch.zeros((n, n), device=dev) if dev.type != "cpu" else torch.from_numpy(out)
        _jaccard_blend(raw, max_sq, v_rows, v_cols, v_vals, 0.0, jaccard_budget)
    if dev.type != "cpu":
        out[:] = raw.cpu().numpy()
    np.clip(out, 0.0, 1.0, out=out)
    return out


def sparse_jaccard_distance(features: ArrayLike, k1: int = 30, k2: int = 6, *, max_distance: float = 1.0,
                            metric: Metric = "euclidean", device: str | torch.device | None = None,
                            block_size: int = 2048, num_stored: int = 64, jaccard_budget: int = 1 << 22,
                            num_threads: int | None = None, sparse_threads: int | str | None = "auto",
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of :func:`jaccard_distance` up to ``max_distance``, without its (N, N) matrix.

    A pair whose k-reciprocal vectors share no image (``Σ min = 0``) is at distance exactly 1; only
    the others are computed, with the same float operations in the same order as
    :func:`jaccard_distance` (the same values, bit for bit, on the same device and threads), and the
    pairs above ``max_distance`` are dropped block by block. Memory: the sparse result and a
    ``jaccard_budget``-sized block; time: that of :func:`jaccard_distance` less the (N, N) output.

    Args:
        features: (N, D), numpy or torch.
        k1, k2, metric, device, block_size, num_stored, jaccard_budget, num_threads, sparse_threads:
            as in :func:`jaccard_distance`.
        max_distance: the largest distance kept (the pairs that share no image are never returned,
            even when ``max_distance >= 1``).

    Returns:
        ``(rows, cols, values)`` on the computing device: int64 (P,), int64 (P,), float32 (P,) in
        [0, max_distance], sorted by (row, col), symmetric (both (i, j) and (j, i)), the diagonal
        included (every image shares its own k-reciprocal set).

    Example:
        >>> f = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
        >>> rows, cols, values = sparse_jaccard_distance(f, k1=5, k2=2)
        >>> bool((torch.from_numpy(jaccard_distance(f, k1=5, k2=2))[rows, cols] == values).all())
        True
    """
    _check_neighbourhoods(k1, k2)
    n = _features(features, "features").shape[0]
    empty = torch.empty(0, dtype=torch.int64)
    if n == 0:
        return empty, empty, torch.empty(0)
    rows, cols, values = [], [], []
    with _jaccard_vectors(features, k1, k2, metric, device, block_size, num_stored, num_threads,
                          sparse_threads) as (_, v_rows, v_cols, v_vals):
        for r0, _, tmin, _ in _min_sums(n, n, v_rows, v_cols, v_vals, jaccard_budget):
            r, c = tmin.nonzero(as_tuple=True)  # row-major: sorted by (row, col)
            t = tmin[r, c]
            # jaccard_distance's operations on these entries: 1 + (−Σ min) / (2 − Σ min), clipped
            dist = torch.ones_like(t).addcdiv_(t, torch.mul(t, -1.0).add_(2.0), value=-1.0).clamp_(0.0, 1.0)
            keep = dist <= max_distance
            rows.append(r[keep] + r0)
            cols.append(c[keep])
            values.append(dist[keep])
    return torch.cat(rows), torch.cat(cols), torch.cat(values)


@contextlib.contextmanager
def _jaccard_vectors(features: ArrayLike, k1: int, k2: int, metric: Metric, device: str | torch.device | None,
                     block_size: int, num_stored: int, num_threads: int | None,
                     sparse_threads: int | str | None,
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Steps 1–3 of :func:`jaccard_distance` on N > 0 images, under its thread settings (kept while
    the caller's ``with`` block runs): ``(max_sq (N,), rows, cols, vals)``, the sparse V twice (every
    image is a query, and a gallery image with its row offset by N)."""
    x = _features(features, "features")
    dev = torch.device(device) if device is not None else x.device
    n = x.shape[0]
    x = x.to(dev)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or inf")
    xp, x_sq = _prepare(x, metric)  # a normalized copy (cosine) or x itself, unmodified (euclidean)
    k1, k2 = int(k1), int(k2)
    num_k = min(n, max(k1 + 1, k2, int(num_stored)))
    gemm_threads = torch.get_num_threads() if num_threads is None else max(1, int(num_threads))
    with _torch_threads(_sparse_threads(sparse_threads, gemm_threads)):
        top_d, nb, row_max = _neighbours(xp, x_sq, n, num_k, block_size, torch.empty((n, 0), device=dev),
                                         gemm_threads)
        max_sq = (row_max * row_max).clamp_(min=torch.finfo(torch.float32).tiny)
        v_rows, v_cols = _expansion_sets(nb, k1)
        v_vals = _expansion_weights(xp, x_sq, top_d, nb, max_sq, v_rows, v_cols)
        del top_d
        if k2 != 1:
            v_rows, v_cols, v_vals = _query_expansion(v_rows, v_cols, v_vals, nb[:, :min(k2, n)], n)
        del nb
        yield max_sq, torch.cat([v_rows, v_rows + n]), torch.cat([v_cols, v_cols]), torch.cat([v_vals, v_vals])


def _re_rank(xp: torch.Tensor, x_sq: torch.Tensor | None, num_q: int, k1: int, k2: int, lam: float,
             num_k: int, block_size: int, jaccard_budget: int, gemm_threads: int,
             out: np.ndarray) -> np.ndarray:
    """The body of :func:`re_ranking` on prepared features ``xp`` (N, D), queries first."""
    dev = xp.device
    n = xp.shape[0]
    num_g = n - num_q
    raw = torch.empty((num_q, num_g), device=dev) if dev.type != "cpu" else torch.from_numpy(out)

    # 1. neighbour lists, row maxima and the raw query × gallery distances: one blocked pass
    top_d, nb, row_max = _neighbours(xp, x_sq, num_q, num_k, block_size, raw, gemm_threads)
    max_sq = (row_max * row_max).clamp_(min=torch.finfo(torch.float32).tiny)  # max of d² per row

    # 2. sparse V: Gaussian weights of the (normalized, squared) distances over the expansion sets
    v_rows, v_cols = _expansion_sets(nb, k1)
    v_vals = _expansion_weights(xp, x_sq, top_d, nb, max_sq, v_rows, v_cols)
    del top_d

    # 3. local query expansion: V_qe[i] = mean of V over the k2 nearest neighbours of i
    if k2 != 1:
        v_rows, v_cols, v_vals = _query_expansion(v_rows, v_cols, v_vals, nb[:, :min(k2, n)], n)
    del nb

    # 4. Jaccard distance query × gallery, blended with the original distance, written over raw
    _jaccard_blend(raw, max_sq, v_rows, v_cols, v_vals, lam, jaccard_budget)
    if dev.type != "cpu":
        out[:] = raw.cpu().numpy()
    return out


def _expansion_weights(xp: torch.Tensor, x_sq: torch.Tensor | None, top_d: torch.Tensor,
                       nb: torch.Tensor, max_sq: torch.Tensor, v_rows: torch.Tensor,
                       v_cols: torch.Tensor) -> torch.Tensor:
    """Values of V at its entries (rows sorted): ``exp(−d²/max²)`` normalized to sum 1 per row.
    Distances come from the stored neighbour lists, the few others are recomputed."""
    n = nb.shape[0]
    stored_keys = (torch.arange(n, device=nb.device)[:, None] * n + nb).flatten()
    stored_keys, perm = stored_keys.sort()
    stored_d = top_d.flatten()[perm]
    keys = v_rows * n + v_cols
    at = torch.searchsorted(stored_keys, keys).clamp_(max=stored_keys.shape[0] - 1)
    found = stored_keys[at] == keys
    dist = torch.where(found, stored_d[at], torch.zeros((), device=nb.device))
    miss = (~found).nonzero(as_tuple=True)[0]
    if miss.numel():
        dist[miss] = _pair_distance(xp, x_sq, v_rows[miss], v_cols[miss])
    logger.debug("re_ranking: %d V entries, %d distances recomputed", v_rows.numel(), miss.numel())
    weight = torch.exp(-(dist * dist / max_sq[v_rows]))
    return weight / _segment_sum(weight, v_rows, n)[v_rows]


def _min_sums(num_q: int, num_g: int, v_rows: torch.Tensor, v_cols: torch.Tensor, v_vals: torch.Tensor,
              budget: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Σ_k min(V_q[k], V_g[k]) of every query × gallery pair from the sparse V (rows sorted, queries
    first, gallery rows offset by Q), a block of query rows at a time: yields ``(r0, r1, tmin, scratch)``
    with ``tmin`` (r1 − r0, G) and a free ``scratch`` of the same shape, both reused by the next block.

    The sums go through an inverted index of the gallery rows of V: each query entry meets the gallery
    entries of its column; ``budget`` such pairs (and a dense (rows, G) block of that size) at a time.
    Each pair's terms are added in the order of V's columns, whatever the blocks.
    """
    dev = v_rows.device
    n = num_q + num_g
    is_g = v_rows >= num_q
    g_cols, order = torch.sort(v_cols[is_g], stable=True)  # gallery entries grouped by column
    g_rows, g_vals = (v_rows[is_g] - num_q)[order].int(), v_vals[is_g][order]  # int32: half the traffic
    col_count = torch.bincount(g_cols, minlength=n)
    col_start = (torch.cumsum(col_count, 0) - col_count).int()
    q_rows, q_cols, q_vals = v_rows[~is_g], v_cols[~is_g], v_vals[~is_g]
    del v_rows, v_cols, v_vals, is_g, order, g_cols
    pairs = col_count[q_cols]  # gallery entries met by each query entry
    q_start = torch.searchsorted(q_rows, torch.arange(num_q + 1, device=dev))
    cum_pairs = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(pairs, 0)])
    per_query = cum_pairs[q_start].cpu().numpy()  # pairs before each query's first entry
    max_rows = max(1, budget // num_g)
    tmin_buf = torch.empty(min(max_rows, num_q) * num_g, device=dev)
    scratch_buf = torch.empty_like(tmin_buf)
    r0 = 0
    while r0 < num_q:
        r1 = int(np.searchsorted(per_query, per_query[r0] + budget, "right")) - 1
        r1 = min(max(r1, r0 + 1), num_q, r0 + max_rows)
        e0, e1 = int(q_start[r0]), int(q_start[r1])
        lens = pairs[e0:e1]
        item = _expand_ranges(col_start[q_cols[e0:e1]], lens)  # the gallery entries met, in order
        vmin = torch.minimum(torch.repeat_interleave(q_vals[e0:e1], lens, output_size=item.shape[0]),
                             g_vals.index_select(0, item))
        flat = torch.repeat_interleave((q_rows[e0:e1] - r0).mul_(num_g).int(), lens, output_size=item.shape[0])
        flat.add_(g_rows.index_select(0, item))  # (query row, gallery row) in the dense block
        del item
        size = (r1 - r0) * num_g
        tmin = tmin_buf[:size].zero_().index_add_(0, flat, vmin).view(r1 - r0, num_g)  # Σ min
        del vmin, flat
        yield r0, r1, tmin, scratch_buf[:size].view_as(tmin)
        r0 = r1


def _jaccard_blend(raw: torch.Tensor, max_sq: torch.Tensor, v_rows: torch.Tensor, v_cols: torch.Tensor,
                   v_vals: torch.Tensor, lam: float, budget: int) -> None:
    """``raw`` (Q, G) ← (1 − λ)·jaccard + λ·raw²/max², in place, from the sparse V (rows sorted), with
    the Σ min of :func:`_min_sums` (``budget`` pairs at a time)."""
    num_q, num_g = raw.shape
    for r0, r1, tmin, scratch in _min_sums(num_q, num_g, v_rows, v_cols, v_vals, budget):
        den = torch.mul(tmin, -1.0, out=scratch).add_(2.0)  # 2 − Σ min
        block = raw[r0:r1]
        # λ·raw²/max² + (1 − λ)·(1 − tmin / (2 − tmin))
        block.mul_(block).mul_(lam / max_sq[r0:r1, None]).add_(1.0 - lam)
        block.addcdiv_(tmin, den, value=-(1.0 - lam))


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
        lens = count[src]
        item = _expand_ranges(start[src], lens)
        dst = torch.arange(s, e, device=dev).repeat_interleave(k).mul_(n)  # the V_qe row of each src
        keys = torch.repeat_interleave(dst, lens, output_size=item.shape[0]).add_(cols.index_select(0, item))
        keys, order = torch.sort(keys, stable=True)
        uniq, inverse = torch.unique_consecutive(keys, return_inverse=True)
        summed = _segment_sum(vals.index_select(0, item.index_select(0, order)), inverse, uniq.shape[0])
        out_r.append(uniq // n)
        out_c.append(uniq % n)
        out_v.append(summed / k)
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)
