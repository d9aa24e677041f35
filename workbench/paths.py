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


def source_commit() -> str | None:
    """The git commit of this checkout (``<hash>`` or ``<hash>-dirty``), None outside a git checkout."""
    import subprocess

    if _CHECKOUT is None:
        return None
    try:
        head = subprocess.run(["git", "-C", str(_CHECKOUT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_CHECKOUT), "status", "--porcelain", "--untracked-files=no",
                                "--", "workbench"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty.strip() else "") if head else None


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


#: placeholder in config paths for the project's shared folder (real data and weights)
SHARED = "${WORKBENCH_SHARED}"


def shared_root() -> Path | None:
    """The shared folder (``WORKBENCH_SHARED``, else ``../shared`` beside a checkout), present or not."""
    env = os.environ.get("WORKBENCH_SHARED")
    if env:
        return Path(env).expanduser()
    if _CHECKOUT is not None:
        return _CHECKOUT.parent / "shared"
    return None


def resolve_path(value: str | os.PathLike | None) -> str | None:
    """A config path as a real path: ``${WORKBENCH_SHARED}`` expanded, ``~`` expanded.

    Presets keep the placeholder (so building a preset reads no file system and ``config.json``
    stays portable); the engine resolves paths when a run starts.

    Raises:
        ConfigError: the path uses ``${WORKBENCH_SHARED}`` but no shared folder is known.
    """
    if value is None:
        return None
    text = str(value)
    if SHARED in text:
        root = shared_root()
        if root is None:
            from workbench.errors import ConfigError

            raise ConfigError(f"{text!r} needs the shared folder: set WORKBENCH_SHARED=/path/to/shared")
        text = text.replace(SHARED, str(root))
    return str(Path(text).expanduser())
