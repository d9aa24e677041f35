"""Configuration: three dataclasses, the stage-2 method's own settings, presets, and ``from_params`` for a
papermill parameters cell.

Config objects stay at the edges (CLI, notebooks, the engine's builders); library functions take
explicit arguments. Every field name is unique across the groups and the methods' settings, so a flat
dict such as a papermill parameters cell maps onto them without prefixes:

    >>> cfg = from_params({"preset": "smoke", "backbone": "resnet50", "lambda_cml": 0.0})
    >>> cfg.model.backbone, cfg.settings.lambda_cml
    ('resnet50', 0.0)

Each field carries its facts beside it (:func:`setting`): its range, the stage it belongs to and
whether it changes what a run computes. A stage-2 method (``method=``) is a plug-in of
:mod:`workbench.methods` with its own settings dataclass (:func:`register_method`); a setting of another
method is refused by name.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from workbench.errors import ConfigError
from workbench.paths import SHARED

# ----------------------------------------------------------------------------- field facts

#: ranges: (lowest, highest, lowest allowed itself, highest allowed itself)
POSITIVE = (0, math.inf, False, False)
NON_NEGATIVE = (0, math.inf, True, False)
AT_LEAST_1 = (1, math.inf, True, False)
FRACTION = (0, 1, True, True)


def setting(default: Any = dataclasses.MISSING, *, range: tuple | None = None, stage: str = "both",
            computes: bool = True, choices: Sequence[Any] | None = None) -> Any:
    """A config field with its facts in ``metadata``.

    Args:
        default: the field's default.
        range: ``(low, high, low allowed, high allowed)`` for a number (:data:`POSITIVE` ...).
        stage: ``"stage1"`` (only stage 1 reads it), ``"stage2"`` or ``"both"``; a method's settings are
            stage 2.
        computes: False for a field that does not change what a run computes (threads, progress bars ...):
            a run may be resumed or reused with another value.
        choices: the allowed values of a string field.
    """
    return field(default=default, metadata={"range": range, "stage": stage, "computes": computes,
                                            "choices": tuple(choices) if choices else None})


# ----------------------------------------------------------------------------- the three groups


@dataclass
class DataConfig:
    target: str = setting("synthetic")                 # target dataset (unlabeled in training): load_dataset name
    target_root: str | None = setting(None)            # its folder; None for the synthetic set (generated on use)
    reference: str = setting("synthetic_reference")    # labeled reference dataset; all its ids become agents
    reference_root: str | None = setting(None)         # its folder
    synthetic_seed: int = setting(0, range=NON_NEGATIVE)  # seed of the synthetic sets (when used)
    synthetic_size: str = setting("default")           # default | smoke: sizes of the generated synthetic sets
    image_size: tuple[int, int] = setting((128, 64))   # (height, width); paper 384×128
    pad: int = setting(4, range=NON_NEGATIVE)          # zero padding of the random crop; paper 7
    workers: int = setting(0, range=NON_NEGATIVE, computes=False)  # DataLoader worker processes per loader
    cache_images: bool = setting(True, computes=False)  # decode every training image once (ImageCache)


@dataclass
class ModelConfig:
    backbone: str = setting("mobilenet_v2")            # resnet50 | seresnet50 | mobilenet_v2
    pretrained: str | None = setting(None)             # "imagenet", a state-dict file, or None (random init)
    stages: tuple[str, ...] = setting(("layer4",))     # fused stages; paper best: layer1, layer3, layer4
    embed_dim: int | None = setting(None)              # embedding FC after fusion (paper 2048); None = fused vector
    last_stride: int = setting(2, range=(1, 2, True, True))  # 1 is common ReID practice; paper 2
    scale: float = setting(30.0, range=POSITIVE)       # s: the agents' logit scale (L_AL, soft multilabels)


@dataclass
class TrainConfig:
    # stage 1: reference pretraining (L_AL only)
    pretrain_epochs: int = setting(60, range=AT_LEAST_1, stage="stage1")       # paper 60
    pretrain_batch_size: int = setting(256, range=AT_LEAST_1, stage="stage1")  # paper 256
    pretrain_lr: float = setting(1e-3, range=POSITIVE, stage="stage1")         # paper 1e-3
    pretrain_weight_decay: float = setting(0.025, range=NON_NEGATIVE, stage="stage1")  # paper 0.025
    pretrain_milestones: tuple[int, ...] = setting((), stage="stage1")  # lr × gamma from these epochs on (1-based)
    # stage 2: the method (workbench.methods; its own fields are in Config.settings)
    method: str = setting("mar", stage="stage2")       # "mar" (L_MAR, the paper) | "cluster_contrast" | "soft_cluster"
                                                       # (the hybrid) | "oracle" (the supervised upper bound):
                                                       # python -m workbench train --help lists them
    epochs: int = setting(20, range=AT_LEAST_1, stage="stage2")                # paper 20
    epoch_length: str = setting("reference", stage="stage2", choices=("reference", "target"))
                                                       # one epoch = one pass over the "reference" set (official
                                                       # ReidTrainer.train_epoch; the target loader restarts when it
                                                       # runs out) or over the "target" training set
    n_target: int = setting(184, range=(2, math.inf, True, False), stage="stage2")  # target images per batch (per GPU)
    n_reference: int = setting(184, range=AT_LEAST_1, stage="stage2")          # reference images per batch (per GPU)
    lr: float = setting(2e-4, range=POSITIVE, stage="stage2")  # paper 2e-4; L_AL's step is lr × lambda_ref (50×):
                                                       # keep it near stage 1's final lr or the pretrained agents drift
    weight_decay: float = setting(0.025, range=NON_NEGATIVE, stage="stage2")   # no decay on BatchNorm and biases
    milestones: tuple[int, ...] = setting((12, 17), stage="stage2")  # lr × gamma from the m-th epoch on (1-based): the
                                                       # official trainer steps its scheduler at the start of each
                                                       # epoch (PyTorch 0.4), so paper (12, 17) decays in 0-based
                                                       # epochs 11 and 16
    optimizer: str = setting("sgd", stage="stage2", choices=("sgd", "adam"))  # "sgd" (the official MAR trainer,
                                                       # with momentum) | "adam" (the Cluster-Contrast recipe); stage 1
                                                       # always trains with SGD
    # both stages
    gamma: float = setting(0.1, range=POSITIVE)
    momentum: float = setting(0.9, range=(0, 1, True, False))  # SGD momentum (ignored by Adam)
    eval_every: int = setting(5, range=NON_NEGATIVE)   # evaluate on target query/gallery every k epochs (0: end only)
    eval_batch_size: int = setting(128, range=AT_LEAST_1, computes=False)
    flip_test: bool = setting(False)                   # average features of image and mirror at evaluation
    # run
    seed: int = setting(0, range=NON_NEGATIVE)
    device: str = setting("auto", computes=False)      # auto | cpu | cuda | cuda:1 ...
    threads: int = setting(0, range=NON_NEGATIVE, computes=False)  # CPU threads (0: OMP_NUM_THREADS if set, else the
                                                       # usable cores less what other jobs use; workbench.threads)
    amp: bool = setting(False)                         # mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU
    channels_last: bool = setting(True)                # channels_last memory format (on CUDA; on a CPU with amp's bf16)
    progress: bool = setting(True, computes=False)     # tqdm bars on a TTY; otherwise a log line every log_every_s
    log_every_s: float = setting(30.0, range=NON_NEGATIVE, computes=False)  # seconds between progress lines
    tensorboard: bool = setting(True, computes=False)  # event files in <run>/tensorboard (tensorboard --logdir runs)


_GROUPS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
#: the fixed fields (every run has them) → their group
FIELD_GROUP = {f.name: g for g, c in _GROUPS.items() for f in fields(c)}
assert len(FIELD_GROUP) == sum(len(fields(c)) for c in _GROUPS.values()), "field names must be unique"
_FIELDS = {f.name: f for c in _GROUPS.values() for f in fields(c)}

#: fields that do not change what a run computes (a run may be resumed or reused with other values)
RUN_ONLY_FIELDS = frozenset(n for n, f in _FIELDS.items() if not f.metadata["computes"]) | {"preset"}


# ----------------------------------------------------------------------------- stage-2 methods


@dataclass(frozen=True)
class Method:
    """A stage-2 method as :func:`register_method` recorded it."""

    name: str
    settings: type                  # its settings dataclass (fields made with :func:`setting`)
    trainer: type | None = None     # its Trainer (workbench.engine.trainer.Trainer subclass)
    title: str = ""                 # how tables and logs name it
    uses_labels: bool = False       # trains on the target's true identities (an upper bound, not unsupervised)


_METHODS: dict[str, Method] = {}


def register_method(name: str, settings: type, *, title: str, uses_labels: bool = False) -> Callable[[type], type]:
    """Class decorator of a stage-2 trainer: ``method=name`` trains with it and reads ``settings``.

    Example::

        @register_method("cluster_contrast", ClusterSettings, title="Cluster-Contrast")
        class ClusterContrastTrainer(Trainer): ...

    Raises:
        ConfigError: a name taken by another trainer, or a settings field that another method's settings or
            the fixed groups already use with another meaning (the flat namespace must stay unambiguous).
    """
    def decorate(trainer: type) -> type:
        if name in _METHODS and _METHODS[name].trainer is not trainer:
            raise ConfigError(f"method {name!r} is registered twice ({_METHODS[name].trainer} and {trainer})")
        for f in fields(settings):
            if f.name in FIELD_GROUP:
                raise ConfigError(f"{settings.__name__}.{f.name}: the name of a fixed config field")
            for other in _METHODS.values():
                theirs = {g.name: g for g in fields(other.settings)}
                if f.name in theirs and theirs[f.name].default != f.default:
                    raise ConfigError(f"{settings.__name__}.{f.name} means something else in {other.settings.__name__}")
        _METHODS[name] = Method(name, settings, trainer, title, uses_labels)
        trainer.method = name
        return trainer
    return decorate


def methods() -> Mapping[str, Method]:
    """Every registered method by name. The methods register when :mod:`workbench.methods` is imported
    (done here on first use: the plug-ins live above the config's floor)."""
    if "mar" not in _METHODS:
        importlib.import_module("workbench.methods")
    return _METHODS


def method_of(name: str) -> Method:
    registry = methods()
    if name not in registry:
        raise ConfigError(f"method = {name!r}: unknown{did_you_mean(name, list(registry))}")
    return registry[name]


def _owners(name: str) -> list[str]:
    return [m.name for m in methods().values() if name in {f.name for f in fields(m.settings)}]


def all_field_names() -> list[str]:
    """Every config field name: the fixed groups' and every method's settings'."""
    names = list(FIELD_GROUP)
    for m in methods().values():
        names += [f.name for f in fields(m.settings) if f.name not in names]
    return names


def stage2_fields() -> frozenset[str]:
    """The fields a stage-1 run ignores: the fixed groups' stage-2 fields and every method's settings."""
    fixed = {n for n, f in _FIELDS.items() if f.metadata["stage"] == "stage2"}
    return frozenset(fixed | {f.name for m in methods().values() for f in fields(m.settings)})


def off_by_default() -> frozenset[str]:
    """The boolean fields (fixed or a method's) that are off unless a run turns them on: a record without one
    (an older run, a method without that setting) ran with it off."""
    classes = [*_GROUPS.values(), *(m.settings for m in methods().values())]
    return frozenset(f.name for c in classes for f in fields(c) if f.default is False)


def declared_setting_names() -> frozenset[str]:
    """The names of every method's settings, read from the source of :mod:`workbench.methods` (the annotated
    fields of its ``*Settings`` dataclasses) without importing it (its trainers load torch), plus those of any
    method registered already (a plug-in from elsewhere)."""
    import ast

    names = {f.name for m in _METHODS.values() for f in fields(m.settings)}
    for path in (Path(__file__).resolve().parent / "methods").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Settings"):
                names |= {a.target.id for a in node.body if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)}
    return frozenset(names)


