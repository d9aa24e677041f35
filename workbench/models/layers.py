"""Small layers of the model (``l2_normalize`` lives in :mod:`workbench.ops`, shared with the losses)."""
from __future__ import annotations

import torch
from torch import nn

from workbench.ops import NORM_EPS, l2_normalize  # noqa: F401  (re-exported)


class SEModule(nn.Module):
    """Squeeze-and-Excitation channel attention (Hu et al., CVPR 2018).

    Squeeze: global average pool to one value per channel. Excitation: 1×1 conv down to
    ``channels // reduction``, ReLU, 1×1 conv back up, sigmoid. The input is rescaled channel by
    channel with that gate. The convs are named ``fc1``/``fc2`` as in timm, so timm SE weights map
    one to one.

    Args:
        channels: input (and output) channels.
        reduction: bottleneck ratio of the excitation (16 in SENet and in the paper).

    Example:
        >>> se = SEModule(256)
        >>> se(torch.randn(2, 256, 8, 4)).shape
        torch.Size([2, 256, 8, 4])
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init for both excitation convs (kept after a ResNet's init)."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        s = self.fc2(self.act(self.fc1(s)))  # (B, C, 1, 1)
        return x * self.gate(s)
