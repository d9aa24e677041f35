#!/usr/bin/env python
"""How camera-split a model's feature space is: the target training split's features of each run's
checkpoint, clustered as a Cluster-Contrast epoch would cluster them (DBSCAN on the Jaccard distance, Table 4's
settings by default), and the clusters read against the hidden identities and cameras: clusters, outliers,
pair precision, the share of same-cluster pairs that are cross-camera, their precision, and the recall of
same-identity pairs within one camera and across cameras (``workbench.clustering.cluster_camera_counts``).
Each model twice: on its features as they are, and with each camera's mean subtracted first
(``camera_norm``, what the camera-normalized rows cluster on). Nothing here trains or reads the test split.

Usage:
    python scripts/camera_clusters.py --points RUNS/points.csv [--stage1 STAGE1_RUN] --out camera_clusters.csv
        [--k1 10] [--k2 3] [--eps 0.5] [--min-samples 2]
``points.csv`` (row, seed, run: a stage-2 run folder) is written by ``workbench reproduce`` beside its runs;
``results/method_comparison/recipe.yaml`` runs this after its points.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import torch


def cluster_row(run: Path, *, k1: int, k2: int, eps: float, min_samples: int) -> list[dict]:
    """The two rows (features as they are, camera-normalized) of one run folder's checkpoint."""
    import numpy as np

    from workbench.builders import load_domains, load_model
    from workbench.clustering import camera_ratios, cluster_camera_counts, cluster_pseudo_labels, cluster_quality
    from workbench.data import build_test_loader
    from workbench.evaluation import extract_features
    from workbench.losses import camera_normalized
    from workbench.runs import RunFolder

    cfg = RunFolder(run).config()
    target, _ = load_domains(cfg.data)
    net = load_model(run / "checkpoint.pt")
    size = tuple(cfg.data.image_size)
    feats, pids, camids = extract_features(net, build_test_loader(target.train, image_size=size, batch_size=128))
    out = []
    for norm in (False, True):
        x = camera_normalized(feats, torch.as_tensor(camids)) if norm else feats
        labels = cluster_pseudo_labels(x, eps=eps, min_samples=min_samples, k1=k1, k2=k2)
        quality = cluster_quality(labels, np.asarray(pids))
        cams = camera_ratios(cluster_camera_counts(labels, np.asarray(pids), np.asarray(camids)))
        out.append({"camera_norm": norm, **{k: quality[k] for k in ("n_clusters", "n_outliers", "pair_precision",
                                                                    "pair_recall")}, **cams})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", required=True, help="CSV of row, seed, run (workbench reproduce writes it)")
    parser.add_argument("--stage1", default=None, help="a stage-1 run folder: its row comes first")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k1", type=int, default=10)
    parser.add_argument("--k2", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--min-samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    from workbench.runs import atomic_write_text

    torch.set_num_threads(args.threads)
    with open(args.points, newline="") as f:
        points = [(r["row"], int(r["seed"]), Path(r["run"])) for r in csv.DictReader(f)]
    if args.stage1:
        points.insert(0, ("stage 1 (where every row starts)", -1, Path(args.stage1)))
    rows, started = [], time.perf_counter()
    for label, seed, run in points:
        if not (run / "checkpoint.pt").is_file():
            print(f"{run}: no checkpoint.pt (the run is not finished); left out", file=sys.stderr)
            continue
        for entry in cluster_row(run, k1=args.k1, k2=args.k2, eps=args.eps, min_samples=args.min_samples):
            rows.append({"row": label, "seed": "" if seed < 0 else seed, **entry})
        print(f"{label} seed {seed}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["row"], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(Path(args.out), buffer.getvalue())
    print(f"wrote {args.out}: {len(rows)} rows (k1={args.k1} k2={args.k2} eps={args.eps} "
          f"min_samples={args.min_samples}), {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
