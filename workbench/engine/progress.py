"""Showing training happen: a tqdm bar per epoch on a terminal or in a notebook (a widget in JupyterLab),
else a log line at least every ``log_every_s`` seconds."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("workbench.engine")

__all__ = ["STAGE_TITLES", "ProgressLog", "bar_values", "in_notebook"]

#: what a progress bar calls each stage
STAGE_TITLES = {"pretrain": "stage 1", "mar": "stage 2"}


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill): stderr is no TTY there, yet a bar can show."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def bar_values(row: dict, images_per_s: float) -> dict[str, str]:
    """A step's loss terms, T and images/s for a progress bar's postfix."""
    values = {k: f"{row[k]:.3g}" for k in ("loss", "al", "rj", "mdl", "cml", "cc") if k in row}
    if "threshold" in row:
        values["T"] = f"{row['threshold']:.3f}"
    values["img/s"] = f"{images_per_s:.0f}"
    return values


class ProgressLog:
    """Log lines during an epoch when no progress bar is shown (not a TTY: nohup, notebooks, CI).

    The first step is logged at once, then one line every ``every_s`` seconds: step/steps, images/s
    and the epoch's ETA. The first step of an epoch pays for starting the loader's workers and filling
    caches (on a real target it took three times a later step), so the ETA leaves it out: it is the
    pace of the steps after the first, or, at step 1, the previous epoch's pace
    (``previous_s_per_step``); with neither (step 1 of the first epoch) the line says that the ETA
    comes with the next step, which is then logged at once.
    """

    def __init__(self, stage: str, epoch: int, epochs: int, steps: int, every_s: float, *, enabled: bool,
                 previous_s_per_step: float | None = None) -> None:
        self.stage, self.epoch, self.epochs, self.steps = stage, epoch, epochs, steps
        self.every_s, self.enabled = every_s, enabled
        self.previous_s_per_step = previous_s_per_step
        self.start = self.last = time.perf_counter()
        self.first_done: float | None = None  # when step 1 ended
        self.logged_first = False
        self.eta_pending = False  # step 1 was logged without an ETA: log the next step at once

    def eta(self, done: int, now: float) -> float | None:
        """Seconds left in the epoch after ``done`` steps, or None when nothing tells yet."""
        if done >= 2 and self.first_done is not None:
            per_step = (now - self.first_done) / (done - 1)
        elif self.previous_s_per_step:
            per_step = self.previous_s_per_step
        else:
            return None
        return per_step * (self.steps - done)

    def step(self, done: int, images: int, loss: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done == 1:
            self.first_done = now
        if (self.logged_first and not self.eta_pending and now - self.last < self.every_s
                and done < self.steps):
            return
        self.logged_first, self.last = True, now
        elapsed = max(now - self.start, 1e-9)
        eta = self.eta(done, now)
        self.eta_pending = eta is None and done < self.steps
        if eta is None:
            eta_text = "epoch ETA after the next step" if done < self.steps else "epoch done"
        else:
            eta_text = f"epoch ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        log.info("%s epoch %d/%d step %d/%d: loss %.4g, %.1f images/s, %s", self.stage,
                 self.epoch + 1, self.epochs, done, self.steps, loss, images / elapsed, eta_text)
