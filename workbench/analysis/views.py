"""Cached views of a trained network for the plots and explorers: computed once, then only indexed.

A :class:`SoftLabelViews` holds, for one checkpoint, the target train / query / gallery samples,
their features and soft multilabels ``softmax(s · cos(f, a))``, the query × gallery cosine distance
matrix with its rank metrics, and one representative image per reference agent. Widgets never run
the network: they index into these arrays.

Example:
    >>> after = load_views("runs/20240101-120000-mar")                              # doctest: +SKIP
    >>> before = load_views("runs/20240101-120000-mar", checkpoint=init_checkpoint_of(
    ...     "runs/20240101-120000-mar"), name="before")                              # doctest: +SKIP
    >>> after.multilabels["train"].shape                                             # doctest: +SKIP
    (54, 16)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:  # pandas is imported inside the functions that need it
    import pandas as pd

import numpy as np
import torch

from workbench.data import Sample, Split, build_test_loader
from workbench.evaluation import evaluate_features, extract_features
from workbench.losses import soft_multilabel
from workbench.models.fusion import Embedding

PARTS = ("train", "query", "gallery")


@dataclass
class SoftLabelViews:
    """Everything the explorers show for one checkpoint (numpy arrays, CPU).

    Attributes:
        name: label of the checkpoint in legends and selectors ("before", "epoch 20" ...).
        samples: ``{"train"|"query"|"gallery": [Sample, ...]}`` of the target domain.
        features: same keys, (N, d) float32 L2-normalized features.
        multilabels: same keys, (N, Np) float32 soft multilabels (rows sum to 1).
        distmat: (Q, G) float32 cosine distances query × gallery.
        agent_images: (Np,) one image path per reference agent (None for an agent without image).
        agents: (Np, d) float32 L2-normalized agents.
        metrics: rank metrics of ``distmat`` (``rank1``, ``mAP``, ``cmc`` ...), Market protocol.
        scale: the soft multilabel scale s used.
        threshold: the run's final agreement threshold T of L_MDL (None: unknown, e.g. a stage-1
            checkpoint).

    Train samples carry the dataset's own identity and camera ids (``Split.raw_train``), like query
    and gallery: what people see matches the file names.
    """

    name: str
    samples: dict[str, list[Sample]]
    features: dict[str, np.ndarray]
    multilabels: dict[str, np.ndarray]
    distmat: np.ndarray
    agent_images: list[str | None]
    agents: np.ndarray
    metrics: dict = field(default_factory=dict)
    scale: float = 30.0
    threshold: float | None = None

    @property
    def num_agents(self) -> int:
        return int(self.agents.shape[0])

    def collapse(self, part: str = "train") -> str | None:
        """A plain sentence when this model's soft multilabels have collapsed (see :func:`collapse_report`),
        else None."""
        return collapse_report(self.multilabels[part], self.distmat, name=self.name)

    def pids(self, part: str) -> np.ndarray:
        """(N,) int64 identities of a part (hidden labels: diagnostics only)."""
        return np.array([s.pid for s in self.samples[part]], dtype=np.int64)

    def camids(self, part: str) -> np.ndarray:
        """(N,) int64 cameras of a part."""
        return np.array([s.camid for s in self.samples[part]], dtype=np.int64)

    def paths(self, part: str) -> list[str]:
        return [s.path for s in self.samples[part]]


#: a model whose soft multilabels differ by less than this (mean half-L1 distance of the images'
#: labels to their mean label, i.e. 1 − agreement) has collapsed: every image gets the same label
COLLAPSE_SPREAD = 0.02


def collapse_report(multilabels: np.ndarray, distmat: np.ndarray | None = None, *, name: str = "this model",
                    tolerance: float = COLLAPSE_SPREAD) -> str | None:
    """Say plainly when soft multilabels have collapsed (near-identical rows), else None.

    The spread is the mean over images of ``½‖y_i − ȳ‖₁`` (``1 − A(y_i, ȳ)``, the disagreement with
    the mean label): 0 when every image has the same soft multilabel, up to 1 − 1/Np for one-hot
    labels on different agents.

    Args:
        multilabels: (N, Np) soft multilabels.
        distmat: (Q, G) query × gallery distances, quoted in the message when given.
        name: the model's name in the message.
        tolerance: spread below which the labels count as collapsed.
    """
    y = np.asarray(multilabels, dtype=np.float64)  # (N, Np)
    if len(y) < 2:
        return None
    spread = float(0.5 * np.abs(y - y.mean(0, keepdims=True)).sum(1).mean())
    if spread >= tolerance:
        return None
    text = (f"{name}: the soft multilabels have collapsed: every image gets (nearly) the same soft multilabel "
            f"(mean disagreement with the average label {spread:.4f}; below {tolerance} counts as collapsed)")
    if distmat is not None and np.size(distmat):
        d = np.asarray(distmat)
        text += f"; retrieval distances span only {float(d.min()):.3f} to {float(d.max()):.3f}"
    return text + (". The model learned nothing to show here: the stage-2 learning rate is the usual cause "
                   "(L_AL's step is lr × λ2 = 50 × lr); train with the paper's lr 2e-4 or reuse a run that learned.")


def mining_by_camera(multilabels: np.ndarray, pids: np.ndarray, camids: np.ndarray,
                     threshold: float) -> "pd.DataFrame":
    """Which pairs a threshold on soft-multilabel agreement calls positive, split by camera.

    L_MDL calls a pair of target images positive when their agreement ``Σ_k min(y_ik, y_jk)``
    reaches the threshold T. This counts, over every pair of the given images (the labels are used
    for the diagnosis only), the pairs at or above T from the same camera and from different
    cameras, how many of them are true matches, and how many of the true matches they find. If the
    soft multilabels carry the camera (the view-specific bias L_CML is there to remove), the
    "positives" are mostly same-camera pairs and their precision is low across cameras.

    Args:
        multilabels: (N, Np) soft multilabels of target images.
        pids: (N,) identities (hidden labels).
        camids: (N,) cameras.
        threshold: T (e.g. a run's final threshold).

    Returns:
        Index ``same camera``, ``cross camera``, ``all``; columns ``pairs``, ``called positive``,
        ``precision (%)`` (true matches among those), ``recall (%)`` (true matches found of all true
        matches there), ``mean agreement, true`` and ``mean agreement, false``.
    """
    import pandas as pd

    from workbench.losses import agreement

    y = torch.as_tensor(np.asarray(multilabels), dtype=torch.float32)
    a = agreement(y, y).numpy()  # (N, N)
    i, j = np.triu_indices(len(y), k=1)
    a = a[i, j]
    pids, camids = np.asarray(pids), np.asarray(camids)
    same_id, same_cam = pids[i] == pids[j], camids[i] == camids[j]
    called = a >= threshold
    rows = {}
    for name, mask in (("same camera", same_cam), ("cross camera", ~same_cam), ("all", np.ones_like(same_cam))):
        c, t = called & mask, same_id & mask
        rows[name] = {"pairs": int(mask.sum()), "called positive": int(c.sum()),
                      "precision (%)": 100 * float((c & same_id).sum()) / max(int(c.sum()), 1),
                      "recall (%)": 100 * float((c & same_id).sum()) / max(int(t.sum()), 1),
                      "mean agreement, true": float(a[t].mean()) if t.any() else float("nan"),
                      "mean agreement, false": float(a[mask & ~same_id].mean()) if (mask & ~same_id).any()
                      else float("nan")}
    return pd.DataFrame.from_dict(rows, orient="index")


def camera_mining_report(run_dir: str | Path, *, device: str | torch.device = "cpu") -> "pd.DataFrame":
    """:func:`mining_by_camera` of a stage-2 run before and after joint training.

    The stage-1 model the run started from and the run's own model, each at the threshold T the run
    had at the start of stage 2 and at its end, over every pair of the target's training images.

    Args:
        run_dir: a stage-2 run folder (``checkpoint.pt``, ``metrics.json`` with ``init_threshold``,
            ``history.csv``).
        device: where the networks run.

    Returns:
        One row per (model, T, pairs of same camera | cross camera | all), with the columns of
        :func:`mining_by_camera`.
    """
    import pandas as pd

    from workbench.runs import RunFolder

    folder = RunFolder(run_dir)
    record = folder.record()
    run_dir = folder.path
    thresholds = [("T at the start of stage 2", record.init_threshold),
                  ("T at the end of stage 2", record.final_threshold)]
    models = [("stage 1", init_checkpoint_of(run_dir)), ("stage 2", folder.checkpoint_path)]
    parts = []
    for name, checkpoint in models:
        if checkpoint is None:
            continue
        views = load_views(run_dir, checkpoint=checkpoint, name=name, device=device)
        y, pids, cams = views.multilabels["train"], views.pids("train"), views.camids("train")
        for label, t in thresholds:
            if t is None:
                continue
            table = mining_by_camera(y, pids, cams, float(t)).rename_axis("pairs of").reset_index()
            table.insert(0, "threshold", float(t))
            table.insert(0, "T", label)
            table.insert(0, "model", name)
            parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def agent_representatives(reference: Sequence[Sample], num_agents: int) -> list[str | None]:
    """One image per agent: the first reference sample of each relabeled pid ``0..num_agents-1``.

    Args:
        reference: the reference set, pids relabeled to agent indices (``Split.reference()``).
        num_agents: Np.

    Returns:
        (Np,) image paths; None where an agent has no image.
    """
    out: list[str | None] = [None] * int(num_agents)
    for s in reversed(list(reference)):  # reversed: the first sample of each pid wins
        if 0 <= s.pid < num_agents:
            out[s.pid] = s.path
    return out


@torch.no_grad()
def compute_views(model: torch.nn.Module, split: Split, reference: Sequence[Sample], *,
                  image_size: tuple[int, int], batch_size: int = 64, device: str | torch.device = "cpu",
                  scale: float = 30.0, name: str = "model") -> SoftLabelViews:
    """Run the network once over the target split and cache what the explorers need.

    Args:
        model: a ``MARNet`` (``forward → Output(feature_map, feature, sim)``, ``.agents`` (Np, d)).
        split: the target :class:`Split` (train, query, gallery).
        reference: the reference samples (pids = agent indices), for the agents' images.
        image_size: (H, W) of the test transform (the run's ``cfg.data.image_size``).
        batch_size: images per forward pass.
        device: where the network runs (the model is moved there).
        scale: soft multilabel scale s.
        name: label of these views.

    Returns:
        A :class:`SoftLabelViews`.
    """
    model = model.to(device)
    agents = model.agents.detach().float().cpu()  # (Np, d)
    samples = {part: list(getattr(split, part)) for part in PARTS}
    if split.raw_train:  # the same images in the same order, with the dataset's own pids and cameras
        samples["train"] = list(split.raw_train)
    features: dict[str, np.ndarray] = {}
    multilabels: dict[str, np.ndarray] = {}
    for part, items in samples.items():
        loader = build_test_loader(items, image_size=tuple(image_size), batch_size=batch_size)
        feats, _, _ = extract_features(model, loader, device=device)  # (N, d) CPU float32
        features[part] = feats.numpy()
        multilabels[part] = soft_multilabel(feats, agents, scale).numpy()  # (N, Np)
    q_pids, g_pids = (np.array([s.pid for s in samples[p]]) for p in ("query", "gallery"))
    q_cams, g_cams = (np.array([s.camid for s in samples[p]]) for p in ("query", "gallery"))
    result = evaluate_features(features["query"], features["gallery"], q_pids, g_pids, q_cams, g_cams,
                               max_rank=min(50, len(g_pids)), return_distmat=True)
    distmat = np.asarray(result.pop("distmat"), dtype=np.float32)  # (Q, G)
    agents_n = torch.nn.functional.normalize(agents, dim=1).numpy()
    return SoftLabelViews(name=name, samples=samples, features=features, multilabels=multilabels,
                          distmat=distmat, agent_images=agent_representatives(reference, agents.shape[0]),
                          agents=agents_n, metrics=result, scale=float(scale))


def init_checkpoint_of(run_dir: str | Path) -> Path | None:
    """The stage-1 checkpoint a stage-2 run started from (its record's ``start_checkpoint``)."""
    from workbench.runs import RunFolder

    init = RunFolder(run_dir).record().start_checkpoint
    return Path(init) if init else None


def load_views(run_dir: str | Path, *, checkpoint: str | Path | None = None, name: str | None = None,
               device: str | torch.device = "cpu", batch_size: int = 64) -> SoftLabelViews:
    """Views of a run folder's checkpoint (or of another checkpoint on the run's data).

    Args:
        run_dir: a run folder holding ``config.json`` (data, image size and scale come from it).
        checkpoint: the checkpoint to load (default: ``run_dir/checkpoint.pt``); e.g. the stage-1
            checkpoint of a stage-2 run, for "before joint training".
        name: label of the views (default: the run folder's name).
        device: where the network runs.
        batch_size: images per forward pass.
    """
    from workbench.builders import load_domains, load_model
    from workbench.runs import RunFolder

    folder = RunFolder(run_dir)
    cfg = folder.config()
    target, reference = load_domains(cfg.data)
    model = load_model(checkpoint if checkpoint is not None else folder.checkpoint_path, device)
    views = compute_views(model, target, reference, image_size=cfg.data.image_size, batch_size=batch_size,
                          device=device, scale=cfg.model.scale, name=name or folder.path.name)
    if checkpoint is None or Path(checkpoint).resolve() == folder.checkpoint_path.resolve():
        views.threshold = folder.record().final_threshold
    return views


class _Fused(NamedTuple):
    feature: torch.Tensor  # (B, fused_dim)


class _FusedFeature(torch.nn.Module):
    """A MARNet whose ``.feature`` is its fused vector (before the embedding and the L2 norm), so
    :func:`extract_features` returns the fused vectors."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> _Fused:
        return _Fused(self.net(x).fused.float())


def fusion_stage_report(model: torch.nn.Module, split: Split, *, image_size: tuple[int, int],
                        batch_size: int = 64, device: str | torch.device = "cpu") -> "pd.DataFrame":
    """What each fused stage brings to a model's feature, on the target's query / gallery.

    Per stage of ``model.fusion`` (global-average-pooled, as fused): its width, its mean share of the
    fused vector's squared norm (how much of the cosine it decides when the fused vector is
    L2-normalized without an embedding), and the retrieval accuracy of that stage alone (cosine on its
    L2-normalized slice); the row ``fused`` is the whole fused vector. With an embedding after fusion
    (``embed_dim``), also ``embed_share``: the stage's share of how the embedding's output varies from
    image to image, Σ_i ‖s ⊙ W_stage (x_i,stage − x̄_stage)‖² / Σ_i ‖s ⊙ W (x_i − x̄)‖² over the query and
    gallery images, where W is the embedding's linear layer and s its batch norm's scale (γ / √(running
    var + ε)): the part of the feature each stage moves, as the cosine sees it after the embedding. The
    stages' shares need not add to 1 (their cross terms). The last row, ``embedding``, is then the
    model's own feature (the embedding's L2-normalized output) and its retrieval, next to the fused
    vector's. Uses the test split's labels: a diagnosis, not a training signal.

    Returns:
        Index: stage names, then ``fused`` (and ``embedding`` where the model has one). Columns:
        ``dims``, ``norm_share``, ``rank1``, ``mAP``, and ``embed_share`` where the model has an embedding.
    """
    import pandas as pd

    wrapped = _FusedFeature(model.to(device))
    fused, pids, cams = {}, {}, {}
    for part in ("query", "gallery"):
        loader = build_test_loader(list(getattr(split, part)), image_size=tuple(image_size), batch_size=batch_size)
        feats, pids[part], cams[part] = extract_features(wrapped, loader, device=device)
        fused[part] = feats  # (N, fused_dim)
    slices, start = {}, 0
    for stage, width in model.fusion.channels.items():
        slices[stage] = slice(start, start + width)
        start += width
    slices["fused"] = slice(0, start)
    every = torch.cat([fused["query"], fused["gallery"]]).double()  # (N, fused_dim)
    total = every.pow(2).sum(1)
    total = torch.where(total > 0, total, torch.nan)  # an all-zero vector has no share to give
    rows = {}
    for stage, cols in slices.items():
        q, g = (torch.nn.functional.normalize(fused[p][:, cols], dim=1).numpy() for p in ("query", "gallery"))
        metrics = evaluate_features(q, g, pids["query"], pids["gallery"], cams["query"], cams["gallery"],
                                    max_rank=min(50, g.shape[0]))
        share = every[:, cols].pow(2).sum(1) / total
        rows[stage] = {"dims": cols.stop - cols.start, "norm_share": float(share.nanmean()),
                       "rank1": float(metrics["rank1"]), "mAP": float(metrics["mAP"])}
    if isinstance(model.embedding, Embedding):
        bn = model.embedding.bn
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().cpu()  # (D,)
        weight = model.embedding.fc.weight.detach().double().cpu() * scale[:, None]  # (D, fused_dim)
        centered = every - every.mean(0)
        whole = (centered @ weight.T).pow(2).sum()
        for stage, cols in slices.items():
            rows[stage]["embed_share"] = float((centered[:, cols] @ weight[:, cols].T).pow(2).sum() / whole)
        own = {}
        for part in ("query", "gallery"):
            loader = build_test_loader(list(getattr(split, part)), image_size=tuple(image_size), batch_size=batch_size)
            own[part] = extract_features(model, loader, device=device)[0]  # (N, D) the model's feature
        metrics = evaluate_features(own["query"], own["gallery"], pids["query"], pids["gallery"], cams["query"],
                                    cams["gallery"], max_rank=min(50, own["gallery"].shape[0]))
        rows["embedding"] = {"dims": model.embedding.out_dim, "norm_share": float("nan"),
                             "rank1": float(metrics["rank1"]), "mAP": float(metrics["mAP"]), "embed_share": float("nan")}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("stage")


def fusion_stage_run_report(run_dir: str | Path, *, device: str | torch.device = "cpu") -> "pd.DataFrame":
    """:func:`fusion_stage_report` of a stage-2 run's model and of the stage-1 model it started from.

    Returns:
        The rows of both, with a first column ``model`` (``stage 1`` | ``stage 2``) and ``stage``.
    """
    import pandas as pd

    from workbench.builders import load_domains, load_model
    from workbench.runs import RunFolder

    folder = RunFolder(run_dir)
    cfg = folder.config()
    target, _ = load_domains(cfg.data)
    parts = []
    for name, checkpoint in (("stage 1", init_checkpoint_of(folder.path)), ("stage 2", folder.checkpoint_path)):
        if checkpoint is None:
            continue
        table = fusion_stage_report(load_model(checkpoint, device), target, image_size=cfg.data.image_size,
                                    device=device).reset_index()
        table.insert(0, "model", name)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def final_threshold(run_dir: str | Path) -> float | None:
    """The agreement threshold T after a run's last epoch (its record; None for stage 1)."""
    from workbench.runs import RunFolder

    return RunFolder(run_dir).record().final_threshold
