"""Config dataclasses, presets and from_params (the papermill parameters cell)."""
from __future__ import annotations

import json

import pytest

from workbench.config import PRESETS, Config, from_params, get_preset, load_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str, tmp_path) -> None:
    cfg = get_preset(name)
    (tmp_path / "config.json").write_text(cfg.to_json())
    back = load_config(tmp_path / "config.json")
    assert back == cfg
    assert json.loads(cfg.to_json())["preset"] == name


def test_paper_preset_matches_design() -> None:
    cfg = get_preset("paper")
    assert cfg.model.backbone == "resnet50" and cfg.model.stages == ("layer1", "layer3", "layer4")
    assert cfg.model.embed_dim == 2048 and cfg.data.image_size == (384, 128) and cfg.data.pad == 7
    t = cfg.train
    assert (t.n_target, t.n_reference, t.epochs, t.milestones, t.lr, t.weight_decay) == (184, 184, 20, (12, 17), 2e-4, 0.025)
    assert (t.pretrain_epochs, t.pretrain_batch_size, t.pretrain_lr) == (60, 256, 1e-3)
    l = cfg.loss
    assert (l.lambda_cml, l.lambda_ref, l.beta, l.scale, l.mining_ratio, l.margin) == (2e-4, 50.0, 0.2, 30.0, 0.005, 1.0)


def test_from_params_flat_dotted_and_strings() -> None:
    cfg = from_params({"preset": "smoke", "backbone": "seresnet50", "stages": "layer1+layer3+layer4",
                       "image_size": "96,48", "use_cml": "false", "embed_dim": "none", "loss.lambda_cml": 0,
                       "milestones": [3, 5], "lr": "0.1"})
    assert cfg.preset == "smoke"
    assert cfg.model.backbone == "seresnet50" and cfg.model.stages == ("layer1", "layer3", "layer4")
    assert cfg.data.image_size == (96, 48) and cfg.loss.use_cml is False and cfg.model.embed_dim is None
    assert cfg.loss.lambda_cml == 0.0 and cfg.train.milestones == (3, 5) and cfg.train.lr == 0.1
    assert from_params({}, base=cfg) == cfg


def test_from_params_errors() -> None:
    with pytest.raises(ValueError, match="unknown config field 'learning_rate'"):
        from_params({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        from_params({"preset": "fast"})
    with pytest.raises(ValueError, match="image_size must be"):
        from_params({"image_size": "128"})
    with pytest.raises(ValueError, match="use_cml must be a boolean"):
        from_params({"use_cml": "maybe"})
    with pytest.raises(ValueError, match="epochs must be an integer"):
        from_params({"epochs": 2.5})
    with pytest.raises(ValueError, match="unknown config field 'model.lr'"):
        from_params({"model.lr": 0.1})


def test_flat_view_has_every_field_once() -> None:
    flat = get_preset("demo").flat()
    assert flat["preset"] == "demo" and "lambda_cml" in flat and "image_size" in flat
    assert from_params(flat) == get_preset("demo")
    assert isinstance(Config.from_dict(get_preset("cpu").to_dict()), Config)
