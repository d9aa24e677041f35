"""Figures of the experiments' tables: our rows beside the paper's, and metric curves over a parameter.

Example:
    >>> fig = plot_rows_beside_paper(seed_table(df, "loss_ablation"))   # doctest: +SKIP
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.evaluation.names import METRIC_TITLES
from workbench.viz.plots import QUERY, PathLike, _grid, _whole_number_ticks, save_figure

__all__ = ["plot_beside_paper", "plot_rows_beside_paper", "plot_epoch_and_parameter_curves", "plot_gradient_shares"]


def _bars_beside_paper(ax, rows: Sequence[str], ours: np.ndarray, paper: np.ndarray, std: np.ndarray | None = None,
                       *, labels: bool, xlabel: str, names: tuple[str, str] = ("paper", "ours"),
                       missing: str = "no result") -> None:
    """Paired horizontal bars, the paper's (grey) above ours (error bar: ``std``), our value written out."""
    pos = np.arange(len(rows))
    std = np.zeros(len(rows)) if std is None else np.nan_to_num(std)
    ax.barh(pos - 0.2, np.nan_to_num(paper), height=0.38, color="0.75", label=names[0])
    ax.barh(pos + 0.2, np.nan_to_num(ours), height=0.38, xerr=std if std.any() else None, color=QUERY,
            ecolor="0.2", capsize=2, label=names[1])
    for y, value, s in zip(pos + 0.2, ours, std):  # our value in words: a 0.0 bar is not a missing one
        ax.text(1 if np.isnan(value) else value + s + 1, y, missing if np.isnan(value) else f"{value:.1f}",
                va="center", fontsize=7, color="0.3")
    ax.set_yticks(pos, rows if labels else [""] * len(rows), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def plot_beside_paper(table: pd.DataFrame, metrics: Sequence[str] = ("rank-1", "mAP"), *, title: str | None = None,
                      save_to: PathLike | None = None) -> Figure:
    """Our numbers and the paper's as paired horizontal bars, one panel per metric (percent).

    Args:
        table: :func:`workbench.experiments.paper_table`'s result (columns ``<metric> (ours)`` and
            ``<metric> (paper)``; the index holds the row labels).
        metrics: the metric names of those columns (``"rank-1"``, ``"mAP"`` ...).
        title: figure title.
        save_to: run folder; writes ``figures/beside_paper.png``.

    Returns:
        The figure; a row without a number of ours (failed, missing) shows the paper's bar only.
    """
    rows = [str(r) for r in table.index]
    fig, axes = _grid(len(metrics), ncols=len(metrics), size=(3.6, 0.45 * len(rows) + 1.3))
    for ax, m in zip(axes, metrics):
        ours = pd.to_numeric(table.get(f"{m} (ours)"), errors="coerce").to_numpy(dtype=float)
        paper = pd.to_numeric(table.get(f"{m} (paper)"), errors="coerce").to_numpy(dtype=float)
        _bars_beside_paper(ax, rows, ours, paper, labels=ax is axes[0], xlabel=f"{m} (%)")
    axes[-1].legend(fontsize=7, loc="lower right")
    _suptitle(fig, title)
    save_figure(fig, save_to, "beside_paper")
    return fig


def _suptitle(fig: Figure, title: str | None) -> None:
    """The figure's title, wrapped to its width: a long experiment title is not cut at the edge."""
    if title:
        fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 14)), fontsize=10)


