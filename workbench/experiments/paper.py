"""The paper's numbers: every cell of Zhang et al. 2020's tables, with its source, and how each row
maps onto the workbench's parameters.

``../shared/docs/PAPER.md`` transcribes the tables; ``tests/test_experiments.py`` checks every cell
here against it. All numbers are percent (single query, no re-ranking, MSMT17 as reference).

Example:
    >>> PAPER_RESULTS["feature_fusion"]["layer1+layer3+layer4"]["market1501"]["rank1"]
    68.973
    >>> PAPER_RESULTS["reference"]["MAR (Yu et al. 2019)"]["market1501"]["mAP"]
    40.0
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from workbench.errors import ConfigError
from typing import Any

_NAN = float("nan")
#: where every published number comes from (``../shared/docs/PAPER.md`` transcribes them)
#: the publication (Opto-Electronic Engineering 47(12): 190636), as the sources name it
ZHANG_2020 = "Zhang et al. 2020"
PAPER_METRICS = ("rank1", "rank5", "rank10", "mAP")
_DATASET_NAMES = {"market1501": "Market-1501", "dukemtmc": "DukeMTMC-reID"}


def _cells(values: Sequence[float | None] | None, where: str, dataset: str) -> dict[str, Any]:
    """``{rank1, rank5, rank10, mAP: percent (NaN: not reported), source}`` of one table row."""
    if values is None:
        return {**{m: _NAN for m in PAPER_METRICS}, "source": f"not reported ({where})"}
    cells = {m: _NAN if v is None else float(v) for m, v in zip(PAPER_METRICS, values)}
    return {**cells, "source": f"{where}, {_DATASET_NAMES[dataset]}"}


def _paper_row(table: str, row: str, market: Sequence[float | None] | None = None,
               duke: Sequence[float | None] | None = None, *, paper: str = ZHANG_2020,
               note: str = "") -> dict[str, Any]:
    """One row of a published table: rank-1/5/10 and mAP (percent) per dataset, with their source.

    Args:
        table: the table as the paper numbers it (``"Table 3"``).
        row: the row as the paper labels it.
        market, duke: ``(R1, R5, R10, mAP)``; None for a cell the paper does not give; None for
            the whole dataset when the table has no column for it.
        paper: the publication.
        note: how the row maps onto the workbench, when that needs saying.
    """
    where = f"{paper}, {table}, row '{row}'"
    return {"market1501": _cells(market, where, "market1501"), "dukemtmc": _cells(duke, where, "dukemtmc"),
            "source": where, "table": table, "row": row, "note": note}


#: Published results in percent (single query, no re-ranking, MSMT17 as the reference set), exactly as
#: ``../shared/docs/PAPER.md`` transcribes them from Zhang et al. 2020 (tests/test_experiments.py checks
#: every cell against it). Each row keeps its ``source`` (paper, table, row; per dataset as well);
#: NaN marks a cell the paper does not report. MAR's own figures (Yu et al., CVPR 2019) are *not* a
#: row of Zhang et al.'s ablations: they are the separate ``"reference"`` entries, quoted from Zhang et
#: al.'s Table 4.
PAPER_RESULTS: dict[str, dict[str, dict[str, Any]]] = {
    # Zhang et al. 2020, Table 3: loss ablation (ResNet-50; L_RAL = L_AL + β·L_RJ)
    "loss_ablation": {
        "full": _paper_row("Table 3", "full L_MAR", (66.627, 81.977, 86.609, 39.361), (67.1, 79.8, 84.2, 48.0)),
        "w/o CML": _paper_row("Table 3", "w/o L_CML", (60.0, 75.9, 81.9, 34.6), (63.2, 77.2, 82.5, 44.9)),
        "w/o RAL": _paper_row("Table 3", "w/o L_RAL", (59.2, 76.4, 82.3, 30.8), (57.9, 72.6, 77.8, 37.1)),
        "w/o both": _paper_row("Table 3", "w/o L_CML and L_RAL", (53.9, 71.5, 77.7, 28.2),
                               (60.1, 73.0, 78.4, 40.4)),
    },
    # Zhang et al. 2020, Table 2: multi-level feature fusion (ResNet-50, Market-1501 only)
    "feature_fusion": {
        "layer4": _paper_row("Table 2", "layer4 (baseline)", (66.627, 81.977, 86.609, 39.361),
                             note="the baseline is Table 3's full-L_MAR row"),
        "layer1+layer3": _paper_row("Table 2", "layer1+layer3", (52.049, 69.567, 76.395, 28.279)),
        "layer1+layer4": _paper_row("Table 2", "layer1+layer4", (66.330, 81.473, 86.520, 39.581)),
        "layer2+layer3": _paper_row("Table 2", "layer2+layer3", (51.306, 69.240, 76.306, 28.113)),
        "layer2+layer4": _paper_row("Table 2", "layer2+layer4", (62.500, 77.316, 83.254, 35.884)),
        "layer3+layer4": _paper_row("Table 2", "layer3+layer4", (67.102, 81.977, 86.876, 40.036)),
        "layer1+layer3+layer4": _paper_row("Table 2", "layer1+layer3+layer4", (68.973, 82.601, 86.995, 41.188)),
    },
    # Zhang et al. 2020, Table 1: (network trained in stage 2, network of the stage-1 pretraining),
    # Market-1501 only
    "pretraining": {
        "ResNet50 / ResNet50": _paper_row(
            "Table 1", "ResNet50 | ResNet50 (ImageNet init)", (66.627, 81.977, 86.609, 39.361),
            note="stage 1 from ImageNet weights"),
        "ResNet50 / ResNet50 (random init)": _paper_row(
            "Table 1", "ResNet50 | ResNet50, random init", (61.401, 77.316, 82.245, 33.930),
            note="stage 1 from random init"),
        "ResNet50 / none": _paper_row(
            "Table 1", "ResNet50 | none", (42.548, 60.778, 69.032, 22.139),
            note="no stage 1; stage 2 from ImageNet weights (presumably; the paper does not say)"),
        "SE_ResNet50 / SE_ResNet50": _paper_row(
            "Table 1", "SE_ResNet50 | SE_ResNet50", (51.989, 69.893, 77.078, 28.330),
            note="stage 1 trains SE-ResNet-50 itself (its init is not stated; here ResNet-50 ImageNet "
                 "weights with new SE modules)"),
        "SE_ResNet50 / ResNet50": _paper_row(
            "Table 1", "SE_ResNet50 | ResNet50 (ImageNet init; weights transferred, SE new)",
            (64.371, 81.621, 86.461, 38.236), note="stage 1 trains ResNet-50; its weights start SE-ResNet-50, SE new"),
        "SE_ResNet50 / none": _paper_row(
            "Table 1", "SE_ResNet50 | none", (35.362, 51.425, 58.462, 17.403),
            note="no stage 1 (init presumably ImageNet)"),
    },
    # Zhang et al. 2020, Table 4: the methods compared (R10 is not reported there)
    "comparison": {
        "CAMEL": _paper_row("Table 4", "CAMEL", (54.5, 73.1, None, 26.3), (40.3, 57.6, None, 19.8)),
        "PUL": _paper_row("Table 4", "PUL", (45.5, 60.7, None, 20.5), (30.0, 43.4, None, 16.4)),
        "TJ-AIDL": _paper_row("Table 4", "TJ-AIDL", (58.2, 74.8, None, 26.5), (44.3, 59.6, None, 23.0)),
        "PTGAN": _paper_row("Table 4", "PTGAN", (38.6, 57.3, None, 15.7), (27.4, 43.6, None, 13.5)),
        "SPGAN": _paper_row("Table 4", "SPGAN", (51.5, 70.1, None, 27.1), (41.1, 56.6, None, 22.3)),
        "HHL": _paper_row("Table 4", "HHL", (62.2, 78.8, None, 31.4), (46.9, 61.0, None, 27.2)),
        "MMFA": _paper_row("Table 4", "MMFA", (45.3, None, None, 24.7), (56.7, None, None, 27.4)),
        "DECAMEL": _paper_row("Table 4", "DECAMEL", (60.24, None, None, 32.44), (None, None, None, None)),
        "ARN": _paper_row("Table 4", "ARN", (70.3, 80.4, None, 39.4), (60.2, 73.9, None, 33.4)),
        "BUC": _paper_row("Table 4", "BUC", (66.2, 79.6, None, 38.3), (47.4, 62.6, None, 27.5)),
        "MAR": _paper_row("Table 4", "MAR", (67.7, 81.9, None, 40.0), (67.1, 79.8, None, 48.0),
                          note="Yu et al., CVPR 2019, as quoted by Zhang et al."),
        "Zhang et al. 2020": _paper_row("Table 4", "Zhang et al. 2020", (68.97, 82.6, None, 41.2),
                                        (68.6, 80.6, None, 50.1), note="ResNet-50 + layer1+layer3+layer4"),
    },
}
#: The two methods every table is read against: MAR (Yu et al. 2019) and Zhang et al. 2020's best
#: model, as Zhang et al.'s Table 4 reports them. Neither is a row of the ablation tables.
PAPER_RESULTS["reference"] = {
    "MAR (Yu et al. 2019)": {**PAPER_RESULTS["comparison"]["MAR"], "paper": "Yu et al., CVPR 2019 (as quoted in Zhang et al. 2020, Table 4)"},
    "Zhang et al. 2020 (layer1+layer3+layer4)": {**PAPER_RESULTS["comparison"]["Zhang et al. 2020"],
                                                 "paper": f"{ZHANG_2020}, Table 4"},
}

#: Zhang et al. 2020 Table 3: the loss switches of each ablation row (L_RAL = L_AL + β·L_RJ).
LOSS_ABLATION: dict[str, dict[str, bool]] = {
    "full": {"use_mdl": True, "use_cml": True, "use_al": True, "use_rj": True},
    "w/o CML": {"use_mdl": True, "use_cml": False, "use_al": True, "use_rj": True},
    "w/o RAL": {"use_mdl": True, "use_cml": True, "use_al": False, "use_rj": False},
    "w/o both": {"use_mdl": True, "use_cml": False, "use_al": False, "use_rj": False},
}

#: The method comparison (issue 23; Zhang et al. 2020 Table 4's question on one stage 1): stage 2 by soft
#: multilabels (MAR), by clustering (Cluster-Contrast, Dai et al. 2021) and by the workbench's hybrid.
METHOD_COMPARISON: dict[str, dict[str, Any]] = {
    "MAR (soft multilabels)": {"method": "mar", "mdl_cross_camera": False, "camera_norm": False},
    "Cluster-Contrast": {"method": "cluster_contrast", "camera_norm": False},
    "soft-label clustering (hybrid)": {"method": "soft_cluster", "camera_norm": False},
    # not unsupervised: Cluster-Contrast's loss on the target's true identities (how far each method is from
    # what this backbone, data and budget allow)
    "supervised upper bound (true identities)": {"method": "oracle"},
    # camera-aware (issue 39): the same methods with the camera removed from what supervises the target
    "MAR, cross-camera mining": {"method": "mar", "mdl_cross_camera": True},
    "Cluster-Contrast, camera-normalized": {"method": "cluster_contrast", "camera_norm": True},
    "hybrid, camera-normalized": {"method": "soft_cluster", "camera_norm": True},
    "CAP (camera-aware proxies)": {"method": "cap"},
}

#: Zhang et al. 2020 Table 2: layer4 alone and the six fused combinations (tests/test_models.py FUSIONS).
FUSION_COMBINATIONS: tuple[str, ...] = (
    "layer4", "layer1+layer3", "layer1+layer4", "layer2+layer3", "layer2+layer4", "layer3+layer4",
    "layer1+layer3+layer4",
)

#: Zhang et al. 2020 Table 1: each row as parameters of ``03_train_mar.ipynb``. ``network`` is the
#: stage-2 network and ``pretrain_network`` the stage-1 one, by the paper's names (map them to
#: backbones with :func:`pretraining_points`); ``pretrained`` is the init of the first network trained.
PRETRAINING_ABLATION: dict[str, dict[str, Any]] = {
    "ResNet50 / ResNet50": {"network": "ResNet50", "pretrain_network": "ResNet50", "pretrained": "imagenet",
                            "reference_pretraining": True},
    "ResNet50 / ResNet50 (random init)": {"network": "ResNet50", "pretrain_network": "ResNet50",
                                          "pretrained": "none", "reference_pretraining": True},
    "ResNet50 / none": {"network": "ResNet50", "pretrain_network": None, "pretrained": "imagenet",
                        "reference_pretraining": False},
    "SE_ResNet50 / SE_ResNet50": {"network": "SE_ResNet50", "pretrain_network": "SE_ResNet50",
                                  "pretrained": "imagenet", "reference_pretraining": True},
    "SE_ResNet50 / ResNet50": {"network": "SE_ResNet50", "pretrain_network": "ResNet50",
                               "pretrained": "imagenet", "reference_pretraining": True},
    "SE_ResNet50 / none": {"network": "SE_ResNet50", "pretrain_network": None, "pretrained": "imagenet",
                           "reference_pretraining": False},
}
#: the paper's network names → workbench backbones
PAPER_NETWORKS: dict[str, str] = {"ResNet50": "resnet50", "SE_ResNet50": "seresnet50"}


def pretraining_points(rows: Sequence[str], networks: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The sweep points of Table 1's rows: ``{row: {backbone, pretrain_backbone, pretrained,
    reference_pretraining}}``.

    Args:
        rows: keys of :data:`PRETRAINING_ABLATION`.
        networks: the paper's network names → backbones (default :data:`PAPER_NETWORKS`); e.g.
            ``{"ResNet50": "mobilenet_v2"}`` runs a row's protocol with a faster backbone.

    Raises:
        ValueError: an unknown row or network name.

    Example:
        >>> pretraining_points(["SE_ResNet50 / ResNet50"])["SE_ResNet50 / ResNet50"]["pretrain_backbone"]
        'resnet50'
    """
    names = {**PAPER_NETWORKS, **dict(networks or {})}
    out = {}
    for row in rows:
        if row not in PRETRAINING_ABLATION:
            raise ConfigError(f"unknown Table 1 row {row!r}; rows: {', '.join(PRETRAINING_ABLATION)}")
        spec = PRETRAINING_ABLATION[row]
        point = {"backbone": names[spec["network"]], "pretrained": spec["pretrained"],
                 "reference_pretraining": spec["reference_pretraining"]}
        if spec["pretrain_network"] is not None:
            point["pretrain_backbone"] = names[spec["pretrain_network"]]
        out[row] = point
    return out
