"""Evaluation: features → distances → rank metrics (CMC, mAP, mINP), and k-reciprocal re-ranking.

One module per stage, every public name re-exported here::

    distance.py   input checks, pairwise_distance (cosine / squared Euclidean)
    metrics.py    rank_metrics (Market-1501 protocol, both AP conventions), the junk rule
                  valid_gallery_mask, and the per-query loop rank_metrics_reference
    rerank.py     re_ranking (k-reciprocal, Zhong et al. 2017), bounded memory; jaccard_distance (within one set)
    features.py   extract_features (optional flip), evaluate_features, evaluate
"""
from __future__ import annotations

from workbench.lazy import lazy_exports


#: every public name, by the module that defines it (imported on first use: the metric names and the
#: numpy metrics load without torch, which extract_features needs)
_EXPORTS = {
    "pairwise_distance": "distance", "ArrayLike": "distance", "Metric": "distance",
    "evaluate": "features", "evaluate_features": "features", "extract_features": "features",
    "APConvention": "metrics", "JUNK_PID": "metrics", "METRIC_KEYS": "names", "METRIC_TITLES": "names",
    "format_metrics": "metrics", "rank_metrics": "metrics", "rank_metrics_reference": "metrics",
    "valid_gallery_mask": "metrics",
    "jaccard_distance": "rerank", "re_ranking": "rerank", "sparse_jaccard_distance": "rerank",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports('workbench.evaluation', {name: f"workbench.evaluation.{module}" for name, module in _EXPORTS.items()}, globals())
