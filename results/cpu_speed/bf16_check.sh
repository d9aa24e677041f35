#!/usr/bin/env bash
# Issue 24's bf16 check on the real data, one thread (another job shares the machine, as in every run here):
# 1. one CUHK01 evaluation of the paper-schedule stage 1 (results/paper_schedule), fp32 then --amp (bf16 +
#    channels_last): wall time and metrics;
# 2. the same model's query features in fp32 and bf16: per-image cosine;
# 3. a 2-epoch stage 2 in bf16 with the comparison's MAR settings (results/method_comparison: cpu preset, SGD lr
#    2e-4, weight decay 0.025, evaluated every epoch, seed 0), to set beside the fp32 runs of that row (3 seeds).
# Usage: bash results/cpu_speed/bf16_check.sh STAGE1_CHECKPOINT OUT_DIR [SEED]  (the folder's recipe.yaml runs it
# from the zoo's stage 1: python -m workbench reproduce results/cpu_speed)
set -euo pipefail
S1=$1; OUT=$2; SEED=${3:-0}; mkdir -p "$OUT"
PY=${PY:-python}
ROOT=${WORKBENCH_SHARED:-../shared}/data/cuhk01-market
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "# bash results/cpu_speed/bf16_check.sh  (commit $(git rev-parse --short HEAD), $(date -u +%F), 1 thread, load average at start: $(cut -d' ' -f1-3 /proc/loadavg))"
for mode in fp32 bf16; do
  flag=$([ $mode = bf16 ] && echo --amp || true)
  start=$(date +%s.%N)
  $PY -m workbench evaluate --checkpoint "$S1" --dataset market1501 --root $ROOT --preset cpu $flag --out "$OUT/evaluate_$mode.json" > /dev/null
  end=$(date +%s.%N)
  $PY - "$OUT/evaluate_$mode.json" "$mode" "$start" "$end" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"evaluate {sys.argv[2]:>4}: {wall:6.1f} s wall (command), {m['seconds']:6.1f} s inside evaluate(); "
      f"rank-1 {100 * m['rank1']:.1f}, mAP {100 * m['mAP']:.2f}")
PYEOF
  $PY -m workbench extract --checkpoint "$S1" --dataset market1501 --root $ROOT --preset cpu $flag --split query --out "$OUT/query_$mode.npy" > /dev/null
done
$PY - "$OUT" <<'PYEOF'
import sys
import numpy as np
out = sys.argv[1]
a, b = np.load(f"{out}/query_fp32.npy"), np.load(f"{out}/query_bf16.npy")
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(f"query features, bf16 against fp32: cosine min {cos.min():.4f}, median {np.median(cos):.4f} over {len(cos)} images")
PYEOF
$PY -m workbench train --preset cpu --init "$S1" --epochs 2 --amp --seed "$SEED" --set lr=2e-4 --set weight_decay=0.025 \
    --set eval_every=1 --set milestones=12,17 --no-tensorboard --run-dir "$OUT/mar_bf16" > "$OUT/train.log" 2>&1
$PY - "$OUT/mar_bf16" <<'PYEOF'
import csv, json, sys
run = sys.argv[1]
h = list(csv.DictReader(open(f"{run}/history.csv")))
m = json.load(open(f"{run}/metrics.json"))
print(f"stage 2 in bf16 (2 epochs, seed {json.load(open(f'{run}/metrics.json')).get('seed')}): " + "; ".join(
    f"epoch {r['epoch']}: {float(r['seconds']):.0f} s, {float(r['images_per_s']):.1f} img/s, mAP {100 * float(r['mAP']):.2f}" for r in h))
print(f"final: rank-1 {100 * m['rank1']:.1f}, mAP {100 * m['mAP']:.2f} (start {100 * m['initial']['mAP']:.2f})")
PYEOF
