"""Training: stage 1 (reference pretraining with L_AL) and stage 2 (joint MAR training).

One :class:`Trainer` runs the epochs for both stages — device, AMP, DDP, optimizer and schedule,
per-step and per-epoch logs, evaluation, atomic checkpoints, resume and the NaN guard — and asks
its subclass for the batches and for ``compute_losses(batch) -> dict`` (torchreid's
``forward_backward`` split in two). :func:`pretrain` and :func:`train_mar` are the entry points.

Example:
    >>> from workbench.config import get_preset
    >>> stage1 = pretrain(get_preset("smoke"))                                # doctest: +SKIP
    >>> stage2 = train_mar(get_preset("smoke"), init_checkpoint=stage1.checkpoint)  # doctest: +SKIP
    >>> stage2.metrics["rank1"], stage2.run_dir                              # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from workbench.builders import (  # noqa: F401  (re-exported: workbench.engine.load_model ...)
    build_model,
    build_optimizer,
    build_scheduler,
    init_from_checkpoint,
    load_domains,
    load_model,
)
from workbench.config import Config, config_differences, load_config
from workbench.data import ImageCache, MixedLoader, build_test_loader, build_train_loader
from workbench.distributed import Context, barrier, resolve_device, setup_context  # noqa: F401  (re-exported)
from workbench.errors import CheckpointError, ConfigError, RunFolderError, WorkbenchError
from workbench.evaluation import METRIC_KEYS, evaluate, format_metrics
from workbench.losses import LOSS_TERMS, MARLoss, agent_loss, soft_multilabel
from workbench.models import MARNet
from workbench.paths import source_commit
from workbench.tensorboard import TensorBoardLog
from workbench.runs import (
    load_checkpoint,
    new_run_dir,
    read_rows,

    rng_state,
    save_checkpoint,
    set_rng_state,
    write_csv,
    write_json,
)

log = logging.getLogger("workbench.engine")



class TrainingDiverged(WorkbenchError, RuntimeError):
    """A loss term became NaN or inf; the run folder keeps the last good checkpoint."""


@dataclass
class RunResult:
    """What a training stage returns."""

    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"


# ----------------------------------------------------------------------------- run folders and progress

def check_run_folder(stage: str, cfg: Config, run_dir: str | Path, *, resume: bool) -> None:
    """Refuse to start in a folder that holds another run.

    Raises:
        RunFolderError: ``run_dir`` holds a checkpoint and ``resume`` is False; or ``resume`` is True
            and its ``config.json`` differs from ``cfg`` in a field that changes what is computed
            (the message names each field with both values). Nothing in the folder is touched.
    """
    run_dir = Path(run_dir)
    if not resume:
        if (run_dir / "checkpoint.pt").exists():
            raise RunFolderError(f"{run_dir} already holds a checkpoint; pass resume=True (--resume) to continue "
                                 "it or choose another run folder")
        return
    saved_path = run_dir / "config.json"
    if saved_path.is_file():
        diff = config_differences(load_config(saved_path), cfg, stage)
        if diff:
            raise RunFolderError(f"{run_dir} holds a {stage} run with another configuration: {'; '.join(diff)}. "
                                 "Resume it with its own configuration, or choose another run folder")


class _ProgressLog:
    """Log lines during an epoch when no progress bar is shown (not a TTY: nohup, notebooks, CI).

    The first step is logged at once, then one line every ``every_s`` seconds: step/steps, images/s
    and the epoch's ETA.
    """

    def __init__(self, stage: str, epoch: int, epochs: int, steps: int, every_s: float, *, enabled: bool) -> None:
        self.stage, self.epoch, self.epochs, self.steps = stage, epoch, epochs, steps
        self.every_s, self.enabled = every_s, enabled
        self.start = self.last = time.perf_counter()
        self.logged_first = False

    def step(self, done: int, images: int, loss: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.logged_first and now - self.last < self.every_s and done < self.steps:
            return
        self.logged_first, self.last = True, now
        elapsed = max(now - self.start, 1e-9)
        eta = elapsed / done * (self.steps - done)
        log.info("%s epoch %d/%d step %d/%d: loss %.4g, %.1f images/s, epoch ETA %d:%02d", self.stage,
                 self.epoch + 1, self.epochs, done, self.steps, loss, images / elapsed, eta // 60, eta % 60)


# ----------------------------------------------------------------------------- the epoch loop

class Trainer:
    """The epoch loop shared by both stages.

    Subclasses set ``stage``, build their loader in ``__init__`` and implement
    :meth:`compute_losses` (forward and loss of one batch, returning a dict with a differentiable
    ``loss`` and detached scalars for logging) and :meth:`batches`.

    Args:
        cfg: the run's configuration (saved as ``config.json``).
        run_dir: the run folder (created when None).
        resume: continue from ``run_dir/checkpoint.pt`` if it exists.
        callbacks: called as ``cb(trainer, epoch, row)`` after each epoch's checkpoint is written
            (live plots in notebooks; an exception stops the run, the checkpoint is kept).
    """

    stage = "train"

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
                 callbacks: Sequence[Callable] = ()) -> None:
        self.ctx = setup_context(cfg.train.device)
        self.cfg = cfg
        self.callbacks = list(callbacks)
        if run_dir is None:
            run_dir = new_run_dir(self.stage) if self.ctx.is_main else None
            if self.ctx.distributed:
                holder = [str(run_dir) if run_dir else None]
                dist.broadcast_object_list(holder, src=0)
                run_dir = holder[0]
        self.run_dir = Path(run_dir)
        if self.ctx.is_main:
            log.info("%s: preparing %s (device %s, %d process%s)", self.stage, self.run_dir, self.ctx.device,
                     self.ctx.world_size, "es" if self.ctx.world_size > 1 else "")
        self.resume = resume
        # weights come from the checkpoint: skip downloads and stage-1 loading
        self.resuming = resume and (self.run_dir / "checkpoint.pt").is_file()
        self.device = self.ctx.device
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.use_amp = bool(cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and cuda)
        self.channels_last = bool(cfg.train.channels_last and cuda)
        if cuda:
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.train.seed)
        self.target, self.reference = load_domains(cfg.data)
        self.num_agents = len({s.pid for s in self.reference})
        self.history: list[dict] = []
        self.steps: list[dict] = []
        self.start_epoch = 0
        self.extra_metrics: dict = {}
        self.tb: TensorBoardLog | None = None

    # -- to implement
    def compute_losses(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterable:
        raise NotImplementedError

    @property
    def num_epochs(self) -> int:
        raise NotImplementedError

    # -- shared pieces
    def _image_cache(self, samples) -> ImageCache | None:
        d = self.cfg.data
        return ImageCache(samples, d.image_size) if d.cache_images else None

    def _set_optimizer(self, lr: float, weight_decay: float, milestones) -> None:
        self.optimizer = build_optimizer(self.net, lr, weight_decay, self.cfg.train.momentum)
        self.scheduler = build_scheduler(self.optimizer, milestones, self.cfg.train.gamma)

    def _wrap(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def evaluate_target(self) -> dict:
        """Rank metrics of the current network on the target query/gallery (rank 0 only)."""
        t = self.cfg.train
        started = time.perf_counter()
        log.info("%s: evaluating on %d query / %d gallery images", self.stage, len(self.target.query),
                 len(self.target.gallery))
        metrics = evaluate(self.net, self.target, image_size=self.cfg.data.image_size, batch_size=t.eval_batch_size,
                           workers=self.cfg.data.workers, device=self.device, amp=self.use_amp, flip=t.flip_test)
        log.info("%s: evaluated in %.0f s: %s (%%)", self.stage, time.perf_counter() - started,
                 format_metrics(metrics))
        return metrics

    def state_dict(self, epoch: int) -> dict:
        return {
            "stage": self.stage,
            "epoch": epoch,
            "model": self.net.state_dict(),
            "model_config": {**asdict(self.cfg.model), "stages": list(self.cfg.model.stages)},
            "num_agents": self.net.num_agents,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "steps": self.steps,
            "extra_metrics": self.extra_metrics,
        }

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.steps = list(state["steps"])
        self.extra_metrics = dict(state.get("extra_metrics", {}))
        self.start_epoch = int(state["epoch"]) + 1

    def _try_resume(self) -> bool:
        path = self.run_dir / "checkpoint.pt"
        check_run_folder(self.stage, self.cfg, self.run_dir, resume=self.resume)
        if not self.resume or not path.exists():
            if self.resume:
                log.info("%s has no checkpoint yet: starting from scratch", self.run_dir)
            return False
        self.load_state(load_checkpoint(path, map_location=self.device))
        log.info("resumed %s at epoch %d", self.run_dir, self.start_epoch)
        return True

    def _write_logs(self) -> None:
        write_csv(self.run_dir / "history.csv", self.history)
        write_csv(self.run_dir / "steps.csv", self.steps)

    def _check_finite(self, losses: dict, epoch: int, step: int) -> None:
        for name in LOSS_TERMS:
            if name in losses and not torch.isfinite(losses[name]).all():
                raise TrainingDiverged(
                    f"non-finite loss in {self.stage} at epoch {epoch}, step {step}: term {name!r} = "
                    f"{float(losses[name])}; the last good checkpoint is {self.run_dir / 'checkpoint.pt'}"
                )

    def _reduce(self, totals: dict[str, float]) -> dict[str, float]:
        if not self.ctx.distributed:
            return totals
        keys = sorted(totals)
        t = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.ctx.world_size for k, v in zip(keys, t.tolist())}

    def _step_values(self, losses: dict) -> dict[str, float]:
        """The step's logged values with one device sync; under DDP averaged over ranks.

        Counts (``n_pos``, ``n_neg``) and the threshold are already global (computed on the gathered
        target batch), so averaging leaves them unchanged; the per-rank loss means become global means.
        """
        keys = sorted(losses)
        values = torch.stack([v.detach().float().reshape(()) if torch.is_tensor(v)
                              else torch.tensor(float(v), device=self.device) for v in (losses[k] for k in keys)])
        if self.ctx.distributed:
            dist.all_reduce(values)
            values = values / self.ctx.world_size
        return dict(zip(keys, values.tolist()))

    def train_epoch(self, epoch: int) -> dict:
        self.net.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        images = 0
        show = (self.cfg.train.progress and self.ctx.is_main and sys.stderr.isatty()
                and not os.environ.get("CI"))
        bar = tqdm(total=self.steps_per_epoch, desc=f"{self.stage} {epoch + 1}/{self.num_epochs}",
                   disable=not show, leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        progress = _ProgressLog(self.stage, epoch, self.num_epochs, self.steps_per_epoch,
                                self.cfg.train.log_every_s, enabled=self.ctx.is_main and not show)
        last = start
        for step, batch in enumerate(self.batches(epoch)):
            with self.autocast():
                losses = self.compute_losses(batch, epoch)
            self._check_finite(losses, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            images += self.batch_images(batch)
            row = {"epoch": epoch, "step": step} | self._step_values(losses)
            for k, value in row.items():
                if k not in ("epoch", "step") and math.isfinite(value):
                    sums[k] += value
                    counts[k] += 1
            self.steps.append(row)
            if self.tb is not None:
                now = time.perf_counter()
                self.tb.step(epoch * self.steps_per_epoch + step, row, self.optimizer.param_groups[0]["lr"],
                             self.batch_images(batch) * self.ctx.world_size / max(now - last, 1e-9))
                last = now
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            bar.update()
            progress.step(step + 1, images * self.ctx.world_size, row["loss"])
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        means = self._reduce({k: sums[k] / counts[k] for k in sums})
        return self.summarize_epoch(means, sums) | {
            "seconds": round(seconds, 3),
            "images_per_s": round(images * self.ctx.world_size / max(seconds, 1e-9), 2),
        }

    def summarize_epoch(self, means: dict, sums: dict) -> dict:
        return dict(means)

    def batch_images(self, batch) -> int:
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def before_training(self) -> None:
        """Hook run once on a fresh (not resumed) start."""

    def synced_state(self) -> list[torch.Tensor]:
        """Tensors that must be identical on every DDP rank (checked after each epoch)."""
        return [p.detach() for p in self.net.parameters()]

    def check_synced(self) -> None:
        """Under DDP, fail loudly if ranks drifted apart (a bug, never expected)."""
        if not self.ctx.distributed:
            return
        sums = torch.stack([t.double().sum() for t in self.synced_state()]).to(self.device)
        gathered = [torch.empty_like(sums) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, sums)
        if not all(torch.allclose(g, gathered[0], rtol=1e-6, atol=1e-6) for g in gathered):
            raise RuntimeError("DDP ranks hold different model/loss state after an epoch")

    def fit(self) -> RunResult:
        """Run the remaining epochs; returns the run folder, the final metrics and the history.

        A fresh start writes ``config.json``; a resume never rewrites it (its configuration must
        match, see :func:`check_run_folder`). A run is finished when ``metrics.json`` exists: it is
        written after the last checkpoint, and a run whose last epoch is checkpointed but whose
        metrics are missing (a crash in between) is evaluated again when resumed.
        """
        resumed = self._try_resume()
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not (self.run_dir / "config.json").is_file() or not resumed:
                write_json(self.run_dir / "config.json", self.cfg.to_dict())
            if self.cfg.train.tensorboard:
                self.tb = TensorBoardLog(self.run_dir, purge_step=self.start_epoch * self.steps_per_epoch)
        try:
            return self._fit(resumed)
        finally:
            if self.tb is not None:
                self.tb.close()

    def _fit(self, resumed: bool) -> RunResult:
        if not resumed:
            self.before_training()
        every = self.cfg.train.eval_every
        metrics: dict = {}
        for epoch in range(self.start_epoch, self.num_epochs):
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row |= self.train_epoch(epoch)
            self.scheduler.step()
            last = epoch == self.num_epochs - 1
            if last or (every > 0 and (epoch + 1) % every == 0):
                if self.ctx.is_main:
                    metrics = self.evaluate_target()
                    row |= {k: metrics[k] for k in METRIC_KEYS}
                    if self.tb is not None:
                        self.tb.evaluation((epoch + 1) * self.steps_per_epoch, metrics)
                barrier(self.ctx)
            self.history.append(row)
            log.info("%s epoch %d/%d: %s", self.stage, epoch + 1, self.num_epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
            if last:
                metrics = self.final_metrics(metrics)
                if self.ctx.distributed:  # every rank returns rank 0's evaluation
                    holder = [metrics]
                    dist.broadcast_object_list(holder, src=0)
                    metrics = holder[0]
            if self.ctx.is_main:
                save_checkpoint(self.run_dir / "checkpoint.pt", self.state_dict(epoch))
                self._write_logs()
                if last:
                    if self.tb is not None:
                        self.write_projector((epoch + 1) * self.steps_per_epoch)
                    write_json(self.run_dir / "metrics.json", metrics)
            barrier(self.ctx)
            self.check_synced()
            for cb in self.callbacks:
                cb(self, epoch, row)
        if not metrics:  # resumed after the last epoch's checkpoint
            metrics = self._finish_without_training()
        return RunResult(self.run_dir, metrics, list(self.history))

    def _finish_without_training(self) -> dict:
        """All epochs are checkpointed: reload ``metrics.json``, or evaluate and write it if missing."""
        path = self.run_dir / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
        log.info("%s: every epoch is done but %s is missing: evaluating the final checkpoint", self.stage, path)
        metrics: dict = {}
        if self.ctx.is_main:
            metrics = self.final_metrics(self.evaluate_target())
            write_json(path, metrics)
        if self.ctx.distributed:
            holder = [metrics]
            dist.broadcast_object_list(holder, src=0)
            metrics = holder[0]
        return metrics

    def write_projector(self, global_step: int) -> None:
        """Hook at the end of a run, with TensorBoard on: embeddings for the projector (stage 2)."""

    def final_metrics(self, metrics: dict) -> dict:
        """What ``metrics.json`` holds: the last evaluation plus the stage's extra figures."""
        out = {k: v for k, v in metrics.items() if k not in ("distmat", "qf", "gf")}
        return out | {"stage": self.stage, "epochs": self.num_epochs, "seed": self.cfg.train.seed,
                      "commit": source_commit(), **self.extra_metrics}


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
        if lc.init_images not in ("augmented", "clean"):
            raise ConfigError(f"init_images must be 'augmented' (official) or 'clean', got {lc.init_images!r}")
        self.net = build_model(cfg.model, self.num_agents, pretrained=init_checkpoint is None and not self.resuming)
        if init_checkpoint is not None and not self.resuming:
            kept = init_from_checkpoint(self.net, init_checkpoint)
            log.info("initialized from %s%s", init_checkpoint, f" ({len(kept)} new SE keys)" if kept else "")
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
        self.criterion = MARLoss(
            len(self.target.train), self.num_agents, scale=lc.scale, margin=lc.margin, mining_ratio=lc.mining_ratio,
            lambda_cml=lc.lambda_cml, lambda_ref=lc.lambda_ref, beta=lc.beta,
            mdl_warmup_epochs=lc.mdl_warmup_epochs, use_mdl=lc.use_mdl, use_cml=lc.use_cml, use_al=lc.use_al,
            use_rj=lc.use_rj, combine_reference_terms=lc.combine_reference_terms).to(self.device)
        # hidden target identities: only for the mined-pair precision diagnostic, never seen by a loss
        self._target_pids = torch.tensor([s.pid for s in self.target.train], device=self.device)
        self._set_optimizer(t.lr, t.weight_decay, t.milestones)

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
        if self.ctx.is_main:
            initial = self.evaluate_target()
            self.extra_metrics["initial"] = {k: initial[k] for k in METRIC_KEYS}
            log.info("before joint training: %s (%%)", format_metrics(initial))
            if self.tb is not None:
                self.tb.evaluation(0, initial)
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
        feats, _, _ = self._target_features(loader)  # dataset order
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
        return self._target_features(loader)

    @torch.no_grad()
    def _target_features(self, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval-mode features of an unlabeled target loader: ``(features, camids, dataset indices)``."""
        was_training = self.net.training
        self.net.eval()
        feats, camids, index = [], [], []
        try:
            with self.autocast():
                for batch in loader:
                    feats.append(self.net(self.to_device(batch["img"])).feature.float())
                    camids.append(batch["camid"])
                    index.append(batch["index"])
        finally:
            self.net.train(was_training)
        return (torch.cat(feats), torch.cat(camids).to(self.device), torch.cat(index).to(self.device))

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


# ----------------------------------------------------------------------------- entry points

def load_result(run_dir: str | Path) -> RunResult | None:
    """The result of a finished run (its ``metrics.json`` and ``history.csv``) without rebuilding
    model, data or caches; None when the run has not finished (``metrics.json`` is written with the
    last epoch's checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        return None
    history = read_rows(run_dir / "history.csv") if (run_dir / "history.csv").is_file() else []
    return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), history)