def plot_rows_beside_paper(summary: pd.DataFrame, metrics: Sequence[str] = ("rank1", "mAP"), *,
                           delta: str = "mAP", title: str | None = None, save_to: PathLike | None = None) -> Figure:
    """A table of seeded runs beside the paper's: one panel per metric, then the paired differences.

    Args:
        summary: :func:`workbench.experiments.stats.seed_summary` (``<m>_mean``, ``<m>_std``,
            ``paper_<m>``, ``delta_<m>`` with ``_low``/``_high``, ``paper_delta_<m>``).
        metrics: the absolute panels: our mean with the std over seeds as an error bar (dots: single
            runs are not stored here), the paper's value as a grey bar.
        delta: the metric of the last panel: our paired difference to the baseline row with its 95 %
            interval, and the paper's difference (×).
        title: figure title.
        save_to: run folder; writes ``figures/rows_beside_paper.png``.
    """
    rows = [str(r) for r in summary.index]
    pos = np.arange(len(rows))
    fig, axes = _grid(len(metrics) + 1, ncols=len(metrics) + 1, size=(3.4, 0.5 * len(rows) + 1.4))
    for ax, m in zip(axes, metrics):
        ours = pd.to_numeric(summary.get(f"{m}_mean"), errors="coerce").to_numpy(dtype=float)
        std = np.nan_to_num(pd.to_numeric(summary.get(f"{m}_std"), errors="coerce").to_numpy(dtype=float))
        paper = pd.to_numeric(summary.get(f"paper_{m}"), errors="coerce").to_numpy(dtype=float)
        _bars_beside_paper(ax, rows, ours, paper, std, labels=ax is axes[0], xlabel=f"{METRIC_TITLES.get(m, m)} (%)",
                           names=("paper (ResNet-50, Market)", "ours (mean ± std)"), missing="no run")
    for ax in axes[:len(metrics)]:
        ax.set_ylim(len(rows) - 0.5, -1.4)  # as the Δ panel: room above the first row for the legend
    axes[0].legend(fontsize=7, loc="upper center", ncols=2)  # not over a row's bars or their values
    ax = axes[-1]
    mean = pd.to_numeric(summary.get(f"delta_{delta}"), errors="coerce").to_numpy(dtype=float)
    low = pd.to_numeric(summary.get(f"delta_{delta}_low"), errors="coerce").to_numpy(dtype=float)
    high = pd.to_numeric(summary.get(f"delta_{delta}_high"), errors="coerce").to_numpy(dtype=float)
    paper = pd.to_numeric(summary.get(f"paper_delta_{delta}"), errors="coerce").to_numpy(dtype=float)
    err = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
    ax.errorbar(mean, pos, xerr=err, fmt="o", color=QUERY, ecolor=QUERY, capsize=3, label="ours (95 % CI)")
    ax.scatter(paper, pos, marker="x", color="0.35", zorder=3, label="paper")
    ax.axvline(0, color="0.5", lw=0.8)
    span = np.concatenate([low, high, mean, paper, [0.0]])
    span = span[np.isfinite(span)]
    ax.set_xlim(span.min() - 1, span.max() + 1)  # 0 and every interval inside, with a margin
    ax.set_ylim(len(rows) - 0.5, -1.4)  # rows top to bottom, room for the legend above the first
    ax.set_yticks(pos, [""] * len(rows))
    ax.set_xlabel(f"Δ {METRIC_TITLES.get(delta, delta)} vs baseline (points)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", ncols=2)
    _suptitle(fig, title)
    save_figure(fig, save_to, "rows_beside_paper")
    return fig


_PARAMETER_TITLES = {"epochs": "stage-2 epochs", "lr": "learning rate", "weight_decay": "weight decay"}


