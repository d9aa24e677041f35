"""Cost of the evaluation at Market-1501 size: rank metrics and k-reciprocal re-ranking.

One run, one machine, seeded synthetic problem of Market-1501 size: 3,368 queries × 15,913 gallery
images (750 identities seen by 6 cameras, 2,798 distractors with pid 0, 300 junk images with pid −1),
features drawn around identity centres in a 128-d latent space, mapped isometrically to ``--dim``
dimensions, with the retrieval quality of a MAR-level model (rank-1 ≈ 75 %, mAP ≈ 40 %), float32
distance matrix.

Rows of the table:

* ``rank_metrics``: :func:`workbench.evaluation.rank_metrics` (both AP conventions, one pass).
* ``per-query loop``: :func:`workbench.evaluation.rank_metrics_reference`, the straightforward numpy
  loop (argsort of each row, as torchreid's python path), on the first ``--loop-queries`` queries, extrapolated linearly to all queries; its
  results are checked equal to ``rank_metrics`` on the same queries.
* ``argsort of the matrix``: sorting every row alone (``np.argsort(distmat, axis=1)``).
* ``re_ranking``: :func:`workbench.evaluation.re_ranking` from the features (Q + G = 19,281 images at
  Market size, ``--rerank-fraction`` to run a smaller problem).

Ratios measured side by side (the calls alternate, ``--side-repeats`` rounds, medians):

* ``pairwise_distance / torch.cdist``: the cosine and the squared Euclidean ``pairwise_distance``
  (float32 numpy output) against ``torch.cdist(qf, gf)`` (Euclidean, the same GEMM plus a square
  root) and torchreid's cosine ``1 − normalize(qf) · normalize(gf)ᵀ``, at 3,368 × 15,913 × ``--dim``.
* ``re_ranking / GEMM``: ``re_ranking`` against the (Q+G)² distance GEMM it must compute, timed as
  ``x @ xᵀ`` for all Q + G images in row strips of 2,048 into one reused buffer (a lower bound for
  the dense distance matrix that the reference formulation builds).

Memory: peak resident set size (RSS) above the RSS just before the call, read from the kernel's
high-water mark (``VmHWM`` after resetting it through ``/proc/self/clear_refs``; where that is not
possible, ``resource.getrusage`` max RSS, which cannot be reset and may then under-report). The
inputs (distance matrix, features) are already resident and are *not* counted; the outputs are.

Usage: ``python benchmarks/evaluation.py [--loop-queries 400] [--dim 2048] [--rerank-fraction 1.0]
[--side-repeats 3] [--threads N] [--skip-rerank] [--skip-sort]``.
Targets (2-core CPU): rank_metrics ≤ 1.5 s and ≤ 1 GB; re_ranking ≤ 20 s and ≤ 3 GB;
pairwise_distance / torch.cdist ≤ 1; re_ranking / GEMM < 1.5.
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import workbench  # before torch, as the CLI and the engine load it: OpenMP threads wait passively

import numpy as np
import torch
import torch.nn.functional as F

from workbench.evaluation import pairwise_distance, rank_metrics, rank_metrics_reference, re_ranking

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float, str]:
    """Run ``fn`` once: (result, seconds, peak MB above the RSS before the call, method)."""
    rss0 = _status_kb("VmRSS")
    exact = rss0 is not None and _reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    if exact:
        peak_kb = _status_kb("VmHWM") - rss0
        method = "VmHWM"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - (rss0 or 0)
        method = "ru_maxrss"
    return result, seconds, max(peak_kb, 0) / 1024, method


def side_by_side(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Alternate the calls ``repeats`` times: name → [(seconds, peak MB), ...] (results dropped)."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            _, seconds, mb, _ = measure(fn)
            runs[name].append((seconds, mb))
    return runs


def median_s(runs: list[tuple[float, float]]) -> float:
    return statistics.median(r[0] for r in runs)


def gemm_strips(x: torch.Tensor, rows: int = 2048) -> None:
    """The (N, N) product ``x @ xᵀ`` in row strips written into one reused buffer."""
    buf = torch.empty(min(rows, x.shape[0]), x.shape[0])
    for s in range(0, x.shape[0], rows):
        torch.mm(x[s:s + rows], x.t(), out=buf[:min(rows, x.shape[0] - s)])


def market_problem(seed: int, dim: int, fraction: float = 1.0, noise: float = 1.6):
    """Labels and features of a Market-1501-sized test set (scaled by ``fraction``)."""
    rng = np.random.default_rng(seed)
    num_ids, num_cams, latent = 750, 6, 128
    num_q, num_g = round(3368 * fraction), round(15913 * fraction)
    num_distract, num_junk = round(2798 * fraction), round(300 * fraction)
    num_ids = max(2, round(num_ids * fraction))
    centres = rng.standard_normal((num_ids + 1, latent))
    cam_shift = 0.3 * rng.standard_normal((num_cams, latent))
    # every id: about 4.5 queries and 17 gallery images, spread over the cameras
    q_pids = np.repeat(np.arange(1, num_ids + 1), int(np.ceil(num_q / num_ids)))[:num_q]
    real = num_g - num_distract - num_junk
    g_pids = np.concatenate([np.resize(np.arange(1, num_ids + 1), real),
                             np.zeros(num_distract, np.int64), -np.ones(num_junk, np.int64)])
    g_pids = g_pids[rng.permutation(num_g)]
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    basis = np.linalg.qr(rng.standard_normal((max(dim, latent), latent)))[0]  # orthonormal columns
    proj = basis.T[:, :dim].astype(np.float32)  # (latent, dim): an isometry when dim >= latent

    def features(pids, cams):
        z = centres[np.maximum(pids, 0)] + cam_shift[cams] + noise * rng.standard_normal((pids.size, latent))
        z[pids <= 0] = 1.2 * rng.standard_normal(((pids <= 0).sum(), latent))
        return torch.from_numpy(z.astype(np.float32) @ proj)

    return features(q_pids, q_cams), features(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--loop-queries", type=int, default=400,
                        help="queries run through the per-query loop (0 = all); the time is extrapolated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of rank_metrics (median)")
    parser.add_argument("--rerank-fraction", type=float, default=1.0,
                        help="scale of the re-ranking problem (1.0 = Market size, 19,281 images)")
    parser.add_argument("--side-repeats", type=int, default=3,
                        help="rounds of the side-by-side timings (pairwise vs cdist; re_ranking vs GEMM: "
                             "at most 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--skip-rerank", action="store_true")
    parser.add_argument("--skip-sort", action="store_true", help="skip the argsort-of-the-matrix row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    qf, gf, qp, gp, qc, gc = market_problem(args.seed, args.dim)
    distmat, dist_s, dist_mb, _ = measure(lambda: pairwise_distance(qf, gf))
    num_q, num_g = distmat.shape
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
          f"threads, torch {torch.__version__}, OpenMP waits passively: {workbench.OPENMP_PASSIVE}")
    print(f"problem: {num_q} queries x {num_g} gallery ({(gp == 0).sum()} distractors, "
          f"{(gp == -1).sum()} junk), 6 cameras, {args.dim}-d features, float32 distmat "
          f"({distmat.nbytes / 2**20:.0f} MB)")
    rows: list[tuple[str, float, float, str]] = [
        ("pairwise_distance (cosine), first call", dist_s, dist_mb, "output included")]
    ratios: list[str] = []

    reps = max(1, args.side_repeats)
    qn, gn = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    side = side_by_side({
        "bare GEMM on normalised features": lambda: torch.mm(qn, gn.t()),
        "pairwise_distance (cosine)": lambda: pairwise_distance(qf, gf, "cosine"),
        "pairwise_distance (euclidean)": lambda: pairwise_distance(qf, gf, "euclidean"),
        "torch.cdist (euclidean)": lambda: torch.cdist(qf, gf).numpy(),
        "torchreid cosine": lambda: (1 - torch.mm(F.normalize(qf, dim=1), F.normalize(gf, dim=1).t())).numpy(),
    }, reps)
    for name, runs in side.items():
        rows.append((f"{name} (median of {reps})", median_s(runs), max(r[1] for r in runs),
                     "side by side, output included"))
    cdist_s = median_s(side["torch.cdist (euclidean)"])
    for metric in ("cosine", "euclidean"):
        ratios.append(f"pairwise_distance ({metric}) / torch.cdist: "
                      f"{median_s(side[f'pairwise_distance ({metric})']) / cdist_s:.2f}")
    ratios.append(f"pairwise_distance (cosine) / bare GEMM on normalised features: "
                  f"{median_s(side['pairwise_distance (cosine)']) / median_s(side['bare GEMM on normalised features']):.2f}"
                  " (target <= 1.1)")
    ratios.append(f"pairwise_distance (cosine) / torchreid cosine: "
                  f"{median_s(side['pairwise_distance (cosine)']) / median_s(side['torchreid cosine']):.2f}")

    runs = [measure(lambda: rank_metrics(distmat, qp, gp, qc, gc, ap="both")) for _ in range(args.repeats)]
    metrics = runs[0][0]
    rows.append((f"rank_metrics (median of {args.repeats})", statistics.median(r[1] for r in runs),
                 max(r[2] for r in runs), f"best {min(r[1] for r in runs):.2f} s"))

    n_loop = num_q if args.loop_queries <= 0 else min(args.loop_queries, num_q)
    sub = slice(0, n_loop)
    ref, loop_s, loop_mb, method = measure(lambda: rank_metrics_reference(distmat[sub], qp[sub], gp, qc[sub], gc))
    note = "all queries" if n_loop == num_q else f"{n_loop} queries: {loop_s:.2f} s, x{num_q / n_loop:.2f}"
    rows.append(("per-query loop (argsort per row)", loop_s * num_q / n_loop, loop_mb,
                 note + ("" if n_loop == num_q else " (extrapolated)")))
    same = rank_metrics(distmat[sub], qp[sub], gp, qc[sub], gc, ap="both")
    agree = (np.array_equal(same["cmc"], ref["cmc"]) and same["num_valid"] == ref["num_valid"]
             and all(abs(same[k] - ref[k]) < 1e-12 for k in ("mAP", "mAP_devkit", "mINP")))

    if not args.skip_sort:
        _, sort_s, sort_mb, _ = measure(lambda: np.argsort(distmat, axis=1))
        rows.append(("argsort of the matrix alone", sort_s, sort_mb, "output included"))

    rerank_info = ""
    if not args.skip_rerank:
        if args.rerank_fraction == 1.0:
            rq, rg = qf, gf
        else:
            rq, rg, *_ = market_problem(args.seed, args.dim, args.rerank_fraction)
        del distmat
        num_images = rq.shape[0] + rg.shape[0]
        x = torch.cat([rq, rg])
        rr_reps = min(reps, 2)
        result: dict[str, np.ndarray] = {}  # the last re-ranked matrix, for the quality line
        side = side_by_side({"gemm": lambda: gemm_strips(x),
                             "re_ranking": lambda: result.update(out=re_ranking(rq, rg))}, rr_reps)
        del x
        rows.append((f"(Q+G)^2 GEMM, x @ x.T in strips ({num_images}^2, median of {rr_reps})",
                     median_s(side["gemm"]), max(r[1] for r in side["gemm"]), "side by side"))
        rows.append((f"re_ranking ({rq.shape[0]} + {rg.shape[0]} = {num_images} images, median of {rr_reps})",
                     median_s(side["re_ranking"]), max(r[1] for r in side["re_ranking"]),
                     "k1=20 k2=6 lambda=0.3, output included"))
        ratios.append(f"re_ranking / (Q+G)^2 GEMM: {median_s(side['re_ranking']) / median_s(side['gemm']):.2f} (target <= 1.3)"
                      f"  (runs: re_ranking {', '.join(f'{r[0]:.2f}' for r in side['re_ranking'])} s; "
                      f"GEMM {', '.join(f'{r[0]:.2f}' for r in side['gemm'])} s)")
        if args.rerank_fraction == 1.0:
            m_rr = rank_metrics(result["out"], qp, gp, qc, gc, ap="both")
            rerank_info = (f"re-ranked: rank-1 {100 * m_rr['cmc'][0]:.1f}%  mAP {100 * m_rr['mAP']:.1f}%  "
                           f"mINP {100 * m_rr['mINP']:.1f}%")

    print(f"quality: rank-1 {100 * metrics['cmc'][0]:.1f}%  mAP {100 * metrics['mAP']:.1f}% (devkit "
          f"{100 * metrics['mAP_devkit']:.1f}%)  mINP {100 * metrics['mINP']:.1f}%  "
          f"({metrics['num_valid']} valid queries)")
    if rerank_info:
        print(rerank_info)
    print(f"rank_metrics == per-query loop on the first {n_loop} queries: {agree}")
    print(f"memory: peak RSS above the RSS before the call ({method}); inputs not counted")
    print("ratios (side by side, medians): " + "; ".join(ratios) + "\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'seconds':>8}  {'peak MB':>8}  note")
    for name, seconds, mb, note in rows:
        print(f"{name:<{width}}  {seconds:8.2f}  {mb:8.0f}  {note}")


if __name__ == "__main__":
    main()
