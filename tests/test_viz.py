"""Plots, cached views and explorers on the synthetic smoke data with tiny random-init networks."""
from __future__ import annotations

import sys
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from workbench.config import get_preset
from workbench.data import Sample
from workbench.builders import build_model, load_domains
from workbench.runs import save_checkpoint, write_csv, write_json
from workbench.analysis import compute_views, embed_2d, init_checkpoint_of, load_views, pair_agreements, rank_gallery
from workbench.viz import (
    CameraExplorer,
    ImageExplorer,
    RunExplorer,
    ThresholdExplorer,
    explore,
    plot_agreement_distribution,
    plot_camera_heatmap,
    plot_cmc,
    plot_embedding,
    plot_retrieval,
    plot_soft_label,
    plot_training_curves,
)
from workbench.viz.plots import MATCH, MISMATCH

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Smoke data under a temporary WORKBENCH_DATA, two random-init networks and their views."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_DATA", str(tmp_path_factory.mktemp("data")))
        cfg = get_preset("smoke")
        target, reference = load_domains(cfg.data)
        num_agents = len({s.pid for s in reference})
        nets, views = [], {}
        for seed, name in ((0, "before"), (1, "after")):
            torch.manual_seed(seed)
            net = build_model(cfg.model, num_agents, pretrained=False).eval()
            nets.append(net)
            views[name] = compute_views(net, target, reference, image_size=cfg.data.image_size, name=name)
        yield {"cfg": cfg, "target": target, "reference": reference, "nets": nets, "views": views}


@pytest.fixture(scope="module")
def views(setup):
    return setup["views"]


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------- views


def test_views_hold_features_multilabels_and_distances(setup, views) -> None:
    v, target = views["after"], setup["target"]
    np_ = v.num_agents
    for part in ("train", "query", "gallery"):
        n = len(getattr(target, part))
        assert v.features[part].shape[0] == n and v.multilabels[part].shape == (n, np_)
        np.testing.assert_allclose(v.multilabels[part].sum(1), 1.0, atol=1e-5)
        assert (np.linalg.norm(v.features[part], axis=1) <= 1.0 + 1e-4).all()  # x / (|x| + eps)
    assert v.distmat.shape == (len(target.query), len(target.gallery))
    assert v.distmat.min() >= 0.0 and v.distmat.max() <= 2.0 + 1e-5
    assert len(v.agent_images) == np_ and all(Path(p).is_file() for p in v.agent_images)
    first = {}
    for s in setup["reference"]:
        first.setdefault(s.pid, s.path)
    assert v.agent_images == [first[i] for i in range(np_)]  # one image of the agent's own person
    assert 0.0 <= v.metrics["rank1"] <= 1.0 and len(v.metrics["cmc"]) >= 1
    assert not np.allclose(views["before"].multilabels["train"], v.multilabels["train"])


