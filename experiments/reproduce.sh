#!/usr/bin/env bash
# One command per reproduction: train a preset on CIFAR-10, export the bank to an index,
# evaluate it, and keep the measured numbers (JSON) and the wall time next to REPRODUCTION.md.
#
#   bash experiments/reproduce.sh cpu-cifar     # 2 CPU cores: ~42 min (measured), kNN ~60 %
#   bash experiments/reproduce.sh paper-cifar   # the paper's run, for a GPU (see REPRODUCTION.md)
#
#   DATA=...      CIFAR-10 folder/archive with train/ and test/ (default: the shared JPEG copy)
#   EPOCHS=N      shorten the preset's schedule (e.g. to fit a GPU time budget); resumable:
#                 rerun with a larger EPOCHS to continue the same run
#   PYTHON=...    interpreter (default .venv/bin/python if present, else python)
# Outputs: runs/<preset>/ (checkpoint, metrics.jsonl), results/<preset>/ (metrics.jsonl,
# curves.png, wall_time.txt, run.json) and, where FAISS imports, indexes/<preset> and
# results/<preset>-eval/ (report.json, report.md, figures).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:?usage: bash experiments/reproduce.sh cpu-cifar|paper-cifar}
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
RUN=runs/$PRESET
OUT=results/$PRESET
mkdir -p "$OUT"
args=(--data "$DATA" --out "$RUN" --preset "$PRESET" --no-progress)
[ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
[ -f "$RUN/checkpoint.pt" ] && args+=(--resume)

start=$(date +%s)
$PYTHON scripts/train.py "${args[@]}"
end=$(date +%s)
cp "$RUN/metrics.jsonl" "$RUN/curves.png" "$OUT/"
$PYTHON - "$RUN" "$OUT" "$PRESET" "$((end - start))" <<'PY'
import json, platform, sys, time
import torch
run, out, preset, wall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
last = rows[-1]
info = {
    "preset": preset, "epochs_done": last["epoch"], "knn_top1": last.get("knn_top1"), "knn_1nn": last.get("knn_1nn"),
    "train_seconds": last.get("elapsed"), "wall_seconds_this_call": wall,
    "images_per_s_mean": sum(r["images_per_s"] for r in rows if "images_per_s" in r) / max(1, len(rows) - 1),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
}
json.dump(info, open(f"{out}/run.json", "w"), indent=1)
print(json.dumps(info, indent=1))
PY
echo "train wall seconds (this call): $((end - start))" > "$OUT/wall_time.txt"

if $PYTHON -c "import faiss" 2>/dev/null; then
  $PYTHON scripts/build_index.py --checkpoint "$RUN/checkpoint.pt" --out "indexes/$PRESET.new"
  rm -rf "indexes/$PRESET" && mv "indexes/$PRESET.new" "indexes/$PRESET"
  $PYTHON scripts/evaluate.py --index "indexes/$PRESET" --queries "$DATA" --out "results/$PRESET-eval" \
    --near-dup-samples 500 --no-progress
else
  echo "FAISS is not importable here: kNN accuracy per epoch is in $OUT/metrics.jsonl;" \
       "run the index + evaluation steps on a machine with FAISS (README)." >&2
fi
