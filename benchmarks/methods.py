"""What a clustering method costs as the data grows: one clustering pass as Cluster-Contrast and the
soft-multilabel hybrid run it at the start of every epoch (``ClusterContrastTrainer.cluster()`` →
:func:`workbench.clustering.cluster_pseudo_labels`: features → k-reciprocal Jaccard distance →
soft-multilabel agreement → DBSCAN), before and after the sparse neighbourhoods, at N = 2,000, 4,000,
12,936 (Market-1501's training set) and 32,621 (MSMT17's) images with Np = 843 (CUHK03's identities,
the reference set of the committed tables) and 4,101 (MSMT17's) agents.

Problems: seeded synthetic target sets, 17 images per identity (31 at MSMT17's size) seen by 6
cameras, features drawn around identity centres in a 128-d latent space, mapped isometrically to
1,280 dimensions (MobileNetV2's) and L2-normalized; agents drawn in the same latent space, soft
multilabels ``softmax(30 · f · aᵀ)``; the features of one N are the same for both Np. Settings: the
committed Table 4 ones (k1 10, k2 3, eps 0.5, min_samples 2, label_weight 0.25).

Paths:

* ``after``: ``cluster_pseudo_labels`` as it is: the Jaccard pairs within eps / (1 − w)
  (``sparse_jaccard_distance``), the agreement of those pairs only, DBSCAN on the sparse matrix.
* ``before``: the dense path it replaces, ``DBSCAN(...).fit_predict(cluster_distance(...))``: the
  (N, N) Jaccard matrix, the (N, N) agreement (an N²·Np L1 ``cdist``), their (N, N) mix. Run in full
  where N²·Np ≤ ``--old-limit``; above it the dense Jaccard alone is measured, the agreement is
  estimated from the ``cdist`` of a strip of ``--strip`` rows (seconds × N / rows), the mix and DBSCAN
  are not run, and the peak memory is extrapolated from the largest full run (bytes per (N, N) entry).

Each measurement runs in its own process (peaks do not mix) with ``--threads`` torch threads. The
parts' seconds come from wrappers around the library functions the pass calls ("rest": the pass
less its parts); memory: peak RSS above the RSS before the pass (inputs not counted), from the
kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``). ``same labels``: the
after path's labels equal the before path's, element for element (numbering included).

Real data (``--skip-real`` to leave out): CUHK01's training split, features of the zoo's stage-1
checkpoint (mobilenet_v2-cuhk03-cpu-seed0, 843 agents), the labels of both paths for the Table 4
setting and a few others, with the adjusted Rand index.

Usage: ``python benchmarks/methods.py [--sizes 2000 4000 12936 32621] [--agents 843 4101]
[--old-limit 1.5e11] [--strip 256] [--threads 2] [--skip-real] [--note TEXT]``.
Target (2-core CPU): the after path at N = 12,936 with 4,101 agents under 60 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workbench  # noqa: E402  (before torch, as the CLI and the engine load it: OpenMP threads wait passively)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SETTINGS = {"k1": 10, "k2": 3, "eps": 0.5, "min_samples": 2, "label_weight": 0.25}  # Table 4's
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def problem(n: int, num_agents: int, seed: int = 0, dim: int = 1280, latent: int = 128,
            noise: float = 1.2) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Features (N, dim), soft multilabels (N, Np) and identities (N,) of a synthetic target set."""
    rng = np.random.default_rng(seed)
    per_id = 31 if n > 20000 else 17
    num_ids = max(2, round(n / per_id))
    centres = rng.standard_normal((num_ids, latent))
    cam_shift = 0.3 * rng.standard_normal((6, latent))
    pids = rng.permutation(np.resize(np.arange(num_ids), n))
    z = centres[pids] + cam_shift[rng.integers(0, 6, n)] + noise * rng.standard_normal((n, latent))
    proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # (latent, dim) isometry
    feats = F.normalize(torch.from_numpy(z.astype(np.float32) @ proj), dim=1)  # (N, dim)
    a = np.random.default_rng([seed, num_agents]).standard_normal((num_agents, latent)).astype(np.float32)
    agents = F.normalize(torch.from_numpy(a @ proj), dim=1)  # (Np, dim)
    from workbench.losses import soft_multilabel

    return feats, soft_multilabel(feats, agents, 30.0), pids


