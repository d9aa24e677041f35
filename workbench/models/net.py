"""MARNet: backbone → multi-level fusion → embedding → L2-normalized feature, plus the agents.

The reference agents ``a_1..a_Np`` are the rows of a learned matrix living in the feature space;
``sim`` holds the cosines between each feature and each (L2-normalized) agent, from which the
losses build soft multilabels ``softmax(s · sim)``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .backbones import LoadedKeys, Pretrained, build_backbone, load_backbone_state
from .fusion import Embedding, MultiLevelFusion
from .layers import l2_normalize


class Output(NamedTuple):
    """What ``MARNet`` returns, in training and in evaluation alike."""

    fused: torch.Tensor  # (B, fused_dim) pooled + concatenated stages, before the embedding
    feature: torch.Tensor  # (B, D) L2-normalized embedding (at least float32, also under autocast)
    sim: torch.Tensor  # (B, Np) cosine similarity to the L2-normalized agents (at least float32)


class MARNet(nn.Module):
    """The MAR network with a choice of backbone and fused stages.

    Args:
        backbone: a ``BACKBONES`` name: ``resnet50``, ``seresnet50`` or ``mobilenet_v2``.
        stages: stages to fuse, e.g. ``("layer4",)`` (plain MAR) or ``("layer1", "layer3",
            "layer4")`` (the paper's best); also ``"layer1+layer3+layer4"``.
        embed_dim: embedding size after fusion (paper: 2048); ``None`` for no embedding layer
            (feature = fused vector, as in the original MAR).
        num_agents: number of reference agents = number of identities in the reference set.
        pretrained: backbone weights: ``None``, ``"imagenet"`` or a path / state dict.
        last_stride: stride of the last stage, 2 (paper) or 1.

    Agents are initialized like the official MAR code's agent matrix (it is the weight of a
    ``Linear`` there): ``kaiming_uniform_(a=√5)``, i.e. U(−1/√D, 1/√D). Only their direction
    matters (they are L2-normalized in ``forward``).

    Example:
        >>> net = MARNet("mobilenet_v2", ("layer3", "layer4"), 128, num_agents=10)
        >>> out = net(torch.randn(2, 3, 64, 32))
        >>> out.fused.shape, out.feature.shape, out.sim.shape
        (torch.Size([2, 1376]), torch.Size([2, 128]), torch.Size([2, 10]))
    """

    def __init__(self, backbone: str = "resnet50", stages: str | Iterable[str] = ("layer4",),
                 embed_dim: int | None = 2048, *, num_agents: int, pretrained: Pretrained = None,
                 last_stride: int = 2) -> None:
        super().__init__()
        if int(num_agents) < 1:
            raise ValueError(f"num_agents must be positive (identities of the reference set), got {num_agents}")
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        self.fusion = MultiLevelFusion(stages, self.backbone.stage_channels)
        self.stages = self.fusion.stages
        self.embedding = nn.Identity() if embed_dim is None else Embedding(self.fusion.out_dim, embed_dim)
        dim = self.fusion.out_dim if embed_dim is None else embed_dim
        self.agents = nn.Parameter(torch.empty(int(num_agents), dim))  # (Np, D)
        nn.init.kaiming_uniform_(self.agents, a=math.sqrt(5))

    @property
    def feature_dim(self) -> int:
        """D, the length of ``Output.feature``."""
        return self.agents.shape[1]

    @property
    def num_agents(self) -> int:
        """Np, the number of reference agents (columns of ``Output.sim``)."""
        return self.agents.shape[0]

    def forward(self, x: torch.Tensor) -> Output:
        """Args: x: images (B, 3, H, W). Returns: ``Output(fused, feature, sim)``."""
        maps = self.backbone(x, self.stages)
        fused = self.fusion(maps)  # (B, fused_dim)
        embedded = self.embedding(fused)  # (B, D)
        # The cosine head runs in float32 even under autocast: sim is scaled by 30 in the losses.
        with torch.autocast(device_type=x.device.type, enabled=False):
            feature = l2_normalize(_at_least_fp32(embedded))  # (B, D)
            agents = l2_normalize(_at_least_fp32(self.agents))  # (Np, D)
            sim = feature @ agents.t()  # (B, Np)
        return Output(fused, feature, sim)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Two optimizer groups: decay for weights with ndim > 1, none for BatchNorm and biases.

        The agent matrix is 2-D and is treated like a weight (decayed): the official MAR agents
        are a ``Linear`` weight under the global weight decay; since they are L2-normalized before
        use, decay only bounds their norm. Frozen parameters are left out.

        Args:
            weight_decay: decay of the first group (paper: 0.025).

        Returns:
            ``[{"params", "weight_decay", "name": "decay"}, {..., "weight_decay": 0.0, "name": "no_decay"}]``.
        """
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
                {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]

    def load_backbone_weights(self, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoadedKeys:
        """Load backbone weights from a path, a state dict or a workbench checkpoint (strict).

        See ``backbones.load_backbone_state``; raises ``WeightsError`` on any mismatch.
        """
        return load_backbone_state(self.backbone, source)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _count(params: Iterable[nn.Parameter]) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def summary(model: MARNet, input_size: tuple[int, int, int] = (3, 384, 128)) -> str:
    """A printable description: parameters per part, stage outputs, fusion, feature, agents.

    Runs one image of ``input_size`` through the backbone (no grad, eval mode, the model's
    device; the training mode is restored afterwards).

    Args:
        model: a ``MARNet``.
        input_size: (C, H, W) of the probe image; the paper uses 384×128.

    Returns:
        A multi-line string.
    """
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
            maps = model.backbone(x)
    finally:
        model.train(was_training)
    parts = {"backbone": model.backbone.parameters(), "fusion": model.fusion.parameters(),
             "embedding": model.embedding.parameters(), "agents": [model.agents]}
    lines = [f"MARNet  backbone={model.backbone_name}  input={'x'.join(map(str, input_size))}",
             f"{'part':<10} {'params':>12} {'trainable':>12}"]
    for name, params in parts.items():
        total, trainable = _count(params)
        lines.append(f"{name:<10} {total:>12,} {trainable:>12,}")
    total, trainable = _count(model.parameters())
    lines.append(f"{'total':<10} {total:>12,} {trainable:>12,}")
    lines.append(f"{'stage':<8} {'channels':>8} {'stride':>6} {'output CxHxW':>16}  fused")
    for name, fmap in maps.items():
        shape = "x".join(map(str, fmap.shape[1:]))
        lines.append(f"{name:<8} {fmap.shape[1]:>8} {model.backbone.stage_strides[name]:>6} "
                     f"{shape:>16}  {'yes' if name in model.stages else ''}")
    emb = "none" if isinstance(model.embedding, nn.Identity) else f"Linear+BN {model.feature_dim}"
    lines.append(f"fusion {'+'.join(model.stages)} -> {model.fusion.out_dim}-d; embedding {emb}; "
                 f"feature {model.feature_dim}-d (L2-normalized); agents {model.num_agents}")
    return "\n".join(lines)


def agent_similarity(agents: torch.Tensor) -> dict[str, Any]:
    """Cosine similarity between reference agents (how spread out stage 1 left them).

    Args:
        agents: (Np, D) agent matrix (normalized inside, as the model does).

    Returns:
        ``mean``, ``max``, ``min``, ``std`` of the off-diagonal cosines, ``num_agents``, and
        ``cosines`` (the Np·(Np−1)/2 upper-triangle values, a numpy array for a histogram).
    """
    a = l2_normalize(agents.detach().float().cpu())  # (Np, D)
    n = a.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    cos = (a @ a.T)[iu[0], iu[1]]  # (Np·(Np−1)/2,)
    if cos.numel() == 0:
        return {"num_agents": n, "mean": math.nan, "max": math.nan, "min": math.nan, "std": math.nan,
                "cosines": cos.numpy()}
    return {"num_agents": n, "mean": float(cos.mean()), "max": float(cos.max()), "min": float(cos.min()),
            "std": float(cos.std()) if cos.numel() > 1 else 0.0, "cosines": cos.numpy()}
