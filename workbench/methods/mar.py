"""Stage 2 by L_MAR (``method="mar"``, the paper): joint training on mixed batches of target and reference
images with the four MAR losses (:class:`workbench.losses.MARLoss`: L_MDL, L_CML, L_AL, L_RJ).

The method's settings (:class:`MARSettings`) are the losses' weights, switches and the official
implementation's choices; the loop, checkpoints, evaluation and run folder are the engine's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from workbench.builders import build_loss, build_model, init_from_checkpoint
from workbench.clustering import camera_ratios
from workbench.config import NON_NEGATIVE, POSITIVE, Config, register_method, setting
from workbench.data import MixedLoader, build_test_loader, build_train_loader
from workbench.engine.trainer import Trainer
from workbench.errors import ConfigError
from workbench.losses import soft_multilabel
from workbench.models import MARNet

log = logging.getLogger("workbench.methods")

__all__ = ["MARSettings", "MARTrainer", "mined_camera_counts", "mined_pair_precision", "term_gradient_shares"]


@dataclass
class MARSettings:
    """L_MAR = L_MDL + λ1·L_CML + λ2·(L_AL + β·L_RJ), with the official code's choices by default."""

    margin: float = setting(1.0, range=POSITIVE, stage="stage2")        # m: L_RJ margin (agents with cos > 1 - m/2
                                                                        # are hard)
    mining_ratio: float = setting(0.005, range=(0, 1, False, True), stage="stage2")  # fraction of batch pairs mined
                                                                        # by L_MDL (and for T)
    lambda_cml: float = setting(2e-4, range=NON_NEGATIVE, stage="stage2")  # λ1: weight of L_CML
    lambda_ref: float = setting(50.0, range=NON_NEGATIVE, stage="stage2")  # λ2: weight of L_AL + β·L_RJ
    beta: float = setting(0.2, range=NON_NEGATIVE, stage="stage2")      # β: weight of L_RJ inside the reference term
    use_mdl: bool = setting(True, stage="stage2")                       # ablation switches (paper Table 3)
    use_cml: bool = setting(True, stage="stage2")
    use_al: bool = setting(True, stage="stage2")
    use_rj: bool = setting(True, stage="stage2")
    mdl_warmup_epochs: int = setting(1, range=NON_NEGATIVE, stage="stage2")  # L_MDL off (memory and T frozen) for
                                                                        # these epochs
    combine_reference_terms: bool = setting(False, stage="stage2")      # L_RJ: False = official (a reference image's
                                                                        # pull and hinge are separate terms of one
                                                                        # mean); True = one pull+hinge term each
    init_images: str = setting("augmented", stage="stage2", choices=("augmented", "clean"))  # CML centres + T
                                                                        # initialised from: "augmented" = official
                                                                        # (one pass of the shuffled, augmented,
                                                                        # drop_last target training loader);
                                                                        # "clean" = every target image once, test
                                                                        # transform
    mdl_cross_camera: bool = setting(False, stage="stage2")            # camera-aware: L_MDL mines only pairs of two
                                                                        # cameras (k kept), T ranks those pairs
    camera_norm: bool = setting(False, stage="stage2")                 # camera-aware: L_MDL mines on features with
                                                                        # each camera's batch mean subtracted
    grad_terms_every: int = setting(0, range=NON_NEGATIVE, stage="stage2")  # diagnostic: every k steps, each term's
                                                                        # share of the update of the shared weights
                                                                        # (4 more backward passes; 0: off)


class _TwoDomains(nn.Module):
    """One DDP forward for both halves: target and reference pass separately (own BN statistics)."""

    def __init__(self, net: MARNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, target: torch.Tensor, reference: torch.Tensor):
        return self.net(target), self.net(reference)


