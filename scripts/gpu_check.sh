#!/usr/bin/env bash
# The GPU check: does the DALI GPU path (mixed decoder, crops on the device, the
# CUDA trainer) work on this machine? Built for a first run on a GPU machine lent for a few minutes:
# one call of under 10 minutes, every step under its own time limit, every
# step's verdict in one summary, the results in at most 8 files under $OUT.
#
#   OUT=/some/dir bash scripts/gpu_check.sh [bench seconds per row, default 3]
#   bash scripts/gpu_check.sh --plan      # the steps and their time limits
#   GPU_CHECK_STANDIN=1 OUT=/some/dir bash scripts/gpu_check.sh   # CPU stand-in (CI)
#   GPU_CHECK_ONLY=smoke,tests ...     # rerun some steps (the result is then FAIL)
#   GPU_CHECK_TESTS="tests/test_dali.py -m gpu" ...   # another pytest selection
#
# Needs Python with torch, torchvision, numpy, scipy, pillow and tqdm, and NVIDIA
# DALI importable: nvidia-dali-cuda120 (driver >= 525.60) or nvidia-dali-cuda130
# (driver >= 580), installed or on PYTHONPATH. pytest is taken from the wheels in
# .devwheels/extra (scripts/stage_test_wheels.sh) when it is missing. The
# repository need not be installed: the check puts its root on PYTHONPATH.
#
# Steps (a failed step does not stop the next; only a failed preflight does):
#   preflight  in one pass: every module the later steps import, libnvjpeg (the one
#              of DALI's CUDA major) loaded by DALI, a CUDA device; else ONE line
#              naming all that is missing, and exit 1, at once. Records the device,
#              driver, torch, CUDA and DALI versions (scripts/gpu_check.py)
#   smoke      training's geometry (384x512, 25 patches of 224) and dtype, 3 windows
#              with prefetch, through the "mixed" decoder against DALI's CPU backend,
#              per patch: mean and max difference, each with a limit (seconds;
#              scripts/gpu_smoke.py)
#   tests      the gpu-marked tests (only the files holding them) with
#              HYPERIQA_GPU_STRICT=1: a gpu test that skips is a failure; the
#              verdict says how many ran
#   bench      bench/throughput.py, a few seconds per row (cuDNN autotuner both
#              ways); train/dali-gpu ÷ train/synthetic goes on the RESULT line,
#              with a WARN under 0.9 (the goal is >= 0.95)
#   train      torchrun (1 process) train.py --loader dali, 2 epochs on a demo dataset
#              (cuDNN autotuner on, as train.py's default on CUDA)
#
# Files under $OUT (8 at most, no subfolders):
#   summary.txt         versions, one verdict line per step, the tail of each failed
#                       step's log, a RESULT line (with the loader ratio)
#   env.txt             the preflight's details (nvidia-smi, library versions, warnings)
#   smoke.txt tests.txt bench.txt train.txt   each step's full log
#   bench.json          the benchmark's numbers
#   train_metrics.json  the training run's metrics.json
#
# Stand-in mode (GPU_CHECK_STANDIN=1) runs the same steps on DALI's CPU backend,
# with small inputs and no CUDA needed, so CI keeps this script working between
# GPU runs (tests/test_gpu_check.py). It proves the plumbing, not the GPU.
set -uo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(dirname "$(dirname "$SELF")")

# -- time limits: the whole check fits a 10-minute slot; the steps get 540 s of it
STEPS=(preflight smoke tests bench train)
declare -A LIMIT=([preflight]=40 [smoke]=60 [tests]=170 [bench]=140 [train]=105)
KILL_GRACE=5   # after a step's limit: SIGTERM, then SIGKILL this much later
BUDGET=540     # the sum of the limits and grace periods may not exceed it

total_limit() {
  local total=0 step
  for step in "${STEPS[@]}"; do total=$((total + LIMIT[$step] + KILL_GRACE)); done
  echo "$total"
}

print_plan() {
  local step
  for step in "${STEPS[@]}"; do
    echo "step $step limit=${LIMIT[$step]}s"
  done
  echo "kill grace: ${KILL_GRACE}s per step"
  echo "time budget: $(total_limit)s of ${BUDGET}s (step limits plus kill grace)"
}

# -- the steps (each runs as `gpu_check.sh --step NAME`, output to its log) ----------------

standin() { [ "${GPU_CHECK_STANDIN:-0}" = "1" ]; }

