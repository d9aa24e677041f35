"""Two jobs on one machine: the thread counts and OpenMP wait policy that keep them from fighting.

Each job is a separate Python process running the engine's stage-2 step (MobileNetV2 128x64, 32 + 32
images, fp32: ``benchmarks/training.py``'s first workload) for a fixed number of truncated epochs and
printing its images per second (median over those epochs, after a warm-up one). Scenarios:

- one job alone at 1 and at all cores' threads;
- two jobs at once with the threads torch picks by itself (all cores each), with OpenMP's default
  wait policy and with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning);
- two jobs at once as ``workbench.threads`` starts them when the second comes while the first runs
  (the first keeps all cores, the second sees the load and takes what is left), passive waits;
- two jobs at once with cores // 2 threads each (the sweep executors' split).

"total" is the two jobs' images per second added up: what the machine does for the two of them.

Usage:
    python benchmarks/threads.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(threads: int, epochs: int) -> None:
    import logging
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    from training import Engine  # noqa: E402

    torch.set_num_threads(threads)
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine("mobilenet_v2 128x64 stage-2 step", False, False, Path(tmp))
        engine.run()
        print(statistics.median(engine.run() for _ in range(epochs)), flush=True)


def jobs(specs: list[tuple[int, str]], epochs: int, stagger: float = 0.0) -> list[float]:
    """Start one worker per (threads, wait policy); return their images per second."""
    procs = []
    for threads, policy in specs:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "--threads", str(threads),
                                       "--epochs", str(epochs)], env=env, stdout=subprocess.PIPE, text=True,
                                      stderr=subprocess.DEVNULL))
        time.sleep(stagger)
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="timed truncated epochs (6 steps) per job")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.threads, args.epochs)
    cores = len(os.sched_getaffinity(0))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# python benchmarks/threads.py {' '.join(sys.argv[1:])}".rstrip() +
          f"  (commit {commit}, {time.strftime('%Y-%m-%d')}, {cores} usable cores, load average at start: {load})")
    print("engine stage-2 step (mobilenet_v2 128x64, 32 + 32 images, fp32), images per second per job\n")
    half = max(1, cores // 2)
    scenarios = [
        ("alone, 1 thread", [(1, "")]),
        (f"alone, {cores} threads", [(cores, "")]),
        (f"alone, {cores} threads, OMP_WAIT_POLICY=PASSIVE", [(cores, "PASSIVE")]),
        (f"two jobs, {cores} threads each, default waits", [(cores, ""), (cores, "")]),
        (f"two jobs, {cores} threads each, OMP_WAIT_POLICY=PASSIVE", [(cores, "PASSIVE"), (cores, "PASSIVE")]),
        (f"two jobs, {cores} + {max(1, cores - 1)} threads (workbench.threads), passive",
         [(cores, "PASSIVE"), (max(1, cores - 1), "PASSIVE")]),
        (f"two jobs, {half} thread{'s' if half > 1 else ''} each (cores // 2), passive", [(half, "PASSIVE"), (half, "PASSIVE")]),
        (f"two jobs, {half} thread{'s' if half > 1 else ''} each (cores // 2), default waits", [(half, ""), (half, "")]),
    ]
    width = max(len(name) for name, _ in scenarios)
    print(f"{'scenario':<{width}}  {'job 1':>7}  {'job 2':>7}  {'total':>7}")
    for name, specs in scenarios:
        got = jobs(specs, args.epochs)
        cells = [f"{x:7.1f}" for x in got] + [" " * 7] * (2 - len(got))
        print(f"{name:<{width}}  {'  '.join(cells)}  {sum(got):7.1f}", flush=True)


if __name__ == "__main__":
    main()
