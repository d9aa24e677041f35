"""Multi-level feature fusion and the embedding layer that follows it.

Fusion (Zhang et al. 2020): global-average-pool each chosen backbone stage and concatenate,
e.g. layer1 + layer3 + layer4 of ResNet-50 → 256 + 1024 + 2048 = 3328-d; layer4 alone is the
plain MAR feature (2048-d).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from .backbones import STAGES, parse_stages

#: The paper's best combination.
DEFAULT_FUSION: tuple[str, ...] = ("layer1", "layer3", "layer4")
#: ResNet-50's stage widths, used when ``channels`` is not given.
RESNET50_CHANNELS: Mapping[str, int] = MappingProxyType({"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048})


class MultiLevelFusion(nn.Module):
    """Global-average-pool the chosen stages and concatenate them (no parameters).

    Args:
        stages: stage names, or one string like ``"layer1+layer3+layer4"``; kept in network
            order whatever the order given.
        channels: ``{stage: channels}`` of the backbone (its ``stage_channels``); ResNet-50's
            widths when ``None``.

    Attributes:
        stages: the validated names. out_dim: length of the fused vector.

    Raises:
        ValueError: a stage name that is not in ``channels`` (the message lists the valid ones).
    """

    def __init__(self, stages: str | Iterable[str] = DEFAULT_FUSION,
                 channels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        channels = dict(RESNET50_CHANNELS if channels is None else channels)
        valid = [s for s in STAGES if s in channels] + [s for s in channels if s not in STAGES]
        self.stages = parse_stages(stages, valid)
        self.channels = {s: channels[s] for s in self.stages}
        self.out_dim = sum(self.channels.values())

    def forward(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Args: feats: ``{stage: (B, C_s, H_s, W_s)}``. Returns: (B, out_dim)."""
        pooled = []
        for name in self.stages:
            x = feats[name]
            if x.shape[1] != self.channels[name]:
                raise ValueError(f"stage {name!r} has {x.shape[1]} channels, fusion expects {self.channels[name]}")
            pooled.append(x.mean(dim=(2, 3)))  # (B, C_s)
        return torch.cat(pooled, dim=1)  # (B, out_dim)

    def extra_repr(self) -> str:
        return f"stages={'+'.join(self.stages)}, out_dim={self.out_dim}"


class Embedding(nn.Module):
    """The embedding after fusion: bias-free ``Linear`` followed by ``BatchNorm1d``.

    The paper adds a 2048-d fully connected layer after fusion. We follow it with BatchNorm1d
    (as fast-reid / torchreid do for their embedding necks): fused stages have very different
    scales (layer1 activations are far smaller than layer4's), BN puts the embedding on a common
    scale before L2 normalization, and it makes the linear bias redundant, hence ``bias=False``.
    Linear weights start at N(0, 0.01) (torchreid's init), BN at weight 1, bias 0.
    Note: BatchNorm1d in training mode needs more than one sample per batch.

    Args:
        in_dim: fused vector length.
        out_dim: embedding dimension (2048 in the paper).
    """

    def __init__(self, in_dim: int, out_dim: int = 2048) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=False)
        self.bn = nn.BatchNorm1d(out_dim)
        nn.init.normal_(self.fc.weight, std=0.01)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))  # (B, out_dim)
