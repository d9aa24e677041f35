"""Tests for workbench.losses: hand-made cases, float64 loop references, MARLoss state, DDP."""
from __future__ import annotations

import math
import os
import socket
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from workbench.losses import (
    MARLoss,
    agent_loss,
    agreement,
    cross_view_loss,
    discriminative_loss,
    joint_embedding_loss,
    log_soft_multilabel,
    soft_multilabel,
)

# ------------------------------------------------------------------------------------------------
# float64 references written as plain loops (the official semantics, spelled out)
# ------------------------------------------------------------------------------------------------


def ref_norm(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / (x.norm(dim=1, keepdim=True) + 1e-7)


def ref_multilabels(f, a, scale=30.0):
    f, a = ref_norm(f), ref_norm(a)
    return torch.stack([torch.softmax(scale * (a @ f[i]), 0) for i in range(len(f))])


def ref_agreement(y1, y2):
    y1, y2 = y1.double(), y2.double()
    out = torch.zeros(len(y1), len(y2), dtype=torch.float64)
    for i in range(len(y1)):
        for j in range(len(y2)):
            out[i, j] = torch.minimum(y1[i], y2[j]).sum()
    return out


def ref_joint(ft, fr, labels, agents, margin=1.0, combine=False):
    ft, fr, a = ref_norm(ft), ref_norm(fr), ref_norm(agents)
    terms = []
    for f, y in zip(fr, labels.tolist()):
        pull = (f - a[y]).pow(2).sum()
        hinges = [margin - (f - a[n]).pow(2).sum() for n in range(len(a))
                  if n != y and float(f @ a[n]) > 1 - margin / 2]
        hinge = torch.stack([h.clamp(min=0) for h in hinges]).mean() if hinges else None
        if combine:  # the non-official variant: one pull + hinge term per reference image
            terms.append(pull + (hinge if hinge is not None else 0.0))
        else:  # official JointLoss: pull and hinge are separate list entries
            terms.append(pull)
            if hinge is not None:
                terms.append(hinge)
    for f in ft:
        hinges = [margin - (f - a[n]).pow(2).sum() for n in range(len(a)) if float(f @ a[n]) > 1 - margin / 2]
        if hinges:
            terms.append(torch.stack([h.clamp(min=0) for h in hinges]).mean())
    return torch.stack(terms).mean()


def ref_mdl(features, multilabels, threshold, ratio):
    """Returns (loss, batch_top, positive pairs, negative pairs) in float64."""
    f = ref_norm(features)
    b = len(f)
    pairs = [(i, j) for i in range(b) for j in range(i + 1, b)]
    dist = [float((f[i] - f[j]).norm()) for i, j in pairs]
    agree = [float(torch.minimum(multilabels[i].double(), multilabels[j].double()).sum()) for i, j in pairs]
    k = int(len(pairs) * ratio)
    order = sorted(range(len(pairs)), key=lambda p: (dist[p], p))[:k]
    pos = [pairs[p] for p in order if agree[p] > threshold]
    neg = [pairs[p] for p in order if agree[p] <= threshold]
    top = sorted(agree, reverse=True)[k - 1] if k > 0 else threshold
    if pos:
        p_mean = sum(math.exp(-float((f[i] - f[j]).pow(2).sum())) for i, j in pos) / len(pos)
    else:
        p_mean = 1.0
    if neg:
        n_mean = sum(math.exp(-float((f[i] - f[j]).pow(2).sum())) for i, j in neg) / len(neg)
    else:
        n_mean = 0.5
    return -math.log(p_mean / (p_mean + n_mean)), top, pos, neg


def ref_camera_stats(log_ml, camids):
    out = {}
    for c in sorted(set(camids.tolist())):
        rows = log_ml.double()[camids == c]
        out[c] = (rows.mean(0), rows.std(0) if len(rows) > 1 else None)
    return out


def ref_cml(log_ml, camids, cm, cs):
    terms = []
    for mean, std in ref_camera_stats(log_ml, camids).values():
        if std is None:
            continue
        terms += [(mean - cm.double()).pow(2).sum(), (std - cs.double()).pow(2).sum()]
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)


