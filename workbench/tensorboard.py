"""TensorBoard event files for a run: live curves, and the target set in the embedding projector.

Every run writes ``<run_dir>/tensorboard/`` (``tensorboard --logdir runs`` shows all runs, the
points of a sweep included):

* per step, under ``train/``: each loss term, ``T``, mined positives / negatives and their precision
  (a diagnostic with the hidden labels), the lr and images/s;
* per evaluation, under ``eval/``: rank-1/5/10, mAP (both AP conventions) and mINP, in percent;
* at the end of stage 2, in the projector: the target training set's soft multilabels and
  features as points, the images as sprites, identity and camera as metadata — an explorer of the
  multilabels that needs no kernel.

A resumed run purges the events written after its checkpoint, so curves never double back.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from workbench.evaluation.names import METRIC_KEYS

log = logging.getLogger("workbench.tensorboard")



class TensorBoardLog:
    """A thin wrapper around ``SummaryWriter`` that knows the workbench's names.

    Args:
        run_dir: the run folder; events go to ``run_dir/tensorboard``.
        purge_step: on resume, the first global step to (re)write; later events are dropped.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # the package is a dependency: this is a broken install
            raise ImportError("TensorBoard logging needs the 'tensorboard' package (pip install tensorboard), "
                              "or turn it off with tensorboard=False / --no-tensorboard") from err
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def step(self, global_step: int, values: Mapping[str, float], lr: float, images_per_s: float) -> None:
        """One training step: every finite value under ``train/``.

        Raises:
            OSError: the event writer failed (a full disk); ``filename`` is the events folder.
        """
        with self._naming_the_folder():
            for name, value in values.items():
                if name in ("epoch", "step") or value != value:  # NaN (e.g. no mined positive)
                    continue
                self.writer.add_scalar(f"train/{name}", value, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
            self.writer.add_scalar("train/images_per_s", images_per_s, global_step)

    def evaluation(self, global_step: int, metrics: Mapping[str, float]) -> None:
        """One evaluation on the target query/gallery, in percent (raises as :meth:`step`)."""
        with self._naming_the_folder():
            for name in METRIC_KEYS:
                if name in metrics:
                    self.writer.add_scalar(f"eval/{name}", 100.0 * float(metrics[name]), global_step)

    @contextmanager
    def _naming_the_folder(self) -> Iterator[None]:
        """The event writer's thread fails without a file name; its error, raised here, names the folder."""
        try:
            yield
        except OSError as err:
            if err.filename is None:
                err.filename = str(self.log_dir)
            raise

    def projector(self, tag: str, points: torch.Tensor, labels: Sequence[tuple[int, int]],
                  images: torch.Tensor | None, global_step: int, thumbnail: tuple[int, int] = (32, 16)) -> None:
        """Points in the embedding projector with ``pid`` / ``camera`` metadata and image sprites.

        Args:
            tag: the embedding's name.
            points: (N, D) vectors (soft multilabels or features).
            labels: N ``(pid, camid)`` pairs, shown as metadata columns.
            images: (N, 3, H, W) uint8 images (or None), shrunk to ``thumbnail`` and padded square for
                the sprite.
            global_step: step of the embedding.
            thumbnail: sprite size (height, width).
        """
        label_img = None
        if images is not None:  # TensorBoard's sprite needs square thumbnails: pad the person crops
            h, w = thumbnail
            small = F.interpolate(images.float() / 255.0, size=(h, w), mode="bilinear", align_corners=False)
            side = max(h, w)
            label_img = F.pad(small, ((side - w) // 2, side - w - (side - w) // 2,
                                      (side - h) // 2, side - h - (side - h) // 2), value=1.0)
        self.writer.add_embedding(points.float().cpu(), metadata=[[str(p), str(c)] for p, c in labels],
                                  metadata_header=["pid", "camera"], label_img=label_img, global_step=global_step,
                                  tag=tag)

    def close(self) -> None:
        """Flush and close the event files; a failed write (a full disk) is logged, not raised: the run's
        own files and the error that stopped it are what count."""
        try:
            self.writer.flush()
            self.writer.close()
        except OSError as err:
            log.info("TensorBoard events in %s not all written: %s", self.log_dir, err)
