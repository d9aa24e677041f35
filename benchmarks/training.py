"""The engine against the bare PyTorch floor, per precision variant, side by side: images per second.

For each workload the *engine* runs the workbench's own code path — a truncated epoch of the real
trainer (``Trainer.train_epoch``: data pipeline from the image cache, augmentation, autocast, the
losses, backward, optimizer, per-step bookkeeping) or ``extract_features`` over a test loader — and
the *bare floor* runs the same model on random in-memory tensors (forward, a minimal loss, backward,
SGD; or a no-grad forward). Rounds interleave engine and floor (the order alternates), so a busy
machine slows both alike; the ratio engine / floor is the median of the per-round ratios.

Workloads (the synthetic demo data, random-init models: no weights needed):

- ``mobilenet_v2 128x64 stage-2 step``: MARTrainer, 32 target + 32 reference images (the ``cpu``
  preset's batch), L_MAR with its memory initialised;
- ``mobilenet_v2 128x64 inference``: eval-mode features of the test images, batches of 128;
- ``resnet50 128x64 train`` / ``resnet50 384x128 train``: PretrainTrainer (L_AL), batches of 16 / 8;
- ``resnet50 128x64 inference``.

Variants: ``fp32``; ``bf16`` (autocast); ``bf16+cl`` (autocast and channels_last model and inputs).
The engine reaches bf16+cl with ``--amp`` on a CPU (``channels_last`` is on by default).

Usage:
    python benchmarks/training.py [--threads 1] [--rounds 3] [--only mobilenet_v2] [--variants fp32,bf16+cl]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"fp32": (False, False), "bf16": (True, False), "bf16+cl": (True, True)}  # (amp, channels_last)

#: name → (backbone, image size, kind, batch, engine steps or images per round)
WORKLOADS = {
    "mobilenet_v2 128x64 stage-2 step": ("mobilenet_v2", (128, 64), "mar", 32, 6),
    "mobilenet_v2 128x64 inference": ("mobilenet_v2", (128, 64), "infer", 128, 1024),  # rounds of ~10 s
    "resnet50 128x64 train": ("resnet50", (128, 64), "pretrain", 16, 4),
    "resnet50 384x128 train": ("resnet50", (384, 128), "pretrain", 8, 2),
    "resnet50 128x64 inference": ("resnet50", (128, 64), "infer", 128, 256),
}


def header(argv: list[str]) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"# python benchmarks/training.py {' '.join(argv)}".rstrip() +
            f"  (commit {commit}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, load average at start: {load})")


def make_config(backbone: str, size: tuple[int, int], kind: str, batch: int, amp: bool, channels_last: bool):
    from workbench.config import from_params

    params = {"preset": "demo", "backbone": backbone, "pretrained": "none", "image_size": f"{size[0]},{size[1]}",
              "amp": amp, "channels_last": channels_last, "progress": False, "tensorboard": False,
              "device": "cpu", "threads": 0}
    if kind == "pretrain":
        params["pretrain_batch_size"] = batch
    else:
        params |= {"n_target": batch, "n_reference": batch}
    return from_params(params)


class Engine:
    """The workbench's code path for one workload and variant."""

    def __init__(self, name: str, amp: bool, channels_last: bool, run_dir: Path) -> None:
        backbone, size, kind, batch, self.amount = WORKLOADS[name]
        self.kind = kind
        cfg = make_config(backbone, size, kind, batch, amp, channels_last)
        if kind == "infer":
            import torch

            from workbench.builders import build_model, load_domains
            from workbench.data import ImageCache, build_test_loader

            target, reference = load_domains(cfg.data)
            samples = list(itertools.islice(itertools.cycle(target.gallery + target.query), self.amount))
            self.net = build_model(cfg.model, len({s.pid for s in reference}), pretrained=False).eval()
            self.channels_last = amp and channels_last
            if self.channels_last:
                self.net = self.net.to(memory_format=torch.channels_last)
            self.loader = build_test_loader(samples, image_size=cfg.data.image_size, batch_size=batch,
                                            cache=ImageCache(samples, cfg.data.image_size))
            self.amp = amp
            return
        from workbench.engine import PretrainTrainer
        from workbench.methods import MARTrainer

        trainer = (MARTrainer if kind == "mar" else PretrainTrainer)(cfg, run_dir)
        if kind == "mar":  # the state before_training leaves, without its evaluation
            feats, camids, index = trainer._initialization_features()
            trainer.criterion.initialize(feats, trainer.net.agents.detach(), camids, index=index)
        self.trainer, self.epoch = trainer, 0

    def run(self) -> float:
        """One round: images per second."""
        if self.kind == "infer":
            from workbench.evaluation import extract_features

            start = time.perf_counter()
            feats, _, _ = extract_features(self.net, self.loader, amp=self.amp, channels_last=self.channels_last)
            return len(feats) / (time.perf_counter() - start)
        trainer, steps, cls = self.trainer, self.amount, type(self.trainer)

        class Truncated(cls):  # the real train_epoch, cut after `steps` steps
            steps_per_epoch = property(lambda self: steps)

            def batches(self, epoch):
                return itertools.islice(cls.batches(self, epoch), steps)

        trainer.__class__ = Truncated
        try:
            row = trainer.train_epoch(self.epoch)
        finally:
            trainer.__class__ = cls
        self.epoch += 1
        return float(row["images_per_s"])


