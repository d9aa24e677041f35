"""The two training stages: stage 1 (reference pretraining with L_AL) and stage 2 (joint MAR training).

Each is a :class:`~workbench.engine.trainer.Trainer` that builds its model, loader and loss and
computes one batch's losses; the loop, checkpoints and logs are the Trainer's.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from workbench.builders import build_loss, build_model, init_from_checkpoint
from workbench.config import Config
from workbench.data import MixedLoader, build_test_loader, build_train_loader
from workbench.engine.trainer import Trainer
from workbench.errors import ConfigError
from workbench.losses import agent_loss, soft_multilabel
from workbench.models import MARNet

log = logging.getLogger("workbench.engine")

__all__ = ["PretrainTrainer", "MARTrainer", "mined_pair_precision", "term_gradient_shares"]


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
        loss = agent_loss(out.feature, self.net.agents, labels, self.cfg.loss.scale)
        with torch.no_grad():
            acc = (out.sim.argmax(1) == labels).float().mean()
        return {"loss": loss, "al": loss.detach(), "train_acc": acc}


# ----------------------------------------------------------------------------- stage 2

class _TwoDomains(nn.Module):
    """One DDP forward for both halves: target and reference pass separately (own BN statistics)."""

    def __init__(self, net: MARNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, target: torch.Tensor, reference: torch.Tensor):
        return self.net(target), self.net(reference)


class MARTrainer(Trainer):
    """Stage 2: joint training on mixed batches with L_MAR.

    Args:
        init_checkpoint: the stage-1 checkpoint to start from (None: the config's backbone
            weights and random agents — the "without reference pretraining" ablation).
    """

    stage = "mar"

    def __init__(self, cfg: Config, run_dir=None, *, init_checkpoint: str | Path | None = None, **kw) -> None:
        super().__init__(cfg, run_dir, **kw)
        d, t, lc = cfg.data, cfg.train, cfg.loss
        self.init_checkpoint = init_checkpoint
        self.record.start_checkpoint = str(init_checkpoint) if init_checkpoint is not None else None
        if lc.init_images not in ("augmented", "clean"):
            raise ConfigError(f"init_images must be 'augmented' (official) or 'clean', got {lc.init_images!r}")
        self.net = build_model(cfg.model, self.num_agents, pretrained=init_checkpoint is None and not self.resuming)
        if init_checkpoint is not None and not self.resuming:
            kept = init_from_checkpoint(self.net, init_checkpoint)
            log.info("initialized from %s%s", init_checkpoint, f" ({len(kept)} new SE keys)" if kept else "")
            self.continue_steps_of(init_checkpoint)
        # without L_AL no loss moves the agents (the others detach them): freeze them, so that the
        # optimizer leaves them alone (no weight decay either) and DDP expects no gradient for them
        self.net.agents.requires_grad_(lc.use_al)
        self.model = self._wrap(_TwoDomains(self.net))
        ws = self.ctx.world_size
        self.target_cache = self._image_cache(self.target.train)
        self.loader = MixedLoader(
            self.target.train, self.reference, n_target=t.n_target // ws, n_reference=t.n_reference // ws,
            image_size=d.image_size, pad=d.pad, workers=d.workers, seed=t.seed, rank=self.ctx.rank, world_size=ws,
            target_cache=self.target_cache,
            reference_cache=self._image_cache(self.reference),
            pin_memory=self.device.type == "cuda", epoch_length=t.epoch_length)
        self.criterion = build_loss(lc, len(self.target.train), self.num_agents).to(self.device)
        # hidden target identities: only for the mined-pair precision diagnostic, never seen by a loss
        self._target_pids = torch.tensor([s.pid for s in self.target.train], device=self.device)
        self._set_optimizer(t.lr, t.weight_decay, t.milestones, t.optimizer)
        if t.grad_terms_every and self.ctx.distributed:
            raise ConfigError("grad_terms_every is a single-process diagnostic (it takes autograd.grad per term)")
        self._diagnosed_steps = 0
        # the weights every term updates: backbone, fusion, embedding (not the agents, which only L_AL moves)
        self._shared_parameters = [p for name, p in self.net.named_parameters() if name != "agents" and p.requires_grad]

    @property
    def num_epochs(self) -> int:
        return self.cfg.train.epochs

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int):
        self.loader.set_epoch(epoch)
        return self.loader

    def batch_images(self, batch) -> int:
        return len(batch[0]["img"]) + len(batch[1]["img"])

    def before_training(self) -> None:
        """Evaluate the starting point and initialize memory, centres and threshold."""
        self.evaluate_start()
        feats, camids, index = self._initialization_features()
        info = self.criterion.initialize(feats, self.net.agents.detach(), camids, index=index)
        if self.ctx.distributed:  # identical state on every rank, whatever the kernels did
            for buf in self.criterion.buffers():
                dist.broadcast(buf, 0)
            info["threshold"] = float(self.criterion.threshold)
        self.extra_metrics["init_threshold"] = info["threshold"]
        log.info("initialized the CML centres and the threshold T = %.4f from %d %s target images",
                 info["threshold"], len(index), self.cfg.loss.init_images)

    @torch.no_grad()
    def write_projector(self, global_step: int) -> None:
        """The target training set in TensorBoard's projector: soft multilabels and features as points,
        the images as sprites (when cached), identity and camera as metadata."""
        loader = build_test_loader(self.target.train, image_size=self.cfg.data.image_size,
                                   batch_size=self.cfg.train.eval_batch_size, workers=self.cfg.data.workers,
                                   cache=self.target_cache, labeled=False)
        feats, _, _ = self.target_features(loader)  # dataset order
        multilabels = soft_multilabel(feats, self.net.agents.detach(), self.cfg.loss.scale)  # (N, Np)
        labels = [(s.pid, s.camid) for s in self.target.train]
        images = self.target_cache.images if self.target_cache is not None else None
        self.tb.projector("target/soft_multilabels", multilabels, labels, images, global_step)
        self.tb.projector("target/features", feats, labels, images, global_step)

    @torch.no_grad()
    def _initialization_features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (eval mode) of the images that initialise the CML centres and the threshold.

        ``init_images="augmented"`` (official ``init_losses``): one pass of the training target
        loader, i.e. shuffled, augmented, full batches of ``n_target`` only (the same on every rank);
        ``"clean"``: every target training image once with the test transform.

        Returns:
            ``(features (n, D), camids (n,), dataset indices (n,))`` on the device.
        """
        d, t = self.cfg.data, self.cfg.train
        if self.cfg.loss.init_images == "augmented":
            loader = build_train_loader(self.target.train, image_size=d.image_size, batch_size=t.n_target,
                                        pad=d.pad, workers=d.workers, seed=t.seed + 7919, cache=self.target_cache,
                                        labeled=False)
            loader.sampler.set_epoch(0)
        else:
            loader = build_test_loader(self.target.train, image_size=d.image_size, batch_size=t.eval_batch_size,
                                       workers=d.workers, cache=self.target_cache, labeled=False)
        return self.target_features(loader)

    def compute_losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        target, reference = batch
        out_t, out_r = self.model(self.to_device(target["img"]), self.to_device(reference["img"]))
        index = target["index"].to(self.device, non_blocking=True)
        out = self.criterion(
            reference_features=out_r.feature, reference_labels=reference["pid"].to(self.device, non_blocking=True),
            target_features=out_t.feature, target_index=index,
            target_camids=target["camid"].to(self.device, non_blocking=True), agents=self.net.agents,
            epoch=epoch)
        pairs, positive = out.pop("mined_pairs"), out.pop("mined_positive")
        out["pos_precision"] = mined_pair_precision(pairs, positive, self._target_pids)
        weighted = out.pop("weighted")
        every = self.cfg.train.grad_terms_every
        if every and self._diagnosed_steps % every == 0:
            out |= term_gradient_shares(weighted, out["loss"], self._shared_parameters)
        self._diagnosed_steps += 1
        return out

    def summarize_epoch(self, means: dict, sums: dict) -> dict:
        row = {k: v for k, v in means.items() if k not in ("n_pos", "n_neg", "pos_precision", "threshold")}
        row["threshold"] = float(self.criterion.threshold)
        row["n_pos"] = sums.get("n_pos", 0.0)
        row["n_neg"] = sums.get("n_neg", 0.0)
        row["pos_precision"] = means.get("pos_precision", float("nan"))
        return row

    def synced_state(self) -> list[torch.Tensor]:
        return super().synced_state() + [b.detach() for b in self.criterion.buffers()]

    def state_dict(self, epoch: int) -> dict:
        return super().state_dict(epoch) | {"criterion": self.criterion.state_dict(),
                                            "init_checkpoint": str(self.init_checkpoint or "")}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.criterion.load_state_dict(state["criterion"])


