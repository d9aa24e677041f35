"""``make demo`` over seeds and thread counts: what stage 2 adds to stage 1 on the synthetic data, and how much
of that is noise. One ``python -m workbench demo`` per (seed, threads), each in its own run folder (reused
when it finished); one CSV row per run: stage-1 and stage-2 metrics, the change, the run's wall time and
the load average when it started.

Usage: python scripts/demo_over_seeds.py --runs DIR --seeds 0 1 2 3 4 --threads 1 --csv results/demo/seeds.csv
> results/demo/seeds.txt  (results/demo/recipe.yaml runs it; the text is the table README quotes).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(runs: Path, seed: int, threads: int, extra: list[str]) -> dict:
    folder = runs / f"seed{seed}-threads{threads}"
    done = (folder / "mar" / "metrics.json").is_file()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if not done:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-m", "workbench", "demo", "--seed", str(seed), "--threads", str(threads),
                        "--run-dir", str(folder), "--resume", *extra], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    s1 = json.loads((folder / "pretrain" / "metrics.json").read_text())
    s2 = json.loads((folder / "mar" / "metrics.json").read_text())
    row = {"seed": seed, "threads": threads}
    for key in ("rank1", "mAP"):
        row[f"stage1_{key}"], row[f"stage2_{key}"] = s1[key], s2[key]
        row[f"delta_{key}"] = s2[key] - s1[key]
    row["num_valid"] = s2.get("num_valid")
    seconds = sum(float(r["seconds"]) for name in ("pretrain", "mar")
                  for r in csv.DictReader(open(folder / name / "history.csv")))
    row |= {"train_seconds": round(seconds, 1), "wall_seconds": round(wall, 1) if not done else "",
            "load_at_start": round(load, 2) if not done else "", "commit": s2.get("commit")}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path, help="folder for the demo runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--csv", type=Path, default=None, help="also write one row per run to this CSV")
    parser.add_argument("extra", nargs="*", help="more demo options after --, e.g. -- --set epochs=10")
    args = parser.parse_args(argv)
    rows = [run(args.runs, seed, threads, args.extra) for threads in args.threads for seed in args.seeds]
    if args.csv is not None:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    print(summary(rows, args))
    return 0


def summary(rows: list[dict], args: argparse.Namespace) -> str:
    """The runs as a text table, then per thread count the mean ± std of stage 2's change and how many
    seeds it raised mAP."""
    import statistics

    commits = sorted({str(r["commit"]) for r in rows})
    lines = [f"# python scripts/demo_over_seeds.py --seeds {' '.join(map(str, args.seeds))} --threads "
             f"{' '.join(map(str, args.threads))}  (code {', '.join(commits)}; {rows[0]['num_valid']} queries)",
             f"{'seed':>4} {'threads':>7} {'stage-1 mAP':>11} {'stage-2 mAP':>11} {'Δ mAP':>6} {'Δ rank-1':>8} "
             f"{'train s':>7}"]
    for r in rows:
        lines.append(f"{r['seed']:>4} {r['threads']:>7} {100 * r['stage1_mAP']:>11.1f} {100 * r['stage2_mAP']:>11.1f} "
                     f"{100 * r['delta_mAP']:>+6.1f} {100 * r['delta_rank1']:>+8.1f} {r['train_seconds']:>7.0f}")
    for threads in args.threads:
        deltas = [100 * r["delta_mAP"] for r in rows if r["threads"] == threads]
        spread = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
        mean = statistics.mean(deltas)
        interval = ""
        if len(deltas) > 1:
            from scipy.stats import t

            half = t.ppf(0.975, len(deltas) - 1) * spread / len(deltas) ** 0.5
            interval = f" (95 % interval [{mean - half:+.1f}, {mean + half:+.1f}])"
        lines.append(f"{threads} thread(s): stage 2 changes mAP by {mean:+.1f} ± {spread:.1f} over {len(deltas)} seeds"
                     f"{interval}; it raised mAP at {sum(d > 0 for d in deltas)} of them")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