class RefMAR:
    """Step-by-step float64 reference of MARLoss (official order, plain loops)."""

    def __init__(self, feats, agents, camids, ratio, scale=30.0):
        self.ratio, self.scale = ratio, scale
        ml = ref_multilabels(feats, agents, scale)
        self.memory = torch.zeros_like(ml)
        self.visited = [False] * len(ml)
        log_ml = torch.log(ml)
        stats = ref_camera_stats(log_ml, camids)
        self.cm = torch.stack([m for m, _ in stats.values()]).mean(0)
        self.cs = torch.stack([s for _, s in stats.values() if s is not None]).mean(0)
        n = len(ml)
        agree = [float(torch.minimum(ml[i], ml[j]).sum()) for i in range(n) for j in range(i + 1, n)]
        self.k = int(len(agree) * ratio)
        self.threshold = sorted(agree, reverse=True)[self.k - 1]
        self.momentum = None

    def step(self, fr, lr, ft, idx, cams, agents, epoch, lam1=2e-4, lam2=50.0, beta=0.2):
        a = ref_norm(agents)
        logits = self.scale * ref_norm(fr) @ a.t()
        al = -torch.stack([torch.log_softmax(logits[i], 0)[y] for i, y in enumerate(lr.tolist())]).mean()
        rj = ref_joint(ft, fr, lr, agents)
        ml = ref_multilabels(ft, agents, self.scale)
        log_ml = torch.log(ml)
        if self.momentum is None:
            self.momentum = (len(ft) + len(fr)) / 10000
        stats = [s for s in ref_camera_stats(log_ml, cams).values() if s[1] is not None]
        if stats:
            new_m = torch.stack([m for m, _ in stats]).mean(0)
            new_s = torch.stack([s for _, s in stats]).mean(0)
            self.cm = self.cm * (1 - self.momentum) + new_m * self.momentum
            self.cs = self.cs * (1 - self.momentum) + new_s * self.momentum
        cml = ref_cml(log_ml, cams, self.cm, self.cs)
        mdl = 0.0
        if epoch >= 1:
            for r, i in enumerate(idx.tolist()):
                if self.visited[i]:
                    self.memory[i] = 0.9 * self.memory[i] + 0.1 * ml[r]
                else:
                    self.memory[i] = ml[r]
                    self.visited[i] = True
            mdl, top, _, _ = ref_mdl(ft, self.memory[idx], self.threshold, self.ratio)
            self.threshold = 0.9 * self.threshold + 0.1 * top
        total = mdl + lam1 * float(cml) + lam2 * (float(al) + beta * float(rj))
        return {"al": float(al), "rj": float(rj), "cml": float(cml), "mdl": mdl, "loss": total}


# ------------------------------------------------------------------------------------------------
# soft multilabels and agreement
# ------------------------------------------------------------------------------------------------


