"""Seeing soft multilabels: static figures (:mod:`.plots`) and interactive explorers (:mod:`.widgets`) of
what :mod:`workbench.analysis` computes (a model's views of a target set, pair agreements ...).

Example:
    >>> from workbench.analysis import load_views                             # doctest: +SKIP
    >>> from workbench.viz import explore, plot_training_curves               # doctest: +SKIP
    >>> explore({"before": load_views(run, checkpoint=stage1), "after": load_views(run)})  # doctest: +SKIP
"""
from workbench.viz.plots import (
    plot_camera_grid,
    plot_cmc,
    plot_embedding,
    plot_retrieval,
    plot_training_curves,
    save_figure,
)
from workbench.viz.soft_labels import (
    plot_agreement_distribution,
    plot_camera_heatmap,
    plot_camera_profile,
    plot_soft_label,
)
from workbench.viz.tables import (
    experiment_figures,
    plot_beside_paper,
    plot_camera_curves,
    plot_epoch_and_parameter_curves,
    plot_gradient_shares,
    plot_rows_beside_paper,
)
from workbench.viz.widgets import CameraExplorer, ImageExplorer, RunExplorer, ThresholdExplorer, explore

__all__ = [
    "plot_training_curves", "plot_camera_grid", "plot_cmc", "plot_embedding", "plot_soft_label", "plot_camera_heatmap",
    "plot_camera_profile", "plot_agreement_distribution", "plot_retrieval", "plot_beside_paper", "plot_rows_beside_paper",
    "plot_epoch_and_parameter_curves", "plot_gradient_shares", "save_figure", "experiment_figures", "plot_camera_curves",
    "ImageExplorer", "CameraExplorer", "RunExplorer", "ThresholdExplorer", "explore",
]
