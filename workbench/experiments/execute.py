"""Running one notebook: papermill with checked parameters, where notebooks are found, and one attempt
of a sweep point (its record). :mod:`.sweep` runs many; :mod:`.executors` decides where.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import time
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, MissingFileError
from workbench.paths import resolve_path
from workbench.experiments.grids import plain_value

# ----------------------------------------------------------------------------- running notebooks

def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell: ``{name: default source}``.

    Raises:
        FileNotFoundError: no such notebook.
    """
    import papermill as pm

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"notebook not found: {path}")
    return {name: info.get("default") for name, info in pm.inspect_notebook(str(path)).items()}


def unknown_parameter(path: str | os.PathLike, name: str, declared: Mapping[str, Any] | Sequence[str]) -> str:
    """The message for a parameter the notebook ``path`` does not declare, with the closest declared name
    when one is close."""
    from workbench.config import did_you_mean

    hint = did_you_mean(name, list(declared)) if declared else "; (none: it has no cell tagged parameters)"
    return f"{Path(path).name} declares no parameter {name!r}{hint.replace('; known:', '; its parameters:')}"


def check_params(path: Path, params: Mapping[str, Any], declared: Mapping[str, Any]) -> None:
    """Raises ConfigError naming the first parameter of ``params`` that ``path`` does not declare."""
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(unknown_parameter(path, unknown[0], declared)
                          + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))


_PATH_SUFFIXES = ("_dir", "_checkpoint", "_root", "_path", "_file")


def absolute_paths(params: Mapping[str, Any]) -> dict[str, Any]:
    """Relative paths become absolute from here (the notebook runs in its own folder).

    Parameters named ``*_dir`` always (a folder may not exist yet); ``*_checkpoint``, ``*_root``,
    ``*_path``, ``*_file`` when the path exists from here.
    """
    out = dict(params)
    for key, value in params.items():
        if key.endswith(_PATH_SUFFIXES) and isinstance(value, (str, os.PathLike)) and str(value):
            p = Path(value).expanduser()
            if not p.is_absolute() and (key.endswith("_dir") or p.exists()):
                out[key] = str(p.resolve())
    return out


# ----------------------------------------------------------------------------- where things are

#: set for the kernel while :func:`run_notebook` executes a notebook: that notebook's path
NOTEBOOK_ENV = "WORKBENCH_NOTEBOOK"


