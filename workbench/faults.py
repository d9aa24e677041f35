"""Fail points: make a process die or a write fail at a named point, for the fault-injection tests.

A fail point does nothing unless the environment asks for it, so production runs pay one dict
lookup per write. ``WORKBENCH_FAILPOINT`` holds ``ACTION@POINT[#N]``:

* ``POINT`` is a file name (``checkpoint.pt``, ``history.csv`` ...; :func:`write_point` is called
  by every atomic write just before the bytes go out) or an event name passed to :func:`point`
  (``step``: after each training step; ``epoch-end``: an epoch trained, nothing of it written;
  ``after-checkpoint``: its checkpoint renamed into place; ``projector``: before the TensorBoard
  projector files of a finished run).
* ``ACTION`` is ``kill`` (SIGKILL to this process: what a power cut or the OOM killer does),
  ``interrupt`` (SIGINT: what Ctrl-C in a terminal sends), ``terminate`` (SIGTERM: what ``kill`` and
  batch schedulers send) or ``enospc`` (the write raises ``OSError(ENOSPC)``, as on a full disk).
* ``#N`` fires at the N-th time the point is reached (1-based; default 1), so a test can cut a run
  after its second checkpoint.

Example:
    >>> import os
    >>> os.environ.get("WORKBENCH_FAILPOINT") is None  # nothing fires by default
    True
"""
from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "WORKBENCH_FAILPOINT"
_seen: Counter = Counter()
_spec: list[str | None] = [None]  # the spec the counts belong to: a new spec starts counting again


def reset() -> None:
    """Forget how often each point was reached (tests arming the same spec twice in one process)."""
    _seen.clear()


def _armed(name: str) -> str | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    if spec != _spec[0]:
        _spec[0] = spec
        reset()
    action, _, target = spec.partition("@")
    where, _, nth = target.partition("#")
    if where != name:
        return None
    _seen[name] += 1
    return action if _seen[name] == int(nth or 1) else None


def _fire(action: str, name: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action in ("interrupt", "terminate"):  # the handler runs at the next bytecode
        os.kill(os.getpid(), signal.SIGINT if action == "interrupt" else signal.SIGTERM)
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (fail point {name})")
    raise ValueError(f"{ENV}: unknown action {action!r} (kill | interrupt | terminate | enospc)")


def point(name: str) -> None:
    """An event in a run's life (``epoch-end``, ``after-checkpoint`` ...): fire if armed for it."""
    if (action := _armed(name)) is not None:
        _fire(action, name)


def write_point(file_name: str) -> None:
    """Called by every atomic write with the destination's file name, before the data is written."""
    point(file_name)
