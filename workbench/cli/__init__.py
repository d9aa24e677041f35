"""Command-line interface: ``python -m workbench <command>`` (also installed as ``workbench``).

Commands: ``demo`` (the README's main job: both stages on the synthetic set), ``pretrain`` and
``train`` (stage 1 and stage 2, resumable with ``--resume``), ``evaluate`` and ``extract`` (a
checkpoint on a dataset), ``data`` (generate the synthetic set, describe a dataset), ``sweep``
(a notebook over a parameter grid) and ``render`` (a notebook executed, as offline HTML). Bad input (the workbench's own error types) is one
``error:`` line with exit status 2; anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from workbench.cli.common import CLIError
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
        return args.func(args)
    except (CLIError, WorkbenchError) as err:  # the input's fault: one line, exit 2
        if args.verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:  # anything else is a bug and keeps its traceback
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    """Leave the torchrun process group cleanly (else the C++ side aborts at exit)."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
