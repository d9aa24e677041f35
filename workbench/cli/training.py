"""The training-side commands: ``data``, ``pretrain``/``train`` (resumable), ``evaluate``/``extract``
and ``demo``."""
from __future__ import annotations

import argparse
import logging

from workbench.cli.common import (
    CLIError,
    add_config_options,
    config_from_args,
    print_main,
    print_metrics,
    print_tensorboard,
)
from workbench.data.datasets import READERS, load_dataset  # no torch: the parser and its errors stay fast
from workbench.threads import configure_threads

log = logging.getLogger("workbench.cli")


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


def add_data(sub: argparse._SubParsersAction) -> None:
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


def _resolve_resume(args: argparse.Namespace) -> None:
    if args.resume and not args.run_dir:
        raise CLIError("--resume needs --run-dir (the run folder to continue)")


def _names_a_start(args: argparse.Namespace, stage: str) -> bool:
    """Whether the command line says how to start a run (stage 2: ``--init``/``--no-pretraining``;
    stage 1: ``--preset``), so that ``--resume`` may start one where none has started (start or
    continue: what a recipe's command does)."""
    if stage == "mar":
        return args.init is not None or bool(args.no_pretraining)
    return args.preset is not None


def _resumable(args: argparse.Namespace, stage: str):
    """With ``--resume``, the run folder when a run started there (its ``config.json`` is written, a
    checkpoint or not); None without ``--resume``, or when no run started there and the command names
    one to start.

    Raises:
        CLIError: ``--resume`` alone and nothing to resume in the folder.
    """
    from workbench.runs import RunFolder

    _resolve_resume(args)
    folder = RunFolder(args.run_dir) if args.resume else None
    if folder is None or folder.has_config:
        return folder
    if not _names_a_start(args, stage):
        raise CLIError(f"nothing to resume in {folder.path} ({_why_empty(folder)}); check the path, or drop "
                       "--resume to start a run there")
    log.info("no run in %s yet: starting one", folder.path)
    return None


def _why_empty(folder) -> str:
    if not folder.path.exists():
        return "no such folder"
    if not folder.path.is_dir():
        return "a file, not a run folder"
    return f"no run started there: no {folder.CONFIG}"


def _resume(args: argparse.Namespace, folder, stage: str):
    """``--resume``: everything from the run folder (config, stage, start checkpoint) plus any option
    given now; a difference is refused (another stage, another ``--init``, another configuration)."""
    from workbench.engine import check_stage, resume_run

    check_stage(folder, stage)
    if stage == "mar":
        _check_start(args, folder)
    return resume_run(folder.path, config_from_args(args, saved=folder.config()), stage=stage)


def _check_start(args: argparse.Namespace, folder) -> None:
    """``train --resume`` with ``--init`` or ``--no-pretraining``: the run must have started from that.

    Raises:
        RunFolderError: it started from another checkpoint (or from none, or from one).
    """
    from workbench.errors import RunFolderError

    if args.init is None and not args.no_pretraining:
        return
    started = folder.record().start_checkpoint
    if not _same_file(started, args.init):
        none = "no stage-1 checkpoint (--no-pretraining)"
        raise RunFolderError(f"{folder.path} started from {started or none}, not {args.init or none}; drop "
                             "--init/--no-pretraining to resume it, or choose another run folder")


def _same_file(a, b) -> bool:
    """Whether two checkpoint paths (None: no checkpoint) name the same file."""
    import os
    from pathlib import Path

    if a is None or b is None:
        return a is None and b is None
    if Path(a).resolve() == Path(b).resolve():
        return True
    return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)


def _stage1_epochs(args: argparse.Namespace) -> None:
    """In ``pretrain``, ``--epochs N`` means stage 1's epochs (the only ones it trains), as
    ``--pretrain-epochs N`` does; both with different values are refused."""
    if args.epochs is None:
        return
    if args.pretrain_epochs is not None and str(args.pretrain_epochs) != str(args.epochs):
        raise CLIError(f"pretrain: --epochs {args.epochs} and --pretrain-epochs {args.pretrain_epochs} disagree; in "
                       "pretrain both name stage 1's epochs: give one")
    args.pretrain_epochs, args.epochs = args.epochs, None


def _cmd_pretrain(args: argparse.Namespace) -> int:
    _stage1_epochs(args)
    if (folder := _resumable(args, "pretrain")) is not None:
        result = _resume(args, folder, "pretrain")
    else:
        cfg = config_from_args(args)  # a bad --set is reported before torch loads
        from workbench.engine import pretrain

        result = pretrain(cfg, args.run_dir, resume=args.resume)
    print_metrics("stage 1 (direct transfer to the target)", result.metrics)
    print_main(f"run folder: {result.run_dir}")
    print_tensorboard(result.run_dir)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if (folder := _resumable(args, "mar")) is not None:
        result = _resume(args, folder, "mar")
    else:
        cfg = config_from_args(args)  # a bad --set is reported before anything else (and before torch loads)
        if args.init is None and not args.no_pretraining:
            raise CLIError("train needs --init STAGE1_CHECKPOINT (or --no-pretraining for the ablation)")
        from workbench.engine import train_mar

        result = train_mar(cfg, args.run_dir, init_checkpoint=args.init, resume=args.resume)
    if "initial" in result.metrics:
        print_metrics("before joint training", result.metrics["initial"])
    print_metrics("after joint training", result.metrics)
    print_main(f"run folder: {result.run_dir}")
    print_tensorboard(result.run_dir)
    return 0


