"""Stage-2 methods as plug-ins: the registry, the supervised upper bound (``oracle``), a method written in one
file outside the package, and a run that says its method where people look (log, run.json, report)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from workbench.config import from_params, method_of, methods, register_method, setting
from workbench.errors import ConfigError
from workbench.runs import RunFolder

BASE = {"preset": "smoke", "tensorboard": False}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, Path]:
    """A smoke stage 1 and the folder of its synthetic data: ``(checkpoint, WORKBENCH_DATA)``."""
    from workbench.engine import pretrain

    data = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_DATA", str(data))
    try:
        yield pretrain(from_params(BASE), tmp_path_factory.mktemp("s1") / "pretrain").checkpoint, data
    finally:
        mp.undo()


@pytest.fixture
def stage1(smoke, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_DATA", str(smoke[1]))
    return smoke[0]


def test_the_registry_holds_the_four_methods_each_in_its_own_module() -> None:
    registry = methods()
    assert {"mar", "cluster_contrast", "soft_cluster", "oracle"} <= set(registry)
    for name, method in registry.items():
        assert method.trainer.method == name and method.trainer.__module__ == f"workbench.methods.{name}"
        assert method.settings.__module__.startswith("workbench.methods.")
    assert method_of("oracle").uses_labels and not method_of("mar").uses_labels


def test_the_engine_knows_no_method_by_name() -> None:
    """No code of workbench/engine imports workbench.methods or names a stage-2 method, its trainer or its
    loss (docstrings may mention them; ``"mar"`` is stage 2's folder name)."""
    import ast

    engine = Path(__file__).resolve().parents[1] / "workbench" / "engine"
    forbidden = ("workbench.methods", "cluster_contrast", "soft_cluster", "oracle", "MARTrainer", "MARLoss",
                 "ClusterContrastTrainer")
    for path in engine.glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            words = []
            if isinstance(node, ast.ImportFrom):
                words = [node.module or "", *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                words = [a.name for a in node.names]
            elif isinstance(node, ast.Name):
                words = [node.id]
            elif isinstance(node, ast.Attribute):
                words = [node.attr]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = [node.value]
            bad = [w for w in words for f in forbidden if f in w]
            assert not bad, f"{path.name}:{getattr(node, 'lineno', '?')} names {bad}"


def test_the_oracle_trains_on_the_true_identities(stage1, tmp_path, caplog) -> None:
    from workbench.engine import train_mar

    cfg = from_params(BASE | {"method": "oracle", "epochs": 1, "optimizer": "adam", "lr": 3.5e-4})
    with caplog.at_level(logging.INFO, logger="workbench"):
        result = train_mar(cfg, tmp_path / "oracle", init_checkpoint=stage1)
    row = result.history[0]
    assert row["purity"] == 1.0 and row["pair_precision"] == 1.0 and row["n_outliers"] == 0
    folder = RunFolder(result.run_dir)
    assert row["n_clusters"] == len({s.pid for s in _target_train()})
    assert folder.record().method == "oracle" and result.metrics["method"] == "oracle"
    assert "oracle epoch 1/1" in caplog.text and "true identities" in caplog.text and "mar epoch" not in caplog.text


def _target_train():
    from workbench.builders import load_domains

    return load_domains(from_params(BASE).data)[0].train


def test_report_shows_the_method(stage1, tmp_path) -> None:
    from workbench.engine import train_mar
    from workbench.experiments.report import report

    cfg = from_params(BASE | {"method": "cluster_contrast", "epochs": 1, "cc_min_samples": 2, "cc_eps": 0.7})
    result = train_mar(cfg, tmp_path / "cc", init_checkpoint=stage1)
    assert "(Cluster-Contrast)" in report(result.run_dir)


# ----------------------------------------------------------------------------- a method in one file


@dataclass
class FrozenSettings:
    """A method that trains nothing: the smallest plug-in (its own settings, refused for other methods)."""

    frozen_note: str = setting("nothing moves", stage="stage2")


def _register_frozen():
    from workbench.engine.trainer import Trainer

    if "frozen_test" in methods():
        return methods()["frozen_test"].trainer

    @register_method("frozen_test", FrozenSettings, title="frozen (test)")
    class FrozenTrainer(Trainer):
        stage = "mar"

        def __init__(self, cfg, run_dir=None, *, init_checkpoint=None, **kw) -> None:
            from workbench.builders import build_model, init_from_checkpoint

            super().__init__(cfg, run_dir, **kw)
            self.record.start_checkpoint = str(init_checkpoint) if init_checkpoint else None
            self.net = build_model(cfg.model, self.num_agents, pretrained=False)
            if init_checkpoint is not None and not self.resuming:
                init_from_checkpoint(self.net, init_checkpoint)
            self.model = self._wrap(self.net)
            self._set_optimizer(cfg.train.lr, cfg.train.weight_decay, cfg.train.milestones, cfg.train.optimizer)

        @property
        def num_epochs(self) -> int:
            return self.cfg.train.epochs

        @property
        def steps_per_epoch(self) -> int:
            return 1

        def batches(self, epoch: int):
            return [torch.zeros(1)]

        def batch_images(self, batch) -> int:
            return 1

        def compute_losses(self, batch, epoch: int):
            loss = sum(p.sum() for p in self.net.parameters() if p.requires_grad) * 0.0
            return {"loss": loss}

    return FrozenTrainer


def test_a_method_is_one_file_registered_from_outside_the_package(stage1, monkeypatch, tmp_path) -> None:
    from workbench.cli import main

    _register_frozen()
    cfg = from_params(BASE | {"method": "frozen_test", "frozen_note": "still", "epochs": 1})
    assert cfg.settings.frozen_note == "still"
    with pytest.raises(ConfigError, match="frozen_note is a setting of method frozen_test"):
        from_params(BASE | {"frozen_note": "x"})
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--preset", "smoke", "--init", str(stage1), "--run-dir", str(tmp_path / "f"),
                     "--no-tensorboard", "--set", "method=frozen_test", "--set", "epochs=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    folder = RunFolder(tmp_path / "f")
    assert folder.is_finished and folder.record().method == "frozen_test"
    assert folder.config().settings.frozen_note == "nothing moves"


def test_the_setting_names_read_without_importing_the_methods_are_theirs() -> None:
    """The command line checks --set names against the methods' source (no torch); it must know them all."""
    from dataclasses import fields

    from workbench.config import declared_setting_names

    registered = {f.name for m in methods().values() if m.trainer.__module__.startswith("workbench.methods")
                  for f in fields(m.settings)}
    assert declared_setting_names() >= registered and "cc_label_weight" in declared_setting_names()