def test_soft_multilabel_hand_case():
    f = torch.tensor([[2.0, 0.0]])  # normalized to e1
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # e1, e2
    y = soft_multilabel(f, a, scale=1.0)
    e = math.e
    torch.testing.assert_close(y, torch.tensor([[e / (e + 1), 1 / (e + 1)]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(log_soft_multilabel(f, a, scale=1.0), y.log(), atol=1e-6, rtol=0)


def test_soft_multilabel_rows_sum_to_one_and_match_reference():
    f, a = torch.randn(9, 16), torch.randn(13, 16)
    y = soft_multilabel(f, a)
    assert y.dtype == torch.float32 and y.shape == (9, 13)
    torch.testing.assert_close(y.sum(1), torch.ones(9))
    torch.testing.assert_close(y.double(), ref_multilabels(f, a), atol=1e-5, rtol=1e-4)
    log_y = log_soft_multilabel(f, a, scale=300.0)  # extreme scale: log_softmax stays finite
    assert torch.isfinite(log_y).all()


def test_agreement_hand_case():
    y1 = torch.tensor([[0.5, 0.5, 0.0]])
    y2 = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(agreement(y1, y2), torch.tensor([[0.5, 1.0]]))


def test_agreement_equals_sum_min_and_l1_form():
    y1 = torch.randn(7, 11).softmax(1)
    y2 = torch.randn(5, 11).softmax(1)
    got = agreement(y1, y2)
    torch.testing.assert_close(got.double(), ref_agreement(y1, y2), atol=1e-6, rtol=0)
    l1 = (y1.double()[:, None] - y2.double()[None]).abs().sum(-1)
    torch.testing.assert_close(got.double(), 1 - l1 / 2, atol=1e-6, rtol=0)
    assert agreement(y1, y2[:0]).shape == (7, 0)


# ------------------------------------------------------------------------------------------------
# L_AL and L_RJ
# ------------------------------------------------------------------------------------------------


def test_agent_loss_hand_case_and_moves_agents():
    f = torch.tensor([[1.0, 0.0]], requires_grad=True)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = agent_loss(f, a, torch.tensor([0]), scale=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_agent_loss_matches_reference():
    f, a, y = torch.randn(6, 8), torch.randn(4, 8), torch.tensor([0, 1, 2, 3, 1, 0])
    logits = 30 * ref_norm(f) @ ref_norm(a).t()
    ref = -torch.stack([torch.log_softmax(logits[i], 0)[y[i]] for i in range(6)]).mean()
    assert agent_loss(f, a, y).item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


def test_joint_embedding_hand_case():
    a = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], requires_grad=True)
    fr = torch.tensor([[1.0, 0.0]], requires_grad=True)  # label 0: pull 0; agent 1 cos .8 -> d2 .4 -> hinge .6; agent 2 cos 0
    ft = torch.tensor([[0.6, 0.8]])  # cos .6/.96/.8 -> d2 .8/.08/.4 -> hinges .2/.92/.6
    tgt = (0.2 + 0.92 + 0.6) / 3
    got = joint_embedding_loss(ft, fr, torch.tensor([0]), a, margin=1.0)  # official: pull, hinge, target
    assert got.item() == pytest.approx((0.0 + 0.6 + tgt) / 3, abs=1e-5)
    combined = joint_embedding_loss(ft, fr, torch.tensor([0]), a, margin=1.0, combine_reference_terms=True)
    assert combined.item() == pytest.approx((0.6 + tgt) / 2, abs=1e-5)
    got.backward()
    assert a.grad is None and fr.grad is not None  # agents are detached inside


@pytest.mark.parametrize("combine", [False, True])
def test_joint_embedding_matches_reference(combine):
    a = torch.randn(20, 4)  # low dimension: many agents within the margin
    ft, fr = torch.randn(7, 4), torch.randn(5, 4)
    labels = torch.randint(0, 20, (5,))
    got = joint_embedding_loss(ft, fr, labels, a, margin=1.0, combine_reference_terms=combine)
    ref = ref_joint(ft, fr, labels, a, combine=combine)
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)


def test_joint_embedding_no_agent_within_margin():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fr = torch.tensor([[1.0, 0.0]])
    ft = torch.tensor([[-1.0, -1.0]])  # no agent has cos > 0.5: no target term
    got = joint_embedding_loss(ft, fr, torch.tensor([0]), a)
    assert got.item() == pytest.approx(0.0, abs=1e-6)  # one term: pull 0, no hinge


# ------------------------------------------------------------------------------------------------
# L_MDL
# ------------------------------------------------------------------------------------------------

# five 2-d features at angles 0, 10, 90, 180, 270 degrees; three agents' multilabels by hand
_ANGLES = [0.0, 10.0, 90.0, 180.0, 270.0]
_F5 = torch.tensor([[math.cos(math.radians(t)), math.sin(math.radians(t))] for t in _ANGLES])
_Y5 = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0], [0.85, 0.15, 0.0]])
# agreements: (0,1) .9 (0,2) .2 (0,3) .1 (0,4) .95 (1,2) .3 (1,3) .1 (1,4) .9 (2,3) .1 (2,4) .2 (3,4) .15
# ratio 0.2 -> k = 2; two closest pairs: (0,1) d2 = 2 - 2cos10, then (1,2) d2 = 2 - 2cos80


