#!/usr/bin/env bash
# Issue 19 run 3: Table 2 with the paper's 2048-d embedding after fusion, at run 2's schedule (10 epochs of
# lr 2e-4, weight decay 0.025, milestones 12/17, evaluated every 2 epochs), 2 seeds of stage 2 per combination.
# Code pinned in the worktree /work/evidence-emb (e55812e; notebooks 02/06 take embed_dim since 4fd151e); two
# points at a time, one thread each. `run3.sh [STAGES_YAML]` runs the combinations of STAGES_YAML (default
# fusion_stages.yaml: all seven); a session that cannot finish all seven runs one whole combination (its
# stage 1, then both seeds), because a stage-1 checkpoint does not outlive the machine and a re-run differs in
# its floats. Re-running this script resumes: finished points are skipped and an interrupted point resumes
# from its last epoch checkpoint. JOBS (default 2) is how many stage-2 points run at once: JOBS=1 runs the
# seeds one after the other on one core while another block uses the other core. Each STAGES_YAML gets its own
# stage-2 grid (run3_grid_<name>.yaml, only its combinations), so two chains with different combinations can
# run at once, one per core, without both picking up the same stage-2 point.
#   1. one stage 1 per combination (the committed recipe: cpu preset, 12 epochs of L_AL, seed 0, + embed_dim)
#   2. run3_grid_<name>.yaml, written from the finished stage 1s: every combination x seeds 0, 1 from its own stage 1
#   3. stage 2
set -uo pipefail
cd /work/evidence-emb
export PYTHONPATH=/work/evidence-emb OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
RUNS=/work/evidence-runs
STAGES=${1:-$RUNS/fusion_stages.yaml}
GRID=$RUNS/run3_grid_$(basename "$STAGES")
$PY -m workbench sweep notebooks/02_pretrain_reference.ipynb --grid "$STAGES" \
    --jobs 2 --cpus-per-point 1 --set preset=cpu --set 'extra={embed_dim: 2048}' --out $RUNS/stage1_emb
$PY - "$RUNS" "$STAGES" "$GRID" <<'PYEOF' || exit 1
import json, sys
from pathlib import Path
import yaml
runs, grid = Path(sys.argv[1]), Path(sys.argv[3])
wanted = set(yaml.safe_load(Path(sys.argv[2]).read_text())["stages"])
lines = [f"# Issue 19 run 3, stage 2: written by run3.sh from the finished stage 1s of {sys.argv[2]} in stage1_emb/"]
for status in sorted((runs / "stage1_emb").glob("*/status.json")):
    s = json.loads(status.read_text())
    if s["point"]["stages"] not in wanted:
        continue
    ckpt = status.parent / "pretrain" / "checkpoint.pt"
    if s.get("state") != "done" or not ckpt.is_file():
        print(f"run3: stage 1 {status.parent.name} is {s.get('state')}: its stage-2 points wait", file=sys.stderr)
        continue
    for seed in (0, 1):
        lines.append(f"- {{stages: {s['point']['stages']}, seed: {seed}, init_checkpoint: {ckpt}}}")
grid.write_text("\n".join(lines) + "\n")
print(f"run3: {len(lines) - 1} stage-2 points", file=sys.stderr)
PYEOF
exec $PY -m workbench sweep notebooks/03_train_mar.ipynb --grid "$GRID" \
    --jobs "${JOBS:-2}" --cpus-per-point 1 --set preset=cpu --set epochs=10 --set lr=2e-4 --set weight_decay=0.025 \
    --set 'extra={embed_dim: 2048, milestones: [12, 17], eval_every: 2}' --out $RUNS/run3
