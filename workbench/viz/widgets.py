"""Interactive explorers of soft multilabels (ipywidgets), driven by cached :class:`SoftLabelViews`.

Each explorer is a small class: the widget tree is ``.widget`` (a bare explorer at the end of a
notebook cell displays it), the controls are attributes (``.index``, ``.camera``, ``.threshold`` ...)
that code and tests can set, every rendering goes into ``.output`` (an ``ipywidgets.Output``, its
``outputs`` replaced as a whole, which also works without a kernel) and the last rendered result is
kept in ``.last``. Nothing here runs the network: switching a control only indexes cached arrays
(embeddings and pair agreements are computed once per view and kept by the explorer).

Drawing one image's figures takes 0.3-1 s (matplotlib), so the image explorer keeps up with a slider
moved by key presses in two ways: in a kernel it draws on a worker thread, always the slider's latest
value (presses that arrive while it draws are merged into one drawing, never queued one by one), and it
keeps the last drawings it made, so going back to an image is immediate.

Example:
    >>> views = {"before": load_views(run, checkpoint=init_checkpoint_of(run), name="before"),
    ...          "after": load_views(run, name="after")}                 # doctest: +SKIP
    >>> explore(views)                                                   # doctest: +SKIP
"""
from __future__ import annotations

import base64
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import ipywidgets as W
import numpy as np
from matplotlib.figure import Figure

from workbench.analysis.arrays import embed_2d, pair_agreements, rank_gallery
from workbench.analysis.views import PARTS, SoftLabelViews, load_views
from workbench.viz.plots import figure_png, plot_embedding, plot_retrieval
from workbench.viz.soft_labels import draw_agreement, plot_camera_heatmap, plot_camera_profile, plot_soft_label

__all__ = ["ALL", "ImageExplorer", "in_kernel", "CameraExplorer", "RunExplorer", "ThresholdExplorer", "explore", "as_views"]

ViewsArg = SoftLabelViews | Mapping[str, SoftLabelViews]
ALL = "all"  # the "no filter" value of the identity and camera selectors (None would show a blank box)


# ----------------------------------------------------------------------------- helpers


def as_views(views: ViewsArg | Sequence[SoftLabelViews]) -> dict[str, SoftLabelViews]:
    """``{name: views}`` from one views object, a sequence of them or a dict."""
    if isinstance(views, SoftLabelViews):
        return {views.name: views}
    if isinstance(views, Mapping):
        out = dict(views)
    else:
        out = {v.name: v for v in views}
    if not out:
        raise ValueError("no views given")
    return out


def _figure_output(fig: Figure) -> dict:
    """A ``display_data`` output holding the figure as PNG."""
    png = base64.b64encode(figure_png(fig)).decode("ascii")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": png, "text/plain": f"<Figure with {len(fig.axes)} axes>"}}


def _text_output(text: str) -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": {"text/plain": text}}


def _outputs(*items: Figure | str) -> tuple[dict, ...]:
    """Figures and text lines as the outputs of an ``Output`` widget."""
    return tuple(_figure_output(x) if isinstance(x, Figure) else _text_output(x) for x in items)


def _show(output: W.Output, *items: Figure | str) -> None:
    """Replace the output's content with figures and text lines (in one trait change)."""
    output.outputs = _outputs(*items)


