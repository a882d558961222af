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
#   preflight  DALI imports and a CUDA device is visible, else ONE line and exit 1,
#              at once; records the device, driver, torch, CUDA and DALI versions
#   smoke      one window through the "mixed" decoder against DALI's CPU backend,
#              same plan (seconds): a driver/DALI mismatch shows before anything long
#   tests      the gpu-marked tests with HYPERIQA_GPU_STRICT=1: a skip is a failure;
#              the verdict says how many ran
#   bench      bench/throughput.py, a few seconds per row (cuDNN autotuner both ways)
#   train      torchrun (1 process) train.py --loader dali, 2 epochs on a demo dataset
#              (cuDNN autotuner on, as train.py's default on CUDA)
#
# Files under $OUT (8 at most, no subfolders):
#   summary.txt         versions, one verdict line per step, the tail of each failed
#                       step's log, a RESULT line
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
  # Prints one line and exits 1 when DALI does not import or no CUDA device is
  # visible; otherwise writes the versions for the summary to $WORK/versions.txt.
  nvidia-smi 2>&1 || echo "(nvidia-smi: not available)"
  "$PY" - <<'PY'
import importlib.metadata
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

standin = os.environ.get("GPU_CHECK_STANDIN") == "1"
versions = Path(os.environ["WORK"]) / "versions.txt"
fail_line = Path(os.environ["WORK"]) / "fail_line.txt"


def fail(line: str) -> None:
    fail_line.write_text(line + "\n")
    print(line)
    sys.exit(1)


try:
    import nvidia.dali as dali
    import nvidia.dali.backend as dali_backend
except Exception as e:  # ImportError, or OSError from a library that does not load
    fail(
        f"FAIL preflight: cannot import nvidia.dali ({type(e).__name__}: {e}); install "
        "nvidia-dali-cuda120 (driver >= 525.60) or nvidia-dali-cuda130 (driver >= 580)"
    )

import torch

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
for w in caught:
    print(f"warning while looking for CUDA: {w.message}")
if not cuda and not standin:
    why = f"; {caught[0].message}" if caught else ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    fail(
        f"FAIL preflight: no CUDA device visible to torch {torch.__version__} "
        f"(built for CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES={visible}){why}"
    )


def cuda_version(v: int) -> str:  # cudaDriverGetVersion's encoding: 1000 * major + 10 * minor
    return f"{v // 1000}.{v % 1000 // 10}" if v > 0 else "none"


def dali_dist() -> str:
    for name in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "package name unknown"


def smi(query: str) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


driver_cuda = dali_backend.GetCudaVersion() if cuda else 0  # what the driver supports
dali_cuda_major = int(getattr(dali, "__cuda_version__", 0)) // 1000
lines = []
if cuda:
    props = torch.cuda.get_device_properties(0)
    lines.append(
        f"device: {props.name} (sm_{props.major}{props.minor}, "
        f"{props.total_memory / 2**30:.1f} GiB), {torch.cuda.device_count()} visible; "
        f"driver {smi('driver_version')} (supports CUDA {cuda_version(driver_cuda)})"
    )
else:
    lines.append(f"device: none (stand-in mode on {platform.machine()}, DALI's CPU backend)")
import torchvision

lines.append(
    f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
    f"{torch.backends.cudnn.version()}), torchvision {torchvision.__version__}"
)
codec = dali_backend.GetNvimgcodecVersion()  # e.g. 900 for 0.9.0
lines.append(
    f"DALI {dali.__version__} ({dali_dist()}, built for CUDA {dali_cuda_major}, "
    f"__cuda_version__ {getattr(dali, '__cuda_version__', '?')}; nvImageCodec "
    f"{codec // 1000}.{codec % 1000 // 100}.{codec % 100} ({codec}))"
)
lines.append(f"python {platform.python_version()}, {os.cpu_count()} CPU cores")
if cuda:
    driver_major = driver_cuda // 1000
    for what, major in (("DALI", dali_cuda_major), ("torch", int((torch.version.cuda or "0").split(".")[0]))):
        if major > driver_major:
            lines.append(
                f"WARNING: {what} is built for CUDA {major} but the driver supports CUDA "
                f"{cuda_version(driver_cuda)} (CUDA 13 builds need driver >= 580; CUDA 12 "
                "builds >= 525.60): expect the smoke step to fail"
            )
versions.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}