def precheck(params: Mapping[str, Any]) -> None:
    """The cheap half of :func:`from_params`, for a command line to answer at once: every name is a field (of
    the fixed groups or of some method's settings, :func:`declared_setting_names`), and every fixed field's
    value has its type and lies in its range. Nothing is imported; :func:`from_params` checks the rest.

    Raises:
        ConfigError: as :func:`from_params` would (the same messages).
    """
    settings = declared_setting_names()
    for key, value in params.items():
        name = str(key).rpartition(".")[2]
        if name == "preset":
            if value not in PRESETS:
                raise ConfigError(f"unknown preset {value!r}; known: {', '.join(PRESETS)}")
            continue
        if name not in FIELD_GROUP and name not in settings:
            raise ConfigError(f"unknown config field {name!r}{did_you_mean(name, [*FIELD_GROUP, *sorted(settings), 'preset'])}")
        if name not in FIELD_GROUP or value is None:
            continue
        f = _FIELDS[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        try:
            coerced = _coerce(value, default, name)
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err) if name in str(err) else f"{name} = {value!r}: {err}") from None
        bounds = f.metadata.get("range")
        if bounds and isinstance(coerced, (int, float)) and not isinstance(coerced, bool):
            low, high, low_ok, high_ok = bounds
            if not (low < coerced or (low_ok and coerced == low)) or not (coerced < high or (high_ok and coerced == high)):
                lo, hi = "[" if low_ok else "(", "]" if high_ok else ")"
                raise ConfigError(f"{name} = {coerced!r} is out of range: it must lie in {lo}{low:g}, {high:g}{hi}")


