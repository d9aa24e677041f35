#!/usr/bin/env bash
# Issue 19: Table 3's w/o L_CML, w/o L_RAL and w/o both rows from run 3's layer4 stage 1 with the 2048-d
# embedding, seeds 0 and 1, at run 3's stage-2 settings (10 epochs of the paper's schedule, evaluated every 2), so
# they pair with run 3's layer4 runs (the full row) from the same checkpoint on the same machine. Code e55812e in
# /work/evidence-emb; one thread a point, JOBS (default 2) points at once. Session 1 ran the two seed-0 points
# with JOBS=2; session 2 the other four with JOBS=1 beside a fusion block (run3.sh); finished points are skipped.
cd /work/evidence-emb
export PYTHONPATH=/work/evidence-emb OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m workbench sweep notebooks/03_train_mar.ipynb \
    --grid /work/evidence-runs/run3_ablation.yaml \
    --jobs "${JOBS:-2}" --cpus-per-point 1 --set preset=cpu --set epochs=10 --set lr=2e-4 --set weight_decay=0.025 \
    --set 'extra={embed_dim: 2048, milestones: [12, 17], eval_every: 2}' --out /work/evidence-runs/run3_ablation
