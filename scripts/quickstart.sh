#!/usr/bin/env bash
# The README's main command: set up, train on the embedded CIFAR-10, build the index, serve the app.
#
#   TIME_BUDGET=7m   training time of the cpu-cifar-fast preset (its full budget is 42m): the first
#                    steps are timed and the epochs planned to end on time with a finished schedule
#   DATA=...         any image folder or .tar/.tar.gz archive (default: the shared CIFAR-10 copy);
#                    the preset then follows the images' sizes (scripts/train.py prints why)
#   RUN=runs/quickstart  INDEX=indexes/cifar10  PORT=7860
# Re-running reuses a finished run and index, and resumes an interrupted run (its plan is saved).
set -euo pipefail
cd "$(dirname "$0")/.."
TIME_BUDGET=${TIME_BUDGET:-7m}
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
RUN=${RUN:-runs/quickstart}
INDEX=${INDEX:-indexes/cifar10}
PORT=${PORT:-7860}

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
