"""results/<experiment>/ from sweep folders: run records, rows, paired statistics, figures, README, CLI."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from workbench import experiments as ex
from workbench.cli import main
from workbench.config import get_preset
from workbench.experiments.records import label_rows, run_records
from workbench.experiments.stats import experiment_curves, t_interval
from workbench.experiments.committed import committed_curves

REPO = Path(__file__).resolve().parents[1]


def _point(sweep: Path, name: str, *, seed: int, mAP: float, stage1: Path | None, epochs: int = 2,
           lr: float = 2e-4, weight_decay: float = 5e-4, pretrained: str | None = "imagenet.pth",
           precision: float = 0.25, milestones: tuple[int, ...] | None = None, model: dict | None = None,
           **switches: bool) -> Path:
    """One finished point of a 03_train_mar sweep, as the notebook leaves it (fractions in the files)."""
    cfg = get_preset("cpu")
    cfg = replace(cfg, model=replace(cfg.model, pretrained=pretrained, **(model or {})),
                  settings=replace(cfg.settings, **switches),
                  train=replace(cfg.train, seed=seed, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                **({} if milestones is None else {"milestones": milestones})))
    folder = sweep / name
    (folder / "mar").mkdir(parents=True)
    (folder / "mar" / "config.json").write_text(cfg.to_json())
    metrics = {"rank1": mAP - 0.04, "rank5": mAP + 0.2, "rank10": mAP + 0.3, "mAP": mAP, "mAP_devkit": mAP - 0.03,
               "mINP": mAP - 0.06, "initial": {"rank1": 0.25, "mAP": 0.294}, "init_threshold": 0.40,
               "stage": "mar", "epochs": epochs, "seed": seed, "commit": "abc123"}
    (folder / "mar" / "metrics.json").write_text(json.dumps(metrics))
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "threshold": [0.4 - 0.05 * e for e in range(1, epochs + 1)],
                            "n_pos": [0.0] + [400.0] * (epochs - 1), "n_neg": [0.0] + [800.0] * (epochs - 1),
                            "pos_precision": [math.nan] + [precision] * (epochs - 1),
                            "mdl": [0.0] + [0.6] * (epochs - 1), "cml": 170.0, "al": 0.04, "rj": 1.05,
                            "rank1": [mAP - 0.05] * (epochs - 1) + [mAP - 0.04],
                            "mAP": [mAP - 0.01] * (epochs - 1) + [mAP]})
    history.to_csv(folder / "mar" / "history.csv", index=False)
    (folder / "mar" / "run.json").write_text(json.dumps({  # the engine's record
        "stage": "mar", "state": "finished", "seed": seed, "commit": "abc123", "epochs_done": epochs,
        "start_checkpoint": str(stage1) if stage1 else None, "init_threshold": 0.40, "final_threshold": 0.3,
        "final_pos_precision": precision, "seconds_per_epoch": 270.0, "images_per_s": 60.0}))
    (folder / "metrics.json").write_text(json.dumps({"rank1": mAP - 0.04, "mAP": mAP}))  # the notebook's summary
    (folder / "status.json").write_text(json.dumps({"state": "done", "name": name, "params": {"seed": seed, **switches},
                                                    "seconds": 600.0, "finished": "2026-12-01T18:00:00+00:00"}))
    return folder


def _stage1(tmp_path: Path) -> Path:
    """A stage-1 run folder as the sweeps' points name it; returns its checkpoint path."""
    stage1 = tmp_path / "stage1" / "pretrain"
    stage1.mkdir(parents=True)
    (stage1 / "checkpoint.pt").write_bytes(b"")
    (stage1 / "metrics.json").write_text(json.dumps({"rank1": 0.254, "mAP": 0.294, "commit": "s1commit", "epochs": 12}))
    (stage1 / "config.json").write_text(get_preset("cpu").to_json())
    return stage1 / "checkpoint.pt"


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    ckpt = _stage1(tmp_path)
    s = tmp_path / "sweep"
    full = dict(use_mdl=True, use_cml=True, use_al=True, use_rj=True)
    no_cml = dict(full, use_cml=False)
    _point(s, "full-0", seed=0, mAP=0.30, stage1=ckpt, **full)
    _point(s, "full-1", seed=1, mAP=0.32, stage1=ckpt, **full)
    _point(s, "nocml-0", seed=0, mAP=0.29, stage1=ckpt, **no_cml)
    _point(s, "nocml-1", seed=1, mAP=0.30, stage1=ckpt, **no_cml)
    _point(s, "lr-0", seed=0, mAP=0.28, stage1=ckpt, lr=8e-4, **full)
    _point(s, "nostage1-0", seed=0, mAP=0.10, stage1=None, **full)
    _point(s, "short-0", seed=0, mAP=0.50, stage1=ckpt, epochs=1, **full)  # another budget: not a table row
    (s / "failed").mkdir()
    (s / "failed" / "status.json").write_text(json.dumps({"state": "failed", "error": "boom", "params": {}}))
    return s