def test_load_views_reads_a_run_folder(setup, tmp_path) -> None:
    cfg, net = setup["cfg"], setup["nets"][1]
    write_json(tmp_path / "config.json", cfg.to_dict())
    save_checkpoint(tmp_path / "checkpoint.pt", {
        "model": net.state_dict(), "num_agents": net.num_agents,
        "model_config": {**asdict(cfg.model), "stages": list(cfg.model.stages)}})
    loaded = load_views(tmp_path, name="loaded")
    assert loaded.name == "loaded" and init_checkpoint_of(tmp_path) is None
    np.testing.assert_allclose(loaded.multilabels["query"], setup["views"]["after"].multilabels["query"], atol=1e-5)
    np.testing.assert_allclose(loaded.distmat, setup["views"]["after"].distmat, atol=1e-5)
    # a stage-2 checkpoint records the stage-1 checkpoint it started from
    stage1 = tmp_path / "stage1.pt"
    save_checkpoint(stage1, {"model": setup["nets"][0].state_dict(), "num_agents": net.num_agents,
                             "model_config": {**asdict(cfg.model), "stages": list(cfg.model.stages)}})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True) | {"init_checkpoint": str(stage1)}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert init_checkpoint_of(tmp_path) == stage1
    # `diagnose`: L_MDL's positives by camera, stage 1 and stage 2, at the run's first and last T
    from workbench.cli import main
    from workbench.analysis.views import mining_by_camera

    write_json(tmp_path / "metrics.json", {"init_threshold": 0.9})
    (tmp_path / "history.csv").write_text("epoch,threshold\n1,0.9\n2,0.5\n")
    assert main(["diagnose", str(tmp_path), "--csv", str(tmp_path / "camera.csv"), "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "camera.csv")
    assert len(table) == 2 * 2 * 3 and set(table["model"]) == {"stage 1", "stage 2"}
    n = len(setup["target"].train)
    assert (table[table["pairs of"] == "all"]["pairs"] == n * (n - 1) // 2).all()
    v = setup["views"]["after"]
    expected = mining_by_camera(v.multilabels["train"], v.pids("train"), v.camids("train"), 0.5)
    row = table[(table.model == "stage 2") & (table.threshold == 0.5) & (table["pairs of"] == "cross camera")]
    assert int(row["called positive"].iloc[0]) == expected.loc["cross camera", "called positive"]
    # `diagnose --stages`: the fused stages of both models (smoke: layer4 alone, so layer4 and fused agree)
    assert main(["diagnose", str(tmp_path), "--stages", "--csv", str(tmp_path / "stages.csv"), "--device", "cpu"]) == 0
    stages = pd.read_csv(tmp_path / "stages.csv")
    assert stages[["model", "stage"]].values.tolist() == [["stage 1", "layer4"], ["stage 1", "fused"],
                                                          ["stage 2", "layer4"], ["stage 2", "fused"]]
    assert stages["norm_share"].tolist() == pytest.approx([1.0] * 4)
    assert stages.loc[3, "mAP"] == pytest.approx(setup["views"]["after"].metrics["mAP"], abs=1e-4)


# ----------------------------------------------------------------------------- plots


def _history() -> list[dict]:
    rows = []
    for e in range(1, 5):
        rows.append({"epoch": e, "lr": 0.01, "loss": 5.0 / e, "al": 2.0 / e, "rj": 1.0, "mdl": 0.0 if e == 1 else 0.5,
                     "cml": 3.0, "threshold": 0.9 - 0.01 * e, "n_pos": 2 * e, "n_neg": 10,
                     "rank1": 0.1 * e if e % 2 == 0 else None, "mAP": 0.05 * e if e % 2 == 0 else None})
    return rows


def test_training_curves_has_one_axis_per_term(tmp_path) -> None:
    fig = plot_training_curves(pd.DataFrame(_history()), title="smoke")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["$L_{MAR}$ (total)", "$L_{AL}$", "$L_{RJ}$", "$L_{MDL}$", "$L_{CML}$", "threshold T",
                      "mined pairs", "target metrics"]  # the paper's names of the terms
    assert len(fig.axes[6].lines) == 2 and len(fig.axes[7].lines) == 2  # n_pos/n_neg, rank1/mAP
    assert len(fig.axes[7].lines[0].get_xdata()) == 2  # NaN epochs (not evaluated) dropped
    assert list(fig.axes[7].lines[0].get_ydata()) == pytest.approx([20.0, 40.0])  # percent, not fractions
    assert fig.axes[7].get_ylabel() == "%"
    for ax in fig.axes:  # whole epochs on every x axis
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    assert len(plot_training_curves(_history(), terms=["loss"]).axes) == 4
    # a run folder: history.csv, or steps.csv with x="step"
    write_csv(tmp_path / "history.csv", _history())
    write_csv(tmp_path / "steps.csv", [{"epoch": 0, "step": s, "loss": 1.0 / (s + 1), "al": 0.5} for s in range(6)])
    assert len(plot_training_curves(tmp_path, save_to=tmp_path).axes) == 8
    assert _png(tmp_path / "figures" / "training_curves.png")
    steps = plot_training_curves(tmp_path, x="step")
    assert [ax.get_title() for ax in steps.axes] == ["$L_{MAR}$ (total)", "$L_{AL}$"]
    assert list(steps.axes[0].lines[0].get_xdata()) == list(range(6))
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "missing")


def test_cmc_one_line_per_run(views, tmp_path) -> None:
    fig = plot_cmc({"before": views["before"].metrics, "after": views["after"].metrics,
                    "array": np.linspace(0.2, 1.0, 30)}, max_rank=10, save_to=tmp_path)
    (ax,) = fig.axes
    assert len(ax.lines) == 3 and all(len(line.get_xdata()) == 10 for line in ax.lines)
    assert "mAP" in ax.get_legend().get_texts()[0].get_text()
    assert _png(tmp_path / "figures" / "cmc.png")


def test_embedding_side_by_side_with_the_same_points(views, tmp_path) -> None:
    b, a = views["before"], views["after"]
    fig = plot_embedding({"before": b.features["train"], "after": a.features["train"]}, a.pids("train"),
                         camids=a.camids("train"), method="pca", max_points=40, save_to=tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["before", "after"]
    for ax in fig.axes:
        points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
        assert len(points) == 1 and len(points[0].get_offsets()) == 40
    assert _png(tmp_path / "figures" / "embedding_identity.png")
    by_cam = plot_embedding(a.features["train"], a.pids("train"), camids=a.camids("train"), color_by="camera",
                            method="pca", titles=["cameras"])
    assert [ax.get_title() for ax in by_cam.axes] == ["cameras"]
    assert len(by_cam.axes[0].get_legend().get_texts()) == len(np.unique(a.camids("train")))
    with pytest.raises(ValueError, match="camids"):
        plot_embedding(a.features["train"], a.pids("train"), color_by="camera", method="pca")


def test_embed_2d_pca_is_the_top_principal_plane() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.array([10.0, 5.0, 0.1, 0.1, 0.1, 0.1])
    coords = embed_2d(x, "pca")
    assert coords.shape == (50, 2)
    assert np.corrcoef(np.abs(coords[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()))[0, 1] > 0.99


def test_embed_2d_calls_umap_with_small_neighbourhoods(monkeypatch) -> None:
    calls = []

    class FakeUMAP:
        def __init__(self, **kw) -> None:
            calls.append(kw)

        def fit_transform(self, x):
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    np.testing.assert_allclose(embed_2d(x, "umap", seed=3), x[:, :2] * 2)
    assert calls == [{"n_neighbors": 8, "random_state": 3}]
    embed_2d(np.zeros((40, 4), np.float32), "umap")
    assert calls[-1] == {"n_neighbors": 15, "random_state": 0}


@pytest.mark.slow
def test_embed_2d_umap_small() -> None:  # the real umap-learn (its numba compilation takes ~10-20 s)
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    coords = embed_2d(x, "umap", seed=0)
    assert coords.shape == (40, 2) and np.isfinite(coords).all()


def test_soft_label_bars_and_agent_images(views, tmp_path) -> None:
    v = views["after"]
    y = v.multilabels["query"][0]
    fig = plot_soft_label(y, agent_images=v.agent_images, k=5, image=v.samples["query"][0].path, save_to=tmp_path)
    assert len(fig.axes) == 1 + 5 + 1  # bars, agents, image
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, np.sort(y)[::-1][:5], rtol=1e-6)
    assert all(ax.images for ax in fig.axes[1:])
    assert _png(tmp_path / "figures" / "soft_label.png")
    names = [f"person {i}" for i in range(v.num_agents)]
    plain = plot_soft_label(y, agent_names=names, k=3)
    assert len(plain.axes) == 1
    assert [t.get_text() for t in plain.axes[0].get_xticklabels()] == [names[i] for i in np.argsort(-y)[:3]]


def test_camera_heatmap_same_agent_columns(views, tmp_path) -> None:
    b, a = views["before"], views["after"]
    fig = plot_camera_heatmap({"before": b.multilabels["train"], "after": a.multilabels["train"]},
                              a.camids("train"), k=6, save_to=tmp_path)
    assert len(fig.axes) == 3  # two heatmaps + one colour bar
    left, right = ([t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes[1:])
    assert left == right and len(left) == 6
    assert len(fig.axes[1].get_yticklabels()) == len(np.unique(a.camids("train")))
    assert _png(tmp_path / "figures" / "camera_heatmap.png")


def test_pair_agreements_match_the_definition() -> None:
    y = torch.softmax(torch.randn(7, 5) * 3, dim=1).numpy()
    pids = np.array([0, 0, 1, 1, 2, 2, 2])
    a, same = pair_agreements(y, pids)
    i, j = np.triu_indices(7, k=1)
    np.testing.assert_allclose(a, np.minimum(y[i], y[j]).sum(1), atol=1e-5)
    np.testing.assert_array_equal(same, pids[i] == pids[j])
    sampled, same_s = pair_agreements(y, pids, max_pairs=10, chunk=4)
    assert sampled.shape == same_s.shape == (10,) and (sampled < 1.0 - 1e-6).all()  # never i == j


def test_agreement_distribution_draws_the_threshold(views, tmp_path) -> None:
    v = views["after"]
    fig = plot_agreement_distribution(v.multilabels["train"], v.pids("train"), threshold=0.7, save_to=tmp_path)
    (ax,) = fig.axes
    (line,) = [ln for ln in ax.lines if ln.get_label().startswith("T =")]
    assert list(line.get_xdata()) == [0.7, 0.7]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(s.startswith("same identity") for s in labels) and any(s.startswith("different") for s in labels)
    assert _png(tmp_path / "figures" / "agreement.png")


def test_rank_gallery_follows_the_market_protocol() -> None:
    query = [Sample("q.jpg", 1, 0)]
    gallery = [Sample("g0", 1, 0), Sample("g1", 2, 1), Sample("g2", 1, 1), Sample("g3", -1, 1)]
    distmat = np.array([[0.0, 0.2, 0.5, 0.1]])
    np.testing.assert_array_equal(rank_gallery(distmat, query, gallery, (0,), 3), [[1, 2, -1]])
    np.testing.assert_array_equal(rank_gallery(distmat, query, gallery, (0,), 1), [[1]])


def test_retrieval_grid_and_borders(views, tmp_path) -> None:
    v = views["after"]
    query, gallery = v.samples["query"], v.samples["gallery"]
    fig = plot_retrieval(v.distmat, query, gallery, queries=(0, 2), k=4, save_to=tmp_path)
    assert len(fig.axes) == 2 * (4 + 1)
    ranked = rank_gallery(v.distmat, query, gallery, (0, 2), 4)
    for r, q in enumerate((0, 2)):
        for c, g in enumerate(ranked[r]):
            edge = fig.axes[r * 5 + 1 + c].spines["top"].get_edgecolor()
            want = MATCH if gallery[g].pid == query[q].pid else MISMATCH
            np.testing.assert_allclose(edge, to_rgba(want), atol=1e-3)
            assert not (gallery[g].pid == query[q].pid and gallery[g].camid == query[q].camid)
    assert _png(tmp_path / "figures" / "retrieval.png")


# ----------------------------------------------------------------------------- explorers


def _png_of(explorer) -> str:
    return [o["data"]["image/png"] for o in explorer.output.outputs if "image/png" in o["data"]][0]


def test_image_explorer_keeps_up_with_key_presses(views, monkeypatch) -> None:
    """Issue 38: in JupyterLab five presses on the image slider drew five figures one after the other (about
    0.4 s each), so the slider sat at 5 while image 1 still showed. In a kernel the explorer draws on a worker,
    only the latest position once the presses stop, and shows a drawing it made before at once."""
    import time

    ex = ImageExplorer(views, k=5, retrieval_k=4, background=True)
    drawn: list[int] = []
    render = ImageExplorer.render

    def slow_render(self):
        drawn.append(self.index.value)
        time.sleep(0.3)  # a drawing's matplotlib time
        return render(self)

    monkeypatch.setattr(ImageExplorer, "render", slow_render)
    started = time.perf_counter()
    for i in range(1, 6):
        ex.index.value = i  # five presses, 0.05 s apart: each returns at once
        time.sleep(0.05)
    assert time.perf_counter() - started < 0.6
    ex.wait()
    assert ex.last["index"] == 5 and drawn == [5], drawn  # one drawing, of where the presses stopped
    ex.index.value = 0
    ex.wait()
    import workbench.viz.widgets as widgets

    figures = []
    monkeypatch.setattr(widgets, "plot_soft_label", lambda *a, **k: figures.append(1))
    ex.index.value = 5  # drawn before: from the explorer's cache, no new figure
    ex.wait()
    assert ex.last["index"] == 5 and "image/png" in ex.output.outputs[-1]["data"] and figures == []
    assert ImageExplorer(views, background=False).background is False  # scripts and tests: at once


def test_image_explorer_follows_its_controls(views) -> None:
    ex = ImageExplorer(views, k=5, retrieval_k=4)
    assert ex.last["model"] == "after" and ex.last["part"] == "query" and ex.last["index"] == 0
    assert len(ex.last["retrieval"]) == 4 and len(ex.last["top_agents"]) == 5
    first = _png_of(ex)
    ex.index.value = 5
    assert ex.last["index"] == 5 and _png_of(ex) != first
    assert len([o for o in ex.output.outputs if "image/png" in o["data"]]) == 2  # soft label + ranked list
    y = views["after"].multilabels["query"][5]
    assert ex.last["top_agents"] == np.argsort(-y, kind="stable")[:5].tolist()
    # filters: identity, camera, part
    ex.part.value = "train"
    assert ex.last["part"] == "train" and ex.last["retrieval"] is None and ex.index.value == 0
    pid = ex.identity.options[2][1]
    ex.identity.value = pid
    n = int((views["after"].pids("train") == pid).sum())
    assert ex.index.max == n - 1 and ex.last["pid"] == pid
    ex.index.value = ex.index.max
    assert ex.last["pid"] == pid
    cam = ex.last["camid"]
    ex.camera.value = cam
    assert ex.last["pid"] == pid and ex.last["camid"] == cam
    ex.identity.value = "all"
    assert all(views["after"].samples["train"][i].camid == cam for i in ex.candidates())
    ex.model.value = "before"
    assert ex.last["model"] == "before"


def test_camera_explorer_switches_camera(views) -> None:
    ex = CameraExplorer(views, k=6)
    assert ex.last["camera"] == "all" and set(ex.last["means"]) == {"before", "after"}
    heat = _png_of(ex)
    cam = ex.camera.options[1][1]
    ex.camera.value = cam
    assert ex.last["camera"] == cam and _png_of(ex) != heat
    v = views["after"]
    sel = v.camids("train") == cam
    np.testing.assert_allclose(ex.last["means"]["after"], v.multilabels["train"][sel][:, ex.last["agents"]].mean(0),
                               rtol=1e-5)


def test_run_explorer_caches_embeddings(views) -> None:
    ex = RunExplorer(views, method="pca")
    assert ex.last["run"] == "after" and list(ex.embeddings) == ["after"]
    cached = ex.embeddings["after"]
    ex.run.value = "before"
    ex.color_by.value = "camera"
    ex.run.value = "after"
    assert ex.last == {"run": "after", "color_by": "camera", "metrics": ex.last["metrics"]}
    assert set(ex.embeddings) == {"before", "after"} and ex.embeddings["after"] is cached
    assert "rank1" in ex.last["metrics"]


def test_threshold_explorer_counts_fall_as_t_rises(views) -> None:
    ex = ThresholdExplorer(views["after"])
    n = len(views["after"].samples["train"])
    assert ex.last["n_pairs"] == n * (n - 1) // 2
    counts = []
    for t in (0.0, 0.3, 0.6, 0.9, 1.0):
        ex.threshold.value = t
        counts.append(ex.last["n_pos"])
        assert ex.last["threshold"] == pytest.approx(t)
    assert counts[0] == ex.last["n_pairs"] and all(a >= b for a, b in zip(counts, counts[1:]))
    ex.threshold.value = 0.0
    assert ex.last["precision"] == pytest.approx(ex.same.mean()) and ex.last["recall"] == 1.0


def test_explore_builds_all_tabs(views) -> None:
    tab = explore(views, method="pca")
    assert len(tab.children) == 4 and set(tab.explorers) == {"image", "camera", "embedding", "threshold"}
    assert tab.explorers["image"].widget is tab.children[0]


# ----------------------------------------------------------------------------- issue 13: trust and read


def test_collapsed_multilabels_are_reported_not_drawn(views) -> None:
    from dataclasses import replace

    from workbench.analysis import collapse_report

    v = views["after"]
    assert v.collapse() is None  # random-init networks still tell images apart
    same = np.tile(v.multilabels["train"][:1], (len(v.multilabels["train"]), 1))  # (N, Np) identical rows
    msg = collapse_report(same + 1e-6, np.zeros((3, 4)), name="after")
    assert msg.startswith("after: the soft multilabels have collapsed") and "0.000 to 0.000" in msg
    collapsed = replace(v, multilabels={p: np.tile(y[:1], (len(y), 1)) for p, y in v.multilabels.items()})
    ex = ImageExplorer({"after": collapsed})
    texts = [o["data"]["text/plain"] for o in ex.output.outputs]
    assert ex.last["collapsed"] and any("collapsed" in t for t in texts)
    assert not any("image/png" in o["data"] for o in ex.output.outputs)  # said, not drawn
    assert "collapsed" in ThresholdExplorer(collapsed).output.outputs[0]["data"]["text/plain"]
    assert CameraExplorer({"after": collapsed}).last["collapsed"]


def test_views_show_the_datasets_own_ids(setup, views) -> None:
    raw = setup["target"].raw_train
    assert [s.camid for s in views["after"].samples["train"]] == [s.camid for s in raw]
    assert [s.path for s in views["after"].samples["train"]] == [s.path for s in setup["target"].train]
    # the same physical camera has the same number in train and query
    assert set(views["after"].camids("train")) <= set(views["after"].camids("query")) | set(
        views["after"].camids("gallery"))


def test_image_explorer_title_agrees_with_its_slider(views) -> None:
    ex = ImageExplorer(views, part="train")
    ex.index.value = 4
    assert ex.output.outputs[0]["data"]["text/plain"].startswith("after · train #4 ·")
    y = views["after"].multilabels["train"][4]
    top = int(np.argmax(y))  # the label itself in words: what a reader (and the browser test) compares
    assert ex.output.outputs[1]["data"]["text/plain"].startswith(f"soft multilabel: a{top} {y[top]:.3f}, ")
    pid = ex.identity.options[2][1]
    ex.identity.value = pid
    ex.index.value = ex.index.max
    i = ex.last["index"]
    assert f"train #{i} (match {ex.index.max} of 0–{ex.index.max})" in ex.output.outputs[0]["data"]["text/plain"]


def test_threshold_explorer_starts_at_the_runs_t(views) -> None:
    from dataclasses import replace

    ex = ThresholdExplorer(replace(views["after"], threshold=0.7234))
    assert ex.threshold.value == pytest.approx(0.723) and ex.last["threshold"] == pytest.approx(0.723)
    assert "T = 0.723" in ex.output.outputs[0]["data"]["text/plain"]
    assert ThresholdExplorer(views["after"], threshold=0.72).threshold.value == pytest.approx(0.72)


def test_retrieval_legend_heatmap_ticks_and_identity_note(views) -> None:
    v = views["after"]
    fig = plot_retrieval(v.distmat, v.samples["query"], v.samples["gallery"], queries=(0,), k=4)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["query", "same identity (correct match)", "another identity"]
    heat = plot_camera_heatmap(v.multilabels["train"], v.camids("train"), k=8)
    assert all(t.get_fontsize() >= 8 for t in heat.axes[1].get_xticklabels())
    many = np.arange(len(v.features["train"])) % 30  # 30 identities: no legend, a note instead
    emb = plot_embedding(v.features["train"], many, method="pca")
    assert emb.axes[0].get_legend() is None and "30 identities" in emb.axes[0].get_xlabel()


def test_mining_by_camera_counts_what_a_threshold_calls_positive_per_camera() -> None:
    from workbench.analysis.views import mining_by_camera

    # two people, two cameras; the labels follow the camera, not the person (a camera-biased model)
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0.5, 0.5]], dtype=np.float32)
    table = mining_by_camera(y, pids=[0, 0, 1, 1], camids=[0, 1, 0, 1], threshold=0.5)
    same, cross = table.loc["same camera"], table.loc["cross camera"]
    assert (same["pairs"], same["called positive"], same["precision (%)"]) == (2, 2, 0.0)
    assert same["mean agreement, false"] == pytest.approx(0.75)
    assert (cross["pairs"], cross["called positive"], cross["recall (%)"]) == (4, 0, 0.0)
    assert cross["mean agreement, true"] == 0.0 and table.loc["all", "pairs"] == 6


def test_fusion_stage_report_splits_the_fused_vector_by_stage(setup) -> None:
    from dataclasses import replace

    from workbench.data import build_test_loader
    from workbench.evaluation import evaluate_features, extract_features
    from workbench.analysis.views import fusion_stage_report

    cfg, target = setup["cfg"], setup["target"]
    torch.manual_seed(0)
    net = build_model(replace(cfg.model, stages=("layer1", "layer4"), embed_dim=None), 5, pretrained=False).eval()
    table = fusion_stage_report(net, target, image_size=cfg.data.image_size)
    widths = net.fusion.channels
    assert table.index.tolist() == ["layer1", "layer4", "fused"]
    assert table.loc["layer1", "dims"] == widths["layer1"] and table.loc["fused", "dims"] == net.fusion.out_dim
    assert table.loc["layer1", "norm_share"] + table.loc["layer4", "norm_share"] == pytest.approx(1.0)
    assert table.loc["fused", "norm_share"] == pytest.approx(1.0)
    # without an embedding, the fused row is the model's own retrieval
    feats = {p: extract_features(net, build_test_loader(list(getattr(target, p)), image_size=cfg.data.image_size))
             for p in ("query", "gallery")}
    own = evaluate_features(feats["query"][0], feats["gallery"][0], feats["query"][1], feats["gallery"][1],
                            feats["query"][2], feats["gallery"][2], max_rank=min(50, len(target.gallery)))
    assert table.loc["fused", "mAP"] == pytest.approx(own["mAP"], abs=1e-6)
    assert table.loc["fused", "rank1"] == pytest.approx(own["rank1"], abs=1e-6)
    # a stage alone is its own slice: layer1 alone differs from the fused retrieval
    assert 0.0 <= table.loc["layer1", "mAP"] <= 1.0
    assert "embed_share" not in table.columns  # no embedding: the fused vector is the feature


def test_fusion_stage_report_measures_each_stages_share_of_the_embedding(setup) -> None:
    from dataclasses import replace

    from workbench.data import build_test_loader
    from workbench.evaluation import evaluate_features, extract_features
    from workbench.analysis.views import fusion_stage_report

    cfg, target = setup["cfg"], setup["target"]
    torch.manual_seed(0)
    net = build_model(replace(cfg.model, stages=("layer1", "layer4"), embed_dim=16), 5, pretrained=False).eval()
    emb = net.embedding
    with torch.no_grad():
        emb.bn.running_var.uniform_(0.5, 2.0)
        emb.bn.weight.uniform_(0.5, 1.5)
    table = fusion_stage_report(net, target, image_size=cfg.data.image_size)
    assert table.index.tolist() == ["layer1", "layer4", "fused", "embedding"]
    assert table.loc["fused", "embed_share"] == pytest.approx(1.0)
    # the last row is the model's own feature: its retrieval, as evaluate would measure it
    feats = {p: extract_features(net, build_test_loader(list(getattr(target, p)), image_size=cfg.data.image_size))
             for p in ("query", "gallery")}
    own = evaluate_features(feats["query"][0], feats["gallery"][0], feats["query"][1], feats["gallery"][1],
                            feats["query"][2], feats["gallery"][2], max_rank=min(50, len(target.gallery)))
    assert table.loc["embedding", "dims"] == 16
    assert table.loc["embedding", "mAP"] == pytest.approx(own["mAP"], abs=1e-6)
    assert all(0.0 <= table.loc[s, "embed_share"] for s in ("layer1", "layer4"))
    # zero the embedding's columns of layer1: layer1 no longer moves the feature, layer4 moves all of it
    width = net.fusion.channels["layer1"]
    with torch.no_grad():
        emb.fc.weight[:, :width] = 0
    table = fusion_stage_report(net, target, image_size=cfg.data.image_size)
    assert table.loc["layer1", "embed_share"] == 0.0
    assert table.loc["layer4", "embed_share"] == pytest.approx(1.0)
    # the share sees the batch norm's scale: damping layer4's outputs hands the feature to layer1
    with torch.no_grad():
        emb.fc.weight.normal_(0, 0.01)
        baseline = fusion_stage_report(net, target, image_size=cfg.data.image_size)
        emb.fc.weight[: emb.out_dim // 2, width:] = 0  # half the outputs see layer1 alone
        emb.bn.weight[emb.out_dim // 2:] = 1e-3  # and the other half (where layer4 is) are damped
    table = fusion_stage_report(net, target, image_size=cfg.data.image_size)
    assert table.loc["layer1", "embed_share"] > baseline.loc["layer1", "embed_share"]
    assert table.loc["layer1", "embed_share"] > 0.9


def test_gradient_shares_stack_each_rows_terms_and_show_the_step_norm() -> None:
    from workbench.viz import plot_gradient_shares

    shares = pd.DataFrame({"share L_MDL (%)": [1.0, 99.5], "share λ2·L_AL (%)": [85.5, 0.0],
                           "share λ2·β·L_RJ (%)": [13.5, -0.5], "‖g L_MDL‖": [2.7, 2.7], "‖g‖": [31.1, 2.7]},
                          index=["λ2 = 50", "λ2 = 0"])
    fig = plot_gradient_shares(shares, title="t")
    ax_share, ax_norm = fig.axes[:2]
    at = {t.get_text(): y for t, y in zip(ax_share.get_yticklabels(), ax_share.get_yticks())}
    assert at["λ2 = 50"] > at["λ2 = 0"]  # the table's first row on top
    widths = sorted(round(p.get_width(), 3) for p in ax_share.patches)
    assert widths == [0.0, 0.0, 1.0, 13.5, 85.5, 99.5]  # the negative share drawn at 0, the norms not stacked
    assert sorted(round(p.get_width(), 1) for p in ax_norm.patches) == [2.7, 31.1]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["L_MDL", "λ2·L_AL", "λ2·β·L_RJ"]


def test_gradient_shares_legend_clears_the_titles_with_one_row() -> None:
    """A one-row table (one λ2 measured) once drew the legend over the panel's title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from workbench.viz import plot_gradient_shares

    shares = pd.DataFrame({"share L_MDL (%)": [77.7], "share λ2·L_AL (%)": [17.0], "‖g‖": [4.5]}, index=["λ2 = 5"])
    fig = plot_gradient_shares(shares, title="a long experiment title: where the update came from")
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legend = (fig.legends or [fig.axes[0].get_legend()])[0].get_window_extent(renderer)
    for text in (fig.axes[0].title, fig.axes[1].title, fig._suptitle):
        assert not legend.overlaps(text.get_window_extent(renderer)), text.get_text()
