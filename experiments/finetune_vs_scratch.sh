#!/usr/bin/env bash
# Fine-tuning the bundled encoder (--init general) against training from scratch, at the same time budgets,
# on a photo folder of categories the bundled encoders never saw; scored on that folder's held-out queries.
#
#   bash experiments/finetune_vs_scratch.sh [BUDGET ...]      # default: 10m 20m
#
# Data (extracted, not committed): data/caltech-heldout/{train,test} (the held-out categories of
# experiments/caltech_heldout.txt). Each run trains on train/ only, indexes it with the run's own recipe,
# and is evaluated with test/ as queries: results/photos/finetune/<start>-<budget>/report.{md,json} and
# run/ (metrics.jsonl, ingest.json, time.txt). Run it with nothing else on the CPU: the budget is wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/caltech-heldout}
OUT=results/photos/finetune
BUDGETS=("$@")
[ ${#BUDGETS[@]} -eq 0 ] && BUDGETS=(10m 20m)
for budget in "${BUDGETS[@]}"; do
  for start in general scratch; do
    name=$start-$budget
    run=runs/finetune-$name
    init=()
    [ "$start" = general ] && init=(--init general)
    mkdir -p "$OUT/$name/run"
    if [ ! -f "$run/checkpoint.pt" ]; then
      /usr/bin/time -o "$OUT/$name/run/time.txt" -f "train: %e s wall, %M KiB peak" \
        $PY scripts/train.py --data "$DATA/train" --out "$run" --time-budget "$budget" "${init[@]}" --no-progress
    fi
    cp "$run/metrics.jsonl" "$run/ingest.json" "$OUT/$name/run/"
    idx=indexes/finetune-$name
    /usr/bin/time -a -o "$OUT/$name/run/time.txt" -f "index: %e s wall, %M KiB peak" \
      $PY scripts/build_index.py --checkpoint "$run/checkpoint.pt" --out "$idx" --overwrite --no-progress
    $PY scripts/evaluate.py --index "$idx" --queries "$DATA" --out "$OUT/$name" \
      --baselines pixels pixels-whitened --near-dup-samples 200 --no-progress
  done
done
