"""Feature extraction (optionally flip-averaged) and the evaluation entry points: features →
distances (optionally re-ranked) → rank metrics."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from workbench.evaluation.distance import ArrayLike, Metric, pairwise_distance
from workbench.evaluation.metrics import format_metrics, rank_metrics
from workbench.evaluation.rerank import re_ranking

__all__ = ["extract_features", "evaluate_features", "evaluate"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# features and the evaluation entry points
# --------------------------------------------------------------------------------------------

def _embed(model: torch.nn.Module, img: torch.Tensor) -> torch.Tensor:
    out = model(img)
    feature = getattr(out, "feature", out)  # a NamedTuple with .feature (MARNet), or a bare tensor
    if not isinstance(feature, torch.Tensor) or feature.ndim != 2:
        raise TypeError("model(img) must return a NamedTuple with a (B, D) `.feature` tensor, got "
                        f"{type(out).__name__}")
    return feature.float()


def _as_label_array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.int64) if isinstance(x, torch.Tensor) \
        else np.asarray(x, dtype=np.int64)


def extract_features(model: torch.nn.Module, loader: Any, *, flip: bool = False,
                     device: str | torch.device = "cpu", amp: bool = False, channels_last: bool = False,
                     progress: bool = False) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Embeddings of every image a loader yields.

    Args:
        model: returns a NamedTuple with a ``.feature`` field (B, D), L2-normalized; it must already
            live on ``device``. It is put in eval mode and restored to its previous mode afterwards.
        loader: yields dict batches with ``"img"`` (B, 3, H, W), ``"pid"``, ``"camid"`` and
            optionally ``"index"`` (dataset position: the output follows that order).
        flip: average the features of each image and of its horizontal mirror, then re-normalize
            (``x / (‖x‖ + 1e-7)``, the convention of the model).
        device: where the model runs; batches are moved there with ``non_blocking=True``.
        amp: autocast (bfloat16 on CPU, float16 on CUDA); features are returned in float32.
        channels_last: feed the images in channels_last memory format (give the model the same
            format: ``model.to(memory_format=torch.channels_last)``); with bf16 on a CPU this is
            what makes autocast pay (``results/benchmarks/training.txt``).
        progress: show a tqdm bar.

    Returns:
        ``(features (N, D) float32 CPU tensor, pids (N,) int64 array, camids (N,) int64 array)``.

    Example:
        >>> feats, pids, camids = extract_features(model, build_test_loader(split.query,
        ...     image_size=(256, 128)), flip=True)  # doctest: +SKIP
    """
    dev = torch.device(device)
    param = next(model.parameters(), None)
    if param is not None and param.device.type != dev.type:
        raise ValueError(f"the model is on {param.device} but device={str(dev)!r}: move it with "
                         f"model.to(device) or pass its device")
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    feats: list[torch.Tensor] = []
    pids: list[np.ndarray] = []
    camids: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="features", leave=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=amp):
            for batch in batches:
                img = batch["img"].to(dev, non_blocking=True)
                if channels_last:
                    img = img.contiguous(memory_format=torch.channels_last)
                f = _embed(model, img)  # (B, D)
                if flip:
                    f = (f + _embed(model, img.flip(3))) / 2
                    f = f / (f.norm(dim=1, keepdim=True) + 1e-7)
                feats.append(f.to("cpu", torch.float32))
                pids.append(_as_label_array(batch["pid"]))
                camids.append(_as_label_array(batch["camid"]))
                if "index" in batch:
                    indices.append(_as_label_array(batch["index"]))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batch: nothing to extract")
    features = torch.cat(feats)
    pid_arr, cam_arr = np.concatenate(pids), np.concatenate(camids)
    if indices and len(indices) == len(feats):
        order = np.argsort(np.concatenate(indices), kind="stable")
        if not np.array_equal(order, np.arange(order.shape[0])):
            features, pid_arr, cam_arr = features[torch.from_numpy(order)], pid_arr[order], cam_arr[order]
    return features, pid_arr, cam_arr