#: per preset, per method: settings that differ from the method's defaults
PRESET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {"smoke": {"mar": {"mining_ratio": 0.05}}}


# ----------------------------------------------------------------------------- the config


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    settings: Any = None              # the stage-2 method's settings (``train.method``; None: its defaults)
    preset: str = "demo"

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = default_settings(self.train.method, self.preset)

    def to_dict(self) -> dict:
        return {"data": asdict(self.data), "model": asdict(self.model), "train": asdict(self.train),
                "settings": asdict(self.settings), "preset": self.preset}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A saved config (``config.json``, a zoo entry): today's layout, or the older one (a ``loss`` group
        holding every method's fields). Fields of another method than the saved run's are left out."""
        flat: dict[str, Any] = {}
        for key, group in d.items():
            if isinstance(group, dict):
                flat.update(group)
        method = method_of(flat.get("method", "mar"))
        own = {f.name for f in fields(method.settings)}
        values = {k: v for k, v in flat.items() if k in FIELD_GROUP or k in own}
        unknown = sorted(k for k in flat if k not in values and not _owners(k))
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r} in a saved config{did_you_mean(unknown[0], all_field_names())}")
        base = cls(preset=d.get("preset", "custom"), train=TrainConfig(method=method.name))
        base.settings = method.settings()
        return _apply(base, values, method)

    def flat(self) -> dict[str, Any]:
        """All fields in one flat dict (the form of a papermill parameters cell)."""
        out = {"preset": self.preset}
        for group in (self.data, self.model, self.train, self.settings):
            out.update(asdict(group))
        return out


def default_settings(method: str, preset: str | None = None) -> Any:
    """A method's settings with a preset's overrides (:data:`PRESET_SETTINGS`)."""
    cls = method_of(method).settings
    return _coerce_group(cls(), PRESET_SETTINGS.get(preset or "", {}).get(method, {}), method)


# ----------------------------------------------------------------------------- values and names


def did_you_mean(name: str, known: Sequence[str]) -> str:
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


def _coerce(value: Any, current: Any, name: str) -> Any:
    """Convert a value from JSON/CLI/papermill to the field's type (tuples, None, bools)."""
    if isinstance(current, tuple) or name in ("stages", "milestones", "pretrain_milestones", "image_size"):
        if value is None:
            return ()
        if isinstance(value, str):
            value = [v for v in value.replace("+", ",").split(",") if v.strip()]
        items = tuple(value) if isinstance(value, (list, tuple)) else (value,)
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


