#!/usr/bin/env bash
# Train HyperIQA with train.py's defaults; every flag is passed through to train.py.
#   ./scripts/train.sh [--loader dali|pillow] [any train.py flag ...]
#   ./scripts/train.sh --gpus 8 [...]   one process per GPU through torchrun (DDP);
#                                       --batch_size stays the global batch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python

gpus=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) gpus="${2:?--gpus needs a number}"; shift 2 ;;
    --gpus=*) gpus="${1#--gpus=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "$gpus" ]; then
  case "$gpus" in
    ''|*[!0-9]*|0) echo "train.sh: error: --gpus needs a positive number, got '$gpus'" >&2; exit 2 ;;
  esac
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$gpus" train.py ${args[@]+"${args[@]}"}
fi
exec "$PY" train.py ${args[@]+"${args[@]}"}
