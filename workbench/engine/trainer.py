"""The epoch loop shared by both training stages.

One :class:`Trainer` runs the epochs for both stages — device, AMP, DDP, optimizer and schedule,
per-step and per-epoch logs, evaluation, atomic checkpoints of finite weights only, resume and the
NaN guard — and asks its subclass for the batches and for ``compute_losses(batch) -> dict``
(torchreid's ``forward_backward`` split in two). The run folder it writes is a
:class:`~workbench.runs.RunFolder`; whether to start, resume or reload is decided in
:mod:`workbench.engine.lifecycle`.
"""
from __future__ import annotations

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

from workbench import faults
from workbench.builders import build_optimizer, build_scheduler, load_domains
from workbench.config import Config
from workbench.data import ImageCache
from workbench.distributed import barrier, setup_context
from workbench.engine.progress import STAGE_TITLES, ProgressLog, bar_values, in_notebook
from workbench.errors import DiskFullError, WorkbenchError
from workbench.evaluation import METRIC_KEYS, evaluate, format_metrics
from workbench.losses import LOSS_TERMS
from workbench.paths import source_commit
from workbench.runs import (
    DISK_FULL,
    RunFolder,
    RunRecord,
    epoch_summary,
    new_run_dir,
    nonfinite_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from workbench.tensorboard import TensorBoardLog
from workbench.threads import configure_threads

log = logging.getLogger("workbench.engine")


class TrainingDiverged(WorkbenchError, RuntimeError):
    """A loss term or the weights became NaN or inf; the run folder keeps the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: the message says where (the folder, the epoch its checkpoint holds) and how
    to resume it. Still a KeyboardInterrupt, so that whatever runs the training stops too."""


#: the command that runs each stage (``python -m workbench <command>``)
STAGE_COMMANDS = {"pretrain": "pretrain", "mar": "train"}


@dataclass
class RunResult:
    """What a training stage returns."""

    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def checkpoint(self) -> Path:
        return self.folder.checkpoint_path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- the epoch loop

class Trainer:
    """The epoch loop shared by both stages.

    Subclasses set ``stage``, build their loader in ``__init__`` and implement
    :meth:`compute_losses` (forward and loss of one batch, returning a dict with a differentiable
    ``loss`` and detached scalars for logging) and :meth:`batches`.

    Args:
        cfg: the run's configuration (saved as ``config.json``).
        run_dir: the run folder, a path or a :class:`RunFolder` (a new ``runs/<time>-<stage>`` when None).
        resume: continue from the folder's checkpoint if it exists.
        callbacks: called as ``cb(trainer, epoch, row)`` after each epoch's checkpoint is written
            (live plots in notebooks; an exception stops the run, the checkpoint is kept).
    """

    stage = "train"
    #: the stage-2 method (set by workbench.config.register_method); None for stage 1
    method: str | None = None

    @property
    def label(self) -> str:
        """How logs, bars and the record name this run: the stage-2 method, else the stage."""
        return self.method or self.stage

    def __init__(self, cfg: Config, run_dir: str | Path | RunFolder | None = None, *, resume: bool = False,
                 callbacks: Sequence[Callable] = ()) -> None:
        self.ctx = setup_context(cfg.train.device)
        self.threads = configure_threads(cfg.train.threads)
        self.cfg = cfg
        self.callbacks = list(callbacks)
        if run_dir is None:
            run_dir = new_run_dir(self.stage) if self.ctx.is_main else None
            if self.ctx.distributed:
                holder = [str(run_dir) if run_dir else None]
                dist.broadcast_object_list(holder, src=0)
                run_dir = holder[0]
        self.folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.run_dir = self.folder.path
        if self.ctx.is_main:
            log.info("%s: preparing %s (device %s, %d process%s)", self.label, self.run_dir, self.ctx.device,
                     self.ctx.world_size, "es" if self.ctx.world_size > 1 else "")
        self.resume = resume
        # weights come from the checkpoint: skip downloads and stage-1 loading
        self.resuming = resume and self.folder.has_checkpoint
        self.device = self.ctx.device
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.use_amp = bool(cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and cuda)
        # channels_last: always on CUDA; on a CPU with bf16 autocast, where oneDNN's bf16 convolutions
        # want it (fp32 on a CPU gains nothing from it: results/benchmarks/training.txt)
        self.channels_last = bool(cfg.train.channels_last and (cuda or self.use_amp))
        if cuda:
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.train.seed)
        self.target, self.reference = load_domains(cfg.data)
        self.num_agents = len({s.pid for s in self.reference})
        self.history: list[dict] = []
        self.steps: list[dict] = []
        self.start_epoch = 0
        self.good_epoch = 0  # the epoch (1-based) the folder's checkpoint holds; 0: none written
        self.extra_metrics: dict = {}
        self.record = RunRecord(stage=self.stage, method=self.method, seed=cfg.train.seed, threads=self.threads.threads)
        self.tb: TensorBoardLog | None = None
        #: TensorBoard's step of this run's first step: stage 2 continues after its stage 1's steps, so
        #: that ``tensorboard --logdir`` on a demo or a sweep draws the two stages one after the other
        self.step_offset = 0

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

    def continue_steps_of(self, checkpoint: str | Path | None) -> None:
        """Number TensorBoard's steps after those of the run that wrote ``checkpoint`` (the rows of its
        ``steps.csv``; none when it has none, e.g. a zoo entry)."""
        if checkpoint is None:
            return
        try:
            with open(RunFolder(Path(checkpoint).parent).steps_path, "rb") as f:
                self.step_offset = max(0, sum(1 for _ in f) - 1)  # less the header
        except OSError:
            self.step_offset = 0

    def global_step(self, epoch: int, step: int = 0) -> int:
        """TensorBoard's step of ``step`` in ``epoch`` (0-based), after :attr:`step_offset`."""
        return self.step_offset + epoch * self.steps_per_epoch + step

    def _set_optimizer(self, lr: float, weight_decay: float, milestones, kind: str = "sgd") -> None:
        self.optimizer = build_optimizer(self.net, lr, weight_decay, self.cfg.train.momentum, kind)
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
        log.info("%s: evaluating on %d query / %d gallery images", self.label, len(self.target.query),
                 len(self.target.gallery))
        metrics = evaluate(self.net, self.target, image_size=self.cfg.data.image_size, batch_size=t.eval_batch_size,
                           workers=self.cfg.data.workers, device=self.device, amp=self.use_amp,
                           channels_last=self.channels_last, flip=t.flip_test)
        log.info("%s: evaluated in %.0f s, in %%: %s", self.label, time.perf_counter() - started,
                 format_metrics(metrics))
        return metrics

    @torch.no_grad()
    def target_features(self, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def evaluate_start(self) -> None:
        """Stage 2's starting point, evaluated (rank 0) and kept as ``metrics["initial"]``."""
        if self.ctx.is_main:
            initial = self.evaluate_target()
            self.extra_metrics["initial"] = {k: initial[k] for k in METRIC_KEYS}
            log.info("before joint training, in %%: %s", format_metrics(initial))
            if self.tb is not None:
                self.tb.evaluation(self.global_step(0), initial)

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
            "step_offset": self.step_offset,
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
        self.step_offset = int(state.get("step_offset", 0))
        self.start_epoch = self.good_epoch = int(state["epoch"]) + 1

    def _try_resume(self) -> bool:
        if not self.resume or not self.folder.has_checkpoint:
            if self.resume:
                log.info("%s has no checkpoint yet: starting from scratch", self.run_dir)
            return False
        self.load_state(self.folder.checkpoint(map_location=self.device))
        log.info("resumed %s at epoch %d", self.run_dir, self.start_epoch)
        return True

    def _write_logs(self) -> None:
        self.folder.write_logs(self.history, self.steps)

    def _last_good(self) -> str:
        if self.good_epoch:
            return f"the last good checkpoint is {self.folder.checkpoint_path} (epoch {self.good_epoch})"
        return f"no checkpoint was written in {self.run_dir}"

    def _check_finite(self, losses: dict, epoch: int, step: int) -> None:
        for name in LOSS_TERMS:
            if name in losses and not torch.isfinite(losses[name]).all():
                raise TrainingDiverged(
                    f"non-finite loss in {self.label} at epoch {epoch + 1}/{self.num_epochs}, step "
                    f"{step + 1}/{self.steps_per_epoch}: term {name!r} = {float(losses[name].detach())}; {self._last_good()}"
                )

    def _save_checkpoint(self, epoch: int) -> None:
        """Write the epoch's checkpoint, only if every weight and loss state is finite (on every rank,
        so that DDP ranks stop together)."""
        state = self.state_dict(epoch)
        bad = nonfinite_tensors(state["model"]) + nonfinite_tensors(state.get("criterion", {}))
        if bad:
            raise TrainingDiverged(
                f"non-finite weights in {self.label} after epoch {epoch + 1}/{self.num_epochs} ({len(bad)} "
                f"tensor(s), e.g. {', '.join(bad[:3])}); not saved; {self._last_good()}")
        if self.ctx.is_main:
            save_checkpoint(self.folder.checkpoint_path, state)
        self.good_epoch = epoch + 1

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
        notebook = in_notebook()
        show = (self.cfg.train.progress and self.ctx.is_main and (sys.stderr.isatty() or notebook)
                and not os.environ.get("CI"))
        # in a notebook one bar per epoch stays (a widget in JupyterLab): the run's history at a glance
        if notebook and not show and self.ctx.is_main and epoch == self.start_epoch:
            # no bar in a notebook would leave a cell at [*] for the whole run with nothing to see
            why = "progress=False" if not self.cfg.train.progress else "CI is set in the environment"
            print(f"{STAGE_TITLES.get(self.stage, self.stage)}: {self.num_epochs - epoch} epoch(s) of "
                  f"{self.steps_per_epoch} steps to train, without progress bars ({why}); the cell ends "
                  "when they are done", file=sys.stderr, flush=True)
        title = f"{STAGE_TITLES.get(self.stage, self.stage)}{f' ({self.method})' if self.method else ''}"
        bar = tqdm(total=self.steps_per_epoch, desc=f"{title} epoch {epoch + 1}/{self.num_epochs}", disable=not show,
                   leave=notebook, dynamic_ncols=True, unit="step")
        start = time.perf_counter()
        previous = self.history[-1].get("seconds") if self.history else None  # the last epoch's pace
        progress = ProgressLog(self.label, epoch, self.num_epochs, self.steps_per_epoch,
                               self.cfg.train.log_every_s, enabled=self.ctx.is_main and not show,
                               previous_s_per_step=previous / self.steps_per_epoch if previous else None)
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
            faults.point("step")
            if self.tb is not None:
                now = time.perf_counter()
                self.tb.step(self.global_step(epoch, step), row, self.optimizer.param_groups[0]["lr"],
                             self.batch_images(batch) * self.ctx.world_size / max(now - last, 1e-9))
                last = now
            if show:
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(bar_values(row, images * self.ctx.world_size / elapsed), refresh=False)
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

        Rank 0 holds the folder's lock throughout (a second writer is refused). A fresh start first
        removes whatever an earlier run left in the folder, then writes ``run.json`` and
        ``config.json``; a resume never rewrites the config (the lifecycle checked that it matches)
        and first rewrites ``history.csv``/``steps.csv`` from the checkpoint, repairing a crash
        between a checkpoint and its rows. A run is finished when ``metrics.json`` exists: it is
        written last, and a run whose last epoch is checkpointed but whose metrics are missing (a
        crash in between) is evaluated again when resumed.

        Raises:
            TrainingInterrupted: Ctrl-C (or SIGTERM made one); ``run.json`` says interrupted.
            DiskFullError: a write found no room; ``run.json`` says failed.
            Exception: anything else, with ``run.json`` saying failed and why.
        """
        if not self.ctx.is_main:
            return self._fit(self._try_resume())
        with self.folder.lock():
            resumed = self._try_resume()
            try:
                self._begin(resumed)
                result = self._fit(resumed)
            except KeyboardInterrupt:
                self._stopped("interrupted", "interrupted (Ctrl-C or SIGTERM)")
                raise TrainingInterrupted(f"{self._title} in {self.run_dir} stopped, {self._where()}; "
                                          f"resume it with: {self._resume_command()}") from None
            except OSError as err:
                self._stopped("failed", f"{type(err).__name__}: {err}")
                if err.errno not in DISK_FULL:
                    raise
                raise DiskFullError(f"{err.strerror} writing {err.filename or self.run_dir}: {self._title} in "
                                    f"{self.run_dir} stopped, {self._where()}; free space, then resume it with: "
                                    f"{self._resume_command()}") from None
            except Exception as err:
                self._stopped("failed", f"{type(err).__name__}: {err}")
                raise
            finally:
                if self.tb is not None:
                    self.tb.close()
            self.record.state, self.record.finished = "finished", _now()
            self._write_record()
            return result

    def _begin(self, resumed: bool) -> None:
        """Rank 0, with the lock: the record (and on a fresh start a cleared folder and the config)."""
        if resumed:
            self._write_logs()
            self.record = self.folder.record_or_none() or self.record
            self.record.state, self.record.error = "running", None
            self.record.threads = self.threads.threads  # the resumed part's
        else:  # no file of an earlier run may survive beside this one's (metrics.json first)
            self.folder.clear_run()
            self.record.started, self.record.commit = _now(), source_commit()
        self._write_record()
        if not resumed:
            self.folder.write_config(self.cfg)  # after run.json: a folder with a config says its stage
        if self.cfg.train.tensorboard:
            self.tb = TensorBoardLog(self.run_dir, purge_step=self.global_step(self.start_epoch))

    def _stopped(self, state: str, error: str) -> None:
        """Record why the run stopped in ``run.json``; a record that cannot be written (the disk is full
        even for that) must not hide the error that stopped the run."""
        self.record.state, self.record.error = state, error
        try:
            self._write_record()
        except OSError as err:
            log.warning("could not record the run as %s in %s: %s", state, self.folder.record_path, err)

    @property
    def _title(self) -> str:
        return STAGE_TITLES.get(self.stage, self.stage)

    def _where(self) -> str:
        if self.good_epoch:
            return f"its checkpoint holds epoch {self.good_epoch}/{self.num_epochs}"
        return "no epoch had finished"

    def _resume_command(self) -> str:
        return f"python -m workbench {STAGE_COMMANDS.get(self.stage, self.stage)} --run-dir {self.run_dir} --resume"

    def _write_record(self) -> None:
        """``run.json``: the record, with what the checkpointed epochs and the stage's extra metrics say now
        (an epoch trained but not checkpointed when the run stopped is not done)."""
        summary = epoch_summary(self.history[:self.good_epoch])
        if self.stage != "mar":
            summary.pop("final_threshold", None), summary.pop("final_pos_precision", None)
        self.record.__dict__.update(summary)
        self.record.start_metrics = dict(self.extra_metrics.get("initial", self.record.start_metrics))
        if self.record.start_metrics.get("mAP") is not None:  # the curve starts where stage 2 started
            start = {"epoch": 0, **{m: self.record.start_metrics.get(m) for m in ("rank1", "mAP")}}
            self.record.curve = [start, *self.record.curve]
        self.record.init_threshold = self.extra_metrics.get("init_threshold", self.record.init_threshold)
        self.record.feature_dim = int(self.net.feature_dim)
        self.folder.write_record(self.record)

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
                        self.tb.evaluation(self.global_step(epoch + 1), metrics)
                barrier(self.ctx)
            self.history.append(row)
            log.info("%s epoch %d/%d: %s", self.label, epoch + 1, self.num_epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
            faults.point("epoch-end")
            # rows first, then the checkpoint that marks the epoch done: a crash in between leaves rows
            # of an epoch that the resume trains again and rewrites
            if self.ctx.is_main:
                self._write_logs()
            self._save_checkpoint(epoch)
            if self.ctx.is_main:
                faults.point("after-checkpoint")
                self._write_record()
            if last:
                metrics = self._finish(metrics, epoch + 1)
            barrier(self.ctx)
            self.check_synced()
            for cb in self.callbacks:
                cb(self, epoch, row)
        if not metrics:  # resumed after the last epoch's checkpoint
            metrics = self._finish_without_training()
        return RunResult(self.run_dir, metrics, list(self.history))

    def _finish(self, evaluation: dict, epochs_done: int) -> dict:
        """The end of a run: the projector (TensorBoard), then ``metrics.json``, which marks it finished;
        every rank returns rank 0's metrics."""
        metrics: dict = {}
        if self.ctx.is_main:
            metrics = self.final_metrics(evaluation)
            if self.tb is not None:
                faults.point("projector")
                self.write_projector(self.global_step(epochs_done))
            self.folder.write_metrics(metrics)
        if self.ctx.distributed:
            holder = [metrics]
            dist.broadcast_object_list(holder, src=0)
            metrics = holder[0]
        return metrics

    def _finish_without_training(self) -> dict:
        """All epochs are checkpointed: reload ``metrics.json``, or evaluate and finish if it is missing."""
        if self.folder.is_finished:
            return self.folder.metrics()
        log.info("%s: every epoch is done but %s is missing: evaluating the final checkpoint", self.label,
                 self.folder.metrics_path)
        evaluation = self.evaluate_target() if self.ctx.is_main else {}
        return self._finish(evaluation, self.num_epochs)

    def write_projector(self, global_step: int) -> None:
        """Hook at the end of a run, with TensorBoard on: embeddings for the projector (stage 2)."""

    def final_metrics(self, metrics: dict) -> dict:
        """What ``metrics.json`` holds: the last evaluation plus the stage's extra figures."""
        out = {k: v for k, v in metrics.items() if k not in ("distmat", "qf", "gf")}
        return out | {"stage": self.stage, **({"method": self.method} if self.method else {}), "epochs": self.num_epochs,
                      "seed": self.cfg.train.seed,
                      "commit": source_commit(), **self.extra_metrics}
