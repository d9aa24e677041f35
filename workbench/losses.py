"""The MAR losses (Yu et al., CVPR 2019) as functions, and the one module that keeps their state.

Functions map tensors to a scalar tensor (or to labels / agreements):

* :func:`soft_multilabel` / :func:`log_soft_multilabel` -- ``softmax(s * cos(f, a))`` over the agents.
* :func:`agreement` -- ``A(y_i, y_j) = sum_k min(y_i^k, y_j^k) = 1 - ||y_i - y_j||_1 / 2``.
* :func:`agent_loss` -- ``L_AL``, cross-entropy of scaled cosine logits (the only loss moving agents).
* :func:`joint_embedding_loss` -- ``L_RJ``, reference agent joint embedding.
* :func:`discriminative_loss` -- ``L_MDL``, soft-multilabel-guided hard-pair mining.
* :func:`cross_view_loss` -- ``L_CML``, per-camera log-multilabel moments against dataset centres.

:class:`MARLoss` holds everything that lives across batches (multilabel memory, CML centres, the
agreement threshold) as buffers with ``@torch.no_grad()`` update methods, MoCo style, and runs one
joint step in the order of the official implementation.

Every function normalizes features and agents with :func:`workbench.ops.l2_normalize` and
computes in float32 with autocast disabled, whatever dtype the inputs come in.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.distributed import all_gather_cat, all_gather_with_grad, broadcast_from_rank0, world_size
from workbench.ops import l2_normalize

__all__ = [
    "LOSS_TERMS",
    "soft_multilabel",
    "log_soft_multilabel",
    "agreement",
    "agent_loss",
    "joint_embedding_loss",
    "discriminative_loss",
    "cross_view_loss",
    "MARLoss",
    "camera_normalized",
]

_F = TypeVar("_F", bound=Callable)

#: the logged loss terms of a stage-2 step: the total and its four parts (unweighted)
LOSS_TERMS = ("loss", "al", "rj", "mdl", "cml")


# --------------------------------------------------------------------------------------------------
# helpers: float32 without autocast
# --------------------------------------------------------------------------------------------------
def _float32(fn: _F) -> _F:
    """Run ``fn`` with autocast off and its floating tensor arguments cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        cast = lambda a: a.float() if isinstance(a, Tensor) and a.is_floating_point() else a  # noqa: E731
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


def _scaled_cosine(features: Tensor, agents: Tensor, scale: float) -> Tensor:
    """``scale * cos(features, agents)`` -> (B, Np); both normalized here."""
    return scale * l2_normalize(features) @ l2_normalize(agents).t()  # (B, Np)


