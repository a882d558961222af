#!/usr/bin/env bash
# Stage pytest (pure-Python wheels, ~1 MB) for an offline GPU machine that has
# torch but no pytest; scripts/gpu_check.sh installs them from .devwheels/extra.
# Carry .devwheels/extra along with the last DALI part (see README, GPU notes).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.devwheels/extra
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  -d "$DEST" pytest pluggy iniconfig packaging
ls -l "$DEST"
