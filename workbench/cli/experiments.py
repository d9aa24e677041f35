"""The experiment-side commands: ``sweep`` (a notebook over a grid), ``report``, ``results``,
``diagnose``, ``reproduce``, ``zoo`` and ``render`` (a notebook executed, as offline HTML)."""
from __future__ import annotations

import argparse
import logging
import sys

from workbench.cli.common import CLIError, positive_int


# ----------------------------------------------------------------------------- sweep

def _cmd_sweep(args: argparse.Namespace) -> int:
    from workbench.evaluation.names import METRIC_KEYS
    from workbench.experiments import load_grid, parse_value, sweep

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
    shown = df[["name", *varying, "state", *[m for m in METRIC_KEYS if m in df.columns]]].copy()
    for m in METRIC_KEYS:
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


def add_sweep(sub: argparse._SubParsersAction) -> None:
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
    par.add_argument("--jobs", type=positive_int, default=None,
                     help="points at once, each in its own process (default 1; with --devices: one per "
                          "--gpus-per-point devices; Ray: what the cluster holds)")
    par.add_argument("--devices", default=None, metavar="0,1,2,3",
                     help="GPUs for the local workers: each running point gets its own (CUDA_VISIBLE_DEVICES)")
    par.add_argument("--gpus-per-point", type=positive_int, default=None,
                     help="GPUs per point (local with --devices: default 1; Ray: num_gpus, default 0)")
    par.add_argument("--cpus-per-point", type=positive_int, default=None,
                     help="torch/OpenMP threads per local worker (default: cores // jobs); Ray: num_cpus (default 1)")
    par.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local processes, or one Ray task per point (the sweep folder must be shared)")
    par.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                     help="the Ray cluster to join (default: start a local Ray runtime)")
    sw.set_defaults(func=_cmd_sweep)



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
        verb = "differ from their results" if args.check else "regenerated"
        any_stale = False
        for readme in args.readme:
            stale = update_readme(readme, check=args.check)
            any_stale |= bool(stale)
            print(f"{readme}: {len(stale)} table(s) {verb}" + (f": {', '.join(stale)}" if stale else ""))
        return 1 if args.check and any_stale else 0
    if args.path is None:
        raise CLIError("report needs RUN_OR_RESULTS (or --readme README.md)")
    print(report(args.path))
    if args.csv:
        atomic_write_text(args.csv, results_csv(results_rows(args.path)))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("report", help="print a results table in markdown from a run folder, a sweep folder "
                                       "or a results CSV")
    rp.add_argument("path", metavar="RUN_OR_RESULTS", nargs="?",
                    help="a run folder, a folder of runs (demo, quickstart), a sweep folder, a metrics.json "
                         "or a results CSV")
    rp.add_argument("--csv", default=None, metavar="FILE",
                    help="also write the rows to a results CSV (report FILE prints the same table)")
    rp.add_argument("--readme", default=None, nargs="+", metavar="README.md",
                    help="regenerate the tables marked <!-- report: PATH --> of these markdown files (README.md "
                         "docs/cli.md) from their results")
    rp.add_argument("--check", action="store_true", help="with --readme: only compare (exit 1 when stale)")
    rp.set_defaults(func=_cmd_report)


# ----------------------------------------------------------------------------- results

def _cmd_results(args: argparse.Namespace) -> int:
    from workbench.experiments.summary import write_experiment
    from workbench.viz.tables import experiment_figures

    written = write_experiment(args.experiment, args.sweeps, args.out, reference=args.reference, notes=args.notes,
                               figures=experiment_figures)
    for kind, path in written.items():
        print(f"{kind:>10}: {path}")
    return 0


def add_results(sub: argparse._SubParsersAction) -> None:
    from workbench.experiments.catalog import EXPERIMENTS

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


def add_diagnose(sub: argparse._SubParsersAction) -> None:
    dg = sub.add_parser("diagnose", help="which target pairs L_MDL's threshold calls positive, by camera, before "
                                         "and after stage 2 (uses the hidden labels: diagnosis only)")
    dg.add_argument("run", metavar="RUN_DIR", help="a finished stage-2 run folder")
    dg.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    dg.add_argument("--stages", action="store_true",
                    help="instead: each fused stage's share of the fused vector (and, with an embedding after "
                         "fusion, of the embedding's image-to-image variation) and its retrieval accuracy alone, "
                         "stage-1 and stage-2 model")
    dg.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    dg.set_defaults(func=_cmd_diagnose)




# ----------------------------------------------------------------------------- reproduce, zoo