def _coerce_group(group, values: Mapping[str, Any], group_name: str):
    known = [f.name for f in fields(group)]
    unknown = sorted(set(values) - set(known))
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


def _apply(cfg: Config, values: Mapping[str, Any], method: Method) -> Config:
    """``cfg`` with ``values`` (flat names of the fixed groups and of ``method``'s settings), checked."""
    own = {f.name for f in fields(method.settings)}
    per_group: dict[str, dict] = {g: {} for g in (*_GROUPS, "settings")}
    for key, value in values.items():
        per_group["settings" if key in own else FIELD_GROUP[key]][key] = value
    return check_ranges(Config(
        data=_coerce_group(cfg.data, per_group["data"], "data"),
        model=_coerce_group(cfg.model, per_group["model"], "model"),
        train=_coerce_group(cfg.train, per_group["train"], "train"),
        settings=_coerce_group(cfg.settings, per_group["settings"], method.name),
        preset=cfg.preset,
    ))


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
        train=TrainConfig(pretrain_epochs=12, pretrain_batch_size=32, pretrain_lr=0.05, pretrain_weight_decay=5e-4,
                          pretrain_milestones=(10,), epochs=6, n_target=32, n_reference=32, lr=2e-4,
                          weight_decay=5e-4, milestones=(5,), eval_every=2),
        preset="demo",
    )


