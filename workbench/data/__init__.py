"""Datasets, the synthetic default, transforms and loaders.

The names below are imported on first use, so that reading a dataset's layout or its reader names
(``workbench.data.datasets``, no torch) does not load torch: ``python -m workbench --help`` stays fast.
"""
from __future__ import annotations

from workbench.lazy import lazy_exports


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


__getattr__, __dir__ = lazy_exports('workbench.data', _EXPORTS, globals())
