"""Figures of a run: camera grids, training curves, CMC, embeddings, retrieval (the soft multilabels
themselves — one label, cameras, pairs — are drawn by :mod:`workbench.viz.soft_labels`).

Every function builds a fresh :class:`matplotlib.figure.Figure` (no pyplot state, safe under Agg
and in threads) and returns it; in a notebook with ``%matplotlib inline`` a returned figure shows
itself. ``save_to=<run folder>`` also writes ``<run folder>/figures/<name>.png`` atomically.

Example:
    >>> fig = plot_cmc({"MAR": "runs/20240101-mar"})                          # doctest: +SKIP
    >>> fig = plot_embedding({"before": f0, "after": f1}, pids, method="pca")  # doctest: +SKIP
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from workbench.analysis.arrays import embed_2d, rank_gallery
from workbench.data import Sample
from workbench.losses import LOSS_TERMS
from workbench.ops import to_numpy
from workbench.runs import RunFolder, atomic_write_bytes

__all__ = [
    "plot_camera_grid", "plot_training_curves", "plot_cmc", "plot_embedding", "plot_retrieval",
    "save_figure", "figure_png", "image_array", "TERM_TITLES",
]

PathLike = str | Path
METRIC_COLUMNS = ("rank1", "mAP")
#: panel titles of the history's columns (the paper's names of the loss terms)
TERM_TITLES = {"loss": "$L_{MAR}$ (total)", "al": "$L_{AL}$", "rj": "$L_{RJ}$", "mdl": "$L_{MDL}$",
               "cml": "$L_{CML}$"}
MATCH, MISMATCH, QUERY = "#2ca02c", "#d62728", "#1f77b4"

# ----------------------------------------------------------------------------- shared helpers


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, save_to: PathLike | None, name: str) -> Path | None:
    """Write ``<save_to>/figures/<name>.png`` atomically (nothing when ``save_to`` is None)."""
    if save_to is None:
        return None
    path = Path(save_to) / "figures" / f"{name}.png"
    atomic_write_bytes(path, figure_png(fig))
    return path


def _grid(n: int, *, ncols: int, size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with exactly ``n`` axes on a grid of at most ``ncols`` columns."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    return fig, axes


def image_array(image: PathLike | np.ndarray) -> np.ndarray:
    """An HWC uint8 RGB array from a path (PIL) or an array (returned as is)."""
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image

    with Image.open(image) as im:
        return np.asarray(im.convert("RGB"))


def _show_image(ax, image: PathLike | np.ndarray | None, *, title: str | None = None,
                border: str | None = None) -> None:
    """An image without ticks, optionally framed in ``border`` colour."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_axis_off()
        return
    ax.imshow(image_array(image))
    if title:
        ax.set_title(title, fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_edgecolor(border)
            spine.set_linewidth(4)


def _as_panels(x: Any, titles: Sequence[str] | None, default: str) -> dict[str, Any]:
    """``{title: value}`` from a dict or one value; ``titles`` renames the panels in order."""
    panels = dict(x) if isinstance(x, Mapping) else {default: x}
    if titles is not None:
        titles = [titles] if isinstance(titles, str) else list(titles)
        if len(titles) != len(panels):
            raise ValueError(f"got {len(titles)} titles for {len(panels)} panels")
        panels = dict(zip(titles, panels.values()))
    return panels


def _per_panel(value: Any, panels: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One array per panel: a shared array, or a dict with the panels' keys (in order)."""
    if isinstance(value, Mapping):
        if len(value) != len(panels):
            raise ValueError(f"{name} has {len(value)} entries for {len(panels)} panels")
        return dict(zip(panels, value.values()))
    return {title: value for title in panels}


# ----------------------------------------------------------------------------- training curves


def plot_camera_grid(samples: Sequence[Sample], *, n_ids: int = 8, save_to: PathLike | None = None) -> Figure:
    """One image per (camera, identity): rows are cameras, columns the first ``n_ids`` identities.

    An empty cell says the camera never saw that person, which is what makes cross-camera
    matching (and L_CML) necessary.

    Args:
        samples: e.g. a split's training images with the dataset's own pids and camera ids.
        n_ids: identities (columns) shown.
        save_to: folder to save ``camera_grid.png`` in.
    """
    cams = sorted({s.camid for s in samples})
    pids = sorted({s.pid for s in samples})[:n_ids]
    first: dict[tuple[int, int], str] = {}
    for s in samples:
        first.setdefault((s.camid, s.pid), s.path)
    fig, axes = _grid(len(cams) * len(pids), ncols=len(pids), size=(1.1, 2.0))
    for ax, (cam, pid) in zip(axes, [(c, p) for c in cams for p in pids]):
        ax.set_xticks([])
        ax.set_yticks([])
        if (cam, pid) in first:
            ax.imshow(image_array(first[cam, pid]))
        else:  # this camera never saw this identity
            ax.text(0.5, 0.5, "not seen\nby this\ncamera", ha="center", va="center", fontsize=7, color="0.5",
                    transform=ax.transAxes)
            for spine in ax.spines.values():
                spine.set_visible(False)
        ax.set_title(f"id {pid} · cam {cam}", fontsize=7)
    save_figure(fig, save_to, "camera_grid")
    return fig


def _read_history(history: Any, x: str) -> pd.DataFrame:
    """A DataFrame from a DataFrame, dict rows, a run folder, ``history.csv`` or ``steps.csv``."""
    if isinstance(history, pd.DataFrame):
        return history
    if isinstance(history, (str, Path)):
        path = Path(history)
        if path.is_dir():
            folder = RunFolder(path)
            path = folder.steps_path if x == "step" else folder.history_path
        if not path.is_file():
            raise FileNotFoundError(f"no training history at {path}")
        return pd.read_csv(path)
    return pd.DataFrame(list(history))


def _has_values(df: pd.DataFrame, column: str) -> bool:
    return column in df and pd.to_numeric(df[column], errors="coerce").notna().any()


def _whole_number_ticks(ax, xs: np.ndarray) -> None:
    """Whole-number x ticks (epochs, steps): each value when there are few, else a few integers."""
    values = np.unique(np.asarray(xs, dtype=float)[np.isfinite(np.asarray(xs, dtype=float))])
    if 0 < len(values) <= 12 and np.all(values == np.round(values)):
        ax.set_xticks(values.astype(int))
        if len(values) == 1:
            ax.set_xlim(values[0] - 1, values[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_training_curves(history: Any, terms: Sequence[str] | None = None, *, x: str = "epoch",
                         title: str | None = None, save_to: PathLike | None = None) -> Figure:
    """Loss terms, threshold, mined pairs and rank metrics over training, one small axis each.

    Args:
        history: a DataFrame, a list of dict rows, or a path: a run folder (``history.csv``,
            ``steps.csv`` when ``x="step"``) or a CSV file.
        terms: loss columns to plot (default: those of ``loss, al, rj, mdl, cml`` present).
        x: the x column; ``"step"`` counts rows (steps restart every epoch in ``steps.csv``).
        title: figure title.
        save_to: run folder; writes ``figures/training_curves.png``.

    Returns:
        The figure: one axis per term present, then ``threshold``, ``n_pos``/``n_neg`` and the
        rank metrics when present.
    """
    df = _read_history(history, x).reset_index(drop=True)
    xs = np.arange(len(df)) if x == "step" or x not in df else df[x].to_numpy()
    panels: list[tuple[str, list[str]]] = [(t, [t]) for t in (terms or LOSS_TERMS) if _has_values(df, t)]
    if _has_values(df, "threshold"):
        panels.append(("threshold T", ["threshold"]))
    pairs = [c for c in ("n_pos", "n_neg") if _has_values(df, c)]
    if pairs:
        panels.append(("mined pairs", pairs))
    metrics = [c for c in METRIC_COLUMNS if _has_values(df, c)]
    if metrics:
        panels.append(("target metrics", metrics))
    if not panels:
        raise ValueError(f"nothing to plot: the history has columns {list(df.columns)}")
    fig, axes = _grid(len(panels), ncols=4, size=(3.2, 2.4))
    labels = {"n_pos": "positives", "n_neg": "negatives", "rank1": "rank-1", "mAP": "mAP"}
    for ax, (name, columns) in zip(axes, panels):
        for c in columns:
            y = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
            if c in METRIC_COLUMNS:
                y = 100 * y  # fractions in history.csv, percent on screen
            keep = np.isfinite(y)
            ax.plot(xs[keep], y[keep], marker="o" if keep.sum() < 30 else None, ms=3, label=labels.get(c, c))
        ax.set_title(TERM_TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("step" if x == "step" else x)
        _whole_number_ticks(ax, xs)
        if name == "target metrics":
            ax.set_ylabel("%")
        if len(columns) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save_figure(fig, save_to, "training_curves")
    return fig


# ----------------------------------------------------------------------------- CMC


def _cmc_of(value: Any) -> tuple[np.ndarray, dict]:
    """(cmc, metrics) from a metrics dict, a CMC array, a run folder or a ``metrics.json``."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        value = RunFolder(path).metrics() if path.is_dir() else json.loads(path.read_text())
    if isinstance(value, Mapping):
        if "cmc" not in value:
            raise ValueError(f"metrics without a 'cmc' entry (keys: {sorted(value)})")
        return np.asarray(value["cmc"], dtype=float), dict(value)
    return np.asarray(value, dtype=float), {}


def plot_cmc(runs: Mapping[str, Any], *, max_rank: int = 20, save_to: PathLike | None = None) -> Figure:
    """CMC curves of several runs on one axis.

    Args:
        runs: ``{name: metrics}`` where metrics is a dict with ``"cmc"`` (as in ``metrics.json``),
            a CMC array (fractions), a run folder or a ``metrics.json`` path.
        max_rank: last rank shown.
        save_to: run folder; writes ``figures/cmc.png``.
    """
    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, value in runs.items():
        cmc, metrics = _cmc_of(value)
        cmc = cmc[:max_rank]
        label = name
        if "mAP" in metrics:
            label += f" (R1 {100 * cmc[0]:.1f}, mAP {100 * metrics['mAP']:.1f})"
        ax.plot(np.arange(1, len(cmc) + 1), 100 * cmc, marker="o", ms=3, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(1, max_rank)
    step = 5 if max_rank > 10 else 1
    ax.set_xticks(sorted({1, *range(step, max_rank + 1, step)}))  # whole ranks, rank 1 included
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("CMC")
    save_figure(fig, save_to, "cmc")
    return fig


# ----------------------------------------------------------------------------- embeddings


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items (a function of its arguments only)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_points])


def _label_colours(labels: np.ndarray, categorical: str) -> tuple[np.ndarray, list[tuple[int, Any]]]:
    """(N, 4) RGBA colours for integer labels and the (label, colour) legend entries."""
    values, inverse = np.unique(labels, return_inverse=True)
    cmap = colormaps[categorical if len(values) <= 10 else "tab20" if len(values) <= 20 else "hsv"]
    n = max(len(values), 1)
    palette = np.array([cmap(i % cmap.N) if cmap.N < 256 else cmap(i / n) for i in range(n)])  # (K, 4)
    return palette[inverse.reshape(-1)], list(zip(values.tolist(), palette))


def plot_embedding(features: Any, labels: Any, *, camids: Any = None, color_by: str = "identity",
                   titles: Sequence[str] | None = None, method: str = "umap", seed: int = 0,
                   max_points: int = 2000, save_to: PathLike | None = None) -> Figure:
    """2-D embedding of features coloured by identity or camera, side by side for several models.

    Args:
        features: (N, d) array, or ``{title: (N, d) array}`` (e.g. before / after joint training).
        labels: (N,) identities (one array shared by all panels, or a dict like ``features``).
        camids: (N,) cameras (needed for ``color_by="camera"``).
        color_by: ``"identity"`` or ``"camera"``.
        titles: panel titles (default: the dict keys, or the method name).
        method: ``"umap"``, ``"pca"`` or ``"precomputed"`` (see :func:`embed_2d`).
        seed: random state of UMAP and of the subsample.
        max_points: at most this many points per panel (the same random subset in every panel).
        save_to: run folder; writes ``figures/embedding_<color_by>.png``.
    """
    if color_by not in ("identity", "camera"):
        raise ValueError(f"color_by must be 'identity' or 'camera', got {color_by!r}")
    panels = _as_panels(features, titles, method.upper())
    colour_src = _per_panel(labels if color_by == "identity" else camids, panels, color_by)
    if any(v is None for v in colour_src.values()):
        raise ValueError("color_by='camera' needs camids")
    fig, axes = _grid(len(panels), ncols=3, size=(4.2, 4.0))
    for ax, (title, feats) in zip(axes, panels.items()):
        feats = to_numpy(feats)
        keep = _subsample(len(feats), max_points, seed)  # the same subset in every panel of this size
        coords = embed_2d(feats[keep], method, seed)  # (n, 2)
        colours, legend = _label_colours(to_numpy(colour_src[title])[keep], "tab10")
        ax.scatter(coords[:, 0], coords[:, 1], c=colours, s=12, linewidths=0)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(legend) <= 12:
            prefix = "id" if color_by == "identity" else "cam"
            handles = [Line2D([], [], marker="o", ls="", ms=4, color=c, label=f"{prefix} {v}") for v, c in legend]
            ax.legend(handles=handles, fontsize=6, loc="best", markerscale=1.2)
        else:
            one, many = ("identity", "identities") if color_by == "identity" else ("camera", "cameras")
            ax.set_xlabel(f"one colour per {one}: {len(legend)} {many}, too many for a legend;\n"
                          f"close colours may be different {many}", fontsize=7)
    save_figure(fig, save_to, f"embedding_{color_by}")
    return fig


# ----------------------------------------------------------------------------- retrieval


def plot_retrieval(distmat: Any, query: Sequence[Sample], gallery: Sequence[Sample], *,
                   queries: Sequence[int] = (0,), k: int = 10, save_to: PathLike | None = None) -> Figure:
    """Ranked lists: each query image, then its top-k gallery images framed green (same pid) or red.

    Gallery images of the query's identity from the query's camera are left out (Market protocol).

    Args:
        distmat: (Q, G) distances.
        query, gallery: lists of ``Sample(path, pid, camid)``.
        queries: query rows shown (one row of images each).
        k: gallery images per row.
        save_to: run folder; writes ``figures/retrieval.png``.

    Returns:
        The figure with ``len(queries) * (k + 1)`` image axes.
    """
    ranked = rank_gallery(distmat, query, gallery, queries, k)  # (R, k)
    d = to_numpy(distmat)
    fig = Figure(figsize=(0.95 * (k + 1), 2.0 * len(ranked)), layout="constrained")
    grid = fig.add_gridspec(len(ranked), k + 1)
    for r, (q, row) in enumerate(zip(queries, ranked)):
        qs = query[q]
        _show_image(fig.add_subplot(grid[r, 0]), qs.path, title=f"query {q}\npid {qs.pid} cam {qs.camid}",
                    border=QUERY)
        for c, g in enumerate(row):
            ax = fig.add_subplot(grid[r, c + 1])
            if g < 0:
                _show_image(ax, None)
                continue
            gs = gallery[g]
            _show_image(ax, gs.path, title=f"#{c + 1} d={d[q, g]:.3f}\ncam {gs.camid}",
                        border=MATCH if gs.pid == qs.pid else MISMATCH)
    fig.legend(handles=[Patch(facecolor="none", edgecolor=QUERY, lw=3, label="query"),
                        Patch(facecolor="none", edgecolor=MATCH, lw=3, label="same identity (correct match)"),
                        Patch(facecolor="none", edgecolor=MISMATCH, lw=3, label="another identity")],
               loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    save_figure(fig, save_to, "retrieval")
    return fig


# ----------------------------------------------------------------------------- beside the paper