def test_t_interval_matches_the_textbook_value() -> None:
    mean, low, high = t_interval([-1.0, -2.0])
    assert mean == -1.5
    assert high - mean == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)  # t(0.975, 1) sd/√n
    assert math.isnan(t_interval([1.0])[1]) and math.isnan(t_interval([])[0])


def test_records_are_matched_on_what_a_run_did(sweep: Path) -> None:
    records, histories = run_records([sweep])
    assert len(records) == 7  # the failed point is left out
    rec = records.set_index("run")
    assert rec.loc["full-0", "commit"] == "abc123" and rec.loc["full-0", "stage1_commit"] == "s1commit"
    assert rec.loc["full-0", "stage1"] == True and rec.loc["nostage1-0", "stage1"] == False  # noqa: E712
    assert rec.loc["full-0", "init"] == "imagenet" and rec.loc["full-0", "stages"] == "layer4"
    assert rec.loc["full-0", "final_pos_precision"] == 0.25 and rec.loc["full-0", "final_n_pos"] == 400
    assert rec.loc["full-0", "wall_seconds"] == 600.0 and rec.loc["full-0", "start_mAP"] == 0.294
    # epoch 0 of every history is the start (stage 1's metrics)
    assert histories[histories.epoch == 0]["mAP"].tolist() == [0.294] * 7

    loss = label_rows(records, ex.EXPERIMENTS["loss_ablation"])
    assert loss[["row", "seed"]].values.tolist() == [["full", 0], ["full", 1], ["w/o CML", 0], ["w/o CML", 1]]
    pre = label_rows(records, ex.EXPERIMENTS["pretraining"])  # the full runs are also Table 1's first row
    assert pre["row"].tolist() == ["ImageNet + stage 1", "ImageNet + stage 1", "ImageNet, no stage 1"]


def test_paired_differences_and_the_paper_beside(sweep: Path) -> None:
    records, _ = run_records([sweep])
    exp = ex.EXPERIMENTS["loss_ablation"]
    summary = ex.seed_summary(label_rows(records, exp), exp)
    assert summary.loc["full", "mAP_mean"] == pytest.approx(31.0) and summary.loc["full", "runs"] == 2
    assert summary.loc["full", "mAP_std"] == pytest.approx(math.sqrt(2))
    assert summary.loc["w/o CML", "delta_mAP"] == pytest.approx(-1.5)
    assert summary.loc["w/o CML", "delta_mAP_high"] - summary.loc["w/o CML", "delta_mAP"] == pytest.approx(
        12.7062 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)
    assert summary.loc["w/o CML", "paper_mAP"] == 34.6
    assert summary.loc["w/o CML", "paper_delta_mAP"] == pytest.approx(34.6 - 39.361)
    assert summary.loc["w/o RAL", "runs"] == 0 and math.isnan(summary.loc["w/o RAL", "mAP_mean"])
    table = ex.summary_markdown(summary, exp)
    assert "| w/o CML | 2 | 29.4 | " in table and "-1.5 [" in table and "31.0 ± 1.4" in table  # 29.4: start mAP
    assert summary.loc["w/o CML", "start_mAP_mean"] == pytest.approx(29.4)


def test_curves_from_histories_and_one_at_a_time_runs(sweep: Path) -> None:
    records, histories = run_records([sweep])
    exp = ex.EXPERIMENTS["hyperparameters"]
    curves = experiment_curves(records, histories, exp)
    lr = curves["lr"]
    assert lr.index.tolist() == [2e-4, 8e-4]
    assert lr.loc[8e-4, "mAP"] == pytest.approx(28.0) and lr.loc[8e-4, "n"] == 1 and math.isnan(lr.loc[8e-4, "mAP_std"])
    # every seed present is averaged (Fig. 6 used to take seed 0 alone, with the std only at the default)
    assert lr.loc[2e-4, "mAP"] == pytest.approx(31.0) and lr.loc[2e-4, "mAP_std"] == pytest.approx(math.sqrt(2))
    assert lr.loc[2e-4, "n"] == 2
    epochs = curves["epochs"]  # the same function over the per-epoch evaluations
    assert epochs.index.tolist() == [0, 1, 2] and epochs.loc[2, "mAP"] == pytest.approx(31.0)
    assert epochs.loc[2, "n"] == 2 and list(epochs.columns) == list(lr.columns)



