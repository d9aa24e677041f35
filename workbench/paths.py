"""Where datasets and runs live: ``WORKBENCH_DATA`` / ``WORKBENCH_RUNS`` or the defaults below.

In a source checkout (the folder above ``workbench/`` holds ``pyproject.toml``) the defaults are
``<checkout>/data_cache`` and ``<checkout>/runs`` (both git-ignored), so notebooks executed from
``notebooks/`` and commands run from the checkout root share them. An installed package uses
``~/.cache/reid-workbench`` and ``./runs``.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE_DIR.parent if (_PACKAGE_DIR.parent / "pyproject.toml").is_file() else None


def checkout_root() -> Path | None:
    """The source checkout holding this package, or None for an installed package."""
    return _CHECKOUT


def data_root() -> Path:
    """Folder for generated and cached datasets (``WORKBENCH_DATA`` overrides)."""
    env = os.environ.get("WORKBENCH_DATA")
    if env:
        return Path(env).expanduser()
    if _CHECKOUT is not None:
        return _CHECKOUT / "data_cache"
    return Path.home() / ".cache" / "reid-workbench"


def runs_root() -> Path:
    """Folder holding run folders (``WORKBENCH_RUNS`` overrides)."""
    env = os.environ.get("WORKBENCH_RUNS")
    if env:
        return Path(env).expanduser()
    if _CHECKOUT is not None:
        return _CHECKOUT / "runs"
    return Path.cwd() / "runs"


def shared_data_root() -> Path | None:
    """``../shared/data`` beside the checkout (the project's real-data folder), if present."""
    env = os.environ.get("WORKBENCH_SHARED")
    candidates = [Path(env) / "data"] if env else []
    if _CHECKOUT is not None:
        candidates.append(_CHECKOUT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None
