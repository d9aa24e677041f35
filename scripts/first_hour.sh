#!/usr/bin/env bash
# A new user's first hour, timed: a fresh clone of this checkout's HEAD, then README's two commands
# (make demo, make test) and notebook 00 at smoke scale. Prints what results/demo/first_hour.txt holds and
# writes the demo's rows to OUT/runs.csv and its histories beside (what `make demo` printed).
# Usage: bash scripts/first_hour.sh OUT_DIR [CLONE_DIR]   (results/demo/recipe.yaml runs it)
set -euo pipefail
OUT=$(realpath -m "$1"); CLONE=$(realpath -m "${2:-$(mktemp -d)/reid-workbench}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
rm -rf "$CLONE"
git clone --quiet "$REPO" "$CLONE"
cd "$CLONE"
commit=$(git rev-parse --short=7 HEAD)
load=$(cut -d' ' -f1-3 /proc/loadavg)
seconds() { date +%s.%N; }
say() { awk -v s="$1" 'BEGIN { m = int(s / 60); printf "%d min %02d s", m, s - 60 * m }'; }

t0=$(seconds); make .venv/.installed > "$OUT/make_venv.log" 2>&1; t1=$(seconds)
make demo > "$OUT/make_demo.log" 2>&1; t2=$(seconds)
.venv/bin/python -m papermill notebooks/00_quickstart.ipynb /dev/null -p preset smoke --cwd notebooks \
    > "$OUT/notebook00.log" 2>&1; t3=$(seconds)
set +e
CI=true make test > "$OUT/make_test.log" 2>&1; status=$?
set -e
t4=$(seconds)
summary=$(grep -E "^=+ .*(passed|failed).* =+$" "$OUT/make_test.log" | tail -1 | sed -E 's/^=+ (.*) =+$/\1/')

demo_run=$(grep -oE "run folder: [^ ]+" "$OUT/make_demo.log" | tail -1 | cut -d' ' -f3)
.venv/bin/python -m workbench report "$demo_run" --csv "$OUT/runs.csv" > /dev/null
cp "$demo_run/pretrain/history.csv" "$OUT/stage1_history.csv"
cp "$demo_run/mar/history.csv" "$OUT/stage2_history.csv"

echo "# bash scripts/first_hour.sh  (a fresh clone of commit $commit, $(date -u +%F), $(nproc) CPU cores, load average at start: $load)"
echo "make demo, first time: $(say "$(echo "$t2 - $t0" | bc)") (the .venv $(say "$(echo "$t1 - $t0" | bc)"), then the demo $(say "$(echo "$t2 - $t1" | bc)"))"
echo "notebook 00 with preset smoke (papermill): $(say "$(echo "$t3 - $t2" | bc)")"
echo "make test (CI=true, 2 workers): $(say "$(echo "$t4 - $t3" | bc)"), ${summary:-no pytest summary} (exit $status)"