def test_discriminative_hand_case():
    f = _F5.clone().requires_grad_(True)
    loss, top, stats = discriminative_loss(f, _Y5, threshold=0.5, mining_ratio=0.2)
    p = math.exp(-(2 - 2 * math.cos(math.radians(10))))
    n = math.exp(-(2 - 2 * math.cos(math.radians(80))))
    assert loss.item() == pytest.approx(-math.log(p / (p + n)), abs=1e-5)
    assert top.item() == pytest.approx(0.9, abs=1e-6)  # 2nd largest agreement
    assert stats["pairs"].tolist() == [[0, 1], [1, 2]]
    assert stats["is_positive"].tolist() == [True, False]
    assert int(stats["n_pos"]) == 1 and int(stats["n_neg"]) == 1
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_discriminative_empty_sets():
    p = math.exp(-(2 - 2 * math.cos(math.radians(10))))
    n = math.exp(-(2 - 2 * math.cos(math.radians(80))))
    no_pos, _, s = discriminative_loss(_F5, _Y5, threshold=0.99, mining_ratio=0.2)
    assert int(s["n_pos"]) == 0
    assert no_pos.item() == pytest.approx(math.log(1 + (p + n) / 2), abs=1e-5)
    no_neg, _, s = discriminative_loss(_F5, _Y5, threshold=0.0, mining_ratio=0.2)
    assert int(s["n_neg"]) == 0
    assert no_neg.item() == pytest.approx(-math.log(((p + n) / 2) / ((p + n) / 2 + 0.5)), abs=1e-5)


def test_discriminative_k_zero_is_log_1_5_and_keeps_threshold():
    f = torch.randn(3, 8, requires_grad=True)  # 3 pairs * 0.005 -> k = 0
    loss, top, stats = discriminative_loss(f, torch.randn(3, 5).softmax(1), threshold=0.37)
    assert loss.item() == pytest.approx(math.log(1.5), abs=1e-6)
    assert top.item() == pytest.approx(0.37)
    assert int(stats["n_pos"]) == 0 and int(stats["n_neg"]) == 0
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))
    single, _, _ = discriminative_loss(torch.randn(1, 8), torch.ones(1, 5) / 5, threshold=0.5)
    assert single.item() == pytest.approx(math.log(1.5), abs=1e-6)


def test_discriminative_ties_are_broken_by_pair_order():
    f = torch.ones(6, 4)  # every distance is 0: the first pairs in row-major order are mined
    loss, _, stats = discriminative_loss(f, torch.ones(6, 3) / 3, threshold=0.5, mining_ratio=0.2)
    assert stats["pairs"].tolist() == [[0, 1], [0, 2], [0, 3]]  # k = int(15 * 0.2) = 3
    assert torch.isfinite(loss)


def test_discriminative_matches_reference():
    f = torch.randn(40, 6)
    y = torch.randn(40, 5).mul(3).softmax(1)
    for threshold in (0.2, 0.5, 0.8):
        loss, top, stats = discriminative_loss(f, y, threshold, mining_ratio=0.02)
        ref_loss, ref_top, pos, neg = ref_mdl(f, y, threshold, 0.02)
        assert loss.item() == pytest.approx(ref_loss, abs=1e-5)
        assert top.item() == pytest.approx(ref_top, abs=1e-6)
        mined = [tuple(p) for p in stats["pairs"].tolist()]
        assert sorted(mined) == sorted(pos + neg)
        assert int(stats["n_pos"]) == len(pos)


