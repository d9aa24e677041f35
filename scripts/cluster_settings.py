#!/usr/bin/env python
"""DBSCAN's settings for the clustering baseline, chosen on the target *training* split (never the test
split): cluster the training images' features of a stage-1 checkpoint for a declared grid of
``cc_eps`` × ``cc_min_samples`` and print, as CSV, how the pseudo labels match the hidden identities
(clusters, outliers, purity, NMI, pair precision and recall), with the true identity count beside.
``--label-weight w`` clusters on the soft-multilabel hybrid distance instead (workbench.clustering.cluster_distance).

Usage:
    python scripts/cluster_settings.py CHECKPOINT --root ../shared/data/cuhk01-market [--dataset market1501]
        [--eps 0.4 0.5 0.6 0.7] [--min-samples 2 3 4] > results/method_comparison/cluster_settings.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np

from workbench.builders import load_model
from workbench.clustering import cluster_distance, cluster_quality
from workbench.data import build_test_loader, load_dataset
from workbench.evaluation import extract_features
from workbench.losses import soft_multilabel
from workbench.paths import source_commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", default="market1501")
    parser.add_argument("--image-size", default="128,64")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--min-samples", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--label-weight", type=float, default=0.0,
                        help="the soft-multilabel hybrid: (1 - w) jaccard + w (1 - agreement)")
    args = parser.parse_args(argv)
    from sklearn.cluster import DBSCAN

    train = load_dataset(args.dataset, args.root).train
    net = load_model(args.checkpoint)
    size = tuple(int(v) for v in args.image_size.split(","))
    started = time.perf_counter()
    feats, pids, _ = extract_features(net, build_test_loader(train, image_size=size, batch_size=128))
    multilabels = soft_multilabel(feats, net.agents.detach(), 30.0) if args.label_weight else None
    dist = cluster_distance(feats, k1=args.k1, k2=args.k2, multilabels=multilabels, label_weight=args.label_weight)
    print(f"# python scripts/cluster_settings.py {args.checkpoint} --root {args.root} (commit {source_commit()}): "
          f"{len(train)} training images of {len(np.unique(pids))} identities, features + Jaccard in "
          f"{time.perf_counter() - started:.0f} s; k1={args.k1} k2={args.k2} label_weight={args.label_weight}",
          flush=True)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    keys = ("n_clusters", "n_outliers", "purity", "nmi", "pair_precision", "pair_recall")
    writer.writerow(["eps", "min_samples", *keys])
    for eps in args.eps:
        for min_samples in args.min_samples:
            labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist)
            q = cluster_quality(labels, np.asarray(pids))
            writer.writerow([eps, min_samples, *(f"{q[k]:.4g}" for k in keys)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
