"""Command-line interface: ``python -m workbench <command>`` (also installed as ``workbench``).

Commands: ``demo`` (the README's main job: both stages on the synthetic set), ``pretrain`` and
``train`` (stage 1 and stage 2, resumable with ``--resume``), ``evaluate`` and ``extract`` (a
checkpoint on a dataset), ``data`` (generate the synthetic set, describe a dataset), ``sweep``
(a notebook over a parameter grid) and ``render`` (a notebook executed, as offline HTML). Bad input (the
workbench's own error types) and a full disk are one ``error:`` line with exit status 2; Ctrl-C (and
SIGTERM) one ``interrupted:`` line saying where the run stopped and how to resume it, exit status 130;
anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from workbench.cli.common import CLIError, quiet_disk_full_threads, sigterm_as_interrupt
from workbench.cli.experiments import (
    add_diagnose,
    add_render,
    add_report,
    add_reproduce,
    add_results,
    add_sweep,
    add_zoo,
)
from workbench.cli.training import add_data, add_demo, add_eval, add_training
from workbench.errors import WorkbenchError
from workbench.runs.files import DISK_FULL

__all__ = ["CLIError", "build_parser", "main"]


# ----------------------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    """argparse, with an argument error in two lines (the error, and where the options are listed)
    instead of the whole usage block of a command with twenty options."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m workbench",
        description="ReID workbench: unsupervised person re-identification by soft multilabel learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_demo(sub)
    add_training(sub)
    add_eval(sub)
    add_data(sub)
    add_sweep(sub)
    add_report(sub)
    add_results(sub)
    add_diagnose(sub)
    add_reproduce(sub)
    add_zoo(sub)
    add_render(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        with sigterm_as_interrupt(), quiet_disk_full_threads():
            return args.func(args)
    except (CLIError, WorkbenchError) as err:  # the input's fault: one line, exit 2
        return _one_line("error", err, 2, args.verbose)
    except OSError as err:  # a full disk outside a run's own writes (a run says more: DiskFullError)
        if err.errno not in DISK_FULL:
            raise
        return _one_line("error", f"{err.strerror}: {err.filename or err}; free space and run the command again",
                         2, args.verbose)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: where the run stopped and how to resume it
        return _one_line("interrupted", str(err) or "before anything was written", 130, args.verbose)
    finally:  # anything else is a bug and keeps its traceback
        _shutdown_distributed()


def _one_line(kind: str, message: object, code: int, verbose: bool) -> int:
    """Print ``kind: message`` (with the traceback under ``-v``) and return the exit status."""
    if verbose:
        traceback.print_exc()
    print(f"{kind}: {message}", file=sys.stderr)
    return code


def _shutdown_distributed() -> None:
    """Leave the torchrun process group cleanly (else the C++ side aborts at exit)."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