def preset_smoke() -> Config:
    """Seconds-long runs for tests: tiny synthetic sets (72 target training images, 64 reference images,
    9 queries: its metrics are noise) and 64×32 images. Stage 2: 5 steps of 12 + 12 per epoch; MAR mines
    5 % of the pairs (:data:`PRESET_SETTINGS`)."""
    return Config(
        data=DataConfig(image_size=(64, 32), pad=2, cache_images=True, synthetic_size="smoke"),
        model=ModelConfig(backbone="mobilenet_v2", pretrained=None, stages=("layer4",), embed_dim=None),
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


def from_params(params: Mapping[str, Any], base: str | Config | None = None) -> Config:
    """Build a config from a flat dict (a papermill parameters cell, CLI overrides).

    Args:
        params: ``{field: value}`` with field names of any group (``lr``, ``backbone``, ``method`` ...),
            of the chosen method's settings (``use_cml``, ``cc_eps`` ...) or ``group.field``;
            ``preset`` picks the base preset. Values may be strings (``"layer1+layer3+layer4"``,
            ``"384,128"``, ``"none"``, ``"true"``).
        base: the preset name or config to start from (default: ``params["preset"]`` or ``demo``).

    Raises:
        ConfigError (a ValueError): an unknown field (with the closest known name), a setting of another
            method than the one chosen (naming the method it belongs to), or a value of the wrong type or
            out of its range.
    """
    params = dict(params)
    preset = params.pop("preset", None)
    cfg = dataclasses.replace(base) if isinstance(base, Config) else get_preset(preset or base or "demo")
    values: dict[str, Any] = {}
    grouped: dict[str, str] = {}  # name -> the group a "group.name" key gave it
    for key, value in params.items():
        group, _, name = str(key).rpartition(".")
        if group and group not in (*_GROUPS, "settings"):
            raise ConfigError(f"unknown config field {key!r}: no group {group!r} (groups: {', '.join((*_GROUPS, 'settings'))})")
        if group:
            grouped[name] = group
        values[name] = value
    method = method_of(str(values.get("method", cfg.train.method)))
    if method.name != cfg.train.method:  # another method: its own settings, with the preset's overrides
        cfg = dataclasses.replace(cfg, train=replace(cfg.train, method=method.name),
                                  settings=default_settings(method.name, cfg.preset))
    own = {f.name for f in fields(method.settings)}
    for name in values:
        if name in grouped and grouped[name] != ("settings" if name in own else FIELD_GROUP.get(name)):
            raise ConfigError(f"unknown config field '{grouped[name]}.{name}'"
                              + (f": {name} is in {FIELD_GROUP[name]}" if name in FIELD_GROUP else ""))
        if name in FIELD_GROUP or name in own:
            continue
        owners = _owners(name)
        if owners:
            raise ConfigError(f"{name} is a setting of method {', '.join(owners)}, and this run's method is "
                              f"{method.name!r}: set method={owners[0]} to use it, or leave {name} out")
        raise ConfigError(f"unknown config field {name!r}{did_you_mean(name, [*all_field_names(), 'preset'])}")
    return _apply(cfg, values, method)


def check_ranges(cfg: Config) -> Config:
    """``cfg`` when every field is in its range and among its choices (a negative lr, zero epochs ... are
    refused when the config is made, not after the data has loaded), and the method's own checks pass.

    Raises:
        ConfigError: naming the first field out of range, its value and the range.
    """
    for group in (cfg.data, cfg.model, cfg.train, cfg.settings):
        for f in fields(group):
            value, meta = getattr(group, f.name), f.metadata
            if meta.get("range") and value is not None and not isinstance(value, bool):
                low, high, low_ok, high_ok = meta["range"]
                if not (low < value or (low_ok and value == low)) or not (value < high or (high_ok and value == high)):
                    lo, hi = "[" if low_ok else "(", "]" if high_ok else ")"
                    raise ConfigError(f"{f.name} = {value!r} is out of range: it must lie in {lo}{low:g}, {high:g}{hi}")
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{f.name} = {value!r}: choose one of {', '.join(map(str, meta['choices']))}")
    for name in ("image_size", "milestones", "pretrain_milestones"):
        if any(v < 1 for v in cfg.flat()[name]):
            raise ConfigError(f"{name} = {cfg.flat()[name]!r}: every entry must be a positive integer")
    if cfg.model.embed_dim is not None and cfg.model.embed_dim < 1:
        raise ConfigError(f"embed_dim = {cfg.model.embed_dim!r}: a positive size, or none for no embedding")
    check = getattr(cfg.settings, "check", None)
    if check is not None:
        check(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a run folder's ``config.json``."""
    return Config.from_dict(json.loads(Path(path).read_text()))


def config_differences(saved: Config, cfg: Config, stage: str = "mar") -> list[str]:
    """The fields in which ``cfg`` differs from a run's ``saved`` config, as ``"name: a there, b here"``.

    Fields that do not change what is computed (:data:`RUN_ONLY_FIELDS`) are ignored, and so are the
    stage-2 fields for a stage-1 (``"pretrain"``) run.
    """
    ignore = RUN_ONLY_FIELDS | (stage2_fields() if stage == "pretrain" else frozenset())
    a, b = saved.flat(), cfg.flat()
    keys = list(dict.fromkeys([*b, *a]))
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in keys if k not in ignore and a.get(k) != b.get(k)]


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

    ignore = RUN_ONLY_FIELDS | (stage2_fields() if stage == "pretrain" else frozenset())
    flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items() if k not in ignore}
    text = json.dumps({"stage": stage, "version": COMPUTE_VERSION[stage], "config": flat}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
