"""Cross-camera supervision: what every method logs about the cameras of its positive pairs, and the
camera-aware options (camera-normalized features, cross-camera mining for MAR, camera-aware proxies)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.clustering import camera_ratios, cluster_camera_counts
from workbench.evaluation.names import CAMERA_COLUMNS
from workbench.config import from_params
from workbench.losses import MARLoss, agreement, camera_normalized, discriminative_loss
from workbench.methods.cap import CameraProxyMemory
from workbench.methods.mar import mined_camera_counts

BASE = {"preset": "smoke", "tensorboard": False}


def test_cluster_camera_counts_by_hand() -> None:
    # identities 0 (cams 0, 0, 1) and 1 (cams 0, 1); clusters: {0a, 0b} same camera, {0c, 1a} wrong, 1b outlier
    pids, cams = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 0, 1])
    labels = np.array([0, 0, 1, 1, -1])
    c = cluster_camera_counts(labels, pids, cams)
    # positives: (0a,0b) same cam true, (0c,1a) cross cam false; same-identity pairs: 0a-0b same cam,
    # 0a-0c, 0b-0c, 1a-1b cross cam
    assert c == {"pos": 2.0, "pos_cross": 1.0, "true_cross": 0.0, "true_same": 1.0, "pairs_same": 1.0, "pairs_cross": 3.0}
    r = camera_ratios(c)
    assert r == {"cross_share": 0.5, "cross_precision": 0.0, "recall_same_cam": 1.0, "recall_cross_cam": 0.0}
    assert set(r) == set(CAMERA_COLUMNS)
    assert math.isnan(camera_ratios(cluster_camera_counts(np.full(5, -1), pids, cams))["cross_share"])


def test_mined_camera_counts_by_hand() -> None:
    pids, cams = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 0, 1])
    pairs = torch.tensor([[0, 1], [0, 2], [2, 3], [3, 4]])
    positive = torch.tensor([True, True, True, False])  # 0-1 same cam true, 0-2 cross true, 2-3 cross false
    got = {k: float(v) for k, v in mined_camera_counts(pairs, positive, torch.arange(5), pids, cams).items()}
    assert got == {"pos": 3.0, "pos_cross": 2.0, "true_cross": 1.0, "true_same": 1.0, "pairs_same": 1.0,
                   "pairs_cross": 3.0}


def test_camera_normalized_removes_each_cameras_mean() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(12, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0])
    cams = torch.tensor([0, 1, 2] * 4)
    f[cams == 1] += 5.0  # camera 1 is far from the others
    out = camera_normalized(f, cams)
    assert torch.allclose(out.norm(dim=1), torch.ones(12), atol=1e-6)
    centred = f - torch.stack([f[cams == c].mean(0) for c in cams.tolist()])
    assert torch.allclose(out, torch.nn.functional.normalize(centred, dim=1), atol=1e-6)


def _batch(b: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, 8, generator=g)
    ml = torch.softmax(3 * torch.randn(b, 6, generator=g), dim=1)
    cams = torch.tensor([0, 1] * (b // 2))
    return feats, ml, cams


def test_cross_camera_mining_mines_only_pairs_of_two_cameras_and_ranks_t_among_them() -> None:
    feats, ml, cams = _batch()
    base = discriminative_loss(feats, ml, 0.3, 0.1)
    assert base[0].item() == pytest.approx(discriminative_loss(feats, ml, 0.3, 0.1, camids=cams)[0].item())
    loss, top, stats = discriminative_loss(feats, ml, 0.3, 0.1, camids=cams, cross_camera=True)
    i, j = stats["pairs"][:, 0], stats["pairs"][:, 1]
    assert len(i) == int(16 * 15 / 2 * 0.1) and bool((cams[i] != cams[j]).all())
    iu = torch.triu_indices(16, 16, 1)
    agree = agreement(ml, ml)[iu[0], iu[1]]
    cross = cams[iu[0]] != cams[iu[1]]
    assert float(top) == pytest.approx(float(torch.topk(agree[cross], len(i)).values[-1]))
    with pytest.raises(ValueError, match="need the batch's camids"):
        discriminative_loss(feats, ml, 0.3, 0.1, cross_camera=True)


def test_camera_norm_changes_what_is_mined_not_the_loss_features() -> None:
    feats, ml, cams = _batch(seed=3)
    feats[cams == 1] += 2.0  # the camera offset dominates the distances
    _, _, plain = discriminative_loss(feats, ml, 0.3, 0.1, camids=cams)
    _, _, normed = discriminative_loss(feats, ml, 0.3, 0.1, camids=cams, camera_norm=True)
    p = plain["pairs"]
    assert bool((cams[p[:, 0]] == cams[p[:, 1]]).all())  # without it, only same-camera pairs are close
    q = normed["pairs"]
    assert bool((cams[q[:, 0]] != cams[q[:, 1]]).any())


def test_mar_loss_initializes_t_over_cross_camera_pairs_when_asked() -> None:
    feats, _, cams = _batch(20, seed=5)
    agents = torch.randn(6, 8)
    official, cross = MARLoss(20, 6, mining_ratio=0.05), MARLoss(20, 6, mining_ratio=0.05, mdl_cross_camera=True)
    official.initialize(feats, agents, cams)
    info = cross.initialize(feats, agents, cams)
    assert info["num_pairs"] == 100 and info["k"] == 5  # 10 x 10 pairs of two cameras, 5 % of them
    ml = official.memory
    iu = torch.triu_indices(20, 20, 1)
    agree = agreement(ml, ml)[iu[0], iu[1]]
    assert float(cross.threshold) == pytest.approx(float(torch.topk(agree[cams[iu[0]] != cams[iu[1]]], 5).values[-1]))


def test_camera_proxy_memory_by_hand() -> None:
    # two clusters; cluster 0 seen by cameras 0 and 1, cluster 1 by camera 0: three proxies
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=1)
    labels, cams = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 0])
    memory = CameraProxyMemory(3, temperature=1.0, momentum=0.0, inter_weight=0.5, negatives=5)
    proxy = memory.reset_proxies(f, labels, cams)
    assert proxy.tolist() == [0, 0, 1, 2] and memory.proxy_cluster.tolist() == [0, 0, 1]
    assert memory.proxy_camera.tolist() == [0, 1, 0]
    m = memory.memory.clone()
    out = memory(f[2:3], proxy[2:3])  # image 2: camera 1, cluster 0, proxy 1
    logits = f[2] @ m.t()
    intra = -torch.log_softmax(logits[[1]], 0)[0]  # its camera has one proxy: its own
    inter = torch.logsumexp(logits, 0) - logits[[0, 1]].mean()  # positives: proxies 0 and 1; negative: 2
    assert float(out["intra"]) == pytest.approx(float(intra), abs=1e-6)
    assert float(out["inter"]) == pytest.approx(float(inter), abs=1e-6)
    assert float(out["loss"]) == pytest.approx(float(intra + 0.5 * inter), abs=1e-6)
    assert torch.allclose(memory.memory[1], f[2])  # momentum 0: the proxy moved onto its image


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from workbench.engine import pretrain

    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_DATA", str(data))
        checkpoint = pretrain(from_params(BASE), tmp_path_factory.mktemp("s1") / "pretrain").checkpoint
    return checkpoint, data


@pytest.mark.parametrize("method, settings", [
    ("mar", {"mdl_cross_camera": True, "camera_norm": True}),
    ("cluster_contrast", {"camera_norm": True, "cc_min_samples": 2, "cc_eps": 0.7}),
    ("cap", {"cc_min_samples": 2, "cc_eps": 0.7}),
])
def test_every_method_logs_the_cameras_of_its_supervision(method, settings, smoke, monkeypatch, tmp_path) -> None:
    from workbench.engine import train_mar

    checkpoint, data = smoke
    monkeypatch.setenv("WORKBENCH_DATA", str(data))
    epochs = 2 if method == "mar" else 1  # MAR's first epoch is L_MDL's warm-up
    cfg = from_params(BASE | {"method": method, "epochs": epochs} | settings)
    result = train_mar(cfg, tmp_path / method, init_checkpoint=checkpoint)
    last = result.history[-1]
    assert set(CAMERA_COLUMNS) <= set(last), sorted(last)
    assert 0.0 <= last["recall_same_cam"] <= 1.0 or math.isnan(last["recall_same_cam"])
    if method == "mar":
        assert last["cross_share"] == 1.0 or math.isnan(last["cross_share"])  # it mines across cameras only
    if method == "cap":
        assert "intra" in last and "inter" in last and math.isfinite(last["loss"])