class Floor:
    """The same model on random in-memory tensors: forward, a minimal loss, backward, SGD."""

    def __init__(self, name: str, amp: bool, channels_last: bool) -> None:
        import torch

        from workbench.builders import build_model

        backbone, size, kind, batch, amount = WORKLOADS[name]
        cfg = make_config(backbone, size, kind, batch, amp, channels_last)
        self.kind, self.amp = kind, amp
        fmt = torch.channels_last if amp and channels_last else torch.contiguous_format
        self.net = build_model(cfg.model, 64, pretrained=False).to(memory_format=fmt)
        halves = 2 if kind == "mar" else 1
        self.x = [torch.randn(batch, 3, *size).contiguous(memory_format=fmt) for _ in range(halves)]
        self.y = torch.randint(0, 64, (batch,))
        self.steps = amount if kind != "infer" else -(-amount // batch)
        self.batch = batch
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-4, momentum=0.9)

    def run(self) -> float:
        import torch
        import torch.nn.functional as F

        images = 0
        start = time.perf_counter()
        if self.kind == "infer":
            self.net.eval()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
                for _ in range(self.steps):
                    self.net(self.x[0]).feature.float()
                    images += self.batch
            return images / (time.perf_counter() - start)
        self.net.train()
        for _ in range(self.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
                outs = [self.net(x).feature for x in self.x]
                logits = 30 * outs[-1] @ F.normalize(self.net.agents, dim=1).t()
                loss = F.cross_entropy(logits.float(), self.y) + sum(o.float().pow(2).mean() for o in outs[:-1])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            images += sum(len(x) for x in self.x)
        return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, the issue's condition)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side, after one warm-up round")
    p.add_argument("--only", default="", help="run the workloads whose name contains this text")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    print(header(argv))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds after one warm-up; "
          f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(open(os.devnull, "w")):
        for name in (n for n in WORKLOADS if args.only in n):
            for variant in variants:
                amp, cl = VARIANTS[variant]
                engine, floor = Engine(name, amp, cl, Path(tmp) / f"{len(rows)}"), Floor(name, amp, cl)
                engine.run(), floor.run()  # warm-up: oneDNN primitives, caches, allocator
                e, f = [], []
                for r in range(args.rounds):
                    pair = (engine, floor) if r % 2 == 0 else (floor, engine)
                    got = {id(x): x.run() for x in pair}
                    e.append(got[id(engine)])
                    f.append(got[id(floor)])
                ratio = statistics.median(a / b for a, b in zip(e, f))
                rows.append((name, variant, statistics.median(e), statistics.median(f), ratio))
                print(f"  {name:<36} {variant:<8} engine {statistics.median(e):7.1f}  floor "
                      f"{statistics.median(f):7.1f} img/s  ratio {ratio:.2f}", file=sys.__stderr__, flush=True)
    print()
    print(f"{'workload':<36} {'variant':<8} {'engine img/s':>12} {'floor img/s':>12} {'engine/floor':>12} "
          f"{'vs fp32 engine':>14}")
    fp32 = {r[0]: r[2] for r in rows if r[1] == "fp32"}
    for name, variant, e, f, ratio in rows:
        speedup = f"{e / fp32[name]:.2f}x" if name in fp32 else ""
        print(f"{name:<36} {variant:<8} {e:12.1f} {f:12.1f} {ratio:12.2f} {speedup:>14}")


if __name__ == "__main__":
    main()
