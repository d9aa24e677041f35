"""The losses against numbers computed by the unmodified official MAR code (Yu et al., CVPR 2019).

``../shared/reference/mar_official_reference.pt`` (described in the ``.md`` beside it) holds the
inputs, losses, loss states and gradients of three joint steps in two scenarios (``iid``,
``clustered``), produced by the official ``ReidTrainer`` step with a headless official model
(features = normalized 64-d inputs, agents = normalized rows of a 64 → 50 weight). Here the same
inputs go through :class:`MARLoss` **with default arguments** (only the mining ratio is set for the
r = 0.05 variant, and the CML momentum for the ``_bs368`` variant) and through the loss functions.
Everything must agree to about 1e-5, and the mined positive / negative pair lists exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from workbench.losses import (
    MARLoss,
    agent_loss,
    cross_view_loss,
    discriminative_loss,
    joint_embedding_loss,
    log_soft_multilabel,
)
from workbench.models.layers import l2_normalize



import os

SHARED = Path(os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REFERENCE = SHARED / "reference" / "mar_official_reference.pt"
SCENARIOS = ("iid", "clustered")
STEPS = (1, 2, 3)


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    if not REFERENCE.is_file():
        pytest.skip(f"official-code reference numbers: {REFERENCE} is absent (it lives in ../shared beside the clone)")
    return torch.load(REFERENCE, weights_only=True)


def close(got: torch.Tensor | float, want: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Relative agreement to ``rtol``, measured against the largest entry (so tiny entries do not fail)."""
    got = torch.as_tensor(got).double().reshape(want.shape)
    want = want.double()
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, 1e-6), msg=what)


def _step_inputs(ref: dict, scen: str, step: int) -> dict[str, torch.Tensor]:
    p = f"{scen}/step{step}/in/"
    return dict(x_src=ref[p + "x_src"].clone().requires_grad_(True), labels=ref[p + "labels_src"],
                x_tgt=ref[p + "x_tgt"].clone().requires_grad_(True), idx=ref[p + "idx_tgt"],
                views=ref[p + "views_tgt"])


def _initialized(ref: dict, scen: str, **kwargs) -> MARLoss:
    n = ref[f"{scen}/init/target_all_raw"].shape[0]
    m = MARLoss(n, ref[f"{scen}/init/W_raw"].shape[0], **kwargs)
    m.initialize(ref[f"{scen}/init/target_all_raw"], ref[f"{scen}/init/W_raw"], ref[f"{scen}/init/target_all_views"])
    return m


def _pairs_by_position(pairs: torch.Tensor, positive: torch.Tensor, idx: torch.Tensor) -> tuple[list, list]:
    """Mined pairs (dataset indices, mining order) → positive / negative (i, j) batch positions, i < j."""
    position = {int(d): p for p, d in enumerate(idx.tolist())}
    as_pos = [tuple(sorted((position[int(a)], position[int(b)]))) for a, b in pairs.tolist()]
    return ([p for p, s in zip(as_pos, positive.tolist()) if s], [p for p, s in zip(as_pos, positive.tolist()) if not s])


