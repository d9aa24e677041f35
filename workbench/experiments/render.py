"""An executed notebook as one HTML file that reads the same on any machine, offline.

``jupyter nbconvert --to html`` leaves three things that break a committed copy: the LaTeX of the
markdown (``$L_{MAR}$``) is typeset in the browser by MathJax fetched from a CDN, so offline it stays
raw; long code lines (papermill's injected parameters) run off the page; and every absolute path of the
machine that executed it is printed as it was. :func:`notebook_html` renders the math on this side
(matplotlib's mathtext, SVG images with the LaTeX as their alt text), loads no script from the network,
wraps long lines, and writes paths under the repository relative to it (under the shared folder as
``${WORKBENCH_SHARED}``, under the home folder with ``~``). :func:`render_notebook` executes a notebook
with papermill first (``python -m workbench render``).

Example:
    >>> render_notebook("notebooks/04_loss_ablation.ipynb", "results/loss_ablation/04_loss_ablation.html",
    ...                 {"results_dir": "results/loss_ablation"})          # doctest: +SKIP
"""
from __future__ import annotations

import base64
import io
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["render_notebook", "notebook_html", "math_svg", "markdown_math", "portable_text"]

#: inline ``$...$`` (not ``\$``, not ``$ x$``, not ``$5``) and display ``$$...$$``
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?!\d)")
#: code the math must not touch: fenced blocks and inline code spans
_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]*`)", re.S)

#: the template: nbconvert's lab template without the scripts it loads from CDNs (require.js,
#: MathJax, mermaid) and with code and output lines wrapped at the page's width
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
  /* long lines wrap instead of running off the page (papermill's injected parameters, log lines) */
  .jp-InputArea-editor pre, .jp-OutputArea-output pre, .jp-RenderedText pre {
    white-space: pre-wrap; overflow-wrap: anywhere; word-break: normal;
  }
  .jp-RenderedHTMLCommon img.wb-math { display: inline; margin: 0; max-width: none; }
  .jp-RenderedHTMLCommon p.wb-math-display { text-align: center; }
</style>
{%- endblock extra_css -%}
"""


# ----------------------------------------------------------------------------- math

def math_svg(tex: str, size: float = 10.5) -> tuple[bytes, float]:
    """LaTeX math (matplotlib's mathtext subset: sub/superscripts, Greek, ``\\mathrm``, ``\\cdot`` …) as
    an SVG image with its text as outlines; returns the SVG and its depth below the baseline in points.

    Raises:
        ValueError: mathtext cannot parse ``tex``.
    """
    import matplotlib
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "workbench", "mathtext.fontset": "cm"}):
        depth = mathtext.math_to_image(f"${tex}$", buf, prop=FontProperties(size=size), format="svg")
    svg = re.sub(rb"<metadata>.*?</metadata>\s*", b"", buf.getvalue(), flags=re.S)  # no creation date
    return svg, float(depth)


def _math_img(tex: str, display: bool) -> str:
    import html

    try:
        svg, depth = math_svg(tex.strip(), size=13.0 if display else 11.5)
    except ValueError:  # outside mathtext's subset: the LaTeX as code, readable without a typesetter
        return f"<code>{html.escape(tex)}</code>"
    src = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    img = (f'<img class="wb-math" alt="{html.escape(tex.strip(), quote=True)}" src="{src}" '
           f'style="vertical-align: -{depth:.1f}pt" />')
    return f'\n\n<p class="wb-math-display">{img}</p>\n\n' if display else img


def markdown_math(text: str) -> str:
    """Markdown with its ``$...$`` and ``$$...$$`` math replaced by SVG images (code spans and fenced
    blocks untouched)."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts lie outside code
        part = _DISPLAY_MATH.sub(lambda m: _math_img(m.group(1), True), parts[i])
        parts[i] = _INLINE_MATH.sub(lambda m: _math_img(m.group(1), False), part)
    return "".join(parts)


# ----------------------------------------------------------------------------- paths

def _replacements(root: Path | None = None) -> list[tuple[str, str]]:
    """(absolute prefix, what to show instead), longest first."""
    from workbench.experiments.execute import repo_root
    from workbench.paths import SHARED, shared_root

    pairs: list[tuple[str, str]] = []
    root = Path(root) if root is not None else repo_root()
    shared = shared_root()
    for path, shown in ((shared, SHARED), (root, "")):
        if path is None:
            continue
        for variant in {str(path), str(Path(path).resolve())}:
            pairs += [(variant + "/", f"{shown}/" if shown else ""), (variant, shown or ".")]
    home = str(Path.home())
    if home not in ("/", ""):
        pairs.append((home + "/", "~/"))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def portable_text(text: str, replacements: list[tuple[str, str]] | None = None) -> str:
    """``text`` with the absolute paths of this machine written as a reader elsewhere would name them:
    relative to the repository, ``${WORKBENCH_SHARED}/…``, ``~/…``."""
    for old, new in replacements if replacements is not None else _replacements():
        text = text.replace(old, new)
    return text


def _portable(value: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        return portable_text(value, pairs)
    if isinstance(value, list):
        return [_portable(v, pairs) for v in value]
    if isinstance(value, dict):
        return {k: _portable(v, pairs) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- notebook → HTML

def _prepare(nb, root: Path | None = None):
    """The notebook as the HTML shows it: portable paths, math as images, widgets as their text."""
    pairs = _replacements(root)
    nb.metadata.pop("widgets", None)  # their views need scripts from a CDN: the outputs' text stands in
    papermill = nb.metadata.get("papermill")
    if papermill:
        nb.metadata["papermill"] = _portable(dict(papermill), pairs)
    for cell in nb.cells:
        cell.source = portable_text(cell.source, pairs)
        if cell.cell_type == "markdown":
            cell.source = markdown_math(cell.source)
        for output in cell.get("outputs", []):
            for key in ("text", "evalue", "traceback"):
                if key in output:
                    output[key] = _portable(output[key], pairs)
            data = output.get("data")
            if not data:
                continue
            data.pop("application/vnd.jupyter.widget-view+json", None)
            for mime in ("text/plain", "text/html", "text/markdown", "text/latex"):
                if mime in data:
                    data[mime] = _portable(data[mime], pairs)
            if "text/markdown" in data:
                markdown = data["text/markdown"]
                data["text/markdown"] = markdown_math("".join(markdown) if isinstance(markdown, list) else markdown)
    return nb


def notebook_html(notebook: str | os.PathLike | Any, *, root: str | os.PathLike | None = None) -> str:
    """An executed notebook (a path or a ``NotebookNode``) as one self-contained HTML page: math rendered
    here, no script from the network, long lines wrapped, no absolute path of this machine.

    Args:
        notebook: the executed notebook.
        root: the folder paths are shown relative to (default: the repository root).
    """
    import copy

    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    if isinstance(notebook, (str, os.PathLike)):
        name = Path(notebook).stem
        nb = nbformat.read(str(notebook), as_version=4)
    else:
        nb = copy.deepcopy(notebook)
        name = str(nb.metadata.get("papermill", {}).get("input_path", "notebook")).rsplit("/", 1)[-1]
        name = name.removesuffix(".ipynb")
    nb = _prepare(nb, Path(root) if root is not None else None)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"wb_offline.html.j2": _TEMPLATE})])
    exporter.template_file = "wb_offline.html.j2"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
    return body


def render_notebook(notebook: str | os.PathLike, out: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                    *, kernel_name: str = "python3", timeout: float | None = None) -> Path:
    """Execute a notebook with papermill (in ``notebooks/``, as JupyterLab runs it) and write it as
    offline HTML (:func:`notebook_html`).

    Parameters are given to the notebook as they are: relative paths stay relative (the notebooks read
    them from the repository root), so the injected-parameters cell names no folder of this machine.

    Args:
        notebook: the notebook, e.g. ``notebooks/04_loss_ablation.ipynb``.
        out: the HTML file to write.
        parameters: values for its parameters cell, e.g. ``{"results_dir": "results/loss_ablation"}``.
        kernel_name, timeout: the Jupyter kernel and the per-cell timeout in seconds.

    Returns:
        The HTML file.

    Raises:
        MissingFileError: no such notebook.
        ValueError: a parameter the notebook does not declare.
        papermill.PapermillExecutionError: a cell raised (nothing is written).
    """
    from workbench.errors import MissingFileError
    from workbench.experiments.execute import run_notebook
    from workbench.runs import atomic_write_text

    path = Path(notebook)
    if not path.is_file():
        raise MissingFileError(f"no notebook at {path}")
    with tempfile.TemporaryDirectory(prefix="workbench-render-") as tmp:
        executed = run_notebook(path, dict(parameters or {}), tmp, kernel_name=kernel_name, timeout=timeout,
                                as_given=True)
        html = notebook_html(executed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html)
    return out
