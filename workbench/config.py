"""Configuration: four dataclasses, presets, and ``from_params`` for a papermill parameters cell.

Config objects stay at the edges (CLI, notebooks, the engine's builders); library functions take
explicit arguments. Every field name is unique across the four groups, so a flat dict such as a
papermill parameters cell maps onto them without prefixes:

    >>> cfg = from_params({"preset": "smoke", "backbone": "resnet50", "lambda_cml": 0.0})
    >>> cfg.model.backbone, cfg.loss.lambda_cml
    ('resnet50', 0.0)
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError
from workbench.paths import SHARED

# ----------------------------------------------------------------------------- the four groups


@dataclass
class DataConfig:
    target: str = "synthetic"                 # target dataset (unlabeled in training): load_dataset name
    target_root: str | None = None            # its folder; None for the synthetic set (generated on use)
    reference: str = "synthetic_reference"    # labeled reference dataset; all its ids become agents
    reference_root: str | None = None         # its folder
    synthetic_seed: int = 0                   # seed of the synthetic sets (when used)
    synthetic_size: str = "default"           # default | smoke: sizes of the generated synthetic sets
    image_size: tuple[int, int] = (128, 64)   # (height, width); paper 384×128
    pad: int = 4                              # zero padding of the random crop; paper 7
    workers: int = 0                          # DataLoader worker processes per loader
    cache_images: bool = True                 # decode every training image once (ImageCache)


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v2"            # resnet50 | seresnet50 | mobilenet_v2
    pretrained: str | None = None             # "imagenet", a state-dict file, or None (random init)
    stages: tuple[str, ...] = ("layer4",)     # fused stages; paper best: layer1, layer3, layer4
    embed_dim: int | None = None              # embedding FC after fusion (paper 2048); None = fused vector
    last_stride: int = 2                      # 1 is common ReID practice; paper 2


@dataclass
class LossConfig:
    scale: float = 30.0                       # s: soft multilabel / agent logit scale
    margin: float = 1.0                       # m: L_RJ margin (agents with cos > 1 - m/2 are hard)
    mining_ratio: float = 0.005               # fraction of batch pairs mined by L_MDL (and for T)
    lambda_cml: float = 2e-4                  # λ1: weight of L_CML
    lambda_ref: float = 50.0                  # λ2: weight of L_AL + β·L_RJ
    beta: float = 0.2                         # β: weight of L_RJ inside the reference term
    use_mdl: bool = True                      # ablation switches (paper Table 3)
    use_cml: bool = True
    use_al: bool = True
    use_rj: bool = True
    mdl_warmup_epochs: int = 1                # L_MDL off (memory and T frozen) for these epochs
    combine_reference_terms: bool = False     # L_RJ: False = official (a reference image's pull and hinge are
                                              # separate terms of one mean); True = one pull+hinge term each
    # stage 2 with method="cluster_contrast" (Dai et al. 2021's recipe): DBSCAN on the k-reciprocal Jaccard
    # distance of the target training set each epoch, a cluster memory, InfoNCE over it
    cc_eps: float = 0.6                       # DBSCAN radius on the Jaccard distance
    cc_min_samples: int = 4                   # images within cc_eps that make a core image (itself included)
    cc_k1: int = 30                           # Jaccard distance: k-reciprocal neighbourhood
    cc_k2: int = 6                            # Jaccard distance: query expansion
    cc_temperature: float = 0.05              # τ of the InfoNCE over the cluster memory
    cc_momentum: float = 0.2                  # μ of the memory update m ← μ·m + (1 − μ)·f
    cc_label_weight: float = 0.25             # method="soft_cluster" (the hybrid): DBSCAN's distance is
                                              # (1 − w)·jaccard + w·(1 − soft-multilabel agreement)
    init_images: str = "augmented"            # CML centres + T initialised from: "augmented" = official (one pass
                                              # of the shuffled, augmented, drop_last target training loader);
                                              # "clean" = every target training image once, test transform


@dataclass
class TrainConfig:
    # stage 1: reference pretraining (L_AL only)
    pretrain_epochs: int = 60                 # paper 60
    pretrain_batch_size: int = 256            # paper 256
    pretrain_lr: float = 1e-3                 # paper 1e-3
    pretrain_weight_decay: float = 0.025      # paper 0.025
    pretrain_milestones: tuple[int, ...] = ()  # lr × gamma from these epochs on (1-based, see milestones)
    # stage 2: joint MAR training
    epochs: int = 20                          # paper 20
    method: str = "mar"                       # stage 2: "mar" (L_MAR, the paper) | "cluster_contrast" (pseudo
                                              # labels by clustering, the Table 4 comparison; loss fields cc_*)
                                              # | "soft_cluster" (the hybrid: clustering on features and soft
                                              # multilabels, cc_label_weight)
    cc_instances: int = 4                     # cluster_contrast: images per pseudo label in a batch (K of P×K;
                                              # P = n_target // K)
    epoch_length: str = "reference"           # one epoch = one pass over the "reference" set (official
                                              # ReidTrainer.train_epoch; the target loader restarts when it
                                              # runs out) or over the "target" training set
    n_target: int = 184                       # target images per batch (per GPU)
    n_reference: int = 184                    # reference images per batch (per GPU)
    lr: float = 2e-4                          # paper 2e-4; L_AL's step is lr × lambda_ref (50×): keep it
                                              # near stage 1's final lr or the pretrained agents drift
    weight_decay: float = 0.025               # no decay on BatchNorm and biases
    milestones: tuple[int, ...] = (12, 17)    # lr × gamma from the m-th epoch on (1-based): the official trainer
                                              # steps its scheduler at the start of each epoch (PyTorch 0.4), so
                                              # paper (12, 17) decays in 0-based epochs 11 and 16
    gamma: float = 0.1
    optimizer: str = "sgd"                    # stage 2: "sgd" (the official MAR trainer, with momentum) | "adam"
                                              # (the Cluster-Contrast recipe: lr 3.5e-4, weight decay 5e-4);
                                              # stage 1 always trains with SGD
    momentum: float = 0.9                     # SGD momentum (ignored by Adam)
    eval_every: int = 5                       # evaluate on target query/gallery every k epochs (0: end only)
    grad_terms_every: int = 0                 # stage 2 diagnostic: every k steps, each L_MAR term's share of the
                                              # update of the shared weights (4 more backward passes; 0: off)
    eval_batch_size: int = 128
    flip_test: bool = False                   # average features of image and mirror at evaluation
    # run
    seed: int = 0
    device: str = "auto"                      # auto | cpu | cuda | cuda:1 ...
    threads: int = 0                          # CPU threads (0: OMP_NUM_THREADS if set, else the usable cores less
                                              # the machine's load; workbench.threads)
    amp: bool = False                         # mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU
    channels_last: bool = True                # channels_last memory format (on CUDA; on a CPU with amp's bf16)
    progress: bool = True                     # tqdm bars on a TTY; otherwise a log line every log_every_s
    log_every_s: float = 30.0                 # seconds between progress lines when stderr is not a TTY
    tensorboard: bool = True                  # event files in <run>/tensorboard (tensorboard --logdir runs)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "demo"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        groups = {}
        for f in fields(cls):
            if f.name == "preset":
                continue
            sub = f.default_factory()  # type: ignore[misc]
            groups[f.name] = _coerce_group(sub, d.get(f.name, {}), f.name)
        return cls(**groups, preset=d.get("preset", "custom"))

    def flat(self) -> dict[str, Any]:
        """All fields in one flat dict (the form of a papermill parameters cell)."""
        out = {"preset": self.preset}
        for group in (self.data, self.model, self.loss, self.train):
            out.update(asdict(group))
        return out


_GROUPS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}
FIELD_GROUP = {f.name: g for g, c in _GROUPS.items() for f in fields(c)}
assert len(FIELD_GROUP) == sum(len(fields(c)) for c in _GROUPS.values()), "field names must be unique"


def _coerce(value: Any, current: Any, name: str) -> Any:
    """Convert a value from JSON/CLI/papermill to the field's type (tuples, None, bools)."""
    if isinstance(current, tuple) or name in ("stages", "milestones", "pretrain_milestones", "image_size"):
        if value is None:
            return ()
        if isinstance(value, str):
            value = [v for v in value.replace("+", ",").split(",") if v.strip()]
        items = tuple(value)
        if name == "image_size":
            items = tuple(int(v) for v in items)
            if len(items) != 2:
                raise ConfigError(f"image_size must be (height, width), got {value!r}")
        elif name != "stages":
            items = tuple(int(v) for v in items)
        else:
            items = tuple(str(v).strip() for v in items)
        return items
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name} must be a boolean, got {value!r}")
        return bool(value)
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        return float(value)
    if name == "embed_dim":
        return int(value)
    return value