def _zero_like_graph(x: Tensor) -> Tensor:
    """A float32 zero that keeps ``x`` in the autograd graph (so ``backward`` never fails)."""
    return x.float().sum() * 0.0 if x.requires_grad else x.new_zeros((), dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# soft multilabels and their agreement
# --------------------------------------------------------------------------------------------------
@_float32
def soft_multilabel(features: Tensor, agents: Tensor, scale: float = 30.0) -> Tensor:
    """Soft multilabels ``softmax(scale * cos(f, a))``: how much an image resembles each agent.

    Args:
        features: (B, d) image features (normalized here).
        agents: (Np, d) reference agents (normalized here).
        scale: logit scale ``s`` (official: 30).

    Returns:
        (B, Np) float32, rows sum to 1.
    """
    return torch.softmax(_scaled_cosine(features, agents, scale), dim=1)  # (B, Np)


@_float32
def log_soft_multilabel(features: Tensor, agents: Tensor, scale: float = 30.0) -> Tensor:
    """``log`` of :func:`soft_multilabel` computed with ``log_softmax`` (finite everywhere).

    Args:
        features: (B, d) image features.
        agents: (Np, d) reference agents.
        scale: logit scale.

    Returns:
        (B, Np) float32 log-probabilities.
    """
    return torch.log_softmax(_scaled_cosine(features, agents, scale), dim=1)  # (B, Np)


@_float32
def agreement(y1: Tensor, y2: Tensor) -> Tensor:
    """Pairwise agreement ``A(y_i, y_j) = sum_k min(y_i^k, y_j^k) = 1 - ||y_i - y_j||_1 / 2``.

    Computed as an L1 ``cdist``, which never builds the (B1, B2, Np) difference tensor.

    Args:
        y1: (B1, Np) soft multilabels (rows on the simplex).
        y2: (B2, Np) soft multilabels.

    Returns:
        (B1, B2) float32 agreements in [0, 1].
    """
    if y1.shape[0] == 0 or y2.shape[0] == 0:
        return y1.new_zeros((y1.shape[0], y2.shape[0]))
    return 1.0 - 0.5 * torch.cdist(y1, y2, p=1.0)  # (B1, B2)


@_float32
def pair_agreement(y1: Tensor, y2: Tensor) -> Tensor:
    """Agreement of row i of ``y1`` with row i of ``y2``: ``1 - ||y1_i - y2_i||_1 / 2`` -> (P,)."""
    return 1.0 - 0.5 * (y1 - y2).abs().sum(1)  # (P,)


@torch.no_grad()
def camera_normalized(features: Tensor, camids: Tensor) -> Tensor:
    """Each camera's mean feature subtracted, then L2-normalized: what sets one camera's images apart from
    another's (its background, light, viewpoint) leaves the distances (a camera-aware option of the
    stage-2 methods: ``camera_norm``).

    Args:
        features: (N, d); camids: (N,) camera ids.

    Returns:
        (N, d) float32.
    """
    f = features.float()
    _, inverse = torch.unique(camids, return_inverse=True)  # (N,) camera slot
    sums = f.new_zeros(int(inverse.max()) + 1 if len(inverse) else 0, f.shape[1]).index_add_(0, inverse, f)
    counts = torch.bincount(inverse, minlength=len(sums)).clamp_min(1).to(f.dtype)[:, None]
    return l2_normalize(f - (sums / counts)[inverse])


def _kth_largest_agreement(multilabels: Tensor, k: int, block_size: int = 1024, camids: Tensor | None = None) -> Tensor:
    """k-th largest agreement over all pairs i < j (with ``camids``: over the pairs of two cameras only),
    streaming over row blocks.

    Each block of rows is compared with the rows at or after it (upper triangle only), and only a
    running top-k of values is kept: memory is O(block_size * N + k), never (N, N) or (N, N, Np).

    Args:
        multilabels: (N, Np) soft multilabels.
        k: rank, 1 <= k <= the number of pairs counted.
        block_size: rows per block.
        camids: (N,) camera ids: only cross-camera pairs count (None: every pair).

    Returns:
        0-dim float32 tensor.
    """
    n = multilabels.shape[0]
    device = multilabels.device
    top = multilabels.new_empty((0,), dtype=torch.float32)
    for r0 in range(0, n - 1, block_size):
        r1 = min(n, r0 + block_size)
        block = agreement(multilabels[r0:r1], multilabels[r0:])  # (b, N - r0)
        rows = torch.arange(r0, r1, device=device)[:, None]
        cols = torch.arange(r0, n, device=device)[None, :]
        keep = cols > rows
        if camids is not None:
            keep = keep & (camids[r0:r1, None].to(device) != camids[None, r0:].to(device))
        values = block[keep]  # pairs i < j of this block (of two cameras)
        if top.numel() == k:  # only values above the running k-th can change it
            values = values[values > top[-1]]
        merged = torch.cat([top, values])
        top = torch.topk(merged, min(k, merged.numel()), sorted=True).values  # descending
    return top[k - 1]


# --------------------------------------------------------------------------------------------------
# the four losses
# --------------------------------------------------------------------------------------------------
@_float32
def agent_loss(features: Tensor, agents: Tensor, labels: Tensor, scale: float = 30.0) -> Tensor:
    """``L_AL``: cross-entropy of reference images against the agents (scaled cosine logits).

    The only MAR loss whose gradient reaches the agents.

    Args:
        features: (B, d) reference-image features.
        agents: (Np, d) agents (not detached).
        labels: (B,) reference identities in [0, Np).
        scale: logit scale (official: 30).

    Returns:
        Scalar float32 loss (mean over the batch).
    """
    return F.cross_entropy(_scaled_cosine(features, agents, scale), labels.long())


@_float32
def joint_embedding_loss(
    target_features: Tensor,
    reference_features: Tensor,
    reference_labels: Tensor,
    agents: Tensor,
    margin: float = 1.0,
    *,
    combine_reference_terms: bool = False,
) -> Tensor:
    """``L_RJ``: reference agent joint embedding (agents are detached here).

    An agent is "within the margin" of a feature when ``||f - a||^2 < m``, i.e. ``cos > 1 - m / 2``.
    The loss is the unweighted mean of one list of terms (the official ``JointLoss``):

    * per reference image, the pull ``||f - a_y||^2``, and, as a *separate* term when any other
      agent is within the margin, the hinge mean ``mean_{a != a_y within margin} [m - ||f - a||^2]_+``;
    * per target image with at least one agent within the margin: the hinge mean over those agents.

    So the denominator is ``Br`` plus the number of images (reference or target) that had agents
    within the margin. ``combine_reference_terms=True`` is a variant that is *not* the official
    code: a reference image's pull and hinge are summed into one term (denominator ``Br`` plus the
    target images with agents within the margin), which weighs the pulls more when hinges exist.

    Args:
        target_features: (Bt, d) target features (Bt may be 0).
        reference_features: (Br, d) reference features.
        reference_labels: (Br,) reference identities.
        agents: (Np, d) agents; detached inside.
        margin: ``m`` (official: 1).
        combine_reference_terms: ``False`` (default, official): pull and hinge of a reference
            image are two list entries; ``True``: one entry ``pull + hinge`` per reference image.

    Returns:
        Scalar float32 loss; 0 (graph kept) when there is no term at all.
    """
    a = l2_normalize(agents.detach())  # (Np, d)
    sim_margin = 1.0 - margin / 2.0

    def hinge_rows(f: Tensor, exclude: Tensor | None) -> tuple[Tensor, Tensor]:
        f = l2_normalize(f)  # (B, d)
        cos = f @ a.t()  # (B, Np)
        sq_dist = f.pow(2).sum(1, keepdim=True) + a.pow(2).sum(1)[None] - 2.0 * cos  # (B, Np)
        hard = cos.detach() > sim_margin  # (B, Np) agents within the margin
        if exclude is not None:
            hard[torch.arange(len(f), device=f.device), exclude] = False
        count = hard.sum(1)  # (B,)
        hinge = (torch.clamp(margin - sq_dist, min=0.0) * hard).sum(1) / count.clamp(min=1)  # (B,)
        return hinge, count > 0

    labels = reference_labels.long()
    ref_hinge, ref_has = hinge_rows(reference_features, labels)  # (Br,), (Br,)
    f_ref = l2_normalize(reference_features)
    pull = (f_ref - a[labels]).pow(2).sum(1)  # (Br,)
    tgt_hinge, tgt_has = hinge_rows(target_features, None)  # (Bt,), (Bt,)

    tgt_sum = (tgt_hinge * tgt_has).sum()
    if combine_reference_terms:
        total = (pull + ref_hinge * ref_has).sum() + tgt_sum
        n_terms = len(pull) + tgt_has.sum()
    else:  # official: pulls and hinges are separate entries of one list
        total = pull.sum() + (ref_hinge * ref_has).sum() + tgt_sum
        n_terms = len(pull) + ref_has.sum() + tgt_has.sum()
    return total / torch.clamp(torch.as_tensor(n_terms, device=total.device), min=1)


@_float32
def discriminative_loss(
    features: Tensor,
    multilabels: Tensor,
    threshold: float | Tensor,
    mining_ratio: float = 0.005,
    *,
    camids: Tensor | None = None,
    cross_camera: bool = False,
    camera_norm: bool = False,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``L_MDL``: soft-multilabel-guided discriminative learning on the target batch.

    The ``k = int(C(B, 2) * mining_ratio)`` pairs ``i < j`` with the smallest Euclidean distance of
    the detached, normalized features are mined (ties: the earlier pair in row-major ``(i, j)``
    order wins, via a stable sort). A mined pair is positive when its agreement exceeds
    ``threshold``, otherwise a hard negative. With ``P, N`` the means of ``exp(-||f_i - f_j||^2)``
    (non-detached) over positives / negatives, ``L = -log(P / (P + N))``; no positives ->
    ``log(1 + N)``; no negatives -> ``N = 0.5``; both empty -> ``log 1.5``.

    ``k = 0`` (fewer than ``1 / mining_ratio`` pairs in the batch): nothing is mined, the loss is
    the constant ``log 1.5`` (zero gradient, graph kept) and ``batch_top_agreement`` is ``threshold``
    itself, so the threshold EMA leaves ``T`` unchanged.

    Args:
        features: (B, d) target features (normalized here).
        multilabels: (B, Np) soft multilabels of the same images (the memory rows in MAR).
        threshold: agreement threshold ``T`` (from before this step).
        mining_ratio: fraction of all batch pairs mined (official: 0.005).
        camids: (B,) camera ids of the batch (needed by the two camera-aware options below).
        cross_camera: mine only pairs of two cameras (still ``k`` of them), and take the k-th largest
            agreement among cross-camera pairs for T (not the official code; default off).
        camera_norm: mine on the features with each camera's batch mean subtracted
            (:func:`camera_normalized`); the loss itself uses the features as they are (default off).

    Returns:
        ``(loss, batch_top_agreement, stats)``: scalar float32 loss; the k-th largest agreement among
        all batch pairs (detached, for ``T``'s EMA); stats ``n_pos``, ``n_neg`` (0-dim long),
        ``pairs`` (k, 2) mined pair indices, ``is_positive`` (k,) bool.
    """
    b = features.shape[0]
    device = features.device
    num_pairs = b * (b - 1) // 2
    k = int(num_pairs * mining_ratio)
    threshold_t = torch.as_tensor(threshold, dtype=torch.float32, device=device).detach()
    f = l2_normalize(features)  # (B, d)
    if k == 0:
        zero = torch.zeros((), dtype=torch.long, device=device)
        stats = {"n_pos": zero, "n_neg": zero.clone(),
                 "pairs": torch.zeros((0, 2), dtype=torch.long, device=device),
                 "is_positive": torch.zeros((0,), dtype=torch.bool, device=device)}
        return _zero_like_graph(f) + math.log(1.5), threshold_t.clone(), stats

    if (cross_camera or camera_norm) and camids is None:
        raise ValueError("discriminative_loss: cross_camera and camera_norm need the batch's camids")
    iu = torch.triu_indices(b, b, offset=1, device=device)  # (2, C(B,2)) row-major, as pdist
    with torch.no_grad():
        mine_on = camera_normalized(f.detach(), camids) if camera_norm else f.detach()
        dist_mine = F.pdist(mine_on)  # (C(B,2),) Euclidean, condensed order
        agree = agreement(multilabels.detach(), multilabels.detach())[iu[0], iu[1]]  # (C(B,2),)
        if cross_camera:  # same-camera pairs are never mined, nor counted for T
            cross = camids[iu[0]] != camids[iu[1]]
            dist_mine = torch.where(cross, dist_mine, torch.full_like(dist_mine, math.inf))
            k = max(1, min(k, int(cross.sum())))
            batch_top = torch.topk(torch.where(cross, agree, torch.full_like(agree, -math.inf)), k).values[-1]
        else:
            batch_top = torch.topk(agree, k).values[-1]  # k-th largest agreement in the batch
        mined = torch.sort(dist_mine, stable=True).indices[:k]  # (k,)
        is_pos = agree[mined] > threshold_t  # (k,)
    i, j = iu[0, mined], iu[1, mined]  # (k,)
    sim = torch.exp(-(f[i] - f[j]).pow(2).sum(1))  # (k,) exp(-||f_i - f_j||^2), with gradient
    pos, neg = is_pos.float(), (~is_pos).float()
    n_pos, n_neg = is_pos.sum(), (~is_pos).sum()
    p_mean = (sim * pos).sum() / n_pos.clamp(min=1)
    n_mean = (sim * neg).sum() / n_neg.clamp(min=1)
    p_mean = torch.where(n_pos > 0, p_mean, torch.ones_like(p_mean))  # no positives -> log(1 + N)
    n_mean = torch.where(n_neg > 0, n_mean, torch.full_like(n_mean, 0.5))  # no negatives -> N = 0.5
    loss = torch.log(p_mean + n_mean) - torch.log(p_mean)
    stats = {"n_pos": n_pos, "n_neg": n_neg, "pairs": torch.stack([i, j], 1), "is_positive": is_pos}
    return loss, batch_top.detach(), stats


def _camera_statistics(log_multilabels: Tensor, camids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-camera mean and unbiased std of log multilabels, vectorized with ``index_add``.

    Args:
        log_multilabels: (B, Np).
        camids: (B,) camera ids (any integers).

    Returns:
        ``(means (V, Np), stds (V, Np), counts (V,))`` over the V cameras present; a camera with a
        single image gets std 0 (finite, zero gradient) and should be masked by ``counts >= 2``.
    """
    x = log_multilabels
    _, inv = torch.unique(camids.to(x.device), return_inverse=True)  # (B,) in [0, V)
    v = int(inv.max().item()) + 1 if inv.numel() else 0
    counts = torch.zeros(v, device=x.device, dtype=x.dtype).index_add(0, inv, torch.ones_like(x[:, 0]))
    means = x.new_zeros((v, x.shape[1])).index_add(0, inv, x) / counts.clamp(min=1)[:, None]  # (V, Np)
    dev2 = (x - means[inv]).pow(2)  # (B, Np)
    var = x.new_zeros((v, x.shape[1])).index_add(0, inv, dev2) / (counts - 1).clamp(min=1)[:, None]
    positive = var > 0
    stds = torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), 0.0)
    return means, stds, counts


@_float32
def cross_view_loss(log_multilabels: Tensor, camids: Tensor, center_mean: Tensor,
                    center_std: Tensor) -> Tensor:
    """``L_CML``: simplified 2-Wasserstein between each camera's log multilabels and the centres.

    For every camera ``v`` with at least 2 images in the batch: ``||mu_v - mu||^2 + ||sigma_v -
    sigma||^2`` (unbiased std); the loss is the mean over these ``2 V`` terms. No such camera -> 0
    (graph kept).

    Args:
        log_multilabels: (B, Np) log soft multilabels (from :func:`log_soft_multilabel`).
        camids: (B,) camera ids.
        center_mean: (Np,) dataset-level centre of the means.
        center_std: (Np,) dataset-level centre of the stds.

    Returns:
        Scalar float32 loss.
    """
    means, stds, counts = _camera_statistics(log_multilabels, camids)  # (V, Np), (V, Np), (V,)
    valid = (counts >= 2).float()  # (V,)
    terms = (means - center_mean.detach()).pow(2).sum(1) + (stds - center_std.detach()).pow(2).sum(1)
    return (terms * valid).sum() / (2.0 * valid.sum()).clamp(min=1.0)


# --------------------------------------------------------------------------------------------------
# the stateful module
# --------------------------------------------------------------------------------------------------
class MARLoss(nn.Module):
    """``L_MAR = L_MDL + lambda_cml * L_CML + lambda_ref * (L_AL + beta * L_RJ)`` with its state.

    Buffers (all in ``state_dict``, so a resumed run continues every EMA exactly):
    ``memory`` (N, Np) multilabel memory, ``visited`` (N,) first-visit mask, ``center_mean`` /
    ``center_std`` (Np,) CML centres, ``threshold`` () agreement threshold ``T``, ``initialized`` (),
    ``cml_momentum`` () (negative until fixed at the first forward).

    Under ``torch.distributed`` (world size > 1) the target-side terms (L_CML, L_MDL with its mining
    and the threshold) and the state updates use the target batch gathered from all ranks (features
    gathered with their gradient), exactly as one process would on the global batch, so buffers stay
    identical on every rank; L_AL and L_RJ are per-sample means of the local batch, which DDP's
    gradient averaging turns into global means.

    Args:
        num_target: N, images in the target training set.
        num_agents: Np, reference identities (agents).
        scale: logit scale ``s`` for L_AL and the multilabels.
        margin: L_RJ margin ``m``.
        mining_ratio: L_MDL mining ratio (also the initial threshold's rank).
        lambda_cml: weight of L_CML (lambda_1).
        lambda_ref: weight of L_AL + beta L_RJ (lambda_2).
        beta: weight of L_RJ inside the reference term.
        cml_momentum: EMA momentum of the centres; ``None`` -> (target + reference images of the
            first batch) x world size / 10000, i.e. 368 / 10000 at the official sizes (the
            official ``MultilabelLoss(args.batch_size)`` with ``batch_size: 368``, 184 + 184).
        memory_momentum: weight of the old memory row on a revisit (official 0.9).
        threshold_momentum: weight of the batch value in T's EMA (official 0.1).
        mdl_warmup_epochs: epochs with L_MDL off and memory / threshold frozen (official 1).
        use_mdl, use_cml, use_al, use_rj: switch a term off (removed from the total, reported as 0).
        combine_reference_terms: L_RJ variant with one ``pull + hinge`` term per reference image
            (not the official code; see :func:`joint_embedding_loss`). Default: official.
        mdl_cross_camera: L_MDL mines only pairs of two cameras, and T is the k-th largest agreement among
            cross-camera pairs (camera-aware; not the official code). Default: off.
        camera_norm: L_MDL mines on the features with each camera's batch mean subtracted (camera-aware;
            not the official code). Default: off.
    """

    def __init__(
        self,
        num_target: int,
        num_agents: int,
        *,
        scale: float = 30.0,
        margin: float = 1.0,
        mining_ratio: float = 0.005,
        lambda_cml: float = 2e-4,
        lambda_ref: float = 50.0,
        beta: float = 0.2,
        cml_momentum: float | None = None,
        memory_momentum: float = 0.9,
        threshold_momentum: float = 0.1,
        mdl_warmup_epochs: int = 1,
        use_mdl: bool = True,
        use_cml: bool = True,
        use_al: bool = True,
        use_rj: bool = True,
        combine_reference_terms: bool = False,
        mdl_cross_camera: bool = False,
        camera_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_target, self.num_agents = num_target, num_agents
        self.scale, self.margin, self.mining_ratio = scale, margin, mining_ratio
        self.lambda_cml, self.lambda_ref, self.beta = lambda_cml, lambda_ref, beta
        self.memory_momentum, self.threshold_momentum = memory_momentum, threshold_momentum
        self.mdl_warmup_epochs = mdl_warmup_epochs
        self.use_mdl, self.use_cml, self.use_al, self.use_rj = use_mdl, use_cml, use_al, use_rj
        self.combine_reference_terms = combine_reference_terms
        self.mdl_cross_camera, self.camera_norm = mdl_cross_camera, camera_norm
        self.register_buffer("memory", torch.zeros(num_target, num_agents))
        self.register_buffer("visited", torch.zeros(num_target, dtype=torch.bool))
        self.register_buffer("center_mean", torch.zeros(num_agents))
        self.register_buffer("center_std", torch.zeros(num_agents))
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("cml_momentum", torch.tensor(-1.0 if cml_momentum is None else cml_momentum))

    def extra_repr(self) -> str:
        terms = [n for n in ("mdl", "cml", "al", "rj") if getattr(self, f"use_{n}")]
        return (f"num_target={self.num_target}, num_agents={self.num_agents}, terms={terms}, "
                f"lambda_cml={self.lambda_cml}, lambda_ref={self.lambda_ref}, beta={self.beta}")

    # ---------------------------------------------------------------- state updates (no gradient)
    @torch.no_grad()
    def initialize(self, target_features: Tensor, agents: Tensor, camids: Tensor, *,
                   index: Tensor | None = None, block_size: int = 1024) -> dict:
        """Initialize memory, CML centres and threshold from the target training set.

        The official code computes them from one pass of the *training* target loader (augmented,
        shuffled, ``drop_last``), so a few images may be missing: pass their dataset ``index``.
        Memory rows of the given images get their multilabels (``visited`` stays False: the first
        visit in joint training still copies, as in the official code, whose memory starts empty,
        so these values are never read by a loss). Centres:
        per-camera mean of the log multilabels averaged over all cameras, per-camera unbiased std
        averaged over cameras with >= 2 images. Threshold: the k-th largest agreement over all
        ``C(N, 2)`` pairs, ``k = max(1, int(C(N, 2) * mining_ratio))`` (1.0 when N < 2), streamed
        over row blocks.

        Under DDP every rank computes it and then takes rank 0's result (broadcast).

        Args:
            target_features: (n, d) features of target training images; without ``index`` row i
                is dataset index i and n must be N.
            agents: (Np, d) agents.
            camids: (n,) camera ids.
            index: (n,) dataset indices of the rows (None: all N images in order).
            block_size: rows per block for the multilabels and the pairwise agreements.

        Returns:
            ``{"threshold": float, "k": int, "num_pairs": int, "num_cameras": int}``.
        """
        n = target_features.shape[0]
        device = self.memory.device
        if index is None:
            if n != self.memory.shape[0]:
                raise ValueError(f"initialize: got {n} target features, the memory has {self.memory.shape[0]} rows")
            index = torch.arange(n, device=device)
        index = torch.as_tensor(index, device=device).long()
        if len(index) != n or (n and (int(index.min()) < 0 or int(index.max()) >= self.memory.shape[0])):
            raise ValueError(f"initialize: {len(index)} indices for {n} features, memory rows 0..{self.memory.shape[0] - 1}")
        feats, agents = target_features.to(device), agents.to(device)
        log_ml = feats.new_empty((n, self.num_agents), dtype=torch.float32)  # (n, Np)
        with torch.autocast(device_type=device.type, enabled=False):
            for r0 in range(0, n, block_size):
                logits = _scaled_cosine(feats[r0:r0 + block_size].float(), agents.float(), self.scale)
                log_ml[r0:r0 + block_size] = torch.log_softmax(logits, dim=1)
            multilabels = log_ml.exp()  # (n, Np)
            self.memory[index] = multilabels
            means, stds, counts = _camera_statistics(log_ml, camids)
            del log_ml
            multi = counts >= 2
            self.center_mean.copy_(means.mean(0))
            self.center_std.copy_(stds[multi].mean(0) if bool(multi.any()) else torch.zeros_like(self.center_std))
            num_pairs = n * (n - 1) // 2
            if self.mdl_cross_camera:  # T ranks the pairs L_MDL may mine: those of two cameras
                per_camera = torch.bincount(torch.unique(camids.to(device), return_inverse=True)[1])
                num_pairs -= int((per_camera * (per_camera - 1) // 2).sum())
            k = max(1, int(num_pairs * self.mining_ratio))
            if num_pairs == 0:
                self.threshold.fill_(1.0)
            else:
                self.threshold.copy_(_kth_largest_agreement(
                    multilabels, k, block_size, camids.to(device) if self.mdl_cross_camera else None))
        # every rank starts from rank 0's state, whatever float noise its own features carried
        broadcast_from_rank0(self.memory, self.center_mean, self.center_std, self.threshold)
        self.visited.zero_()
        self.initialized.fill_(True)
        return {"threshold": float(self.threshold), "k": k, "num_pairs": num_pairs,
                "num_cameras": int(counts.numel())}

    @torch.no_grad()
    def update_centers(self, log_multilabels: Tensor, camids: Tensor) -> None:
        """EMA of the CML centres with the batch's per-camera statistics.

        Cameras with one image are skipped; the new value is the plain average over cameras; with
        no usable camera the centres stay put. Under DDP pass the batch gathered from all ranks
        (``forward`` does).

        Raises:
            RuntimeError: the momentum is not known yet (``cml_momentum=None`` is fixed by the first
                :meth:`forward` from its batch size); an unset momentum would move the centres
                *away* from the batch.
        """
        if float(self.cml_momentum) < 0:
            raise RuntimeError("MARLoss.update_centers: the CML momentum is not set yet; pass cml_momentum=... "
                               "to MARLoss or let forward() fix it from the first batch's size")
        log_ml = log_multilabels.detach().float()
        cams = camids.to(log_ml.device)
        means, stds, counts = _camera_statistics(log_ml, cams)
        valid = (counts >= 2).float()[:, None]  # (V, 1)
        n_valid = valid.sum()
        weight = self.cml_momentum * (n_valid > 0).float()
        self.center_mean.lerp_((means * valid).sum(0) / n_valid.clamp(min=1), weight)
        self.center_std.lerp_((stds * valid).sum(0) / n_valid.clamp(min=1), weight)

    @torch.no_grad()
    def update_memory(self, index: Tensor, multilabels: Tensor) -> None:
        """Write a batch of multilabels: first visit copies, else m old + (1 - m) new.

        An index present several times in one batch takes its last occurrence. Under DDP pass the
        batch gathered from all ranks (``forward`` does).
        """
        index = index.to(self.memory.device).long()
        multilabels = multilabels.detach().float().to(self.memory.device)
        uniq, inv = torch.unique(index, return_inverse=True)
        order = torch.arange(len(index), device=index.device)
        last = torch.full_like(uniq, -1).scatter_reduce_(0, inv, order, reduce="amax")  # (U,)
        new = multilabels[last]  # (U, Np)
        old = self.memory[uniq]
        m = self.memory_momentum
        seen = self.visited[uniq][:, None]
        self.memory[uniq] = torch.where(seen, m * old + (1.0 - m) * new, new)
        self.visited[uniq] = True

    @torch.no_grad()
    def update_threshold(self, batch_top_agreement: Tensor) -> None:
        """``T <- (1 - m) T + m t`` with ``t`` the batch top agreement (of the global batch)."""
        t = batch_top_agreement.detach().float().reshape(()).to(self.threshold.device)
        self.threshold.lerp_(t, self.threshold_momentum)

    @torch.no_grad()
    def _fix_cml_momentum(self, batch_images: int) -> None:
        value = torch.tensor(batch_images * world_size() / 10000.0, device=self.cml_momentum.device)
        self.cml_momentum.copy_(torch.where(self.cml_momentum < 0, value, self.cml_momentum))

    # ---------------------------------------------------------------- one joint step
    def forward(
        self,
        *,
        reference_features: Tensor,
        reference_labels: Tensor,
        target_features: Tensor,
        target_index: Tensor,
        target_camids: Tensor,
        agents: Tensor,
        epoch: int,
    ) -> dict[str, Tensor]:
        """One joint step: L_AL -> L_RJ -> target multilabels -> L_CML -> memory -> L_MDL -> T.

        Args:
            reference_features: (Br, d) reference-image features.
            reference_labels: (Br,) reference identities.
            target_features: (Bt, d) target-image features.
            target_index: (Bt,) dataset indices of the target images (memory rows).
            target_camids: (Bt,) camera ids of the target images.
            agents: (Np, d) agents (gradient only through L_AL).
            epoch: 0-based epoch; ``epoch < mdl_warmup_epochs`` keeps L_MDL off and memory /
                threshold frozen (the centres still move).

        Returns:
            ``loss`` (differentiable total), the unweighted detached terms ``al``, ``rj``, ``mdl``,
            ``cml`` (0 when off), ``weighted`` (``{term: weight · term}``, differentiable: what each
            adds to ``loss``), ``threshold`` (after the update), ``n_pos``, ``n_neg``, and the
            mined pairs of L_MDL as target *dataset indices*: ``mined_pairs`` (k, 2) and
            ``mined_positive`` (k,) bool (empty when L_MDL did not run). The loss never sees
            identities; a caller that knows them (the trainer's mined-pair precision diagnostic)
            looks them up by these indices.
        """
        mdl_on = self.use_mdl and epoch >= self.mdl_warmup_epochs
        if (self.use_cml or mdl_on) and not bool(self.initialized):
            raise RuntimeError("MARLoss.initialize(...) must run before the joint training step")
        device = target_features.device
        zero = torch.zeros((), device=device)
        out: dict[str, Tensor] = {}
        total = _zero_like_graph(target_features)

        if self.use_al:
            al = agent_loss(reference_features, agents, reference_labels, self.scale)
            total = total + self.lambda_ref * al
        else:
            al = zero
        if self.use_rj:
            rj = joint_embedding_loss(target_features, reference_features, reference_labels, agents,
                                      self.margin, combine_reference_terms=self.combine_reference_terms)
            total = total + self.lambda_ref * self.beta * rj
        else:
            rj = zero

        cml, mdl = zero, zero
        n_pos = n_neg = torch.zeros((), dtype=torch.long, device=device)
        mined_pairs = torch.zeros((0, 2), dtype=torch.long, device=device)
        mined_positive = torch.zeros((0,), dtype=torch.bool, device=device)
        if self.use_cml or mdl_on:
            # the global target batch (identity in one process)
            features_all = all_gather_with_grad(target_features)
            camids_all = all_gather_cat(target_camids.to(device))
            with torch.autocast(device_type=device.type, enabled=False):
                logits = _scaled_cosine(features_all.float(), agents.detach().float(), self.scale)
            if self.use_cml:
                log_ml = torch.log_softmax(logits, dim=1)  # (Bt, Np)
                self._fix_cml_momentum(len(target_features) + len(reference_features))
                self.update_centers(log_ml.detach(), camids_all)
                cml = cross_view_loss(log_ml, camids_all, self.center_mean, self.center_std)
                total = total + self.lambda_cml * cml
            if mdl_on:
                index = all_gather_cat(target_index.to(self.memory.device).long())
                self.update_memory(index, torch.softmax(logits.detach(), dim=1))
                threshold_before = self.threshold.clone()
                mdl, top, stats = discriminative_loss(features_all, self.memory[index].to(device),
                                                      threshold_before, self.mining_ratio, camids=camids_all,
                                                      cross_camera=self.mdl_cross_camera,
                                                      camera_norm=self.camera_norm)
                self.update_threshold(top)
                n_pos, n_neg = stats["n_pos"], stats["n_neg"]
                mined_pairs = index.to(device)[stats["pairs"]]  # (k, 2) dataset indices
                mined_positive = stats["is_positive"]
                total = total + mdl

        out["loss"] = total
        # the terms as they enter the total, still in the graph (the trainer's gradient-share diagnostic)
        out["weighted"] = {"al": self.lambda_ref * al, "rj": self.lambda_ref * self.beta * rj,
                           "cml": self.lambda_cml * cml, "mdl": mdl}
        out.update(al=al.detach(), rj=rj.detach(), mdl=mdl.detach(), cml=cml.detach(),
                   threshold=self.threshold.detach().clone(), n_pos=n_pos, n_neg=n_neg,
                   mined_pairs=mined_pairs, mined_positive=mined_positive)
        return out