def pretrain(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
             callbacks: Sequence[Callable] = ()) -> RunResult:
    """Stage 1: train backbone and agents on the reference set with L_AL; evaluate on the target.

    Args:
        cfg: configuration (``get_preset(...)`` / ``from_params(...)``).
        run_dir: run folder (default: a new ``runs/<time>-pretrain``).
        resume: continue the run in ``run_dir`` (a finished run is only reloaded; one with another
            configuration is refused, see :func:`check_run_folder`).
        callbacks: ``cb(trainer, epoch, row)`` after every epoch.
    """
    return run_stage("pretrain", cfg, run_dir, resume=resume, callbacks=callbacks)


def train_mar(cfg: Config, run_dir: str | Path | None = None, *, init_checkpoint: str | Path | None = None,
              resume: bool = False, callbacks: Sequence[Callable] = ()) -> RunResult:
    """Stage 2: joint MAR training from a stage-1 checkpoint; evaluates every ``eval_every`` epochs.

    Args:
        cfg: configuration.
        run_dir: run folder (default: a new ``runs/<time>-mar``).
        init_checkpoint: stage-1 checkpoint (None: no reference pretraining).
        resume: continue the run in ``run_dir`` (as in :func:`pretrain`).
        callbacks: ``cb(trainer, epoch, row)`` after every epoch.
    """
    return run_stage("mar", cfg, run_dir, init_checkpoint=init_checkpoint, resume=resume, callbacks=callbacks)


