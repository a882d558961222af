"""Throughput benchmark: loaders alone and end-to-end training, in one run.

    python bench/throughput.py [--device auto|cpu|cuda] [--quick] [--json out.json]
        [--data_json J --dataset_root R | --data_dir DIR --images N]
        [--batch_size 96] [--patch_num 25] [--seconds 20] [--num_workers N]

Rows (each measured after a warm-up, for ``--seconds``):

- ``loader/original``: the original release's scheme (bench/original_loader.py):
  one item per (image, patch), each decoding its JPEG again.
- ``loader/pillow``, ``loader/dali-cpu``, ``loader/dali-gpu`` (CUDA): our loaders
  alone, iterating a training plan, each batch waited for on the target device.
- ``train/synthetic``: the trainer's step (HyperNet forward, L1, Adam; bf16 +
  channels_last + cuDNN autotuning on CUDA, fp32 on the CPU) fed by the
  synthetic loader (random patches already on the device): the model's ceiling.
- ``train/synthetic-cudnn-off`` (CUDA): the same with ``torch.backends.cudnn.benchmark``
  off (``-cudnn-on`` instead under ``--no_cudnn_benchmark``): what the autotuner buys.
- ``train/pillow`` and ``train/dali-gpu`` (CUDA) or ``train/dali-cpu`` (CPU):
  the same step fed by the loader.
- ``score/synthetic``: predict.py's scorer (eval-mode forward passes, a host copy
  per rows window) on patches already on the device: the scoring ceiling.
- ``score/pillow``, ``score/dali-cpu``, ``score/dali-gpu`` (CUDA): predict.py's
  scorer over the files (image checks, decoding, forward), in images/s at
  ``--patch_num`` crops, each with its ratio to ``score/synthetic``.

Input: KonIQ-like 1024x768 JPEGs generated once into ``--data_dir`` by
scripts/make_demo_dataset.py (reused by later runs), or a real metadata JSON.
The image list is cycled to KonIQ's training-split size (7,252) per epoch, so
epoch boundaries come as often as in a real run while only a few files exist.
The measuring itself is in bench/measure.py; this file is the command line
and the report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from hyperiqa.arg_types import (
    DEVICE_CHOICES,
    non_negative_int,
    patch_count,
    positive_float,
    positive_int,
    resize_type,
)
from hyperiqa.atomic import check_output_path, overwritten_input, write_json_output
from hyperiqa.check_data import check_dataset
from hyperiqa.data import load_samples
from hyperiqa.demo_data import KONIQ_SIZE, write_koniq_like_jpegs
from hyperiqa.errors import USER_ERRORS, UserError, report
from hyperiqa.runtime import resolve_runtime, usable_cores
from measure import (
    KONIQ_EPOCHS,
    KONIQ_TRAIN_IMAGES,
    KONIQ_VAL_IMAGES,
    SEED,
    VAL_SPEEDUP,
    Row,
    Setup,
    run_rows,
)
from pipelines.patches import DEFAULT_PATCHES_PER_IMAGE, DEFAULT_RESIZE

DEFAULT_DATA_DIR = Path("/tmp/hyperiqa-bench-data")

RESULT_KEYS = (
    "name",
    "patches_per_s",
    "images_per_s",
    "decodes_per_image",
    "seconds",
    "peak_rss_mb",
    "peak_gpu_mb",
    "data_wait_s",
    "compute_s",
    "ratio",
    "ratio_to",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Loader and end-to-end training throughput of HyperIQA, in one run.",
    )
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--data_json", default=None, help="real metadata JSON (a list of image/score)")
    p.add_argument(
        "--dataset_root",
        default="../datasets/",
        help="image paths in --data_json are relative to it (default: %(default)s, as train.py)",
    )
    p.add_argument(
        "--data_dir",
        default=str(DEFAULT_DATA_DIR),
        help="folder for the generated KonIQ-like JPEGs, made once and reused (default %(default)s)",
    )
    p.add_argument(
        "--images",
        type=positive_int,
        default=None,
        help="generated JPEGs (default 128; --quick 32)",
    )
    p.add_argument(
        "--batch_size",
        type=positive_int,
        default=None,
        help="patches per batch (default 96; --quick on the CPU: 16)",
    )
    p.add_argument(
        "--patch_num",
        type=patch_count,
        default=DEFAULT_PATCHES_PER_IMAGE,
        help="patches per image per epoch",
    )
    p.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="measured seconds per row (default 20; --quick 8)",
    )
    p.add_argument(
        "--patches",
        type=non_negative_int,
        default=0,
        help="also stop a row after this many measured patches (default 0: time only)",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer images and seconds (under 3 minutes on 2 cores)"
    )
    p.add_argument("--json", default=None, help="write env + results here")
    p.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=None,
        help="Pillow/original DataLoader workers (default as train.py: CUDA min(cores, 8), CPU 0)",
    )
    p.add_argument("--dali_threads", type=positive_int, default=4, help="DALI CPU threads")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated row-name prefixes to run, e.g. loader/ or train/synthetic",
    )
    p.add_argument(
        "--worker_sweep",
        type=worker_counts,
        default=None,
        help="add loader/pillow-wN rows for these worker counts, e.g. 0,1,2",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the training step, as train.py"
    )
    p.add_argument(
        "--no_cudnn_benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="cuDNN autotuner off for the rows (as train.py's flag); one row measures the other way",
    )
    # For tests and experiments: smaller inputs than KonIQ's.
    p.add_argument("--resize", type=resize_type, default=DEFAULT_RESIZE, help=argparse.SUPPRESS)
    p.add_argument("--image_size", type=resize_type, default=KONIQ_SIZE, help=argparse.SUPPRESS)
    p.add_argument(
        "--epoch_images", type=positive_int, default=KONIQ_TRAIN_IMAGES, help=argparse.SUPPRESS
    )
    p.add_argument("--warmup", type=non_negative_int, default=None, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------- #
# Set-up


def generated_images(data_dir: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """KonIQ-like JPEGs of ``size``, written once (hyperiqa/demo_data.py) and reused."""
    folder = Path(data_dir) / f"koniq_like_{size[0]}x{size[1]}"
    try:
        return write_koniq_like_jpegs(folder, count, height=size[0], width=size[1])
    except OSError as e:
        raise UserError(f"cannot write the benchmark images to {folder}: {e}") from None


def setup(args: argparse.Namespace) -> Setup:
    if args.images is None:
        args.images = 32 if args.quick else 128
    device = args.device
    batch_size = args.batch_size or (
        16 if args.quick and (device == "cpu" or not torch.cuda.is_available()) else 96
    )
    rt = resolve_runtime(
        device=args.device,
        loader="pillow",
        num_workers=args.num_workers,
        batch_size=batch_size,
        cudnn_benchmark=args.cudnn_benchmark,
        compile=args.compile,
        dali_threads=args.dali_threads,
    )
    if args.data_json:
        samples = load_samples(args.data_json, args.dataset_root)
        files, scores = [s.path for s in samples], np.array([s.label for s in samples])
        check_dataset(files)  # a file DALI cannot decode would end its pipeline, or the process
    else:
        files = generated_images(Path(args.data_dir), args.images, args.image_size)
        check_dataset(files)  # reused from an earlier run: a damaged one is named here
        scores = np.random.default_rng(SEED).uniform(0.0, 100.0, len(files))
    n = max(len(files), args.epoch_images)
    return Setup(
        rt=rt,
        paths=[files[i % len(files)] for i in range(n)],
        scores=np.array([scores[i % len(files)] for i in range(n)]),
        files=len(files),
        mean_file_bytes=statistics.fmean(p.stat().st_size for p in files),
        patch_num=args.patch_num,
        resize=tuple(args.resize),
        seconds=args.seconds if args.seconds is not None else (8.0 if args.quick else 20.0),
        warmup=args.warmup,
        patch_limit=args.patches,
    )


def row_plan(args: argparse.Namespace, cuda: bool) -> list[Row]:
    """Every row this run makes, in order. ``args.cudnn_benchmark``: the runtime's
    autotuner setting (train.py's default on CUDA is on)."""
    cpu = torch.device("cpu")
    rows = [
        Row("loader/original", "original", train=False, note="per-patch decode"),
        Row("loader/pillow", "pillow", train=False),
    ]
    for w in args.worker_sweep or []:
        rows.append(
            Row(f"loader/pillow-w{w}", "pillow", train=False, note=f"{w} workers", workers=w)
        )
    cpu_note = "DALI CPU backend, copied to the GPU per batch" if cuda else ""
    rows.append(Row("loader/dali-cpu", "dali", train=False, note=cpu_note, device=cpu))
    if cuda:
        rows.append(Row("loader/dali-gpu", "dali", train=False))
    rows.append(
        Row("train/synthetic", "synthetic", train=True, note="random patches on the device")
    )
    if cuda:
        # The same step with cuDNN's autotuner the other way round, in the same run.
        other = not args.cudnn_benchmark
        rows.append(
            Row(
                f"train/synthetic-cudnn-{'on' if other else 'off'}",
                "synthetic",
                train=True,
                note=f"torch.backends.cudnn.benchmark {other}",
                cudnn_benchmark=other,
            )
        )
    rows += [
        Row("train/pillow", "pillow", train=True),
        Row("train/dali-gpu" if cuda else "train/dali-cpu", "dali", train=True),
        Row("score/synthetic", "synthetic", train=False, score=True, note="forward only"),
        Row("score/pillow", "pillow", train=False, score=True),
        Row("score/dali-cpu", "dali", train=False, score=True, note=cpu_note, device=cpu),
    ]
    if cuda:
        rows.append(Row("score/dali-gpu", "dali", train=False, score=True))
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        rows = [r for r in rows if any(r.name.startswith(p) for p in prefixes)]
        if not rows:
            raise UserError(f"--only {args.only!r} matches no row")
    return rows


def worker_counts(text: str) -> list[int]:
    """--worker_sweep: comma-separated worker counts, e.g. 0,1,2."""
    return [non_negative_int(x.strip()) for x in text.split(",") if x.strip()]


# --------------------------------------------------------------------------- #
# Report


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(s: Setup, args: argparse.Namespace, load_start: tuple[float, ...]) -> dict:
    import PIL
    import torchvision

    try:
        from nvidia import dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    cores = usable_cores()
    rt = s.rt
    return {
        "device": str(rt.device),
        "device_name": torch.cuda.get_device_name(rt.device) if rt.cuda else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "dali": dali_version,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "amp": rt.amp_name,
        "channels_last": rt.channels_last,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "compile": rt.compile,
        "batch_size": s.batch_size,
        "patch_num": s.patch_num,
        "patch_size": s.patch_size,
        "resize": list(s.resize),
        "num_workers": rt.num_workers,
        "dali_threads": rt.dali_threads,
        "quick": args.quick,
        "seconds_per_row": s.seconds,
        "data": args.data_json or f"{s.files} KonIQ-like JPEGs in {args.data_dir}",
        "files": s.files,
        "mean_file_kb": round(s.mean_file_bytes / 1024, 1),
        "epoch_images": len(s.paths),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


NOTES = {
    "ratio": "train rows: patches/s over train/synthetic; score rows: over score/synthetic; "
    "loader rows: over loader/original",
    "images_per_s": "patches/s / patch_num (an epoch cuts patch_num patches per image)",
    "decodes_per_image": (
        "measured as file bytes read (rchar of this process and its workers) / mean JPEG "
        "size / images delivered; each decode reads its file once. By construction: "
        "original patch_num, ours 1"
    ),
    "peak_rss_mb": "this process's peak RSS during the row (VmHWM reset at the row start; "
    "includes DALI, and memory earlier rows left allocated)",
    "rss_start_mb": "this process's RSS when the row started: peak_rss_mb - rss_start_mb is "
    "what the row itself added",
    "peak_workers_private_mb": "peak sum of the private memory (USS) of worker processes "
    "(DataLoader workers); pages shared with this process are counted in peak_rss_mb",
    "peak_gpu_mb": "torch.cuda.max_memory_allocated, reset per row (DALI's memory not included)",
    "peak_gpu_device_mb": "peak device-wide used GPU memory (cudaMemGetInfo, sampled): includes "
    "DALI, CUDA contexts and other processes",
    "data_wait_s": "train rows on CUDA: GPU idle time between steps (CUDA events); on the CPU "
    "and for loader rows: host time blocked waiting for the next batch",
    "compute_s": "train rows: step time (GPU time on CUDA); loader rows: time to consume a "
    "batch on the device (synchronize)",
    "est_koniq_16ep_h": (
        f"{KONIQ_EPOCHS} epochs x ({KONIQ_TRAIN_IMAGES} train images x patch_num patches at "
        f"the row's patches/s + {KONIQ_VAL_IMAGES} val images x patch_num patches at "
        f"{VAL_SPEEDUP:g}x that speed, an assumption: forward only); excludes startup, the "
        "dataset check and checkpoint writes"
    ),
}


# What the loader may cost: train/dali-gpu (train/dali-cpu on the CPU) over
# train/synthetic, the same step fed with patches already on the device.
LOADER_RATIO_GOAL = 0.95
LOADER_RATIO_WARN = 0.9


def loader_ratio(results: list[dict]) -> dict:
    """``{"rows", "ratio", "warn", "line"}``: how close training fed by DALI comes to the
    model's ceiling. ``ratio`` is None when either row was not measured."""
    rows = {r["name"]: r for r in results}
    dali = "train/dali-gpu" if "train/dali-gpu" in rows else "train/dali-cpu"
    what = f"{dali} ÷ train/synthetic"
    missing = [
        f"{name} {rows[name].get('error') or rows[name].get('skipped') or 'not measured'}"
        if name in rows
        else f"{name} not in this run"
        for name in (dali, "train/synthetic")
        if not rows.get(name, {}).get("patches_per_s")
    ]
    if missing:
        line = f"{what}: not measured ({'; '.join(missing)})"
        return {"rows": what, "ratio": None, "warn": False, "line": line}
    ratio = rows[dali]["patches_per_s"] / rows["train/synthetic"]["patches_per_s"]
    warn = ratio < LOADER_RATIO_WARN
    line = f"{what}: {ratio:.3f} (goal >= {LOADER_RATIO_GOAL})"
    if warn:
        line = f"WARN {line}: under {LOADER_RATIO_WARN}, the loader costs training time"
    return {"rows": what, "ratio": round(ratio, 4), "warn": warn, "line": line}


# What scoring a collection may lose to its loader: predict.py's scorer fed by files
# over the same scorer fed by patches already on the device.
SCORE_RATIO_GOALS = {"score/pillow": 0.8, "score/dali-gpu": 0.95}


def score_ratios(results: list[dict], cuda: bool) -> list[str]:
    """One line per scoring goal: the loader row's images/s over score/synthetic's
    (Pillow's goal is the CPU's, DALI's the GPU's)."""
    rows = {r["name"]: r for r in results}
    base = rows.get("score/synthetic", {}).get("images_per_s")
    lines = []
    for name, goal in SCORE_RATIO_GOALS.items():
        if (name == "score/pillow") == cuda or name not in rows:
            continue  # Pillow's goal is for the CPU, DALI's for a GPU
        value = rows[name].get("images_per_s")
        if not value or not base:
            lines.append(f"{name} ÷ score/synthetic: not measured")
            continue
        ratio = value / base
        mark = "" if ratio >= goal else "WARN "
        lines.append(f"{mark}{name} ÷ score/synthetic: {ratio:.3f} (goal >= {goal})")
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(env: dict, results: list[dict]) -> str:
    head = [
        f"HyperIQA throughput on {env['device_name']} ({env['device']}); "
        f"{env['cpu_affinity']} CPU cores, torch {env['torch']}, DALI {env['dali']}",
        f"batch {env['batch_size']}, {env['patch_num']} patches/image, resize "
        f"{env['resize'][0]}x{env['resize'][1]}, {env['num_workers']} workers, amp {env['amp']}, "
        f"cudnn.benchmark {env['cudnn_benchmark']}, "
        f"{env['seconds_per_row']:g} s per row; load average {env['loadavg_start'][0]} -> "
        f"{env['loadavg_end'][0]}",
        f"data: {env['data']}",
    ]
    cols = (
        f"{'row':<26} {'patches/s':>10} {'images/s':>9} {'speed-up':>15} {'decodes':>8} "
        f"{'data wait':>10} {'peak RSS':>9} {'GPU mem':>8} {'KonIQ 16 ep':>11}"
    )
    lines = [*head, "", cols, "-" * len(cols)]
    for r in results:
        if r.get("skipped") or r.get("error"):
            what = "skipped" if r.get("skipped") else "FAILED"
            lines.append(f"{r['name']:<26} {what}: {r.get('skipped') or r.get('error')}")
            continue
        base = {
            "train/synthetic": "synthetic",
            "score/synthetic": "synthetic",
            "loader/original": "original",
        }[r["ratio_to"]]
        ratio = f"{r['ratio']:.2f}x {base}" if r["ratio"] is not None else "-"
        est = f"{r['est_koniq_16ep_h']:.1f} h" if r.get("est_koniq_16ep_h") else "-"
        rss = f"{r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") is not None else "-"
        gpu = f"{r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") is not None else "-"
        # A loader row waits for batches all the time by design: only training's wait matters.
        wait = f"{r['data_wait_s']:.2f} s" if r["name"].startswith("train/") else "-"
        lines.append(
            f"{r['name']:<26} {r['patches_per_s']:>10.1f} {r['images_per_s']:>9.2f} {ratio:>15} "
            f"{_fmt(r['decodes_per_image'], '.2f'):>8} {wait:>10} "
            f"{rss:>9} {gpu:>8} {est:>11}"
        )
    lines += [
        "",
        "speed-up: loader rows vs loader/original, train rows vs train/synthetic (the model's "
        "ceiling), score rows vs score/synthetic. decodes: measured file reads per delivered "
        "image (score rows: the image check reads it too).",
        "data wait (train rows): GPU idle time between steps on CUDA (CUDA events), "
        "host time blocked on the next batch on the CPU.",
        "KonIQ 16 ep: " + NOTES["est_koniq_16ep_h"] + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    load_start = os.getloadavg()
    args = build_parser().parse_args(argv)
    try:
        if (
            args.json
            and args.data_json
            and overwritten_input(Path(args.json), [Path(args.data_json)])
        ):
            raise UserError(f"--json {args.json} would overwrite the input --data_json")
        if args.json:
            check_output_path(Path(args.json), "--json")
        s = setup(args)
        if args.json and (image := overwritten_input(Path(args.json), s.paths[: s.files])):
            raise UserError(f"--json {args.json} would overwrite the input image {image}")
        results = run_rows(s, row_plan(args, s.rt.cuda))
        for row in results:
            for key in RESULT_KEYS:
                row.setdefault(key, None)
        env = environment(s, args, load_start)
        ratio = loader_ratio(results)
        score_lines = score_ratios(results, s.rt.cuda)
        print()
        print(format_table(env, results))
        print(ratio["line"])
        for line in score_lines:
            print(line)
        if args.json:
            out = Path(args.json)
            report_json = {
                "env": env,
                "results": results,
                "loader_ratio": ratio,
                "score_ratios": score_lines,
                "notes": NOTES,
            }
            write_json_output(out, report_json, "--json")
            print(f"\nwrote {out}")
        failed = [r["name"] for r in results if r.get("error")]
        if failed:  # a skipped row (no DALI, no GPU) is expected; a failed one is not
            raise UserError(f"{len(failed)} rows failed (traceback above): {', '.join(failed)}")
    except USER_ERRORS as e:
        return report("bench/throughput.py", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