step_smoke() {
  # One window (8 JPEGs, two of them KonIQ-sized, one grayscale, one progressive)
  # through the device under test and through DALI's CPU backend, the same plan.
  SMOKE_DEVICE=$(standin && echo cpu || echo cuda) "$PY" - <<'PY'
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.dali import DaliLoader
from pipelines.loader import IMAGENET_STD, LoaderSettings
from pipelines.patches import train_plan
from scripts.make_demo_dataset import write_koniq_like_jpegs

MEAN_TOL = 1.5  # grey levels: nvJPEG vs libjpeg-turbo rounding (tests/test_dali.py GPU_MEAN_TOL)
device = torch.device(os.environ["SMOKE_DEVICE"])
folder = Path(os.environ["WORK"]) / "smoke"
folder.mkdir(parents=True, exist_ok=True)
paths = write_koniq_like_jpegs(folder / "koniq", 6, seed=3, height=768, width=1024)
rng = np.random.default_rng(0)
y, x = np.mgrid[0:300, 0:400]
texture = np.stack([128 + 90 * np.sin(x / (7 + c) + y / (11 + c)) for c in range(3)], -1)
texture = np.clip(texture + rng.normal(0, 12, texture.shape), 0, 255).astype(np.uint8)
Image.fromarray(texture[..., 0]).save(folder / "gray.jpg", quality=90)
Image.fromarray(texture[:120, :160]).save(folder / "progressive.jpg", quality=85, progressive=True)
paths = [*paths, folder / "gray.jpg", folder / "progressive.jpg"]

resize, patch, per_image = (192, 256), 128, 4
plan = train_plan(len(paths), seed=0, epoch=0, patches_per_image=per_image, patch_size=patch,
                  resize=resize, window=len(paths))  # fmt: skip


def run(dev: torch.device):
    settings = LoaderSettings(resize=resize, batch_size=len(paths) * per_image, device=dev,
                              dali_threads=2)  # fmt: skip
    start = time.perf_counter()
    loader = DaliLoader(paths, settings)
    try:
        batches = list(loader.batches(plan))
        images = torch.cat([b.images.float().cpu() for b in batches])  # waits for the device
        image_idx = torch.cat([b.image_idx.cpu() for b in batches])
    finally:
        loader.close()
    return images, image_idx, time.perf_counter() - start


ref, ref_idx, _ = run(torch.device("cpu"))
got, got_idx, took = run(device)
std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
diff = ((got - ref) * std * 255).abs()  # in grey levels
mean, worst = diff.mean().item(), diff.max().item()
per_image = [diff[got_idx == i].mean().item() for i in range(len(paths))]
print(f"device {device}: {took:.1f} s including the pipeline build")
for path, d in zip(paths, per_image, strict=True):
    print(f"  {path.name}: mean |diff| {d:.3f} grey levels")
problems = []
if not torch.equal(got_idx, ref_idx):
    problems.append("image order differs from the plan")
if not torch.isfinite(got).all():
    problems.append("non-finite values")
if not mean < MEAN_TOL:
    problems.append(f"mean |diff| {mean:.3f} >= {MEAN_TOL}")
what = "mixed decoder" if device.type == "cuda" else "CPU backend (stand-in)"
note = (
    f"{what} vs CPU backend, one window of {len(paths)} JPEGs: mean |diff| {mean:.3f} grey "
    f"levels (limit {MEAN_TOL}), max {worst:.1f}, worst image {max(per_image):.3f}"
)
note += f"; {'; '.join(problems)}" if problems else "; image order identical"
Path(os.environ["WORK"], "smoke.note").write_text(note + "\n")
print(note)
sys.exit(1 if problems else 0)
PY
}

ensure_pytest() {
  "$PY" -c "import pytest" 2>/dev/null && return 0
  local wheels=("$ROOT"/.devwheels/extra/*.whl)
  if [ -e "${wheels[0]}" ]; then
    # Pure-Python wheels: unpacking them onto the path is all an install does here.
    "$PY" - "$WORK/pytest-site" "${wheels[@]}" <<'PY'
import sys
import zipfile

for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PY
    export PYTHONPATH="$WORK/pytest-site:$PYTHONPATH"
    echo "pytest: unpacked ${#wheels[@]} wheels from .devwheels/extra"
  fi
  "$PY" -c "import pytest" && return 0
  echo "pytest is not installed and .devwheels/extra has no usable wheels" \
    "(bash scripts/stage_test_wheels.sh stages them)" | tee "$WORK/tests.note"
  return 1
}

step_tests() {
  ensure_pytest || return 1
  local selection
  if standin; then
    selection=${GPU_CHECK_TESTS:-tests/test_dali.py::test_batches_shapes_and_coverage}
  else
    selection=${GPU_CHECK_TESTS:-"-m gpu tests"}
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
    # The loader row only: a CPU training step costs tens of seconds and the
    # train step below already runs one.
    args=(--device cpu --images 4 --image_size 240x256 --resize 240x256 --batch_size 4
      --patch_num 2 --seconds 0.01 --warmup 0 --epoch_images 8 --num_workers 0
      --only loader/dali)
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

rows = {r["name"]: r for r in json.loads(Path(sys.argv[1]).read_text())["results"]}
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
cd "$ROOT" || exit 2

FAILED=()
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown")

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
  "DALI imports$(standin || echo ", CUDA device visible")")"

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

if [ ${#FAILED[@]} -eq 0 ] && [ ${#SKIPPED[@]} -eq 0 ]; then
  say "RESULT: PASS (all ${#STEPS[@]} steps) in ${SECONDS} s"
  exit 0
fi
say "RESULT: FAIL (${FAILED[*]:-none failed}${SKIPPED[*]:+; not run: ${SKIPPED[*]}}) in ${SECONDS} s"
exit 1
