#!/usr/bin/env bash
# GPU checks for a bare CUDA machine (torch, numpy, scipy, pillow preinstalled;
# DALI on PYTHONPATH, e.g. after `source .devwheels/p1/install_dali.sh`).
# Runs the gpu-marked tests, a short DALI-vs-Pillow-vs-synthetic benchmark and
# a one-epoch torchrun (world size 1) training run with --loader dali.
# Everything it finds goes under $OUT (default ./gpu_check_out).
#
#   OUT=/some/dir bash scripts/gpu_check.sh [bench seconds per row, default 15]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
SECONDS_PER_ROW=${1:-15}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }

# pytest is not on every GPU image: install it from staged wheels when present.
if ! "$PY" -c "import pytest" 2>/dev/null && ls .devwheels/extra/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/pytest-site .devwheels/extra/*.whl
  export PYTHONPATH=/tmp/pytest-site${PYTHONPATH:+:$PYTHONPATH}
fi

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, nvidia.dali as d; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'DALI', d.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/gpu.txt"

step "gpu tests"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -n 15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "benchmark (${SECONDS_PER_ROW}s per row)"
timeout 420 "$PY" bench/throughput.py --device cuda --seconds "$SECONDS_PER_ROW" \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "torchrun world size 1, --loader dali, one epoch"
"$PY" scripts/make_demo_dataset.py --out "$OUT/demo_data" --num_images 48 >/dev/null
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 train.py \
  --dataset_root "$OUT/demo_data" --train_json "$OUT/demo_data/demo.json" \
  --checkpoint_dir "$OUT/ddp_run" --backbone_weights none --loader dali --device cuda \
  --epochs 1 --batch_size 32 --train_patch_num 8 --val_patch_num 8 --no_progress 2>&1 \
  | tee "$OUT/ddp_run.txt" | tail -n 8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
rm -rf "$OUT/demo_data" "$OUT"/ddp_run/*.pkl   # keep the logs and metrics, not the weights

step "exit status $status"
exit $status
