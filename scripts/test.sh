#!/usr/bin/env bash
# The test command (README and CI): set up the environment, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
