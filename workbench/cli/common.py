"""What every command shares: the configuration options (preset, flags, ``--set``), the one-line
error type, and printing on rank 0."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class CLIError(Exception):
    """A bad argument: printed as one line, exit status 2."""


@contextmanager
def quiet_disk_full_threads() -> Iterator[None]:
    """A helper thread (TensorBoard's event writer) that dies of a full disk prints no traceback: its
    error reaches the main thread, which reports the full disk in one line naming the run folder."""
    from workbench.runs import DISK_FULL

    previous = threading.excepthook

    def hook(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's time limit) stops a command as Ctrl-C does: the run records
    itself interrupted and says how to resume, instead of dying mid-epoch with ``run.json`` "running".

    Left alone under torchrun (it stops every rank with SIGTERM and expects them gone), outside the main
    thread, and when the parent chose another handler than the default.
    """
    def terminated(signum, frame):
        raise KeyboardInterrupt

    usable = (threading.current_thread() is threading.main_thread() and os.environ.get("WORLD_SIZE", "1") == "1"
              and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    previous = signal.signal(signal.SIGTERM, terminated) if usable else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- config options

#: convenience flags → config fields (anything else: --set field=value)
FLAGS = {
    "target": "target dataset name (load_dataset)", "target_root": "target dataset folder",
    "reference": "reference dataset name", "reference_root": "reference dataset folder",
    "backbone": "resnet50 | seresnet50 | mobilenet_v2",
    "pretrained": "backbone init: imagenet | PATH | none", "stages": "fused stages, e.g. layer1+layer3+layer4",
    "epochs": "joint-training epochs", "pretrain_epochs": "reference-pretraining epochs",
    "device": "auto | cpu | cuda | cuda:N", "threads": "CPU threads (default: OMP_NUM_THREADS, else the cores idle now)",
    "workers": "DataLoader workers", "seed": "random seed",
    "image_size": "H,W (paper 384,128)",
}


def add_config_options(p: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """The preset, the convenience flags (``helps`` replaces some of their help texts) and ``--set``."""
    from workbench.config import PRESETS

    g = p.add_argument_group("configuration (preset, then flags, then --set)")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS), help="base settings (default: demo)")
    for name, text in FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=(helps or {}).get(name, text))
    g.add_argument("--amp", dest="amp", action="store_true", default=None,
                   help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    g.add_argument("--no-amp", dest="amp", action="store_false")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="write no TensorBoard event files into the run folder")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="any config field, e.g. --set lambda_cml=0 --set use_rj=false (repeatable)")


def config_from_args(args: argparse.Namespace, default_preset: str = "demo", saved=None):
    """The run's config: ``--preset`` (or ``saved``, a resumed run's config, or ``default_preset``),
    then the flags, then ``--set``."""
    from workbench.config import from_params, parse_value, precheck

    params = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "amp", None) is not None:
        params["amp"] = args.amp
    if getattr(args, "tensorboard", None) is not None:
        params["tensorboard"] = args.tensorboard
    for item in getattr(args, "overrides", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise CLIError(f"--set expects FIELD=VALUE, got {item!r}")
        params[key.strip()] = parse_value(value.strip())  # read as YAML, as grids, recipes and notebooks do
    precheck(params)  # a wrong name or value answers before the method plug-ins (and torch) load
    return from_params(params, base=args.preset or saved or default_preset)


# ----------------------------------------------------------------------------- train / pretrain

def print_main(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(text)


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def tensorboard_command(logdir: str | os.PathLike) -> str:
    """``tensorboard --logdir LOGDIR`` as it runs from here: the ``tensorboard`` next to this Python
    (``.venv/bin/tensorboard`` for the checkout's venv when it is not activated), else on PATH."""
    beside = Path(sys.executable).parent / "tensorboard"
    if beside.is_file():
        on_path = shutil.which("tensorboard")
        same = on_path is not None and Path(on_path).resolve() == beside.resolve()
        exe = "tensorboard" if same else _shown(beside)
    else:
        exe = "tensorboard"
    return f"{exe} --logdir {_shown(Path(logdir))}"


def print_tensorboard(logdir: str | os.PathLike) -> None:
    """The last line of a training command: how to see its curves (when it wrote TensorBoard events)."""
    logdir = Path(logdir)
    if any(logdir.glob("tensorboard")) or any(logdir.glob("*/tensorboard")):
        print_main(f"curves: {tensorboard_command(logdir)}  (then http://localhost:6006)")


def print_metrics(title: str, metrics: dict) -> None:
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for all
        return
    from workbench.evaluation.metrics import format_metrics

    print(f"{title}: {format_metrics(metrics)}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value

