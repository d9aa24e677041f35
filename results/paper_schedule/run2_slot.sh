#!/usr/bin/env bash
# Issue 19 run 2: Table 3 (w/o RAL, w/o CML, w/o both; 3 seeds each) at 10 epochs of the paper's stage-2
# schedule (lr 2e-4, weight decay 0.025, milestones 12/17 -> no decay within 10 epochs). Why 10: in run 1
# (20 epochs, seeds 0/1) mAP rises 24.3 -> 27.7/27.9 by epoch 10 and ends 27.7-28.1 at epoch 18: the
# decays at 12 and 17 add <0.5 mAP, and 9 runs x 20 epochs (~30 CPU-h at 8 min/epoch) do not fit the
# budget. Code a88c16f in /work/evidence (the same as run 1); one point at a time, one thread.
cd /work/evidence
export PYTHONPATH=/work/evidence OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S1=$(ls /work/evidence-runs/stage1/*/pretrain/checkpoint.pt)
exec /work/main/.venv/bin/python -m workbench sweep notebooks/03_train_mar.ipynb --grid "$1" \
    --jobs 1 --cpus-per-point 1 --set preset=cpu --set epochs=10 --set lr=2e-4 --set weight_decay=0.025 \
    --set 'extra={milestones: [12, 17], eval_every: 2}' --set "init_checkpoint=$S1" --out /work/evidence-runs/run2
