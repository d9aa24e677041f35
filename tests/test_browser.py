"""End to end in a real browser: JupyterLab runs notebook 08 on a trained run and its explorers react,
then notebook 03 at smoke scale shows its training progress bar moving.

A short ``demo`` pipeline is trained first into a temporary ``WORKBENCH_RUNS`` as
``<time>-demo/{pretrain,mar}``, as ``make demo`` leaves it: what 08 opens at its defaults. A
JupyterLab server (this venv's, temporary config / runtime / settings / data folders, autosave off,
checkpoints in the temporary folder) serves the checkout; headless Chromium, driven by Playwright's
sync API with the system's ``chromium`` binary (no browser download), opens
``notebooks/08_soft_label_explorer.ipynb``, runs all cells, waits for the widgets, checks that two
different images show different soft multilabels (the model learned something), changes the image
explorer's identity and index, and checks that the rendered figure changed and that five presses on the
index slider end on the sixth image. Then a copy of 03 with
smoke parameters (served from a git-ignored ``runs/browser-test-*`` folder, removed afterwards) runs
all cells while the test watches its tqdm widgets: one bar per epoch, the step count moving, the loss
terms and T in the postfix. The notebook file is restored byte for byte if anything wrote to it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/08_soft_label_explorer.ipynb"
RUN_TIMEOUT_MS = 600_000  # views of the reused run + UMAP's numba compilation (~60 s idle, more when busy)

# JupyterLab state read through ``window.jupyterapp`` (``--LabApp.expose_app_in_browser``)
JS_NOTEBOOK_READY = """(name) => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.context || !w.context.path.endsWith(name)) return false;
  const kernel = w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && w.content.widgets.length > 0;
}"""
JS_RUN_STATE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  for (const c of cells) {
    const err = c.model.outputs.toJSON().find(o => o.output_type === 'error');
    if (err) return 'error: ' + err.ename + ': ' + err.evalue;
  }
  const done = cells.every(c => c.model.executionCount !== null);
  return done && w.sessionContext.session.kernel.status === 'idle' ? 'done' : false;
}"""
#: the text of every tqdm widget bar (description, counts, postfix), in page order
JS_PROGRESS_BARS = """() => Array.from(document.querySelectorAll('.widget-hbox'))
  .filter(b => b.querySelector('.progress-bar, progress'))
  .map(b => b.innerText.replace(/\\s+/g, ' ').trim())"""
