"""Stage 2 by clustering (``method="cluster_contrast"``): the baseline soft multilabel learning is
measured against, on the same data, backbone, stage-1 checkpoint, schedule and evaluation; and the
workbench's hybrid (``method="soft_cluster"``), which clusters on the features' Jaccard distance mixed
with the disagreement of the images' soft multilabels over the (frozen) stage-1 agents.

At the start of every epoch the target training set is clustered (:mod:`workbench.clustering`:
DBSCAN on the k-reciprocal Jaccard distance of eval-mode features); the epoch then draws P×K
batches of the clustered images by pseudo label and trains with the cluster memory's InfoNCE loss.
The run logs the clusters, the outliers and how well the pseudo labels match the hidden identities
(purity, NMI, pair precision and recall: the counterpart of MAR's mined-pair precision).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from workbench.builders import build_model, init_from_checkpoint
from workbench.clustering import ClusterMemory, cluster_centroids, cluster_pseudo_labels, cluster_quality
from workbench.config import Config
from workbench.data import build_pseudo_label_loader, build_test_loader
from workbench.engine.trainer import Trainer
from workbench.errors import ConfigError
from workbench.losses import soft_multilabel

log = logging.getLogger("workbench.engine")

__all__ = ["ClusterContrastTrainer"]

#: the per-epoch clustering diagnostics in history.csv (read from hidden labels, never used by the loss)
CLUSTER_COLUMNS = ("n_clusters", "n_outliers", "purity", "nmi", "pair_precision", "pair_recall")


class ClusterContrastTrainer(Trainer):
    """Stage 2 with pseudo labels from clustering and a cluster-memory InfoNCE loss (Dai et al. 2021).

    Shares the stage-1 checkpoint, the optimizer and lr schedule (``lr``, ``weight_decay``,
    ``milestones``), the epoch length (``epoch_length``: steps of a MAR epoch), evaluation, run
    folder, resume and TensorBoard with :class:`~workbench.engine.stages.MARTrainer`. A batch holds
    ``n_target`` target images (P = n_target // cc_instances pseudo labels × K = cc_instances). The
    agents of the stage-1 model are kept, frozen (no loss here uses them).

    Args:
        init_checkpoint: the stage-1 checkpoint to start from (None: the config's backbone weights).
    """

    stage = "mar"  # stage 2 of the pipeline, whatever its method (config.json's method says which)

    def __init__(self, cfg: Config, run_dir=None, *, init_checkpoint: str | Path | None = None, **kw) -> None:
        super().__init__(cfg, run_dir, **kw)
        t = cfg.train
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
        if self.batch_size % t.cc_instances:
            raise ConfigError(f"n_target per process ({self.batch_size}) must be a multiple of cc_instances "
                              f"({t.cc_instances})")
        self._steps = (len(self.reference) // t.n_reference if t.epoch_length == "reference"
                       else len(self.target.train) // t.n_target)
        self.memory = ClusterMemory(self.net.feature_dim, cfg.loss.cc_temperature, cfg.loss.cc_momentum).to(self.device)
        self.pseudo_labels = torch.full((len(self.target.train),), -1, dtype=torch.int64, device=self.device)
        self._pids = np.array([s.pid for s in self.target.train])  # hidden identities: diagnostics only
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

    @torch.no_grad()
    def cluster(self) -> np.ndarray:
        """Cluster the target training set with the current model; reset the memory to the centroids.

        Returns:
            The pseudo labels (N,), −1 for outliers; identical on every DDP rank (rank 0's).

        Raises:
            ConfigError: DBSCAN left every image an outlier (naming eps and min_samples).
        """
        lc = self.cfg.loss
        loader = build_test_loader(self.target.train, image_size=self.cfg.data.image_size,
                                   batch_size=self.cfg.train.eval_batch_size, workers=self.cfg.data.workers,
                                   cache=self.target_cache, labeled=False)
        feats, _, _ = self.target_features(loader)  # dataset order, L2-normalized
        hybrid = self.cfg.train.method == "soft_cluster"  # the stage-1 agents' soft multilabels join the distance
        multilabels = soft_multilabel(feats, self.net.agents.detach(), lc.scale).cpu() if hybrid else None
        labels = torch.as_tensor(cluster_pseudo_labels(feats.cpu(), eps=lc.cc_eps, min_samples=lc.cc_min_samples,
                                                       k1=lc.cc_k1, k2=lc.cc_k2, multilabels=multilabels,
                                                       label_weight=lc.cc_label_weight if hybrid else 0.0),
                                 device=self.device)
        if self.ctx.distributed:
            dist.broadcast(labels, 0)
        labels_np = labels.cpu().numpy()
        if not (labels_np >= 0).any():
            raise ConfigError(f"DBSCAN found no cluster among {len(labels_np)} target images (cc_eps = {lc.cc_eps}, "
                              f"cc_min_samples = {lc.cc_min_samples}): raise cc_eps or lower cc_min_samples")
        self.pseudo_labels = labels
        self.memory.reset(cluster_centroids(feats, labels_np))
        self.cluster_stats = cluster_quality(labels_np, self._pids)
        log.info("clustered %d target images: %d clusters, %d outliers, purity %.3f, pair precision %.3f",
                 len(labels_np), self.cluster_stats["n_clusters"], self.cluster_stats["n_outliers"],
                 self.cluster_stats["purity"], self.cluster_stats["pair_precision"])
        return labels_np

    def batches(self, epoch: int):
        d, t = self.cfg.data, self.cfg.train
        labels = self.cluster()
        loader = build_pseudo_label_loader(
            self.target.train, labels.tolist(), image_size=d.image_size, batch_size=self.batch_size,
            instances=t.cc_instances, num_batches=self._steps, pad=d.pad, workers=d.workers, seed=t.seed,
            rank=self.ctx.rank, world_size=self.ctx.world_size, cache=self.target_cache,
            pin_memory=self.device.type == "cuda")
        loader.sampler.set_epoch(epoch)
        return loader

    def compute_losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        out = self.model(self.to_device(batch["img"]))
        labels = self.pseudo_labels[batch["index"].to(self.device, non_blocking=True)]
        result = self.memory(out.feature, labels)
        return {"loss": result["loss"], "cc": result["loss"].detach()}

    def summarize_epoch(self, means: dict, sums: dict) -> dict:
        return dict(means) | {k: self.cluster_stats.get(k, float("nan")) for k in CLUSTER_COLUMNS}

    def synced_state(self) -> list[torch.Tensor]:
        return super().synced_state() + [self.memory.memory.detach()]

    def state_dict(self, epoch: int) -> dict:
        # the memory and pseudo labels are rebuilt at the start of every epoch: the model is the state
        return super().state_dict(epoch) | {"init_checkpoint": str(self.init_checkpoint or "")}
