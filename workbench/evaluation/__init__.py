"""Evaluation: features → distances → rank metrics (CMC, mAP, mINP), and k-reciprocal re-ranking.

One module per stage, every public name re-exported here::

    distance.py   input checks, pairwise_distance (cosine / squared Euclidean)
    metrics.py    rank_metrics (Market-1501 protocol, both AP conventions), the junk rule
                  valid_gallery_mask, and the per-query loop rank_metrics_reference
    rerank.py     re_ranking (k-reciprocal, Zhong et al. 2017), bounded memory; jaccard_distance (within one
                  set) and sparse_jaccard_distance (its entries below 1, no (N, N) matrix)
    features.py   extract_features (optional flip), evaluate_features, evaluate
"""
from __future__ import annotations

from workbench.evaluation.distance import ArrayLike, Metric, pairwise_distance
from workbench.evaluation.features import evaluate, evaluate_features, extract_features
from workbench.evaluation.metrics import (
    APConvention,
    JUNK_PID,
    METRIC_KEYS,
    format_metrics,
    rank_metrics,
    rank_metrics_reference,
    valid_gallery_mask,
)
from workbench.evaluation.rerank import jaccard_distance, re_ranking, sparse_jaccard_distance

__all__ = [
    "pairwise_distance",
    "rank_metrics",
    "rank_metrics_reference",
    "valid_gallery_mask",
    "JUNK_PID",
    "METRIC_KEYS",
    "format_metrics",
    "re_ranking",
    "jaccard_distance",
    "sparse_jaccard_distance",
    "extract_features",
    "evaluate_features",
    "evaluate",
    "ArrayLike",
    "Metric",
    "APConvention",
]