def _figures():
    from workbench.viz.tables import experiment_figures  # matplotlib: only when a folder is written

    return experiment_figures


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from workbench.experiments.reproduce import reproduce

    if not args.verbose:
        logging.getLogger("papermill").setLevel(logging.WARNING)
    folders = args.folders
    failed = 0
    for folder in folders:
        try:
            result = reproduce(folder, runs=args.runs, out=args.out if len(folders) == 1 else None, jobs=args.jobs,
                               threads=args.threads, dry_run=args.dry_run, smoke=args.smoke, rows=args.rows,
                               seeds=args.seeds, finished_only=args.finished_only,
                               figures=None if args.dry_run else _figures())
        except KeyboardInterrupt:
            print("interrupted; run the same command to resume (finished runs are kept, the others continue "
                  "from their last epoch checkpoint)", file=sys.stderr)
            return 130
        failed += len(result.failed)
    return 1 if failed else 0


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("reproduce", help="regenerate a results folder from its recipe.yaml: stage 1s (zoo or "
                                          "trained), every point, the folder, and its rows beside the committed ones")
    rp.add_argument("folders", nargs="+", metavar="RESULTS_FOLDER", help="e.g. results/method_comparison")
    rp.add_argument("--runs", default=None, metavar="DIR",
                    help="where the runs go and are found again (default: $WORKBENCH_RUNS/reproduce)")
    rp.add_argument("--out", default=None, metavar="DIR",
                    help="where the folder is written (default: DIR/<folder>/results; name the committed folder "
                         "to replace it)")
    rp.add_argument("--jobs", type=positive_int, default=1, help="runs at once, each in its own process")
    rp.add_argument("--threads", type=positive_int, default=1, help="torch threads per run (default 1)")
    rp.add_argument("--dry-run", action="store_true",
                    help="print the plan: every stage 1 and point, which exist under --runs, the expected CPU time")
    rp.add_argument("--smoke", action="store_true",
                    help="the same plan at smoke scale: synthetic data, 1 seed, 1 epoch (about a minute)")
    rp.add_argument("--rows", nargs="+", default=None, metavar="LABEL",
                    help="only these rows of the table (e.g. to run them first; the folder then holds them alone)")
    rp.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                    help="only these seeds of each row (e.g. every row at seed 0 first; the folder then holds them alone)")
    rp.add_argument("--finished-only", action="store_true",
                    help="run nothing: write the folder from the points already finished under --runs (partial)")
    rp.set_defaults(func=_cmd_reproduce)


def _cmd_zoo(args: argparse.Namespace) -> int:
    from workbench.runs.zoo import Zoo, describe

    zoo = Zoo(args.root)
    if args.action == "list":
        entries = zoo.entries()
        if not entries:
            print(f"no entries in {zoo.manifest_path}")
        for entry in entries.values():
            print("  ".join(f"{k} {v}" for k, v in describe(entry).items()))
        return 0
    if args.action == "verify":
        bad = 0
        for name, state in zoo.verify():
            print(f"{name}: {state}")
            bad += state != "ok"
        return 1 if bad else 0
    if not args.run or not args.name:
        raise CLIError("zoo add needs RUN_DIR and --name")
    entry = zoo.add(args.run, args.name, recipe=args.recipe or "", note=args.note or "", replace=args.replace)
    print(f"added {entry.name}: {zoo.root / entry.file} ({entry.bytes / 1e6:.1f} MB, sha256 {entry.sha256[:16]}…, "
          f"key {entry.key})")
    return 0


def add_zoo(sub: argparse._SubParsersAction) -> None:
    zp = sub.add_parser("zoo", help="the stage-1 checkpoints the committed tables start from (zoo/manifest.json)")
    zp.add_argument("action", choices=("list", "verify", "add"))
    zp.add_argument("run", nargs="?", metavar="RUN_DIR", help="add: a finished stage-1 run folder")
    zp.add_argument("--name", default=None, help="add: the entry's name")
    zp.add_argument("--recipe", default=None, help="add: what made it (a command or a recipe)")
    zp.add_argument("--note", default=None, help="add: a note")
    zp.add_argument("--replace", action="store_true", help="add: replace an entry of that name")
    zp.add_argument("--root", default=None, help="the zoo folder (default: zoo/ in the checkout, or WORKBENCH_ZOO)")
    zp.set_defaults(func=_cmd_zoo)


# ----------------------------------------------------------------------------- render

def _cmd_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.errors import MissingFileError

    if not Path(args.notebook).is_file():
        raise MissingFileError(f"no notebook at {args.notebook}")
    if not args.out.endswith((".html", ".htm")):
        raise CLIError(f"--out {args.out}: expected an .html file")
    from workbench.experiments import parse_value
    from workbench.experiments.render import render_notebook

    if not args.verbose:  # papermill logs every cell at INFO
        logging.getLogger("papermill").setLevel(logging.WARNING)
    params = {name: parse_value(value) for name, value in args.parameters}
    try:
        out = render_notebook(args.notebook, args.out, params, kernel_name=args.kernel, timeout=args.timeout)
    except ValueError as err:  # a parameter the notebook does not declare
        raise CLIError(str(err)) from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): math rendered here, no script from the network, "
          "paths relative to the repository")
    return 0


def add_render(sub: argparse._SubParsersAction) -> None:
    rd = sub.add_parser("render", help="execute a notebook with papermill (in notebooks/) and write it as HTML that "
                                       "reads the same offline on any machine")
    rd.add_argument("notebook", metavar="NOTEBOOK.ipynb", help="e.g. notebooks/04_loss_ablation.ipynb")
    rd.add_argument("--out", required=True, metavar="FILE.html", help="the HTML file to write")
    rd.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"), help="a parameter, read as YAML (as papermill -p does; relative "
                                                    "paths are read from the repository root), e.g. -p results_dir "
                                                    "results/loss_ablation (repeatable)")
    rd.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    rd.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    rd.set_defaults(func=_cmd_render)
