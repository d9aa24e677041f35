"""Stage 2 by clustering (``method="cluster_contrast"``, Dai et al. 2021): the baseline soft multilabel
learning is measured against, on the same data, backbone, stage-1 checkpoint, schedule and evaluation.
Its subclasses change only where an epoch's labels come from: :mod:`.soft_cluster` (the hybrid: the
soft multilabels join the distance) and :mod:`.oracle` (the true identities: the supervised upper bound).

At the start of every epoch the target training set is clustered (:mod:`workbench.clustering`:
DBSCAN on the k-reciprocal Jaccard distance of eval-mode features); the epoch then draws P×K
batches of the clustered images by pseudo label and trains with the cluster memory's InfoNCE loss.
The run logs the clusters, the outliers and how well the pseudo labels match the hidden identities
(purity, NMI, pair precision and recall: the counterpart of MAR's mined-pair precision).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from workbench.builders import build_model, init_from_checkpoint
from workbench.clustering import (
    ClusterMemory,
    camera_ratios,
    cluster_camera_counts,
    cluster_centroids,
    cluster_pseudo_labels,
    cluster_quality,
)
from workbench.config import AT_LEAST_1, POSITIVE, Config, register_method, setting
from workbench.data import build_pseudo_label_loader, build_test_loader
from workbench.engine.trainer import Trainer
from workbench.errors import ConfigError
from workbench.evaluation.names import CAMERA_COLUMNS
from workbench.losses import camera_normalized

log = logging.getLogger("workbench.methods")

__all__ = ["ClusterContrastTrainer", "ClusterSettings", "MemorySettings"]


@dataclass
class MemorySettings:
    """The cluster memory and its loss (every method that trains on a cluster memory)."""

    cc_temperature: float = setting(0.05, range=POSITIVE, stage="stage2")  # τ of the InfoNCE over the memory
    cc_momentum: float = setting(0.2, range=(0, 1, True, False), stage="stage2")  # μ of the update m ← μ·m + (1 − μ)·f
    cc_instances: int = setting(4, range=AT_LEAST_1, stage="stage2")  # images per label in a batch (K of P×K;
                                                                      # P = n_target // K)

    def check(self, cfg: Config) -> None:
        if cfg.train.n_target % self.cc_instances:
            raise ConfigError(f"n_target = {cfg.train.n_target} must be a multiple of cc_instances = "
                              f"{self.cc_instances} (P×K batches)")


@dataclass
class ClusterSettings(MemorySettings):
    """Cluster-Contrast's clustering: DBSCAN on the k-reciprocal Jaccard distance, every epoch."""

    cc_eps: float = setting(0.6, range=POSITIVE, stage="stage2")       # DBSCAN radius on the Jaccard distance
    cc_min_samples: int = setting(4, range=AT_LEAST_1, stage="stage2")  # images within cc_eps that make a core
                                                                        # image (itself included)
    cc_k1: int = setting(30, range=AT_LEAST_1, stage="stage2")         # Jaccard distance: k-reciprocal neighbourhood
    cc_k2: int = setting(6, range=AT_LEAST_1, stage="stage2")          # Jaccard distance: query expansion
    camera_norm: bool = setting(False, stage="stage2")                 # camera-aware: cluster the features with
                                                                        # each camera's mean subtracted

#: the per-epoch clustering diagnostics in history.csv (read from hidden labels, never used by the loss): the
#: clusters, and the cameras of the pairs they make positive (evaluation.names.CAMERA_COLUMNS)
CLUSTER_COLUMNS = ("n_clusters", "n_outliers", "purity", "nmi", "pair_precision", "pair_recall", *CAMERA_COLUMNS)


