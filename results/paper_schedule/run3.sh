#!/usr/bin/env bash
# Issue 19 run 3: Table 2 with the paper's 2048-d embedding after fusion, at run 2's schedule (10 epochs of
# lr 2e-4, weight decay 0.025, milestones 12/17, evaluated every 2 epochs), 2 seeds of stage 2 per combination.
# Code pinned in the worktree /work/evidence-emb (e55812e; notebooks 02/06 take embed_dim since 4fd151e); two
# points at a time, one thread each. `run3.sh [STAGES_YAML]` runs the combinations of STAGES_YAML (default
# fusion_stages.yaml: all seven); a session that cannot finish all seven runs one whole combination (its
# stage 1, then both seeds), because a stage-1 checkpoint does not outlive the machine and a re-run differs in
# its floats. Re-running this script resumes: finished points are skipped and an interrupted point resumes
# from its last epoch checkpoint. JOBS (default 2) is how many stage-2 points run at once: JOBS=1 runs the
# seeds one after the other on one core while another block uses the other core.
#   1. one stage 1 per combination (the committed recipe: cpu preset, 12 epochs of L_AL, seed 0, + embed_dim)
#   2. run3_grid.yaml, written from the finished stage 1s: every combination x seeds 0, 1 from its own stage 1
#   3. stage 2
set -uo pipefail
cd /work/evidence-emb
export PYTHONPATH=/work/evidence-emb OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
RUNS=/work/evidence-runs
$PY -m workbench sweep notebooks/02_pretrain_reference.ipynb --grid "${1:-$RUNS/fusion_stages.yaml}" \
    --jobs 2 --cpus-per-point 1 --set preset=cpu --set 'extra={embed_dim: 2048}' --out $RUNS/stage1_emb
$PY - "$RUNS" <<'PYEOF' || exit 1
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
lines = ["# Issue 19 run 3, stage 2: written by run3.sh from the finished stage 1s in stage1_emb/"]
for status in sorted((runs / "stage1_emb").glob("*/status.json")):
    s = json.loads(status.read_text())
    ckpt = status.parent / "pretrain" / "checkpoint.pt"
    if s.get("state") != "done" or not ckpt.is_file():
        print(f"run3: stage 1 {status.parent.name} is {s.get('state')}: its stage-2 points wait", file=sys.stderr)
        continue
    for seed in (0, 1):
        lines.append(f"- {{stages: {s['point']['stages']}, seed: {seed}, init_checkpoint: {ckpt}}}")
(runs / "run3_grid.yaml").write_text("\n".join(lines) + "\n")
print(f"run3: {len(lines) - 1} stage-2 points", file=sys.stderr)
PYEOF
exec $PY -m workbench sweep notebooks/03_train_mar.ipynb --grid $RUNS/run3_grid.yaml \
    --jobs "${JOBS:-2}" --cpus-per-point 1 --set preset=cpu --set epochs=10 --set lr=2e-4 --set weight_decay=0.025 \
    --set 'extra={embed_dim: 2048, milestones: [12, 17], eval_every: 2}' --out $RUNS/run3
