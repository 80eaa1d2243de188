#!/usr/bin/env bash
# Create .venv and install what the project needs; safe to re-run (idempotent).
#   DEV=1 also installs the test tools and Debian's chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
req=requirements.txt
[ "${DEV:-0}" = 1 ] && req=requirements-dev.txt
hash=$(cat requirements.txt requirements-dev.txt requirements-milvus.txt pyproject.toml | sha256sum | cut -c1-12)
stamp=".venv/.installed-$hash-${DEV:-0}"
# the dev install holds everything the plain one needs: a DEV=1 stamp satisfies a plain set-up too
if [ ! -f "$stamp" ] && { [ "${DEV:-0}" = 1 ] || [ ! -f ".venv/.installed-$hash-1" ]; }; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r "$req"
  # Milvus Lite without its declared faiss-cpu, which would overwrite faiss-gpu's `faiss` module
  .venv/bin/pip install --quiet --no-deps -r requirements-milvus.txt
  # the project itself, editable: scripts, tests and app.py import its packages from here
  .venv/bin/pip install --quiet --no-deps -e .
  touch "$stamp"
fi
if [ "${DEV:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "note: install Debian's chromium (/usr/bin/chromium) to run the browser tests" >&2
  fi
fi
