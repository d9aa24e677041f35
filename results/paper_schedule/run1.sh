#!/usr/bin/env bash
# Issue 19 run 1: full L_MAR, the paper's stage-2 schedule (20 epochs, lr 2e-4, x0.1 from epochs 12 and 17,
# weight decay 0.025), evaluation after every epoch, seeds 0-2, from the stage 1 of stage1.sh; code a88c16f
# in /work/evidence; two points at once, one thread each. Running it again resumes every unfinished point
# from its last epoch checkpoint.
cd /work/evidence   # a git worktree of this repository at a88c16f
export PYTHONPATH=/work/evidence
S1=$(ls /work/evidence-runs/stage1/*/pretrain/checkpoint.pt)
exec /work/main/.venv/bin/python -m workbench sweep notebooks/03_train_mar.ipynb --grid /work/evidence-runs/seeds.yaml \
    --jobs 2 --set preset=cpu --set epochs=20 --set lr=2e-4 --set weight_decay=0.025 \
    --set 'extra={milestones: [12, 17], eval_every: 1}' --set "init_checkpoint=$S1" --out /work/evidence-runs/run1