# --------------------------------------------------------------------------------------------
# one measurement (a child process)
# --------------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    _CLEAR_REFS.write_text("5")  # VmHWM back to the current RSS (Linux >= 4.0)


class Meter:
    """Seconds of the wrapped parts and the pass's peak RSS above the RSS before it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, Any] = {}
        self.peak_kb = 0

    def wrap(self, name: str, fn: Callable, note: Callable[[Any, tuple], dict] | None = None) -> Callable:
        def timed(*args, **kwargs):
            self.peak_kb = max(self.peak_kb, _status_kb("VmHWM"))  # before the reset: the pass so far
            _reset_peak()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.peak_kb = max(self.peak_kb, _status_kb("VmHWM"))
            if note is not None:
                self.notes |= note(out, args)
            return out

        return timed

    def run(self, fn: Callable[[], Any]) -> dict[str, Any]:
        rss0 = _status_kb("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        out = fn()
        total = time.perf_counter() - start
        peak = max(self.peak_kb, _status_kb("VmHWM")) - rss0
        return {"out": out, "total": total, "peak_mb": peak / 1024, "parts": self.seconds, **self.notes}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    if spec["what"] == "real":
        return real_data(spec)
    import workbench.clustering as wc
    import workbench.losses as wl
    from sklearn.cluster import DBSCAN

    n, num_agents = spec["n"], spec["agents"]
    feats, y, _ = problem(n, num_agents)
    meter = Meter()
    s = SETTINGS
    if spec["what"] == "before-jaccard":
        res = meter.run(lambda: wc.jaccard_distance(feats, s["k1"], s["k2"]))
    elif spec["what"] == "before-strip":
        rows = min(spec["strip"], n)
        res = meter.run(lambda: wl.agreement(y[:rows], y))  # (rows, N) of the (N, N) agreement
        res["estimate"] = res["total"] * n / rows
    else:
        DBSCAN.fit_predict = meter.wrap("dbscan", DBSCAN.fit_predict,
                                        lambda out, args: {"stored": int(getattr(args[1], "nnz", n * n))})
        if spec["what"] == "after":
            wc.sparse_jaccard_distance = meter.wrap("jaccard", wc.sparse_jaccard_distance,
                                                    lambda out, args: {"pairs": len(out[0])})
            wc._pair_agreement = meter.wrap("agreement", wc._pair_agreement)
            res = meter.run(lambda: wc.cluster_pseudo_labels(feats, eps=s["eps"], min_samples=s["min_samples"],
                                                             k1=s["k1"], k2=s["k2"], multilabels=y,
                                                             label_weight=s["label_weight"]))
        else:  # before: the dense path, as cluster_pseudo_labels ran it
            wc.jaccard_distance = meter.wrap("jaccard", wc.jaccard_distance)
            wl.agreement = meter.wrap("agreement", wl.agreement)  # cluster_distance imports it when called

            def dense() -> np.ndarray:
                dist = wc.cluster_distance(feats, k1=s["k1"], k2=s["k2"], multilabels=y,
                                           label_weight=s["label_weight"])
                return DBSCAN(eps=s["eps"], min_samples=s["min_samples"], metric="precomputed",
                              n_jobs=1).fit_predict(dist)

            res = meter.run(dense)
        np.save(spec["labels"], res["out"])
    res.pop("out")
    return res


def real_data(spec: dict[str, Any]) -> dict[str, Any]:
    """Both paths on CUHK01's training split with the zoo's stage-1 features."""
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    from workbench.builders import load_model
    from workbench.clustering import cluster_distance, cluster_pseudo_labels
    from workbench.data import build_test_loader, load_dataset
    from workbench.evaluation import extract_features
    from workbench.losses import soft_multilabel

    train = load_dataset("market1501", spec["root"]).train
    net = load_model(spec["checkpoint"])
    feats, pids, _ = extract_features(net, build_test_loader(train, image_size=(128, 64), batch_size=128))
    y = soft_multilabel(feats, net.agents.detach(), 30.0)
    k1, k2 = SETTINGS["k1"], SETTINGS["k2"]
    rows, dense = [], {}
    for eps, min_samples, w in [(0.5, 2, 0.25), (0.4, 2, 0.25), (0.6, 4, 0.25), (0.7, 2, 0.25), (0.5, 2, 0.0),
                                (0.6, 4, 0.0), (0.8, 2, 0.25)]:
        start = time.perf_counter()
        if w not in dense:
            dense[w] = cluster_distance(feats, k1=k1, k2=k2, multilabels=y, label_weight=w)
        old = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=1).fit_predict(dense[w])
        old_s = time.perf_counter() - start
        start = time.perf_counter()
        new = cluster_pseudo_labels(feats, eps=eps, min_samples=min_samples, k1=k1, k2=k2, multilabels=y,
                                    label_weight=w)
        new_s = time.perf_counter() - start
        rows.append({"eps": eps, "min_samples": min_samples, "w": w, "clusters": int(old.max()) + 1,
                     "outliers": int((old < 0).sum()), "equal": bool(np.array_equal(old, new)),
                     "ari": float(adjusted_rand_score(old, new)), "old_s": old_s, "new_s": new_s,
                     "path": "sparse" if eps < 1 - w else "dense"})
    return {"images": len(train), "identities": int(len(np.unique(pids))), "agents": int(net.agents.shape[0]),
            "dim": int(feats.shape[1]), "rows": rows}


# --------------------------------------------------------------------------------------------
# the run (the parent process)
# --------------------------------------------------------------------------------------------

def measure(spec: dict[str, Any]) -> dict[str, Any] | None:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  ({spec['what']} N={spec.get('n')} Np={spec.get('agents')} failed, exit {proc.returncode}: "
              f"{proc.stderr.strip().splitlines()[-1:] or ''})", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def header(argv: list[str], note: str) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    note = f", {note}" if note else ""
    return (f"# python benchmarks/methods.py {' '.join(argv)}".rstrip() +
            f"  (commit {commit}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores{note}, "
            f"load average at start: {load})")


def fmt(x: float | None, width: int, digits: int = 2, est: bool = False) -> str:
    if x is None:
        return "-".rjust(width)
    text = f"{x:.{digits}f}" + ("~" if est else "")
    return text.rjust(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 12936, 32621])
    parser.add_argument("--agents", type=int, nargs="+", default=[843, 4101])
    parser.add_argument("--old-limit", type=float, default=1.5e11,
                        help="run the dense path in full where N^2 * Np is at most this")
    parser.add_argument("--strip", type=int, default=256, help="rows of the dense agreement timed for its estimate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--root", default=None, help="CUHK01's folder (default: <shared>/data/cuhk01-market)")
    parser.add_argument("--checkpoint", default=str(ROOT / "zoo" / "mobilenet_v2-cuhk03-cpu-seed0.pt"))
    parser.add_argument("--note", default="", help="said in the first line (e.g. what else ran on the machine)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    argv = [a for i, a in enumerate(sys.argv[1:])  # the command as run, less the note
            if not a.startswith("--note") and sys.argv[i] != "--note"]
    print(header(argv, args.note))
    print(f"torch {torch.__version__}, {args.threads} torch threads, each measurement in its own process; "
          f"settings {' '.join(f'{k}={v}' for k, v in SETTINGS.items())}; 1280-d features")
    print("seconds of each part; peak MB: RSS above the RSS before the pass; '~': estimated (see the notes)\n")
    cols = (f"{'N':>6} {'Np':>5}  {'path':<7}{'jaccard':>9}{'agreement':>11}{'dbscan':>8}{'rest':>7}"
            f"{'total':>10}{'peak MB':>10}{'pairs/img':>10}{'clusters':>9}  same labels")
    print(cols)
    print("-" * len(cols))
    tmp = Path(tempfile.mkdtemp(prefix="bench_methods_"))
    base = {"threads": args.threads, "strip": args.strip}
    ratios, notes, bytes_per_entry = [], [], None
    for n in args.sizes:
        old_jaccard = None
        for num_agents in args.agents:
            spec = base | {"n": n, "agents": num_agents}
            full_old = n * n * num_agents <= args.old_limit
            if full_old:
                old = measure(spec | {"what": "before", "labels": str(tmp / f"before_{n}_{num_agents}.npy")})
                if old is not None:
                    bytes_per_entry = old["peak_mb"] * 2**20 / (n * n)
            else:
                if old_jaccard is None:
                    old_jaccard = measure(spec | {"what": "before-jaccard"})
                strip = measure(spec | {"what": "before-strip"})
                old = None
                if old_jaccard is not None and strip is not None:
                    old = {"parts": {"jaccard": old_jaccard["total"], "agreement": strip["estimate"]},
                           "total": old_jaccard["total"] + strip["estimate"], "estimated": True,
                           "peak_mb": None if bytes_per_entry is None else bytes_per_entry * n * n / 2**20}
            new = measure(spec | {"what": "after", "labels": str(tmp / f"after_{n}_{num_agents}.npy")})
            for path, res in (("before", old), ("after", new)):
                if res is None:
                    print(f"{n:>6} {num_agents:>5}  {path:<7}  (not measured)")
                    continue
                est = res.get("estimated", False)
                p = res["parts"]
                rest = None if est else res["total"] - sum(p.values())
                same, clusters, pairs = "", "", ""
                labels = tmp / f"{path}_{n}_{num_agents}.npy"
                if labels.exists():
                    lab = np.load(labels)
                    clusters = str(int(lab.max()) + 1)
                if path == "after":
                    pairs = f"{res['stored'] / n:.1f}"
                    before = tmp / f"before_{n}_{num_agents}.npy"
                    same = str(np.array_equal(np.load(before), lab)) if before.exists() else "(not run)"
                print(f"{n:>6} {num_agents:>5}  {path:<7}{fmt(p.get('jaccard'), 9)}"
                      f"{fmt(p.get('agreement'), 11, est=est)}{fmt(p.get('dbscan'), 8)}{fmt(rest, 7)}"
                      f"{fmt(res['total'], 10, est=est)}{fmt(res['peak_mb'], 10, 0, est=est)}{pairs:>10}"
                      f"{clusters:>9}  {same}", flush=True)
            if old is not None and new is not None:
                r = old["total"] / new["total"]
                ratios.append(f"{n}x{num_agents}: {r:.{1 if r < 10 else 0}f}x" + ("~" if not full_old else ""))
    print("\nspeed-up, before / after total (same run): " + "; ".join(ratios))
    notes.append(f"'~' rows: the dense path above N^2*Np = {args.old_limit:.2g} is not run in full: its Jaccard is "
                 f"measured (jaccard_distance, the (N, N) matrix), its agreement estimated from a {args.strip}-row "
                 f"strip of the cdist (seconds x N / {args.strip}), its mix and DBSCAN not run (the '-' columns), and its "
                 f"peak extrapolated from the largest full run "
                 f"({'none' if bytes_per_entry is None else f'{bytes_per_entry:.1f} bytes per (N, N) entry'})")
    notes.append("pairs/img: the entries DBSCAN gets per image (within eps, the image itself included); the dense "
                 "path gives it all N")
    for line in notes:
        print("note: " + line)
    if not args.skip_real:
        from workbench.paths import shared_root

        root = args.root or str((shared_root() or ROOT.parent / "shared") / "data" / "cuhk01-market")
        real = measure(base | {"what": "real", "root": root, "checkpoint": args.checkpoint})
        if real is not None:
            print(f"\nreal data: CUHK01's training split ({real['images']} images, {real['identities']} identities), "
                  f"{real['dim']}-d features of {Path(args.checkpoint).name} ({real['agents']} agents), k1="
                  f"{SETTINGS['k1']} k2={SETTINGS['k2']}; labels of the after path against DBSCAN on the dense distance")
            print(f"{'eps':>5} {'min_samples':>11} {'w':>5}  {'path':<7}{'clusters':>9}{'outliers':>9}"
                  f"{'identical':>10}{'ARI':>7}{'before s':>10}{'after s':>9}")
            for r in real["rows"]:
                print(f"{r['eps']:>5} {r['min_samples']:>11} {r['w']:>5}  {r['path']:<7}{r['clusters']:>9}"
                      f"{r['outliers']:>9}{str(r['equal']):>10}{r['ari']:>7.3f}{r['old_s']:>10.2f}{r['new_s']:>9.2f}")
            print("(the first row is Table 4's setting; 'before s' includes the dense distance where computed "
                  "for that w, once)")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
