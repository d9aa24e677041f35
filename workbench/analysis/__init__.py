"""Computations over runs and features for figures and diagnostics — arrays and frames in and out;
:mod:`workbench.viz` draws what these return.

* :mod:`.arrays`: 2-D embeddings, per-camera mean multilabels, pair agreements, ranked galleries.
* :mod:`.views`: a model's soft-multilabel views of a target set (features, multilabels, distances,
  metrics) and the diagnostics of a run (which pairs L_MDL calls positive, by camera; each fused
  stage's share and retrieval).
"""
from workbench.analysis.arrays import camera_means, embed_2d, pair_agreements, rank_gallery
from workbench.analysis.views import (
    PARTS,
    SoftLabelViews,
    camera_mining_report,
    collapse_report,
    compute_views,
    final_threshold,
    fusion_stage_report,
    fusion_stage_run_report,
    init_checkpoint_of,
    load_views,
    mining_by_camera,
)

__all__ = ["PARTS", "SoftLabelViews", "camera_means", "camera_mining_report", "collapse_report", "compute_views",
           "embed_2d", "final_threshold", "fusion_stage_report", "fusion_stage_run_report", "init_checkpoint_of",
           "load_views", "mining_by_camera", "pair_agreements", "rank_gallery"]
