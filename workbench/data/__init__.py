"""Datasets, the synthetic default, transforms and loaders."""
from workbench.data.datasets import DatasetError, Sample, Split, load_dataset
from workbench.data.loaders import (
    ImageCache,
    ImageDataset,
    MixedLoader,
    PseudoIdentitySampler,
    build_pseudo_label_loader,
    build_test_loader,
    build_train_loader,
)
from workbench.data.synthetic import SyntheticSpec, ensure_synthetic, generate

__all__ = [
    "DatasetError", "Sample", "Split", "load_dataset", "ImageCache", "ImageDataset", "MixedLoader",
    "PseudoIdentitySampler", "build_pseudo_label_loader", "build_test_loader", "build_train_loader", "SyntheticSpec", "ensure_synthetic", "generate",
]
