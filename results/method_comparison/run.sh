#!/usr/bin/env bash
# Issue 23: the method comparison (notebook 09) on CUHK01 from the paper-schedule stage 1 (24.3 mAP, the
# stage 1 of runs 1-2), seeds 0-2, two points at once, one thread each, code 40d2503 in /work/evidence-methods.
# MAR: 2 epochs at the paper's stage-2 settings (SGD, lr 2e-4, weight decay 0.025). Cluster-Contrast and
# the hybrid: their recipe (Adam, lr 3.5e-4, weight decay 5e-4) for 5 epochs: a clustering epoch trains the
# target half of a MAR batch only, plus one feature pass and DBSCAN; the 5 were set from a first epoch that
# ran faster than the later ones, so they overshoot MAR's wall clock, and the results table "At the same
# training wall clock" reads every run at MAR's (all runs evaluate after each epoch). Running it again resumes.
# Afterwards:
#   python -m workbench report STAGE1/pretrain --csv results/method_comparison/stage1.csv
#   python -m workbench results method_comparison $OUT/points --out results/method_comparison \
#       --notes results/method_comparison/NOTES.md
cd /work/evidence-methods
export PYTHONPATH=/work/evidence-methods OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S1=$(ls /work/evidence-runs/stage1/*/pretrain/checkpoint.pt)
OUT=/work/evidence-runs/run5_methods
mkdir -p $OUT
exec /work/main/.venv/bin/python -m papermill notebooks/09_method_comparison.ipynb $OUT/09_method_comparison.ipynb \
    -p preset cpu -p epochs 2 -p lr 2e-4 -p weight_decay 0.025 -p init_checkpoint "$S1" -p jobs 2 \
    -y '{seeds: [0, 1, 2], extra: {eval_every: 1, milestones: [12, 17]},
         cluster: {cc_k1: 10, cc_k2: 3, cc_eps: 0.5, cc_min_samples: 2, cc_label_weight: 0.25,
                   optimizer: adam, lr: 3.5e-4, weight_decay: 5e-4, epochs: 5}}' \
    -p out_dir $OUT --log-output