# ------------------------------------------------------------------------------------------------
# L_CML
# ------------------------------------------------------------------------------------------------


def test_cross_view_hand_case():
    log_ml = torch.tensor([[0.0, 0.0], [2.0, -2.0], [5.0, 5.0]], requires_grad=True)
    cams = torch.tensor([3, 3, 7])  # camera 7 has one image: skipped
    # camera 3: mean (1, -1), unbiased std (sqrt 2, sqrt 2); centres 0 -> (2 + 4) / 2 terms = 3
    loss = cross_view_loss(log_ml, cams, torch.zeros(2), torch.zeros(2))
    assert loss.item() == pytest.approx(3.0, abs=1e-5)
    loss.backward()
    assert torch.equal(log_ml.grad[2], torch.zeros(2))


def test_cross_view_matches_reference():
    log_ml = log_soft_multilabel(torch.randn(20, 8), torch.randn(6, 8))
    cams = torch.tensor([0] * 7 + [1] * 6 + [2] * 1 + [5] * 6)
    cm, cs = torch.randn(6), torch.rand(6)
    got = cross_view_loss(log_ml, cams, cm, cs)
    assert got.item() == pytest.approx(ref_cml(log_ml, cams, cm, cs).item(), rel=1e-5)


def test_cross_view_degenerate_batches_are_finite():
    x = torch.randn(4, 5, requires_grad=True)
    loss = cross_view_loss(x, torch.tensor([0, 1, 2, 3]), torch.zeros(5), torch.zeros(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    same = torch.zeros(3, 5, requires_grad=True)  # identical rows: std 0, gradient must not be NaN
    loss = cross_view_loss(same, torch.tensor([1, 1, 1]), torch.ones(5), torch.ones(5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()


# ------------------------------------------------------------------------------------------------
# MARLoss
# ------------------------------------------------------------------------------------------------

N, NP, D = 30, 7, 5


def _setup(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, D, generator=g)
    agents = torch.randn(NP, D, generator=g)
    cams = torch.randint(0, 3, (n,), generator=g)
    return feats, agents, cams


def _batches(feats, cams, seed=1):
    """Four steps: epoch 0 (warm-up), then epoch 1 with revisited indices."""
    g = torch.Generator().manual_seed(seed)
    idx_list = [torch.arange(0, 8), torch.arange(4, 12), torch.tensor([0, 1, 2, 3, 20, 21, 22, 23]),
                torch.tensor([4, 5, 12, 13, 14, 0, 1, 29])]
    epochs = [0, 1, 1, 2]
    out = []
    for idx, ep in zip(idx_list, epochs):
        ft = feats[idx] + 0.3 * torch.randn(len(idx), D, generator=g)
        fr = torch.randn(6, D, generator=g)
        lr = torch.randint(0, NP, (6,), generator=g)
        out.append(dict(reference_features=fr, reference_labels=lr, target_features=ft,
                        target_index=idx, target_camids=cams[idx], epoch=ep))
    return out


def test_initialize_matches_brute_force():
    feats, agents, cams = _setup(n=60)
    ref = RefMAR(feats, agents, cams, ratio=0.05)
    for block in (7, 1000):
        m = MARLoss(60, NP, mining_ratio=0.05)
        info = m.initialize(feats, agents, cams, block_size=block)
        assert info["k"] == ref.k == int(60 * 59 / 2 * 0.05)
        assert info["threshold"] == pytest.approx(ref.threshold, abs=1e-6)
        torch.testing.assert_close(m.memory.double(), ref_multilabels(feats, agents), atol=1e-6, rtol=0)
        torch.testing.assert_close(m.center_mean.double(), ref.cm, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(m.center_std.double(), ref.cs, atol=1e-4, rtol=1e-5)
        assert bool(m.initialized) and not m.visited.any()


def test_marloss_steps_match_float64_reference():
    feats, agents, cams = _setup()
    ratio = 0.15  # 8 target images: 28 pairs -> k = 4; steps mine (pos, neg) = (3, 1), (1, 3), (2, 2)
    m = MARLoss(N, NP, mining_ratio=ratio)
    m.initialize(feats, agents, cams)
    ref = RefMAR(feats, agents, cams, ratio)
    assert float(m.threshold) == pytest.approx(ref.threshold, abs=1e-6)
    prev_threshold = float(m.threshold)
    for step, batch in enumerate(_batches(feats, cams)):
        out = m(**batch, agents=agents)
        assert int(out["n_pos"]) + int(out["n_neg"]) == (0 if step == 0 else 4)
        want = ref.step(batch["reference_features"], batch["reference_labels"], batch["target_features"],
                        batch["target_index"], batch["target_camids"], agents, batch["epoch"])
        for key in ("al", "rj", "cml", "mdl", "loss"):
            assert float(out[key]) == pytest.approx(want[key], rel=1e-4, abs=1e-5), (step, key)
        assert float(m.cml_momentum) == pytest.approx(14 / 10000)
        torch.testing.assert_close(m.center_mean.double(), ref.cm, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(m.center_std.double(), ref.cs, atol=1e-4, rtol=1e-5)
        assert float(m.threshold) == pytest.approx(ref.threshold, abs=1e-6)
        assert float(out["threshold"]) == float(m.threshold)
        assert m.visited.tolist() == ref.visited
        vis = m.visited
        torch.testing.assert_close(m.memory[vis].double(), ref.memory[vis], atol=1e-6, rtol=0)
        if step == 0:  # warm-up: memory and threshold frozen, L_MDL off
            assert float(out["mdl"]) == 0.0 and not m.visited.any()
            assert float(m.threshold) == prev_threshold


def test_marloss_gradients_and_blind_mined_pairs():
    """The loss never sees identities: it returns the mined pairs as dataset indices, and the
    trainer's diagnostic turns them into a precision with the hidden labels."""
    import inspect

    from workbench.methods import mined_pair_precision

    assert "pid" not in " ".join(inspect.signature(MARLoss.forward).parameters)
    feats, agents, cams = _setup()
    m = MARLoss(N, NP, mining_ratio=0.1)
    m.initialize(feats, agents, cams)
    batch = _batches(feats, cams)[1]
    ft = batch["target_features"].requires_grad_(True)
    a = agents.clone().requires_grad_(True)
    out = m(**batch, agents=a)
    out["loss"].backward()
    assert ft.grad.abs().sum() > 0 and a.grad.abs().sum() > 0
    n_pos = int(out["n_pos"])
    pairs, positive = out["mined_pairs"], out["mined_positive"]
    assert pairs.shape == (2, 2) and positive.shape == (2,) and int(positive.sum()) == n_pos
    assert n_pos + int(out["n_neg"]) == 2
    assert set(pairs.flatten().tolist()) <= set(batch["target_index"].tolist())  # dataset indices
    # hand case of the diagnostic: pairs (0, 1) same person, (2, 3) not; both called positive
    pids = torch.tensor([7, 7, 8, 9])
    got = mined_pair_precision(torch.tensor([[0, 1], [2, 3]]), torch.tensor([True, True]), pids)
    assert float(got) == 0.5
    got = mined_pair_precision(torch.tensor([[0, 1], [2, 3]]), torch.tensor([True, False]), pids)
    assert float(got) == 1.0
    assert math.isnan(float(mined_pair_precision(torch.tensor([[0, 1]]), torch.tensor([False]), pids)))

    # without L_AL no gradient reaches the agents
    m2 = MARLoss(N, NP, mining_ratio=0.1, use_al=False)
    m2.initialize(feats, agents, cams)
    a2 = agents.clone().requires_grad_(True)
    ft2 = batch["target_features"].detach().requires_grad_(True)
    m2(**{**batch, "target_features": ft2}, agents=a2)["loss"].backward()
    assert ft2.grad.abs().sum() > 0
    assert a2.grad is None or torch.equal(a2.grad, torch.zeros_like(a2))


def test_marloss_state_dict_round_trip():
    feats, agents, cams = _setup()
    batches = _batches(feats, cams)
    a = MARLoss(N, NP, mining_ratio=0.1)
    a.initialize(feats, agents, cams)
    for batch in batches[:2]:
        a(**batch, agents=agents)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert {"memory", "visited", "center_mean", "center_std", "threshold", "initialized",
            "cml_momentum"} <= set(state)
    b = MARLoss(N, NP, mining_ratio=0.1)
    b.load_state_dict(state)
    for batch in batches[2:]:
        out_a, out_b = a(**batch, agents=agents), b(**batch, agents=agents)
        for key in ("loss", "mdl", "cml", "threshold"):
            assert torch.equal(out_a[key], out_b[key])
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


@pytest.mark.parametrize("flags", [dict(use_cml=False), dict(use_mdl=False), dict(use_al=False),
                                   dict(use_rj=False), dict(use_al=False, use_rj=False),
                                   dict(use_cml=False, use_al=False, use_rj=False)])
def test_marloss_ablation_switches(flags):
    feats, agents, cams = _setup()
    m = MARLoss(N, NP, mining_ratio=0.1, **flags)
    m.initialize(feats, agents, cams)
    centres = (m.center_mean.clone(), m.center_std.clone())
    threshold, memory = m.threshold.clone(), m.memory.clone()
    batch = _batches(feats, cams)[1]
    out = m(**batch, agents=agents)
    for name in ("mdl", "cml", "al", "rj"):
        if not flags.get(f"use_{name}", True):
            assert float(out[name]) == 0.0
        else:
            assert float(out[name]) != 0.0
    want = out["mdl"] + 2e-4 * out["cml"] + 50.0 * (out["al"] + 0.2 * out["rj"])
    assert float(out["loss"]) == pytest.approx(float(want), rel=1e-6)
    if not flags.get("use_cml", True):
        assert torch.equal(m.center_mean, centres[0]) and torch.equal(m.center_std, centres[1])
    else:
        assert not torch.equal(m.center_mean, centres[0])
    if not flags.get("use_mdl", True):
        assert torch.equal(m.threshold, threshold) and torch.equal(m.memory, memory)
    out["loss"].backward() if out["loss"].requires_grad else None


def test_marloss_degenerate_batch_and_bf16_autocast():
    feats, agents, cams = _setup()
    m = MARLoss(N, NP)  # ratio 0.005 with 4 images: k = 0
    m.initialize(feats, agents, cams)
    lin = torch.nn.Linear(D, D)
    idx = torch.tensor([3, 7, 9, 11])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ft = lin(feats[idx])
        fr = lin(torch.randn(3, D))
        assert ft.dtype == torch.bfloat16
        out = m(reference_features=fr, reference_labels=torch.tensor([0, 1, 2]), target_features=ft,
                target_index=idx, target_camids=torch.tensor([0, 1, 2, 2]), agents=agents, epoch=3)
    assert out["loss"].dtype == torch.float32
    for key in ("loss", "al", "rj", "mdl", "cml", "threshold"):
        assert torch.isfinite(out[key]), key
    assert float(out["mdl"]) == pytest.approx(math.log(1.5), abs=1e-6)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in lin.parameters())
    # every camera with a single image: L_CML is 0, centres stay put
    centres = m.center_mean.clone()
    out = m(reference_features=fr.float().detach(), reference_labels=torch.tensor([0, 1, 2]),
            target_features=feats[idx], target_index=idx, target_camids=torch.tensor([0, 1, 2, 3]),
            agents=agents, epoch=3)
    assert float(out["cml"]) == 0.0 and torch.equal(m.center_mean, centres)


def test_marloss_requires_initialize():
    feats, agents, cams = _setup()
    m = MARLoss(N, NP)
    with pytest.raises(RuntimeError, match="initialize"):
        m(**_batches(feats, cams)[0], agents=agents)


# ------------------------------------------------------------------------------------------------
# DDP: two gloo ranks keep identical state, equal to a single-process update on the whole batch
# ------------------------------------------------------------------------------------------------

_DDP_RATIO = 0.1


def _ddp_batches(feats, cams):
    """Two global steps of 16 target images; rank r takes half r. Step 2 revisits indices."""
    g = torch.Generator().manual_seed(5)
    steps = []
    for idx in (torch.arange(0, 16), torch.tensor([0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 20, 21, 22, 23, 24, 25])):
        steps.append(dict(target_index=idx, target_features=feats[idx] + 0.3 * torch.randn(16, D, generator=g),
                          target_camids=cams[idx], reference_features=torch.randn(12, D, generator=g),
                          reference_labels=torch.randint(0, NP, (12,), generator=g), epoch=1))
    return steps


def _half(batch, rank):
    out = {}
    for k, v in batch.items():
        if k == "epoch":
            out[k] = v
        elif k.startswith("reference"):
            out[k] = v[6 * rank: 6 * rank + 6]
        else:
            out[k] = v[8 * rank: 8 * rank + 8]
    return out


def _ddp_worker(rank: int, world: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        feats, agents, cams = _setup()
        m = MARLoss(N, NP, mining_ratio=_DDP_RATIO)
        m.initialize(feats, agents, cams)
        terms = []
        for batch in _ddp_batches(feats, cams):
            local = _half(batch, rank)
            local["target_features"].requires_grad_(True)
            out = m(**local, agents=agents)
            out["loss"].backward()
            terms.append(torch.stack([out["mdl"], out["cml"], out["n_pos"].float(), out["n_neg"].float()]))
        state = {k: v.clone() for k, v in m.state_dict().items()} | {"terms": torch.stack(terms)}
        torch.save(state, os.path.join(outdir, f"rank{rank}.pt"))
        # both ranks done before either tears gloo down: a rank that destroys the group while its peer is
        # still inside a collective aborts the peer ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_state_is_identical_and_matches_single_process():
    world = 2
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_ddp_worker, args=(world, _free_port(), outdir), nprocs=world, join=True)
        states = [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(world)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key

    # single process on the concatenated (global) batch: same target-side terms, same state
    feats, agents, cams = _setup()
    ref = MARLoss(N, NP, mining_ratio=_DDP_RATIO)
    ref.initialize(feats, agents, cams)
    terms = []
    for batch in _ddp_batches(feats, cams):
        out = ref(**batch, agents=agents)
        terms.append(torch.stack([out["mdl"], out["cml"], out["n_pos"].float(), out["n_neg"].float()]))
    torch.testing.assert_close(states[0].pop("terms"), torch.stack(terms), atol=1e-5, rtol=1e-5)
    states[1].pop("terms")
    assert float(ref.cml_momentum) == pytest.approx(28 / 10000)  # (16 target + 12 reference) / 10000
    for key, value in ref.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(states[0][key], value, atol=1e-6, rtol=1e-5, msg=key)
        else:
            assert torch.equal(states[0][key], value), key


def test_update_centers_before_the_momentum_is_known_is_refused():
    """An unset momentum (-1) would move the centres away from the batch: c <- 2c - new."""
    feats, agents, cams = _setup()
    m = MARLoss(N, NP)  # cml_momentum=None: fixed by the first forward
    m.initialize(feats, agents, cams)
    centre = m.center_mean.clone()
    with pytest.raises(RuntimeError, match="momentum is not set"):
        m.update_centers(log_soft_multilabel(feats[:6], agents), cams[:6])
    assert torch.equal(m.center_mean, centre)
    m.cml_momentum.fill_(0.5)
    m.update_centers(log_soft_multilabel(feats[:6], agents), cams[:6])
    assert not torch.equal(m.center_mean, centre)