step_preflight() {
  # One pass over everything the later steps need (scripts/gpu_check.py preflight):
  # the modules they import, libnvjpeg loaded by DALI, a CUDA device. On failure
  # one line naming all of it (also in $WORK/fail_line.txt) and exit 1; otherwise
  # the versions for the summary in $WORK/versions.txt.
  cat "$WORK/pytest.log" 2>/dev/null
  # env.txt is read by people: the shell's "command not found" says nothing useful.
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi 2>&1 || echo "nvidia-smi failed (exit code $?): the NVIDIA driver may not be loaded"
  else
    echo "nvidia-smi: not found on PATH (it comes with the NVIDIA driver; none is installed here, or its tools are not on PATH)"
  fi
  "$PY" scripts/gpu_check.py preflight
}

step_smoke() {
  # Training's geometry (384x512, 25 patches of 224) and dtype, 3 windows with
  # prefetch, through the mixed decoder against DALI's CPU backend, per patch.
  "$PY" scripts/gpu_smoke.py --work "$WORK" $(standin && echo --standin)
}

unpack_pytest() {
  # Runs before the preflight, in the main shell, so that every step sees it; the
  # preflight names pytest if it is still missing.
  "$PY" -c "import pytest" 2>/dev/null && return 0
  local wheels=("$ROOT"/.devwheels/extra/*.whl)
  [ -e "${wheels[0]}" ] || return 0
  # Pure-Python wheels: unpacking them onto the path is all an install does here.
  "$PY" - "$WORK/pytest-site" "${wheels[@]}" <<'PY'
import sys
import zipfile

for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PY
  export PYTHONPATH="$WORK/pytest-site:$PYTHONPATH"
  echo "pytest: unpacked ${#wheels[@]} wheels from .devwheels/extra"
}

step_tests() {
  local selection
  if standin; then
    selection=${GPU_CHECK_TESTS:-tests/test_dali.py::test_batches_shapes_and_coverage}
  else
    # Only the files that hold gpu tests: a module that cannot be collected for a
    # reason that has nothing to do with the GPU does not fail the check.
    selection=${GPU_CHECK_TESTS:-"-m gpu $("$PY" scripts/gpu_check.py gpu-test-files)"}
  fi
  # shellcheck disable=SC2086  # the selection is a list of pytest arguments
  HYPERIQA_GPU_STRICT=1 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    $selection 2>&1 | tee "$WORK/pytest.out"
  local rc=${PIPESTATUS[0]} counts
  counts=$(grep -h "^strict gpu run:" "$WORK/pytest.out" | tail -n 1)
  if [ -z "$counts" ]; then
    echo "no 'strict gpu run' line: pytest did not finish" | tee "$WORK/tests.note"
    return 1
  fi
  echo "$counts" >"$WORK/tests.note"
  local ran gpu_ran
  ran=$(sed -E 's/^strict gpu run: ([0-9]+) tests ran.*/\1/' <<<"$counts")
  gpu_ran=$(sed -E 's/.* ([0-9]+) of them gpu-marked.*/\1/' <<<"$counts")
  if standin && [ "$ran" -lt 1 ]; then
    echo "no test ran; $counts" >"$WORK/tests.note"
    return 1
  fi
  if ! standin && [ "$gpu_ran" -lt 1 ]; then
    echo "no gpu-marked test ran; $counts" >"$WORK/tests.note"
    return 1
  fi
  return $rc
}

step_bench() {
  local args
  if standin; then
    # The DALI rows and train/synthetic, one tiny batch each (a CPU training step
    # takes seconds): enough for the loader ratio to reach the RESULT line.
    args=(--device cpu --images 4 --image_size 240x256 --resize 240x256 --batch_size 4
      --patch_num 2 --seconds 0.01 --warmup 0 --epoch_images 8 --num_workers 0
      --only loader/dali,train/synthetic,train/dali)
  else
    args=(--device cuda --images 64 --seconds "$SECONDS_PER_ROW")
  fi
  "$PY" bench/throughput.py "${args[@]}" --data_dir "$WORK/bench_data" --json "$OUT/bench.json"
  local rc=$?
  "$PY" - "$OUT/bench.json" <<'PY' || rc=1
import json
import os
import sys
from pathlib import Path

report = json.loads(Path(sys.argv[1]).read_text())
rows = {r["name"]: r for r in report["results"]}
# The RESULT line carries how much the loader costs training (bench/throughput.py).
Path(os.environ["WORK"], "bench.ratio").write_text(report["loader_ratio"]["line"] + "\n")
broken = [f"{name}: {r.get('error') or r.get('skipped')}" for name, r in rows.items()
          if r.get("error") or r.get("skipped")]  # fmt: skip
parts = []
for name in ("loader/dali-gpu", "loader/dali-cpu", "train/synthetic"):
    if rows.get(name, {}).get("patches_per_s"):
        parts.append(f"{name} {rows[name]['patches_per_s']:.4g} patches/s")
for name, r in rows.items():
    if name.startswith("train/") and name != "train/synthetic" and r.get("ratio"):
        parts.append(f"{name} {r['ratio']:.2f}x synthetic")
note = "; ".join(parts) or "no rows measured"
if broken:
    note += "; BROKEN ROWS: " + "; ".join(broken)
Path(os.environ["WORK"], "bench.note").write_text(note + "\n")
print(note)
sys.exit(1 if broken or not parts else 0)
PY
  return $rc
}

step_train() {
  local data="$WORK/demo" run="$WORK/run" args
  "$PY" scripts/make_demo_dataset.py --out "$data" --num_images "$(standin && echo 8 || echo 48)" \
    || return 1
  args=(--dataset_root "$data" --train_json "$data/demo.json" --checkpoint_dir "$run"
    --backbone_weights none --loader dali --no_progress)
  if standin; then  # one epoch of three CPU steps: the plumbing, in seconds
    args+=(--device cpu --epochs 1 --resize 240x256 --train_patch_num 1 --val_patch_num 1
      --batch_size 2 --val_split 0.25 --num_workers 0)
  else  # two epochs: the second reuses the DALI pipelines built in the first
    args+=(--device cuda --epochs 2 --batch_size 32 --train_patch_num 8 --val_patch_num 8)
  fi
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 train.py "${args[@]}"
  local rc=$?
  [ -f "$run/metrics.json" ] && cp "$run/metrics.json" "$OUT/train_metrics.json"
  "$PY" - "$run" "$(standin && echo cpu || echo cuda)" <<'PY' || rc=1
import json
import os
import sys
from pathlib import Path

run, device = Path(sys.argv[1]), sys.argv[2]
problems = []
try:
    metrics = json.loads((run / "metrics.json").read_text())
    used = json.loads((run / "args.json").read_text())
except (OSError, ValueError) as e:
    note = f"no run to read ({e})"
else:
    if not metrics.get("completed"):
        problems.append("the run did not complete")
    if (used.get("loader"), used.get("device")) != ("dali", device):
        problems.append(f"ran with loader {used.get('loader')} on {used.get('device')}")
    epochs = metrics.get("epochs", [])
    last = epochs[-1] if epochs else {}
    srcc = last.get("val_srcc")
    note = (
        f"{len(epochs)} epochs, loss {epochs[0]['train_loss']:.3f} -> {last['train_loss']:.3f}, "
        f"val_srcc {'-' if srcc is None else format(srcc, '.3f')}, "
        f"{last.get('train_patches_per_s')} patches/s in the last epoch"
        if epochs
        else "no epoch finished"
    )
    if problems:
        note += "; " + "; ".join(problems)
Path(os.environ["WORK"], "train.note").write_text(note + "\n")
print(note)
sys.exit(1 if problems or not (run / "metrics.json").is_file() else 0)
PY
  return $rc
}

# -- running a step under its limit ----------------------------------------------------------

OUT_FILES=(summary.txt env.txt smoke.txt tests.txt bench.txt train.txt bench.json
  train_metrics.json)

log_of() { [ "$1" = preflight ] && echo "$OUT/env.txt" || echo "$OUT/$1.txt"; }

say() { echo "$*" | tee -a "$OUT/summary.txt"; }

run_step() {  # run_step NAME: its verdict line (and on failure its log's tail) in the summary
  local name=$1 limit=${LIMIT[$1]} log start rc verdict note took
  log=$(log_of "$1")
  start=$SECONDS
  # timeout signals the step's whole process group (DALI threads, torchrun workers).
  timeout --kill-after="$KILL_GRACE" "$limit" bash "$SELF" --step "$name" >"$log" 2>&1
  rc=$?
  took=$((SECONDS - start))
  case $rc in
    0) verdict=PASS ;;
    124 | 137) verdict=TIMEOUT ;;
    *) verdict=FAIL ;;
  esac
  note=$(head -n 1 "$WORK/$name.note" 2>/dev/null)
  [ "$verdict" = TIMEOUT ] && note="stopped at its ${limit} s limit${note:+; $note}"
  say "$(printf '%-7s %-9s %4d s (limit %3d s)  %s' "$verdict" "$name" "$took" "$limit" "$note")"
  if [ "$verdict" != PASS ]; then
    FAILED+=("$name")
    tail -n 25 "$log" | sed 's/^/        | /' | tee -a "$OUT/summary.txt"
  fi
}