def _coerce_group(group, values: dict, group_name: str):
    known = {f.name for f in fields(group)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {group_name} field {unknown[0]!r}{did_you_mean(unknown[0], known)}"
                          + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    coerced = {}
    for k, v in values.items():
        try:
            coerced[k] = _coerce(v, getattr(group, k), k)
        except (TypeError, ValueError) as err:
            if k in str(err):
                raise
            raise ConfigError(f"{k} = {v!r}: {err}") from None
    return replace(group, **coerced)


# ----------------------------------------------------------------------------- values and names


def did_you_mean(name: str, known: "Sequence[str]") -> str:
    """``"; did you mean 'x'?"`` when a known name is close to ``name``, else the list of known names (the
    one suggestion every unknown field, parameter or key gets: --set, grids, recipes, notebooks)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(map(str, known))}"


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def fix_yaml_scalar(value: Any) -> Any:
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); turn such strings into floats."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [fix_yaml_scalar(v) for v in value]
    if isinstance(value, dict):
        return {k: fix_yaml_scalar(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """A parameter value from the command line, read as YAML: ``0.01``, ``1e-3``, ``true``, ``[1, 2]``;
    anything else stays a string.

    ``none`` stays the string ``"none"``, as in a grid file: it means an explicit None, which the
    notebook's config (:func:`workbench.config.from_params`, the one parser of config values) and its
    paths (:func:`workbench.experiments.repo_path`) read as None; ``null`` (or leaving the parameter
    out) means the preset's value.

    Example:
        >>> parse_value("1e-3"), parse_value("false"), parse_value("none"), parse_value("layer1+layer4")
        (0.001, False, 'none', 'layer1+layer4')
    """
    import yaml

    if text.strip().lower() == "none":
        return "none"
    if text.strip().lower() in ("null", "~"):
        return None
    try:
        return fix_yaml_scalar(yaml.safe_load(text))
    except yaml.YAMLError:
        return text



# ----------------------------------------------------------------------------- presets

def _shared(relative: str) -> str:
    """A path under the shared folder, kept as ``${WORKBENCH_SHARED}/...`` until a run starts."""
    return f"{SHARED}/{relative}"


def preset_paper() -> Config:
    """DESIGN.md's stage 1 and stage 2 settings: ResNet-50, 384×128, 184 + 184, 20 joint epochs."""
    return Config(
        data=DataConfig(target="market1501", reference="msmt17", image_size=(384, 128), pad=7, workers=8,
                        cache_images=False),
        model=ModelConfig(backbone="resnet50", pretrained="imagenet", stages=("layer1", "layer3", "layer4"),
                          embed_dim=2048, last_stride=2),
        loss=LossConfig(),
        train=TrainConfig(pretrain_epochs=60, pretrain_batch_size=256, pretrain_lr=1e-3,
                          pretrain_weight_decay=0.025, epochs=20, n_target=184, n_reference=184, lr=2e-4,
                          weight_decay=0.025, milestones=(12, 17), amp=True, eval_every=5),
        preset="paper",
    )


def preset_cpu() -> Config:
    """MobileNetV2 with the ImageNet weights file at 128×64: a real-data run on 2 CPU cores.

    Target ``${WORKBENCH_SHARED}/data/cuhk01-market``, reference ``.../cuhk03-msmt`` (8,177 images,
    843 agents), weights ``.../weights/mobilenet_v2_imagenet.pth``: resolved when the run starts
    (``WORKBENCH_SHARED`` defaults to ``../shared`` beside the checkout); a missing file is an error.
    One stage-2 epoch is a pass over the reference set: 127 steps of 64 + 64 images.
    """
    return Config(
        data=DataConfig(target="market1501", target_root=_shared("data/cuhk01-market"), reference="msmt17",
                        reference_root=_shared("data/cuhk03-msmt"), image_size=(128, 64), pad=4, workers=0,
                        cache_images=True),
        model=ModelConfig(backbone="mobilenet_v2", pretrained=_shared("weights/mobilenet_v2_imagenet.pth"),
                          stages=("layer4",), embed_dim=None),
        loss=LossConfig(),
        train=TrainConfig(pretrain_epochs=12, pretrain_batch_size=64, pretrain_lr=0.01, pretrain_weight_decay=5e-4,
                          pretrain_milestones=(9,), epochs=5, n_target=64, n_reference=64, lr=2e-4,
                          weight_decay=5e-4, milestones=(4,), eval_every=1, amp=False),
        preset="cpu",
    )


def preset_demo() -> Config:
    """The README's main job: the synthetic sets, a small random-init MobileNetV2, a few minutes on CPU.

    One stage-2 epoch is a pass over the 512 synthetic reference images: 16 steps of 32 + 32.
    """
    return Config(
        data=DataConfig(image_size=(128, 64), pad=4, cache_images=True),
        model=ModelConfig(backbone="mobilenet_v2", pretrained=None, stages=("layer4",), embed_dim=None),
        loss=LossConfig(),
        train=TrainConfig(pretrain_epochs=12, pretrain_batch_size=32, pretrain_lr=0.05, pretrain_weight_decay=5e-4,
                          pretrain_milestones=(10,), epochs=6, n_target=32, n_reference=32, lr=2e-4,
                          weight_decay=5e-4, milestones=(5,), eval_every=2),
        preset="demo",
    )


def preset_smoke() -> Config:
    """Seconds-long runs for tests: tiny synthetic sets (72 target training images, 64 reference images,
    9 queries: its metrics are noise) and 64×32 images. Stage 2: 5 steps of 12 + 12 per epoch."""
    return Config(
        data=DataConfig(image_size=(64, 32), pad=2, cache_images=True, synthetic_size="smoke"),
        model=ModelConfig(backbone="mobilenet_v2", pretrained=None, stages=("layer4",), embed_dim=None),
        loss=LossConfig(mining_ratio=0.05),
        train=TrainConfig(pretrain_epochs=1, pretrain_batch_size=16, pretrain_lr=0.01, pretrain_weight_decay=5e-4,
                          epochs=2, n_target=12, n_reference=12, lr=2e-4, weight_decay=5e-4, milestones=(),
                          eval_every=0, eval_batch_size=64),
        preset="smoke",
    )


PRESETS = {"paper": preset_paper, "cpu": preset_cpu, "demo": preset_demo, "smoke": preset_smoke}

#: synthetic generator sizes by ``DataConfig.synthetic_size`` ("default" = SyntheticSpec's defaults)
SYNTHETIC_SIZES: dict[str, dict] = {"default": {}}
SYNTHETIC_SIZES["smoke"] = dict(target_train_ids=12, target_test_ids=8, target_cameras=3, target_images_per_camera=2,
                       target_distractors=2, reference_ids=16, reference_test_ids=4, reference_images_per_id=4,
                       height=64, width=32)


def get_preset(name: str) -> Config:
    """A fresh copy of a preset by name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()


def from_params(params: dict[str, Any], base: str | Config | None = None) -> Config:
    """Build a config from a flat dict (a papermill parameters cell, CLI overrides).

    Args:
        params: ``{field: value}`` with field names of any group (``lr``, ``backbone``,
            ``use_cml`` ...) or ``group.field``; ``preset`` picks the base preset. Values may be
            strings (``"layer1+layer3+layer4"``, ``"384,128"``, ``"none"``, ``"true"``).
        base: the preset name or config to start from (default: ``params["preset"]`` or ``demo``).

    Raises:
        ValueError: naming an unknown field or a value of the wrong type.
    """
    params = dict(params)
    preset = params.pop("preset", None)
    if isinstance(base, Config):
        cfg = dataclasses.replace(base)
    else:
        cfg = get_preset(preset or base or "demo")
    per_group: dict[str, dict] = {g: {} for g in _GROUPS}
    for key, value in params.items():
        group, _, name = key.rpartition(".")
        group = group or FIELD_GROUP.get(name, "")
        if group not in _GROUPS or name not in FIELD_GROUP or FIELD_GROUP[name] != group:
            raise ConfigError(f"unknown config field {key!r}{did_you_mean(name, [*FIELD_GROUP, 'preset'])}")
        per_group[group][name] = value
    return check_ranges(Config(
        data=_coerce_group(cfg.data, per_group["data"], "data"),
        model=_coerce_group(cfg.model, per_group["model"], "model"),
        loss=_coerce_group(cfg.loss, per_group["loss"], "loss"),
        train=_coerce_group(cfg.train, per_group["train"], "train"),
        preset=cfg.preset,
    ))


#: the allowed range of each numeric field: (lowest, highest, lowest allowed itself, highest allowed itself)
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    **dict.fromkeys(("lr", "pretrain_lr", "scale", "margin", "gamma"), (0, math.inf, False, False)),
    **dict.fromkeys(("epochs", "pretrain_epochs", "n_reference", "pretrain_batch_size", "eval_batch_size"),
                    (1, math.inf, True, False)),
    "n_target": (2, math.inf, True, False),  # L_MDL mines pairs within the target half
    **dict.fromkeys(("weight_decay", "pretrain_weight_decay", "lambda_cml", "lambda_ref", "beta", "eval_every",
                     "grad_terms_every", "threads",
                     "mdl_warmup_epochs", "workers", "pad", "log_every_s", "seed", "synthetic_seed"),
                    (0, math.inf, True, False)),
    "mining_ratio": (0, 1, False, True),
    "momentum": (0, 1, True, False),
    "last_stride": (1, 2, True, True),
    **dict.fromkeys(("cc_eps", "cc_temperature"), (0, math.inf, False, False)),
    **dict.fromkeys(("cc_min_samples", "cc_k1", "cc_k2", "cc_instances"), (1, math.inf, True, False)),
    "cc_momentum": (0, 1, True, False),
    "cc_label_weight": (0, 1, True, True),
}


#: what stage 2 can train (TrainConfig.method)
STAGE2_METHODS = ("mar", "cluster_contrast", "soft_cluster")
#: the optimizers a run can use (TrainConfig.optimizer)
OPTIMIZERS = ("sgd", "adam")


def check_ranges(cfg: Config) -> Config:
    """``cfg`` when every numeric field is in its range (a negative lr, zero epochs ... are refused when
    the config is made, not after the data has loaded).

    Raises:
        ConfigError: naming the first field out of range, its value and the range.
    """
    flat = cfg.flat()
    for name, (low, high, low_ok, high_ok) in _RANGES.items():
        value = flat[name]
        if value is None:
            continue
        if not (low < value or (low_ok and value == low)) or not (value < high or (high_ok and value == high)):
            lo, hi = "[" if low_ok else "(", "]" if high_ok else ")"
            raise ConfigError(f"{name} = {value!r} is out of range: it must lie in {lo}{low:g}, {high:g}{hi}")
    for name in ("image_size", "milestones", "pretrain_milestones"):
        if any(v < 1 for v in flat[name]):
            raise ConfigError(f"{name} = {flat[name]!r}: every entry must be a positive integer")
    if flat["method"] not in STAGE2_METHODS:
        raise ConfigError(f"method = {flat['method']!r}: choose one of {', '.join(STAGE2_METHODS)}")
    if flat["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"optimizer = {flat['optimizer']!r}: choose one of {', '.join(OPTIMIZERS)}")
    if flat["n_target"] % flat["cc_instances"] and flat["method"] != "mar":
        raise ConfigError(f"n_target = {flat['n_target']} must be a multiple of cc_instances = {flat['cc_instances']} "
                          "(P×K batches)")
    if flat["embed_dim"] is not None and flat["embed_dim"] < 1:
        raise ConfigError(f"embed_dim = {flat['embed_dim']!r}: a positive size, or none for no embedding")
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a run folder's ``config.json``."""
    return Config.from_dict(json.loads(Path(path).read_text()))


#: fields that do not change what a run computes (a run may be resumed or reused with other values)
RUN_ONLY_FIELDS = frozenset({"progress", "log_every_s", "tensorboard", "device", "threads", "workers", "eval_batch_size", "cache_images",
                             "preset"})
#: stage-2 fields that a stage-1 run ignores
STAGE2_FIELDS = frozenset({"method", "optimizer", "cc_label_weight", "cc_eps", "cc_min_samples", "cc_k1", "cc_k2", "cc_temperature", "cc_momentum",
                           "cc_instances", "epochs", "epoch_length", "n_target", "n_reference", "lr", "weight_decay", "milestones",
                           "mining_ratio", "lambda_cml", "lambda_ref", "beta", "use_mdl", "use_cml", "use_al",
                           "use_rj", "mdl_warmup_epochs", "margin", "combine_reference_terms", "init_images"})


def config_differences(saved: Config, cfg: Config, stage: str = "mar") -> list[str]:
    """The fields in which ``cfg`` differs from a run's ``saved`` config, as ``"name: a there, b here"``.

    Fields that do not change what is computed (:data:`RUN_ONLY_FIELDS`) are ignored, and so are the
    stage-2 fields for a stage-1 (``"pretrain"``) run.
    """
    ignore = RUN_ONLY_FIELDS | (STAGE2_FIELDS if stage == "pretrain" else frozenset())
    a, b = saved.flat(), cfg.flat()
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in b if k not in ignore and a.get(k) != b.get(k)]


#: the version of each stage's computation: bump it when a change of the code makes a run of the same
#: config compute something else (a stage 1 found by :func:`computation_key` must be the same model)
COMPUTE_VERSION = {"pretrain": 1, "mar": 1}


def computation_key(cfg: Config, stage: str = "pretrain") -> str:
    """A short hash of what a run of ``stage`` with ``cfg`` computes: every field that changes the result
    (the stage-2 fields are left out of a stage 1's key, the run-only fields of both) and
    :data:`COMPUTE_VERSION`. Paths are hashed as written (``${WORKBENCH_SHARED}/...``), so the key is
    the same on every machine.

    Two recipes that need the same stage 1 find it under the same key (``workbench reproduce``), and a
    zoo entry made from a run carries the key of that run's config.

    Example:
        >>> computation_key(get_preset("cpu")) == computation_key(from_params({"preset": "cpu", "epochs": 20}))
        True
    """
    import hashlib

    ignore = RUN_ONLY_FIELDS | (STAGE2_FIELDS if stage == "pretrain" else frozenset())
    flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items() if k not in ignore}
    text = json.dumps({"stage": stage, "version": COMPUTE_VERSION[stage], "config": flat}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
