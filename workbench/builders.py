"""Builders: configuration → objects (domains, model, loss, optimizer, schedule).

Config objects stop here: the trainers, the CLI, the notebooks and the viz views call these, and
everything below them takes plain arguments.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

import torch

from workbench.config import SYNTHETIC_SIZES, DataConfig, ModelConfig
from workbench.data import Sample, Split, load_dataset
from workbench.errors import ConfigError
from workbench.losses import MARLoss
from workbench.models import MARNet
from workbench.paths import resolve_path
from workbench.runs import load_checkpoint

__all__ = ["load_domains", "build_model", "load_model", "init_from_checkpoint", "build_loss", "build_optimizer",
           "build_scheduler"]

log = logging.getLogger("workbench.builders")


def load_domains(data: DataConfig) -> tuple[Split, list[Sample]]:
    """The target split and the reference set (all reference identities, relabeled ``0..Np-1``)."""
    def read(name: str, root: str | None) -> Split:
        if name.startswith("synthetic"):
            if data.synthetic_size not in SYNTHETIC_SIZES:
                raise ConfigError(f"synthetic_size must be one of {sorted(SYNTHETIC_SIZES)}, got {data.synthetic_size!r}")
            return load_dataset(name, root, seed=data.synthetic_seed, **SYNTHETIC_SIZES[data.synthetic_size])
        return load_dataset(name, root)

    target = read(data.target, resolve_path(data.target_root))
    reference = read(data.reference, resolve_path(data.reference_root)).reference()
    return target, reference


def build_model(model: ModelConfig, num_agents: int, *, pretrained: bool = True) -> MARNet:
    """A :class:`MARNet` from the model config (``pretrained=False`` skips the backbone weights)."""
    weights = model.pretrained if pretrained else None
    if weights is not None and weights != "imagenet":
        weights = resolve_path(weights)
    return MARNet(model.backbone, model.stages, model.embed_dim, num_agents=num_agents,
                  pretrained=weights, last_stride=model.last_stride)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> MARNet:
    """Rebuild the network stored in a workbench checkpoint (eval mode)."""
    state = load_checkpoint(checkpoint)
    model_cfg = ModelConfig(**{**state["model_config"], "stages": tuple(state["model_config"]["stages"])})
    net = build_model(model_cfg, state["num_agents"], pretrained=False)
    net.load_state_dict(state["model"])
    return net.to(device).eval()


def init_from_checkpoint(net: MARNet, checkpoint: str | Path) -> list[str]:
    """Load a stage-1 checkpoint into ``net``; keys only ``net`` has (SE modules) keep their init.

    Returns:
        The keys that kept their init.

    Raises:
        ValueError: unexpected keys or shape mismatches (another backbone, fusion or reference set).
    """
    state = load_checkpoint(checkpoint)["model"]
    own = net.state_dict()
    bad = [k for k in state if k not in own or own[k].shape != state[k].shape]
    missing = [k for k in own if k not in state]
    if bad or any(".attn." not in k for k in missing):
        raise ConfigError(
            f"{checkpoint} does not fit this model: "
            f"{len(bad)} unexpected/mismatched keys (e.g. {bad[:3]}), missing {missing[:3]}; "
            "check backbone, stages, embed_dim and the reference set (number of agents)"
        )
    net.load_state_dict(state, strict=False)
    return missing


def build_loss(settings: Any, scale: float, num_targets: int, num_agents: int) -> MARLoss:
    """:class:`MARLoss` from MAR's settings (``workbench.methods.mar.MARSettings``) and the agents' logit
    scale: every settings field that ``MARLoss`` takes is passed by name, so a new loss field is one line in
    the settings plus its use in the loss (fields the trainer reads itself, such as ``init_images``, are
    not arguments of the loss)."""
    takes = inspect.signature(MARLoss).parameters
    kwargs = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name in takes}
    return MARLoss(num_targets, num_agents, scale=scale, **kwargs)


def build_optimizer(net: MARNet, lr: float, weight_decay: float, momentum: float,
                    kind: str = "sgd") -> torch.optim.Optimizer:
    """SGD with momentum (``kind="sgd"``, the official MAR trainer) or Adam (``"adam"``, the
    Cluster-Contrast recipe; L2 weight decay as ``torch.optim.Adam`` applies it); no weight decay on
    BatchNorm parameters and biases; frozen parameters left out."""
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in net.param_groups(weight_decay)]
    groups = [g for g in groups if g["params"]]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind != "sgd":
        raise ValueError(f"optimizer {kind!r}: choose 'sgd' or 'adam'")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, milestones: Sequence[int],
                    gamma: float) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step decay with the official trainer's meaning of a milestone.

    The official MAR trainer calls ``lr_scheduler.step()`` at the *start* of every epoch (PyTorch
    0.4/1.0 semantics), so milestone ``m`` decays the lr from the m-th epoch on (1-based; 0-based
    ``m - 1``): milestones (12, 17) give 0-based epochs 11 and 16. Here the scheduler steps after
    each epoch, so the milestones are shifted by one to match.
    """
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(0, int(m) - 1) for m in milestones], gamma)
