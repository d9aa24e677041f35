"""The clustering baseline (method="cluster_contrast"): known clusters, the memory, the loss, the sampler,
the diagnostics, and a stage-2 run end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.clustering import ClusterMemory, cluster_centroids, cluster_pseudo_labels, cluster_quality
from workbench.config import from_params
from workbench.data import PseudoIdentitySampler
from workbench.errors import ConfigError


def _groups(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Three tight groups of 6 unit vectors and one far point."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(16)[:4] * 4
    f = torch.cat([centres[i] + 0.2 * torch.randn(6, 16, generator=g) for i in range(3)] + [centres[3:4]])
    return F.normalize(f, dim=1), np.array([0] * 6 + [1] * 6 + [2] * 6 + [3])


def test_dbscan_on_the_jaccard_distance_finds_the_known_groups_and_leaves_a_lone_point_out() -> None:
    f, truth = _groups()
    labels = cluster_pseudo_labels(f, eps=0.6, min_samples=3, k1=5, k2=2)
    assert labels[-1] == -1  # the lone point is an outlier
    clusters = [set(np.flatnonzero(labels == c)) for c in range(labels.max() + 1)]
    assert sorted(map(sorted, clusters)) == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18))]


def test_cluster_quality_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, -1])
    pids = np.array([5, 5, 7, 7, 7, 9])
    q = cluster_quality(labels, pids)
    assert q["n_clusters"] == 2 and q["n_outliers"] == 1
    assert q["purity"] == pytest.approx(4 / 5)  # cluster 0: two of 5, cluster 1: both 7
    # same-cluster pairs: 3 + 1 = 4, of which one person: (0,1) and (3,4) -> 2
    assert q["pair_precision"] == pytest.approx(2 / 4)
    # same-person pairs: pid 5: 1, pid 7: 3, pid 9: 0 -> 4; put together: (0,1), (3,4) -> 2
    assert q["pair_recall"] == pytest.approx(2 / 4)
    assert 0 < q["nmi"] < 1
    assert math.isnan(cluster_quality(np.array([-1, -1]), np.array([1, 2]))["purity"])


def test_centroids_are_normalized_means_without_outliers() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    c = cluster_centroids(f, np.array([0, 0, 1, -1]))
    assert torch.allclose(c, torch.tensor([[2 ** -0.5, 2 ** -0.5], [1.0, 0.0]]))


def test_memory_loss_and_update_against_a_hand_computation() -> None:
    memory = ClusterMemory(2, temperature=0.5, momentum=0.2)
    memory.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    out = memory(f, torch.tensor([1, 0, -1]))
    # clustered: (0.6, 0.8) with label 1 and (1, 0) with label 0; logits = f . m^T / 0.5
    l0 = torch.tensor([0.6, 0.8]) / 0.5
    l1 = torch.tensor([1.0, 0.0]) / 0.5
    hand = (-(l0[1] - torch.logsumexp(l0, 0)) - (l1[0] - torch.logsumexp(l1, 0))) / 2
    assert float(out["loss"].detach()) == pytest.approx(float(hand), rel=1e-6) and int(out["n"]) == 2
    out["loss"].backward()  # the memory update after the loss does not break its gradient
    assert f.grad is not None and torch.all(f.grad[2] == 0)
    # rows move towards their images with momentum 0.2 and are renormalized; the outlier moves nothing
    row1 = F.normalize(0.2 * torch.tensor([0.0, 1.0]) + 0.8 * torch.tensor([0.6, 0.8]), dim=0)
    assert torch.allclose(memory.memory[1], row1) and torch.allclose(memory.memory[0], torch.tensor([1.0, 0.0]))


def test_pseudo_identity_sampler_draws_p_labels_times_k_images_and_never_an_outlier() -> None:
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, -1, -1, 3]
    sampler = PseudoIdentitySampler(labels, batch_size=4, instances=2, num_batches=5, seed=3)
    items = list(sampler)
    assert len(items) == len(sampler) == 20
    for b in range(5):
        batch = [labels[i] for i, _ in items[4 * b:4 * b + 4]]
        assert -1 not in batch and batch[0] == batch[1] and batch[2] == batch[3] and batch[0] != batch[2]
    assert items == list(PseudoIdentitySampler(labels, batch_size=4, instances=2, num_batches=5, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != items
    with pytest.raises(ConfigError, match="multiple of 3"):
        PseudoIdentitySampler(labels, batch_size=4, instances=3, num_batches=1)
    with pytest.raises(ConfigError, match="every image is an outlier"):
        PseudoIdentitySampler([-1, -1], batch_size=2, instances=2, num_batches=1)


def test_method_is_a_config_field_checked_when_the_config_is_made() -> None:
    cfg = from_params({"preset": "smoke", "method": "cluster_contrast", "cc_eps": 0.5})
    assert (cfg.train.method, cfg.settings.cc_eps) == ("cluster_contrast", 0.5)
    with pytest.raises(ConfigError, match="method = 'kmeans'"):
        from_params({"preset": "smoke", "method": "kmeans"})
    with pytest.raises(ConfigError, match="multiple of cc_instances"):
        from_params({"preset": "smoke", "method": "cluster_contrast", "cc_instances": 5})
    with pytest.raises(ConfigError, match="optimizer = 'rmsprop'"):
        from_params({"preset": "smoke", "optimizer": "rmsprop"})


def test_adam_is_the_recipe_optimizer_and_keeps_the_decay_groups() -> None:
    from workbench.builders import build_model, build_optimizer

    net = build_model(from_params({"preset": "smoke"}).model, num_agents=4, pretrained=False)
    net.agents.requires_grad_(False)
    adam = build_optimizer(net, 3.5e-4, 5e-4, momentum=0.9, kind="adam")
    sgd = build_optimizer(net, 3.5e-4, 5e-4, momentum=0.9)
    assert isinstance(adam, torch.optim.Adam) and isinstance(sgd, torch.optim.SGD)
    # the same groups (decay on weights, none on BatchNorm and biases), frozen agents left out of both
    assert [g["weight_decay"] for g in adam.param_groups] == [g["weight_decay"] for g in sgd.param_groups]
    assert [len(g["params"]) for g in adam.param_groups] == [len(g["params"]) for g in sgd.param_groups]
    assert not any(p is net.agents for g in adam.param_groups for p in g["params"])


def test_cluster_contrast_stage2_runs_logs_its_clusters_and_resumes(tmp_path, monkeypatch) -> None:
    from workbench.engine import pretrain, train_mar
    from workbench.runs import RunFolder

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    base = {"preset": "smoke", "tensorboard": False}
    stage1 = pretrain(from_params(base), tmp_path / "s1")
    cfg = from_params(base | {"method": "cluster_contrast", "epochs": 2, "cc_min_samples": 2, "cc_eps": 0.7})
    result = train_mar(cfg, tmp_path / "cc", init_checkpoint=stage1.checkpoint)
    history = result.history
    assert len(history) == 2 and all(row["n_clusters"] >= 1 for row in history)
    assert all(0 <= row["purity"] <= 1 and math.isfinite(row["cc"]) for row in history)
    assert result.metrics["initial"]["mAP"] > 0 and "mAP" in result.metrics
    assert RunFolder(result.run_dir).config().train.method == "cluster_contrast"
    assert RunFolder(result.run_dir).record().start_checkpoint == str(stage1.checkpoint)
    # stopped after epoch 1 and resumed: it reclusters from the checkpoint and ends where the other did
    from workbench.engine import run_stage
    from workbench.runs import load_checkpoint

    class Stop(Exception):
        pass

    def stop_after_first(trainer, epoch, row):
        if epoch == 0:
            raise Stop

    with pytest.raises(Stop):
        train_mar(cfg, tmp_path / "stopped", init_checkpoint=stage1.checkpoint, callbacks=[stop_after_first])
    resumed = run_stage("mar", cfg, tmp_path / "stopped", resume=True)
    assert [r["n_clusters"] for r in resumed.history] == [r["n_clusters"] for r in history]
    got, want = load_checkpoint(resumed.checkpoint)["model"], load_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_hybrid_distance_mixes_jaccard_and_soft_multilabel_disagreement() -> None:
    from workbench.clustering import cluster_distance
    from workbench.evaluation import jaccard_distance

    f, _ = _groups()
    y = torch.softmax(torch.randn(len(f), 7, generator=torch.Generator().manual_seed(1)), dim=1)
    jac = jaccard_distance(f, 5, 2)
    disagreement = 0.5 * torch.cdist(y, y, p=1).numpy()  # 1 - A(y_i, y_j)
    np.testing.assert_allclose(cluster_distance(f, k1=5, k2=2), jac)
    np.testing.assert_allclose(cluster_distance(f, k1=5, k2=2, multilabels=y, label_weight=0.25),
                               0.75 * jac + 0.25 * disagreement, atol=1e-6)
    with pytest.raises(ValueError, match="needs the soft multilabels"):
        cluster_distance(f, label_weight=0.5)


def test_the_hybrid_is_a_method_of_stage2(tmp_path, monkeypatch) -> None:
    from workbench.engine import pretrain, train_mar
    from workbench.runs import RunFolder

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    base = {"preset": "smoke", "tensorboard": False}
    stage1 = pretrain(from_params(base), tmp_path / "s1")
    cfg = from_params(base | {"method": "soft_cluster", "cc_label_weight": 0.5, "epochs": 1, "cc_min_samples": 2,
                              "cc_eps": 0.7, "optimizer": "adam", "lr": 3.5e-4, "weight_decay": 5e-4})
    result = train_mar(cfg, tmp_path / "hybrid", init_checkpoint=stage1.checkpoint)
    assert result.history[0]["n_clusters"] >= 1 and "mAP" in result.metrics
    saved = RunFolder(result.run_dir).config()
    assert saved.settings.cc_label_weight == 0.5 and saved.train.optimizer == "adam"
    from workbench.runs import load_checkpoint

    state = load_checkpoint(result.checkpoint)["optimizer"]["state"]  # Adam's moments, not SGD's momentum
    assert state and all("exp_avg" in s and "momentum_buffer" not in s for s in state.values())


@pytest.mark.parametrize("method", ["cluster_contrast", "soft_cluster"])
def test_the_clustering_methods_run_from_the_command_line(method: str, tmp_path, monkeypatch, capsys) -> None:
    from workbench.cli import main
    from workbench.runs import RunFolder

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    threads = torch.get_num_threads()
    try:
        assert main(["pretrain", "--preset", "smoke", "--run-dir", str(tmp_path / "s1"), "--no-tensorboard",
                     "--set", "pretrain_epochs=1"]) == 0
        assert main(["train", "--preset", "smoke", "--init", str(tmp_path / "s1" / "checkpoint.pt"), "--epochs", "1",
                     "--run-dir", str(tmp_path / method), "--no-tensorboard", "--set", f"method={method}",
                     "--set", "cc_min_samples=2", "--set", "cc_eps=0.7", "--set", "optimizer=adam",
                     "--set", "lr=3.5e-4"]) == 0
    finally:
        torch.set_num_threads(threads)
    run = RunFolder(tmp_path / method)
    assert run.config().train.method == method and run.config().train.optimizer == "adam"
    assert run.history()[0]["n_clusters"] >= 1 and "mAP" in run.metrics()


def _hybrid_problem(seed: int, n: int = 160, num_agents: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered unit features (16 identities) with a few exact duplicates, and their soft multilabels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (n,), generator=g)
    f = torch.randn(16, 24, generator=g)[ids] + 0.7 * torch.randn(n, 24, generator=g)
    f[n - 6:] = f[:6]  # duplicates: Jaccard distance 0 and agreement 1, an explicit 0 in the sparse matrix
    f = F.normalize(f, dim=1)
    agents = F.normalize(torch.randn(num_agents, 24, generator=g), dim=1)
    return f, torch.softmax(30.0 * f @ agents.t(), dim=1)


@pytest.mark.parametrize("seed,eps,label_weight,min_samples,k1,k2", [
    (0, 0.5, 0.25, 2, 10, 3),  # Table 4's setting
    (1, 0.5, 0.25, 4, 10, 3),
    (2, 0.3, 0.25, 2, 10, 3),
    (3, 0.6, 0.0, 4, 30, 6),  # Cluster-Contrast's: no multilabels
    (4, 0.2, 0.0, 2, 5, 1),
    (5, 0.45, 0.5, 3, 8, 2),
    (6, 0.7499, 0.25, 2, 10, 3),  # just below 1 − w
    (7, 0.75, 0.25, 2, 10, 3),  # eps >= 1 − w: the dense distance
    (8, 0.78, 0.25, 3, 10, 3),  # pairs with no shared neighbour within eps
])
def test_the_sparse_neighbourhoods_give_the_labels_of_dbscan_on_the_dense_distance(
        seed, eps, label_weight, min_samples, k1, k2, monkeypatch) -> None:
    from sklearn.cluster import DBSCAN

    from workbench import clustering
    from workbench.clustering import cluster_distance, sparse_cluster_distance

    f, y = _hybrid_problem(seed)
    kw = dict(k1=k1, k2=k2, multilabels=y if label_weight else None, label_weight=label_weight)
    dense = cluster_distance(f, **kw)
    # the computation before the sparse path: DBSCAN on the whole (N, N) matrix
    old = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(dense)
    assert len(set(old.tolist())) > 2  # several clusters (and outliers where eps is small) at stake
    if eps < 1 - label_weight:
        near = sparse_cluster_distance(f, max_distance=eps, **kw)
        within = dense <= eps
        assert near.nnz == int(within.sum()) and np.array_equal(near.toarray() != 0, within & (dense != 0))
        np.testing.assert_array_equal(near.toarray()[within], dense[within])  # the same float32 values
        assert near.nnz > np.count_nonzero(near.data)  # explicit zeros kept: the diagonal and the duplicates
        monkeypatch.setattr(clustering, "cluster_distance", lambda *a, **k: pytest.fail("dense path taken"))
    else:
        with pytest.raises(ValueError, match="below 1 - label_weight"):
            sparse_cluster_distance(f, max_distance=eps, **kw)
    new = cluster_pseudo_labels(f, eps=eps, min_samples=min_samples, **kw)
    np.testing.assert_array_equal(new, old)  # the same labels, numbered alike


def test_the_duplicates_explicit_zero_distance_makes_them_neighbours() -> None:
    from workbench.clustering import sparse_cluster_distance

    f, y = _hybrid_problem(0)
    near = sparse_cluster_distance(f, max_distance=0.5, k1=10, k2=3, multilabels=y, label_weight=0.25)
    n = len(f)
    pairs = [(i, n - 6 + i) for i in range(6)]
    stored = [near.indices[near.indptr[i]:near.indptr[i + 1]] for i in range(n)]
    assert all(j in stored[i] and i in stored[j] for i, j in pairs)
    assert any(near[i, j] == 0 for i, j in pairs)  # an explicit 0 off the diagonal: a neighbour all the same
    labels = cluster_pseudo_labels(f, eps=0.5, min_samples=2, k1=10, k2=3, multilabels=y, label_weight=0.25)
    assert all(labels[i] == labels[j] != -1 for i, j in pairs)
