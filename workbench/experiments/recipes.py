"""Recipes: what makes a results folder, as data (``results/<folder>/recipe.yaml``), and the plan of runs
that ``workbench reproduce`` turns back into the folder.

A recipe of a table (``experiment:``) names the :data:`~workbench.experiments.records.EXPERIMENTS` entry
it fills, its stage 1s (a zoo entry or a config each), the stage-2 base config, the rows (config
fields on top of the base, and which stage 1 each starts from), the seeds, and how the folder is
written::

    experiment: method_comparison
    stage1:
      cpu: {zoo: mobilenet_v2-cuhk03-cpu-seed0, config: {preset: cpu, seed: 0}}
    base: {preset: cpu, epochs: 2, lr: 2.0e-4, weight_decay: 0.025, eval_every: 1}
    seeds: [0, 1, 2]
    rows:
      MAR (soft multilabels): {method: mar}
      Cluster-Contrast: {method: cluster_contrast, cc_k1: 10, optimizer: adam, lr: 3.5e-4, epochs: 5}
    notes: NOTES.md
    after: ["report {stage1:cpu} --csv {out}/stage1.csv"]

A recipe of anything else (the demo, benchmarks, timings) lists the ``commands:`` that write it.

Values are read as YAML everywhere (recipes, grids, ``--set``, notebook parameters:
:func:`workbench.experiments.grids.parse_value`); paths are relative to the repository root or use
``${WORKBENCH_SHARED}``. A recipe is checked when it is read: an unknown key or config field is one
error naming the file, the key and the closest known name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.config import did_you_mean
from workbench.errors import ConfigError, MissingFileError

log = logging.getLogger("workbench.experiments")

RECIPE_FILE = "recipe.yaml"
#: the notebooks that run one stage-1 point and one stage-2 point
STAGE1_NOTEBOOK = "notebooks/02_pretrain_reference.ipynb"
STAGE2_NOTEBOOK = "notebooks/03_train_mar.ipynb"

_TOP_KEYS = {"experiment", "description", "notebook", "stage1", "base", "seeds", "rows", "notes", "reference",
             "after", "render", "commands", "outputs", "smoke"}
_STAGE1_KEYS = {"zoo", "config", "history"}
_ROW_KEYS = {"stage1", "seeds"}
#: fields a smoke-scale plan drops from every config: the data, the weights file and the sizes of the
#: real-data presets (the smoke preset's own apply)
_SMOKE_DROP = {"target", "target_root", "reference", "reference_root", "synthetic_seed", "synthetic_size",
               "image_size", "pad", "pretrained", "epochs", "pretrain_epochs", "pretrain_batch_size", "n_target",
               "n_reference", "eval_every", "eval_batch_size", "workers", "cache_images", "device", "threads",
               "grad_terms_every", "pretrain_milestones", "milestones"}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.").lower() or "x"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Stage1:
    """A stage 1 of a recipe: its config (preset + fields) and, where one exists, its zoo entry."""

    name: str
    config: Mapping[str, Any]
    zoo: str | None = None
    history: str | None = None   # a committed history of this stage 1 (its cost in the plan), from the folder

    def cfg(self):
        from workbench.config import from_params

        return from_params(dict(self.config))

    @property
    def key(self) -> str:
        from workbench.config import computation_key

        return computation_key(self.cfg(), "pretrain")

    @property
    def folder_name(self) -> str:
        return stage1_folder_name(self.cfg())


def stage1_folder_name(cfg) -> str:
    """A stage 1's folder under ``<runs>/stage1/``: made of its config alone (preset, backbone, seed and
    :func:`~workbench.config.computation_key`), so that every recipe needing it finds the same folder."""
    from workbench.config import computation_key

    return f"{cfg.preset}-{cfg.model.backbone}-seed{cfg.train.seed}-{computation_key(cfg, 'pretrain')}"


@dataclass(frozen=True)
class Row:
    label: str
    fields: Mapping[str, Any]    # config fields on top of the recipe's base
    stage1: str | None           # a name of the recipe's stage1, or None: no stage 1
    seeds: Sequence[int] | None = None  # the row's own seeds (default: the recipe's)


@dataclass(frozen=True)
class Point:
    """One stage-2 run of the plan: a row at a seed."""

    row: str
    seed: int
    stage1: str | None
    fields: Mapping[str, Any]    # the whole stage-2 config as preset + fields (seed included)

    def cfg(self):
        from workbench.config import from_params

        return from_params(dict(self.fields))

    @property
    def name(self) -> str:
        return f"{slug(self.row)}-seed{self.seed}-{_digest([self.fields, self.stage1])}"

    @property
    def epochs(self) -> int:
        return self.cfg().train.epochs


@dataclass(frozen=True)
class Recipe:
    """A results folder's recipe (see the module docstring). ``folder`` is the results folder."""

    path: Path
    folder: Path
    experiment: str | None = None
    description: str = ""
    notebook: str = STAGE2_NOTEBOOK
    stage1: Mapping[str, Stage1] = field(default_factory=dict)
    base: Mapping[str, Any] = field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    rows: Sequence[Row] = ()
    notes: str | None = None
    reference: str | None = None
    after: Sequence[str] = ()
    render: Sequence[str] = ()   # notebooks opened on the written folder (results_dir), kept as offline HTML
    partial: bool = False        # some rows or seeds only (reproduce --rows/--seeds): notes and notebooks where they fit
    commands: Sequence[str] = ()
    outputs: Sequence[str] = ()
    smoke_scale: bool = False

    @property
    def kind(self) -> str:
        return "table" if self.experiment else "commands"

    def points(self) -> list[Point]:
        """Every stage-2 run: rows in order, seeds within a row."""
        out = []
        for row in self.rows:
            for seed in (row.seeds if row.seeds is not None else self.seeds):
                out.append(Point(row.label, int(seed), row.stage1, {**self.base, **row.fields, "seed": int(seed)}))
        return out

    def used_stage1(self) -> list[Stage1]:
        names = {r.stage1 for r in self.rows if r.stage1}
        return [s for n, s in self.stage1.items() if n in names]

    def smoke(self) -> "Recipe":
        """The same plan at smoke scale: the synthetic sets, 1 seed, 1 epoch, stage 1s trained for 1 epoch
        (no zoo), every evaluation after epoch 1."""
        def shrink(fields: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in fields.items() if k not in _SMOKE_DROP and k != "preset"}

        stage1 = {n: Stage1(n, {"preset": "smoke", **shrink(s.config)}) for n, s in self.stage1.items()}
        rows = [Row(r.label, shrink(r.fields), r.stage1, None) for r in self.rows]
        base = {"preset": "smoke", **shrink(self.base), "epochs": 1, "eval_every": 1}
        return replace(self, stage1=stage1, rows=rows, base=base, seeds=tuple(self.seeds)[:1], smoke_scale=True,
                       after=(), render=())


