"""Models: backbones with named stages, multi-level fusion, and the MAR network."""
from .backbones import BACKBONES, WeightsError, build_backbone
from .fusion import MultiLevelFusion
from .layers import SEModule
from .net import MARNet, Output, summary

__all__ = [
    "BACKBONES",
    "MARNet",
    "MultiLevelFusion",
    "Output",
    "SEModule",
    "WeightsError",
    "build_backbone",
    "summary",
]