def run_stage(stage: str, cfg: Config, run_dir: str | Path | None = None, *,
              init_checkpoint: str | Path | None = None, resume: bool = False,
              callbacks: Sequence[Callable] = ()) -> RunResult:
    """The one way a stage starts, resumes or is reloaded (CLI, :func:`resume_run` and notebooks).

    * ``resume=False``: a fresh run; a folder that already holds a checkpoint is refused.
    * ``resume=True``: the folder's ``config.json`` must match ``cfg`` (else :class:`RunFolderError`
      naming the fields); a finished run (``metrics.json`` present) is reloaded without building
      model or data; an interrupted one continues from its checkpoint; an empty folder starts.

    Raises:
        ConfigError: unknown stage.
        RunFolderError: see above.
    """
    if stage not in ("pretrain", "mar"):
        raise ConfigError(f"stage must be 'pretrain' or 'mar', got {stage!r}")
    if run_dir is not None:
        check_run_folder(stage, cfg, run_dir, resume=resume)
        if resume and (done := load_result(run_dir)) is not None:
            return done
    if stage == "pretrain":
        return PretrainTrainer(cfg, run_dir, resume=resume, callbacks=callbacks).fit()
    return MARTrainer(cfg, run_dir, init_checkpoint=init_checkpoint, resume=resume, callbacks=callbacks).fit()


def resume_run(run_dir: str | Path, cfg: Config | None = None, callbacks: Sequence[Callable] = ()) -> RunResult:
    """Continue (or reload) the run in ``run_dir``.

    Args:
        run_dir: a run folder with ``config.json`` and a checkpoint.
        cfg: the configuration the caller expects (None: the saved one); a different one is refused.
        callbacks: passed to the trainer.

    Raises:
        CheckpointError: ``run_dir`` holds no run to resume.
        RunFolderError: ``cfg`` differs from the saved configuration.
    """
    run_dir = Path(run_dir)
    config_path, checkpoint = run_dir / "config.json", run_dir / "checkpoint.pt"
    if not config_path.is_file() or not checkpoint.is_file():
        raise CheckpointError(f"{run_dir} holds no run to resume (it needs config.json and checkpoint.pt)")
    state = load_checkpoint(checkpoint)
    cfg = load_config(config_path) if cfg is None else cfg
    init = state.get("init_checkpoint") or None
    return run_stage(state["stage"], cfg, run_dir, init_checkpoint=init, resume=True, callbacks=callbacks)


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
