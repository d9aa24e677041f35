"""Packages whose names load on first use (PEP 562): ``workbench``, ``workbench.data`` and
``workbench.evaluation`` re-export their public names without importing torch until one is used, so
``python -m workbench --help``, argument errors and the experiments' tables answer at once."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict) -> tuple[Callable[[str], Any],
                                                                                      Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` over ``exports`` (``{name: module that defines it}``): a name
    is imported from its module when first read, then kept in the package's ``namespace`` (its globals)."""
    def getattr_(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(namespace.get("__all__", exports))

    return getattr_, dir_
