"""Stage 1: reference pretraining with L_AL, a :class:`~workbench.engine.trainer.Trainer` that builds its
model and loader and computes one batch's loss (the loop, checkpoints and logs are the Trainer's).
Stage 2 is a method of :mod:`workbench.methods`.
"""
from __future__ import annotations

import logging

import torch

from workbench.builders import build_model
from workbench.config import Config
from workbench.data import build_train_loader
from workbench.engine.trainer import Trainer
from workbench.losses import agent_loss

log = logging.getLogger("workbench.engine")

__all__ = ["PretrainTrainer"]


# ----------------------------------------------------------------------------- stage 1

class PretrainTrainer(Trainer):
    """Stage 1: backbone and agents on the labeled reference set with L_AL only."""

    stage = "pretrain"

    def __init__(self, cfg: Config, run_dir=None, **kw) -> None:
        super().__init__(cfg, run_dir, **kw)
        d, t = cfg.data, cfg.train
        self.net = build_model(cfg.model, self.num_agents, pretrained=not self.resuming)
        self.model = self._wrap(self.net)
        self.loader = build_train_loader(
            self.reference, image_size=d.image_size, batch_size=t.pretrain_batch_size // self.ctx.world_size,
            pad=d.pad, workers=d.workers, seed=t.seed, rank=self.ctx.rank, world_size=self.ctx.world_size,
            cache=self._image_cache(self.reference), pin_memory=self.device.type == "cuda")
        self._set_optimizer(t.pretrain_lr, t.pretrain_weight_decay, t.pretrain_milestones)

    @property
    def num_epochs(self) -> int:
        return self.cfg.train.pretrain_epochs

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int):
        self.loader.sampler.set_epoch(epoch)
        return self.loader

    def batch_images(self, batch) -> int:
        return len(batch["img"])

    def compute_losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        out = self.model(self.to_device(batch["img"]))
        labels = batch["pid"].to(self.device, non_blocking=True)
        loss = agent_loss(out.feature, self.net.agents, labels, self.cfg.model.scale)
        with torch.no_grad():
            acc = (out.sim.argmax(1) == labels).float().mean()
        return {"loss": loss, "al": loss.detach(), "train_acc": acc}