def term_gradient_shares(terms: dict[str, torch.Tensor], total: torch.Tensor,
                         parameters: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each loss term's part in one step's update of the shared weights (a diagnostic; no ``.grad`` touched).

    With ``g_i`` the gradient of term ``i`` (as weighted in the total) and ``g = Σ g_i`` the step's
    gradient, over all ``parameters`` flattened: ``grad_<i>`` = ``‖g_i‖``, ``grad_total`` = ``‖g‖``, and
    ``share_<i>`` = ``<g_i, g> / ‖g‖²``, the part of the update along ``g`` that term ``i`` makes (the
    shares add up to 1; a negative share pulls against the others).

    Args:
        terms: ``{name: weighted term}`` still in the autograd graph (``MARLoss`` output ``weighted``).
        total: their sum, the step's loss.
        parameters: the shared weights.

    Returns:
        ``{"grad_<name>", "share_<name>", "grad_total"}`` as 0-dim tensors.
    """
    def flat_grad(value: torch.Tensor) -> torch.Tensor:
        if not value.requires_grad:
            return torch.zeros(sum(p.numel() for p in parameters), device=total.device)
        grads = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                          for g, p in zip(grads, parameters)])

    per_term = {name: flat_grad(value) for name, value in terms.items()}  # name -> (P,)
    g = torch.stack(list(per_term.values())).sum(0)  # (P,)
    norm2 = g.dot(g).clamp_min(1e-30)
    out = {"grad_total": g.norm()}
    for name, gi in per_term.items():
        out[f"grad_{name}"] = gi.norm()
        out[f"share_{name}"] = gi.dot(g) / norm2
    return out


def mined_pair_precision(pairs: torch.Tensor, positive: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Share of L_MDL's mined positives that truly show one person (a diagnostic: reads hidden labels).

    Args:
        pairs: (k, 2) target dataset indices of the mined pairs (``MARLoss`` output ``mined_pairs``).
        positive: (k,) which of them were called positive.
        pids: (N,) true identities of the target training set.

    Returns:
        0-dim float tensor; NaN when no positive was mined.
    """
    n_pos = positive.sum()
    if int(n_pos) == 0:
        return torch.full((), float("nan"), device=pids.device)
    pairs = pairs.to(pids.device)
    same = pids[pairs[:, 0]] == pids[pairs[:, 1]]
    return (same & positive.to(pids.device)).sum().float() / n_pos.float()
