"""Cost of the MAR losses next to one ResNet-50 training step, at the paper's sizes.

Times, in one run on one device:

* forward + backward of the whole ``L_MAR`` (epoch >= 1, all four terms on) for 184 target + 184
  reference features, Np = 4101 agents, d = 2048, memory 12,936 x 4101;
* one torchvision ResNet-50 training step (forward + backward + SGD) on the same 368-image batch at
  128 x 64;
* ``MARLoss.initialize`` on N = 12,936 target features (the exact k-th largest of all C(N, 2)
  agreements, streamed over row blocks).

Usage: ``python benchmarks/losses.py [--device cuda] [--repeats 5] [--skip-initialize]``.
Target: the losses cost < 5 % of the backbone step.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchvision

from workbench.losses import MARLoss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the loss step")
    parser.add_argument("--backbone-repeats", type=int, default=2, help="timed backbone steps")
    parser.add_argument("--batch", type=int, default=184, help="target (= reference) images per batch")
    parser.add_argument("--num-agents", type=int, default=4101)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--num-target", type=int, default=12936)
    parser.add_argument("--block-size", type=int, default=1024, help="initialize() row block")
    parser.add_argument("--skip-initialize", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    b, np_, d, n = args.batch, args.num_agents, args.dim, args.num_target

    # ---------------------------------------------------------------- L_MAR forward + backward
    mar = MARLoss(n, np_).to(device)
    with torch.no_grad():  # a plausible mid-training state, without paying for initialize here
        mar.memory.copy_(torch.randn(n, np_, device=device).mul(3).softmax(1))
        mar.visited.copy_(torch.rand(n, device=device) < 0.5)
        mar.center_mean.fill_(-8.0)
        mar.center_std.fill_(1.0)
        mar.threshold.fill_(0.5)
        mar.initialized.fill_(True)
    agents = torch.nn.Parameter(torch.randn(np_, d, device=device))
    ref_feat = torch.randn(b, d, device=device, requires_grad=True)
    tgt_feat = torch.randn(b, d, device=device, requires_grad=True)
    ref_labels = torch.randint(0, np_, (b,), device=device)
    tgt_index = torch.randperm(n, device=device)[:b]
    tgt_camids = torch.randint(0, 6, (b,), device=device)

    def loss_step() -> None:
        agents.grad = ref_feat.grad = tgt_feat.grad = None
        out = mar(reference_features=ref_feat, reference_labels=ref_labels, target_features=tgt_feat,
                  target_index=tgt_index, target_camids=tgt_camids, agents=agents, epoch=1)
        out["loss"].backward()

    t_loss = _time(loss_step, device, args.repeats)

    # ---------------------------------------------------------------- ResNet-50 training step
    net = torchvision.models.resnet50(weights=None).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=2e-4, momentum=0.9, weight_decay=0.025)
    images = torch.randn(2 * b, 3, 128, 64, device=device)
    labels = torch.randint(0, 1000, (2 * b,), device=device)

    def backbone_step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        opt.step()

    t_backbone = _time(backbone_step, device, args.backbone_repeats)
    del net, opt, images

    # ---------------------------------------------------------------- initialize
    t_init, info = float("nan"), {}
    if not args.skip_initialize:
        mar_init = MARLoss(n, np_).to(device)
        feats = torch.randn(n, d, device=device)
        camids = torch.randint(0, 6, (n,), device=device)
        _sync(device)
        start = time.perf_counter()
        info = mar_init.initialize(feats, agents.detach(), camids, block_size=args.block_size)
        _sync(device)
        t_init = time.perf_counter() - start

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x {torch.get_num_threads()} threads"
    print(f"device: {name}   torch {torch.__version__}")
    print(f"sizes: {b} target + {b} reference, Np = {np_}, d = {d}, memory {n} x {np_}")
    print(f"{'what':<52}{'seconds':>10}")
    print(f"{'L_MAR forward + backward (all terms, epoch >= 1)':<52}{t_loss:>10.4f}")
    print(f"{'ResNet-50 step, ' + str(2 * b) + ' x 3 x 128 x 64 (fwd+bwd+SGD)':<52}{t_backbone:>10.4f}")
    print(f"{'ratio losses / backbone':<52}{t_loss / t_backbone:>10.2%}   (target < 5%)")
    if not args.skip_initialize:
        label = f"MARLoss.initialize, N = {n} (k = {info['k']})"
        print(f"{label:<52}{t_init:>10.2f}")


if __name__ == "__main__":
    main()
