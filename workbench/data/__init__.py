"""Datasets, the synthetic default, transforms and loaders.

The names below are imported on first use, so that reading a dataset's layout or its reader names
(``workbench.data.datasets``, no torch) does not load torch: ``python -m workbench --help`` stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "workbench.data.datasets", "Sample": "workbench.data.datasets", "Split": "workbench.data.datasets",
    "load_dataset": "workbench.data.datasets",
    "ImageCache": "workbench.data.loaders", "ImageDataset": "workbench.data.loaders",
    "MixedLoader": "workbench.data.loaders", "PseudoIdentitySampler": "workbench.data.loaders",
    "build_pseudo_label_loader": "workbench.data.loaders", "build_test_loader": "workbench.data.loaders",
    "build_train_loader": "workbench.data.loaders",
    "SyntheticSpec": "workbench.data.synthetic", "ensure_synthetic": "workbench.data.synthetic",
    "generate": "workbench.data.synthetic",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