def plot_epoch_and_parameter_curves(curves: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("rank1", "mAP"),
                                    *, title: str | None = None, save_to: PathLike | None = None) -> Figure:
    """Paper Fig. 6: rank-1 and mAP against stage-2 epochs, learning rate and weight decay.

    Args:
        curves: ``{parameter: table}`` indexed by the parameter's values, with ``<m>`` or ``<m>_mean``
            and optionally ``<m>_std`` (error bars) per metric (percent), as
            :func:`workbench.experiments.stats.experiment_curves` returns them.
            The learning rate and weight decay get a log axis.
        metrics: one line each.
        title: figure title.
        save_to: run folder; writes ``figures/curves.png``.
    """
    names = list(curves)
    fig, axes = _grid(len(names), ncols=len(names), size=(3.6, 3.0))
    colours = {"rank1": QUERY, "mAP": "#ff7f0e"}
    for ax, name in zip(axes, names):
        c = curves[name]
        if c is None or not len(c):
            ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes, color="0.4")
        else:
            xs = np.asarray(c.index, dtype=float)
            for m in metrics:
                ys = pd.to_numeric(c.get(f"{m}_mean", c.get(m)), errors="coerce").to_numpy(dtype=float)
                std = pd.to_numeric(c.get(f"{m}_std"), errors="coerce").to_numpy(dtype=float) \
                    if f"{m}_std" in c else np.full_like(ys, np.nan)
                ax.plot(xs, ys, marker="o", color=colours.get(m), label=METRIC_TITLES.get(m, m))
                has = ~np.isnan(std)
                if has.any():
                    ax.errorbar(xs[has], ys[has], yerr=std[has], fmt="none", ecolor=colours.get(m), capsize=3)
            if name in ("lr", "weight_decay"):
                ax.set_xscale("log")
                ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=7)
                ax.minorticks_off()
            else:
                _whole_number_ticks(ax, xs)
        ax.set_xlabel(_PARAMETER_TITLES.get(name, name))
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _suptitle(fig, title)
    save_figure(fig, save_to, "curves")
    return fig


def plot_rows_over_training_time(curves: pd.DataFrame, *, budget_s: float | None = None, metric: str = "mAP",
                                 title: str | None = None) -> Figure:
    """Each row's ``metric`` against cumulative training minutes, and beside it the precision of what
    supervised the target per epoch (MAR's true mined positives, the clusters' true same-cluster pairs).

    Args:
        curves: :func:`~workbench.experiments.stats.per_epoch` (per row and epoch: ``minutes``, the
            metric and ``precision``, fractions).
        budget_s: a vertical line at this training time (the baseline's, :func:`~workbench.experiments.stats.at_budget`).
    """
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    ax_metric, ax_prec = fig.subplots(1, 2)
    for label, part in curves.groupby("row", sort=False):
        points = part[["minutes", metric]].dropna()
        if len(points):
            ax_metric.plot(points["minutes"], 100 * points[metric], marker="o", label=label)
        prec = part[["epoch", "precision"]].dropna() if "precision" in part else part.iloc[0:0]
        if len(prec):
            ax_prec.plot(prec["epoch"], 100 * prec["precision"], marker="o", label=label)
    if budget_s is not None:
        ax_metric.axvline(budget_s / 60, color="0.5", linestyle="--", linewidth=1, label="baseline's training time")
    ax_metric.set(xlabel="training time (min, cumulative; evaluation excluded)", ylabel=f"{metric} (%)",
                  title=f"{metric} on the target's test split")
    ax_prec.set(xlabel="stage-2 epoch", ylabel="%", title="true pairs among those that supervised (hidden labels)")
    _whole_number_ticks(ax_prec, curves["epoch"].to_numpy())
    for ax in (ax_metric, ax_prec):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _suptitle(fig, title)
    return fig


