"""Tensor operations shared by the model and the losses (neither depends on the other)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["NORM_EPS", "l2_normalize", "to_numpy"]

#: The official MAR code normalizes with ``x / (||x|| + 1e-7)`` (features and agents alike).
NORM_EPS = 1e-7


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = NORM_EPS) -> torch.Tensor:
    """Divide ``x`` by its L2 norm along ``dim`` plus ``eps`` (the official implementation's form).

    Args:
        x: tensor of any shape.
        dim: dimension to normalize.
        eps: added to the norm (not clamped), as in the official MAR code.

    Returns:
        Tensor of the same shape with (near) unit-norm slices along ``dim``.
    """
    return x / (x.norm(p=2, dim=dim, keepdim=True) + eps)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of a tensor (detached, on the CPU) or of any array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
