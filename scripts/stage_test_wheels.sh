#!/usr/bin/env bash
# Stage pytest and everything it imports (pure-Python wheels, ~2 MB) for an
# offline GPU machine that has torch but no pytest; scripts/gpu_check.sh unpacks
# them from .devwheels/extra when `import pytest` fails there. Copy .devwheels/extra
# to that machine along with the repository (docs/gpu.md).
#
#   bash scripts/stage_test_wheels.sh            # for Python 3.12
#   PYTHON_VERSION=3.11 bash scripts/stage_test_wheels.sh
#
# pip resolves the dependencies for the target Python (pytest 8.4+ also needs
# pygments, which a fixed list of names missed), so the set stays complete when
# pytest changes what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.devwheels/extra
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
mkdir -p "$DEST"
python3 -m pip download -q --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --implementation py --abi none --platform any -d "$DEST" "pytest>=8.0"
ls -l "$DEST"
