"""Command-line interface: ``python -m workbench <command>`` (also installed as ``workbench``).

Commands: ``demo`` (the README's main job: both stages on the synthetic set), ``pretrain`` and
``train`` (stage 1 and stage 2, resumable with ``--resume``), ``evaluate`` and ``extract`` (a
checkpoint on a dataset), ``data`` (generate the synthetic set, describe a dataset) and ``sweep``
(a notebook over a parameter grid). Bad input (the workbench's own error types) is one
``error:`` line with exit status 2; anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from workbench.data.datasets import READERS, load_dataset
from workbench.errors import WorkbenchError

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


# ----------------------------------------------------------------------------- config options

#: convenience flags → config fields (anything else: --set field=value)
_FLAGS = {
    "target": "target dataset name (load_dataset)", "target_root": "target dataset folder",
    "reference": "reference dataset name", "reference_root": "reference dataset folder",
    "backbone": "resnet50 | seresnet50 | mobilenet_v2",
    "pretrained": "backbone init: imagenet | PATH | none", "stages": "fused stages, e.g. layer1+layer3+layer4",
    "epochs": "joint-training epochs", "pretrain_epochs": "reference-pretraining epochs",
    "device": "auto | cpu | cuda | cuda:N", "workers": "DataLoader workers", "seed": "random seed",
    "image_size": "H,W (paper 384,128)",
}


def _add_config_options(p: argparse.ArgumentParser) -> None:
    from workbench.config import PRESETS

    g = p.add_argument_group("configuration (preset, then flags, then --set)")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS), help="base settings (default: demo)")
    for name, text in _FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=text)
    g.add_argument("--amp", dest="amp", action="store_true", default=None,
                   help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    g.add_argument("--no-amp", dest="amp", action="store_false")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="write no TensorBoard event files into the run folder")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="any config field, e.g. --set lambda_cml=0 --set use_rj=false (repeatable)")


def _config_from_args(args: argparse.Namespace, default_preset: str = "demo", saved=None):
    """The run's config: ``--preset`` (or ``saved``, a resumed run's config, or ``default_preset``),
    then the flags, then ``--set``."""
    from workbench.config import from_params

    params = {name: getattr(args, name) for name in _FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "amp", None) is not None:
        params["amp"] = args.amp
    if getattr(args, "tensorboard", None) is not None:
        params["tensorboard"] = args.tensorboard
    for item in getattr(args, "overrides", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise CLIError(f"--set expects FIELD=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return from_params(params, base=args.preset or saved or default_preset)


def _resolve_resume(args: argparse.Namespace) -> None:
    if args.resume and not args.run_dir:
        raise CLIError("--resume needs --run-dir (the run folder to continue)")


def _resumable(args: argparse.Namespace):
    """With ``--resume``, the run folder when a run started there (its ``config.json`` is written, a
    checkpoint or not), else None."""
    from workbench.runs import RunFolder

    _resolve_resume(args)
    folder = RunFolder(args.run_dir) if args.resume else None
    return folder if folder is not None and folder.has_config else None


def _resume(args: argparse.Namespace, folder):
    """``--resume``: everything from the run folder (config, stage, start checkpoint) plus any option
    given now; a difference is refused."""
    from workbench.engine import resume_run

    return resume_run(folder.path, _config_from_args(args, saved=folder.config()))


# ----------------------------------------------------------------------------- train / pretrain

def _print_main(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(text)


def _print_metrics(title: str, metrics: dict) -> None:
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for all
        return
    from workbench.evaluation.metrics import format_metrics

    print(f"{title}: {format_metrics(metrics)}")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from workbench.engine import pretrain

    if (folder := _resumable(args)) is not None:
        result = _resume(args, folder)
    else:
        result = pretrain(_config_from_args(args), args.run_dir, resume=args.resume)
    _print_metrics("stage 1 (direct transfer to the target)", result.metrics)
    _print_main(f"run folder: {result.run_dir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from workbench.engine import train_mar

    if (folder := _resumable(args)) is not None:
        result = _resume(args, folder)
    else:
        if args.init is None and not args.no_pretraining:
            raise CLIError("train needs --init STAGE1_CHECKPOINT (or --no-pretraining for the ablation)")
        result = train_mar(_config_from_args(args), args.run_dir, init_checkpoint=args.init, resume=args.resume)
    if "initial" in result.metrics:
        _print_metrics("before joint training", result.metrics["initial"])
    _print_metrics("after joint training", result.metrics)
    _print_main(f"run folder: {result.run_dir}")
    return 0


def _add_training(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser("pretrain", help="stage 1: backbone + agents on the labeled reference set (L_AL)")
    _add_config_options(pre)
    pre.add_argument("--run-dir", default=None, help="run folder (default: runs/<time>-pretrain)")
    pre.add_argument("--resume", action="store_true", help="continue the checkpoint in --run-dir")
    pre.set_defaults(func=_cmd_pretrain)
    tr = sub.add_parser("train", help="stage 2: joint MAR training on the unlabeled target set")
    _add_config_options(tr)
    tr.add_argument("--init", default=None, help="stage-1 checkpoint.pt to start from")
    tr.add_argument("--no-pretraining", action="store_true", help="start without a stage-1 checkpoint")
    tr.add_argument("--run-dir", default=None, help="run folder (default: runs/<time>-mar)")
    tr.add_argument("--resume", action="store_true", help="continue the checkpoint in --run-dir")
    tr.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- evaluate / extract

def _model_for(args: argparse.Namespace):
    from workbench.builders import build_model, load_model

    if args.checkpoint:
        return load_model(args.checkpoint, "cpu")
    cfg = _config_from_args(args)
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
    return _config_from_args(args).data.image_size


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from workbench.distributed import resolve_device
    from workbench.evaluation import evaluate
    from workbench.runs import write_json

    device = resolve_device(args.device or "auto")
    net = _model_for(args).to(device)  # a bad checkpoint is refused before the dataset is read
    split = load_dataset(args.dataset, args.root)
    metrics = evaluate(net, split, image_size=_image_size(args), batch_size=args.batch_size, device=device,
                       amp=bool(args.amp), flip=args.flip, rerank=args.rerank, metric=args.metric)
    _print_metrics(f"{args.dataset} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'backbone weights only'})",
                   metrics)
    if args.out:
        write_json(args.out, {k: v for k, v in metrics.items() if k != "distmat"})
        print(f"wrote {args.out}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
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
    net = _model_for(args).to(device)
    out: dict = {}
    for part in parts:
        samples = getattr(split, part)
        loader = build_test_loader(samples, image_size=_image_size(args), batch_size=args.batch_size)
        feats, pids, camids = extract_features(net, loader, device=device, flip=args.flip)
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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    for name, help_text, func in (
        ("evaluate", "rank-1/5/10, mAP (both AP conventions), mINP of a checkpoint on a dataset", _cmd_evaluate),
        ("extract", "features of a checkpoint on a dataset's splits to .pt / .npy / .npz", _cmd_extract),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--checkpoint", default=None,
                       help="checkpoint.pt (default: the configured backbone with its pretrained weights)")
        p.add_argument("--dataset", required=True, help=f"one of {', '.join(READERS)}")
        p.add_argument("--root", default=None, help="dataset folder")
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--flip", action="store_true", help="average with the mirrored image's feature")
        _add_config_options(p)
        if name == "evaluate":
            p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, λ=0.3)")
            p.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
            p.add_argument("--out", default=None, help="write the metrics to this JSON file")
        else:
            p.add_argument("--split", default="all", choices=("train", "query", "gallery", "all"))
            p.add_argument("--out", required=True, help="output file: .pt (dict), .npy (one split) or .npz")
        p.set_defaults(func=func)


# ----------------------------------------------------------------------------- demo

def _cmd_demo(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from workbench.engine import pretrain, train_mar
    from workbench.runs import new_run_dir

    cfg = _config_from_args(args, default_preset="demo")
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
    print(f"\nrun folder: {root}  ({time.perf_counter() - started:.0f} s)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic dataset (minutes on a CPU)")
    _add_config_options(demo)
    demo.add_argument("--run-dir", default=None, help="folder for both stages (default: runs/<time>-demo)")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo in --run-dir")
    demo.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------- sweep

def _cmd_sweep(args: argparse.Namespace) -> int:
    from workbench.experiments import MAIN_METRICS, load_grid, parse_value, sweep

    base: dict[str, object] = {}
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise CLIError(f"--set expects NAME=VALUE, got {item!r}")
        base[key.strip()] = parse_value(value.strip())
    grid = load_grid(args.grid) if args.grid else [{}]
    if not args.verbose:  # papermill logs every notebook's paths at INFO; the sweep logs each point
        logging.getLogger("papermill").setLevel(logging.WARNING)
    import signal

    from workbench.experiments.executors import SharedStorageError

    def terminated(signum, frame):  # scancel, kill: stop the workers as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        df = sweep(args.notebook, args.grid or grid, args.out, base_params=base, retries=args.retries,
                   progress=sys.stderr.isatty(), kernel_name=args.kernel, timeout=args.timeout, jobs=args.jobs,
                   devices=args.devices, gpus_per_point=args.gpus_per_point, cpus_per_point=args.cpus_per_point,
                   executor=args.executor, address=args.address)
    except (SharedStorageError, ImportError, ConnectionError) as err:
        raise CLIError(str(err)) from None
    except KeyboardInterrupt:
        print("interrupted; run the same command to resume (finished points are kept)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    import pandas as pd

    varying = [c for c in df.columns if c in {k for p in grid for k in p}]
    shown = df[["name", *varying, "state", *[m for m in MAIN_METRICS if m in df.columns]]].copy()
    for m in MAIN_METRICS:
        if m in shown:
            shown[m] = (100 * pd.to_numeric(shown[m], errors="coerce")).round(1)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        print(shown.drop(columns=["name"]).to_string(index=False))
    print(f"(metrics in percent) results: {args.out}")
    failed = df[df["state"] != "done"]
    if len(failed):
        print(f"error: {len(failed)} of {len(df)} points failed:", file=sys.stderr)
        for _, row in failed.iterrows():
            print(f"  {row['name']}: {row['error']}  (see {row['path']})", file=sys.stderr)
        return 1
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser("sweep", help="run a notebook over a grid of parameters with papermill (one folder per point)")
    sw.add_argument("notebook", help="the parameterized notebook, e.g. notebooks/03_train_mar.ipynb")
    sw.add_argument("--grid", default=None,
                    help="YAML/JSON file: a dict of lists (cartesian product) or a list of dicts (points)")
    sw.add_argument("--out", required=True, help="sweep folder (points already done there are skipped)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                    help="a parameter shared by every point, e.g. --set preset=smoke (repeatable)")
    sw.add_argument("--retries", type=int, default=0, help="extra attempts for a failing point")
    sw.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    sw.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    par = sw.add_argument_group("parallel and cluster sweeps (README: 'Sweeps in parallel')")
    par.add_argument("--jobs", type=_positive_int, default=None,
                     help="points at once, each in its own process (default 1; with --devices: one per "
                          "--gpus-per-point devices; Ray: what the cluster holds)")
    par.add_argument("--devices", default=None, metavar="0,1,2,3",
                     help="GPUs for the local workers: each running point gets its own (CUDA_VISIBLE_DEVICES)")
    par.add_argument("--gpus-per-point", type=_positive_int, default=None,
                     help="GPUs per point (local with --devices: default 1; Ray: num_gpus, default 0)")
    par.add_argument("--cpus-per-point", type=_positive_int, default=None,
                     help="torch/OpenMP threads per local worker (default: cores // jobs); Ray: num_cpus (default 1)")
    par.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local processes, or one Ray task per point (the sweep folder must be shared)")
    par.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                     help="the Ray cluster to join (default: start a local Ray runtime)")
    sw.set_defaults(func=_cmd_sweep)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


# ----------------------------------------------------------------------------- report

def _cmd_report(args: argparse.Namespace) -> int:
    from workbench.experiments.report import (
        report,
        results_csv,
        results_rows,
        update_readme,
    )
    from workbench.runs import atomic_write_text

    if args.readme:
        stale = update_readme(args.readme, check=args.check)
        verb = "differ from their results" if args.check else "regenerated"
        print(f"{args.readme}: {len(stale)} table(s) {verb}" + (f": {', '.join(stale)}" if stale else ""))
        return 1 if args.check and stale else 0
    if args.path is None:
        raise CLIError("report needs RUN_OR_RESULTS (or --readme README.md)")
    print(report(args.path))
    if args.csv:
        atomic_write_text(args.csv, results_csv(results_rows(args.path)))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="print a results table in markdown from a run folder, a sweep folder "
                                       "or a results CSV")
    rp.add_argument("path", metavar="RUN_OR_RESULTS", nargs="?",
                    help="a run folder, a folder of runs (demo, quickstart), a sweep folder, a metrics.json "
                         "or a results CSV")
    rp.add_argument("--csv", default=None, metavar="FILE",
                    help="also write the rows to a results CSV (report FILE prints the same table)")
    rp.add_argument("--readme", default=None, metavar="README.md",
                    help="regenerate the README's tables marked <!-- report: PATH --> from their results")
    rp.add_argument("--check", action="store_true", help="with --readme: only compare (exit 1 when stale)")
    rp.set_defaults(func=_cmd_report)


# ----------------------------------------------------------------------------- results

def _cmd_results(args: argparse.Namespace) -> int:
    from workbench.experiments.summary import write_experiment

    written = write_experiment(args.experiment, args.sweeps, args.out, reference=args.reference, notes=args.notes)
    for kind, path in written.items():
        print(f"{kind:>10}: {path}")
    return 0


def _add_results(sub: argparse._SubParsersAction) -> None:
    from workbench.experiments.records import EXPERIMENTS

    rs = sub.add_parser("results", help="write results/<experiment>/ (runs.csv, summary, figures, README) from "
                                        "sweep folders of 03_train_mar.ipynb")
    rs.add_argument("experiment", choices=sorted(EXPERIMENTS), help="the paper's table or figure")
    rs.add_argument("sweeps", nargs="+", metavar="SWEEP", help="sweep folders holding its runs")
    rs.add_argument("--out", required=True, help="the results folder, e.g. results/loss_ablation")
    rs.add_argument("--reference", default=None, metavar="CSV",
                    help="results CSV whose direct-transfer and stage-1 rows head the table "
                         "(e.g. results/real/runs.csv)")
    rs.add_argument("--notes", default=None, metavar="NOTES.md",
                    help="hand-written notes (the diagnosis) included in the generated README")
    rs.set_defaults(func=_cmd_results)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from workbench.distributed import resolve_device
    from workbench.runs import RunFolder, atomic_write_text
    from workbench.analysis.views import camera_mining_report, fusion_stage_run_report

    folder = RunFolder(args.run)
    if folder.state != "finished" or not folder.has_checkpoint or folder.record().stage == "pretrain":
        raise CLIError(f"{folder.path}: not a finished stage-2 run folder (its state: {folder.state})")
    run_dir = folder.path
    report = fusion_stage_run_report if args.stages else camera_mining_report
    table = report(run_dir, device=resolve_device(args.device))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False, float_format="%.4g"))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def _add_diagnose(sub: argparse._SubParsersAction) -> None:
    dg = sub.add_parser("diagnose", help="which target pairs L_MDL's threshold calls positive, by camera, before "
                                         "and after stage 2 (uses the hidden labels: diagnosis only)")
    dg.add_argument("run", metavar="RUN_DIR", help="a finished stage-2 run folder")
    dg.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    dg.add_argument("--stages", action="store_true",
                    help="instead: each fused stage's share of the fused vector and its retrieval accuracy alone, "
                         "stage-1 and stage-2 model")
    dg.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    dg.set_defaults(func=_cmd_diagnose)


# ----------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench",
        description="ReID workbench: unsupervised person re-identification by soft multilabel learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_demo(sub)
    _add_training(sub)
    _add_eval(sub)
    _add_data(sub)
    _add_sweep(sub)
    _add_report(sub)
    _add_results(sub)
    _add_diagnose(sub)
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
