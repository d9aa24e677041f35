"""Tests of workbench.evaluation: rank metrics, distances, re-ranking, feature extraction, evaluate."""
from __future__ import annotations

import types
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from workbench import evaluation as ev
from workbench.evaluation import (
    evaluate,
    evaluate_features,
    extract_features,
    jaccard_distance,
    pairwise_distance,
    rank_metrics,
    rank_metrics_reference,
    re_ranking,
    sparse_jaccard_distance,
    valid_gallery_mask,
)


# ----------------------------------------------------------------------------------------------
# references written out plainly
# ----------------------------------------------------------------------------------------------

def dense_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lam=0.3):
    """Straightforward dense k-reciprocal re-ranking on the distance matrices (torchreid's
    formulation): squared distances over their column maximum, k-reciprocal sets with the 2/3
    expansion, Gaussian-weighted V, query expansion, Jaccard distance."""
    num_q = q_g.shape[0]
    jaccard, orig = dense_jaccard(np.block([[q_q, q_g], [q_g.T, g_g]]), num_q, k1, k2)
    final = jaccard * (1 - lam) + orig[:num_q] * lam
    return final[:, num_q:]


def dense_jaccard(full, num_q, k1, k2):
    """The Jaccard distance of the first ``num_q`` images to all of ``full`` (N, N), and the
    normalized squared distances, as torchreid's re-ranking computes them."""
    n = full.shape[0]
    orig = np.power(full, 2).astype(np.float32)
    orig = np.transpose(orig / np.max(orig, axis=0))
    rank = np.argsort(orig, axis=1)

    def reciprocal(i, k):
        return np.array([j for j in rank[i, :k + 1] if i in rank[j, :k + 1]], dtype=np.int64)

    V = np.zeros((n, n), np.float32)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = list(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion.extend(rc)
        expansion = np.unique(np.array(expansion, dtype=np.int64))
        w = np.exp(-orig[i, expansion])
        V[i, expansion] = w / np.sum(w)
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)]).astype(np.float32)
    jaccard = np.zeros((num_q, n), np.float32)
    for i in range(num_q):
        tmin = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard[i] = 1 - tmin / (2.0 - tmin)
    return jaccard, orig