JS_IMAGE_CHANGED = """(old) => {
  const img = document.querySelector('.wb-image-explorer .wb-output img');
  return !!img && img.src !== old;
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").is_file():
        path = "/usr/bin/chromium"
    if path is None:
        pytest.skip("no chromium binary on PATH or at /usr/bin/chromium (the test never downloads a browser)")
    return path


def _soft_label_line(text: str) -> str:
    """The image explorer's soft multilabel in words (``soft multilabel: a12 0.231, a5 0.120 …``)."""
    lines = [line for line in text.splitlines() if line.startswith("soft multilabel: ")]
    assert lines, f"no soft multilabel shown in: {text!r}"
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(folder: Path) -> None:
    """User settings: no autosave, every cell in the DOM, no news or update checks."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
    }
    for rel, value in settings.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(value))


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def trained_run(tmp_path) -> Path:
    """A short demo pipeline, as `make demo` leaves it (``$WORKBENCH_RUNS/<time>-demo``): what 08 opens."""
    _chromium()  # skip before training when there is no browser
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from workbench.config import from_params
    from workbench.engine import pretrain, train_mar

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
        mp.setenv("CI", "true")
        # the demo preset and data (what 08 reuses at its defaults), fewer epochs
        cfg = from_params({"preset": "demo", "pretrain_epochs": 3, "epochs": 1, "eval_every": 0, "device": "cpu"})
        root = tmp_path / "runs" / "20250101-000000-demo"  # what `make demo` leaves
        stage1 = pretrain(cfg, root / "pretrain")
        return train_mar(cfg, root / "mar", init_checkpoint=stage1.checkpoint).run_dir


@pytest.fixture
def lab(tmp_path, trained_run):
    """A JupyterLab server on the checkout; yields its base URL and token; shut down afterwards."""
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed in this environment")
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = {name: tmp_path / "jupyter" / name for name in ("config", "runtime", "data", "settings",
                                                               "workspaces", "checkpoints", "ipython")}
    for folder in jupyter.values():
        folder.mkdir(parents=True)
    _write_settings(jupyter["settings"])
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(jupyter["config"]), JUPYTER_RUNTIME_DIR=str(jupyter["runtime"]),
               JUPYTER_DATA_DIR=str(jupyter["data"]), IPYTHONDIR=str(jupyter["ipython"]), JUPYTER_PLATFORM_DIRS="1",
               WORKBENCH_DATA=str(tmp_path / "data"), WORKBENCH_RUNS=str(tmp_path / "runs"))
    env.pop("CI", None)  # CI turns training's progress bars off; a user's JupyterLab has them
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
           f"--ServerApp.root_dir={REPO}", f"--FileCheckpoints.checkpoint_dir={jupyter['checkpoints']}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={jupyter['settings']}",
           f"--LabApp.workspaces_dir={jupyter['workspaces']}"]
    log = tmp_path / "jupyter-lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(proc, f"{base}/api/status?token={token}", log)
        yield base, token
    finally:
        proc.terminate()  # SIGTERM: the server shuts its kernels down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_notebook_explorer_in_jupyterlab(lab, trained_run, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    chromium = _chromium()
    base, token = lab
    notebook = REPO / NOTEBOOK
    original = notebook.read_bytes()
    screenshot = tmp_path / "soft_label_explorer.png"
    served = REPO / "runs" / f"browser-test-{secrets.token_hex(4)}"  # under the lab's root (git-ignored)
    served.mkdir(parents=True)
    start = time.monotonic()

    def lap(what: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {what}")

    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded")
                page.wait_for_function(JS_NOTEBOOK_READY, arg="08_soft_label_explorer.ipynb", timeout=90_000,
                                       polling=500)
                lap("notebook open, kernel idle")
                page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                state = page.wait_for_function(JS_RUN_STATE, timeout=RUN_TIMEOUT_MS, polling=1000).json_value()
                assert state == "done", state
                lap("all cells ran")

                image = page.locator(".wb-image-explorer .wb-output img").first
                image.wait_for(state="visible", timeout=30_000)
                text = page.locator(".wb-image-explorer .wb-output").first
                before_src, before_text = image.get_attribute("src"), text.inner_text()
                assert before_src.startswith("data:image/png")
                assert f"run: {trained_run}" in page.content()  # 08 opened the demo's run, training nothing
                # issue 38: it says which run it picked and how to choose another
                assert "opened the newest finished stage-2 run" in page.content()
                assert "set run_dir in the parameters cell" in page.content()
                assert "collapsed" not in before_text, before_text
                first_label = _soft_label_line(before_text)

                # pick another identity in the dropdown: the explorer jumps to that person's image
                select = page.locator(".wb-image-explorer .wb-identity select").first
                option = select.locator("option").nth(2)
                pid = option.inner_text().strip()
                select.select_option(index=2)
                page.wait_for_function(JS_IMAGE_CHANGED, arg=before_src, timeout=30_000)
                assert f"pid {pid} ·" in text.inner_text() and text.inner_text() != before_text
                lap(f"identity {pid} selected: figure changed")

                # the index slider by keyboard: back to all identities, then one image further
                select.select_option(index=0)
                page.wait_for_function("() => document.querySelector('.wb-image-explorer .wb-output')"
                                       ".innerText.includes('#0 ')", timeout=30_000)
                first_src = image.get_attribute("src")
                handle = page.locator(".wb-image-explorer .wb-index .noUi-handle").first
                handle.focus()
                handle.press("ArrowRight")
                page.wait_for_function(JS_IMAGE_CHANGED, arg=first_src, timeout=30_000)
                assert "#1 " in text.inner_text()
                lap("index slider moved: figure changed")
                # five presses in a row (issue 38: image 1 still showed 1.7 s after them, each press drawn in
                # turn): the explorer draws where they stop, once
                pressed = time.monotonic()
                for _ in range(5):
                    handle.press("ArrowRight")
                page.wait_for_function("() => document.querySelector('.wb-image-explorer .wb-output')"
                                       ".innerText.includes('#6 ')", timeout=30_000)
                lap(f"five presses: image #6 shown {time.monotonic() - pressed:.1f} s after the first")
                for _ in range(5):
                    handle.press("ArrowLeft")  # back to image #1: drawn before, shown from the explorer's cache
                page.wait_for_function("() => document.querySelector('.wb-image-explorer .wb-output')"
                                       ".innerText.includes('#1 ')", timeout=30_000)
                # two different images, two different soft multilabels (not a collapsed model)
                second_label = _soft_label_line(text.inner_text())
                assert second_label != first_label, (first_label, second_label)
                lap(f"image #0: {first_label}; image #1: {second_label}")

                page.locator(".wb-explore").first.scroll_into_view_if_needed()
                page.screenshot(path=str(screenshot), full_page=False)
                print(f"screenshot: {screenshot}")

                _training_shows_a_moving_progress_bar(page, base, token, served, tmp_path, lap)
            finally:
                browser.close()
    finally:
        if notebook.read_bytes() != original:  # never leave outputs in the committed notebook
            notebook.write_bytes(original)
        shutil.rmtree(served, ignore_errors=True)
    assert screenshot.is_file() and screenshot.stat().st_size > 0


def _training_shows_a_moving_progress_bar(page, base: str, token: str, served: Path, tmp_path: Path, lap) -> None:
    """Notebook 03 at smoke scale (parameters injected as papermill would, into a served copy): Run All
    shows a progress bar per epoch whose step count moves while it trains, with the loss terms and T."""
    import papermill as pm

    prepared = served / "03_train_mar.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "03_train_mar.ipynb"), str(prepared), prepare_only=True,
                        parameters={"preset": "smoke", "epochs": 2, "out_dir": str(tmp_path / "nb03")},
                        progress_bar=False)  # smoke's own settings: its bars show (they did not before)
    rel = prepared.relative_to(REPO).as_posix()
    page.goto(f"{base}/lab/tree/{rel}?token={token}", wait_until="domcontentloaded")
    page.wait_for_function(JS_NOTEBOOK_READY, arg=f"{served.name}/03_train_mar.ipynb", timeout=90_000, polling=500)
    lap("03 (smoke) open, kernel idle")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    seen: list[str] = []  # every distinct state of the stage-2 bars while the notebook runs
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        for bar in page.evaluate(JS_PROGRESS_BARS):
            if bar.startswith("stage 2") and bar not in seen:
                seen.append(bar)
        state = page.evaluate(JS_RUN_STATE)
        if state:
            break
        time.sleep(0.2)
    assert state == "done", state
    lap(f"03 ran; {len(seen)} distinct stage-2 bar states seen")
    final = page.evaluate(JS_PROGRESS_BARS)
    assert [b for b in final if b.startswith("stage 1")], final       # stage 1 ran in the notebook with its bars
    epochs = [b for b in final if b.startswith("stage 2")]
    assert len(epochs) == 2 and "epoch 1/2" in epochs[0] and "epoch 2/2" in epochs[1], final  # one bar per epoch
    assert "T=" in epochs[1] and "loss=" in epochs[1] and "img/s=" in epochs[1], epochs[1]
    # "stage 2 (mar) epoch 1/2: 40% 4/10 [00:01<00:01, ...]": the step count advanced in place while it trained
    steps = {m.group(1, 2) for b in seen if (m := re.match(r"(stage 2 \(mar\) epoch \d+/\d+).*?(\d+)/\d+ \[", b))}
    assert len(steps) >= 2, seen