class NotebookParameterError(ConfigError):
    """A bad value in a notebook's parameters cell.

    IPython shows it as one line (``_render_traceback_``), so the failed cell of a notebook (and the
    papermill error, and a sweep point's ``error``) starts with what to fix, not a traceback.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"NotebookParameterError: {self}"]


def check_choices(parameter: str, values: Sequence[Any], allowed: Iterable[Any]) -> None:
    """Every value of a list parameter (``variants``, ``rows`` ...) must be one of ``allowed``.

    Raises:
        NotebookParameterError: naming the parameter, the unknown values and the choices.

    Example:
        >>> check_choices("variants", ["full"], LOSS_ABLATION)
    """
    allowed = list(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise NotebookParameterError(f"{parameter}: unknown {', '.join(map(repr, unknown))}; choose from "
                                     f"{', '.join(map(repr, allowed))}")


def repo_root() -> Path:
    """The repository root (the checkout holding ``workbench/``); the current folder for an installed
    package."""
    from workbench.paths import checkout_root

    return checkout_root() or Path.cwd()


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` from the repository root where it lies under it (what a committed file may say), else as given."""
    try:
        return Path(path).resolve().relative_to(repo_root().resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def repo_path(value: str | os.PathLike | None) -> Path | None:
    """A path from a notebook's parameters: absolute as given, relative ones from the repository root
    (wherever the kernel was started), ``~`` and ``${WORKBENCH_SHARED}`` (the presets' data roots)
    expanded; None, ``""`` and ``"none"`` are None.

    Example:
        >>> repo_path("runs/x") == repo_root() / "runs" / "x"
        True
    """
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    path = Path(resolve_path(value))
    return path if path.is_absolute() else Path(os.path.normpath(repo_root() / path))


def notebook_folders() -> list[Path]:
    """Where a notebook looks for the notebooks it names, in order: its own folder (known when
    :func:`run_notebook` or JupyterLab started the kernel), the kernel's working folder, and the
    checkout's ``notebooks/``."""
    folders = []
    for env in (NOTEBOOK_ENV, "JPY_SESSION_NAME"):
        value = os.environ.get(env)
        if value and Path(value).suffix == ".ipynb" and Path(value).is_absolute():
            folders.append(Path(value).parent)
    folders += [Path.cwd(), repo_root() / "notebooks"]
    unique: list[Path] = []
    for folder in folders:
        if folder.resolve() not in [f.resolve() for f in unique]:
            unique.append(folder)
    return unique


def resolve_notebook(name: str | os.PathLike, parameter: str = "train_notebook") -> Path:
    """The absolute path of a notebook named in a parameters cell (``train_notebook``).

    A relative name is looked up in :func:`notebook_folders`: the calling notebook's own folder first,
    so ``"03_train_mar.ipynb"`` finds its neighbour whether papermill runs from the repository root,
    from ``notebooks/`` or anywhere else.

    Raises:
        NotebookParameterError: no such notebook, naming every absolute path tried.
    """
    path = Path(name).expanduser()
    tried = [path] if path.is_absolute() else [(folder / path).resolve() for folder in notebook_folders()]
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    raise NotebookParameterError(f"{parameter} = {str(name)!r}: notebook not found; tried "
                                 + ", ".join(str(t) for t in tried))


def run_notebook(path: str | os.PathLike, params: Mapping[str, Any] | None, out_dir: str | os.PathLike, *,
                 kernel_name: str = "python3", timeout: float | None = None, progress: bool = False,
                 as_given: bool = False) -> Path:
    """Execute a notebook with papermill into ``out_dir/<notebook name>``.

    The kernel runs in the notebook's own folder (as in JupyterLab), so ``"03_train_mar.ipynb"``
    in a notebook refers to its neighbour. When the notebook declares an ``out_dir`` parameter and
    ``params`` sets none, it receives ``out_dir`` (absolute), so its runs land beside the executed
    notebook.

    Args:
        path: the notebook to run.
        params: values for its ``parameters`` cell (every name must be declared there).
        out_dir: folder for the executed notebook (created).
        kernel_name: Jupyter kernel.
        timeout: per-cell timeout in seconds (None: no limit).
        progress: papermill's per-cell progress bar.
        as_given: pass the parameters as they are (relative paths stay relative: the notebooks read them
            from the repository root) and add no ``out_dir``: the executed notebook then names no folder
            of this machine (:func:`workbench.experiments.render.render_notebook`).

    Returns:
        The executed notebook's path.

    Raises:
        ValueError: a parameter the notebook does not declare.
        papermill.PapermillExecutionError: a cell raised; the executed notebook is written up to
            that cell.
    """
    import papermill as pm

    path = Path(path).resolve()
    declared = notebook_parameters(path)
    params = dict(params or {}) if as_given else absolute_paths(dict(params or {}))
    check_params(path, params, declared)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if "out_dir" in declared and params.get("out_dir") is None and not as_given:
        params["out_dir"] = str(out_dir)
    output = out_dir / path.name
    # The kernel's own log (start-up warnings, and "KeyboardInterrupt caught in kernel" when
    # jupyter_client interrupts it before shutting it down) would land in the output of a notebook
    # that runs a sweep; cell errors reach papermill through the kernel's messages, not its log.
    engine_kwargs: dict[str, Any] = {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]}
    if timeout is not None:
        engine_kwargs["execution_timeout"] = timeout
    previous = os.environ.get(NOTEBOOK_ENV)
    os.environ[NOTEBOOK_ENV] = str(path)  # the kernel inherits it: resolve_notebook finds neighbours
    try:
        pm.execute_notebook(str(path), str(output), parameters={k: plain_value(v) for k, v in params.items()},
                            kernel_name=kernel_name, cwd=str(path.parent), progress_bar=progress,
                            log_output=False, **engine_kwargs)
    finally:
        if previous is None:
            os.environ.pop(NOTEBOOK_ENV, None)
        else:
            os.environ[NOTEBOOK_ENV] = previous
    return output


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_of(err: BaseException) -> tuple[str, str]:
    """A one-line error and the tail of its traceback (ANSI colours removed)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        message = f"{err.ename}: {_ANSI.sub('', str(err.evalue))}"
        tb = _ANSI.sub("", "\n".join(err.traceback or []))
    else:
        message = f"{type(err).__name__}: {err}"
        tb = "".join(_traceback.format_exception(type(err), err, err.__traceback__))
    lines = tb.rstrip().splitlines()
    return message.strip(), "\n".join(lines[-40:])[-6000:]


def attempt(nb_path: Path, params: Mapping[str, Any], point_dir: Path, *, kernel_name: str = "python3",
             timeout: float | None = None) -> dict[str, Any]:
    """One attempt of a sweep point, here: its record (``state`` done | failed, ``error``, ``traceback``,
    ``started``, ``finished``, ``seconds``, ``host``, ``pid``). KeyboardInterrupt goes through."""
    started = time.time()
    record: dict[str, Any] = {"started": now(), "host": socket.gethostname(), "pid": os.getpid(),
                              "error": None, "traceback": None}
    try:
        run_notebook(nb_path, params, point_dir, kernel_name=kernel_name, timeout=timeout)
        record["state"] = "done"
    except Exception as err:  # noqa: BLE001 - a failing point is recorded, the sweep goes on
        message, tb = _error_of(err)
        record |= {"state": "failed", "error": message, "traceback": tb}
    return record | {"finished": now(), "seconds": round(time.time() - started, 3)}
