#!/usr/bin/env bash
# The README's main command: set up, train on the embedded CIFAR-10, build the index, serve the app.
#
#   EPOCHS=8     epochs of the cpu-cifar preset's cosine schedule (the full preset is 45;
#                8 keeps a newcomer's first run to ~10 minutes on 2 CPU cores)
#   DATA=...     any image folder or .tar/.tar.gz archive (default: the shared CIFAR-10 copy)
#   RUN=runs/quickstart  INDEX=indexes/cifar10  PORT=7860
# Re-running reuses a finished run and index, and resumes an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-8}
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
RUN=${RUN:-runs/quickstart}
INDEX=${INDEX:-indexes/cifar10}
PORT=${PORT:-7860}

bash scripts/setup.sh
PY=.venv/bin/python
if [ -f "$RUN/checkpoint.pt" ]; then
  $PY scripts/train.py --data "$DATA" --out "$RUN" --preset cpu-cifar --epochs "$EPOCHS" --resume
else
  $PY scripts/train.py --data "$DATA" --out "$RUN" --preset cpu-cifar --epochs "$EPOCHS"
fi
if [ ! -f "$INDEX/manifest.json" ] || [ "$RUN/checkpoint.pt" -nt "$INDEX/manifest.json" ]; then
  rm -rf "$INDEX.new"
  $PY scripts/build_index.py --checkpoint "$RUN/checkpoint.pt" --out "$INDEX.new"
  rm -rf "$INDEX" && mv "$INDEX.new" "$INDEX"
fi
echo "serving http://127.0.0.1:$PORT (Ctrl-C to stop)"
exec $PY app.py --index "$INDEX" --port "$PORT"
