"""The zoo: stage-1 checkpoints that outlive a machine, each listed in ``zoo/manifest.json``.

A results table is paired by its stage 1: every stage-2 row starts from one checkpoint, and a stage 1
trained again elsewhere is another model. The zoo keeps the ones the committed tables start from, so
that anyone can pair new runs with them. An entry holds the weights only (model and agents, the
per-epoch history; no optimizer state), and the manifest says what made it::

    {"name": "mobilenet_v2-cuhk03-cpu-seed0",
     "file": "mobilenet_v2-cuhk03-cpu-seed0.pt", "sha256": "…", "bytes": 13617651,
     "key": "187934429f37",            # workbench.config.computation_key of its config
     "config": {…},                    # the run's config.json (paths as ${WORKBENCH_SHARED}/…)
     "recipe": "python -m workbench pretrain --preset cpu --seed 0",
     "commit": "9f7ad03…", "seed": 0, "epochs": 12, "threads": 1,
     "metrics": {"rank1": …, "mAP": …, …},   # its direct transfer to the target's test split
     "seconds": …}                     # training time, the sum of its epochs

An entry too large for the repository (a ``paper``-preset ResNet-50) may give ``url`` instead of a
committed file: put the downloaded file at ``zoo/<file>`` and the sha256 check applies as to any other.

Loading always checks the sha256 (:meth:`Zoo.path`). ``workbench reproduce`` installs an entry as a
finished stage-1 run folder (:meth:`Zoo.install`), so everything that reads stage-1 runs (records,
``report``, ``diagnose``) reads it as one.

Command line: ``python -m workbench zoo list | verify | add RUN_DIR --name NAME``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import CheckpointError, ConfigError, MissingFileError
from workbench.paths import checkout_root
from workbench.runs.files import atomic_write_bytes, load_checkpoint, write_json

#: what a zoo file keeps of a run's checkpoint
KEPT = ("stage", "epoch", "model", "model_config", "num_agents", "history")


def zoo_root() -> Path:
    """``WORKBENCH_ZOO``, else ``zoo/`` in the checkout (the committed one)."""
    env = os.environ.get("WORKBENCH_ZOO")
    if env:
        return Path(env).expanduser()
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "zoo"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ZooEntry:
    """One checkpoint of the manifest (see the module docstring for the fields)."""

    name: str
    file: str
    sha256: str
    bytes: int
    key: str
    config: dict
    recipe: str = ""
    commit: str | None = None
    seed: int | None = None
    epochs: int | None = None
    threads: int | None = None
    metrics: dict = field(default_factory=dict)
    seconds: float | None = None
    url: str | None = None
    note: str = ""

    @classmethod
    def from_dict(cls, values: dict, where: str) -> "ZooEntry":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown zoo entry field(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("name", "file", "sha256", "bytes", "key", "config") if k not in values]
        if missing:
            raise ConfigError(f"{where}: zoo entry {values.get('name', '?')!r} lacks {missing}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if getattr(self, k) not in (None, "")}


class Zoo:
    """The manifest and the files beside it.

    Args:
        root: the zoo folder (default :func:`zoo_root`).
    """

    MANIFEST = "manifest.json"

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else zoo_root()

    @property
    def manifest_path(self) -> Path:
        return self.root / self.MANIFEST

    def entries(self) -> dict[str, ZooEntry]:
        """``{name: entry}`` in manifest order ({} when there is no manifest)."""
        if not self.manifest_path.is_file():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text())
        except ValueError as err:
            raise ConfigError(f"{self.manifest_path} is not valid JSON: {err}") from None
        out = {}
        for i, values in enumerate(data.get("entries", [])):
            entry = ZooEntry.from_dict(values, f"{self.manifest_path} entry {i}")
            out[entry.name] = entry
        return out

    def entry(self, name: str) -> ZooEntry:
        entries = self.entries()
        if name not in entries:
            import difflib

            close = difflib.get_close_matches(name, entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; entries: {', '.join(entries) or 'none'}"
            raise MissingFileError(f"no zoo entry {name!r} in {self.manifest_path}{hint}")
        return entries[name]

    def path(self, name: str) -> Path:
        """The entry's file, after checking its sha256.

        Raises:
            MissingFileError: no such entry, or its file is absent (the message gives its url if any).
            CheckpointError: the file's sha256 is not the manifest's.
        """
        entry = self.entry(name)
        path = self.root / entry.file
        if not path.is_file():
            where = f"; download it from {entry.url} to {path}" if entry.url else ""
            raise MissingFileError(f"zoo entry {name!r}: {path} is missing{where}")
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise CheckpointError(f"zoo entry {name!r}: {path} has sha256 {digest[:16]}…, the manifest says "
                                  f"{entry.sha256[:16]}…: the file is damaged or not this entry's")
        return path

    def find(self, key: str) -> ZooEntry | None:
        """The entry made with this :func:`~workbench.config.computation_key`, if any."""
        return next((e for e in self.entries().values() if e.key == key), None)

    # -- writing
    def _write_manifest(self, entries: dict[str, ZooEntry]) -> None:
        write_json(self.manifest_path, {
            "about": "stage-1 checkpoints the committed tables start from (workbench.runs.zoo); loading checks "
                     "each file's sha256",
            "entries": [e.to_dict() for e in entries.values()]})

    def add(self, run_dir: str | os.PathLike, name: str, *, recipe: str = "", note: str = "",
            replace: bool = False) -> ZooEntry:
        """Add a finished stage-1 run: its weights to ``<name>.pt``, its record to the manifest.

        Raises:
            ConfigError: the name is taken (without ``replace``), or the run is not a finished stage 1.
        """
        import io

        import torch

        from workbench.config import computation_key
        from workbench.runs.folder import RunFolder

        folder = RunFolder(run_dir)
        if not folder.is_finished or not folder.has_checkpoint:
            raise ConfigError(f"{folder.path}: not a finished run with a checkpoint (state {folder.state})")
        record, metrics = folder.record(), folder.metrics()
        if record.stage != "pretrain":
            raise ConfigError(f"{folder.path}: a {record.stage or 'unknown'} run; the zoo keeps stage-1 runs")
        entries = self.entries()
        if name in entries and not replace:
            raise ConfigError(f"zoo entry {name!r} exists; choose another name or replace it")
        state = folder.checkpoint()
        buf = io.BytesIO()
        torch.save({k: state[k] for k in KEPT if k in state}, buf)
        file = f"{name}.pt"
        atomic_write_bytes(self.root / file, buf.getvalue())
        cfg = folder.config()
        history = folder.history()
        seconds = sum(float(r.get("seconds") or 0.0) for r in history)
        keep = ("rank1", "rank5", "rank10", "mAP", "mAP_devkit", "mINP", "num_query", "num_valid")
        entry = ZooEntry(name=name, file=file, sha256=sha256_of(self.root / file),
                         bytes=(self.root / file).stat().st_size, key=computation_key(cfg, "pretrain"),
                         config=cfg.to_dict(), recipe=recipe, commit=record.commit, seed=record.seed,
                         epochs=record.epochs_done, threads=record.threads,
                         metrics={k: metrics[k] for k in keep if k in metrics}, seconds=round(seconds, 1),
                         note=note)
        entries[name] = entry
        self._write_manifest(entries)
        return entry

    def install(self, name: str, run_dir: str | os.PathLike) -> Path:
        """Make ``run_dir`` a finished stage-1 run folder holding the entry (checked by sha256): its
        checkpoint, ``config.json``, ``history.csv``, ``metrics.json`` and ``run.json``. A folder that
        already holds this entry is left as it is.

        Returns:
            The run folder's checkpoint.
        """
        from workbench.config import Config
        from workbench.runs.folder import RunFolder, RunRecord, epoch_summary

        entry = self.entry(name)
        folder = RunFolder(run_dir)
        if folder.is_finished and folder.has_checkpoint and sha256_of(folder.checkpoint_path) == entry.sha256:
            return folder.checkpoint_path
        source = self.path(name)
        state = load_checkpoint(source)
        with folder.lock():
            shutil.copyfile(source, folder.path / f".{folder.CHECKPOINT}.zoo.tmp")
            os.replace(folder.path / f".{folder.CHECKPOINT}.zoo.tmp", folder.checkpoint_path)
            folder.write_config(Config.from_dict(entry.config))
            history = list(state.get("history") or [])
            folder.write_logs(history, [])
            record = RunRecord(stage="pretrain", state="finished", seed=entry.seed, commit=entry.commit,
                               threads=entry.threads)
            record.__dict__.update(epoch_summary(history))
            folder.write_record(record)
            folder.write_metrics({**entry.metrics, "stage": "pretrain", "epochs": entry.epochs, "seed": entry.seed,
                                  "commit": entry.commit, "zoo": entry.name, "sha256": entry.sha256})
        return folder.checkpoint_path

    def verify(self) -> list[tuple[str, str]]:
        """``[(name, "ok" | what is wrong)]`` for every entry."""
        out = []
        for name in self.entries():
            try:
                self.path(name)
                out.append((name, "ok"))
            except (MissingFileError, CheckpointError) as err:
                out.append((name, str(err)))
        return out


def describe(entry: ZooEntry) -> dict[str, Any]:
    """One line of ``zoo list``."""
    m = entry.metrics
    return {"name": entry.name, "MB": round(entry.bytes / 1e6, 1), "key": entry.key, "seed": entry.seed,
            "epochs": entry.epochs, "rank1": round(100 * m["rank1"], 1) if "rank1" in m else None,
            "mAP": round(100 * m["mAP"], 1) if "mAP" in m else None, "commit": (entry.commit or "")[:12],
            "sha256": entry.sha256[:12]}
