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
    l = cfg.settings
    assert (l.lambda_cml, l.lambda_ref, l.beta, cfg.model.scale, l.mining_ratio, l.margin) == (2e-4, 50.0, 0.2, 30.0, 0.005, 1.0)


def test_from_params_flat_dotted_and_strings() -> None:
    cfg = from_params({"preset": "smoke", "backbone": "seresnet50", "stages": "layer1+layer3+layer4",
                       "image_size": "96,48", "use_cml": "false", "embed_dim": "none", "settings.lambda_cml": 0,
                       "milestones": [3, 5], "lr": "0.1"})
    assert cfg.preset == "smoke"
    assert cfg.model.backbone == "seresnet50" and cfg.model.stages == ("layer1", "layer3", "layer4")
    assert cfg.data.image_size == (96, 48) and cfg.settings.use_cml is False and cfg.model.embed_dim is None
    assert cfg.settings.lambda_cml == 0.0 and cfg.train.milestones == (3, 5) and cfg.train.lr == 0.1
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


def test_a_setting_of_another_method_is_refused_by_name() -> None:
    cfg = from_params({"preset": "smoke", "method": "cluster_contrast", "cc_eps": 0.5})
    assert type(cfg.settings).__name__ == "ClusterSettings" and cfg.settings.cc_eps == 0.5
    assert "lambda_cml" not in cfg.flat() and "cc_eps" in cfg.flat()
    with pytest.raises(ValueError, match="cc_eps is a setting of method cluster_contrast, cap, soft_cluster, and "
                                         "this run's method is 'mar': set method=cluster_contrast"):
        from_params({"preset": "smoke", "cc_eps": 0.5})
    with pytest.raises(ValueError, match="use_cml is a setting of method mar"):
        from_params({"preset": "smoke", "method": "oracle", "use_cml": False})
    with pytest.raises(ValueError, match="method = 'oracl': unknown; did you mean 'oracle'"):
        from_params({"method": "oracl"})
    with pytest.raises(ValueError, match="n_target = 10 must be a multiple of cc_instances = 4"):
        from_params({"preset": "smoke", "method": "soft_cluster", "n_target": 10})


def test_switching_method_keeps_the_presets_settings_of_each_method() -> None:
    smoke = from_params({"preset": "smoke"})
    assert smoke.settings.mining_ratio == 0.05  # the smoke preset's MAR setting
    back = from_params({"method": "mar"}, base=from_params({"method": "oracle"}, base=smoke))
    assert back.settings.mining_ratio == 0.05 and back == smoke


def test_every_field_carries_its_facts() -> None:
    """Ranges, stage and whether a field computes live beside the field, for the fixed groups and every method."""
    from dataclasses import fields

    from workbench.config import RUN_ONLY_FIELDS, _GROUPS, methods, stage2_fields

    for cls in [*_GROUPS.values(), *(m.settings for m in methods().values())]:
        for f in fields(cls):
            assert set(f.metadata) >= {"range", "stage", "computes"}, f"{cls.__name__}.{f.name}"
    assert {"threads", "progress", "device", "workers"} <= RUN_ONLY_FIELDS and "lr" not in RUN_ONLY_FIELDS
    assert {"epochs", "method", "use_cml", "cc_eps", "cc_label_weight"} <= stage2_fields()
    assert not {"pretrain_epochs", "seed", "scale"} & stage2_fields()
    with pytest.raises(ValueError, match=r"cc_label_weight = 1.5 is out of range: it must lie in \[0, 1\]"):
        from_params({"method": "soft_cluster", "cc_label_weight": 1.5})


def test_the_zoo_stage_1_key_of_the_cpu_preset_is_stable() -> None:
    """The zoo finds the cpu preset's stage 1 by this key: a change of the config that changes it must be
    deliberate (a new COMPUTE_VERSION or schema), and the manifest's key follows it."""
    from workbench.config import computation_key

    assert computation_key(get_preset("cpu")) == "2676ff9afbf8"


def test_an_older_config_json_with_every_methods_fields_still_loads() -> None:
    old = {"data": get_preset("cpu").to_dict()["data"], "model": {k: v for k, v in get_preset("cpu").to_dict()["model"].items() if k != "scale"},
           "loss": {"scale": 30.0, "margin": 1.0, "mining_ratio": 0.005, "lambda_cml": 0.0, "cc_eps": 0.5,
                    "cc_label_weight": 0.25},
           "train": {**{k: v for k, v in get_preset("cpu").to_dict()["train"].items()}, "method": "cluster_contrast",
                     "cc_instances": 4, "grad_terms_every": 0}, "preset": "cpu"}
    cfg = Config.from_dict(old)
    assert cfg.train.method == "cluster_contrast" and cfg.settings.cc_eps == 0.5 and cfg.model.scale == 30.0