@register_method("mar", MARSettings, title="MAR (soft multilabels)")
class MARTrainer(Trainer):
    """Stage 2: joint training on mixed batches with L_MAR.

    Args:
        init_checkpoint: the stage-1 checkpoint to start from (None: the config's backbone
            weights and random agents — the "without reference pretraining" ablation).
    """

    stage = "mar"

    def __init__(self, cfg: Config, run_dir=None, *, init_checkpoint: str | Path | None = None, **kw) -> None:
        super().__init__(cfg, run_dir, **kw)
        d, t, lc = cfg.data, cfg.train, cfg.settings
        self.init_checkpoint = init_checkpoint
        self.record.start_checkpoint = str(init_checkpoint) if init_checkpoint is not None else None
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
        self.criterion = build_loss(lc, cfg.model.scale, len(self.target.train), self.num_agents).to(self.device)
        # hidden target identities: only for the mined-pair precision diagnostic, never seen by a loss
        self._target_pids = torch.tensor([s.pid for s in self.target.train], device=self.device)
        self._target_camids = torch.tensor([s.camid for s in self.target.train], device=self.device)
        self._set_optimizer(t.lr, t.weight_decay, t.milestones, t.optimizer)
        if lc.grad_terms_every and self.ctx.distributed:
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
                 info["threshold"], len(index), self.cfg.settings.init_images)

    @torch.no_grad()
    def write_projector(self, global_step: int) -> None:
        """The target training set in TensorBoard's projector: soft multilabels and features as points,
        the images as sprites (when cached), identity and camera as metadata."""
        loader = build_test_loader(self.target.train, image_size=self.cfg.data.image_size,
                                   batch_size=self.cfg.train.eval_batch_size, workers=self.cfg.data.workers,
                                   cache=self.target_cache, labeled=False)
        feats, _, _ = self.target_features(loader)  # dataset order
        multilabels = soft_multilabel(feats, self.net.agents.detach(), self.cfg.model.scale)  # (N, Np)
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
        if self.cfg.settings.init_images == "augmented":
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
        out |= {f"cam_{k}": v for k, v in mined_camera_counts(pairs, positive, index, self._target_pids,
                                                                self._target_camids).items()}
        weighted = out.pop("weighted")
        every = self.cfg.settings.grad_terms_every
        if every and self._diagnosed_steps % every == 0:
            out |= term_gradient_shares(weighted, out["loss"], self._shared_parameters)
        self._diagnosed_steps += 1
        return out

    def summarize_epoch(self, means: dict, sums: dict) -> dict:
        row = {k: v for k, v in means.items() if k not in ("n_pos", "n_neg", "pos_precision", "threshold")
               and not k.startswith("cam_")}
        row |= camera_ratios({k[4:]: sums.get(k, 0.0) for k in sums if k.startswith("cam_")}) if any(
            k.startswith("cam_") for k in sums) else {}
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


def mined_camera_counts(pairs: torch.Tensor, positive: torch.Tensor, batch: torch.Tensor, pids: torch.Tensor,
                        camids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cameras of L_MDL's supervision in one batch (a diagnostic: reads hidden labels): the mined
    positives, those across cameras, the true ones across and within cameras, and the same-identity pairs
    of the batch within and across cameras (:func:`workbench.clustering.camera_ratios` turns sums of them
    into the epoch's ratios).

    Args:
        pairs: (k, 2) target dataset indices of the mined pairs; positive: (k,) which were called positive.
        batch: (B,) the target dataset indices of the batch.
        pids, camids: (N,) the target training set's identities and cameras.
    """
    pairs, positive, batch = pairs.to(pids.device), positive.to(pids.device), batch.to(pids.device)
    a, b = pairs[positive, 0], pairs[positive, 1]
    cross, true = camids[a] != camids[b], pids[a] == pids[b]
    p, c = pids[batch], camids[batch]  # (B,)
    same_id = torch.triu(p[:, None] == p[None, :], diagonal=1)  # (B, B): each unordered pair once
    same_cam = c[:, None] == c[None, :]
    count = lambda m: m.sum().float()  # noqa: E731
    return {"pos": count(positive), "pos_cross": count(cross), "true_cross": count(true & cross),
            "true_same": count(true & ~cross), "pairs_same": count(same_id & same_cam),
            "pairs_cross": count(same_id & ~same_cam)}
