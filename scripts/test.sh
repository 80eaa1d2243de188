#!/usr/bin/env bash
# The test command (README and CI): set up the environment, then run the whole suite in parallel
# (pytest-xdist, one more worker than cores: much of a test's time is process start-up and waiting on
# servers; each worker and its child processes use one thread). TEST_WORKERS=N sets the workers,
# TEST_WORKERS=0 runs it in one process; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=1 bash scripts/setup.sh
workers=${TEST_WORKERS:-$(( $(nproc) + 1 ))}
exec .venv/bin/python -m pytest -q -n "$workers" --dist worksteal --durations=10 "$@"
