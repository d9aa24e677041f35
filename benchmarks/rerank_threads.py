"""re_ranking's non-GEMM work on one thread (``sparse_threads=1``) or on all of them
(``sparse_threads=None``, what the default ``"auto"`` picks when OpenMP threads wait passively),
against the (Q+G)^2 GEMM floor, on the Market-sized problem of ``benchmarks/evaluation.py``;
2 torch threads, 2 interleaved rounds.

Usage: python benchmarks/rerank_threads.py
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import workbench  # noqa: E402  (before torch, as the CLI loads it: OpenMP threads wait passively)
import torch  # noqa: E402
from evaluation import gemm_strips, market_problem  # noqa: E402

from workbench.evaluation.rerank import re_ranking  # noqa: E402

torch.set_num_threads(2)
q, g, *_ = market_problem(0, 2048, 1.0)
x = torch.cat([q, g])
print("OpenMP waits passively:", workbench.OPENMP_PASSIVE, "(re_ranking's default sparse_threads='auto' then uses both threads)")
res = {"gemm": [], "rr sparse=1": [], "rr sparse=2": []}
for r in range(2):
    t = time.perf_counter(); gemm_strips(x); res["gemm"].append(time.perf_counter() - t)  # noqa: E702
    t = time.perf_counter(); re_ranking(q, g, sparse_threads=1); res["rr sparse=1"].append(time.perf_counter() - t)  # noqa: E702
    t = time.perf_counter(); re_ranking(q, g, sparse_threads=None); res["rr sparse=2"].append(time.perf_counter() - t)  # noqa: E702
b = statistics.median(res["gemm"])
for k, v in res.items():
    print(k, ["%.2f" % x for x in v], "ratio %.2f" % (statistics.median(v) / b))