# -- main ----------------------------------------------------------------------------------

if [ "${1:-}" = "--plan" ]; then
  print_plan
  exit 0
fi
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,/^set -uo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
if [ "${1:-}" = "--step" ]; then
  case " ${STEPS[*]} " in *" ${2:-} "*) ;; *) echo "unknown step ${2:-}"; exit 2 ;; esac
  cd "$ROOT" || exit 1
  "step_$2"
  exit $?
fi

if [ "$(total_limit)" -gt "$BUDGET" ]; then
  echo "gpu_check.sh: the step limits add up to $(total_limit) s, over the ${BUDGET} s budget"
  exit 2
fi
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || {
  echo "gpu_check.sh: cannot create OUT=$OUT"
  exit 2
}
for f in "${OUT_FILES[@]}"; do rm -f "$OUT/$f"; done   # ours from an earlier run, nothing else
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
SECONDS_PER_ROW=${1:-3}
export OUT WORK PY SECONDS_PER_ROW
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export PYTHONIOENCODING=utf-8   # the bench prints a ÷
cd "$ROOT" || exit 2

FAILED=()
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown")

unpack_pytest >"$WORK/pytest.log" 2>&1

# Preflight: on failure the whole output is one line, and nothing else runs.
start=$SECONDS
timeout --kill-after="$KILL_GRACE" "${LIMIT[preflight]}" bash "$SELF" --step preflight \
  >"$OUT/env.txt" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
  if [ -s "$WORK/fail_line.txt" ]; then
    line=$(head -n 1 "$WORK/fail_line.txt")
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    line="FAIL preflight: importing DALI and torch or finding the GPU took over ${LIMIT[preflight]} s (see env.txt)"
  else
    line="FAIL preflight: exit $rc: $(tail -n 1 "$OUT/env.txt")"
  fi
  echo "$line" | tee "$OUT/summary.txt"
  exit 1