def evaluate_features(qf: ArrayLike, gf: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                      q_camids: ArrayLike, g_camids: ArrayLike, *, metric: Metric = "cosine",
                      rerank: bool = False, max_rank: int = 50, return_distmat: bool = False,
                      k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                      device: str | torch.device | None = None) -> dict[str, Any]:
    """Distances (optionally re-ranked) → rank metrics, both AP conventions.

    Args:
        qf, gf: query / gallery features (Q, D) / (G, D).
        q_pids, g_pids, q_camids, g_camids: labels (pid −1 = junk, 0 = distractor).
        metric: ``"cosine"`` or ``"euclidean"`` (squared), see :func:`pairwise_distance`.
        rerank: k-reciprocal re-ranking (:func:`re_ranking` with ``k1, k2, lambda_value``).
        max_rank: length of the returned CMC curve.
        return_distmat: also return the (Q, G) float32 distance matrix under ``"distmat"``.
        device: where re-ranking runs (default: the features' device).

    Returns:
        dict: ``rank1``, ``rank5``, ``rank10``, ``mAP`` (standard, non-interpolated), ``mAP_devkit``
        (Market devkit / MAR official trapezoid), ``mINP`` (fractions in [0, 1]), ``cmc`` (array),
        ``num_valid``, ``num_query``, ``num_gallery``, ``metric``, ``rerank``, ``ap="both"``.

    Example:
        >>> qf, gf = torch.randn(4, 8), torch.randn(10, 8)
        >>> m = evaluate_features(qf, gf, [1, 2, 3, 4], [1, 2, 3, 4] * 2 + [0, 0],
        ...                       [0] * 4, [1] * 10)
        >>> sorted(k for k in m if k.startswith("rank"))
        ['rank1', 'rank10', 'rank5']
    """
    num_q, num_g = len(qf), len(gf)
    for name, labels, n, feats in (("q_pids", q_pids, num_q, "qf"), ("q_camids", q_camids, num_q, "qf"),
                                   ("g_pids", g_pids, num_g, "gf"), ("g_camids", g_camids, num_g, "gf")):
        if len(labels) != n:
            raise ValueError(f"shape mismatch: {feats} has {n} rows but {name} has {len(labels)} entries")
    if rerank:
        distmat = re_ranking(qf, gf, k1, k2, lambda_value, metric=metric, device=device)
    else:
        distmat = pairwise_distance(qf, gf, metric)
    m = rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max(int(max_rank), 10),
                     ap="both")
    cmc = m["cmc"]
    result: dict[str, Any] = {
        "rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9]),
        "mAP": m["mAP"], "mAP_devkit": m["mAP_devkit"], "mINP": m["mINP"],
        "cmc": cmc[:max_rank], "num_valid": m["num_valid"], "num_query": num_q,
        "num_gallery": num_g, "metric": metric, "rerank": bool(rerank), "ap": "both",
    }
    if return_distmat:
        result["distmat"] = distmat
    return result


def evaluate(model: torch.nn.Module, split: Any, *, image_size: tuple[int, int] = (256, 128),
             batch_size: int = 128, workers: int = 0, device: str | torch.device = "cpu",
             amp: bool = False, channels_last: bool = False, flip: bool = False, metric: Metric = "cosine",
             rerank: bool = False, return_distmat: bool = False, max_rank: int = 50,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate a model on a split's query / gallery sets (Market-1501 protocol).

    Args:
        model: returns a NamedTuple with ``.feature`` (see :func:`extract_features`), on ``device``.
        split: has ``.query`` and ``.gallery`` lists of ``Sample(path, pid, camid)``.
        image_size: (H, W) of the test transform.
        batch_size, workers: of the test loaders (pinned memory on CUDA).
        device, amp, channels_last, flip: see :func:`extract_features`.
        metric, rerank, max_rank: see :func:`evaluate_features`.
        return_distmat: also return ``distmat``, ``qf``, ``gf`` and the four label arrays.
        progress: tqdm bars during feature extraction.

    Returns:
        the dict of :func:`evaluate_features` (both AP conventions: ``mAP`` standard, ``mAP_devkit``)
        plus ``seconds`` (wall time, extraction included).

    Example:
        >>> split = load_dataset("synthetic", root)  # doctest: +SKIP
        >>> evaluate(model, split, flip=True)["rank1"]  # doctest: +SKIP
    """
    from workbench.data.loaders import build_test_loader

    start = time.perf_counter()
    dev = torch.device(device)
    size = (int(image_size[0]), int(image_size[1]))
    loaders = [build_test_loader(list(samples), image_size=size, batch_size=batch_size,
                                 workers=workers, pin_memory=dev.type == "cuda")
               for samples in (split.query, split.gallery)]
    qf, q_pids, q_camids = extract_features(model, loaders[0], flip=flip, device=dev, amp=amp,
                                            channels_last=channels_last, progress=progress)
    gf, g_pids, g_camids = extract_features(model, loaders[1], flip=flip, device=dev, amp=amp,
                                            channels_last=channels_last, progress=progress)
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric,
                               rerank=rerank, max_rank=max_rank, return_distmat=return_distmat)
    result["seconds"] = time.perf_counter() - start
    if return_distmat:
        result.update(qf=qf, gf=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                      g_camids=g_camids)
    logger.info("evaluation of %d queries against %d gallery images in %.1f s, in %%: %s", result["num_query"],
                result["num_gallery"], result["seconds"], format_metrics(result))
    return result
