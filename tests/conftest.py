"""Shared fixtures: where ../shared/data is, tiny tensors, deterministic seeds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WORKBENCH_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs TEST_JOBS workers) each worker computes on one thread,
    and so do the processes it starts (training subprocesses, notebook kernels): N workers on N cores
    instead of N x cores threads fighting (measured 4x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """The real person crops beside the clone (../shared/data); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data test: {SHARED_DATA} is absent (it lives beside the clone in CI)")
    return SHARED_DATA


@pytest.fixture
def mobilenet_weights() -> Path:
    """The ImageNet MobileNetV2 weights in ../shared/weights; skip when absent."""
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"needs {SHARED_WEIGHTS} (ImageNet MobileNetV2 weights beside the clone)")
    return SHARED_WEIGHTS