fi

mode=$(standin && echo "CPU stand-in (DALI's CPU backend; proves the plumbing, not the GPU)" || echo GPU)
{
  echo "HyperIQA GPU check, $mode; started $started; commit $commit"
  cat "$WORK/versions.txt"
  echo "time budget: $(total_limit) s of step limits; bench ${SECONDS_PER_ROW} s per row"
} | tee "$OUT/summary.txt"
say "$(printf '%-7s %-9s %4d s (limit %3d s)  %s' PASS preflight $((SECONDS - start)) "${LIMIT[preflight]}" \
  "the steps' modules import, DALI loads libnvjpeg$(standin || echo ", CUDA device visible")")"

SKIPPED=()
for step in "${STEPS[@]:1}"; do
  # GPU_CHECK_ONLY=smoke,tests reruns some steps; the others count as not passed.
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ ",$GPU_CHECK_ONLY," != *",$step,"* ]]; then
    say "$(printf '%-7s %-9s %4s   %-14s  %s' SKIP "$step" - "" "not in GPU_CHECK_ONLY")"
    SKIPPED+=("$step")
    continue
  fi
  run_step "$step"
done

# The loader's cost (train/dali-gpu ÷ train/synthetic, WARN under 0.9) rides on
# the RESULT line: a check can pass while the loader slows training down.
ratio=$(head -n 1 "$WORK/bench.ratio" 2>/dev/null)
ratio=${ratio:+; $ratio}
if [ ${#FAILED[@]} -eq 0 ] && [ ${#SKIPPED[@]} -eq 0 ]; then
  say "RESULT: PASS (all ${#STEPS[@]} steps) in ${SECONDS} s$ratio"
  exit 0
fi
say "RESULT: FAIL (${FAILED[*]:-none failed}${SKIPPED[*]:+; not run: ${SKIPPED[*]}}) in ${SECONDS} s$ratio"
exit 1
