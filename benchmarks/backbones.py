"""Backbone throughput, side by side: training step and inference, images per second.

For each model (MARNet with a 2048-d embedding and an agent head): a training step is
forward + agent cross-entropy (as L_AL: scaled cosine logits) + backward + SGD step; inference is
a no-grad forward in eval mode. Warm-up iterations are excluded; the median of the timed ones is
reported. Then one training step at the paper's 384×128 input per model (seconds per step).

Usage:
    python benchmarks/backbones.py [--batch 32] [--iters 5] [--warmup 2] [--threads N]
                                   [--device cpu|cuda] [--channels-last] [--bf16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workbench.models import MARNet  # noqa: E402

MODELS = (
    ("resnet50", ("layer4",)),
    ("seresnet50", ("layer4",)),
    ("resnet50", ("layer1", "layer3", "layer4")),
    ("mobilenet_v2", ("layer4",)),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], warmup: int, iters: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_steps(model: MARNet, batch: int, size: tuple[int, int], args: argparse.Namespace):
    """Return (train_step, infer_step) closures on fixed random data."""
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, model.num_agents, (batch,), device=device)
    opt = torch.optim.SGD(model.param_groups(5e-4), lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step() -> None:
        model.train()
        with autocast:
            loss = F.cross_entropy(30.0 * model(x).sim, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model(x)

    return train_step, infer_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="batch size (both input sizes)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations at 128x64")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--big-iters", type=int, default=1, help="timed training steps at 384x128 (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--agents", type=int, default=1000, help="number of reference agents in the head")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {name}, "
          f"threads {torch.get_num_threads()}, batch {args.batch}, warm-up {args.warmup}, "
          f"timed {args.iters} (median), channels_last {args.channels_last}, bf16 {args.bf16}")
    header = (f"{'model':<32} {'params':>7} {'train img/s':>11} {'infer img/s':>11} "
              f"{'384x128 s/step':>14} {'384x128 img/s':>13}")
    print(header)
    print("-" * len(header))
    for backbone, stages in MODELS:
        torch.manual_seed(0)
        model = MARNet(backbone, stages, 2048, num_agents=args.agents).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train, infer = make_steps(model, args.batch, (128, 64), args)
        t_train = timed(train, args.warmup, args.iters, device)
        t_infer = timed(infer, args.warmup, args.iters, device)
        big_train, _ = make_steps(model, args.batch, (384, 128), args)
        t_big = timed(big_train, 1, args.big_iters, device)
        label = backbone + ("" if stages == ("layer4",) else " + fusion " + "+".join(s[-1] for s in stages))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{label:<32} {params:>6.1f}M {args.batch / t_train:>11.1f} {args.batch / t_infer:>11.1f} "
              f"{t_big:>14.2f} {args.batch / t_big:>13.1f}", flush=True)
        del model, train, infer, big_train


if __name__ == "__main__":
    main()
