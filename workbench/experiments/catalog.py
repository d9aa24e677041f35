"""The experiments: the paper's tables and figures (and the workbench's own) as rows over run records.

Each :class:`Experiment` says what the runs of each row of a table do (record values), which row the
paired differences are taken against, and the paper's numbers beside them; ``results/<name>/`` holds one
(:class:`~workbench.experiments.folder.ResultsFolder`), and its ``recipe.yaml`` says how to run it again.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.experiments.paper import FUSION_COMBINATIONS, LOSS_ABLATION, METHOD_COMPARISON, PAPER_RESULTS


@dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments, as rows over run records.

    Attributes:
        name: the folder under ``results/``.
        title: the paper's table or figure.
        base: record values every row shares (``init="imagenet"``, ``lr=2e-4`` ...).
        rows: ``{row label: record values}`` on top of ``base``; empty for curves.
        baseline: the row the paired differences are taken against.
        paper: ``{row label: PAPER_RESULTS row}`` shown beside ours.
        curves: for a hyperparameter figure: the record keys varied one at a time around ``base``.
        note: what the rows mean here, in words (goes into the generated README).
    """

    name: str
    title: str
    base: Mapping[str, Any]
    rows: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    paper: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    curves: Sequence[str] = ()
    note: str = ""
    same_budget: bool = False  # also compare the rows at the baseline's training wall clock (stats.at_budget)
    paper_table: str | None = None  # a PAPER_RESULTS table shown whole in the README (Table 4's methods)
    at_epoch: int | None = None  # rows and parameter curves read at this epoch of each run (records_at_epoch)
    upper_bound: str | None = None  # a row that trains on the true labels: each row's share of the gap to it


_FULL = dict(LOSS_ABLATION["full"])
_DEFAULTS = dict(init="imagenet", stage1=True, lr=2e-4, weight_decay=5e-4, stages="layer4")
_PAPER_SCHEDULE = dict(_DEFAULTS, weight_decay=0.025, milestones="12x17")