def in_kernel() -> bool:
    """True inside a running IPython kernel (JupyterLab, papermill), where widget events arrive as messages."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return getattr(ip, "kernel", None) is not None


class _Explorer:
    """Base: displays its ``.widget``."""

    widget: W.Widget
    output: W.Output

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _new_output(self) -> W.Output:
        out = W.Output()
        out.add_class("wb-output")
        return out


# ----------------------------------------------------------------------------- one image


class ImageExplorer(_Explorer):
    """Pick a target image (by index, identity, camera) → its soft multilabel and retrieval list.

    Args:
        views: one :class:`SoftLabelViews`, or ``{name: views}`` of the same data (a model selector
            is then shown, e.g. before / after joint training).
        part: initial part, ``"query"``, ``"gallery"`` or ``"train"``.
        k: agents shown.
        retrieval_k: gallery images in the ranked list (query images only).
        background: draw on a worker thread, the controls' latest values only (default: inside a
            kernel); False draws at once on every change (scripts, tests).
        cache: drawings kept (by model, part, filters and slider position).

    Attributes:
        model, part, identity, camera, index: the controls; ``index`` runs over the images of
        ``part`` left by the identity and camera filters (``"all"``: no filter).
        last: ``{"model", "part", "index" (position in the part), "pid", "camid", "path",
        "top_agents", "top_mass", "retrieval", "collapsed"}`` of the last rendering (``index`` None
        when the filters leave no image; ``collapsed`` the message shown instead of the figures when
        the model's soft multilabels have collapsed, else None).

    Identities and cameras are the dataset's own (as in the file names), for train images too.
    """

    #: the worker waits this long for the next change before it draws (key presses come 0.05-0.2 s apart),
    #: at most SETTLE_MAX_S in all
    SETTLE_S, SETTLE_MAX_S = 0.12, 1.0

    def __init__(self, views: ViewsArg, *, part: str = "query", k: int = 10, retrieval_k: int = 8,
                 background: bool | None = None, cache: int = 64) -> None:
        self.views = as_views(views)
        self.k, self.retrieval_k = int(k), int(retrieval_k)
        self.last: dict[str, Any] = {}
        self._busy = False
        self.background = in_kernel() if background is None else bool(background)
        self._drawn: OrderedDict[tuple, tuple[tuple[dict, ...], dict[str, Any]]] = OrderedDict()
        self._cache_size = int(cache)
        self._lock = threading.Lock()
        self._wanted = 0  # changes asked for; the worker draws until it has drawn the latest
        self._worker: threading.Thread | None = None
        names = list(self.views)
        self.model = W.Dropdown(options=names, value=names[-1], description="model",
                                layout=W.Layout(display="" if len(names) > 1 else "none"))
        self.part = W.Dropdown(options=list(PARTS), value=part, description="part")
        self.identity = W.Dropdown(description="identity")
        self.camera = W.Dropdown(description="camera")
        self.index = W.IntSlider(min=0, max=0, value=0, description="image #", continuous_update=False)
        for name in ("model", "part", "identity", "camera", "index"):
            getattr(self, name).add_class(f"wb-{name}")
        self.output = self._new_output()
        self.widget = W.VBox([W.HBox([self.model, self.part]), W.HBox([self.identity, self.camera]),
                              self.index, self.output])
        self.widget.add_class("wb-image-explorer")
        self._fill_filters(first=True)
        self.model.observe(lambda _: self._request_render(), "value")
        self.part.observe(lambda _: self._fill_filters(), "value")
        self.identity.observe(lambda _: self._filters_changed(), "value")
        self.camera.observe(lambda _: self._filters_changed(), "value")
        self.index.observe(lambda _: self._busy or self._request_render(), "value")

    @property
    def _views(self) -> SoftLabelViews:
        return self.views[self.model.value]

    def candidates(self) -> np.ndarray:
        """Indices (into the current part) of the images the identity and camera filters keep."""
        v, part = self._views, self.part.value
        keep = np.ones(len(v.samples[part]), dtype=bool)
        if self.identity.value not in (ALL, None):
            keep &= v.pids(part) == self.identity.value
        if self.camera.value not in (ALL, None):
            keep &= v.camids(part) == self.camera.value
        return np.flatnonzero(keep)

    def _fill_filters(self, first: bool = False) -> None:
        v, part = self._views, self.part.value
        self._busy = True
        try:
            self.identity.options = [("all", ALL)] + [(str(p), int(p)) for p in np.unique(v.pids(part))]
            self.identity.value = ALL
            self.camera.options = [("all", ALL)] + [(str(c), int(c)) for c in np.unique(v.camids(part))]
            self.camera.value = ALL
        finally:
            self._busy = False
        self._filters_changed(first)

    def _filters_changed(self, first: bool = False) -> None:
        if self._busy:
            return
        n = len(self.candidates())
        self._busy = True
        try:
            self.index.value = 0
            self.index.max = max(n - 1, 0)
        finally:
            self._busy = False
        if first:
            self.render()  # the first drawing, before the widget is shown: at once
        else:
            self._request_render()

    def _request_render(self) -> None:
        """Draw for the controls' current values: at once, or (``background``) on the worker, which
        draws the latest values when it is free; changes that arrive meanwhile make one more drawing."""
        if not self.background:
            self.render()
            return
        with self._lock:
            self._wanted += 1
            if self._worker is not None:
                return  # the running worker sees the new count and draws again
            self._worker = threading.Thread(target=self._draw_until_current, name="wb-image-explorer", daemon=True)
            self._worker.start()

    def _draw_until_current(self) -> None:
        while True:
            with self._lock:
                asked = self._wanted
            for _ in range(int(self.SETTLE_MAX_S / self.SETTLE_S)):  # key presses in a row: draw where they stop
                time.sleep(self.SETTLE_S)
                with self._lock:
                    if self._wanted == asked:
                        break
                    asked = self._wanted
            try:
                self.render()
            except Exception as err:  # a thread's exception would vanish: show it where the figure goes
                _show(self.output, f"drawing failed: {type(err).__name__}: {err}")
            with self._lock:
                if self._wanted == asked:
                    self._worker = None
                    return

    def wait(self, timeout: float | None = 30.0) -> None:
        """Block until the worker has drawn the latest values (``background``; immediate otherwise)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def render(self) -> dict[str, Any]:
        """Draw the selected image's soft multilabel (and ranked gallery for a query)."""
        v, part = self._views, self.part.value
        cands = self.candidates()
        if len(cands) == 0:
            self.last = {"model": self.model.value, "part": part, "index": None}
            _show(self.output, "no image matches these filters")
            return self.last
        pos = min(self.index.value, len(cands) - 1)
        key = (self.model.value, part, self.identity.value, self.camera.value, pos)
        if key in self._drawn:  # drawn before: shown at once
            self._drawn.move_to_end(key)
            outputs, self.last = self._drawn[key]
            self.output.outputs = outputs
            return self.last
        i = int(cands[pos])
        sample = v.samples[part][i]
        y = v.multilabels[part][i]  # (Np,)
        top = np.argsort(-y, kind="stable")[: self.k]
        # the slider counts the images the filters keep: without filters it is the image's number
        # in the part (the title's "#i"); with filters the title also says which of the matches it is
        filtered = len(cands) != len(v.samples[part])
        where = f"{part} #{i}" + (f" (match {pos} of 0–{len(cands) - 1})" if filtered else "")
        title = (f"{self.model.value} · {where} · pid {sample.pid} · cam {sample.camid} · "
                 f"{Path(sample.path).name}")
        collapsed = v.collapse()
        self.last = {"model": self.model.value, "part": part, "index": i, "pid": sample.pid,
                     "camid": sample.camid, "path": sample.path, "top_agents": top.tolist(),
                     "top_mass": float(y[top].sum()), "retrieval": None, "collapsed": collapsed}
        if collapsed:
            _show(self.output, title, collapsed)
            return self.last
        label = ("soft multilabel: " + ", ".join(f"a{j} {y[j]:.3f}" for j in top[:5])
                 + f" … (top {len(top)} of {len(y)} agents hold {y[top].sum():.2f})")
        figures: list[Figure | str] = [title, label, plot_soft_label(y, agent_images=v.agent_images, k=self.k,
                                                                     image=sample.path)]
        retrieval = None
        if part == "query":
            retrieval = rank_gallery(v.distmat, v.samples["query"], v.samples["gallery"], (i,),
                                     self.retrieval_k)[0].tolist()
            figures.append(plot_retrieval(v.distmat, v.samples["query"], v.samples["gallery"], queries=(i,),
                                          k=self.retrieval_k))
        self.last["retrieval"] = retrieval
        outputs = _outputs(*figures)
        self.output.outputs = outputs
        self._drawn[key] = (outputs, dict(self.last))
        while len(self._drawn) > self._cache_size:
            self._drawn.popitem(last=False)
        return self.last


# ----------------------------------------------------------------------------- cameras


class CameraExplorer(_Explorer):
    """Per-camera mean soft multilabels, side by side for several models (e.g. before / after).

    Args:
        views_by_name: ``{name: views}`` (or one views object) of the same data.
        part: which target images, ``"train"`` (default: where L_CML acts), ``"query"`` or ``"gallery"``.
        k: agent columns (top-k by overall mass, the same for every model).

    Attributes:
        camera: ``"all"`` → heatmap of every camera; a camera id → that camera against the mean.
        last: ``{"camera", "agents", "means": {name: (k,) mean multilabel of the camera or (C, k)}}``.
    """

    def __init__(self, views_by_name: ViewsArg, *, part: str = "train", k: int = 16) -> None:
        self.views = as_views(views_by_name)
        self.part, self.k = part, int(k)
        first = next(iter(self.views.values()))
        cams = np.unique(first.camids(part))
        self.camera = W.Dropdown(options=[("all cameras", ALL)] + [(f"cam {c}", int(c)) for c in cams],
                                 value=ALL, description="camera")
        self.camera.add_class("wb-camera")
        self.output = self._new_output()
        self.widget = W.VBox([self.camera, self.output])
        self.widget.add_class("wb-camera-explorer")
        self.last: dict[str, Any] = {}
        self.camera.observe(lambda _: self.render(), "value")
        self.render()

    def render(self) -> dict[str, Any]:
        """Draw the heatmap (all cameras) or the selected camera's profile."""
        ys = {n: v.multilabels[self.part] for n, v in self.views.items()}
        cams = {n: v.camids(self.part) for n, v in self.views.items()}
        collapsed = [msg for v in self.views.values() if (msg := v.collapse(self.part))]
        if collapsed:
            self.last = {"camera": self.camera.value, "collapsed": collapsed}
            _show(self.output, *collapsed)
            return self.last
        if self.camera.value == ALL:
            fig = plot_camera_heatmap(ys, cams, k=self.k)
        else:
            fig = plot_camera_profile(ys, cams, self.camera.value, k=self.k)
        mass = sum(y.mean(0) for y in ys.values())  # (Np,)
        agents = np.argsort(-mass, kind="stable")[: self.k]
        means = {}
        for n, y in ys.items():
            sel = cams[n] == self.camera.value if self.camera.value != ALL else slice(None)
            means[n] = y[sel][:, agents].mean(0)  # (k,)
        self.last = {"camera": self.camera.value, "agents": agents.tolist(), "means": means}
        _show(self.output, fig)
        return self.last


# ----------------------------------------------------------------------------- embeddings per checkpoint


class RunExplorer(_Explorer):
    """A checkpoint selector that switches a 2-D embedding of the target features.

    Args:
        views_by_name: ``{name: views}`` (checkpoints, epochs, ablations ...).
        method: ``"umap"`` or ``"pca"`` (fast); computed once per view, on first display, and cached.
        part: which target images.
        seed: random state of UMAP.

    Attributes:
        run: the checkpoint selector; color_by: ``"identity"`` / ``"camera"``.
        embeddings: ``{name: (N, 2) coordinates}`` computed so far.
        last: ``{"run", "color_by", "metrics"}``.
    """

    def __init__(self, views_by_name: ViewsArg, *, method: str = "umap", part: str = "train", seed: int = 0) -> None:
        self.views = as_views(views_by_name)
        self.method, self.part, self.seed = method, part, int(seed)
        self.embeddings: dict[str, np.ndarray] = {}
        names = list(self.views)
        self.run = W.Dropdown(options=names, value=names[-1], description="checkpoint")
        # the label as its own widget: a ToggleButtons' description floats above the buttons in JupyterLab
        self.color_by = W.ToggleButtons(options=["identity", "camera"], value="identity")
        self.run.add_class("wb-run")
        self.color_by.add_class("wb-color-by")
        self.output = self._new_output()
        colour = W.Label("colour", layout=W.Layout(margin="0 4px 0 16px"))
        self.widget = W.VBox([W.HBox([self.run, colour, self.color_by], layout=W.Layout(align_items="center")),
                              self.output])
        self.widget.add_class("wb-run-explorer")
        self.last: dict[str, Any] = {}
        self.run.observe(lambda _: self.render(), "value")
        self.color_by.observe(lambda _: self.render(), "value")
        self.render()

    def embedding(self, name: str) -> np.ndarray:
        """(N, 2) coordinates of a view (computed once)."""
        if name not in self.embeddings:
            self.embeddings[name] = embed_2d(self.views[name].features[self.part], self.method, self.seed)
        return self.embeddings[name]

    def render(self) -> dict[str, Any]:
        name = self.run.value
        v = self.views[name]
        coords = self.embedding(name)
        fig = plot_embedding({f"{name} ({self.method.upper()})": coords}, v.pids(self.part),
                             camids=v.camids(self.part), color_by=self.color_by.value, method="precomputed")
        metrics = {k: v.metrics[k] for k in ("rank1", "mAP") if k in v.metrics}
        text = f"{name}: " + ", ".join(f"{k} {100 * x:.1f}%" for k, x in metrics.items())
        self.last = {"run": name, "color_by": self.color_by.value, "metrics": metrics}
        _show(self.output, text, fig)
        return self.last


# ----------------------------------------------------------------------------- the threshold T


class ThresholdExplorer(_Explorer):
    """A slider for the agreement threshold T: which pairs L_MDL would call positive, and how right.

    Pair agreements are computed once (:func:`pair_agreements`); moving the slider only counts.

    Args:
        views: one views object (or a dict: its last entry is used).
        part: which target images (``"train"``: the pairs L_MDL mines from).
        threshold: initial T (default: the run's final T, ``views.threshold``; without one, the
            agreement of the top 0.5 % pairs, DESIGN's initial T), rounded to the slider's step (0.001).
        max_pairs: pairs used at most (random subset beyond).
        seed: random state of that subset.

    Attributes:
        threshold: the ``FloatSlider``.
        agreements, same: (P,) agreements and same-identity flags.
        last: ``{"threshold", "n_pairs", "n_pos", "n_true", "precision", "recall"}``.
    """

    def __init__(self, views: ViewsArg, *, part: str = "train", threshold: float | None = None,
                 max_pairs: int = 200_000, seed: int = 0) -> None:
        v = list(as_views(views).values())[-1]
        self.name = v.name
        self.collapsed = v.collapse(part)
        self.agreements, self.same = pair_agreements(v.multilabels[part], v.pids(part), max_pairs=max_pairs,
                                                     seed=seed)
        self._bins = np.linspace(0.0, 1.0, 51)
        if threshold is None:
            threshold = v.threshold
        if threshold is None:
            threshold = float(np.quantile(self.agreements, 0.995)) if len(self.agreements) else 0.5
        # step 0.001 and the same 3 decimals as the figures: the slider starts at the T they show
        self.threshold = W.FloatSlider(value=round(float(threshold), 3), min=0.0, max=1.0, step=0.001,
                                       readout_format=".3f", description="T", continuous_update=False)
        self.threshold.add_class("wb-threshold")
        self.output = self._new_output()
        self.widget = W.VBox([self.threshold, self.output])
        self.widget.add_class("wb-threshold-explorer")
        self.last: dict[str, Any] = {}
        self.threshold.observe(lambda _: self.render(), "value")
        self.render()

    def counts(self, threshold: float) -> dict[str, Any]:
        """Pairs with agreement ≥ T, how many share an identity, precision and recall."""
        pos = self.agreements >= threshold  # (P,)
        n_pos, n_true = int(pos.sum()), int((pos & self.same).sum())
        return {"threshold": float(threshold), "n_pairs": int(len(pos)), "n_pos": n_pos, "n_true": n_true,
                "precision": n_true / n_pos if n_pos else float("nan"),
                "recall": n_true / max(int(self.same.sum()), 1)}

    def render(self) -> dict[str, Any]:
        c = self.counts(self.threshold.value)
        self.last = c
        if self.collapsed:
            _show(self.output, self.collapsed)
            return c
        fig = Figure(figsize=(5.5, 3.2), layout="constrained")
        ax = fig.add_subplot()
        draw_agreement(ax, self.agreements, self.same, c["threshold"], self._bins)
        precision = f"{100 * c['precision']:.1f} %" if c["n_pos"] else "– (no positive pair)"
        ax.set_title(f"{self.name}: {c['n_pos']} positive pairs, precision {precision}", fontsize=9)
        text = (f"T = {c['threshold']:.3f}: {c['n_pos']} of {c['n_pairs']} pairs are positives, "
                f"{c['n_true']} of them true (precision {precision}, recall {100 * c['recall']:.1f} %)")
        _show(self.output, text, fig)
        return c


# ----------------------------------------------------------------------------- all together


def explore(views_or_run_dirs: Any, *, method: str = "umap", part: str = "train",
            threshold: float | None = None) -> W.Tab:
    """All explorers in one tab widget.

    Args:
        views_or_run_dirs: views (one, a list, or ``{name: views}``), or run folders (one path, a
            list or ``{name: path}``) loaded with :func:`load_views`.
        method: embedding method of the run explorer (``"umap"`` or ``"pca"``).
        part: target images for the camera, embedding and threshold explorers.
        threshold: where the threshold slider starts (default: the run's final T).

    Returns:
        A ``Tab``; the explorer objects are in its ``explorers`` attribute (``{"image", "camera",
        "embedding", "threshold"}``).
    """
    items = views_or_run_dirs
    if isinstance(items, (str, Path)):
        items = [items]
    if isinstance(items, Mapping):
        items = {n: load_views(x, name=n) if isinstance(x, (str, Path)) else x for n, x in items.items()}
    elif not isinstance(items, SoftLabelViews):
        items = [load_views(x) if isinstance(x, (str, Path)) else x for x in items]
    views = as_views(items)
    explorers = {
        "image": ImageExplorer(views),
        "camera": CameraExplorer(views, part=part),
        "embedding": RunExplorer(views, method=method, part=part),
        "threshold": ThresholdExplorer(views, part=part, threshold=threshold),
    }
    tab = W.Tab(children=[e.widget for e in explorers.values()])
    for i, title in enumerate(("image", "cameras", "embedding", "threshold T")):
        tab.set_title(i, title)
    tab.add_class("wb-explore")
    tab.explorers = explorers  # plain attribute: the explorer objects stay reachable
    return tab
