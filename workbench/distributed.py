"""Processes and devices: the DDP context, device choice, and the collectives the losses use.

``setup_context`` joins the process group under ``torchrun`` (NCCL on CUDA, gloo on CPU); the
gather helpers let the target-side losses see the global batch. Each is the identity in one
process, so the same code runs with and without DDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from workbench.errors import ConfigError

__all__ = ["Context", "resolve_device", "setup_context", "barrier", "world_size", "all_gather_cat",
           "all_gather_with_grad", "broadcast_from_rank0"]


@dataclass
class Context:
    """Where this process runs: device and DDP rank."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise ``torch.device(name)`` (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here")
    return device


def setup_context(device: str = "auto") -> Context:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), pick the device.

    NCCL on CUDA, gloo on CPU. Each rank uses ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return Context(dev, dist.get_rank(), dist.get_world_size())
    return Context(dev)


def barrier(ctx: Context) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def world_size() -> int:
    """Processes in the default group (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order); sizes may differ. Identity alone."""
    world = world_size()
    if world == 1:
        return x
    x = x.contiguous()
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes_int)], dim=0)


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate equal-sized ``x`` from all ranks, keeping the autograd graph (rank order).

    The backward pass sums each rank's gradient for its own slice, so a loss computed on the
    gathered batch (identical on every rank) trains every rank's features; DDP's gradient
    averaging then yields exactly the single-process gradient of that loss.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def broadcast_from_rank0(*tensors: Tensor) -> None:
    """Overwrite ``tensors`` in place with rank 0's values. No-op alone."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)