def plot_camera_curves(curves: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Per row and epoch, the cameras of the pairs that supervised the target (read from the hidden labels):
    the share of positive pairs that are cross-camera, and how many same-identity pairs the supervision
    found within one camera and across two.

    Args:
        curves: :func:`~workbench.experiments.stats.per_epoch` with ``cross_share``, ``recall_same_cam`` and
            ``recall_cross_cam`` (fractions).
    """
    panels = (("cross_share", "cross-camera pairs among the positives"),
              ("recall_same_cam", "same-identity pairs found, one camera"),
              ("recall_cross_cam", "same-identity pairs found, two cameras"))
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (column, name) in zip(axes, panels):
        for label, part in curves.groupby("row", sort=False):
            points = part[["epoch", column]].dropna() if column in part else part.iloc[0:0]
            if len(points):
                ax.plot(points["epoch"], 100 * points[column], marker="o", label=label)
        ax.set(xlabel="stage-2 epoch", ylabel="%", title=name, ylim=(0, 100))
        _whole_number_ticks(ax, curves["epoch"].to_numpy())
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # rows without a point in the first panel still get their entry
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h), labels.append(l)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=8)
    unlogged = [str(r) for r, part in curves.groupby("row", sort=False)
                if not any(c in part and part[c].notna().any() for c, _ in panels)]
    if unlogged:  # say why a row of the table has no line here
        note = "no line: " + ", ".join(unlogged) + " (their runs were made before the cameras were logged)"
        title = f"{title}; {note}" if title else note
    _suptitle(fig, title)
    return fig


def plot_gradient_shares(shares: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Where each row's update of the shared weights came from: every L_MAR term's share (stacked, %)
    and the step's gradient norm beside it.

    Args:
        shares: :func:`~workbench.experiments.stats.gradient_table` (index: the rows; columns
            ``"share <term> (%)"`` and ``"‖g‖"``).
    """
    fig = Figure(figsize=(10.5, 0.6 * len(shares) + 1.6), layout="constrained")
    ax_share, ax_norm = fig.subplots(1, 2, width_ratios=(3, 1), sharey=True)
    y = np.arange(len(shares))[::-1]
    left = np.zeros(len(shares))
    for column in (c for c in shares if c.startswith("share ")):
        values = shares[column].fillna(0.0).to_numpy(dtype=float)
        positive = np.clip(values, 0.0, None)  # a negative share (pulling against the step) is drawn at 0
        ax_share.barh(y, positive, left=left, label=column[len("share "):-len(" (%)")])
        left += positive
    ax_share.set(yticks=y, yticklabels=list(shares.index), xlim=(0, 100), xlabel="share of the update (%)",
                 title="each term's part in the step (<g_term, g> / ‖g‖²)")
    # below the axes, clear of the titles whatever the number of rows (an axes-relative offset above overlaps the title of one row)
    fig.legend(*ax_share.get_legend_handles_labels(), fontsize=8, ncol=4, loc="outside lower center")
    if "‖g‖" in shares:
        ax_norm.barh(y, shares["‖g‖"].to_numpy(dtype=float), color="0.5")
        ax_norm.set(xlabel="‖g‖", title="the step's gradient norm")
    for ax in (ax_share, ax_norm):
        ax.grid(axis="x", alpha=0.3)
    _suptitle(fig, title)
    return fig


def experiment_figures(tables, folder) -> dict[str, str]:
    """The figures of a results folder, drawn from its tables (``workbench.experiments.summary.Tables``) into
    ``folder``: the rows beside the paper (or Fig. 6's curves), the rows over training time where the table
    compares them at one wall clock, each term's share of the update where measured.

    Returns:
        ``{kind: file name}`` (kinds ``table``, ``curves``, ``cameras``, ``gradients``), what the README links.
    """
    from pathlib import Path

    exp, folder, out = tables.experiment, Path(folder), {}

    def save(fig: Figure, kind: str, name: str) -> None:
        fig.savefig(folder / name, dpi=110, bbox_inches="tight")
        out[kind] = name

    if tables.summary is not None:
        save(plot_rows_beside_paper(tables.summary, title=f"{exp.title}: ours (mean ± std over seeds) and the paper's"),
             "table", f"{exp.name}.png")
        if tables.budget is not None and tables.per_epoch is not None:
            save(plot_rows_over_training_time(tables.per_epoch, budget_s=float(tables.budget["budget_s"].iloc[0]),
                                              title=f"{exp.title}: per epoch, mean over seeds"),
                 "curves", f"{exp.name}_curves.png")
            if "cross_share" in tables.per_epoch and tables.per_epoch["cross_share"].notna().any():
                save(plot_camera_curves(tables.per_epoch, title=f"{exp.title}: the cameras of the supervising pairs "
                                                                 "(hidden labels), mean over seeds"),
                     "cameras", f"{exp.name}_cameras.png")
        if tables.gradient_shares is not None and len(tables.gradient_shares):
            save(plot_gradient_shares(tables.gradient_shares, title=f"{exp.title}: where the update came from"),
                 "gradients", f"{exp.name}_gradients.png")
    elif tables.curves:
        save(plot_epoch_and_parameter_curves(tables.curves, title=exp.title), "table", f"{exp.name}.png")
    return out
