#!/usr/bin/env bash
# Zero-shot scores of a bundled encoder candidate against the shipped thumbnail encoder and raw pixels,
# on images neither saw in training: held-out Caltech-101 categories, Tiny-ImageNet test/, CIFAR-10 test/.
#
#   bash experiments/bundled_encoders.sh ENCODER_PT NAME
#
# ENCODER_PT: an exported encoder.pt (instdisc-search export-encoder export --out DIR) or a checkpoint;
# NAME: the report folder's name. Data (extracted, not committed): data/caltech-heldout/{train,test}
# (the held-out categories of experiments/caltech_heldout.txt, 10 queries each), data/tinyimagenet-subset,
# data/cifar10. Reports: results/bundled-encoders/<set>/<NAME>/report.{md,json} and index_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ENC=$1
NAME=$2
PY=${PY:-.venv/bin/python}
INDEX_FLAGS=${INDEX_FLAGS:-}  # e.g. "--no-whiten": another index recipe of the same encoder
# SETS="caltech-heldout" scores one set only
OUT=results/bundled-encoders
for set in ${SETS:-caltech-heldout tinyimagenet-test cifar10-test}; do
  case $set in
    caltech-heldout) gallery=data/caltech-heldout/train; queries=data/caltech-heldout ;;
    tinyimagenet-test) gallery=data/tinyimagenet-subset/train; queries=data/tinyimagenet-subset ;;
    cifar10-test) gallery=data/cifar10/train; queries=data/cifar10 ;;
  esac
  idx=indexes/zero-shot-$set-$NAME
  mkdir -p "$OUT/$set/$NAME"
  if [ ! -f "$idx/manifest.json" ]; then  # index_time.txt: wall time and peak RSS of building the index
    /usr/bin/time -o "$OUT/$set/$NAME/index_time.txt" -f "index $set $NAME: %e s wall, %M KiB peak" \
      $PY scripts/build_index.py --checkpoint "$ENC" --images "$gallery" --out "$idx" --no-progress $INDEX_FLAGS
  fi
  $PY scripts/evaluate.py --index "$idx" --queries "$queries" --out "$OUT/$set/$NAME" \
    --baselines pixels pixels-whitened --near-dup-samples 200 --no-progress
done