EXPERIMENTS: dict[str, Experiment] = {
    "loss_ablation": Experiment(
        "loss_ablation", "Table 3: loss ablation", base=_DEFAULTS,
        rows={label: dict(switches) for label, switches in LOSS_ABLATION.items()}, baseline="full",
        paper=PAPER_RESULTS["loss_ablation"],
        note="L_RAL = L_AL + β·L_RJ. Every row starts from the same stage-1 checkpoint; the seeds are the "
             "same in every row, so differences to the full row are paired by seed."),
    "pretraining": Experiment(
        "pretraining", "Table 1: pretraining", base={**_DEFAULTS, **_FULL},
        rows={"ImageNet + stage 1": dict(init="imagenet", stage1=True),
              "random init + stage 1": dict(init="random", stage1=True),
              "ImageNet, no stage 1": dict(init="imagenet", stage1=False),
              "random init, no stage 1": dict(init="random", stage1=False)},
        baseline="ImageNet + stage 1",
        paper={"ImageNet + stage 1": PAPER_RESULTS["pretraining"]["ResNet50 / ResNet50"],
               "random init + stage 1": PAPER_RESULTS["pretraining"]["ResNet50 / ResNet50 (random init)"],
               "ImageNet, no stage 1": PAPER_RESULTS["pretraining"]["ResNet50 / none"]},
        note="MobileNetV2 analogues of the paper's ResNet50 rows: the network of stage 2 is the network of "
             "stage 1. init = the backbone's weights before anything is trained (the ImageNet file or "
             "random); no stage 1 = stage 2 starts from those weights with randomly initialised agents."),
    "feature_fusion": Experiment(
        "feature_fusion", "Table 2: multi-level feature fusion", base={**_DEFAULTS, **_FULL},
        rows={c: dict(stages=c) for c in FUSION_COMBINATIONS}, baseline="layer4",
        paper=PAPER_RESULTS["feature_fusion"],
        note="Each fusion has its own stage 1 (the fused feature is what the agents classify)."),
    "method_comparison": Experiment(
        "method_comparison", "Table 4's question: soft multilabels against clustering",
        base=dict(init="imagenet", stage1=True),
        rows={label: dict(m) for label, m in METHOD_COMPARISON.items()}, baseline="MAR (soft multilabels)",
        paper={"MAR (soft multilabels)": PAPER_RESULTS["comparison"]["MAR"]},
        note="Every row starts from the same stage-1 checkpoint and is evaluated the same way; what supervises "
             "the target differs (L_MAR's soft multilabels, clusters of features, clusters of features and soft "
             "multilabels), and each method may train with its own recipe and epochs (the runs' config says "
             "which), so the rows are also compared at the MAR row's training wall clock. For the clustering "
             "rows, \"What stage 2 did\" gives the last epoch's clusters, outliers (images left out of it) and "
             "the share of same-cluster pairs that are the same identity (checked against the hidden labels, "
             "the counterpart of MAR's true mined positives). The last row is not unsupervised: it trains "
             "Cluster-Contrast's memory and loss on the target's true identities (method `oracle`, the only one that "
             "reads them), the upper bound of what this backbone, data and budget allow. The paper column is MAR as "
             "Zhang et al.'s Table 4 quotes it; "
             "Cluster-Contrast's published 82.1 mAP on Market-1501 uses no reference set and a ResNet-50.",
        same_budget=True, paper_table="comparison", upper_bound="supervised upper bound (true identities)"),
    "hyperparameters": Experiment(
        "hyperparameters", "Fig. 6: stage-2 epochs, learning rate, weight decay", base={**_DEFAULTS, **_FULL},
        curves=("epochs", "lr", "weight_decay"),
        note="One parameter varies, the others keep the preset's values; the epochs curve is the per-epoch "
             "evaluation of the full-L_MAR runs (epoch 0: the stage-1 model). The point at the default "
             "value carries the spread over seeds as an error bar."),
    # the paper's stage-2 schedule (issue 19): lr 2e-4, weight decay 0.025, ×0.1 from epochs 12 and 17
    "paper_schedule_epochs": Experiment(
        "paper_schedule_epochs", "Fig. 6's epochs axis at the paper's stage-2 schedule",
        base={**_PAPER_SCHEDULE, **_FULL}, curves=("epochs",),
        note="The full L_MAR for the paper's 20 epochs (lr 2e-4, ×0.1 from epochs 12 and 17, weight decay "
             "0.025), evaluated after every epoch; epoch 0 is the stage-1 model every run starts from."),
    "paper_schedule_loss_ablation": Experiment(
        "paper_schedule_loss_ablation", "Table 3 at the paper's stage-2 schedule (epoch 10)",
        base=_PAPER_SCHEDULE, rows={label: dict(switches) for label, switches in LOSS_ABLATION.items()},
        baseline="full", paper=PAPER_RESULTS["loss_ablation"], at_epoch=10,
        note="Every row is read at epoch 10 of the paper's schedule (lr 2e-4, weight decay 0.025; the lr decays "
             "only from epoch 12, so the full row's 20-epoch runs are the same computation up to epoch 10). "
             "L_RAL = L_AL + β·L_RJ. Every row starts from the same stage-1 checkpoint; the seeds are the same "
             "in every row, so differences to the full row are paired by seed."),
    "paper_schedule_feature_fusion": Experiment(
        "paper_schedule_feature_fusion",
        "Table 2 with the paper's 2048-d embedding after fusion, at the paper's stage-2 schedule (epoch 10)",
        base={**_PAPER_SCHEDULE, **_FULL, "embed_dim": 2048},
        rows={c: dict(stages=c) for c in FUSION_COMBINATIONS}, baseline="layer4",
        paper=PAPER_RESULTS["feature_fusion"], at_epoch=10,
        note="As the paper builds it: the fused vector (the stages' pooled outputs, concatenated) goes through "
             "a 2048-d embedding (linear + batch norm) before the agents, so every combination's feature has "
             "the same size. Each combination has its own stage 1 (the committed recipe with the embedding); "
             "stage 2 follows the paper's schedule (lr 2e-4, weight decay 0.025) and is read at epoch 10, as "
             "Table 3 at this schedule is. The seeds are the same in every row: differences to layer4 are "
             "paired by seed."),
    "paper_schedule_loss_ablation_embedding": Experiment(
        "paper_schedule_loss_ablation_embedding",
        "Table 3 at the paper's stage-2 schedule (epoch 10), on layer4 with the 2048-d embedding",
        base={**_PAPER_SCHEDULE, "embed_dim": 2048},
        rows={label: dict(switches) for label, switches in LOSS_ABLATION.items()},
        baseline="full", paper=PAPER_RESULTS["loss_ablation"], at_epoch=10,
        note="Table 3 on the model of Table 2's layer4 row at the paper's schedule (`../feature_fusion/`): layer4 "
             "with the paper's 2048-d embedding after it, from that row's stage 1, read at epoch 10 of the "
             "schedule (lr 2e-4, weight decay 0.025). Its full row is that row's runs. L_RAL = L_AL + β·L_RJ. "
             "The seeds are the same in every row, so differences to the full row are paired by seed."),
    "paper_schedule_terms": Experiment(
        "paper_schedule_terms", "Why stage 2 moves little: λ2, the mining ratio and each term's share of the update",
        base=_PAPER_SCHEDULE,
        rows={"λ2 = 50, mining 0.005 (official)": dict(_FULL, lambda_ref=50.0, mining_ratio=0.005),
              "λ2 = 5": dict(_FULL, lambda_ref=5.0, mining_ratio=0.005),
              "λ2 = 0": dict(_FULL, lambda_ref=0.0, mining_ratio=0.005),
              "mining 0.02": dict(_FULL, lambda_ref=50.0, mining_ratio=0.02)},
        baseline="λ2 = 50, mining 0.005 (official)", at_epoch=4,
        note="One seed per row, the paper's stage-2 schedule read at epoch 4, every L_MAR term's gradient on the "
             "shared weights (backbone, fusion, embedding) measured every 10 steps (grad_terms_every): its norm "
             "and its share of the step's update, 100·<g_term, g>/‖g‖² (the shares add up to 100 %; a negative share "
             "pulls against the others)."),
    "paper_schedule_terms_embedding": Experiment(
        "paper_schedule_terms_embedding",
        "λ2 at the paper's stage-2 schedule (epoch 10), on layer4 with the 2048-d embedding",
        base={**_PAPER_SCHEDULE, "embed_dim": 2048, "mining_ratio": 0.005},
        rows={"λ2 = 50 (official)": dict(_FULL, lambda_ref=50.0),
              "λ2 = 5": dict(_FULL, lambda_ref=5.0),
              "w/o L_RAL (λ2 = 0)": dict(LOSS_ABLATION["w/o RAL"], lambda_ref=50.0)},
        baseline="λ2 = 50 (official)", at_epoch=10,
        note="Run 4's λ2 curve at Table 3's length of the schedule (10 epochs, lr 2e-4, weight decay 0.025) on "
             "Table 2's layer4 model with the embedding, every row from that model's stage 1 on one machine, the "
             "same seeds in every row (differences paired by seed). λ2 = 50 is Table 2's layer4 row; the λ2 = 0 "
             "end of the curve is Table 3's w/o L_RAL row of `../loss_ablation_embedding/` (L_AL and L_RJ off: "
             "λ2 = 0 but for the agents' weight decay, which a run with lambda_ref=0 still applies). The λ2 = 5 runs also "
             "measured every L_MAR term's gradient on the shared weights every 25 steps (grad_terms_every): its "
             "norm and its share of the step's update, 100·<g_term, g>/‖g‖²."),
}