def add_training(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser("pretrain", help="stage 1: backbone + agents on the labeled reference set (L_AL)")
    add_config_options(pre, helps={"epochs": "stage-1 epochs (here the same as --pretrain-epochs)",
                                   "pretrain_epochs": "stage-1 epochs (--epochs says the same here)"})
    pre.add_argument("--run-dir", default=None, help="run folder (default: runs/<time>-pretrain)")
    pre.add_argument("--resume", action="store_true",
                     help="continue the run in --run-dir (with --preset: start one there if none started)")
    pre.set_defaults(func=_cmd_pretrain)
    tr = sub.add_parser("train", help="stage 2: joint MAR training on the unlabeled target set")
    add_config_options(tr)
    tr.add_argument("--init", default=None, help="stage-1 checkpoint.pt to start from")
    tr.add_argument("--no-pretraining", action="store_true", help="start without a stage-1 checkpoint")
    tr.add_argument("--run-dir", default=None, help="run folder (default: runs/<time>-mar)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --run-dir (with --init: start one there if none started)")
    tr.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- evaluate / extract

def _model_for(args: argparse.Namespace):
    from workbench.builders import build_model, load_model

    if args.checkpoint:
        return load_model(args.checkpoint, "cpu")
    cfg = config_from_args(args)
    return build_model(cfg.model, num_agents=1).eval()


def _image_size(args: argparse.Namespace) -> tuple[int, int]:
    from workbench.config import from_params

    if args.image_size:
        return from_params({"image_size": args.image_size}).data.image_size
    if args.checkpoint:
        from pathlib import Path

        from workbench.runs import RunFolder

        saved = RunFolder(Path(args.checkpoint).parent).config_or_none()
        if saved is not None:
            return saved.data.image_size
    return config_from_args(args).data.image_size


def _eval_model(args: argparse.Namespace, device):
    """The model to evaluate on ``device``, and whether it runs in channels_last (on CUDA, and with
    ``--amp``'s bf16 on a CPU, as the trainer does)."""
    import torch

    net = _model_for(args).to(device)
    channels_last = device.type == "cuda" or bool(args.amp)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, channels_last


def _check_eval_inputs(args: argparse.Namespace) -> None:
    """What ``evaluate`` and ``extract`` are given, checked before torch loads: the checkpoint first (the
    thing a user most often gets wrong), then the dataset (one line each, not argparse's usage block)."""
    from pathlib import Path

    from workbench.errors import CheckpointError

    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CheckpointError(f"no checkpoint at {args.checkpoint}" + (
            " (a folder: name its checkpoint.pt)" if Path(args.checkpoint).is_dir() else ""))
    if not args.dataset:
        raise CLIError(f"{args.command} needs --dataset NAME (one of {', '.join(READERS)}; --root FOLDER for its "
                       "files)")
    config_from_args(args)  # a bad --set or preset value, before torch loads


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _check_eval_inputs(args)
    from workbench.distributed import resolve_device
    from workbench.evaluation import evaluate
    from workbench.runs import write_json

    device = resolve_device(args.device or "auto")
    configure_threads(config_from_args(args).train.threads)
    net, channels_last = _eval_model(args, device)  # a bad checkpoint is refused before the dataset is read
    split = load_dataset(args.dataset, args.root)
    metrics = evaluate(net, split, image_size=_image_size(args), batch_size=args.batch_size, device=device,
                       amp=bool(args.amp), channels_last=channels_last, flip=args.flip, rerank=args.rerank,
                       metric=args.metric)
    print_metrics(f"{args.dataset} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'backbone weights only'})",
                   metrics)
    if args.out:
        write_json(args.out, {k: v for k, v in metrics.items() if k != "distmat"})
        print(f"wrote {args.out}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    _check_eval_inputs(args)
    if not args.out:
        raise CLIError("extract needs --out FILE (.pt: a dict; .npy: one split; .npz)")
    import io

    import numpy as np
    import torch

    from workbench.data import build_test_loader
    from workbench.distributed import resolve_device
    from workbench.evaluation import extract_features
    from workbench.runs import atomic_write_bytes

    split = load_dataset(args.dataset, args.root)
    parts = ("train", "query", "gallery") if args.split == "all" else (args.split,)
    device = resolve_device(args.device or "auto")
    configure_threads(config_from_args(args).train.threads)
    net, channels_last = _eval_model(args, device)
    out: dict = {}
    for part in parts:
        samples = getattr(split, part)
        loader = build_test_loader(samples, image_size=_image_size(args), batch_size=args.batch_size)
        feats, pids, camids = extract_features(net, loader, device=device, flip=args.flip, amp=bool(args.amp),
                                               channels_last=channels_last)
        out[part] = {"features": feats, "pids": torch.as_tensor(pids), "camids": torch.as_tensor(camids),
                     "paths": [s.path for s in samples]}
    buf = io.BytesIO()
    if args.out.endswith(".npy") or args.out.endswith(".npz"):
        if len(parts) == 1 and args.out.endswith(".npy"):
            np.save(buf, out[parts[0]]["features"].numpy())
        else:
            np.savez(buf, **{f"{p}_{k}": np.asarray(v) for p in parts for k, v in out[p].items()})
    else:
        torch.save(out, buf)
    atomic_write_bytes(args.out, buf.getvalue())
    shapes = ", ".join(f"{p}: {tuple(out[p]['features'].shape)}" for p in parts)
    print(f"wrote {shapes} to {args.out}")
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    for name, help_text, func in (
        ("evaluate", "rank-1/5/10, mAP (both AP conventions), mINP of a checkpoint on a dataset", _cmd_evaluate),
        ("extract", "features of a checkpoint on a dataset's splits to .pt / .npy / .npz", _cmd_extract),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--checkpoint", default=None,
                       help="checkpoint.pt (default: the configured backbone with its pretrained weights)")
        p.add_argument("--dataset", default=None, help=f"one of {', '.join(READERS)} (required)")
        p.add_argument("--root", default=None, help="dataset folder")
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--flip", action="store_true", help="average with the mirrored image's feature")
        add_config_options(p)
        if name == "evaluate":
            p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, λ=0.3)")
            p.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
            p.add_argument("--out", default=None, help="write the metrics to this JSON file")
        else:
            p.add_argument("--split", default="all", choices=("train", "query", "gallery", "all"))
            p.add_argument("--out", default=None, help="output file: .pt (dict), .npy (one split) or .npz (required)")
        p.set_defaults(func=func)


# ----------------------------------------------------------------------------- demo

def _cmd_demo(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    cfg = config_from_args(args, default_preset="demo")  # a bad --set is reported before torch loads
    from workbench.engine import pretrain, train_mar
    from workbench.runs import new_run_dir

    started = time.perf_counter()
    root = Path(args.run_dir) if args.run_dir else new_run_dir("demo")
    print(f"demo: synthetic target + reference domains, {cfg.model.backbone}, {cfg.data.image_size[0]}x"
          f"{cfg.data.image_size[1]}, {cfg.train.pretrain_epochs} + {cfg.train.epochs} epochs → {root}")
    from workbench.builders import load_domains

    target, reference = load_domains(cfg.data)
    print(target.describe())
    print(f"reference set: {len(reference)} images, {len({s.pid for s in reference})} identities (agents)")
    stage1 = pretrain(cfg, root / "pretrain", resume=args.resume)
    train_mar(cfg, root / "mar", init_checkpoint=stage1.checkpoint, resume=args.resume)
    from workbench.experiments.report import report

    print()
    print(report(root))  # the same table as `python -m workbench report RUN_FOLDER`
    from workbench.runs import RunFolder

    print(_demo_noise(cfg, RunFolder(root / "mar").metrics()))
    print(f"\nrun folder: {root}  ({time.perf_counter() - started:.0f} s)")
    print_tensorboard(root)  # both stages, one after the other
    return 0


def _demo_noise(cfg, metrics: dict) -> str:
    """What one demo's difference is worth: the queries it is scored on and, for the default demo, what stage 2
    did over seeds (the committed ``results/demo/seeds.csv``, made by ``scripts/demo_over_seeds.py``)."""
    import csv
    import statistics

    from workbench.experiments.execute import repo_root

    queries = metrics.get("num_valid") or metrics.get("num_query")
    line = (f"One run at this scale is noisy: {queries} queries, so one query is {100 / queries:.1f} points of rank-1."
            if queries else "")
    seeds = repo_root() / "results" / "demo" / "seeds.csv"
    if cfg.preset == "demo" and seeds.is_file():
        rows = list(csv.DictReader(open(seeds)))
        start = [100 * float(r["stage1_mAP"]) for r in rows]
        delta = [100 * float(r["delta_mAP"]) for r in rows]
        if len(delta) > 1:
            line += (f" Over {len(rows)} seeds ({seeds.relative_to(repo_root()).as_posix()}) stage 1 ends at "
                     f"{min(start):.1f}-{max(start):.1f} mAP and stage 2 adds {statistics.mean(delta):+.1f} ± "
                     f"{statistics.stdev(delta):.1f}, more than 0 at {sum(d > 0 for d in delta)} of them "
                     "(results/demo/seeds.txt: the interval).")
    return line


def add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic dataset (minutes on a CPU)")
    add_config_options(demo)
    demo.add_argument("--run-dir", default=None, help="folder for both stages (default: runs/<time>-demo)")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo in --run-dir")
    demo.set_defaults(func=_cmd_demo)


