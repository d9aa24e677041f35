"""workbench.experiments.render: an executed notebook as HTML that reads the same offline on any machine
(issue 38: committed HTML showed raw LaTeX without the CDN's MathJax, injected parameters ran off the page
with one machine's paths)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from workbench.experiments.execute import repo_root
from workbench.experiments.render import markdown_math, notebook_html, portable_text, render_notebook

REPO = Path(__file__).resolve().parents[1]


def _text(html: str) -> str:
    """What a reader sees: the page without its tags (code is split into highlighted spans)."""
    import html as h

    return h.unescape(re.sub(r"<[^>]+>", "", html))


def test_markdown_math_becomes_svg_images_outside_code() -> None:
    text = "The full $L_{MAR}$ costs `$HOME` and $5; $$\\lambda_1 = 2\\cdot10^{-4}$$ here, \\$ stays."
    out = markdown_math(text)
    images = re.findall(r'<img class="wb-math" alt="([^"]*)" src="data:image/svg\+xml;base64,', out)
    assert images == ["L_{MAR}", "\\lambda_1 = 2\\cdot10^{-4}"]
    assert "`$HOME`" in out and "$5" in out and "\\$ stays" in out  # code, prices and escapes untouched
    assert "<code>\\notamacro{x}</code>" in markdown_math("$\\notamacro{x}$")  # outside mathtext: as code


def test_paths_of_this_machine_are_written_portably(monkeypatch, tmp_path) -> None:
    shared = tmp_path / "shared"
    monkeypatch.setenv("WORKBENCH_SHARED", str(shared))
    root = repo_root()
    text = f"run: {root}/runs/x/mar; data {shared}/data/market; home {Path.home()}/notes; cwd {root}"
    assert portable_text(text) == "run: runs/x/mar; data ${WORKBENCH_SHARED}/data/market; home ~/notes; cwd ."


def test_notebook_html_loads_nothing_from_the_network_and_wraps_long_lines(tmp_path) -> None:
    root = repo_root()
    nb = new_notebook(cells=[
        new_markdown_cell("# t\n\n$L_{AL}$ and $y = \\mathrm{softmax}(s\\, a^\\top f(x))$"),
        new_code_cell(f'results_dir = "{root}/results/loss_ablation"  # ' + "x" * 300,
                      metadata={"tags": ["injected-parameters"]},
                      outputs=[new_output("stream", name="stdout", text=f"run: {root}/runs/a\n"),
                               new_output("display_data", data={"text/markdown": "**$T$** shown"})]),
    ])
    html = notebook_html(nb)
    assert "<script src=" not in html and "mathjax" not in html.lower() and "cdnjs" not in html
    assert str(root) not in html
    assert 'results_dir = "results/loss_ablation"' in _text(html) and "run: runs/a" in _text(html)
    assert html.count('class="wb-math"') == 3  # two in the markdown cell, one in the markdown output
    assert "white-space: pre-wrap" in html


@pytest.mark.notebooks
def test_render_executes_in_notebooks_and_writes_offline_html(tmp_path) -> None:
    """`python -m workbench render NOTEBOOK --out FILE -p name value`: papermill in the notebook's folder,
    the parameter injected as given (relative: no path of this machine), then the offline HTML."""
    nb = new_notebook(cells=[
        new_markdown_cell("# rendered\n\n$\\beta L_{RJ}$"),
        new_code_cell('results_dir = None\nvalue = 1', metadata={"tags": ["parameters"]}),
        new_code_cell("import os\nprint('cwd', os.getcwd(), 'value', value, 'dir', results_dir)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "nb" / "rendered.ipynb"
    notebook.parent.mkdir()
    nbformat.write(nb, notebook)
    out = render_notebook(notebook, tmp_path / "out" / "rendered.html", {"results_dir": "results/loss_ablation",
                                                                          "value": 3})
    html = out.read_text()
    assert 'results_dir = "results/loss_ablation"' in _text(html)  # the injected parameters, as given
    assert "value 3 dir results/loss_ablation" in _text(html) and "<script src=" not in html
    assert 'alt="\\beta L_{RJ}"' in html
    proc = subprocess.run([sys.executable, "-m", "workbench", "render", str(notebook), "--out", str(tmp_path / "x.html"),
                           "-p", "nonsense", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "nonsense" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
