"""Figures of soft multilabels: one image's label over the agents, the per-camera mean labels, and
the agreement of pairs that L_MDL's threshold T splits.

Like :mod:`workbench.viz.plots`, every function returns a fresh Figure and ``save_to=<run folder>``
also writes ``<run folder>/figures/<name>.png``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from workbench.analysis.arrays import camera_means, pair_agreements
from workbench.ops import to_numpy
from workbench.viz.plots import (MATCH, MISMATCH, QUERY, PathLike, _as_panels, _grid, _per_panel, _show_image,
                                  save_figure)

__all__ = ["plot_soft_label", "plot_camera_heatmap", "plot_camera_profile", "plot_agreement_distribution",
           "draw_agreement"]


# ----------------------------------------------------------------------------- one soft multilabel


def plot_soft_label(multilabel: Any, *, agent_images: Sequence[Any] | None = None,
                    agent_names: Sequence[str] | None = None, k: int = 10, image: Any = None,
                    save_to: PathLike | None = None) -> Figure:
    """The top-k agents of one soft multilabel as bars, with each agent's reference person.

    Args:
        multilabel: (Np,) soft multilabel of one image.
        agent_images: (Np,) image paths or HWC arrays, one per agent (None entries allowed).
        agent_names: (Np,) bar labels (default: ``"a<index>"``).
        k: number of agents shown (largest mass first).
        image: the labelled image itself (path or array), shown in a panel on the left.
        save_to: run folder; writes ``figures/soft_label.png``.

    Returns:
        The figure: bar axis, then ``k`` agent image axes (with ``agent_images``), then the image
        axis (with ``image``).
    """
    y = to_numpy(multilabel).astype(float).reshape(-1)  # (Np,)
    k = min(int(k), len(y))
    top = np.argsort(-y, kind="stable")[:k]  # (k,)
    names = [agent_names[i] if agent_names is not None else f"a{i}" for i in top]
    lead = 1 if image is not None else 0
    rows = 2 if agent_images is not None else 1
    fig = Figure(figsize=(0.75 * k + 1.8 * lead + 1.0, 2.6 + 1.6 * (rows - 1)), layout="constrained")
    grid = fig.add_gridspec(rows, k + lead, height_ratios=[1.4, 1.0][:rows],
                            width_ratios=[1.8] * lead + [1.0] * k)
    bars = fig.add_subplot(grid[0, lead:])
    bars.bar(np.arange(k), y[top], color=colormaps["viridis"](y[top] / max(y[top].max(), 1e-12)))
    bars.set_xticks(np.arange(k), names, fontsize=7, rotation=45 if k > 12 else 0)
    bars.set_xlim(-0.5, k - 0.5)
    bars.set_ylabel("mass")
    bars.set_title(f"top-{k} agents (of {len(y)}), mass {y[top].sum():.2f}", fontsize=9)
    if agent_images is not None:
        for j, agent in enumerate(top):
            _show_image(fig.add_subplot(grid[1, lead + j]), agent_images[agent])
    if image is not None:
        _show_image(fig.add_subplot(grid[:, 0]), image, title="image", border=QUERY)
    save_figure(fig, save_to, "soft_label")
    return fig


# ----------------------------------------------------------------------------- cameras


def _top_agents(panels: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """The k agents with the largest mass summed over all panels (same columns everywhere)."""
    mass = sum(to_numpy(y).astype(np.float64).mean(0) for y in panels.values())  # (Np,)
    return np.argsort(-mass, kind="stable")[:k]


def plot_camera_heatmap(multilabels: Any, camids: Any, *, k: int = 16, titles: Sequence[str] | None = None,
                        save_to: PathLike | None = None) -> Figure:
    """Mean soft multilabel per camera as a heatmap (cameras × the top-k agents by overall mass).

    Cross-view consistency (L_CML) should make the rows alike.

    Args:
        multilabels: (N, Np) array or ``{title: (N, Np) array}`` (e.g. before / after).
        camids: (N,) cameras (shared, or a dict like ``multilabels``).
        k: number of agent columns.
        titles: panel titles (default: the dict keys).
        save_to: run folder; writes ``figures/camera_heatmap.png``.

    Returns:
        The figure: one heatmap axis per panel plus one colour bar axis.
    """
    import seaborn as sns

    panels = _as_panels(multilabels, titles, "mean soft multilabel per camera")
    cams_of = _per_panel(camids, panels, "camids")
    columns = _top_agents(panels, k)  # (k,)
    means = {t: camera_means(y, cams_of[t]) for t, y in panels.items()}
    vmax = max(float(m[:, columns].max()) for _, m in means.values())
    fig = Figure(figsize=(0.32 * len(columns) * len(panels) + 2.0, 0.45 * max(len(c) for c, _ in means.values()) + 2.0),
                 layout="constrained")
    grid = fig.add_gridspec(1, len(panels) + 1, width_ratios=[1.0] * len(panels) + [0.05])
    cbar_ax = fig.add_subplot(grid[0, -1])
    for i, (title, (cams, m)) in enumerate(means.items()):
        ax = fig.add_subplot(grid[0, i])
        sns.heatmap(m[:, columns], ax=ax, vmin=0.0, vmax=vmax, cmap="viridis", cbar=i == 0, cbar_ax=cbar_ax,
                    xticklabels=[f"a{a}" for a in columns], yticklabels=[f"cam {c}" for c in cams])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"agent (top {len(columns)} by mean mass)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=90)
        ax.tick_params(axis="y", labelsize=8, rotation=0)
        if i:
            ax.set_yticklabels([])
    cbar_ax.set_ylabel("mean mass", fontsize=8)
    save_figure(fig, save_to, "camera_heatmap")
    return fig


def plot_camera_profile(multilabels: Any, camids: Any, camera: int, *, k: int = 16,
                        titles: Sequence[str] | None = None, save_to: PathLike | None = None) -> Figure:
    """One camera's mean soft multilabel against the all-camera mean, over the top-k agents.

    Args:
        multilabels: (N, Np) array or ``{title: (N, Np) array}``.
        camids: (N,) cameras (shared, or a dict like ``multilabels``).
        camera: the camera shown.
        k: number of agents (top-k by overall mass, the same in every panel).
        titles: panel titles.
        save_to: run folder; writes ``figures/camera_<camera>.png``.
    """
    panels = _as_panels(multilabels, titles, "soft multilabel")
    cams_of = _per_panel(camids, panels, "camids")
    columns = _top_agents(panels, k)
    fig, axes = _grid(len(panels), ncols=2, size=(0.3 * len(columns) + 1.5, 3.0))
    pos = np.arange(len(columns))
    for ax, (title, y) in zip(axes, panels.items()):
        y = to_numpy(y)
        cams, means = camera_means(y, cams_of[title])
        if camera not in cams:
            raise ValueError(f"camera {camera} not among {cams.tolist()}")
        ax.bar(pos - 0.2, y.mean(0)[columns], width=0.4, color="0.7", label="all cameras")
        ax.bar(pos + 0.2, means[list(cams).index(camera), columns], width=0.4, color=QUERY, label=f"cam {camera}")
        ax.set_xticks(pos, [f"a{a}" for a in columns], fontsize=8, rotation=90)
        ax.set_xlabel(f"agent (top {len(columns)} by mean mass)", fontsize=8)
        ax.set_ylabel("mean mass", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    save_figure(fig, save_to, f"camera_{camera}")
    return fig


# ----------------------------------------------------------------------------- agreement of pairs


def draw_agreement(ax, agreements: np.ndarray, same: np.ndarray, threshold: float | None,
                   bins: np.ndarray) -> None:
    """Density histograms of true and false pairs, and the threshold line, on one axis.

    Args:
        ax: a matplotlib axis.
        agreements: (P,) pair agreements.
        same: (P,) whether each pair shares an identity.
        threshold: T (a dashed vertical line), or None.
        bins: histogram bin edges.
    """
    for mask, colour, name in ((same, MATCH, "same identity"), (~same, MISMATCH, "different identities")):
        if mask.any():
            hist, _ = np.histogram(agreements[mask], bins=bins, density=True)
            ax.stairs(hist, bins, fill=True, alpha=0.35, color=colour)
            ax.stairs(hist, bins, color=colour, label=f"{name} ({int(mask.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"T = {threshold:.3f}")
    ax.set_xlabel("agreement A(y_i, y_j)")
    ax.set_ylabel("density")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7)


def plot_agreement_distribution(multilabels: Any, pids: Any, *, threshold: float | None = None,
                                max_pairs: int = 200_000, seed: int = 0, save_to: PathLike | None = None) -> Figure:
    """Distribution of soft multilabel agreement for true pairs (same pid) and false pairs.

    L_MDL calls a mined pair positive when its agreement exceeds T: the further apart the two
    histograms, the more those positives are right.

    Args:
        multilabels: (N, Np) soft multilabels.
        pids: (N,) identities (hidden labels, for the diagnostic only).
        threshold: T, drawn as a vertical line.
        max_pairs: pairs used at most (random subset beyond; see :func:`pair_agreements`).
        seed: random state of the subset.
        save_to: run folder; writes ``figures/agreement.png``.
    """
    agreements, same = pair_agreements(multilabels, pids, max_pairs=max_pairs, seed=seed)
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    draw_agreement(ax, agreements, same, threshold, np.linspace(0.0, 1.0, 51))
    ax.set_title(f"agreement of {len(agreements)} pairs")
    save_figure(fig, save_to, "agreement")
    return fig