def market_like(seed, num_ids=30, num_q=80, num_g=400, num_distractors=60, num_junk=30, num_cams=4,
                dim=16, noise=1.5):
    """Random Market-like labels and features: ids seen by several cameras, distractors (pid 0),
    junk (pid −1), same-camera matches."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_ids + 1, dim))
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_cams = rng.integers(0, num_cams, num_q)
    real = num_g - num_distractors - num_junk
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, real), np.zeros(num_distractors, np.int64),
                             -np.ones(num_junk, np.int64)])
    perm = rng.permutation(num_g)
    g_pids = g_pids[perm]
    g_cams = rng.integers(0, num_cams, num_g)

    def feats(pids):
        f = centers[np.maximum(pids, 0)] + noise * rng.standard_normal((pids.size, dim))
        f[pids <= 0] = 2 * rng.standard_normal(((pids <= 0).sum(), dim))
        return f.astype(np.float32)

    return feats(q_pids), feats(g_pids), q_pids, g_pids, q_cams, g_cams


# ----------------------------------------------------------------------------------------------
# rank_metrics: hand-made cases
# ----------------------------------------------------------------------------------------------

def test_single_query_by_hand():
    # gallery: g0 pid1/cam1 d=.5 (hit), g1 pid2 d=.1, g2 pid1/cam2 d=.3 (hit), g3 pid3 d=.2,
    # g4 pid1/cam0 d=.05: same id and camera as the query → removed.
    # valid order: g1 ✗, g3 ✗, g2 ✓ (rank 2), g0 ✓ (rank 3)
    d = np.array([[0.5, 0.1, 0.3, 0.2, 0.05]])
    args = (d, [1], [1, 2, 1, 3, 1], [0], [1, 1, 2, 2, 0])
    m = rank_metrics(*args, max_rank=5, ap="both")
    assert m["cmc"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert m["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)  # 5/12
    # devkit: hit 1: (0/2 + 1/3)/2, hit 2: (1/3 + 2/4)/2, times d_recall 1/2 → 7/24
    assert m["mAP_devkit"] == pytest.approx(7 / 24)
    assert m["mINP"] == pytest.approx(2 / 4)
    assert m["num_valid"] == 1 and m["ap"] == "both"
    assert rank_metrics(*args, ap="devkit")["mAP"] == pytest.approx(7 / 24)
    assert rank_metrics(*args, ap="standard")["mAP"] == pytest.approx(5 / 12)
    assert "mAP_devkit" not in rank_metrics(*args)


# gallery pids: g3 is junk (−1), g2 a distractor (0); query 3 has no match anywhere.
G_PIDS = np.array([1, 2, 0, -1, 1, 2])
G_CAMS = np.array([1, 1, 2, 1, 0, 2])
Q_PIDS = np.array([1, 2, 2, 5])
Q_CAMS = np.array([0, 2, 0, 0])
DIST = np.array([
    [0.4, 0.2, 0.1, 0.05, 0.3, 0.6],  # q0: junk g3 and same-cam g4 removed → g2✗ g1✗ g0✓ g5✗
    [0.3, 0.5, 0.2, 0.1, 0.4, 0.05],  # q1: junk g3, same-cam g5 removed → g2✗ g0✗ g4✗ g1✓
    [0.9, 0.1, 0.8, 0.2, 0.7, 0.3],   # q2: g1✓ g5✓ g4✗ g2✗ g0✗
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # q3: pid 5 has no gallery image → skipped
])


def test_valid_gallery_mask_is_the_market_junk_rule():
    # query pid 1 from camera 0: same pid + same camera removed, junk removed, distractor kept
    keep = valid_gallery_mask(1, 0, [1, 1, 2, -1, 0, 2], [0, 1, 0, 1, 0, 1])
    assert keep.tolist() == [False, True, True, False, True, True]
    # several queries at once broadcast to (R, G); a junk query (pid −1) removes only junk
    many = valid_gallery_mask(Q_PIDS[:, None], Q_CAMS[:, None], G_PIDS, G_CAMS)
    assert many.shape == (4, 6)
    for i in range(4):
        assert many[i].tolist() == valid_gallery_mask(Q_PIDS[i], Q_CAMS[i], G_PIDS, G_CAMS).tolist()
    assert many[0].tolist() == [True, True, True, False, False, True]  # q0: g3 junk, g4 same cam
    assert valid_gallery_mask(-1, 1, [-1, 1], [1, 1]).tolist() == [False, True]


def test_multi_query_by_hand_junk_and_distractors():
    m = rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=4, ap="both", per_query=True)
    # first hits at ranks 2, 3, 0
    np.testing.assert_allclose(m["cmc"], [1 / 3, 1 / 3, 2 / 3, 1.0])
    assert m["mAP"] == pytest.approx((1 / 3 + 1 / 4 + 1) / 3)  # 19/36
    assert m["mAP_devkit"] == pytest.approx((1 / 6 + 1 / 8 + 1) / 3)  # 31/72
    assert m["mINP"] == pytest.approx((1 / 3 + 1 / 4 + 1) / 3)
    assert m["num_valid"] == 3 and m["num_query"] == 4
    assert m["first_hit"].tolist() == [2, 3, 0, -1]
    assert m["valid"].tolist() == [True, True, True, False]
    np.testing.assert_allclose(m["AP"][:3], [1 / 3, 1 / 4, 1])
    assert np.isnan(m["AP"][3]) and np.isnan(m["INP"][3])
    # the reference loop gives the same hand-computed values
    _assert_same(m, rank_metrics_reference(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=4))


def test_junk_would_change_the_result_if_counted():
    pids = G_PIDS.copy()
    pids[3] = 7  # g3 becomes a wrong match at 0.05: q0's hit drops from rank 2 to rank 3
    m = rank_metrics(DIST[:1], Q_PIDS[:1], pids, Q_CAMS[:1], G_CAMS, max_rank=4)
    assert m["cmc"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert rank_metrics(DIST[:1], Q_PIDS[:1], G_PIDS, Q_CAMS[:1], G_CAMS, max_rank=4)["cmc"].tolist() \
        == [0.0, 0.0, 1.0, 1.0]


def test_ties_follow_gallery_order():
    # all distances equal: stable order g0 ✗, g1 ✓, g2 ✓, g3 ✗ → hits at ranks 1 and 2
    d = np.full((1, 4), 0.5, np.float32)
    m = rank_metrics(d, [1], [2, 1, 1, 3], [0], [1, 1, 2, 1], max_rank=3, ap="both")
    assert m["cmc"].tolist() == [0.0, 1.0, 1.0]
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["mAP_devkit"] == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert m["mINP"] == pytest.approx(2 / 3)


def test_cmc_longer_than_gallery_saturates():
    m = rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=10)
    assert m["cmc"].shape == (10,) and m["cmc"][-1] == 1.0


# ----------------------------------------------------------------------------------------------
# rank_metrics against the per-query reference loop
# ----------------------------------------------------------------------------------------------

def _assert_same(m, r):
    np.testing.assert_array_equal(m["cmc"], r["cmc"])
    assert m["num_valid"] == r["num_valid"]
    assert m["mAP"] == pytest.approx(r["mAP"], rel=1e-12, abs=1e-15)
    assert m["mAP_devkit"] == pytest.approx(r["mAP_devkit"], rel=1e-12, abs=1e-15)
    assert m["mINP"] == pytest.approx(r["mINP"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["float32", "float64", "rounded", "coarse", "torch", "fortran"])
def test_equals_reference_loop(seed, variant):
    qf, gf, qp, gp, qc, gc = market_like(seed)
    d = pairwise_distance(qf, gf)
    if variant == "float64":
        d = d.astype(np.float64)
    elif variant == "rounded":  # many exact ties
        d = np.round(d, 2).astype(np.float32)
    elif variant == "coarse":  # few distinct values: most rows tie everywhere
        d = np.round(d * 4).astype(np.float32)
    ref = rank_metrics_reference(d, qp, gp, qc, gc)
    if variant == "torch":
        args = (torch.from_numpy(d), torch.from_numpy(qp), torch.from_numpy(gp), torch.from_numpy(qc),
                torch.from_numpy(gc))
    elif variant == "fortran":
        args = (np.asfortranarray(d), qp, gp, qc, gc)
    else:
        args = (d, qp, gp, qc, gc)
    m = rank_metrics(*args, ap="both", per_query=True, chunk_size=7)
    _assert_same(m, ref)
    np.testing.assert_array_equal(m["valid"], ref["valid"])
    np.testing.assert_allclose(m["AP"], ref["AP"], rtol=1e-12)  # NaN at the same (skipped) queries
    np.testing.assert_allclose(m["AP_devkit"], ref["AP_devkit"], rtol=1e-12)
    np.testing.assert_allclose(m["INP"], ref["INP"], rtol=1e-12)
    np.testing.assert_array_equal(m["first_hit"], ref["first_hit"])


def test_equals_reference_with_few_buckets(monkeypatch):
    # two buckets: almost every distance is placed by the exact (lexicographic) path
    monkeypatch.setattr(ev.metrics, "_NUM_BUCKETS", 2)
    qf, gf, qp, gp, qc, gc = market_like(5)
    d = pairwise_distance(qf, gf)
    d[:, ::7] = d[:, 3:4]  # ties with positives and negatives alike
    _assert_same(rank_metrics(d, qp, gp, qc, gc, ap="both"), rank_metrics_reference(d, qp, gp, qc, gc))


def test_equals_reference_on_degenerate_rows():
    rng = np.random.default_rng(7)
    d = rng.random((6, 50)).astype(np.float32)
    d[0] = 0.0  # all equal, zero
    d[1] = 1e-30  # tiny equal values
    d[2, :] = 3e38  # huge values: the row sum overflows but every value is finite
    d[3, 10:] = d[3, 9]  # one positive at the same distance as most items
    g_pids = rng.integers(1, 4, 50)
    g_cams = rng.integers(0, 3, 50)
    q_pids = np.array([1, 2, 3, 1, 2, 3])
    q_cams = np.array([0, 1, 2, 0, 1, 2])
    _assert_same(rank_metrics(d, q_pids, g_pids, q_cams, g_cams, ap="both"),
                 rank_metrics_reference(d, q_pids, g_pids, q_cams, g_cams))


def test_queries_without_valid_match_are_skipped():
    qf, gf, qp, gp, qc, gc = market_like(3)
    qp = qp.copy()
    qp[:5] = 999  # unknown ids
    qp[5] = -1  # a junk query never matches
    d = pairwise_distance(qf, gf)
    m = rank_metrics(d, qp, gp, qc, gc, per_query=True)
    ref = rank_metrics_reference(d, qp, gp, qc, gc)
    assert m["num_valid"] == ref["num_valid"] <= len(qp) - 6
    assert not m["valid"][:6].any()
    _assert_same(rank_metrics(d, qp, gp, qc, gc, ap="both"), ref)



def test_the_one_line_says_over_how_many_queries_when_some_have_no_match():
    from workbench.evaluation import format_metrics

    m = {"rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "mAP": 0.4, "mAP_devkit": 0.39, "mINP": 0.1}
    assert format_metrics(m | {"num_valid": 32, "num_query": 32}).endswith("mINP 10.0")
    line = format_metrics(m | {"num_valid": 23, "num_query": 32})
    assert line.endswith("mINP 10.0  over 23 of 32 queries (9 have no match in another camera)"), line
    assert format_metrics(m | {"num_valid": 8, "num_query": 9}).endswith("(1 has no match in another camera)")


# ----------------------------------------------------------------------------------------------
# rank_metrics: validation
# ----------------------------------------------------------------------------------------------

def test_shape_mismatch_names_the_arrays():
    with pytest.raises(ValueError, match=r"g_pids has shape \(5,\)"):
        rank_metrics(DIST, Q_PIDS, G_PIDS[:5], Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match=r"distmat has shape \(4, 6\).*q_camids"):
        rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS[:3], G_CAMS)
    with pytest.raises(ValueError, match="2-D"):
        rank_metrics(DIST[0], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="1-D"):
        rank_metrics(DIST, Q_PIDS[:, None], G_PIDS, Q_CAMS, G_CAMS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_distances_rejected(bad):
    d = DIST.copy()
    d[2, 4] = bad
    with pytest.raises(ValueError, match=r"NaN/inf.*\[2, 4\]"):
        rank_metrics(d, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="max_rank"):
        rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=0)
    with pytest.raises(ValueError, match="ap must be"):
        rank_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap="interpolated")
    with pytest.raises(ValueError, match="no query has a valid match"):
        rank_metrics(DIST, [5, 5, 5, 5], G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="integer labels"):
        rank_metrics(DIST, Q_PIDS + 0.5, G_PIDS, Q_CAMS, G_CAMS)


# ----------------------------------------------------------------------------------------------
# distances
# ----------------------------------------------------------------------------------------------

def test_pairwise_distance_both_metrics():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((7, 5)), rng.standard_normal((11, 5))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = pairwise_distance(q, g, "cosine", chunk_size=3)
    assert cos.dtype == np.float32 and cos.shape == (7, 11)
    np.testing.assert_allclose(cos, 1 - qn @ gn.T, atol=1e-6)
    euc = pairwise_distance(torch.from_numpy(q), torch.from_numpy(g), "euclidean")
    np.testing.assert_allclose(euc, ((q[:, None] - g[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)
    assert pairwise_distance(q, q, "euclidean").min() >= 0.0  # clamped at 0


def test_pairwise_distance_errors():
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(np.ones((2, 3)), np.ones((2, 3)), "manhattan")
    with pytest.raises(ValueError, match="feature dimensions differ"):
        pairwise_distance(np.ones((2, 3)), np.ones((2, 4)))


# ----------------------------------------------------------------------------------------------
# re-ranking
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1,k2,num_stored", [(20, 6, 64), (20, 6, 1), (5, 3, 8), (7, 1, 64)])
def test_re_ranking_equals_dense_reference(metric, k1, k2, num_stored):
    rng = np.random.default_rng(k1 + k2)
    num_q, num_g = 30, 80
    ids = rng.integers(0, 12, num_q + num_g)
    f = (rng.standard_normal((12, 16))[ids] + 0.8 * rng.standard_normal((num_q + num_g, 16)))
    f = f.astype(np.float32)
    full = pairwise_distance(f, f, metric)
    full = (full + full.T) / 2
    ref = dense_re_ranking(full[:num_q, num_q:], full[:num_q, :num_q], full[num_q:, num_q:], k1, k2, 0.3)
    # small blocks and budgets exercise the blocked pass, recomputed distances and Jaccard chunks
    out = re_ranking(torch.from_numpy(f[:num_q]), f[num_q:], k1, k2, 0.3, metric=metric, block_size=24,
                     num_stored=num_stored, jaccard_budget=500)
    assert out.shape == (num_q, num_g) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1,k2,num_stored", [(30, 6, 64), (5, 3, 8), (7, 1, 64)])
def test_jaccard_distance_within_one_set_equals_dense_reference(metric, k1, k2, num_stored):
    """What clustering runs DBSCAN on: every image against every image of the same set, counted once."""
    rng = np.random.default_rng(k1 * k2)
    ids = rng.integers(0, 10, 90)
    f = (rng.standard_normal((10, 16))[ids] + 0.8 * rng.standard_normal((90, 16))).astype(np.float32)
    full = pairwise_distance(f, f, metric)
    ref, _ = dense_jaccard((full + full.T) / 2, 90, k1, k2)
    out = jaccard_distance(torch.from_numpy(f), k1, k2, metric=metric, block_size=32, num_stored=num_stored,
                           jaccard_budget=700)
    assert out.shape == (90, 90) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("k1,k2,budget", [(30, 6, 700), (5, 3, 1 << 22), (7, 1, 333)])
def test_sparse_jaccard_distance_is_the_dense_one_below_one_bit_for_bit(k1, k2, budget):
    """The clustering's sparse path: the entries below 1 with jaccard_distance's exact values, every
    other pair exactly 1, and max_distance dropping the pairs above it."""
    rng = np.random.default_rng(k1 + k2)
    ids = rng.integers(0, 12, 120)
    f = torch.from_numpy((rng.standard_normal((12, 16))[ids] + 0.8 * rng.standard_normal((120, 16))).astype(np.float32))
    dense = jaccard_distance(f, k1, k2, jaccard_budget=budget)
    rows, cols, values = sparse_jaccard_distance(f, k1, k2, jaccard_budget=budget)
    assert values.dtype == torch.float32 and rows.dtype == cols.dtype == torch.int64
    keys = rows * 120 + cols
    assert bool((keys[1:] > keys[:-1]).all())  # sorted by (row, col), no duplicates
    assert torch.equal(torch.from_numpy(dense)[rows, cols], values)
    absent = np.ones((120, 120), bool)
    absent[rows.numpy(), cols.numpy()] = False
    assert (dense[absent] == 1.0).all() and not absent.diagonal().any()
    near = sparse_jaccard_distance(f, k1, k2, max_distance=0.5, jaccard_budget=budget)
    assert all(torch.equal(a, b[values <= 0.5]) for a, b in zip(near, (rows, cols, values)))
    assert [t.numel() for t in sparse_jaccard_distance(np.zeros((0, 4), np.float32))] == [0, 0, 0]


def test_re_ranking_improves_clustered_retrieval():
    qf, gf, qp, gp, qc, gc = market_like(11, noise=2.5)
    base = evaluate_features(qf, gf, qp, gp, qc, gc)
    rr = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True)
    assert rr["rerank"] and rr["mAP"] > base["mAP"]


def test_re_ranking_arguments():
    q, g = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(q, g, k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(q, g, lambda_value=1.5)
    with pytest.raises(ValueError, match="NaN"):
        re_ranking(np.full((2, 3), np.nan), g)
    out = re_ranking(q, g)  # identical features: no division by zero
    assert np.isfinite(out).all()


def test_re_ranking_thread_settings_agree():
    qf, gf, *_ = market_like(4)
    default = re_ranking(qf, gf)  # GEMMs on the current threads, the rest as "auto" chooses
    np.testing.assert_allclose(re_ranking(qf, gf, num_threads=1, sparse_threads=None), default,
                               atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(re_ranking(qf, gf, num_threads=2, sparse_threads=2), default,
                               atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(re_ranking(qf, gf, num_threads=2, sparse_threads=1), default,
                               atol=2e-6, rtol=1e-5)


def test_re_ranking_sparse_threads_follow_the_openmp_wait_policy(monkeypatch):
    import workbench
    from workbench.evaluation.rerank import _sparse_threads

    monkeypatch.setattr(workbench, "OPENMP_PASSIVE", True)
    assert _sparse_threads("auto", 3) == 3  # sleeping waiters: all the GEMM's threads
    monkeypatch.setattr(workbench, "OPENMP_PASSIVE", False)
    assert _sparse_threads("auto", 3) == 1  # spinning waiters would fight other jobs: one
    assert _sparse_threads(None, 3) == 3 and _sparse_threads(2, 3) == 2
    for bad in ("two", 0):
        with pytest.raises(ValueError, match="sparse_threads"):
            _sparse_threads(bad, 2)


# ----------------------------------------------------------------------------------------------
# feature extraction and evaluate
# ----------------------------------------------------------------------------------------------

class Out(NamedTuple):
    feature_map: torch.Tensor
    feature: torch.Tensor


class TinyNet(nn.Module):
    """Position-sensitive: its features change when the image is mirrored."""

    def __init__(self, size=(8, 4), dim=6):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.bn = nn.BatchNorm1d(2 * size[0] * size[1])
        self.fc = nn.Linear(2 * size[0] * size[1], dim)

    def forward(self, x):
        h = self.bn(self.conv(x).flatten(1))
        f = self.fc(h)
        return Out(h, f / (f.norm(dim=1, keepdim=True) + 1e-7))


def _batches(images, pids, camids, batch_size=4, order=None):
    order = np.arange(len(images)) if order is None else order
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield {"img": images[idx], "pid": torch.as_tensor(pids[idx]),
               "camid": torch.as_tensor(camids[idx]), "index": torch.as_tensor(idx)}


def test_extract_features_flip_and_modes():
    model = TinyNet()
    model.train()
    x = torch.randn(10, 3, 8, 4)
    pids, cams = np.arange(10) % 3, np.arange(10) % 2
    f, p, c = extract_features(model, list(_batches(x, pids, cams)))
    assert model.training  # restored
    assert f.shape == (10, 6) and f.dtype == torch.float32 and f.device.type == "cpu"
    np.testing.assert_array_equal(p, pids)
    np.testing.assert_array_equal(c, cams)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(10), atol=1e-5, rtol=0)

    # flip averages the image and its mirror, then re-normalizes
    ff, _, _ = extract_features(model, list(_batches(x, pids, cams)), flip=True)
    model.eval()
    with torch.no_grad():
        a, b = model(x).feature, model(x.flip(3)).feature
    expected = (a + b) / (a + b).norm(dim=1, keepdim=True)
    torch.testing.assert_close(ff, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ff, f, atol=1e-3)
    assert not model.training  # eval stays eval

    # a mirror-symmetric image: flip changes nothing
    sym = torch.cat([x[..., :2], x[..., :2].flip(3)], dim=3)
    s0, _, _ = extract_features(model, list(_batches(sym, pids, cams)))
    s1, _, _ = extract_features(model, list(_batches(sym, pids, cams)), flip=True)
    torch.testing.assert_close(s0, s1, atol=1e-6, rtol=1e-6)


def test_extract_features_order_amp_and_errors():
    model = TinyNet().eval()
    x = torch.randn(9, 3, 8, 4)
    pids, cams = np.arange(9), np.zeros(9, np.int64)
    f, p, _ = extract_features(model, list(_batches(x, pids, cams)))
    shuffled = np.random.default_rng(0).permutation(9)
    fs, ps, _ = extract_features(model, list(_batches(x, pids, cams, order=shuffled)))
    np.testing.assert_array_equal(ps, p)  # back in dataset order
    torch.testing.assert_close(fs, f)
    fa, _, _ = extract_features(model, list(_batches(x, pids, cams)), amp=True)  # bf16 autocast
    assert fa.dtype == torch.float32
    torch.testing.assert_close(fa, f, atol=0.05, rtol=0.05)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    fc, _, _ = extract_features(model.to(memory_format=torch.channels_last), list(_batches(x, pids, cams)), amp=True,
                                channels_last=True)
    hook.remove()
    assert seen and not any(seen)  # the images went in as channels_last, not as the loader made them
    torch.testing.assert_close(fc, fa, atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="no batch"):
        extract_features(model, [])
    with pytest.raises(ValueError, match="device"):
        extract_features(model, list(_batches(x, pids, cams)), device="meta")


def _images_for(samples, size):
    """Deterministic images whose content depends on the pid (and a little on the path)."""
    out = []
    for s in samples:
        g = torch.Generator().manual_seed(1000 + int(s.pid))
        base = torch.randn(3, *size, generator=g)
        g2 = torch.Generator().manual_seed(hash(s.path) % (2 ** 31))
        out.append(base + 0.3 * torch.randn(3, *size, generator=g2))
    return torch.stack(out)


def _fake_build_test_loader(samples, *, image_size, batch_size=128, workers=0, pin_memory=False):
    samples = list(samples)
    images = _images_for(samples, image_size)
    pids = np.array([s.pid for s in samples])
    cams = np.array([s.camid for s in samples])
    return list(_batches(images, pids, cams, batch_size=batch_size))


class _Sample(NamedTuple):
    path: str
    pid: int
    camid: int


def _tiny_split():
    query = [_Sample(f"q{i}.jpg", pid, i % 2) for i, pid in enumerate([1, 2, 3, 4, 5, 6])]
    gallery = [_Sample(f"g{i}.jpg", pid, 1 - i % 2) for i, pid in
               enumerate([1, 2, 3, 4, 5, 6, 1, 2, 3, 0, 0, -1])]
    return types.SimpleNamespace(query=query, gallery=gallery)


def test_evaluate_with_fake_loader(monkeypatch):
    import workbench.data.loaders as loaders

    monkeypatch.setattr(loaders, "build_test_loader", _fake_build_test_loader)  # evaluate imports it on call
    model = TinyNet()
    split = _tiny_split()
    res = evaluate(model, split, image_size=(8, 4), batch_size=5, return_distmat=True, flip=True)
    for key in ("rank1", "rank5", "rank10", "mAP", "mAP_devkit", "mINP", "cmc", "num_valid", "seconds"):
        assert key in res
    assert 0.0 <= res["mAP"] <= 1.0 and res["cmc"].shape == (50,)
    assert res["distmat"].shape == (6, 12) and res["qf"].shape == (6, 6)
    # the same as evaluating the extracted features directly
    direct = evaluate_features(res["qf"], res["gf"], res["q_pids"], res["g_pids"], res["q_camids"],
                               res["g_camids"])
    assert direct["mAP"] == res["mAP"] and direct["mAP_devkit"] == res["mAP_devkit"]
    res_rr = evaluate(model, split, image_size=(8, 4), rerank=True, max_rank=5)
    assert res_rr["rerank"] and res_rr["cmc"].shape == (5,)


def test_evaluate_features_checks_lengths():
    qf, gf = np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="gf has 5 rows but g_camids has 4"):
        evaluate_features(qf, gf, [1, 2, 3], [1, 2, 3, 4, 5], [0, 0, 0], [1, 1, 1, 1])


def test_evaluate_with_real_loader(tmp_path):
    loaders = pytest.importorskip("workbench.data.loaders")
    datasets = pytest.importorskip("workbench.data.datasets")
    Image = pytest.importorskip("PIL.Image")
    if not hasattr(loaders, "build_test_loader"):
        pytest.skip("build_test_loader is not there yet")
    rng = np.random.default_rng(0)

    def write(name, pid):
        arr = (np.clip(rng.normal(40 * pid, 20, (16, 8, 3)), 0, 255)).astype(np.uint8)
        path = tmp_path / name
        Image.fromarray(arr).save(path)
        return str(path)

    query = [datasets.Sample(write(f"q{i}.png", p), p, 0) for i, p in enumerate([1, 2, 3])]
    gallery = [datasets.Sample(write(f"g{i}.png", p), p, 1) for i, p in enumerate([1, 2, 3, 0, 2])]
    split = types.SimpleNamespace(query=query, gallery=gallery)
    res = evaluate(TinyNet(size=(16, 8)), split, image_size=(16, 8), batch_size=2)
    assert res["num_valid"] == 3 and 0.0 <= res["mAP"] <= 1.0
