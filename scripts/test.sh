#!/usr/bin/env bash
# The test command (README and CI): set up the environment, then run the whole suite, one worker per
# core (pytest-xdist; each worker and its child processes use one thread). TEST_WORKERS=0 runs it in
# one process; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-auto}" --dist worksteal "$@"