# ----------------------------------------------------------------------------- reading


def _config_fields(fields: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``fields`` with every key a config field (or ``group.field``); values as read from YAML."""
    from workbench.config import all_field_names

    names = all_field_names()
    out = {}
    for key, value in fields.items():
        name = str(key).rpartition(".")[2]
        if key != "preset" and name not in names:
            known = [*names, "preset", *(_ROW_KEYS if "rows." in where else ())]
            raise ConfigError(f"{where}: unknown config field {key!r}{did_you_mean(name, known)}")
        out[str(key)] = value
    return out


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping (key: value), got {type(value).__name__}")
    return value


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe: a ``recipe.yaml`` or the results folder holding one.

    Every stage-1 config, and every row's stage-2 config at every seed, is built with
    :func:`workbench.config.from_params` (ranges and types checked); rows name stage 1s of the recipe;
    ``experiment`` is an :data:`EXPERIMENTS` key whose rows include every row of the recipe.

    Raises:
        MissingFileError: no recipe there.
        ConfigError: one line naming the file, the key and what is wrong (with a did-you-mean).
    """
    import yaml

    from workbench.config import fix_yaml_scalar

    path = Path(path)
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.is_file():
        raise MissingFileError(f"no recipe at {path} (a results folder holds its {RECIPE_FILE})")
    try:
        data = fix_yaml_scalar(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {' '.join(str(err).split())}") from None
    data = _mapping(data, str(path))
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(str(key), sorted(_TOP_KEYS))}")
    folder = path.parent
    experiment = data.get("experiment")
    if experiment is None:
        commands = data.get("commands") or []
        if not commands or not all(isinstance(c, str) for c in commands):
            raise ConfigError(f"{path}: a recipe names its experiment, or lists the commands that write the folder")
        return Recipe(path, folder, description=str(data.get("description", "")), commands=tuple(commands),
                      outputs=tuple(data.get("outputs") or ()))
    from workbench.experiments.catalog import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        raise ConfigError(f"{path}: experiment: unknown {experiment!r}{did_you_mean(str(experiment), list(EXPERIMENTS))}")
    stage1 = {}
    for name, spec in _mapping(data.get("stage1"), f"{path}: stage1").items():
        where = f"{path}: stage1.{name}"
        spec = _mapping(spec, where)
        for key in spec:
            if key not in _STAGE1_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(str(key), sorted(_STAGE1_KEYS))}")
        config = _config_fields(_mapping(spec.get("config"), f"{where}.config"), f"{where}.config")
        stage1[str(name)] = Stage1(str(name), config, spec.get("zoo"), spec.get("history"))
    base = _config_fields(_mapping(data.get("base"), f"{path}: base"), f"{path}: base")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds: a list of whole numbers, got {seeds!r}")
    rows = []
    default_stage1 = next(iter(stage1)) if len(stage1) == 1 else None
    exp = EXPERIMENTS[experiment]
    for label, spec in _mapping(data.get("rows"), f"{path}: rows").items():
        where = f"{path}: rows.{label}"
        spec = dict(_mapping(spec, where))
        if exp.rows and label not in exp.rows:
            raise ConfigError(f"{where}: {experiment} has no row {label!r}{did_you_mean(str(label), list(exp.rows))}")
        if "stage1" not in spec:
            if default_stage1 is None and stage1:
                raise ConfigError(f"{where}: stage1: name the row's stage 1 (one of {', '.join(stage1)}, or none)")
            s1 = default_stage1
        elif spec["stage1"] in (None, "none"):
            s1 = None
        elif spec["stage1"] in stage1:
            s1 = spec["stage1"]
        else:
            raise ConfigError(f"{where}: stage1: {spec['stage1']!r} is not a stage 1 of the recipe"
                              f"{did_you_mean(str(spec['stage1']), list(stage1)) if stage1 else ' (it has none)'}")
        spec.pop("stage1", None)
        row_seeds = spec.pop("seeds", None)
        if row_seeds is not None and (not isinstance(row_seeds, list) or not row_seeds
                                      or not all(isinstance(x, int) for x in row_seeds)):
            raise ConfigError(f"{where}: seeds: a list of whole numbers, got {row_seeds!r}")
        rows.append(Row(str(label), _config_fields(spec, where), s1, tuple(row_seeds) if row_seeds else None))
    if not rows:
        raise ConfigError(f"{path}: rows: a table's recipe has at least one row")
    for key in ("notes", "reference"):
        value = data.get(key)
        if value is not None and not (folder / str(value)).is_file() and value != "stage1":
            raise ConfigError(f"{path}: {key}: no such file {folder / str(value)}")
    recipe = Recipe(path, folder, experiment=experiment, description=str(data.get("description", "")),
                    notebook=str(data.get("notebook", STAGE2_NOTEBOOK)), stage1=stage1, base=base,
                    seeds=tuple(seeds), rows=tuple(rows), notes=data.get("notes"), reference=data.get("reference"),
                    after=tuple(data.get("after") or ()), outputs=tuple(data.get("outputs") or ()),
                    render=tuple(data.get("render") or ()))
    from workbench.experiments.execute import repo_root

    for notebook in recipe.render:
        if not (repo_root() / notebook).is_file():
            raise ConfigError(f"{path}: render: no notebook {notebook} (relative to the repository root)")
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Every config the recipe makes is valid (:func:`~workbench.config.from_params`), each point once.

    Raises:
        ConfigError: naming the recipe, the stage 1 or row, and the field.
    """
    for name, s in recipe.stage1.items():
        try:
            s.cfg()
        except ConfigError as err:
            raise ConfigError(f"{recipe.path}: stage1.{name}.config: {err}") from None
    names = set()
    for point in recipe.points():
        try:
            point.cfg()
        except ConfigError as err:
            raise ConfigError(f"{recipe.path}: rows.{point.row} (on base): {err}") from None
        if point.name in names:
            raise ConfigError(f"{recipe.path}: rows.{point.row}: the same runs as another row")
        names.add(point.name)


def find_recipes(root: str | os.PathLike = "results") -> list[Path]:
    """Every ``recipe.yaml`` under ``root``, sorted."""
    return sorted(Path(root).rglob(RECIPE_FILE), key=lambda p: p.parent.parts)


def only_rows(recipe: Recipe, rows: Sequence[str]) -> Recipe:
    """The recipe with only ``rows`` (labels of its rows).

    Raises:
        ConfigError: a label that is no row of the recipe (with the closest one).
    """
    from dataclasses import replace as replace_fields

    from workbench.config import did_you_mean

    labels = [r.label for r in recipe.rows]
    for label in rows:
        if label not in labels:
            raise ConfigError(f"{recipe.path}: no row {label!r}{did_you_mean(label, labels)}")
    return replace_fields(recipe, rows=tuple(r for r in recipe.rows if r.label in rows), partial=True)


def only_points(recipe: Recipe, keep) -> Recipe:
    """The recipe with each row's seeds cut to those where ``keep(row label, seed)`` holds (a row left with
    none is left out), marked partial."""
    rows = []
    for row in recipe.rows:
        mine = tuple(s for s in (row.seeds if row.seeds is not None else recipe.seeds) if keep(row.label, s))
        if mine:
            rows.append(replace(row, seeds=mine))
    return replace(recipe, rows=tuple(rows), partial=True)


def only_seeds(recipe: Recipe, seeds: Sequence[int]) -> Recipe:
    """The recipe with each row's seeds cut to ``seeds`` (a row left with none is left out).

    Raises:
        ConfigError: a seed that no row runs.
    """
    wanted = set(seeds)
    every = {p.seed for p in recipe.points()}
    if wanted - every:
        raise ConfigError(f"{recipe.path}: no row runs seed(s) {sorted(wanted - every)} (its seeds: {sorted(every)})")
    cut = only_points(recipe, lambda label, seed: seed in wanted)
    return replace(cut, seeds=tuple(s for s in recipe.seeds if s in wanted) or recipe.seeds)
