"""The bf16 stage-2 runs of bf16_check.sh (seeds 0 and 1) against the fp32 runs of the same setting: the MAR
row of results/method_comparison (seeds 0-2, same stage 1, same settings, fp32).

Usage: python results/cpu_speed/compare_bf16.py BF16_RUN_FOLDER... > results/cpu_speed/bf16_vs_fp32.txt
"""
import csv
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
fp32 = {int(r["seed"]): r for r in csv.DictReader(open(HERE.parent / "method_comparison" / "runs.csv"))
        if r["row"] == "MAR (soft multilabels)"}
print(f"# python results/cpu_speed/compare_bf16.py {' '.join(Path(p).name for p in sys.argv[1:])}")
print("fp32 (results/method_comparison, MAR row): " + "; ".join(
    f"seed {s}: mAP {100 * float(r['mAP']):.2f}, rank-1 {100 * float(r['rank1']):.1f}, {float(r['images_per_s']):.1f} img/s"
    for s, r in sorted(fp32.items())))
maps = [100 * float(r["mAP"]) for r in fp32.values()]
print(f"fp32 mAP over seeds: mean {statistics.mean(maps):.2f}, std {statistics.stdev(maps):.2f}, "
      f"range {min(maps):.2f}-{max(maps):.2f}")
for folder in sys.argv[1:]:
    cfg = json.load(open(Path(folder) / "config.json"))
    m = json.load(open(Path(folder) / "metrics.json"))
    run = json.load(open(Path(folder) / "run.json"))
    seed = cfg["train"]["seed"]
    base = fp32[seed]
    print(f"bf16 seed {seed} (amp {cfg['train']['amp']}, channels_last {cfg['train']['channels_last']}): mAP "
          f"{100 * m['mAP']:.2f} (fp32 same seed {100 * float(base['mAP']):.2f}, difference "
          f"{100 * (m['mAP'] - float(base['mAP'])):+.2f}), rank-1 {100 * m['rank1']:.1f} "
          f"({100 * (m['rank1'] - float(base['rank1'])):+.1f}), {run['images_per_s']:.1f} img/s (median epoch)")
