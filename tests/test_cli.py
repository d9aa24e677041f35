"""The command line: useful --help, one clear error (exit code 2) for bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest

from workbench.cli import build_parser, main

COMMANDS = ["demo", "pretrain", "train", "evaluate", "extract", "data"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_each_command(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m workbench {command}" in text
    if command != "data":
        assert "--preset" in text and "--set FIELD=VALUE" in text


def test_module_entry_point_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def test_missing_dataset_root_names_the_folder_and_layout(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-market"
    err = _error(["evaluate", "--preset", "smoke", "--dataset", "market1501", "--root", str(missing)], capsys)
    assert str(missing) in err and "bounding_box_train" in err


def test_train_with_missing_target_root(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    err = _error(["train", "--preset", "smoke", "--no-pretraining", "--target", "market1501", "--target-root",
                  str(missing), "--run-dir", str(tmp_path / "run")], capsys)
    assert str(missing) in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_without_init_checkpoint_says_what_to_pass(tmp_path, capsys) -> None:
    err = _error(["train", "--preset", "smoke", "--run-dir", str(tmp_path / "run")], capsys)
    assert "--init" in err


def test_missing_weights_file(tmp_path, capsys) -> None:
    err = _error(["evaluate", "--preset", "smoke", "--dataset", "synthetic", "--pretrained",
                  str(tmp_path / "w.pth")], capsys)
    assert "w.pth" in err


@pytest.mark.parametrize("override, needle", [("no_such_field=1", "no_such_field"), ("epochs=abc", "epochs"),
                                              ("image_size=128", "image_size")])
def test_bad_set_override(override: str, needle: str, tmp_path, capsys) -> None:
    err = _error(["pretrain", "--preset", "smoke", "--set", override, "--run-dir", str(tmp_path / "r")], capsys)
    assert needle in err


def test_unknown_preset_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--preset", "nope"])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_evaluate_names_a_missing_checkpoint_first_in_one_line(tmp_path, capsys) -> None:
    missing = tmp_path / "nonexistent.pt"
    err = _error(["evaluate", "--checkpoint", str(missing)], capsys)  # no --dataset either: the checkpoint first
    assert err.strip() == f"error: no checkpoint at {missing}"
    err = _error(["evaluate", "--preset", "smoke"], capsys)
    assert err.count("\n") == 1 and "--dataset NAME" in err and "market1501" in err
    err = _error(["extract", "--dataset", "synthetic"], capsys)
    assert "--out FILE" in err


def test_pretrain_epochs_are_stage_1s_epochs(monkeypatch, capsys) -> None:
    """`pretrain --epochs 4` used to set stage 2's epochs silently (stage 1 kept the preset's)."""
    import workbench.engine as engine

    class Started(Exception):
        pass

    seen = {}

    def pretrain(cfg, run_dir, resume=False):  # stop where training would start
        seen["cfg"] = cfg
        raise Started

    monkeypatch.setattr(engine, "pretrain", pretrain)
    with pytest.raises(Started):
        main(["pretrain", "--preset", "smoke", "--epochs", "4"])
    assert seen["cfg"].train.pretrain_epochs == 4 and seen["cfg"].train.epochs == 2  # smoke's stage 2 untouched
    err = _error(["pretrain", "--preset", "smoke", "--epochs", "4", "--pretrain-epochs", "3"], capsys)
    assert "--epochs 4 and --pretrain-epochs 3" in err


def test_an_argparse_error_is_two_lines_not_the_usage_block(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--dataset", "synthetic", "--batch-size", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["python -m workbench evaluate: error: argument --batch-size: invalid int value: 'many'",
                                "(python -m workbench evaluate --help lists the options)"]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--preset", "smoke", "--set", "lamda_cml=0"],
                                  ["pretrain", "--preset", "smoke", "--set", "epochs=abc"],
                                  ["evaluate", "--checkpoint", "/nonexistent.pt"], ["evaluate", "--dataset", "synthetic",
                                                                                    "--bogus"]])
def test_help_and_argument_errors_answer_without_loading_torch(argv) -> None:
    """--help and bad arguments answer in a fraction of a second: torch (1.5 s to import on an idle
    machine, 5 s under load) is not loaded before the input is checked."""
    code = ("import sys, json\nfrom workbench.cli import main\ntry:\n    main(json.loads(sys.argv[1]))\n"
            "except SystemExit:\n    pass\nprint('torch loaded' if 'torch' in sys.modules else 'no torch')")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "no torch", (out.stdout[-500:], out.stderr[-2000:])


def test_public_api_resolves_lazily() -> None:
    code = ("import sys, workbench as wb; assert 'torch' not in sys.modules; "
            "[getattr(wb, n) for n in wb.__all__]; print(len(wb.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 30


def test_cpu_preset_without_the_shared_weights_is_an_error_naming_the_file(tmp_path, monkeypatch) -> None:
    from workbench.config import get_preset
    from workbench.builders import build_model
    from workbench.models.backbones import WeightsError

    monkeypatch.setenv("WORKBENCH_SHARED", str(tmp_path))  # a shared folder without weights/
    cfg = get_preset("cpu")  # building the preset reads no file system
    with pytest.raises(WeightsError) as info:
        build_model(cfg.model, num_agents=3)
    message = str(info.value)
    assert str(tmp_path / "weights" / "mobilenet_v2_imagenet.pth") in message and "--pretrained none" in message
    build_model(cfg.model.__class__(**{**cfg.model.__dict__, "pretrained": None}), num_agents=3)  # the way round


def test_a_bug_keeps_its_traceback_and_user_errors_show_one_with_verbose(monkeypatch, capsys) -> None:
    import workbench.cli as cli
    from workbench.errors import ConfigError

    def bug(args):
        raise ValueError("an internal bug, not bad input")

    parser = build_parser()
    args = parser.parse_args(["data", "info", "--dataset", "market1501"])
    monkeypatch.setattr(args, "func", bug)
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    with pytest.raises(ValueError, match="internal bug"):
        cli.main([])

    def user_error(args):
        raise ConfigError("lr = 'abc': not a number")

    monkeypatch.setattr(args, "func", user_error)
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "error: lr = 'abc': not a number\n"
    args.verbose = True
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: lr = 'abc': not a number")


def test_diagnose_refuses_a_folder_that_is_not_a_finished_stage2_run(tmp_path, capsys) -> None:
    from workbench.cli import main

    assert main(["diagnose", str(tmp_path)]) == 2
    assert "not a finished stage-2 run folder" in capsys.readouterr().err


def test_evaluate_with_amp_runs_bf16_channels_last_and_says_its_threads(tmp_path, monkeypatch, capsys, caplog) -> None:
    import json
    import logging

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    import torch

    out = tmp_path / "m.json"
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="workbench.threads"):
            assert main(["evaluate", "--preset", "smoke", "--dataset", "synthetic", "--pretrained", "none", "--amp",
                         "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads(out.read_text())
    assert 0 <= metrics["mAP"] <= 1 and metrics["num_query"] > 0
    assert "CPU threads: 1 thread (config" in caplog.text


def test_the_tensorboard_line_names_the_venvs_tensorboard_when_it_is_not_on_path(tmp_path, monkeypatch, capsys) -> None:
    from workbench.cli.common import print_tensorboard, tensorboard_command

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "tensorboard").write_text("#!/bin/sh\n")
    (venv_bin / "tensorboard").chmod(0o755)
    run = tmp_path / "runs" / "20260101-demo"
    (run / "mar" / "tensorboard").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    assert tensorboard_command(run) == ".venv/bin/tensorboard --logdir runs/20260101-demo"
    print_tensorboard(run)
    assert capsys.readouterr().out.startswith("curves: .venv/bin/tensorboard --logdir runs/20260101-demo")
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated
    assert tensorboard_command(run) == "tensorboard --logdir runs/20260101-demo"
    print_tensorboard(tmp_path / "no-events")
    assert capsys.readouterr().out == ""  # --no-tensorboard: no line


def test_the_demo_says_what_one_run_is_worth() -> None:
    """make demo's last lines: the queries it is scored on, and over the committed seeds what stage 2 adds."""
    from workbench.cli.training import _demo_noise
    from workbench.config import get_preset

    text = _demo_noise(get_preset("demo"), {"num_valid": 55})
    assert "55 queries, so one query is 1.8 points of rank-1" in text
    assert "Over 5 seeds (results/demo/seeds.csv)" in text and "more than 0 at" in text
    assert "Over" not in _demo_noise(get_preset("smoke"), {"num_valid": 9})  # the seeds are the demo's
