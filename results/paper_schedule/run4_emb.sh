#!/usr/bin/env bash
# Issue 19 run 4 on the embedding model: lambda_ref 5 at run 3's stage-2 settings (10 epochs of the paper's
# schedule, evaluated every 2), plus each L_MAR term's share of the shared weights' update every 25 steps
# (grad_terms_every; it does not change the training computation). Code e55812e in /work/evidence-emb; one
# thread, the two seeds one after the other (JOBS=1) beside a run3.sh block on the other core. Re-running resumes.
cd /work/evidence-emb
export PYTHONPATH=/work/evidence-emb OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m workbench sweep notebooks/03_train_mar.ipynb \
    --grid /work/evidence-runs/run4_emb.yaml \
    --jobs "${JOBS:-1}" --cpus-per-point 1 --set preset=cpu --set epochs=10 --set lr=2e-4 --set weight_decay=0.025 \
    --set 'extra={embed_dim: 2048, milestones: [12, 17], eval_every: 2, grad_terms_every: 25}' --out /work/evidence-runs/run4_emb
