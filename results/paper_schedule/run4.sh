#!/usr/bin/env bash
# Issue 19 run 4: why stage 2 barely moves. Each point: seed 0, the paper's stage-2 schedule (lr 2e-4, weight
# decay 0.025, milestones 12/17) cut to 4 epochs (the session's CPU budget: 4 points in ~70 min on two
# cores), evaluation after every epoch, and each L_MAR term's share of the shared weights' update every
# 10 steps (grad_terms_every). Code 5fca7c1 pinned in /work/evidence-run4; one thread. Usage: run4.sh GRID OUT
cd /work/evidence-run4
export PYTHONPATH=/work/evidence-run4 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S1=$(ls /work/evidence-runs/stage1/*/pretrain/checkpoint.pt)
exec /work/main/.venv/bin/python -m workbench sweep notebooks/03_train_mar.ipynb --grid "$1" \
    --jobs 1 --cpus-per-point 1 --set preset=cpu --set epochs=4 --set lr=2e-4 --set weight_decay=0.025 \
    --set "extra={milestones: [12, 17], eval_every: 1, grad_terms_every: 10}" --set "init_checkpoint=$S1" --out "$2"