@register_method("cluster_contrast", ClusterSettings, title="Cluster-Contrast")
class ClusterContrastTrainer(Trainer):
    """Stage 2 with pseudo labels from clustering and a cluster-memory InfoNCE loss (Dai et al. 2021).

    Shares the stage-1 checkpoint, the optimizer and lr schedule (``lr``, ``weight_decay``,
    ``milestones``), the epoch length (``epoch_length``: steps of a MAR epoch), evaluation, run
    folder, resume and TensorBoard with :class:`~workbench.methods.mar.MARTrainer`. A batch holds
    ``n_target`` target images (P = n_target // cc_instances pseudo labels × K = cc_instances). The
    agents of the stage-1 model are kept, frozen (no loss here uses them). A subclass changes where an
    epoch's labels come from (:meth:`epoch_labels`).

    Args:
        init_checkpoint: the stage-1 checkpoint to start from (None: the config's backbone weights).
    """

    stage = "mar"  # stage 2 of the pipeline, whatever its method (config.json's method says which)
    #: how the log names an epoch's labels
    labels_are = "clusters"

    def __init__(self, cfg: Config, run_dir=None, *, init_checkpoint: str | Path | None = None, **kw) -> None:
        super().__init__(cfg, run_dir, **kw)
        t, st = cfg.train, cfg.settings
        self.init_checkpoint = init_checkpoint
        self.record.start_checkpoint = str(init_checkpoint) if init_checkpoint is not None else None
        self.net = build_model(cfg.model, self.num_agents, pretrained=init_checkpoint is None and not self.resuming)
        if init_checkpoint is not None and not self.resuming:
            init_from_checkpoint(self.net, init_checkpoint)
            log.info("initialized from %s", init_checkpoint)
            self.continue_steps_of(init_checkpoint)
        self.net.agents.requires_grad_(False)
        self.model = self._wrap(self.net)
        self.target_cache = self._image_cache(self.target.train)
        self.batch_size = t.n_target // self.ctx.world_size
        if self.batch_size % st.cc_instances:
            raise ConfigError(f"n_target per process ({self.batch_size}) must be a multiple of cc_instances "
                              f"({st.cc_instances})")
        self._steps = (len(self.reference) // t.n_reference if t.epoch_length == "reference"
                       else len(self.target.train) // t.n_target)
        self.memory = self.make_memory().to(self.device)
        self.pseudo_labels = torch.full((len(self.target.train),), -1, dtype=torch.int64, device=self.device)
        self.memory_targets = self.pseudo_labels  # each image's row of the memory (its cluster's; −1: none)
        self._pids = np.array([s.pid for s in self.target.train])  # hidden identities: diagnostics only
        self._camids = np.array([s.camid for s in self.target.train])
        self.cluster_stats: dict[str, float] = {}
        self._set_optimizer(t.lr, t.weight_decay, t.milestones, t.optimizer)

    @property
    def num_epochs(self) -> int:
        return self.cfg.train.epochs

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def batch_images(self, batch) -> int:
        return len(batch["img"])

    def before_training(self) -> None:
        self.evaluate_start()

    def clustering_features(self, feats: torch.Tensor) -> torch.Tensor:
        """What DBSCAN's distance is computed on: the features, or with ``camera_norm`` each camera's mean
        subtracted (the memory's centroids stay the features' own)."""
        if getattr(self.cfg.settings, "camera_norm", False):
            return camera_normalized(feats, torch.as_tensor(self._camids, device=feats.device))
        return feats

    def make_memory(self) -> ClusterMemory:
        """The memory the loss reads (one row per cluster here; a subclass may keep other rows)."""
        st = self.cfg.settings
        return ClusterMemory(self.net.feature_dim, st.cc_temperature, st.cc_momentum)

    def reset_memory(self, feats: torch.Tensor, labels: np.ndarray) -> None:
        """New labels: the memory's rows become their centroids, and each image's row its label's."""
        self.memory.reset(cluster_centroids(feats, labels))
        self.memory_targets = self.pseudo_labels

    def epoch_labels(self, feats: torch.Tensor) -> np.ndarray:
        """The labels this epoch trains on, from the target training set's features (N, D), in dataset
        order: DBSCAN's clusters (−1: outliers, left out of the epoch)."""
        st = self.cfg.settings
        return cluster_pseudo_labels(self.clustering_features(feats), eps=st.cc_eps, min_samples=st.cc_min_samples,
                                     k1=st.cc_k1, k2=st.cc_k2)

    def no_labels_message(self, n: int) -> str:
        st = self.cfg.settings
        return (f"DBSCAN found no cluster among {n} target images (cc_eps = {st.cc_eps}, cc_min_samples = "
                f"{st.cc_min_samples}): raise cc_eps or lower cc_min_samples")

    @torch.no_grad()
    def cluster(self) -> np.ndarray:
        """This epoch's labels of the target training set (:meth:`epoch_labels`); the memory reset to their
        centroids.

        Returns:
            The labels (N,), −1 for outliers; identical on every DDP rank (rank 0's).

        Raises:
            ConfigError: every image an outlier (:meth:`no_labels_message`).
        """
        loader = build_test_loader(self.target.train, image_size=self.cfg.data.image_size,
                                   batch_size=self.cfg.train.eval_batch_size, workers=self.cfg.data.workers,
                                   cache=self.target_cache, labeled=False)
        feats, _, _ = self.target_features(loader)  # dataset order, L2-normalized, on the training device
        labels = torch.as_tensor(self.epoch_labels(feats), device=self.device)
        if self.ctx.distributed:
            dist.broadcast(labels, 0)
        labels_np = labels.cpu().numpy()
        if not (labels_np >= 0).any():
            raise ConfigError(self.no_labels_message(len(labels_np)))
        self.pseudo_labels = labels
        self.reset_memory(feats, labels_np)
        self.cluster_stats = (cluster_quality(labels_np, self._pids)
                              | camera_ratios(cluster_camera_counts(labels_np, self._pids, self._camids)))
        st = self.cluster_stats
        log.info("%s: %d target images in %d %s, %d left out, purity %.3f, pair precision %.3f; cross-camera pairs "
                 "%.1f %% of the positives, same-identity pairs kept together %.1f %% within a camera, %.1f %% across",
                 self.label, len(labels_np), st["n_clusters"], self.labels_are, st["n_outliers"], st["purity"],
                 st["pair_precision"], 100 * st["cross_share"], 100 * st["recall_same_cam"],
                 100 * st["recall_cross_cam"])
        return labels_np

    def batches(self, epoch: int):
        d, t = self.cfg.data, self.cfg.train
        labels = self.cluster()
        loader = build_pseudo_label_loader(
            self.target.train, labels.tolist(), image_size=d.image_size, batch_size=self.batch_size,
            instances=self.cfg.settings.cc_instances, num_batches=self._steps, pad=d.pad, workers=d.workers, seed=t.seed,
            rank=self.ctx.rank, world_size=self.ctx.world_size, cache=self.target_cache,
            pin_memory=self.device.type == "cuda")
        loader.sampler.set_epoch(epoch)
        return loader

    def compute_losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        out = self.model(self.to_device(batch["img"]))
        targets = self.memory_targets[batch["index"].to(self.device, non_blocking=True)]
        result = self.memory(out.feature, targets)
        terms = {k: v.detach() for k, v in result.items() if k not in ("loss", "n")}  # a memory's own terms
        return {"loss": result["loss"], "cc": result["loss"].detach(), **terms}

    def summarize_epoch(self, means: dict, sums: dict) -> dict:
        return dict(means) | {k: self.cluster_stats.get(k, float("nan")) for k in CLUSTER_COLUMNS}

    def synced_state(self) -> list[torch.Tensor]:
        return super().synced_state() + [self.memory.memory.detach()]

    def state_dict(self, epoch: int) -> dict:
        # the memory and pseudo labels are rebuilt at the start of every epoch: the model is the state
        return super().state_dict(epoch) | {"init_checkpoint": str(self.init_checkpoint or "")}
