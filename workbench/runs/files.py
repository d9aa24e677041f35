"""Atomic file writes, checkpoints and RNG state: the storage under :class:`~workbench.runs.RunFolder`.

Every file is written to a temporary file in the same folder and renamed into place, so a crash
leaves either the old or the new file, never half of one; new files get the process umask's mode.
Checkpoints hold only tensors, numbers, strings, lists and dicts: they load with
``torch.load(weights_only=True)``, and only one whose model tensors are all finite is written or read.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that need it: reading a run folder does not
    import torch

from workbench import faults
from workbench.errors import CheckpointError
from workbench.paths import runs_root


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the errors of a write that found no room: a full disk, a quota reached
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``.

    Raises:
        OSError: the write failed (a full disk: ``errno.ENOSPC``); its ``filename`` is ``path``, and the
            temporary file is gone, so the space it took is free again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files follow the umask
        with os.fdopen(fd, "wb") as fh:
            faults.write_point(path.name)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a failed write names the file it was for, not nothing
        raise


def overwrite_in_place(path: str | Path, text: str) -> None:
    """Rewrite an existing small file in place (no temporary file): the last resort on a full disk,
    where the blocks the file already holds take the new text; not atomic, so only for a file whose
    loss is repaired (``run.json``).

    Raises:
        OSError: it could not be written.
    """
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON text (numpy/tensors converted, NaN → null)."""
    return json.dumps(_jsonable(obj), indent=2) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (numpy/tensors converted, NaN → null)."""
    atomic_write_text(path, json_text(obj))


def write_csv(path: str | Path, rows: Iterable[dict]) -> None:
    """Atomically write dict rows as CSV (columns: union of keys in first-seen order)."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _jsonable(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_csv`; whole numbers written without a point (``epoch``,
    ``step``) come back as ints, other numbers as floats, empty cells as NaN."""
    def value(text: str):
        if text == "":
            return float("nan")
        if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
            return int(text)
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating tensors of a state dict (nested dicts walked) holding NaN or inf."""
    import torch

    bad: list[str] = []
    for key, value in state.items():
        if isinstance(value, dict):
            bad += [f"{key}.{name}" for name in nonfinite_tensors(value)]
        elif torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(str(key))
    return bad


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename: the previous checkpoint survives a crash.

    Raises:
        CheckpointError: ``state["model"]`` holds a non-finite tensor (nothing is written: the file
            on disk stays the last good checkpoint).
    """
    import torch

    bad = nonfinite_tensors(state.get("model", {}))
    if bad:
        raise CheckpointError(f"not writing {path}: {len(bad)} model tensor(s) hold NaN or inf "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: "str | torch.device" = "cpu") -> dict:
    """Load a workbench checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: one line naming the path when it is missing, unreadable (empty, truncated,
            not a torch file), not a workbench checkpoint (no ``model``), or holds non-finite weights.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises RuntimeError, EOFError, UnpicklingError, KeyError ... for bad files
        # (torch's message suggests weights_only=False, which would run what a crafted pickle holds: not repeated)
        size = path.stat().st_size
        what = "empty" if size == 0 else f"{size} bytes: truncated, or not a weights file"
        raise CheckpointError(f"{path} is not a readable checkpoint ({what})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a workbench checkpoint (no 'model' state dict)")
    bad = nonfinite_tensors(state["model"])
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights in {len(bad)} tensor(s) "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); it cannot be used")
    return state


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain values."""
    import torch

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    import ast

    import torch

    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    version, internal, gauss = ast.literal_eval(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_dir(kind: str, name: str | None = None, root: str | Path | None = None) -> Path:
    """A fresh folder ``<runs_root>/<YYYYmmdd-HHMMSS>-<kind>[-name]`` (suffixed if it exists)."""
    root = Path(root) if root is not None else runs_root()
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{kind}" + (f"-{name}" if name else "")
    path = root / stem
    k = 1
    while path.exists():
        k += 1
        path = root / f"{stem}-{k}"
    path.mkdir(parents=True)
    return path
