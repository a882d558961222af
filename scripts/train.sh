#!/usr/bin/env bash
# Train HyperIQA with the guide's defaults; every flag is passed through to train.py.
#   ./scripts/train.sh [--loader dali|pillow] [any train.py flag ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" train.py "$@"
