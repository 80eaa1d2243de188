#!/usr/bin/env bash
# The main command: set up, train on CIFAR-10 (or your own images), build the index, serve the app.
#
#   DATA=...         any image folder or .tar/.tar.gz archive; the preset then follows the images' sizes.
#                    Default: CIFAR-10 -- the copy at $SHARED_CIFAR when it exists, otherwise torchvision's
#                    download (about 170 MB); with neither, it stops at once and says how to set DATA.
#   TIME_BUDGET=7m   training time of the cpu-cifar-fast preset (its full budget is 42m): the first
#                    steps are timed and the epochs planned to end on time with a finished schedule
#   RUN=runs/quickstart  INDEX=indexes/cifar10  PORT=7860
#   SHARED_CIFAR=../shared/datasets/cifar10-jpeg.tar.gz   a local CIFAR-10 archive to prefer over the download
# Re-running reuses a finished run and index, and resumes an interrupted run (its plan is saved).
set -euo pipefail
cd "$(dirname "$0")/.."
TIME_BUDGET=${TIME_BUDGET:-7m}
SHARED_CIFAR=${SHARED_CIFAR:-../shared/datasets/cifar10-jpeg.tar.gz}
if [ -z "${DATA:-}" ]; then
  if [ -f "$SHARED_CIFAR" ]; then DATA=$SHARED_CIFAR; else DATA=cifar10; fi
fi
RUN=${RUN:-runs/quickstart}
INDEX=${INDEX:-indexes/cifar10}
PORT=${PORT:-7860}
echo "data: $DATA"

bash scripts/setup.sh
PY=.venv/bin/python
if [ -f "$RUN/checkpoint.pt" ]; then
  $PY scripts/train.py --data "$DATA" --out "$RUN" --resume
else
  $PY scripts/train.py --data "$DATA" --out "$RUN" --time-budget "$TIME_BUDGET"
fi
if [ ! -f "$INDEX/manifest.json" ] || [ "$RUN/checkpoint.pt" -nt "$INDEX/manifest.json" ]; then
  rm -rf "$INDEX.new"
  $PY scripts/build_index.py --checkpoint "$RUN/checkpoint.pt" --out "$INDEX.new"
  rm -rf "$INDEX" && mv "$INDEX.new" "$INDEX"
fi
echo "serving http://127.0.0.1:$PORT (Ctrl-C to stop)"
exec $PY app.py --index "$INDEX" --port "$PORT"
