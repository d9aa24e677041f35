"""Command-line interface: ``python -m workbench <command>`` (also installed as ``workbench``).

Commands: ``demo`` (the README's main job), ``data`` (generate the synthetic set, describe a
dataset), and the training/evaluation commands added by the engine.
"""
from __future__ import annotations

import argparse
import logging
import sys
from workbench.data.datasets import READERS, DatasetError, load_dataset

log = logging.getLogger("workbench")


class CLIError(Exception):
    """A bad argument: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- data

def _cmd_data_synthetic(args: argparse.Namespace) -> int:
    from workbench.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(seed=args.seed, target_train_ids=args.target_train_ids,
                         target_test_ids=args.target_test_ids, target_cameras=args.cameras,
                         reference_ids=args.reference_ids)
    generate(args.out, spec)
    print(f"wrote the synthetic dataset to {args.out}")
    for name in ("synthetic", "synthetic_reference"):
        print(load_dataset(name, args.out).describe())
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    split = load_dataset(args.dataset, args.root)
    print(split.describe())
    if args.reference:
        ref = split.reference()
        print(f"  as a reference set: {len(ref)} images, {len({s.pid for s in ref})} identities (agents), "
              f"{len({s.camid for s in ref})} cameras")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="generate the synthetic dataset or describe a dataset")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{synthetic,info}")
    syn = dsub.add_parser("synthetic", help="write the synthetic target (Market layout) and reference "
                                            "(MSMT17 layout) domains")
    syn.add_argument("--out", required=True, help="destination folder (must not exist)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--target-train-ids", type=int, default=48)
    syn.add_argument("--target-test-ids", type=int, default=32)
    syn.add_argument("--cameras", type=int, default=4, help="target cameras")
    syn.add_argument("--reference-ids", type=int, default=64)
    syn.set_defaults(func=_cmd_data_synthetic)
    info = dsub.add_parser("info", help="print images, identities and cameras per split")
    info.add_argument("--dataset", required=True, help=f"one of {', '.join(READERS)}")
    info.add_argument("--root", default=None, help="dataset folder (CSV file for csv)")
    info.add_argument("--reference", action="store_true", help="also count it as a reference set")
    info.set_defaults(func=_cmd_data_info)


# ----------------------------------------------------------------------------- demo

def _cmd_demo(args: argparse.Namespace) -> int:
    target = load_dataset("synthetic")
    reference = load_dataset("synthetic_reference")
    print(target.describe())
    print(reference.describe())
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic dataset")
    demo.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench",
        description="ReID workbench: unsupervised person re-identification by soft multilabel learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_demo(sub)
    _add_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (CLIError, DatasetError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
