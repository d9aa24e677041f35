"""Seeing soft multilabels: static figures (:mod:`.plots`), cached views (:mod:`.views`) and
interactive explorers (:mod:`.widgets`).

Example:
    >>> from workbench.viz import load_views, explore, plot_training_curves   # doctest: +SKIP
    >>> explore({"before": load_views(run, checkpoint=stage1), "after": load_views(run)})  # doctest: +SKIP
"""
from workbench.viz.plots import (
    embed_2d,
    pair_agreements,
    plot_agreement_distribution,
    plot_beside_paper,
    plot_camera_grid,
    plot_camera_heatmap,
    plot_camera_profile,
    plot_cmc,
    plot_embedding,
    plot_epoch_and_parameter_curves,
    plot_retrieval,
    plot_rows_beside_paper,
    plot_soft_label,
    plot_training_curves,
    rank_gallery,
    save_figure,
)
from workbench.viz.views import (
    SoftLabelViews,
    collapse_report,
    compute_views,
    final_threshold,
    init_checkpoint_of,
    load_views,
)
from workbench.viz.widgets import CameraExplorer, ImageExplorer, RunExplorer, ThresholdExplorer, explore

__all__ = [
    "plot_training_curves", "plot_camera_grid", "plot_cmc", "plot_embedding", "plot_soft_label", "plot_camera_heatmap",
    "plot_camera_profile", "plot_agreement_distribution", "plot_retrieval", "plot_beside_paper", "plot_rows_beside_paper",
    "plot_epoch_and_parameter_curves", "embed_2d", "pair_agreements",
    "rank_gallery", "save_figure", "SoftLabelViews", "compute_views", "load_views", "init_checkpoint_of",
    "collapse_report", "final_threshold",
    "ImageExplorer", "CameraExplorer", "RunExplorer", "ThresholdExplorer", "explore",
]