@pytest.mark.parametrize("scen", SCENARIOS)
@pytest.mark.parametrize("ratio", [0.005, 0.05])
def test_marloss_with_defaults_reproduces_the_official_steps(ref, scen: str, ratio: float) -> None:
    r = f"r{ratio}"
    m = _initialized(ref, scen) if ratio == 0.005 else _initialized(ref, scen, mining_ratio=ratio)
    if ratio == 0.005:
        assert m.mining_ratio == float(ref["settings/mining_ratio"])  # the default is the official ratio
    close(m.threshold, ref[f"{scen}/init/threshold_{r}"], "initial threshold")
    close(m.center_mean, ref[f"{scen}/init/center_mean"], "initial centre (mean)")
    close(m.center_std, ref[f"{scen}/init/center_std"], "initial centre (std)")
    w = ref[f"{scen}/init/W_raw"].clone().requires_grad_(True)
    for step in STEPS:
        p = f"{scen}/step{step}/"
        x = _step_inputs(ref, scen, step)
        w.grad = None
        out = m(reference_features=x["x_src"], reference_labels=x["labels"], target_features=x["x_tgt"],
                target_index=x["idx"], target_camids=x["views"], agents=w, epoch=1)
        for key, name in (("al", "AL"), ("rj", "RJ"), ("cml", "CML"), ("mdl", f"MDL_{r}"), ("loss", f"total_{r}")):
            close(out[key], ref[p + f"loss/{name}"], f"step {step} {name}")
        # the mined pairs, exactly (as batch positions, in the official P / N lists' order)
        pos, neg = _pairs_by_position(out["mined_pairs"], out["mined_positive"], x["idx"])
        assert pos == [tuple(c) for c in ref[p + f"mdl_{r}/P"].t().tolist()], f"step {step} P"
        assert neg == [tuple(c) for c in ref[p + f"mdl_{r}/N"].t().tolist()], f"step {step} N"
        # the state after the step
        close(m.threshold, ref[p + f"after/threshold_{r}"], f"step {step} threshold")
        close(m.center_mean, ref[p + "after/center_mean"], f"step {step} centre (mean)")
        close(m.center_std, ref[p + "after/center_std"], f"step {step} centre (std)")
        written = ref[p + "after/memory_initialized"]
        assert torch.equal(m.visited, written), f"step {step} memory rows written"
        close(m.memory[written], ref[p + "after/memory"][written], f"step {step} memory")
        # gradients of the total through the official normalisation, into inputs and agent weights
        out["loss"].backward()
        for mine, name in ((x["x_src"].grad, "x_src_raw"), (x["x_tgt"].grad, "x_tgt_raw"), (w.grad, "fc_weight_raw")):
            close(mine, ref[p + f"grad/total_{r}/{name}"], f"step {step} gradient of the total wrt {name}")


@pytest.mark.parametrize("scen", SCENARIOS)
def test_each_loss_function_and_its_gradient_match_the_official_code(ref, scen: str) -> None:
    """Each function alone, on each step's inputs and the official states, and its gradient."""
    w_raw = ref[f"{scen}/init/W_raw"]
    for step in STEPS:
        p = f"{scen}/step{step}/"
        for name in ("AL", "RJ", "CML", "MDL_r0.005", "MDL_r0.05"):
            x = _step_inputs(ref, scen, step)
            w = w_raw.clone().requires_grad_(True)
            if name == "AL":
                loss = agent_loss(x["x_src"], w, x["labels"])
            elif name == "RJ":
                loss = joint_embedding_loss(x["x_tgt"], x["x_src"], x["labels"], w)
            elif name == "CML":  # measured against the centres after this step's EMA move
                loss = cross_view_loss(log_soft_multilabel(x["x_tgt"], w.detach()), x["views"],
                                       ref[p + "after/center_mean"], ref[p + "after/center_std"])
            else:
                r = name.split("_")[1]
                loss, top, _ = discriminative_loss(x["x_tgt"], ref[p + "fwd/memory_rows_used_by_mdl"],
                                                   ref[p + f"before/threshold_{r}"], float(r[1:]))
                close(top, ref[p + f"mdl_{r}/batch_threshold_target"].float(), f"step {step} {name} batch target")
            close(loss, ref[p + f"loss/{name}"], f"step {step} {name}")
            loss.backward()
            for mine, key in ((x["x_src"].grad, "x_src_raw"), (x["x_tgt"].grad, "x_tgt_raw"), (w.grad, "fc_weight_raw")):
                want = ref[p + f"grad/{name}/{key}"]
                close(torch.zeros_like(want) if mine is None else mine, want, f"step {step} d{name}/d{key}")