def test_results_command_writes_the_folder_and_notebooks_read_it(sweep: Path, tmp_path: Path, capsys) -> None:
    reference = tmp_path / "real.csv"
    reference.write_text("run,rank1,rank5,rank10,mAP,mAP_devkit,mINP,stage,epochs,seed,commit,init_threshold\n"
                         "direct transfer,0.06,0.16,0.24,0.08,0.06,0.04,none,0,,abc,\n"
                         "stage 1,0.25,0.46,0.57,0.29,0.26,0.23,pretrain,12,0,abc,\n")
    notes = tmp_path / "NOTES.md"
    notes.write_text("## Diagnosis\n\nwritten by hand")
    out = tmp_path / "results" / "loss_ablation"
    assert main(["results", "loss_ablation", str(sweep), "--out", str(out), "--reference", str(reference),
                 "--notes", str(notes)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert runs["row"].tolist() == ["full", "full", "w/o CML", "w/o CML"]
    for column in ("seed", "commit", "wall_seconds", "rank1", "mAP", "mAP_devkit", "mINP", "final_threshold",
                   "final_pos_precision", "lr", "weight_decay", "lambda_ref", "stage1_commit"):
        assert runs[column].notna().all(), column
    readme = (out / "README.md").read_text()
    assert "| direct transfer | 1 |  | 6.0 | 8.0 |" in readme and "written by hand" in readme
    assert "![Table 3: loss ablation](loss_ablation.png)" in readme and "commit abc123" in readme
    assert (out / "loss_ablation.png").stat().st_size > 10_000
    assert len(pd.read_csv(out / "histories.csv")) == 4 * 3  # epochs 0, 1, 2 of four runs
    diag = pd.read_csv(out / "diagnostics.csv", index_col=0)  # the last epoch, weighted as in L_MAR
    assert diag.loc["full", "λ2·β·L_RJ"] == pytest.approx(50 * 0.2 * 1.05)
    assert diag.loc["full", "λ1·L_CML"] == pytest.approx(2e-4 * 170.0) and diag.loc["full", "L_MDL"] == 0.6
    assert diag.loc["w/o CML", "true among mined + (%)"] == pytest.approx(25.0)
    assert "## What stage 2 did" in readme

    shown = ex.committed_results(out)
    assert shown is not None and len(shown.runs) == 4 and (shown.runs["state"] == "done").all()
    assert "data:image/png;base64," in shown._repr_markdown_()  # figures inline in a notebook
    assert ex.seed_table(shown.runs, "loss_ablation").loc["w/o CML", "delta_mAP"] == pytest.approx(-1.5)
    assert shown.experiment == "loss_ablation"  # from experiment.json: what notebooks 04-05 tabulate it as
    assert ex.committed_results(tmp_path / "nothing") is None and ex.committed_results(None) is None

    hp = tmp_path / "results" / "hyperparameters"
    assert main(["results", "hyperparameters", str(sweep), "--out", str(hp)]) == 0
    curves = committed_curves(ex.committed_results(hp))
    assert curves["lr"].index.tolist() == [2e-4, 8e-4] and "rank1" in curves["epochs"]
    assert (hp / "hyperparameters.png").is_file()
    # one pipeline: a committed folder regenerates from its own CSVs to the same tables
    for name, folder, source in (("loss_ablation", out, sweep), ("hyperparameters", hp, sweep)):
        before = {p.name: p.read_text() for p in folder.glob("*.csv")} | {"README.md": (folder / "README.md").read_text()}
        assert main(["results", name, str(folder), "--out", str(folder)] + (
            ["--reference", str(reference), "--notes", str(notes)] if name == "loss_ablation" else [])) == 0
        after = {p.name: p.read_text() for p in folder.glob("*.csv")} | {"README.md": (folder / "README.md").read_text()}
        assert after == before, f"{name}: regenerated from its CSVs, it differs"


def test_a_sweep_label_follows_its_parameters() -> None:
    df = pd.DataFrame({"use_mdl": [True, True], "use_cml": [True, False], "use_al": [True, True],
                       "use_rj": [True, True], "state": ["done", "done"], "rank1": [0.3, 0.2], "mAP": [0.3, 0.2],
                       "mAP_devkit": [0.3, 0.2], "mINP": [0.3, 0.2]})
    table = ex.seed_table(df, "loss_ablation")  # a notebook's own one-seed sweep
    assert table.loc["w/o CML", "delta_mAP"] == pytest.approx(-10.0) and math.isnan(table.loc["w/o CML", "delta_mAP_low"])


def test_unknown_experiment_and_missing_sweep_are_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["results", "table9", str(tmp_path), "--out", str(tmp_path / "o")])
    assert main(["results", "loss_ablation", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "sweep folder" in capsys.readouterr().err


def test_report_of_an_experiment_folder_is_its_seed_table_and_readme_keeps_it(sweep: Path, tmp_path: Path) -> None:
    from workbench.experiments.report import report, update_readme

    out = tmp_path / "results" / "loss_ablation"
    ex.write_experiment("loss_ablation", [sweep], out)
    table = report(out, footnote=False)
    assert table.startswith("|  | runs | start mAP | rank-1 |") and "| w/o CML | 2 |" in table
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report: results/loss_ablation -->\nold\n<!-- /report -->\n")
    assert update_readme(readme) == ["results/loss_ablation"] and table in readme.read_text()
    hp = tmp_path / "results" / "hyperparameters"
    ex.write_experiment("hyperparameters", [sweep], hp)
    assert "| lr | 0.0008 | 1 | 24.0 | 28.0 |" in report(hp, footnote=False)


def test_notes_quote_numbers_from_the_committed_files(sweep: Path, tmp_path: Path) -> None:
    from workbench.errors import ConfigError
    from workbench.experiments.summary import fill_numbers

    out = tmp_path / "loss_ablation"
    notes = tmp_path / "NOTES.md"
    notes.write_text("Without L_CML: {{ summary.csv: row=w/o CML; delta_mAP }} mAP; full at "
                     "{{summary.csv: row=full; mAP_mean}} (seed 1: {{ runs.csv: row=full; seed=1; mAP% }}).")
    ex.write_experiment("loss_ablation", [sweep], out, notes=notes)
    assert "Without L_CML: -1.5 mAP; full at 31.0 (seed 1: 32.0)." in (out / "README.md").read_text()
    with pytest.raises(ConfigError, match="no row of summary.csv matches"):
        fill_numbers("{{ summary.csv: row=w/o nothing; mAP_mean }}", out)
    with pytest.raises(ConfigError, match="has no column 'rank2'"):
        fill_numbers("{{ summary.csv: row=full; rank2 }}", out)


def test_small_numbers_keep_two_significant_digits(tmp_path: Path) -> None:
    from workbench.experiments.summary import fill_numbers

    (tmp_path / "d.csv").write_text("row,x\nfull,0.0342\nother,12.34\n")
    assert fill_numbers("{{ d.csv: row=full; x }} and {{ d.csv: row=other; x }}", tmp_path) == "0.034 and 12.3"


def test_rows_at_the_baselines_wall_clock_by_hand() -> None:
    from workbench.experiments.stats import at_budget
    from workbench.experiments.markdown import budget_markdown

    rows = pd.DataFrame({"row": ["MAR"] * 2 + ["CC"] * 2, "run": ["m0", "m1", "c0", "c1"], "seed": [0, 1, 0, 1]})

    def history(run, seed, seconds, maps):
        return pd.DataFrame({"run": run, "seed": seed, "epoch": range(len(maps) + 1),
                             "seconds": [math.nan] + [seconds] * len(maps), "rank1": [0.2] + maps,
                             "mAP": [0.24] + maps})

    histories = pd.concat([history("m0", 0, 300.0, [0.25, 0.26]), history("m1", 1, 320.0, [0.25, 0.27]),
                           history("c0", 0, 200.0, [0.30, 0.31, 0.32, 0.33, 0.34]),
                           history("c1", 1, 210.0, [0.29, 0.30, 0.31, 0.32, 0.33])])
    got = at_budget(rows, histories, "MAR")
    # budget: the median of MAR's totals (600, 640 s) = 620 s; c0 reaches epoch 3 (600 s), c1 epoch 2 (420 s)
    assert got.loc["MAR", "budget_s"] == pytest.approx(620.0)
    assert got.loc["MAR", "mAP_mean"] == pytest.approx(26.5) and got.loc["MAR", "epochs"] == 2
    assert got.loc["CC", "epochs"] == pytest.approx(2.5) and got.loc["CC", "seconds"] == pytest.approx(510.0)
    assert got.loc["CC", "mAP_mean"] == pytest.approx(31.0)
    assert got.loc["CC", "delta_mAP"] == pytest.approx(4.5)  # (32 − 26) and (30 − 27), paired by seed
    table = budget_markdown(got, "MAR")
    assert "| CC | 2.5 | 8.5 | " in table and "+4.5 [" in table
    # a row that cannot finish one epoch within the budget is shown at its start (epoch 0)
    slow = pd.concat([histories[histories["run"] != "c1"], history("c1", 1, 700.0, [0.5])])
    assert at_budget(rows, slow, "MAR").loc["CC", "epochs"] == pytest.approx(1.5)  # c0 epoch 3, c1 epoch 0


def test_rows_compared_at_equal_cost_keep_their_own_epochs() -> None:
    from workbench.experiments.catalog import EXPERIMENTS

    records = pd.DataFrame({"method": ["mar", "mar", "cluster_contrast", "cluster_contrast", "cluster_contrast"],
                            "epochs": [2, 2, 5, 5, 3], "seed": [0, 1, 0, 1, 2], "init": "imagenet", "stage1": True,
                            "run": list("abcde")})
    rows = label_rows(records, EXPERIMENTS["method_comparison"])  # same_budget: epochs alike within a row
    assert rows["run"].tolist() == ["a", "b", "c", "d"]
    assert label_rows(records, EXPERIMENTS["method_comparison"], epochs=2)["run"].tolist() == ["a", "b"]


def test_per_epoch_means_by_row() -> None:
    from workbench.experiments.stats import per_epoch

    rows = pd.DataFrame({"row": ["MAR", "MAR", "CC"], "run": ["m0", "m1", "c0"], "seed": [0, 1, 0]})
    histories = pd.DataFrame({"run": ["m0", "m0", "m1", "m1", "c0", "c0"], "epoch": [0, 1, 0, 1, 0, 1],
                              "seconds": [math.nan, 60.0, math.nan, 120.0, math.nan, 30.0],
                              "mAP": [0.2, 0.3, 0.2, 0.4, 0.2, 0.5], "pos_precision": [math.nan, 0.2, math.nan, 0.4,
                                                                                     math.nan, math.nan],
                              "pair_precision": [math.nan] * 5 + [0.7], "n_clusters": [math.nan] * 5 + [9.0]})
    got = per_epoch(rows, histories).set_index(["row", "epoch"])
    assert got.loc[("MAR", 1), "minutes"] == pytest.approx(1.5) and got.loc[("MAR", 1), "mAP"] == pytest.approx(0.35)
    assert got.loc[("MAR", 1), "precision"] == pytest.approx(0.3) and got.loc[("CC", 1), "precision"] == pytest.approx(0.7)
    assert got.loc[("CC", 1), "n_clusters"] == 9 and got.loc[("MAR", 1), "runs"] == 2
    assert list(got.index.get_level_values("row")[:2]) == ["MAR", "MAR"]  # the rows' order kept


def test_runs_are_read_at_an_epoch_of_their_history_by_hand() -> None:
    from workbench.experiments.records import records_at_epoch

    records = pd.DataFrame({"run": ["long", "short", "sparse"], "seed": [0, 0, 1], "epochs": [20, 10, 10],
                            "mAP": [0.28, 0.29, 0.30], "rank1": [0.24, 0.25, 0.26], "final_threshold": 0.3})
    histories = pd.DataFrame({"run": ["long"] * 3 + ["short"] * 2 + ["sparse"] * 2, "epoch": [0, 10, 20, 0, 10, 0, 9],
                              "mAP": [0.24, 0.271, 0.28, 0.24, 0.29, 0.24, 0.3], "rank1": [0.2, 0.23, 0.24, 0.2, 0.25,
                                                                                         0.2, 0.26],
                              "threshold": [0.4, 0.33, 0.3, 0.4, 0.31, 0.4, 0.3]})
    got, cut = records_at_epoch(records, histories, 10)
    # "sparse" was not evaluated at epoch 10: left out; "long" reads its epoch-10 evaluation
    assert got["run"].tolist() == ["long", "short"] and got["epochs"].tolist() == [10, 10]
    assert got["trained_epochs"].tolist() == [20, 10]
    assert got["mAP"].tolist() == pytest.approx([0.271, 0.29]) and got["final_threshold"].tolist() == [0.33, 0.31]
    assert cut["epoch"].max() == 10 and set(cut["run"]) == {"long", "short"}
    again, _ = records_at_epoch(got, histories, 10)  # a results folder's runs.csv read back: the same
    assert again["trained_epochs"].tolist() == [20, 10] and again["mAP"].tolist() == pytest.approx([0.271, 0.29])


def test_fusion_at_the_paper_schedule_keeps_only_runs_with_the_embedding(tmp_path: Path) -> None:
    """Issue 19, run 3: Table 2 with the 2048-d embedding after fusion; runs of the same combinations
    without it (the committed short-schedule rows) are not rows of it."""
    ckpt, s = _stage1(tmp_path), tmp_path / "sweep"
    full = dict(use_mdl=True, use_cml=True, use_al=True, use_rj=True)
    for seed in (0, 1):
        for stages, m in (("layer4", 0.30), ("layer1+layer3+layer4", 0.31 + 0.01 * seed)):
            for embed, shift in ((2048, 0.0), (None, -0.1)):
                _point(s, f"{stages}-{embed}-{seed}", seed=seed, mAP=m + shift, stage1=ckpt, epochs=10,
                       weight_decay=0.025, milestones=(12, 17),
                       model=dict(stages=tuple(stages.split("+")), embed_dim=embed), **full)
    out = tmp_path / "results"
    ex.write_experiment("paper_schedule_feature_fusion", [s], out)
    summary = pd.read_csv(out / "summary.csv", index_col="row")
    assert summary.loc["layer4", "runs"] == 2 and summary.loc["layer1+layer3+layer4", "mAP_mean"] == pytest.approx(31.5)
    assert summary.loc["layer1+layer3+layer4", "delta_mAP"] == pytest.approx(1.5)
    assert set(pd.read_csv(out / "runs.csv")["embed_dim"]) == {2048}
    assert summary.loc["layer1+layer3+layer4", "paper_mAP"] == pytest.approx(41.188)  # Table 2 (PAPER.md)


def test_loss_ablation_with_the_embedding_reads_only_embedding_runs(tmp_path: Path) -> None:
    """Issue 19: Table 3 on run 3's layer4 model with the embedding; the no-embedding ablation runs of
    the same schedule are not rows of it, and its full row pairs with the ablations by seed."""
    ckpt, s = _stage1(tmp_path), tmp_path / "sweep"
    rows = {"full": (dict(use_mdl=True, use_cml=True, use_al=True, use_rj=True), 0.36),
            "w/o CML": (dict(use_mdl=True, use_cml=False, use_al=True, use_rj=True), 0.35),
            "w/o RAL": (dict(use_mdl=True, use_cml=True, use_al=False, use_rj=False), 0.38)}
    for label, (switches, m) in rows.items():
        for embed, shift in ((2048, 0.0), (None, -0.1)):
            _point(s, f"{label}-{embed}".replace("/", "_"), seed=0, mAP=m + shift, stage1=ckpt, epochs=10,
                   weight_decay=0.025, milestones=(12, 17), model=dict(embed_dim=embed), **switches)
    out = tmp_path / "results"
    ex.write_experiment("paper_schedule_loss_ablation_embedding", [s], out)
    summary = pd.read_csv(out / "summary.csv", index_col="row")
    assert summary.loc["full", "runs"] == 1 and summary.loc["full", "mAP_mean"] == pytest.approx(36.0)
    assert summary.loc["w/o CML", "delta_mAP"] == pytest.approx(-1.0)
    assert summary.loc["w/o RAL", "delta_mAP"] == pytest.approx(2.0)
    assert summary.loc["w/o both", "runs"] == 0
    assert set(pd.read_csv(out / "runs.csv")["embed_dim"]) == {2048}


def test_lambda_curve_with_the_embedding_takes_its_ends_from_tables_2_and_3(tmp_path: Path) -> None:
    """Issue 19 run 4 at 10 epochs: λ2 = 50 is Table 2's layer4 row, the λ2 = 0 end is Table 3's w/o L_RAL;
    runs without the embedding, or with another mining ratio, are not rows, and the rows pair by seed."""
    ckpt, s = _stage1(tmp_path), tmp_path / "sweep"
    full = dict(use_mdl=True, use_cml=True, use_al=True, use_rj=True)
    points = {"l50": (dict(full, lambda_ref=50.0), 0.36), "l5": (dict(full, lambda_ref=5.0), 0.37),
              "noral": (dict(full, use_al=False, use_rj=False), 0.38),
              "mining": (dict(full, mining_ratio=0.02), 0.20)}
    for seed in (0, 1):
        for name, (switches, m) in points.items():
            for embed, shift in ((2048, 0.01 * seed), (None, -0.1)):
                _point(s, f"{name}-{embed}-{seed}", seed=seed, mAP=m + shift, stage1=ckpt, epochs=10,
                       weight_decay=0.025, milestones=(12, 17), model=dict(embed_dim=embed), **switches)
    out = tmp_path / "results"
    ex.write_experiment("paper_schedule_terms_embedding", [s], out)
    summary = pd.read_csv(out / "summary.csv", index_col="row")
    assert list(summary.index) == ["λ2 = 50 (official)", "λ2 = 5", "w/o L_RAL (λ2 = 0)"]
    assert (summary["runs"] == 2).all()
    assert summary.loc["λ2 = 50 (official)", "mAP_mean"] == pytest.approx(36.5)
    assert summary.loc["λ2 = 5", "delta_mAP"] == pytest.approx(1.0)
    assert summary.loc["w/o L_RAL (λ2 = 0)", "delta_mAP"] == pytest.approx(2.0)
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["embed_dim"]) == {2048} and set(runs["mining_ratio"]) == {0.005}


def test_gradient_shares_per_row_by_hand() -> None:
    from workbench.experiments.stats import gradient_table

    rows = pd.DataFrame({"row": ["a", "a", "b"], "run": ["a0", "a1", "b0"], "mdl_warmup_epochs": [0, 1, 0]})
    histories = pd.DataFrame({"run": ["a0", "a0", "a0", "a1", "a1", "a1", "b0", "b0"],
                              "epoch": [0, 1, 2, 0, 1, 2, 0, 1],
                              "grad_total": [math.nan, 2.0, 4.0, math.nan, 9.0, 6.0, math.nan, math.nan],
                              "share_mdl": [math.nan, 0.2, 0.4, math.nan, 0.0, 0.5, math.nan, math.nan],
                              "share_rj": [math.nan, 0.8, 0.6, math.nan, 1.0, 0.5, math.nan, math.nan],
                              "grad_mdl": [math.nan, 1.0, 1.0, math.nan, 0.0, 2.0, math.nan, math.nan]})
    got = gradient_table(rows, histories)
    # run a0 (no warm-up): epochs 1 and 2 → share_mdl 0.3, ‖g‖ 3; run a1: epoch 1 is its L_MDL warm-up, left
    # out → 0.5, 6; row a: the runs' mean; b measured nothing
    assert list(got.index) == ["a"]
    assert got.loc["a", "share L_MDL (%)"] == pytest.approx(40.0) and got.loc["a", "share λ2·β·L_RJ (%)"] == pytest.approx(60.0)
    assert got.loc["a", "‖g‖"] == pytest.approx(4.5) and got.loc["a", "‖g L_MDL‖"] == pytest.approx(1.5)


def test_a_table_at_an_epoch_from_sweeps(tmp_path: Path) -> None:
    ckpt, s = _stage1(tmp_path), tmp_path / "sweep"
    full = dict(use_mdl=True, use_cml=True, use_al=True, use_rj=True)
    for seed, (m_full, m_noral) in enumerate([(0.30, 0.31), (0.32, 0.34)]):
        # the paper's schedule, as the evidence runs set it
        _point(s, f"full-{seed}", seed=seed, mAP=m_full, stage1=ckpt, epochs=20, weight_decay=0.025,
               milestones=(12, 17), **full)
        _point(s, f"noral-{seed}", seed=seed, mAP=m_noral, stage1=ckpt, epochs=10, weight_decay=0.025,
               milestones=(12, 17), **dict(full, use_al=False, use_rj=False))
    out = tmp_path / "results"
    ex.write_experiment("paper_schedule_loss_ablation", [s], out)
    summary = pd.read_csv(out / "summary.csv", index_col="row")
    # the 20-epoch full runs are read at epoch 10 (mAP − 0.01 in _point's history), w/o RAL at its end
    assert summary.loc["full", "mAP_mean"] == pytest.approx(30.0) and summary.loc["w/o RAL", "mAP_mean"] == pytest.approx(32.5)
    assert summary.loc["w/o RAL", "delta_mAP"] == pytest.approx(2.5)
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["trained_epochs"]) == {10, 20} and set(runs["epochs"]) == {10}
    assert pd.read_csv(out / "histories.csv")["epoch"].max() == 20  # the whole history is kept
    ex.write_experiment("paper_schedule_loss_ablation", [out], tmp_path / "again")  # regenerated from the folder
    again = pd.read_csv(tmp_path / "again" / "summary.csv", index_col="row")
    assert again.loc["full", "mAP_mean"] == pytest.approx(30.0)
    # the folder says which experiment it holds (its name need not): README blocks and `report` read it
    from workbench.errors import ConfigError
    from workbench.experiments.report import report

    assert json.loads((out / "experiment.json").read_text()) == {"experiment": "paper_schedule_loss_ablation"}
    assert "| w/o RAL | 2 |" in report(out) and "+2.5 [" in report(out)
    assert "share of the update" not in report(out)  # no run measured the terms' gradients
    (out / "gradient_shares.csv").write_text("row,share L_MDL (%),‖g L_MDL‖,‖g‖\nfull,1.04,2.7,31.1\n")
    assert "| full | 1.040 | 31.1 |" in report(out)  # the shares and the step's norm; not the term norms
    (out / "experiment.json").write_text('{"experiment": "table9"}')
    with pytest.raises(ConfigError, match="unknown experiment 'table9'"):
        report(out)


def test_a_committed_folder_read_with_the_sweep_that_grows_it_counts_each_run_once(sweep: Path, tmp_path: Path) -> None:
    """Regenerating a committed folder together with its sweep, which has gained points since (issue 19's
    run 3 adds one fusion combination a session): the runs in both are one run each, not a crash or two."""
    from workbench.errors import ConfigError
    from workbench.experiments.records import read_records

    out = tmp_path / "results"
    ex.write_experiment("loss_ablation", [sweep], out)
    first = pd.read_csv(out / "summary.csv", index_col="row")
    ckpt = tmp_path / "stage1" / "pretrain" / "checkpoint.pt"
    _point(sweep, "nocml-2", seed=2, mAP=0.27, stage1=ckpt, use_cml=False)  # the sweep grows
    _point(sweep, "full-2", seed=2, mAP=0.33, stage1=ckpt)
    records, histories = read_records([out, sweep])
    assert sorted(records["run"]) == sorted(p.name for p in sweep.iterdir() if (p / "mar").is_dir())
    assert not histories.duplicated(["run", "epoch"]).any()
    ex.write_experiment("loss_ablation", [out, sweep], tmp_path / "grown")
    grown = pd.read_csv(tmp_path / "grown" / "summary.csv", index_col="row")
    assert grown.loc["full", "runs"] == first.loc["full", "runs"] + 1 == 3
    assert grown.loc["w/o CML", "runs"] == 3
    assert grown.loc["w/o CML", "delta_mAP"] == pytest.approx(-3.0)  # (-1, -2, -6) / 3, paired by seed
    # a different run under a name the folder already holds is refused, naming both places
    other = tmp_path / "other"
    _point(other, "full-0", seed=0, mAP=0.5, stage1=ckpt)
    (other / "full-0" / "status.json").write_text(json.dumps({"state": "done", "name": "full-0", "params": {},
                                                              "finished": "2026-12-02T09:00:00+00:00"}))
    with pytest.raises(ConfigError, match="two different runs are named 'full-0'"):
        read_records([out, other])


def test_the_share_of_the_gap_to_the_upper_bound() -> None:
    import pandas as pd

    from workbench.experiments.catalog import EXPERIMENTS
    from workbench.experiments.stats import seed_summary

    exp = EXPERIMENTS["method_comparison"]
    rows = pd.DataFrame([{"row": exp.baseline, "seed": 0, "rank1": 0.30, "mAP": 0.30, "start_rank1": 0.20, "start_mAP": 0.20},
                         {"row": exp.upper_bound, "seed": 0, "rank1": 0.60, "mAP": 0.70, "start_rank1": 0.20,
                          "start_mAP": 0.20}])
    for m in ("mAP_devkit", "mINP"):
        rows[m] = 0.1
    table = seed_summary(rows, exp)
    assert table.loc[exp.baseline, "gap_closed_mAP"] == pytest.approx(20.0)  # 10 of the 50 points to the bound
    assert table.loc[exp.baseline, "gap_closed_rank1"] == pytest.approx(25.0)
    assert table.loc[exp.upper_bound, "gap_closed_mAP"] == pytest.approx(100.0)
    from workbench.experiments.markdown import summary_markdown

    text = summary_markdown(table, exp)
    assert "| mAP gap closed |" in text.splitlines()[0] + "|"
    assert "20 %" in text and "(the bound)" in text


def test_a_notes_placeholder_finds_a_seed_in_a_column_with_an_empty_cell(tmp_path: Path) -> None:
    from workbench.experiments.summary import fill_numbers

    (tmp_path / "c.csv").write_text("row,seed,x\nstage 1,,0.5\nMAR,0,0.25\nMAR,1,0.75\n")  # seed is read as 0.0, 1.0
    assert fill_numbers("{{ c.csv: row=MAR; seed=1; x% }}", tmp_path) == "75.0"