@pytest.mark.parametrize("scen", SCENARIOS)
def test_official_batch_size_368_momentum_and_the_epoch_0_total(ref, scen: str) -> None:
    """L_CML with the paper's momentum 368 / 10000; and epoch 0: no L_MDL, memory and T frozen."""
    m = _initialized(ref, scen, cml_momentum=float(ref["settings/cml_moment_bs368"]))
    w = ref[f"{scen}/init/W_raw"]
    for step in STEPS:
        p = f"{scen}/step{step}/"
        x = _step_inputs(ref, scen, step)
        out = m(reference_features=x["x_src"], reference_labels=x["labels"], target_features=x["x_tgt"],
                target_index=x["idx"], target_camids=x["views"], agents=w, epoch=1)
        close(out["cml"], ref[p + "loss/CML_bs368"], f"step {step} CML (368)")
        close(m.center_mean, ref[p + "after/center_mean_bs368"], f"step {step} centre (368)")
        close(m.center_std, ref[p + "after/center_std_bs368"], f"step {step} centre std (368)")

        e0 = _initialized(ref, scen)  # epoch 0 from this step's official state
        e0.center_mean.copy_(ref[p + "before/center_mean"])
        e0.center_std.copy_(ref[p + "before/center_std"])
        before_threshold = e0.threshold.clone()
        out0 = e0(reference_features=x["x_src"], reference_labels=x["labels"], target_features=x["x_tgt"],
                  target_index=x["idx"], target_camids=x["views"], agents=w, epoch=0)
        close(out0["loss"], ref[p + "loss/total_epoch0_noMDL"], f"step {step} epoch-0 total")
        assert float(out0["mdl"]) == 0.0 and not e0.visited.any() and torch.equal(e0.threshold, before_threshold)


def test_edge_probes(ref) -> None:
    p = "clustered/edge/"
    x = _step_inputs(ref, "clustered", 1)
    memory_rows = ref["clustered/step1/fwd/memory_rows_used_by_mdl"]
    for probe in ("mdl_all_positive", "mdl_none_positive"):  # no negatives: N = 0.5; no positives: log(1 + N)
        f = x["x_tgt"].detach().clone().requires_grad_(True)
        forced = ref[p + f"{probe}/threshold_forced"]
        loss, top, stats = discriminative_loss(f, memory_rows, forced, 0.005)
        close(loss, ref[p + f"{probe}/loss"], probe)
        close(0.9 * forced + 0.1 * top, ref[p + f"{probe}/threshold_after"], f"{probe} threshold")
        loss.backward()
        # stored: the gradient at the normalized features; carried back through the normalization
        g = ref[p + f"{probe}/grad_features_tgt"]
        raw = x["x_tgt"].detach().clone().requires_grad_(True)
        (want,) = torch.autograd.grad(l2_normalize(raw), raw, grad_outputs=g)
        close(f.grad, want, f"{probe} gradient")
    # one camera with a single image: that camera is skipped
    keep = ref[p + "cml_singleton_view/keep_idx"]
    m = _initialized(ref, "clustered")
    m.center_mean.copy_(ref[p + "cml_singleton_view/center_mean_before"])
    m.center_std.copy_(ref[p + "cml_singleton_view/center_std_before"])
    m.cml_momentum.fill_(float(ref["settings/cml_moment"]))
    log_ml = log_soft_multilabel(x["x_tgt"][keep], ref["clustered/init/W_raw"])
    m.update_centers(log_ml, x["views"][keep])
    close(m.center_mean, ref[p + "cml_singleton_view/center_mean_after"], "singleton camera: centre")
    close(cross_view_loss(log_ml, x["views"][keep], m.center_mean, m.center_std),
          ref[p + "cml_singleton_view/loss"], "singleton camera: L_CML")
    # 20 images at r = 0.005: nothing is mined, L = log 1.5 without gradient, as in the official code
    tiny = p + "mdl_tiny_batch20/"
    before = float(ref[tiny + "threshold_before"])
    loss, top, _ = discriminative_loss(x["x_tgt"][:20], memory_rows[:20], before, 0.005)
    close(loss, ref[tiny + "loss"], "20-image batch")
    assert loss.item() == pytest.approx(math.log(1.5), abs=1e-7)
    # our documented deviation (docs/SEMANTICS.md): T stays put, where the official sorted(A)[-0]
    # mixes in the batch's *smallest* agreement
    assert float(0.9 * before + 0.1 * top) == pytest.approx(before, abs=1e-7)
    assert float(ref[tiny + "threshold_after"]) == pytest.approx(
        0.9 * before + 0.1 * float(ref[tiny + "min_batch_agreement"]), abs=1e-5)
